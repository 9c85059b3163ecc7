"""Fine-tune a pretrained backbone on a labeled photo dataset with ``Trainer``.

The flow reads top to bottom like transformers' image-classification example:
parse -> data -> labels -> model + processor -> transforms -> Trainer -> train -> test -> save.
``Trainer`` runs on accelerate, so the same code uses a GPU and mixed precision when present,
and runs data-parallel under ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_model.backbones import BACKBONES, load_image_processor, load_model, resolve_backbone
from hf_model.config import BASE_DEFAULTS, PRESETS, TrainConfig
from hf_model.data import build_dataset
from hf_model.metrics import build_compute_metrics
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
    return cfg, args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    cfg, args = parse_args(argv)
    return train(cfg, args, command=" ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)]))


def train(cfg: TrainConfig, args: TrainingArguments, command: str = "") -> dict:
    """Run one training: returns the test metrics and writes the model folder to ``args.output_dir``."""
    started = time.time()
    set_seed(args.seed)
    data = build_dataset(cfg.data_dir, cfg.dataset, labels_file=cfg.labels_file, image_column=cfg.image_column,
                         label_column=cfg.label_column, split_fractions=cfg.split_fractions, seed=args.seed,
                         skip_bad_images=cfg.skip_bad_images)
    label_names = data["train"].features["label"].names
    logger.info("labels from %s; classes %s; %s", data.label_source, _short(label_names),
                ", ".join(f"{name} {len(split)}" for name, split in data.items()))

    source = resolve_backbone(cfg.backbone, cfg.cache_dir)
    image_size = cfg.image_size or (BACKBONES[cfg.backbone].image_size if cfg.backbone in BACKBONES else None)
    model = load_model(source, label_names, image_size).to(memory_format=torch.channels_last)
    processor = load_image_processor(source, model.config, image_size)

    train_transform = build_train_transform(
        processor, image_size or _processor_size(processor), zoom=cfg.zoom, rotation=cfg.rotation,
        shift=cfg.shift, shear=cfg.shear, hflip=cfg.hflip, brightness=cfg.brightness)
    eval_transform = batch_transform(build_eval_transform(processor))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"].with_transform(batch_transform(train_transform)),
        eval_dataset=data["validation"].with_transform(eval_transform),
        data_collator=collate,
        compute_metrics=build_compute_metrics(label_names),
        # timm_wrapper keeps its preprocessing in config.json; HF-native processors are saved beside the model
        processing_class=None if model.config.model_type == "timm_wrapper" else processor,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)],
    )

    checkpoint = args.resume_from_checkpoint or (_last_checkpoint(args.output_dir) if cfg.resume else None)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    trainer.compute_metrics = build_compute_metrics(label_names, detailed=True)
    test_metrics = trainer.evaluate(data["test"].with_transform(eval_transform), metric_key_prefix="test")
    trainer.save_metrics("test", test_metrics)
    if trainer.is_world_process_zero():
        _save_run_config(Path(args.output_dir), cfg, command, data, image_size)
        print(_summary(test_metrics, time.time() - started, args.output_dir), flush=True)
    return test_metrics


def _last_checkpoint(output_dir: str) -> str | None:
    """Resume an interrupted run in the same output dir, like transformers' examples do."""
    if not Path(output_dir).is_dir():
        return None
    checkpoint = get_last_checkpoint(output_dir)
    if checkpoint:
        logger.info("resuming from %s (pass --no_resume to start over)", checkpoint)
    return checkpoint


def _save_run_config(output_dir: Path, cfg: TrainConfig, command: str, data, image_size: int | None) -> None:
    record = {"command": command, "config": asdict(cfg), "image_size": image_size,
              "label_source": data.label_source, "split_sizes": {name: len(split) for name, split in data.items()}}
    (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2))


def _summary(metrics: dict, seconds: float, output_dir: str) -> str:
    parts = [f"test accuracy {metrics['test_accuracy']:.3f}", f"macro-F1 {metrics['test_f1_macro']:.3f}"]
    for key in ("test_roc_auc", "test_top5_accuracy"):
        if key in metrics:
            parts.append(f"{key.removeprefix('test_').replace('_', '-')} {metrics[key]:.3f}")
    minutes, secs = divmod(int(seconds), 60)
    return f"Done in {minutes}m{secs:02d}s: " + ", ".join(parts) + f". Model saved to {output_dir}"


def _processor_size(processor) -> int:
    size = processor.size
    return size.get("shortest_edge") or size["height"]


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
