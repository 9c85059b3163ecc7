"""Fine-tune a pretrained backbone on a labeled photo dataset with ``Trainer``.

The flow reads top to bottom like transformers' image-classification example:
parse -> data -> labels -> model + processor -> transforms -> stage 1 -> stage 2 -> test -> save.
Stage 1 (fastai's ``fine_tune``, the bedroom write-up) trains only the new head on the frozen
backbone, by default on cached features; stage 2 unfreezes the top blocks at a lower learning
rate. ``Trainer`` runs on accelerate, so the same code uses a GPU and mixed precision when
present, and runs data-parallel under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from torch import nn
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_model.backbones import BACKBONES, default_cache_dir, load_image_processor, load_model, resolve_backbone
from hf_model.config import BASE_DEFAULTS, PRESETS, TrainConfig
from hf_model.data import build_dataset
from hf_model.features import HeadModel, cache_key, extract_features, features_dataset
from hf_model.freezing import classifier_of, set_trainable
from hf_model.metrics import ClassificationMetrics, build_compute_metrics, softmax
from hf_model.reports import (
    CONFUSION_MATRIX_PNG,
    LEARNING_CURVES_PNG,
    TOP_LOSSES_PNG,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_top_losses,
    write_model_card,
)
from hf_model.self_training import pseudo_label
from hf_model.transforms import batch_transform, build_eval_transform, build_train_transform, collate

logger = logging.getLogger("hf_model")
RUN_CONFIG_FILE = "hf_model_config.json"


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, TrainingArguments]:
    """CLI -> (TrainConfig, TrainingArguments); ``--preset`` sets defaults that flags override."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((TrainConfig, TrainingArguments))
    parser.set_defaults(**BASE_DEFAULTS)
    preset, _ = parser.parse_known_args(argv)
    if preset.preset:
        if preset.preset not in PRESETS:
            parser.error(f"unknown preset {preset.preset!r}; choose from {sorted(PRESETS)}")
        parser.set_defaults(**PRESETS[preset.preset])
    cfg, args = parser.parse_args_into_dataclasses(args=argv)
    if not cfg.data_dir and not cfg.dataset:
        parser.error("give --data_dir (a folder of photos) or --dataset (a Hub dataset id)")
    if cfg.stages not in (1, 2):
        parser.error("--stages must be 1 (one fine-tuning stage) or 2 (head first, then the top blocks)")
    if cfg.cv_folds and args.push_to_hub:
        parser.error("--push_to_hub publishes one model, and --cv_folds trains one per fold: cross-validate "
                     "without --push_to_hub, then train the model to publish without --cv_folds")
    if not 0 <= cfg.pseudo_label_threshold <= 1:
        parser.error("--pseudo_label_threshold is a probability: 0 (off) to 1")
    return cfg, args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    cfg, args = parse_args(argv)
    command = " ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)])
    if cfg.cv_folds:
        return cross_validate(cfg, args, command)
    return train(cfg, args, command)


def train(cfg: TrainConfig, args: TrainingArguments, command: str = "") -> dict:
    """Run one training: returns the test metrics and writes the model folder to ``args.output_dir``."""
    started = time.time()
    push_to = (args.hub_model_id or Path(args.output_dir).name) if args.push_to_hub else None
    if push_to:
        from hf_model.hub import resolve_token

        resolve_token(args.hub_token)  # no token: fail now, not after an hour of training
        args = dataclasses.replace(args, push_to_hub=False)  # one upload at the end, not one per checkpoint
    set_seed(args.seed)
    data = build_dataset(cfg.data_dir, cfg.dataset, labels_file=cfg.labels_file, image_column=cfg.image_column,
                         label_column=cfg.label_column, split_fractions=cfg.split_fractions, seed=args.seed,
                         skip_bad_images=cfg.skip_bad_images, cv_fold=cfg.cv_fold)
    logger.info("labels from %s; classes %s; %s", data.label_source, _short(data["train"].features["label"].names),
                ", ".join(f"{name} {len(split)}" for name, split in data.items()))
    if cfg.pseudo_label_threshold > 0:
        data["pseudo_labeled"] = teach(cfg, args, data, command)
        set_seed(args.seed)  # the student starts from the same seed as a run without a teacher
    return fit(cfg, args, data, command, started, push_to)


