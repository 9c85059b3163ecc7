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
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainerState, TrainingArguments, set_seed

from hf_model.adapters import adapter_for, write_portable_config
from hf_model.backbones import (
    check_image_size,
    default_cache_dir,
    default_image_size,
    load_image_processor,
    load_model,
    resolve_backbone,
    weights_version,
)
from hf_model.config import MANY_PHOTOS, RunRecord, TrainConfig, parse_args, program
from hf_model.data import HAND_LABELED_SPLITS, load_data, training_photos
from hf_model.distributed import (
    devices_in_step,
    for_devices,
    global_batch_size,
    main_process_result,
    per_device_share,
)
from hf_model.exit_status import command
from hf_model.experiments import cross_validate, teach
from hf_model.export import CHECK_PHOTOS, export_or_warn
from hf_model.features import HeadModel, cache_key, extract_features, features_dataset, photo_digests
from hf_model.freezing import set_trainable
from hf_model.heads import fit_head
from hf_model.hub import publish_trained_model, repo_to_push
from hf_model.metrics import build_compute_metrics, softmax, split_metrics
from hf_model.predict import view_probabilities
from hf_model.reports import LearningCurvesCallback, metrics_line, write_reports
from hf_model.run_folder import STAGING_DIR, RunPlan, move_into, plan_run, save_results
from hf_model.temperature import (
    TEMPERATURE_RANGE,
    calibrate_logits,
    expected_calibration_error,
    fold_temperature,
    negative_log_likelihood,
)
from hf_model.transforms import batch_transform, build_eval_transform, build_train_transform, collate

logger = logging.getLogger("hf_model")
FEATURE_BATCH_ON_ACCELERATOR = 256  # photos per forward pass of stage 1's feature extraction on a GPU
MIN_HELD_OUT = 30  # held-out predictions needed to fit a temperature: fewer fit noise, and T runs to an extreme


@command(program, resume_hint="rerun the same command to continue from the last complete checkpoint "
                           "(finished folds are kept)")
