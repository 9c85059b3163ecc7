"""One config for a training run, plus named presets.

``TrainConfig`` holds what ``TrainingArguments`` does not: data, backbone, augmentation and
the fine-tuning recipe. ``train.py`` parses both with ``HfArgumentParser``; a ``--preset``
only changes defaults, so any flag given on the command line still wins.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

from hf_model.backbones import DEFAULT_BACKBONE


@dataclass
class TrainConfig:
    """Everything about a run that is not a ``TrainingArguments`` field."""

    preset: str | None = field(default=None, metadata={"help": "named defaults: bedrooms or birds"})
    data_dir: str | None = field(
        default=None, metadata={"help": "folder of photos (bedrooms, birds.csv or class folders)"})
    dataset: str | None = field(default=None, metadata={"help": "Hub dataset id with an image and a label column"})
    labels_file: str | None = field(
        default=None, metadata={"help": "bedrooms: labels.csv or labels.txt (default: labels.csv)"})
    image_column: str = field(default="image", metadata={"help": "image column of a Hub dataset"})
    label_column: str = field(default="label", metadata={"help": "label column of a Hub dataset"})
    split_fractions: list[float] = field(
        default_factory=lambda: [0.76, 0.14, 0.10], metadata={"help": "train, validation, test shares"})
    skip_bad_images: bool = field(default=False, metadata={"help": "skip unreadable photos with a warning"})
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={"help": "registry name, model dir or Hub id"})
    image_size: int | None = field(default=None, metadata={"help": "input size (default: the backbone's)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where converted backbones live"})
    rotation: float = field(default=20.0, metadata={"help": "augmentation: max rotation in degrees"})
    zoom: float = field(default=0.6, metadata={"help": "augmentation: smallest crop area share (1 = no zoom)"})
    shift: float = field(default=0.1, metadata={"help": "augmentation: max shift as a share of the size"})
    shear: float = field(default=10.0, metadata={"help": "augmentation: max shear in degrees"})
    hflip: bool = field(default=True, metadata={"help": "augmentation: random horizontal flip"})
    brightness: float = field(default=0.3, metadata={"help": "augmentation: brightness jitter"})
    stages: int = field(default=2, metadata={"help": "2: train the head on the frozen backbone, then the top "
                                                     "blocks; 1: one stage training --unfreeze_top_blocks"})
    unfreeze_top_blocks: int = field(default=2, metadata={"help": "blocks trained in the last stage (-1: all)"})
    freeze_batchnorm: bool = field(default=True, metadata={"help": "keep BatchNorm frozen, in eval mode"})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "stage 1 learning rate"})
    head_epochs: int = field(default=100, metadata={"help": "stage 1 epoch limit (early stopping ends it sooner)"})
    head_patience: int = field(default=10, metadata={"help": "stage 1 early-stopping patience in epochs"})
    head_dropout: float = field(default=0.2, metadata={"help": "dropout before the head in stage 1"})
    feature_cache: bool = field(default=True, metadata={"help": "stage 1 on cached backbone features (fast)"})
    feature_views: int = field(default=5, metadata={"help": "views per photo in the cache: 1 plain + augmented"})
    class_weights: str = field(default="none", metadata={"help": "none or auto (balanced cross-entropy)"})
    oversample: bool = field(default=False, metadata={"help": "repeat smaller classes' photos to balance"})
    tta: bool = field(default=False, metadata={"help": "test-time augmentation: average with the mirrored photo"})
    pseudo_label_threshold: float = field(default=0.0, metadata={
        "help": "self-training: > 0 first trains a teacher (in output_dir/teacher), then trains again with the "
                "unlabeled photos it labels at least this surely (bedrooms); 0: off"})
    cv_folds: int = field(default=0, metadata={"help": "k > 1: k-fold cross-validation instead of one split"})
    cv_fold: tuple[int, int] | None = field(default=None, metadata={"help": argparse.SUPPRESS})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in output_dir"})
    early_stopping_patience: int = field(default=5, metadata={"help": "epochs without improvement before stopping"})

    def augmentation_key(self) -> str:
        """What decides the cached augmented views: change any of it and the cache is not reused."""
        return (f"zoom={self.zoom},rot={self.rotation},shift={self.shift},shear={self.shear},"
                f"flip={self.hflip},bright={self.brightness}")


# Defaults every run gets (what transformers' image-classification example sets by hand).
BASE_DEFAULTS: dict = {
    "remove_unused_columns": False,  # the transforms need the raw image column
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "loss",
    "greater_is_better": False,
    "save_total_limit": 2,
    "report_to": "none",
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "weight_decay": 0.01,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "disable_tqdm": False,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning only helps copies to a GPU (and warns without)
}

# Presets are data: overrides of TrainConfig and TrainingArguments defaults.
PRESETS: dict[str, dict] = {
    # One stage: every layer (BatchNorm included) fine-tunes from the start at 3e-4. On the
    # bedroom validation photos this matched the write-up's two-stage recipe (--stages 2
    # --freeze_batchnorm), which stays one flag away; see the README's results.
    "bedrooms": {
        "stages": 1,
        "unfreeze_top_blocks": -1,
        "freeze_batchnorm": False,
        "learning_rate": 3e-4,
        "num_train_epochs": 12,
        "early_stopping_patience": 5,
        "split_fractions": [0.76, 0.14, 0.10],
    },
    # Four photos per species: most of the work is the head on cached features of many
    # augmented views; then the top blocks adapt briefly.
    "birds": {
        "stages": 2,
        "unfreeze_top_blocks": 3,
        "learning_rate": 2e-4,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 32,
        "split_fractions": [0.75, 0.125, 0.125],
        "feature_views": 8,
        "head_learning_rate": 3e-3,
        "rotation": 15.0,
        "zoom": 0.5,
        "tta": True,
    },
}