def teach(cfg: TrainConfig, args: TrainingArguments, data: DatasetDict, command: str) -> Dataset:
    """Self-training's first half: a teacher run in ``output_dir/teacher`` labels the unlabeled photos.

    The teacher is a whole run of its own (model, results, card), so an interrupted self-training
    run resumes it, and its test figures sit beside the student's for comparison.
    """
    if len(data.get("unlabeled", [])) == 0:
        raise ValueError("--pseudo_label_threshold needs unlabeled photos, and this dataset has none "
                         "(a bedroom folder's photos without a label are used)")
    teacher_dir = Path(args.output_dir) / "teacher"
    teacher_args = dataclasses.replace(args, output_dir=str(teacher_dir), push_to_hub=False)
    logger.info("self-training: training the teacher in %s", teacher_dir)
    fit(dataclasses.replace(cfg, pseudo_label_threshold=0.0), teacher_args, data, command, time.time(), None)
    names = data["train"].features["label"].names
    shares = np.bincount(data["train"]["label"], minlength=len(names))
    with args.main_process_first(desc="pseudo-labels"):  # under torchrun: after rank 0 has saved the teacher
        pseudo = pseudo_label(teacher_dir, data["unlabeled"], cfg.pseudo_label_threshold, tta=cfg.tta,
                              class_shares=shares / shares.sum(), batch_size=args.per_device_eval_batch_size)
    counts = np.bincount(pseudo["label"], minlength=len(names))
    logger.info("self-training: %d of %d unlabeled photos get the label the teacher is at least %.0f%% sure of, "
                "in the training photos' class shares (%s); the student trains on them too", len(pseudo),
                len(data["unlabeled"]), 100 * cfg.pseudo_label_threshold,
                ", ".join(f"{n} {c}" for n, c in zip(names, counts)))
    return pseudo


def fit(cfg: TrainConfig, args: TrainingArguments, data: DatasetDict, command: str, started: float,
        push_to: str | None) -> dict:
    """Train, test and write the model folder (plots, card; published when ``push_to``) for built splits."""
    label_names = data["train"].features["label"].names
    train_split = data["train"]
    if "pseudo_labeled" in data:
        train_split = concatenate_datasets([train_split, data["pseudo_labeled"]])
    train_split = oversampled(train_split, args.seed) if cfg.oversample else train_split
    weights = class_weights(train_split["label"], len(label_names)) if cfg.class_weights == "auto" else None

    source = resolve_backbone(cfg.backbone, cfg.cache_dir)
    image_size = cfg.image_size or (BACKBONES[cfg.backbone].image_size if cfg.backbone in BACKBONES else None)
    model = load_model(source, label_names, image_size).to(memory_format=torch.channels_last)
    processor = load_image_processor(source, model.config, image_size)
    train_transform = build_train_transform(
        processor, image_size or _processor_size(processor), zoom=cfg.zoom, rotation=cfg.rotation,
        shift=cfg.shift, shear=cfg.shear, hflip=cfg.hflip, brightness=cfg.brightness)
    eval_transform = build_eval_transform(processor)

    history: list[dict] = []
    stage_boundary = stage1 = None
    resuming = args.resume_from_checkpoint or (_last_checkpoint(args.output_dir) if cfg.resume else None)
    if not resuming and args.process_index == 0:
        _clear_previous_run(Path(args.output_dir))
    if cfg.stages == 2 and not resuming:  # a stage-2 checkpoint already holds the trained head
        history += train_head(cfg, args, model, train_split, data["validation"], train_transform, eval_transform,
                              weights, label_names, key=cache_key(source, image_size, cfg.augmentation_key()))
        stage_boundary = max(entry.get("epoch", 0) for entry in history)
        stage1 = (best_metric(history, args), copy.deepcopy(model.state_dict()))
    counts = set_trainable(model, cfg.unfreeze_top_blocks, keep_batchnorm_frozen=cfg.freeze_batchnorm)
    logger.info("fine-tuning %d of %d blocks: %d parameters train, %d frozen", counts["blocks"],
                counts["of_blocks"], counts["trainable"], counts["frozen"])
    trainer = WeightedLossTrainer(
        model=model,
        args=args,
        class_weights=weights,
        train_dataset=train_split.with_transform(batch_transform(train_transform)),
        eval_dataset=data["validation"].with_transform(batch_transform(eval_transform)),
        data_collator=collate,
        compute_metrics=build_compute_metrics(label_names),
        # timm_wrapper keeps its preprocessing in config.json; HF-native processors are saved beside the model
        processing_class=None if model.config.model_type == "timm_wrapper" else processor,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)],
    )
    train_result = trainer.train(resume_from_checkpoint=resuming)
    history += _offset_epochs(trainer.state.log_history, history)
    if stage1 and not improves(trainer.state.best_metric, stage1[0], args.greater_is_better):
        # e.g. a few photos per class: fine-tuning the blocks overfits; the frozen backbone's head generalizes better
        logger.info("stage 2's best validation %s (%s) does not beat stage 1's (%s): keeping the stage 1 model",
                    args.metric_for_best_model, trainer.state.best_metric, stage1[0])
        model.load_state_dict(stage1[1])
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    views = [eval_transform] + ([lambda image: eval_transform(image.transpose(0))] if cfg.tta else [])
    test_metrics, test_probs = evaluate_split(trainer, data["test"], views, label_names)
    trainer.log_metrics("test", {k: v for k, v in test_metrics.items() if not isinstance(v, dict | list)})
    trainer.save_metrics("test", test_metrics)
    if trainer.is_world_process_zero():
        output_dir = Path(args.output_dir)
        (output_dir / "log_history.json").write_text(json.dumps(history, indent=1))
        record = _save_run_config(output_dir, cfg, args, command, data, image_size)
        plots = write_plots(output_dir, history, stage_boundary, test_metrics, test_probs, data["test"], label_names)
        write_model_card(
            output_dir, base_model=base_model_id(cfg.backbone), dataset=cfg.dataset, metrics=test_metrics,
            command=command, hyperparameters=record["hyperparameters"], label_names=label_names, plots=plots,
            label_source=data.label_source, split_sizes=record["split_sizes"], model_id=push_to)
        print(_summary(test_metrics, time.time() - started, args.output_dir), flush=True)
        if push_to:
            from hf_model.hub import PublishError, publish_model

            try:
                published = publish_model(output_dir, push_to, token=args.hub_token,
                                          private=bool(args.hub_private_repo))
            except PublishError as err:  # the training is done and saved: only the upload needs redoing
                sys.exit(f"Publishing failed: {err}\nThe trained model is safe in {output_dir}; upload it without "
                         f"training again: hf-model publish model {output_dir} --repo_id {push_to}")
            print(f"Published to {published.url}", flush=True)
    return test_metrics