def main(argv: list[str] | None = None) -> dict:
    """``python train.py`` / ``hf-model train``: one run, or one per fold with ``--cv_folds``.

    An output folder holding another run, or photos and labels that cannot be trained on, stop with a
    message and exit status 1, not a traceback (:func:`hf_model.exit_status.command`).
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    cfg, args = parse_args(argv)
    command_line = shlex.join([*program().split(), *argv])  # quoted: a path with spaces reruns as typed
    if cfg.cv_folds:
        return cross_validate(train, cfg, args, command_line)
    return train(cfg, args, command_line)


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
    devices = devices_in_step(args)  # sets up torch.distributed under torchrun: the splits are then built once
    data = load_data(cfg, args.seed, cv_fold)
    label_names = data["train"].features["label"].names
    logger.info("labels from %s; classes %s; %s", data.label_source, _short(label_names),
                ", ".join(f"{name} {len(split)}" for name, split in data.items()))
    cfg = choose_recipe(cfg, data)
    stage_cfg, stage_args = for_devices(cfg, args)  # the recipe as written for one device, on the devices here
    record = RunRecord(cfg, args, command, cv_fold, cfg.image_size or default_image_size(cfg.backbone),
                       data.label_source, _split_sizes(data), list(label_names), finished=False,
                       devices=devices, global_batch_size=global_batch_size(stage_args))
    plan = shared_plan(args, cfg.resume, record)
    if plan.finished is not None:
        return report_finished(args, plan.finished, push_to)
    if args.should_save:
        record.save(args.output_dir)  # before training: a rerun compares with it, and a killed run says unfinished
    if cfg.pseudo_label_threshold > 0:
        data["pseudo_labeled"] = teach(train, cfg, args, data, command, cv_fold)
        set_seed(args.seed)  # the student starts from the same seed as a run without a teacher

    trainer, eval_transform, chosen = fine_tune(stage_cfg, stage_args, data, plan.resume_from)
    if cfg.refit and cv_fold is not None and not fits_on_validation(cfg):
        # the fold's test photos score a model that learned from all the others
        trainer = refit(stage_cfg, stage_args, refit_data(data, with_test=False), chosen)

    views = view_probabilities(trainer.model, eval_transform, data["test"]["image"], tta=cfg.tta,
                               batch_size=args.per_device_eval_batch_size)
    probs = views.mean(axis=0)  # the test-time views averaged: what the figures and plots are of
    if len(data["test"]):
        metrics = split_metrics(views, data["test"]["label"], label_names)
        metrics["test_ece_unscaled"] = expected_calibration_error(unscaled(probs, chosen.temperature),
                                                                  np.asarray(data["test"]["label"]))
    else:  # too few photos for a test split (data.py warned): the model is saved, untested
        logger.warning("no test photos: the model is trained and saved but not tested")
        metrics = {"test_samples": 0}
    trainer.log_metrics("test", {k: v for k, v in metrics.items() if not isinstance(v, dict | list)})
    if cfg.refit and cv_fold is None:  # the saved model learns from the test photos too, once they have scored it
        trainer = refit(stage_cfg, stage_args, refit_data(data, with_test=True), chosen)
    if trainer.is_world_process_zero():
        if cfg.export == "onnx" and cv_fold is None:  # before the card, which then shows how to run the graph
            export_or_warn(args.output_dir, data["validation"].select(range(min(CHECK_PHOTOS, len(data["validation"]))))
                           ["image"], "validation photos")
        save_results(args.output_dir, "test", metrics)
        save_results(args.output_dir, "chosen", {"chosen": dataclasses.asdict(chosen)})
        record = dataclasses.replace(record, split_sizes=_split_sizes(data))  # with the pseudo-labeled photos
        summary = write_reports(args.output_dir, record, {**metrics, "chosen": dataclasses.asdict(chosen)}, probs,
                                data["test"], time.time() - started, model_id=push_to,
                                unscaled_probs=unscaled(probs, chosen.temperature) if chosen.temperature_report
                                else None)
        print(summary, flush=True)
        if push_to:
            publish_trained_model(args.output_dir, push_to, args)
    return metrics


def shared_plan(args: TrainingArguments, resume: bool, record: RunRecord) -> RunPlan:
    """:func:`~hf_model.run_folder.plan_run` decided by the main process, which alone writes the folder, for every rank.

    A rank that looked at the folder itself could see the record the main process had just written and no
    checkpoint yet, and stop as if the folder held another program's files (seen in ``--cv_folds`` under torchrun).
    Raises :class:`~hf_model.run_folder.RunFolderError` on every rank when the folder holds another run.
    """
    return main_process_result(lambda: plan_run(args, resume, record))


def choose_recipe(cfg: TrainConfig, data: DatasetDict) -> TrainConfig:
    """``cfg`` with ``--unfreeze_top_blocks`` chosen when not given: the head alone for few photos per class, else 2.

    Below :data:`~hf_model.config.MANY_PHOTOS` photos in the median class, fine-tuning blocks did no better
    than the head on the frozen backbone in cross-validation (README, Results) and costs far more.
    """
    if cfg.unfreeze_top_blocks is not None:
        what = (f"the {cfg.head} head alone on the frozen backbone" if cfg.unfreeze_top_blocks == 0
                else f"the {cfg.head} head, then fine-tuning the top blocks" if cfg.stages == 2
                else "fine-tuning the top blocks and a new head in one stage")
        logger.info("recipe: %s (--unfreeze_top_blocks %d, from the preset or the command line)", what,
                    cfg.unfreeze_top_blocks)
        return cfg
    labels = np.concatenate([np.asarray(data[split]["label"], dtype=int) for split in HAND_LABELED_SPLITS])
    median = float(np.median(np.bincount(labels)))
    if median < MANY_PHOTOS:
        logger.info("recipe: the %s head alone on the frozen backbone (--unfreeze_top_blocks 0), because the median "
                    "class has %g labeled photos, fewer than %d: with so few, fine-tuning blocks did not beat it. "
                    "Give --unfreeze_top_blocks N to fine-tune N blocks too", cfg.head, median, MANY_PHOTOS)
        return dataclasses.replace(cfg, unfreeze_top_blocks=0)
    logger.info("recipe: the %s head, then the top 2 blocks fine-tuned (--unfreeze_top_blocks 2), because the median "
                "class has %g labeled photos, at least %d; give --unfreeze_top_blocks 0 for the head alone",
                cfg.head, median, MANY_PHOTOS)
    return dataclasses.replace(cfg, unfreeze_top_blocks=2)


def unscaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T log p) = softmax(z) since log p = z / T + const."""
    return softmax(temperature * np.log(np.clip(probs, 1e-30, None)))


