"""Fine-tune a pretrained backbone on labeled photos with ``Trainer``.

``main()`` reads like transformers' image-classification example: parse -> data -> fine-tune ->
test -> write the model folder -> publish. Fine-tuning (fastai's ``fine_tune``, the bedroom
write-up) has two stages: stage 1 trains only the new head on the frozen backbone, by default on
cached features; stage 2 unfreezes the top blocks at a lower learning rate, and is kept only if it
beats stage 1 on validation. ``Trainer`` runs on accelerate, so the same code uses a GPU and mixed
precision when present, and runs data-parallel under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

from hf_model.adapters import adapter_for
from hf_model.backbones import (
    check_image_size,
    default_cache_dir,
    default_image_size,
    load_image_processor,
    load_model,
    resolve_backbone,
    weights_version,
)
from hf_model.config import RunRecord, TrainConfig, parse_args
from hf_model.data import DataError, load_data, training_photos
from hf_model.experiments import cross_validate, teach
from hf_model.features import HeadModel, cache_key, extract_features, features_dataset
from hf_model.freezing import set_trainable
from hf_model.hub import publish_trained_model, repo_to_push
from hf_model.metrics import build_compute_metrics, split_metrics
from hf_model.predict import view_probabilities
from hf_model.reports import LearningCurvesCallback, metrics_line, write_reports
from hf_model.run_folder import STAGING_DIR, RunFolderError, move_into, plan_run, save_results
from hf_model.transforms import batch_transform, build_eval_transform, build_train_transform, collate

logger = logging.getLogger("hf_model")


def main(argv: list[str] | None = None) -> dict:
    """``python train.py`` / ``hf-model train``: one run, or one per fold with ``--cv_folds``.

    An output folder holding another run, or photos and labels that cannot be trained on, stop with a
    message and exit status 1, not a traceback.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    cfg, args = parse_args(argv)
    program = "hf-model train" if Path(sys.argv[0]).name == "hf-model" else "python train.py"
    command = " ".join([program, *(sys.argv[1:] if argv is None else argv)])
    try:
        if cfg.cv_folds:
            return cross_validate(train, cfg, args, command)
        return train(cfg, args, command)
    except (RunFolderError, DataError, FileNotFoundError) as err:  # the user's folder or photos: no traceback
        sys.exit(f"error: {err}")


def train(cfg: TrainConfig, args: TrainingArguments, command: str = "",
          cv_fold: tuple[int, int] | None = None) -> dict:
    """One run: returns the test metrics and writes the model folder to ``args.output_dir``.

    The run record goes into the folder (unfinished) before training, and again (finished) at the end.
    A folder already holding this run, finished, is reported, not trained again (``--no_resume`` retrains).
    Raises :class:`~hf_model.run_folder.RunFolderError` when the folder holds another run.
    """
    started = time.time()
    push_to = repo_to_push(args)
    args = dataclasses.replace(args, push_to_hub=False)  # one upload at the end, not one per checkpoint
    set_seed(args.seed)
    data = load_data(cfg, args.seed, cv_fold)
    label_names = data["train"].features["label"].names
    logger.info("labels from %s; classes %s; %s", data.label_source, _short(label_names),
                ", ".join(f"{name} {len(split)}" for name, split in data.items()))
    record = RunRecord(cfg, args, command, cv_fold, cfg.image_size or default_image_size(cfg.backbone),
                       data.label_source, _split_sizes(data), list(label_names), finished=False)
    plan = plan_run(args, cfg.resume, record)
    if plan.finished is not None:
        return report_finished(args, plan.finished, push_to)
    if args.should_save:
        record.save(args.output_dir)  # before training: a rerun compares with it, and a killed run says unfinished
    if cfg.pseudo_label_threshold > 0:
        data["pseudo_labeled"] = teach(train, cfg, args, data, command, cv_fold)
        set_seed(args.seed)  # the student starts from the same seed as a run without a teacher

    trainer, eval_transform = fine_tune(cfg, args, data, plan.resume_from)

    views = view_probabilities(trainer.model, eval_transform, data["test"]["image"], tta=cfg.tta,
                               batch_size=args.per_device_eval_batch_size)
    if len(data["test"]):
        metrics = split_metrics(views, data["test"]["label"], label_names)
    else:  # too few photos for a test split (data.py warned): the model is saved, untested
        logger.warning("no test photos: the model is trained and saved but not tested")
        metrics = {"test_samples": 0}
    trainer.log_metrics("test", {k: v for k, v in metrics.items() if not isinstance(v, dict | list)})
    if trainer.is_world_process_zero():
        save_results(args.output_dir, "test", metrics)
        record = dataclasses.replace(record, split_sizes=_split_sizes(data))  # with the pseudo-labeled photos
        summary = write_reports(args.output_dir, record, metrics, views.mean(axis=0), data["test"],
                                time.time() - started, model_id=push_to)
        print(summary, flush=True)
        if push_to:
            publish_trained_model(args.output_dir, push_to, args)
    return metrics


