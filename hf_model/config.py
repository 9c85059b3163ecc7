"""One config for a training run, its presets, the CLI that fills it, and the run record that stores it.

``TrainConfig`` holds what ``TrainingArguments`` does not: data, backbone, augmentation and
the fine-tuning recipe. ``parse_args`` fills both from the command line with ``HfArgumentParser``;
a ``--preset`` (and then a ``--preset_file``, such as ``hf-model tune``'s ``best_preset.json``) only
changes defaults, so any flag given on the command line still wins. A finished run writes both into
``hf_model_config.json`` (:class:`RunRecord`), and :func:`load_run_config` loads them back, so
calibration, publishing and studies rebuild exactly the run's data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from hf_model import __version__
from hf_model.atomic import write_json_atomic
from hf_model.backbones import DEFAULT_BACKBONE
from hf_model.exit_status import exit_statuses

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_FRACTIONS = (0.76, 0.14, 0.10)  # train, validation, test
DEFAULT_SEED = 42  # TrainingArguments' default seed, which also decides the splits
MANY_PHOTOS = 500  # photos in the median class from which fine-tuning blocks is chosen over the head alone
TOP_K = 5  # top-k accuracy, and the most classes a card or a demo lists for one photo
CLASS_WEIGHTS = ("none", "auto")
MULTI_DEVICE_BATCH = ("keep_global", "scale_lr")  # how a recipe for one device runs on several (distributed.py)
HEADS = ("logistic", "ncm", "sgd")  # how stage 1 fits the head: hf_model.heads (closed form) or Trainer (sgd)
RUN_CONFIG_FILE = "hf_model_config.json"
TRAIN_EXIT_STATUSES = exit_statuses(
    "the model was trained (or the folder already held this finished run)",
    "the photos, labels or output folder cannot be used (the message says which and why)")
PATH_FIELDS = ("data_dir", "dataset", "labels_file", "backbone", "cache_dir", "preset_file")  # local files or folders
# TrainingArguments that check the machine (a GPU, bf16, DeepSpeed): a record written on a GPU loads anywhere
HARDWARE_ARGS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval", "deepspeed", "fsdp", "fsdp_config",
                 "use_cpu", "torch_compile", "half_precision_backend")
# TrainingArguments for the processes of torchrun / accelerate launch, which one process refuses: never loaded back
LAUNCH_ARGS = ("ddp_backend",)
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun / accelerate launch for each process


@dataclass
class TrainConfig:
    """Everything about a run that is not a ``TrainingArguments`` field."""

    preset: str | None = field(default=None, metadata={"help": "named defaults: bedrooms or birds"})
    preset_file: str | None = field(default=None, metadata={
        "help": "a JSON object of TrainConfig and TrainingArguments values (e.g. hf-model tune's best_preset.json), "
                "applied after --preset; flags on the command line still win"})
    data_dir: str | None = field(
        default=None, metadata={"help": "folder of photos (bedrooms, birds.csv or class folders)"})
    dataset: str | None = field(default=None, metadata={"help": "Hub dataset id with an image and a label column"})
    labels_file: str | None = field(
        default=None, metadata={"help": "bedrooms: labels.csv or labels.txt (default: labels.csv)"})
    image_column: str = field(default="image", metadata={"help": "image column of a Hub dataset"})
    label_column: str = field(default="label", metadata={
        "help": "label column of a Hub dataset, or of a metadata.csv/.jsonl/.parquet under --data_dir"})
    split_fractions: list[float] = field(
        default_factory=lambda: list(DEFAULT_SPLIT_FRACTIONS), metadata={"help": "train, validation, test shares"})
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
    unfreeze_top_blocks: int | None = field(default=None, metadata={
        "help": "blocks trained in the last stage (-1: all; 0: the head alone, on the frozen backbone). Default: "
                f"chosen by the photos per class (0 below {MANY_PHOTOS}, else 2); the log says which and why"})
    head: str = field(default="logistic", metadata={
        "help": "how the head is fitted on the frozen backbone: logistic (logistic regression, L2 strength by inner "
                "cross-validation), ncm (cosine nearest class mean) or sgd (trained by Trainer, early stopping)",
        "choices": list(HEADS)})
    refit: bool = field(default=True, metadata={
        "help": "after validation has chosen the settings, train the saved model once more on every labeled photo "
                "(train + validation + test; in a cross-validation fold, all but the fold's test photos)"})
    temperature_scaling: bool = field(default=True, metadata={
        "help": "calibrate the probabilities: a temperature fitted on held-out predictions, folded into the head"})
    freeze_batchnorm: bool = field(default=True, metadata={"help": "keep BatchNorm frozen, in eval mode"})
    head_learning_rate: float = field(default=1e-3, metadata={"help": "stage 1 learning rate"})
    multi_device_batch: str = field(default="keep_global", metadata={
        "help": "on several GPUs (torchrun, accelerate launch, or one process over several GPUs): keep_global divides "
                "--per_device_train_batch_size by the number of devices, so the global batch, updates and learning "
                "rate stay those of one device; scale_lr keeps the per-device batch and multiplies the learning "
                "rates by the number of devices (linear scaling rule)", "choices": list(MULTI_DEVICE_BATCH)})
    head_epochs: int = field(default=100, metadata={"help": "stage 1 epoch limit (early stopping ends it sooner)"})
    head_patience: int = field(default=10, metadata={"help": "stage 1 early-stopping patience in epochs"})
    head_dropout: float = field(default=0.2, metadata={"help": "dropout before the head in stage 1"})
    feature_cache: bool = field(default=True, metadata={"help": "stage 1 on cached backbone features (fast)"})
    export: str = field(default="onnx", metadata={
        "help": "at the end of training, write model.onnx beside the weights (checked against PyTorch first), which "
                "hf-model predict and the demo serve faster on a CPU; none to skip", "choices": ["onnx", "none"]})
    feature_views: int = field(default=1, metadata={
        "help": "views per photo the head learns from: 1 plain, the rest augmented (more views did not help on "
                "either task in cross-validation; README, Results)"})
    class_weights: str = field(default="none", metadata={
        "help": "none or auto (balanced cross-entropy)", "choices": list(CLASS_WEIGHTS)})
    oversample: bool = field(default=False, metadata={"help": "repeat smaller classes' photos to balance"})
    tta: bool = field(default=False, metadata={"help": "test-time augmentation: average with the mirrored photo"})
    pseudo_label_threshold: float = field(default=0.0, metadata={
        "help": "self-training: > 0 first trains a teacher (in output_dir/teacher), then trains again with the "
                "unlabeled photos it labels at least this surely (bedrooms); 0: off"})
    cv_folds: int = field(default=0, metadata={"help": "k > 1: k-fold cross-validation instead of one split"})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in output_dir"})
    early_stopping_patience: int = field(default=5, metadata={"help": "epochs without improvement before stopping"})

    def __post_init__(self) -> None:
        """Reject values no run can use, naming the flag (``HfArgumentParser`` builds this dataclass)."""
        fractions = [float(f) for f in self.split_fractions]
        if len(fractions) != 3 or not all(0 < f < 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"--split_fractions takes three shares (train, validation, test), each above 0, that "
                             f"sum to 1 (validation picks the best epoch; test is scored), got {self.split_fractions}")
        checks = [
            (self.head in HEADS, f"--head must be one of {list(HEADS)}, got {self.head!r}"),
            (self.head == "sgd" or self.feature_cache, f"--head {self.head} is fitted on cached features: drop "
                                                       "--no_feature_cache, or use --head sgd"),
            (self.stages in (1, 2), "--stages must be 1 (one fine-tuning stage) or 2 (head first, then the top "
                                    "blocks)"),
            (self.class_weights in CLASS_WEIGHTS, f"--class_weights must be one of {list(CLASS_WEIGHTS)}, "
                                                  f"got {self.class_weights!r}"),
            (0 <= self.pseudo_label_threshold <= 1, "--pseudo_label_threshold is a probability: 0 (off) to 1"),
            (self.cv_folds == 0 or self.cv_folds >= 2, "--cv_folds is 0 (off) or a number of folds, at least 2"),
            (self.feature_views >= 1, "--feature_views counts views per photo: at least 1"),
            (0 < self.zoom <= 1, "--zoom is the smallest crop's share of the photo: more than 0, at most 1"),
            (self.unfreeze_top_blocks is None or self.unfreeze_top_blocks >= -1,
             "--unfreeze_top_blocks is a number of blocks, or -1 for all"),
            (0 <= self.head_dropout < 1, "--head_dropout is a probability below 1"),
            (self.image_size is None or self.image_size >= 32, "--image_size is in pixels: at least 32"),
            (min(self.rotation, self.shear, self.brightness) >= 0, "--rotation, --shear and --brightness are "
                                                                   "amounts of augmentation: 0 (off) or more"),
            (0 <= self.shift < 1, "--shift is a share of the image size: 0 (off) to below 1"),
            (min(self.head_epochs, self.head_patience, self.early_stopping_patience) >= 1,
             "--head_epochs, --head_patience and --early_stopping_patience count epochs: at least 1"),
            (self.head_learning_rate > 0, "--head_learning_rate must be above 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for name, value in asdict(self).items():  # nan slips through comparisons, inf through upper bounds
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}")

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
    # DDP's search for parameters that got no gradient costs a pass over the graph every step; every trainable
    # parameter of our stages takes part in the loss (frozen ones have requires_grad off and are not tracked)
    "ddp_find_unused_parameters": False,
}
DATALOADER_WORKERS_ON_GPU = 4  # per rank: decoding and augmenting photos must keep up with the GPU


def hardware_defaults() -> dict:
    """TrainingArguments defaults that depend on the machine: on a GPU, pinned memory and ``DATALOADER_WORKERS_ON_GPU``
    persistent workers per rank (capped by the CPUs); on a CPU, loading in the training process, which the cores
    are busy with anyway, and ``use_cpu`` under a launcher (``LOCAL_RANK`` set)."""
    if not torch.cuda.is_available():
        on_cpu = {"dataloader_pin_memory": False, "dataloader_num_workers": 0, "dataloader_persistent_workers": False}
        if "LOCAL_RANK" in os.environ and torch.accelerator.current_accelerator(check_available=True) is None:
            # accelerate wraps the model in DDP on CPUs only with use_cpu: without it each process would train its
            # own copy on its share of the photos, gradients never averaged, and rank 0 save a model of half the data
            on_cpu["use_cpu"] = True
        return on_cpu
    workers = min(DATALOADER_WORKERS_ON_GPU, max(1, (os.cpu_count() or 1) // max(1, torch.cuda.device_count())))
    return {"dataloader_pin_memory": True, "dataloader_num_workers": workers, "dataloader_persistent_workers": True}

# Presets are data: overrides of TrainConfig and TrainingArguments defaults.
PRESETS: dict[str, dict] = {
    # The head alone: a logistic regression on the frozen backbone's features of each plain photo, refit on all
    # 386 labeled photos, temperature-scaled. In 5-fold cross-validation no fine-tuning recipe, augmented view
    # count, head or input size did better (benchmarks/heads.py, README "Results"); Lite1 (240 px) led Lite0
    # and Lite2 by a little, at 1.3x Lite0's inference time.
    "bedrooms": {
        "backbone": "efficientnet-lite1",
        "unfreeze_top_blocks": 0,
        "head": "logistic",
        "feature_views": 1,
        "split_fractions": [0.76, 0.14, 0.10],
    },
    # Four photos per species: the head alone, a logistic regression on the plain photo's features (525 classes:
    # each augmented view would multiply the L-BFGS fits' time, and its inner cross-validation's), refit on every
    # labeled photo; --cv_folds 4 tests one photo of each species per fold, learning from the other three.
    "birds": {
        "unfreeze_top_blocks": 0,
        "head": "logistic",
        "per_device_train_batch_size": 32,
        "split_fractions": [0.75, 0.125, 0.125],
        "feature_views": 1,
        "rotation": 15.0,
        "zoom": 0.5,
    },
}


def program() -> str:
    """How the user started training, for messages: ``hf-model train`` or ``python train.py``."""
    return "hf-model train" if Path(sys.argv[0]).name == "hf-model" else "python train.py"


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, TrainingArguments]:
    """CLI -> (TrainConfig, TrainingArguments); ``--preset`` sets defaults that flags override.

    A bad value exits with a usage error naming the flag (argparse's exit code 2), not a traceback; a value that
    came from ``--preset`` or ``--preset_file`` rather than the command line is said to.
    """
    argv = sys.argv[1:] if argv is None else argv
    launched = {name: os.environ[name] for name in LAUNCHER_VARIABLES if name in os.environ}  # accelerate adds some
    parser = HfArgumentParser((TrainConfig, TrainingArguments), prog=program(), epilog=TRAIN_EXIT_STATUSES)
    # an error's line must not drown under the usage of ~200 TrainingArguments flags: --help lists them
    parser.format_usage = lambda: (f"usage: {parser.prog} --data_dir DIR | --dataset ID --output_dir DIR [options]"
                                   "   (--help lists every option)\n")
    parser.add_argument("--version", action="version", version=f"hf-model {__version__}")
    parser.set_defaults(**BASE_DEFAULTS, **hardware_defaults())
    preset, _ = parser.parse_known_args(argv)
    settings = dict.fromkeys(BASE_DEFAULTS, f"{parser.prog}'s defaults")  # flag -> where its value came from
    if preset.preset:
        if preset.preset not in PRESETS:
            parser.error(f"unknown preset {preset.preset!r}; choose from {sorted(PRESETS)}")
        parser.set_defaults(**PRESETS[preset.preset])
        settings.update(dict.fromkeys(PRESETS[preset.preset], f"--preset {preset.preset}"))
    if preset.preset_file:
        from_file = read_preset_file(parser, preset.preset_file)
        parser.set_defaults(**from_file)
        settings.update(dict.fromkeys(from_file, f"--preset_file {preset.preset_file}"))

    def error(message: str) -> None:
        message = " ".join(line.strip() for line in message.strip().splitlines())  # transformers' lists: one line
        flag = message.split()[0].lstrip("-").split("=")[0] if message.startswith("--") else None
        if flag in settings and not any(arg.split("=")[0] == f"--{flag}" for arg in argv):
            message += f" (--{flag} set by {settings[flag]}: give it on the command line to change it)"
        parser.error(message)

    try:
        cfg, args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # raised by TrainConfig.__post_init__ or TrainingArguments' own checks
        error(str(err) + launcher_hint(str(err), launched))
    if not cfg.data_dir and not cfg.dataset:
        parser.error("give --data_dir (a folder of photos) or --dataset (a Hub dataset id)")
    if preset.output_dir is None and "output_dir" not in settings:  # else transformers' ./trainer_output, unasked
        parser.error("give --output_dir: the folder the model, its card and reports go to (e.g. runs/my_model)")
    if cfg.data_dir and Path(args.output_dir).resolve().is_relative_to(Path(cfg.data_dir).resolve()):
        parser.error(f"--output_dir {args.output_dir} is inside --data_dir {cfg.data_dir}: the run's plots would be "
                     "read as photos (a class of their own) by the next run; choose a folder outside the photos")
    if cfg.cv_folds and args.push_to_hub:
        parser.error("--push_to_hub publishes one model, and --cv_folds trains one per fold: cross-validate "
                     "without --push_to_hub, then train the model to publish without --cv_folds")
    for message in training_args_problems(args):
        error(message)
    if args.dataloader_persistent_workers and args.dataloader_num_workers == 0:  # a GPU's default, and workers 0
        args = dataclasses.replace(args, dataloader_persistent_workers=False)  # torch's DataLoader refuses the pair
    return cfg, args


def launcher_hint(message: str, launched: dict[str, str]) -> str:
    """What to do when torch.distributed could not start: from ``launched``, launcher variables (name -> value) that
    no launcher set, or without them, for a ``--ddp_backend`` given to one process; '' for any other error."""
    if "Default process group has not been initialized" in message and not launched:  # accelerate, on ddp_backend
        return (" (--ddp_backend sets how the processes of torchrun or accelerate launch talk to each other: drop it "
                "to train in one process)")
    if "env:// rendezvous" not in message or not launched:
        return ""
    found = " ".join(f"{name}={value}" for name, value in launched.items())
    return (f" (the environment sets {found}, so transformers starts torch.distributed: unset "
            f"{', '.join(LAUNCHER_VARIABLES)} to train in one process, or start the processes with torchrun "
            "--nproc_per_node N)")


def read_preset_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """``--preset_file``'s JSON object as typed defaults of ``parser``: each value read as its flag would read it.

    A missing file, bad JSON, a key that is no ``TrainConfig`` or ``TrainingArguments`` field, or a value its flag
    rejects is a usage error (``parser.error``, exit status 2) naming the file and the key.
    """
    try:
        overrides = json.loads(Path(path).read_text())
    except OSError as err:
        parser.error(f"--preset_file {path}: cannot read it ({err.strerror or err})")
    except json.JSONDecodeError as err:
        parser.error(f"--preset_file {path} is not valid JSON: {err}")
    if not isinstance(overrides, dict):
        parser.error(f"--preset_file {path} must hold a JSON object of flag names and values, "
                     f"like {{\"head\": \"sgd\"}}; it holds a {type(overrides).__name__}")
    fields = {f.name: f for cls in (TrainConfig, TrainingArguments) for f in dataclasses.fields(cls) if f.init}
    for key, value in overrides.items():
        if key in ("preset", "preset_file"):
            parser.error(f"--preset_file {path}: unknown key {key!r}: name a preset with --preset on the command line")
        if key not in fields:
            parser.error(f"--preset_file {path}: unknown key {key!r}: keys are train.py's flags without the dashes "
                         "(python train.py --help)")
        if value is None and fields[key].default is not None:
            parser.error(f"--preset_file {path}: {key!r} cannot be null (--{key} takes a value)")
    return {key: None if value is None else _typed(parser, path, key, value) for key, value in overrides.items()}


def _typed(parser: argparse.ArgumentParser, path: str, key: str, value) -> object:
    """``value`` as ``--key value`` on the command line would give it (argparse's type and choices checks)."""
    words = [v if isinstance(v, str) else json.dumps(v) for v in (value if isinstance(value, list) else [value])]
    parser.exit_on_error = False  # raise, so the message can name the file
    try:
        namespace, extra = parser.parse_known_args([f"--{key}", *words])
    except argparse.ArgumentError as err:
        parser.error(f"--preset_file {path}: {key!r}: {err}")
    finally:
        parser.exit_on_error = True
    if extra:
        parser.error(f"--preset_file {path}: {key!r} takes one value, got {value!r}")
    return getattr(namespace, key)


def training_args_problems(args: TrainingArguments) -> list[str]:
    """What no run can use among the ``TrainingArguments`` that transformers itself lets through, naming the flag.

    Each would otherwise fail deep in training (a zero batch size, a negative seed) or train nothing
    (no epochs, a learning rate of 0).
    """
    checks = [
        (math.isfinite(args.learning_rate) and args.learning_rate > 0, "--learning_rate must be above 0"),
        (args.max_steps > 0 or (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0),
         "--num_train_epochs must be above 0 (or give --max_steps above 0)"),
        (args.per_device_train_batch_size >= 1, "--per_device_train_batch_size counts photos: at least 1"),
        (args.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size counts photos: at least 1"),
        (args.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps counts batches: at least 1"),
        (math.isfinite(args.warmup_steps) and (args.warmup_steps < 1 or float(args.warmup_steps).is_integer()),
         f"--warmup_steps is a share of the training steps (0 to below 1) or a whole number of steps, "
         f"got {args.warmup_steps}"),
        (math.isfinite(args.label_smoothing_factor) and 0 <= args.label_smoothing_factor < 1,
         "--label_smoothing_factor is a share of the target moved to the other classes: 0 (off) to below 1"),
        (math.isfinite(args.weight_decay) and args.weight_decay >= 0, "--weight_decay must be 0 (off) or more"),
        (0 <= args.seed < 2**32, "--seed must be from 0 to 2**32 - 1 (what NumPy accepts)"),
        (args.dataloader_num_workers >= 0, "--dataloader_num_workers must be 0 (load in the main process) or more"),
        (not args.remove_unused_columns, "--remove_unused_columns true would drop the image column before the "
                                         "transforms read it: leave it out (this project sets it to false)"),
    ]
    return [message for ok, message in checks if not ok]


@dataclass
class RunRecord:
    """What one run did, written beside its model as ``hf_model_config.json`` and loaded back whole.

    Like nanoGPT's checkpointed config: nothing about a run is reconstructed by hand. ``cv_fold``
    is ``(fold, folds)`` for a cross-validation fold, whose test split is that fold. Training writes
    the record twice: at its start with ``finished=False`` (so a rerun can tell whether the folder
    holds the same run, and a run that died is recognisable), and at its end with ``finished=True``.
    """

    config: TrainConfig
    training_args: TrainingArguments
    command: str = ""
    cv_fold: tuple[int, int] | None = None
    image_size: int | None = None  # the input size the model was trained at
    label_source: str = ""
    split_sizes: dict[str, int] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)  # the classes, in the model's output order
    finished: bool = True  # False while training; records from before this field were written at the end
    devices: int = 1  # devices one optimizer step spread its batch over (GPUs, or processes on a CPU)
    global_batch_size: int | None = None  # photos per optimizer step on all of them (None: not recorded)

    def to_dict(self) -> dict:
        args = {k: v for k, v in self.training_args.to_dict().items() if not k.endswith("_token")}  # no secrets
        # paths as absolute ones: calibrate or publish may run from another folder than training did
        config = {k: str(Path(v).resolve()) if k in PATH_FIELDS and v and Path(v).exists() else v
                  for k, v in asdict(self.config).items()}
        return {"command": self.command, "config": config, "training_args": args,
                "cv_fold": list(self.cv_fold) if self.cv_fold else None, "image_size": self.image_size,
                "label_source": self.label_source, "split_sizes": self.split_sizes,
                "label_names": list(self.label_names), "finished": self.finished, "devices": self.devices,
                "global_batch_size": self.global_batch_size}

    def save(self, model_dir: str | Path) -> Path:
        """Write ``model_dir/hf_model_config.json`` atomically (a crash never leaves half a record)."""
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        return write_json_atomic(Path(model_dir) / RUN_CONFIG_FILE, self.to_dict(), default=str)


def load_run_config(model_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of a trained folder: its ``TrainConfig`` and ``TrainingArguments`` as trained.

    Raises ``FileNotFoundError`` when the folder holds no ``hf_model_config.json`` (not trained by
    ``train.py``). Records written before ``training_args`` was stored give the recorded seed and
    ``TrainingArguments`` defaults for the rest; those written before ``label_names`` and ``finished``
    give no class names and count as finished (they were only written at the end of a run). The launcher's
    ``ddp_backend`` is not loaded back: one process refuses it.
    """
    path = Path(model_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {model_dir} was not trained with train.py "
                                "(its run record says which photos, splits and settings it was trained on)")
    raw = json.loads(path.read_text())
    if not isinstance(raw.get("config"), dict):
        raise ValueError(f"{path} holds no 'config' section: it is not a run record written by train.py")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in raw["config"].items() if k in known})
    args = raw.get("training_args") or {"output_dir": str(model_dir), "seed": raw.get("seed", DEFAULT_SEED)}
    init = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    args = {k: v for k, v in args.items() if k in init and k not in LAUNCH_ARGS}
    try:
        training_args = TrainingArguments(**args)
    except ValueError as err:  # e.g. bf16 recorded on a GPU, loaded on a CPU: the rest of the record still holds
        logger.warning("%s: loading the run's TrainingArguments without its hardware settings (%s)", path, err)
        training_args = TrainingArguments(**{k: v for k, v in args.items() if k not in HARDWARE_ARGS})
    cv_fold = raw.get("cv_fold") or raw["config"].get("cv_fold")  # older records kept the fold in the config
    return RunRecord(config, training_args, raw.get("command", ""), tuple(cv_fold) if cv_fold else None,
                     raw.get("image_size"), raw.get("label_source", ""), raw.get("split_sizes", {}),
                     raw.get("label_names", []), raw.get("finished", True), raw.get("devices", 1),
                     raw.get("global_batch_size"))