def report_finished(args: TrainingArguments, metrics: dict, push_to: str | None) -> dict:
    """A rerun of a finished run: print its test results (and upload it when asked), return its test metrics."""
    if args.should_save:
        print(f"{args.output_dir} already holds this run, finished: {metrics_line(metrics)}. Nothing to train; "
              "pass --no_resume to train it again.", flush=True)
        if push_to:
            publish_trained_model(args.output_dir, push_to, args)
    return metrics


def fine_tune(cfg: TrainConfig, args: TrainingArguments, data: DatasetDict,
              resume_from: str | None = None) -> tuple[Trainer, Callable, Chosen]:
    """The head, then (unless ``--unfreeze_top_blocks 0``) the top blocks, chosen on validation; saved in output_dir.

    Returns the trainer holding the model, the eval transform, and what was chosen (for :func:`refit`).
    Early stopping and best-checkpoint restore in every ``Trainer`` stage; a stage 2 that does not beat
    stage 1 on validation is rolled back. The temperature fitted on held-out predictions is folded into
    the head last. ``resume_from`` (a checkpoint of this run) continues stage 2 from it.
    """
    label_names = data["train"].features["label"].names
    train_split = training_photos(data, cfg.oversample, args.seed)
    setup = setup_model(cfg, label_names)
    model, loss = setup.model, cross_entropy_loss(loss_class_weights(cfg, train_split), args.label_smoothing_factor)
    args = dataclasses.replace(args, label_smoothing_factor=0.0)  # smoothed in our loss, not the Trainer's smoother
    curves = LearningCurvesCallback(args.output_dir)
    head_only = cfg.unfreeze_top_blocks == 0
    chosen, stage1, held_out = Chosen(), None, None
    if (head_only or cfg.stages == 2) and not resume_from:  # a stage-2 checkpoint already holds the trained head
        fit = train_head(cfg, args, setup, train_split, data["validation"], loss, curves,
                         fit_validation=fits_on_validation(cfg))
        chosen = Chosen(head_C=fit.C, head_epochs=fit.epochs)
        stage1, held_out = (fit.best_metric, copy.deepcopy(model.state_dict())), fit.held_out
    trainer = blocks_trainer(cfg, args, setup, train_split, data["validation"], loss, curves)
    if not head_only:
        result = trainer.train(resume_from_checkpoint=resume_from)
        if stage1 and not improves(trainer.state.best_metric, stage1[0], args.greater_is_better):
            # e.g. a few photos per class: fine-tuning the blocks overfits; the frozen backbone's head generalizes
            logger.info("stage 2's best validation %s (%s) does not beat stage 1's (%s): keeping the stage 1 model",
                        args.metric_for_best_model, trainer.state.best_metric, stage1[0])
            model.load_state_dict(stage1[1])
        else:
            chosen.stage2_epochs, held_out = best_epoch(trainer.state), None  # the head moved: calibrate on validation
        trainer.log_metrics("train", result.metrics)
        if trainer.is_world_process_zero():
            save_results(args.output_dir, "train", result.metrics)
    if cfg.temperature_scaling:
        chosen.temperature, chosen.temperature_report = calibrate(model, setup.eval_transform, data["validation"],
                                                                  held_out, args.per_device_eval_batch_size)
    save_final_model(trainer)
    return trainer, setup.eval_transform, chosen


def refit(cfg: TrainConfig, args: TrainingArguments, data: DatasetDict, chosen: Chosen) -> Trainer:
    """Train the model again on ``data["train"]`` (every labeled photo it may learn from) as :func:`fine_tune` chose.

    Nothing is held out, so nothing is chosen: the logistic head keeps its ``C``, each ``Trainer`` stage
    trains for the epochs that reached its best validation score, and the same temperature is folded in.
    The model is saved to ``output_dir``, replacing the selection run's.
    """
    label_names = data["train"].features["label"].names
    photos = training_photos(data, cfg.oversample, args.seed)
    setup = setup_model(cfg, label_names)
    loss = cross_entropy_loss(loss_class_weights(cfg, photos), args.label_smoothing_factor)
    args = dataclasses.replace(args, label_smoothing_factor=0.0, eval_strategy="no", save_strategy="no",
                               load_best_model_at_end=False)
    logger.info("refit: training the saved model once more on all %d labeled photos it may learn from",
                len(data["train"]) + len(data.get("pseudo_labeled", [])))
    if cfg.unfreeze_top_blocks == 0 or cfg.stages == 2:
        train_head(cfg, args, setup, photos, None, loss, fixed=chosen)
    trainer = blocks_trainer(cfg, args, setup, photos, None, loss, epochs=chosen.stage2_epochs)
    if chosen.stage2_epochs:
        trainer.train()
    if cfg.temperature_scaling:
        fold_temperature(adapter_for(setup.model).classifier(setup.model), chosen.temperature)
    save_final_model(trainer)
    return trainer