def cross_validate(cfg: TrainConfig, args: TrainingArguments, command: str) -> dict:
    """Stratified grouped k-fold cross-validation: one full training per fold, test metrics mean ± std.

    Every labeled photo is tested exactly once. Cached stage-1 features are shared by all folds.
    """
    root = Path(args.output_dir)
    per_fold = []
    for fold in range(cfg.cv_folds):
        fold_cfg = dataclasses.replace(cfg, cv_folds=0, cv_fold=(fold, cfg.cv_folds))
        fold_args = dataclasses.replace(args, output_dir=str(root / f"fold-{fold}"), push_to_hub=False)
        logger.info("cross-validation fold %d of %d", fold + 1, cfg.cv_folds)
        per_fold.append(train(fold_cfg, fold_args, command))
    for metrics in per_fold:  # per-class F1 as flat keys, so it is averaged like the rest
        metrics.update({f"test_f1_{name}": row["f1"] for name, row in metrics.get("test_per_class", {}).items()})
    keys = [k for k, v in per_fold[0].items() if isinstance(v, float)]
    summary = {k.removeprefix("test_"): {"mean": float(np.mean([m[k] for m in per_fold])),
                                         "std": float(np.std([m[k] for m in per_fold])),
                                         "folds": [m[k] for m in per_fold]} for k in keys}
    summary["photos"] = sum(m["test_samples"] for m in per_fold)
    (root / "cv_results.json").write_text(json.dumps({"command": command, "folds": cfg.cv_folds, **summary}, indent=2))
    acc, f1 = summary["accuracy"], summary["f1_macro"]
    print(f"{cfg.cv_folds}-fold cross-validation over {summary['photos']} photos: accuracy {acc['mean']:.3f} ± "
          f"{acc['std']:.3f}, macro-F1 {f1['mean']:.3f} ± {f1['std']:.3f} (results in {root / 'cv_results.json'})",
          flush=True)
    return summary