def report_finished(args: TrainingArguments, metrics: dict, push_to: str | None) -> dict:
    """A rerun of a finished run: print its test results (and upload it when asked), return its test metrics."""
    if args.should_save:
        print(f"{args.output_dir} already holds this run, finished: {metrics_line(metrics)}. Nothing to train; "
              "pass --no_resume to train it again.", flush=True)
        if push_to:
            publish_trained_model(args.output_dir, push_to, args)
    return metrics


def fine_tune(cfg: TrainConfig, args: TrainingArguments, data: DatasetDict,
              resume_from: str | None = None) -> tuple[Trainer, Callable]:
    """Stage 1 (optional) then stage 2 on ``data``; returns the trainer holding the saved model, and the eval transform.

    Early stopping and best-checkpoint restore in every stage; a stage 2 that does not beat stage 1
    on validation is rolled back. ``resume_from`` (a checkpoint of this run) continues stage 2 from it.
    """
    label_names = data["train"].features["label"].names
    train_split = training_photos(data, cfg.oversample, args.seed)
    weights = balanced_class_weights(train_split["label"], len(label_names)) if cfg.class_weights == "auto" else None
    setup = setup_model(cfg, label_names)
    model, loss = setup.model, cross_entropy_loss(weights, args.label_smoothing_factor)
    args = dataclasses.replace(args, label_smoothing_factor=0.0)  # smoothed in our loss, not the Trainer's smoother
    curves = LearningCurvesCallback(args.output_dir)

    stage1 = None
    if cfg.stages == 2 and not resume_from:  # a stage-2 checkpoint already holds the trained head
        best = train_head(cfg, args, setup, train_split, data["validation"], loss, curves)
        stage1 = (best, copy.deepcopy(model.state_dict()))
    counts = set_trainable(model, cfg.unfreeze_top_blocks, keep_batchnorm_frozen=cfg.freeze_batchnorm)
    logger.info("fine-tuning %d of %d blocks: %d parameters train, %d frozen", counts["blocks"],
                counts["of_blocks"], counts["trainable"], counts["frozen"])
    trainer = Trainer(
        model=model, args=args, compute_loss_func=loss, data_collator=collate,
        train_dataset=train_split.with_transform(batch_transform(setup.train_transform)),
        eval_dataset=data["validation"].with_transform(batch_transform(setup.eval_transform)),
        compute_metrics=build_compute_metrics(label_names),
        processing_class=setup.processor if adapter_for(model).saves_processor else None,  # saved beside the model
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience), curves],
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    if stage1 and not improves(trainer.state.best_metric, stage1[0], args.greater_is_better):
        # e.g. a few photos per class: fine-tuning the blocks overfits; the frozen backbone's head generalizes better
        logger.info("stage 2's best validation %s (%s) does not beat stage 1's (%s): keeping the stage 1 model",
                    args.metric_for_best_model, trainer.state.best_metric, stage1[0])
        model.load_state_dict(stage1[1])
    save_final_model(trainer)
    trainer.log_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        save_results(args.output_dir, "train", result.metrics)
    return trainer, setup.eval_transform


def save_final_model(trainer: Trainer) -> None:
    """``trainer.save_model()`` into a hidden folder, then each file renamed into ``output_dir``.

    A kill while saving leaves the previous files or the new ones, never half a weights file.
    """
    output_dir = Path(trainer.args.output_dir)
    staging = output_dir / STAGING_DIR
    if trainer.args.should_save and staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving
    trainer.save_model(str(staging))
    if trainer.args.should_save:
        move_into(staging, output_dir)


@dataclass
class ModelSetup:
    """A backbone with a fresh head for the run's classes, its image processor and its transforms."""

    model: nn.Module
    processor: object
    train_transform: Callable
    eval_transform: Callable
    feature_key: str  # names the stage-1 feature cache of this backbone, input size and augmentation


def setup_model(cfg: TrainConfig, label_names: list[str]) -> ModelSetup:
    """The pretrained ``cfg.backbone`` (registry name, model folder or Hub id) with a head for ``label_names``.

    Photos are ``--image_size``, else the size the backbone was made for; a model folder's (a run of ours or
    any saved model) is read from the folder (:func:`~hf_model.backbones.default_image_size`). An
    ``--image_size`` the model cannot take (a ViT's fixed position embeddings) raises ``ValueError`` here,
    before any training. The head is :func:`~hf_model.backbones.load_model`'s: a folder trained on the same
    classes keeps its trained head, other classes get a fresh one.
    """
    source = resolve_backbone(cfg.backbone, cfg.cache_dir)
    image_size = cfg.image_size or default_image_size(cfg.backbone)
    model = load_model(source, label_names, image_size).to(memory_format=torch.channels_last)
    if cfg.image_size:
        check_image_size(model, cfg.image_size, cfg.backbone)
    processor = load_image_processor(source, model.config, image_size)
    train_transform = build_train_transform(
        processor, image_size, zoom=cfg.zoom, rotation=cfg.rotation,
        shift=cfg.shift, shear=cfg.shear, hflip=cfg.hflip, brightness=cfg.brightness)
    return ModelSetup(model, processor, train_transform, build_eval_transform(processor),
                      cache_key(weights_version(source), image_size, cfg.augmentation_key()))