def fits_on_validation(cfg: TrainConfig) -> bool:
    """Whether the model learns from the validation photos from the start: a closed-form head alone chooses by its
    own inner cross-validation, so validation photos are better used to learn from."""
    return cfg.unfreeze_top_blocks == 0 and cfg.head != "sgd"


def refit_data(data: DatasetDict, with_test: bool) -> DatasetDict:
    """Train + validation (+ test) as one ``train`` split, with self-training's ``pseudo_labeled`` photos."""
    labeled = [data["train"], data["validation"], *([data["test"]] if with_test else [])]
    return DatasetDict(train=concatenate_datasets(labeled),
                       **({"pseudo_labeled": data["pseudo_labeled"]} if "pseudo_labeled" in data else {}))


def blocks_trainer(cfg: TrainConfig, args: TrainingArguments, setup: ModelSetup, train_split: Dataset,
                   validation: Dataset | None, loss: Callable, curves: LearningCurvesCallback | None = None,
                   epochs: float | None = None) -> Trainer:
    """The ``Trainer`` of the last stage (``--unfreeze_top_blocks`` blocks and the head), which also saves the model.

    Without ``validation`` (the refit) it trains ``epochs`` epochs with no early stopping.
    """
    model, label_names = setup.model, train_split.features["label"].names
    counts = set_trainable(model, cfg.unfreeze_top_blocks, keep_batchnorm_frozen=cfg.freeze_batchnorm)
    if cfg.unfreeze_top_blocks != 0:
        logger.info("fine-tuning %d of %d blocks: %d parameters train, %d frozen", counts["blocks"],
                    counts["of_blocks"], counts["trainable"], counts["frozen"])
    callbacks = [*([EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)] if validation else []),
                 *([curves] if curves else [])]
    return Trainer(
        model=model, args=args if epochs is None else dataclasses.replace(args, num_train_epochs=epochs, max_steps=-1),
        compute_loss_func=loss, data_collator=collate, callbacks=callbacks,
        train_dataset=train_split.with_transform(batch_transform(setup.train_transform)),
        eval_dataset=validation.with_transform(batch_transform(setup.eval_transform)) if validation else None,
        compute_metrics=build_compute_metrics(label_names) if validation else None,
        processing_class=setup.processor if adapter_for(model).saves_processor else None,  # saved beside the model
    )


def calibrate(model: nn.Module, eval_transform: Callable, validation: Dataset,
              held_out: tuple[np.ndarray, np.ndarray] | None, batch_size: int) -> tuple[float, dict | None]:
    """Temperature scaling (:mod:`hf_model.temperature`) folded into the classifier layer; returns T and its report.

    Fitted on ``held_out`` (logits, labels) when the head brings them (its inner cross-validation), else on
    the validation photos' predictions. With neither, with fewer than :data:`MIN_HELD_OUT`, or when the fit
    runs to the end of its range (held-out predictions all right), the probabilities stay as they are (T = 1).
    """
    if held_out is None:
        if not len(validation):
            logger.warning("no held-out photos to fit a temperature on: the probabilities are not calibrated")
            return 1.0, None
        probs = view_probabilities(model, eval_transform, validation["image"], batch_size=batch_size)[0]
        held_out = (np.log(np.clip(probs, 1e-30, None)), np.asarray(validation["label"]))  # log p = logits + const
    if len(held_out[1]) < MIN_HELD_OUT:
        logger.warning("only %d held-out predictions: too few to fit a temperature on (at least %d), so the "
                       "probabilities are not calibrated", len(held_out[1]), MIN_HELD_OUT)
        return 1.0, None
    report = calibrate_logits(*held_out)
    if not TEMPERATURE_RANGE[0] < report.temperature < TEMPERATURE_RANGE[1]:
        logger.warning("the temperature fitted on %d held-out predictions hit the end of its range (T = %.3f): the "
                       "held-out predictions are all right (or all wrong), so they cannot say how sure to be; the "
                       "probabilities are not calibrated", report.n, report.temperature)
        return 1.0, None
    fold_temperature(adapter_for(model).classifier(model), report.temperature)
    logger.info("temperature scaling on %d held-out predictions: T = %.3f, expected calibration error %.3f -> %.3f",
                report.n, report.temperature, report.ece_before, report.ece_after)
    return report.temperature, report.to_dict()


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
        write_portable_config(staging)  # classes as id2label: re-heading with plain transformers names them right
        move_into(staging, output_dir)