def write_plots(output_dir: Path, history: list[dict], stage_boundary: float | None, metrics: dict,
                probs: np.ndarray, test: Dataset, label_names: list[str]) -> list[str]:
    """Learning curves, the confusion matrix and the worst test mistakes, as PNGs in the model folder."""
    plot_learning_curves(history, output_dir / LEARNING_CURVES_PNG,
                         stage_boundaries=[stage_boundary] if stage_boundary else None)
    plot_confusion_matrix(metrics["test_confusion_matrix"], label_names, output_dir / CONFUSION_MATRIX_PNG)
    truth = np.asarray(test["label"])
    predicted = probs.argmax(axis=1)
    plot_top_losses(list(test["image"]), [label_names[i] for i in truth], [label_names[i] for i in predicted],
                    probs.max(axis=1), output_dir / TOP_LOSSES_PNG,
                    losses=-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)))
    return [LEARNING_CURVES_PNG, CONFUSION_MATRIX_PNG, TOP_LOSSES_PNG]


def base_model_id(backbone: str) -> str | None:
    """The Hub id of the pretrained weights, for the card's ``base_model``."""
    if backbone in BACKBONES:
        entry = BACKBONES[backbone]
        return entry.hub_id or f"timm/tf_efficientnet_lite{entry.lite_variant}.in1k"
    return None if Path(backbone).exists() else backbone


def train_head(cfg: TrainConfig, args: TrainingArguments, model: nn.Module, train_split: Dataset,
               validation: Dataset, train_transform, eval_transform, weights, label_names: list[str],
               key: str) -> list[dict]:
    """Stage 1: the new head on the frozen backbone; copies the best head into ``model``."""
    stage_args = dataclasses.replace(
        args, output_dir=str(Path(args.output_dir) / "stage1"), learning_rate=cfg.head_learning_rate,
        num_train_epochs=cfg.head_epochs, max_steps=-1, save_total_limit=1)
    set_trainable(model, 0, keep_batchnorm_frozen=True)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=cfg.head_patience)]
    if cfg.feature_cache:
        cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / key
        views = [eval_transform] + [train_transform] * (cfg.feature_views - 1)
        device = stage_args.device
        model.to(device)
        with stage_args.main_process_first(desc="stage 1 features"):  # other ranks then read the cache
            train_features = extract_features(model, train_split, views, cache / f"views{cfg.feature_views}",
                                              desc="stage 1 features (train)")
            val_features = extract_features(model, validation, [eval_transform], cache / "eval",
                                            desc="stage 1 features (validation)")
        head = HeadModel(copy.deepcopy(classifier_of(model)), cfg.head_dropout)
        head.classifier.requires_grad_(True)
        stage_args = dataclasses.replace(stage_args, per_device_train_batch_size=max(
            64, args.per_device_train_batch_size), dataloader_num_workers=0)
        trainer = WeightedLossTrainer(
            model=head, args=stage_args, class_weights=weights,
            train_dataset=features_dataset(train_features, train_split["label"], all_views=True),
            eval_dataset=features_dataset(val_features, validation["label"], all_views=False),
            compute_metrics=build_compute_metrics(label_names), callbacks=callbacks)
        trainer.train()
        classifier_of(model).load_state_dict(head.classifier.state_dict())
    else:
        trainer = WeightedLossTrainer(
            model=model, args=stage_args, class_weights=weights,
            train_dataset=train_split.with_transform(batch_transform(train_transform)),
            eval_dataset=validation.with_transform(batch_transform(eval_transform)),
            data_collator=collate, compute_metrics=build_compute_metrics(label_names), callbacks=callbacks)
        trainer.train()
    best = trainer.state.best_metric
    logger.info("stage 1 done: best validation loss %.4f after %d epochs", best, trainer.state.epoch)
    return [dict(entry, stage=1) for entry in trainer.state.log_history]


