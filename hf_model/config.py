"""One config for a training run, plus named presets.

``TrainConfig`` holds what ``TrainingArguments`` does not: data, backbone, augmentation and
the fine-tuning recipe. ``train.py`` parses both with ``HfArgumentParser``; a ``--preset``
only changes defaults, so any flag given on the command line still wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in output_dir"})
    early_stopping_patience: int = field(default=5, metadata={"help": "epochs without improvement before stopping"})


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
}

# Presets are data: overrides of TrainConfig and TrainingArguments defaults.
PRESETS: dict[str, dict] = {
    "bedrooms": {
        "num_train_epochs": 12,
        "learning_rate": 3e-4,
        "split_fractions": [0.76, 0.14, 0.10],
    },
    "birds": {
        "num_train_epochs": 15,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 32,
        "split_fractions": [0.75, 0.125, 0.125],
        "rotation": 15.0,
        "zoom": 0.5,
    },
}