@dataclass
class Chosen:
    """What validation (or the head's inner cross-validation) chose, which :func:`refit` repeats.

    ``head_C``: the logistic head's inverse L2 strength; ``head_epochs`` / ``stage2_epochs``: epochs a
    ``Trainer`` stage took to its best validation score (``stage2_epochs`` is ``None`` when no stage 2
    was kept); ``temperature``: folded into the head; ``temperature_report``: what it did to the held-out
    predictions (:class:`hf_model.temperature.TemperatureReport` as a dict).
    """

    head_C: float | None = None
    head_epochs: float | None = None
    stage2_epochs: float | None = None
    temperature: float = 1.0
    temperature_report: dict | None = None


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


@dataclass
class HeadFit:
    """Stage 1's outcome: its validation score (``None`` when validation was fitted on or absent), the epochs the
    ``sgd`` head took to it, the logistic head's ``C``, and the head's own held-out (logits, labels)."""

    best_metric: float | None
    epochs: float | None = None
    C: float | None = None
    held_out: tuple[np.ndarray, np.ndarray] | None = None


def train_head(cfg: TrainConfig, args: TrainingArguments, setup: ModelSetup, train_split: Dataset,
               validation: Dataset | None, loss: Callable, curves: LearningCurvesCallback | None = None, *,
               fit_validation: bool = False, fixed: Chosen | None = None) -> HeadFit:
    """Stage 1: the head on the frozen backbone, left in the model's classifier layer.

    ``--head logistic`` / ``ncm`` are fitted on cached pooled features of ``cfg.feature_views`` views per
    photo (one plain, the rest augmented; :mod:`hf_model.heads`), on the validation photos too when
    ``fit_validation`` (the head alone is the model, and it chooses by inner cross-validation). ``--head sgd``
    trains with ``Trainer`` and early stopping on validation, on the cached features unless
    ``--no_feature_cache``. With ``fixed`` (the refit) nothing is held out: the chosen ``C`` / epochs are used.
    """
    set_trainable(setup.model, 0, keep_batchnorm_frozen=True)
    classifier = adapter_for(setup.model).classifier(setup.model)
    if cfg.head != "sgd":
        return fit_closed_form_head(cfg, args, setup, train_split, validation, classifier, fit_validation, fixed)
    epochs = cfg.head_epochs
    if fixed and fixed.head_epochs:
        epochs = fixed.head_epochs
    elif fixed:  # a resumed run skipped stage 1, so nothing chose its epochs
        logger.warning("refit: the head's epochs were not chosen in this run (it resumed after stage 1): training "
                       "it for --head_epochs %d", cfg.head_epochs)
    stage_args = dataclasses.replace(
        args, output_dir=str(Path(args.output_dir) / "stage1"), learning_rate=cfg.head_learning_rate,
        num_train_epochs=epochs, max_steps=-1, save_total_limit=1)
    callbacks = [*([EarlyStoppingCallback(early_stopping_patience=cfg.head_patience)] if validation else []),
                 *([curves] if curves else [])]
    compute_metrics = build_compute_metrics(train_split.features["label"].names) if validation else None
    if cfg.feature_cache:
        train_features = cached_features(cfg, args, setup, train_split, cfg.feature_views)
        head = HeadModel(copy.deepcopy(classifier), cfg.head_dropout)
        head.classifier.requires_grad_(True)
        # at least 64 feature rows a step (on all devices together under keep_global: the recipe of one device)
        head_batch = max(per_device_share(64, devices_in_step(args), cfg.multi_device_batch),
                         args.per_device_train_batch_size)
        stage_args = dataclasses.replace(stage_args, per_device_train_batch_size=head_batch,
                                         dataloader_num_workers=0, dataloader_persistent_workers=False)
        trainer = Trainer(
            model=head, args=stage_args, compute_loss_func=loss, compute_metrics=compute_metrics, callbacks=callbacks,
            train_dataset=features_dataset(train_features, train_split["label"], all_views=True),
            eval_dataset=features_dataset(cached_features(cfg, args, setup, validation, 1), validation["label"],
                                          all_views=False) if validation else None)
        trainer.train()
        classifier.load_state_dict(head.classifier.state_dict())
    else:
        trainer = Trainer(
            model=setup.model, args=stage_args, compute_loss_func=loss, compute_metrics=compute_metrics,
            callbacks=callbacks, data_collator=collate,
            train_dataset=train_split.with_transform(batch_transform(setup.train_transform)),
            eval_dataset=validation.with_transform(batch_transform(setup.eval_transform)) if validation else None)
        trainer.train()
    if validation:
        logger.info("stage 1 done: best validation %s %.4f after %d epochs", args.metric_for_best_model,
                    trainer.state.best_metric, trainer.state.epoch)
    return HeadFit(trainer.state.best_metric, epochs=best_epoch(trainer.state))