def train_head(cfg: TrainConfig, args: TrainingArguments, setup: ModelSetup, train_split: Dataset,
               validation: Dataset, loss: Callable, curves: LearningCurvesCallback | None = None) -> float:
    """Stage 1: the new head on the frozen backbone; leaves the best head in ``model``, returns its validation metric.

    With ``cfg.feature_cache`` the head trains on cached pooled features of ``cfg.feature_views``
    views per photo (one plain, the rest augmented), computed once and reused by later runs.
    """
    stage_args = dataclasses.replace(
        args, output_dir=str(Path(args.output_dir) / "stage1"), learning_rate=cfg.head_learning_rate,
        num_train_epochs=cfg.head_epochs, max_steps=-1, save_total_limit=1)
    model, train_transform, eval_transform = setup.model, setup.train_transform, setup.eval_transform
    set_trainable(model, 0, keep_batchnorm_frozen=True)
    classifier = adapter_for(model).classifier(model)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=cfg.head_patience), *([curves] if curves else [])]
    compute_metrics = build_compute_metrics(train_split.features["label"].names)
    if cfg.feature_cache:
        cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / setup.feature_key
        views = [eval_transform] + [train_transform] * (cfg.feature_views - 1)
        model.to(stage_args.device)
        with stage_args.main_process_first(desc="stage 1 features"):  # other ranks then read the cache
            train_features = extract_features(model, train_split, views, cache / f"views{cfg.feature_views}",
                                              desc="stage 1 features (train)")
            val_features = extract_features(model, validation, [eval_transform], cache / "eval",
                                            desc="stage 1 features (validation)")
        head = HeadModel(copy.deepcopy(classifier), cfg.head_dropout)
        head.classifier.requires_grad_(True)
        stage_args = dataclasses.replace(stage_args, per_device_train_batch_size=max(
            64, args.per_device_train_batch_size), dataloader_num_workers=0)
        trainer = Trainer(
            model=head, args=stage_args, compute_loss_func=loss, compute_metrics=compute_metrics, callbacks=callbacks,
            train_dataset=features_dataset(train_features, train_split["label"], all_views=True),
            eval_dataset=features_dataset(val_features, validation["label"], all_views=False))
        trainer.train()
        classifier.load_state_dict(head.classifier.state_dict())
    else:
        trainer = Trainer(
            model=model, args=stage_args, compute_loss_func=loss, compute_metrics=compute_metrics,
            callbacks=callbacks, data_collator=collate,
            train_dataset=train_split.with_transform(batch_transform(train_transform)),
            eval_dataset=validation.with_transform(batch_transform(eval_transform)))
        trainer.train()
    logger.info("stage 1 done: best validation %s %.4f after %d epochs", args.metric_for_best_model,
                trainer.state.best_metric, trainer.state.epoch)
    return trainer.state.best_metric


def cross_entropy_loss(class_weights: torch.Tensor | None, label_smoothing: float = 0.0):
    """A ``Trainer(compute_loss_func=...)``: cross-entropy, optionally class-weighted and label-smoothed.

    Summed and divided by ``num_items_in_batch`` (the labels in the whole accumulated batch) when
    the Trainer passes it, so gradient accumulation and several processes give the same loss as
    one big batch; a weighted mean over the batch otherwise.
    """

    def loss(outputs, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        logits = outputs["logits"]
        weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        if num_items_in_batch is None:
            return nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
        total = nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing,
                                            reduction="sum")
        return total / num_items_in_batch

    return loss


def balanced_class_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    """scikit-learn's ``balanced`` weights, n / (k * count): each class carries the same total weight in the loss.

    A class with no training photo gets weight 0 (it never appears in the loss anyway).
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def improves(value: float | None, reference: float | None, greater_is_better: bool) -> bool:
    """Whether ``value`` beats ``reference``; a missing or NaN value (a diverged run) never does."""
    if reference is None:
        return True
    if value is None or np.isnan(value):
        return False
    return value > reference if greater_is_better else value < reference


def _split_sizes(data: DatasetDict) -> dict[str, int]:
    return {name: len(split) for name, split in data.items()}


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