class WeightedLossTrainer(Trainer):
    """``Trainer`` whose cross-entropy can weight classes (``--class_weights auto``)."""

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"]
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        loss = nn.functional.cross_entropy(logits, labels, weight=weight,
                                           label_smoothing=self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss


def class_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    """Balanced weights n / (k * count): each class carries the same total weight in the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def oversampled(dataset: Dataset, seed: int) -> Dataset:
    """Repeat photos of the smaller classes until every class is as large as the largest."""
    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    target = np.bincount(labels).max()
    ids = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        extra = rng.choice(members, target - len(members), replace=True) if len(members) < target else []
        ids += [*members, *extra]
    return dataset.select(sorted(ids))


def evaluate_split(trainer: Trainer, dataset: Dataset, views: list, label_names: list[str]
                   ) -> tuple[dict, np.ndarray]:
    """Detailed test metrics and probabilities; several views (test-time augmentation) are averaged."""
    probs = []
    for view in views:
        output = trainer.predict(dataset.with_transform(batch_transform(view)), metric_key_prefix="test")
        probs.append(softmax(output.predictions))
    mean = np.mean(probs, axis=0)
    metrics = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=mean, references=dataset["label"], label_names=label_names, detailed=True)
    out = {f"test_{k}": v for k, v in metrics.items()}
    if len(views) > 1:
        out["test_accuracy_without_tta"] = float((probs[0].argmax(1) == np.asarray(dataset["label"])).mean())
    out["test_samples"] = len(dataset)
    return out, mean


def best_metric(history: list[dict], args: TrainingArguments) -> float | None:
    """The best validation value of ``metric_for_best_model`` in a log history (what the Trainer restores)."""
    name = args.metric_for_best_model
    key = name if name.startswith("eval_") else f"eval_{name}"
    values = [entry[key] for entry in history if key in entry]
    if not values:
        return None
    return max(values) if args.greater_is_better else min(values)


def improves(value: float | None, reference: float | None, greater_is_better: bool) -> bool:
    """Whether ``value`` beats ``reference``; a missing or NaN value (a diverged run) never does."""
    if reference is None:
        return True
    if value is None or np.isnan(value):
        return False
    return value > reference if greater_is_better else value < reference


def _offset_epochs(log_history: list[dict], before: list[dict]) -> list[dict]:
    """Stage-2 log entries with epochs counted after stage 1's, for one continuous learning curve."""
    offset = max((entry.get("epoch", 0) for entry in before), default=0)
    return [dict(entry, epoch=entry.get("epoch", 0) + offset, stage=2 if before else 1) for entry in log_history]


def _clear_previous_run(output_dir: Path) -> None:
    """A fresh run in a used folder: drop the old checkpoints and results so none leak into this run's."""
    stale = [*output_dir.glob("checkpoint-*"), output_dir / "stage1", *output_dir.glob("*results.json"),
             output_dir / "log_history.json", output_dir / "calibration.json"]
    for path in (p for p in stale if p.exists()):
        logger.info("starting over: removing %s from a previous run", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _last_checkpoint(output_dir: str) -> str | None:
    """Resume an interrupted run in the same output dir, like transformers' examples do."""
    if not Path(output_dir).is_dir():
        return None
    checkpoint = get_last_checkpoint(output_dir)
    if checkpoint:
        logger.info("resuming from %s (pass --no_resume to start over)", checkpoint)
    return checkpoint


def _save_run_config(output_dir: Path, cfg: TrainConfig, args: TrainingArguments, command: str, data,
                     image_size: int | None) -> dict:
    hyperparameters = {"seed": args.seed, "learning_rate": args.learning_rate, "epochs": args.num_train_epochs,
                       "batch_size": args.per_device_train_batch_size, "weight_decay": args.weight_decay,
                       "lr_scheduler": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
                       "image_size": image_size,
                       **{k: v for k, v in asdict(cfg).items() if k not in ("data_dir", "dataset", "preset")}}
    record = {"command": command, "config": asdict(cfg), "seed": args.seed, "image_size": image_size,
              "hyperparameters": hyperparameters, "label_source": data.label_source,
              "split_sizes": {name: len(split) for name, split in data.items()}}
    (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str))
    return record


def _summary(metrics: dict, seconds: float, output_dir: str) -> str:
    parts = [f"test accuracy {metrics['test_accuracy']:.3f}", f"macro-F1 {metrics['test_f1_macro']:.3f}"]
    for key in ("test_roc_auc", "test_top5_accuracy"):
        if key in metrics:
            parts.append(f"{key.removeprefix('test_').replace('_', '-')} {metrics[key]:.3f}")
    minutes, secs = divmod(int(seconds), 60)
    return (f"Done in {minutes}m{secs:02d}s: " + ", ".join(parts)
            + f" on {metrics['test_samples']} test photos. Model saved to {output_dir}")


def _processor_size(processor) -> int:
    size = processor.size
    return size.get("shortest_edge") or size["height"]


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