def fit_closed_form_head(cfg: TrainConfig, args: TrainingArguments, setup: ModelSetup, train_split: Dataset,
                         validation: Dataset | None, classifier: nn.Linear, fit_validation: bool,
                         fixed: Chosen | None) -> HeadFit:
    """``--head logistic`` / ``ncm`` on cached features (:func:`hf_model.heads.fit_head`), written into ``classifier``.

    Scored on the validation photos' plain view unless they were fitted on (``fit_validation``) or absent.
    """
    photos = concatenate_datasets([train_split, validation]) if fit_validation and validation else train_split
    features = cached_features(cfg, args, setup, photos, cfg.feature_views)
    names = train_split.features["label"].names
    head = fit_head(cfg.head, features, np.asarray(photos["label"]), len(names), groups=photo_digests(photos),
                    class_weight="balanced" if cfg.class_weights == "auto" else None, seed=args.seed,
                    C=fixed.head_C if fixed else None)
    head.write_into(classifier)
    held_out = (head.held_out_logits, head.held_out_labels) if head.held_out_logits is not None else None
    if fit_validation or not validation:
        return HeadFit(None, C=head.C, held_out=held_out)
    logits = head.logits(cached_features(cfg, args, setup, validation, 1)[:, 0])
    scores = build_compute_metrics(names)(EvalPrediction(predictions=logits, label_ids=np.asarray(validation["label"])))
    scores["loss"] = negative_log_likelihood(logits, validation["label"])  # as Trainer's eval_loss
    best = scores[args.metric_for_best_model.removeprefix("eval_")]
    logger.info("stage 1 (%s head) done: validation %s %.4f", cfg.head, args.metric_for_best_model, best)
    return HeadFit(best, C=head.C, held_out=held_out)


def cached_features(cfg: TrainConfig, args: TrainingArguments, setup: ModelSetup, photos: Dataset,
                    views: int) -> np.ndarray:
    """(photos, views, dim) pooled features from the cache, computed first where missing (the first view plain).

    On an accelerator: batches of :data:`FEATURE_BATCH_ON_ACCELERATOR`, the run's DataLoader workers, autocast in
    bf16/fp16 when the run trains in it; under ``torchrun`` every rank computes its share of the photos.
    """
    cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / setup.feature_key
    transforms = [setup.eval_transform] + [setup.train_transform] * (views - 1)
    setup.model.to(args.device)
    on_accelerator = args.device.type != "cpu"
    return extract_features(
        setup.model, photos, transforms, cache / (f"views{views}" if views > 1 else "eval"),
        batch_size=FEATURE_BATCH_ON_ACCELERATOR if on_accelerator else args.per_device_eval_batch_size,
        desc=f"features ({views} view{'s' if views > 1 else ''})", num_workers=args.dataloader_num_workers,
        dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32,
        split_across_ranks=True)


def best_epoch(state: TrainerState) -> float:
    """Epochs a ``Trainer`` took to its best checkpoint (all of them without one): what the refit trains for."""
    if state.best_global_step and state.global_step:
        return state.epoch * state.best_global_step / state.global_step
    return state.epoch



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


def loss_class_weights(cfg: TrainConfig, photos: Dataset) -> torch.Tensor | None:
    """``--class_weights auto``: :func:`balanced_class_weights` of ``photos``; ``None`` (unweighted) otherwise."""
    names = photos.features["label"].names
    return balanced_class_weights(photos["label"], len(names)) if cfg.class_weights == "auto" else None


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
