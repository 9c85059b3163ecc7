"""``hf-model tune``: Bayesian hyperparameter search with Optuna; the best trial becomes ``best_preset.json``.

Two searches (``--search``):

- ``head`` (default): the ``sgd`` head (trained by ``Trainer`` on cached backbone features) over its learning
  rate, weight decay, dropout, label smoothing, epoch limit and class weights. Each trial is scored as
  ``train.py --head sgd --cv_folds k`` scores it (:class:`hf_model.head_cv.HeadCrossValidation`: the backbone's
  features are computed once per search, a trial only fits heads), fold by fold; a trial below the median of
  earlier trials after its second fold or later is stopped (Optuna's ``MedianPruner``) and kept with its partial
  score, which the sampler learns from but which is never the best. Unfreeze depth and augmentation do not
  apply: cached features are the frozen backbone's, of the plain photo. 30 trials on the bedrooms: 11 minutes.
- ``fine_tune``: ``Trainer.hyperparameter_search(backend="optuna")`` over fine-tuning blocks on images: learning
  rate, weight decay, label smoothing, epochs, how many top blocks train, and the augmentation's strength.
  Scored on the validation split, not cross-validated (k folds x n trials of fine-tuning take days on a CPU);
  each trial is a whole training run (slow on a CPU), pruned per epoch with TPE, not with the GP.

The sampler is a Gaussian process (Optuna's ``GPSampler``, as the birds write-up's search) or TPE (Bergstra
et al. 2011, "Algorithms for Hyper-Parameter Optimization"). Trial 0 is the command's own settings, so the
table shows what tuning gained. The study lives in ``output_dir/optuna.db``: rerunning the same command
continues it to ``--n_trials`` trials in all. Writes ``trials.csv``, ``tune.md``, ``convergence.png`` and
``best_preset.json``, which ``python train.py --preset_file best_preset.json --data_dir ...`` trains.

    HF_HUB_OFFLINE=1 hf-model tune --preset bedrooms --data_dir ../shared/data/bedrooms --output_dir tune/bedrooms
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import logging
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from hf_model.adapters import adapter_for
from hf_model.atomic import atomic_write, folder_lock, write_json_atomic
from hf_model.config import CLASS_WEIGHTS, RunRecord, TrainConfig, parse_args
from hf_model.data import DataError, load_data, training_photos
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.freezing import set_trainable
from hf_model.head_cv import HeadCrossValidation, load_folds
from hf_model.reports import markdown_table, new_figure, save_figure
from hf_model.training import (
    blocks_trainer,
    cross_entropy_loss,
    improves,
    loss_class_weights,
    setup_model,
    train_head,
)
from hf_model.transforms import batch_transform

logger = logging.getLogger("hf_model")

STUDY_DB, STUDY_NAME = "optuna.db", "hf-model-tune"
TRIALS_CSV, TUNE_MD, CONVERGENCE_PNG, BEST_PRESET_JSON = "trials.csv", "tune.md", "convergence.png", "best_preset.json"
STOPPED = "stopped_after_folds"  # user attribute of a head trial the pruner stopped: its value is a partial mean
TRIALS_LOG = "trials.log"  # what Trainer prints per epoch of every trial: thousands of lines, kept out of the console
SEARCHES, SAMPLERS = ("head", "fine_tune"), ("gp", "tpe")
MIN_ZOOM = 0.05  # the smallest crop share a strong augmentation may reach (0 would crop nothing)
MAX_SHIFT = 0.9  # the largest shift share (--shift must stay below 1)
# Where to write, and what to publish: not part of the settings a trial scores (the study's identity) or a preset
NOT_SETTINGS = ("output_dir", "logging_dir", "run_name", "resume", "cache_dir", "preset", "preset_file", "cv_folds",
                "data_dir", "dataset", "labels_file", "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
                "disable_tqdm", "resume_from_checkpoint")


@dataclass(frozen=True)
class Range:
    """One searched number from ``low`` to ``high`` (``None``: known at run time), on a log scale when ``log``."""

    low: float
    high: float | None
    log: bool = False
    integer: bool = False


# TrainConfig / TrainingArguments fields searched, and their ranges; train.py's defaults are inside each range
HEAD_SPACE: dict[str, Range | tuple[str, ...]] = {
    "head_learning_rate": Range(1e-4, 1e-1, log=True),
    "weight_decay": Range(1e-6, 1e-1, log=True),
    "head_dropout": Range(0.0, 0.6),
    "label_smoothing_factor": Range(0.0, 0.3),
    "head_epochs": Range(10, 200, log=True, integer=True),
    "class_weights": CLASS_WEIGHTS,
}
FINE_TUNE_SPACE: dict[str, Range | tuple[str, ...]] = {
    "learning_rate": Range(1e-5, 1e-2, log=True),
    "weight_decay": Range(1e-6, 1e-1, log=True),
    "label_smoothing_factor": Range(0.0, 0.3),
    "num_train_epochs": Range(2, 30, integer=True),
    "unfreeze_top_blocks": Range(1, None, log=True, integer=True),  # up to every block of the backbone
    "augmentation_scale": Range(0.0, 1.5),  # times the preset's rotation, zoom, shift, shear and brightness
}
OBJECTIVE_NOTES = {
    "head": "the mean over the folds of each fold's test-photo macro-F1, as train.py --head sgd --cv_folds scores it",
    "fine_tune": "of the model train.py would keep; the validation split only, as k folds x n trials of "
                 "fine-tuning are too slow on a CPU",
}
SEARCH_NAMES = {"head": "the sgd head on cached features", "fine_tune": "fine-tuning blocks on images"}
SAMPLER_NAMES = {"gp": "Gaussian process (Optuna GPSampler; random for the first 10 trials)",
                 "tpe": "TPE (Optuna TPESampler)"}
CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
ARGS_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


class TuneError(UserInputError, ValueError):
    """The output folder holds another search; the message says what to do."""


@command("hf-model tune")
def main(argv: list[str] | None = None) -> optuna.Study:
    """``hf-model tune``: parse, open (or continue) the study, run the missing trials, write the reports.

    Exit status 1 when the data or the output folder is unusable, 2 for a bad flag.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    options, train_flags = parser.parse_known_args(argv)
    check_options(parser, options, train_flags)
    cfg, args = parse_args([*train_flags, "--output_dir", options.output_dir])
    command = shlex.join(["hf-model", "tune", *argv])
    return tune(cfg, args, options, command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-model tune", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n    HF_HUB")[0] + "\n\nAny other flag is train.py's (--preset, --data_dir, "
                    "--seed, --backbone, ...): the settings a trial starts from.",
        epilog=exit_statuses("the trials ran (stopped and pruned trials included)",
                             "the data or the output folder is unusable"))
    parser.add_argument("--output_dir", required=True,
                        help=f"where {STUDY_DB} (the study), {TRIALS_CSV}, {TUNE_MD}, {CONVERGENCE_PNG} and "
                             f"{BEST_PRESET_JSON} go")
    parser.add_argument("--n_trials", type=int, default=30, help="trials in all, counting earlier runs' (default 30)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="gp",
                        help="gp: Gaussian process (Optuna's GPSampler); tpe: tree-structured Parzen estimator")
    parser.add_argument("--search", choices=SEARCHES, default="head",
                        help="head: the sgd head on cached features, cross-validated (minutes); fine_tune: "
                             "Trainer.hyperparameter_search over fine-tuning blocks on images, scored on the "
                             "validation split only (slow: whole trainings)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the head search (default 5)")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    return parser


def check_options(parser: argparse.ArgumentParser, options: argparse.Namespace, train_flags: list[str]) -> None:
    """Usage errors (exit status 2) for tune's own flags, naming the flag."""
    if options.n_trials < 1:
        parser.error(f"--n_trials counts trials: at least 1, got {options.n_trials}")
    if options.folds < 2:
        parser.error(f"--folds is a number of cross-validation folds, at least 2: got {options.folds}")
    if options.timeout is not None and options.timeout <= 0:
        parser.error(f"--timeout is in seconds, above 0: got {options.timeout}")
    if "--cv_folds" in train_flags:
        parser.error("the head search cross-validates with --folds (tune's own flag), not --cv_folds")


def tune(cfg: TrainConfig, args: TrainingArguments, options: argparse.Namespace, command: str) -> optuna.Study:
    """Run the trials still missing from ``output_dir/optuna.db`` and write the reports; returns the study."""
    folder = Path(options.output_dir)
    with folder_lock(folder, "hf-model tune"):  # a second search here would fail the first one's running trial
        return _tune(folder, cfg, args, options, command)


def _tune(folder: Path, cfg: TrainConfig, args: TrainingArguments, options: argparse.Namespace,
          command: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder.resolve() / STUDY_DB}")
    study = open_study(storage, folder, options.search, options.sampler, args.seed, identity(cfg, args, options),
                       command)
    missing = options.n_trials - len(done_trials(study))
    started = time.time()
    if missing > 0:
        search = HeadSearch(cfg, args, options.folds) if options.search == "head" else FineTuneSearch(cfg, args)
        if not any(t.user_attrs.get("own_settings") and t.state != TrialState.FAIL for t in study.trials):
            study.enqueue_trial(search.own_settings(), user_attrs={"own_settings": True})
        logger.info("tune: %d trial(s) to run (%d done); objective: %s", missing, options.n_trials - missing,
                    search.objective_name)
        with frozen_heap(), open(folder / TRIALS_LOG, "a") as log, contextlib.redirect_stdout(log):
            search.run(study, storage, missing, options.timeout)  # Trainer's per-epoch lines go to the log
    else:
        logger.info("tune: %s already holds %d trials (--n_trials %d): writing the reports", folder / STUDY_DB,
                    len(done_trials(study)), options.n_trials)
    write_reports(study, folder, cfg, args, options, command)
    print(summary(study, folder, cfg, options, time.time() - started), flush=True)
    return study


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Every object alive now left out of Python's garbage collection while the block runs.

    Each ``Trainer.train()`` starts with a full ``gc.collect()`` (accelerate's ``free_memory``); with the backbone,
    the cached features and the datasets in the heap, that took 0.6 s a run here, more than training a small head.
    Frozen (``gc.freeze``), they are not scanned, and a collection takes milliseconds.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` while the block runs.

    A head step is a (64, dim) x (dim, classes) product: too small to split, and on a busy CPU two threads that
    wait on each other made each step 5-10x slower than one (19 ms against 2 ms on this 2-core machine).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- the study

def open_study(storage: optuna.storages.BaseStorage, folder: Path, search: str, sampler: str, seed: int,
               settings: dict, command: str) -> optuna.Study:
    """The study in ``storage`` (``folder/optuna.db``), created or continued; raises :class:`TuneError` when it holds
    another search (``settings``: :func:`identity`).

    Trials left running by a killed run are marked failed (they are not counted and run again).
    """
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)
    held = study.user_attrs.get("settings")
    if held is None:
        study.set_user_attr("settings", settings)
        study.set_user_attr("command", command)
    elif held != settings:
        differ = sorted(key for key in held.keys() | settings.keys() if held.get(key) != settings.get(key))
        raise TuneError(f"{folder / STUDY_DB} holds another search, `{study.user_attrs.get('command')}` (it differs "
                        f"in: {', '.join(differ)}): rerun that command to continue it, or give another --output_dir "
                        f"(or delete {STUDY_DB} to start over)")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    # reseeded by the trials done, so a continued study does not redraw the first run's random start
    study.sampler = build_sampler(sampler, seed + len(study.trials))
    study.pruner = build_pruner(search, sampler)
    return study


def build_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``gp``: Optuna's Gaussian-process sampler (random for the first 10 trials); ``tpe``: TPE."""
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(search: str, sampler: str) -> optuna.pruners.BasePruner:
    """The median rule (Optuna's ``MedianPruner``: stop a trial below the median of earlier trials at the same step,
    from the second step on, once 5 trials finished), except for a fine-tuning search with the GP sampler.

    ``GPSampler`` learns from finished trials only: a pruned trial teaches it nothing, and it proposes the same
    point again (on the bedrooms, 17 of 30 trials repeated one pruned point). The head search therefore records a
    stopped trial as finished with its running score (:meth:`HeadSearch.objective`); ``Trainer``'s search raises
    ``TrialPruned`` itself, so with the GP it does not prune.
    """
    if search == "fine_tune" and sampler == "gp":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def identity(cfg: TrainConfig, args: TrainingArguments, options: argparse.Namespace) -> dict:
    """What makes two tune commands the same search: the search, its folds, and every setting a trial starts from."""
    record = RunRecord(cfg, args).to_dict()  # the project's normalized form: absolute paths, no tokens
    settings = {f"config.{k}": v for k, v in record["config"].items() if k not in NOT_SETTINGS}
    settings |= {f"training_args.{k}": v for k, v in record["training_args"].items() if k not in NOT_SETTINGS}
    settings |= {"search": options.search, "data": cfg.dataset or record["config"]["data_dir"]}
    if options.search == "head":
        settings["folds"] = options.folds
    return {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v) for k, v in settings.items()}


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``--n_trials``: finished, or stopped early by the pruner."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def suggest(trial: optuna.Trial, space: dict[str, Range | tuple[str, ...]], highs: dict | None = None) -> dict:
    """One value per entry of ``space`` from ``trial``; ``highs`` fills the ranges whose top is known at run time."""
    values = {}
    for name, spec in space.items():
        if isinstance(spec, tuple):
            values[name] = trial.suggest_categorical(name, spec)
            continue
        high = spec.high if spec.high is not None else highs[name]
        if spec.integer:
            values[name] = trial.suggest_int(name, int(spec.low), int(high), log=spec.log)
        else:
            values[name] = trial.suggest_float(name, spec.low, high, log=spec.log)
    return values


def split_fields(values: dict) -> tuple[dict, dict]:
    """``values`` as (TrainConfig fields, TrainingArguments fields)."""
    return ({k: v for k, v in values.items() if k in CONFIG_FIELDS},
            {k: v for k, v in values.items() if k in ARGS_FIELDS and k not in CONFIG_FIELDS})


def in_space(values: dict, space: dict, highs: dict | None = None) -> dict:
    """``values`` clipped into ``space`` (a command's own setting may lie outside a searched range)."""
    clipped = {}
    for name, value in values.items():
        spec = space[name]
        if isinstance(spec, tuple):
            clipped[name] = value if value in spec else spec[0]
        else:
            high = spec.high if spec.high is not None else highs[name]
            clipped[name] = type(value)(min(max(value, spec.low), high))
    return clipped


# ---------------------------------------------------------------- the head search

class HeadSearch:
    """The ``sgd`` head on cached features, each trial cross-validated as ``train.py --head sgd --cv_folds k``."""

    objective_name = "cross-validated macro-F1"

    def __init__(self, cfg: TrainConfig, args: TrainingArguments, n_folds: int):
        self.cv = HeadCrossValidation(cfg, args, load_folds(cfg, args.seed, n_folds))

    def own_settings(self) -> dict:
        """The command's own head settings, in the search's terms (trial 0)."""
        cfg, args = self.cv.cfg, self.cv.args
        values = {name: getattr(cfg, name) if name in CONFIG_FIELDS else getattr(args, name) for name in HEAD_SPACE}
        return in_space(values, HEAD_SPACE)

    def objective(self, trial: optuna.Trial) -> float:
        """Mean test macro-F1 over the folds; each fold's running mean is reported, so the pruner can stop it.

        A stopped trial is recorded as finished with its running mean and ``stopped_after_folds`` (a user attribute),
        so both samplers learn that its region is poor (``GPSampler`` ignores pruned trials); it is never the best.
        """
        config, training = split_fields(suggest(trial, HEAD_SPACE))
        cfg = dataclasses.replace(self.cv.cfg, head="sgd", unfreeze_top_blocks=0, **config)
        args = dataclasses.replace(self.cv.args, **training)
        scores = []
        for fold, data in enumerate(self.cv.folds):
            scores.append(self.cv.score(cfg, folds=[data], args=args)[0]["test_f1_macro"])
            trial.report(float(np.mean(scores)), fold)
            if fold < len(self.cv.folds) - 1 and trial.should_prune():  # after the last fold it is scored in full
                trial.set_user_attr(STOPPED, fold + 1)
                logger.info("tune: trial %d stopped after %d folds: macro-F1 %.3f, below the median of earlier "
                            "trials", trial.number, fold + 1, np.mean(scores))
                break
        return float(np.mean(scores))

    def run(self, study: optuna.Study, storage: optuna.storages.BaseStorage, n_trials: int,
            timeout: float | None) -> None:
        """``n_trials`` more trials of ``study`` (stored in ``storage``), stopping new ones after ``timeout`` s."""
        with torch_threads(1):
            study.optimize(self.objective, n_trials=n_trials, timeout=timeout)


# ---------------------------------------------------------------- the fine-tuning search

class FineTuneSearch:
    """Fine-tuning the top blocks on images, through ``Trainer.hyperparameter_search(backend="optuna")``.

    As ``train.py`` with ``--unfreeze_top_blocks N``: the head is fitted first on the frozen backbone (once, from
    the command's settings), then each trial fine-tunes a fresh pretrained backbone's top blocks from that head.
    Its objective is the validation macro-F1 of the model train.py would keep (:class:`KeptModelScore`).
    """

    objective_name = "validation macro-F1 (the validation split, not cross-validated)"

    def __init__(self, cfg: TrainConfig, args: TrainingArguments):
        data = load_data(cfg, args.seed)
        if not len(data["validation"]):
            raise DataError("the fine_tune search scores trials on the validation split, and it holds no photos: "
                            "give more photos, or a larger validation share with --split_fractions")
        self.label_names = data["train"].features["label"].names
        self.train_split = training_photos(data, cfg.oversample, args.seed)
        self.class_weights = loss_class_weights(cfg, self.train_split)
        self.smoothing = args.label_smoothing_factor  # the command's; train.py smooths in its loss, not Trainer's
        self.scratch = tempfile.TemporaryDirectory(prefix="hf-model-tune-")  # the trials' checkpoints
        self.args = args = dataclasses.replace(args, output_dir=self.scratch.name, label_smoothing_factor=0.0,
                                               save_total_limit=1)
        setup = setup_model(cfg, self.label_names)
        self.n_blocks = len(adapter_for(setup.model).blocks(setup.model))
        own = cfg.unfreeze_top_blocks or 0
        self.cfg = dataclasses.replace(cfg, unfreeze_top_blocks=self.n_blocks if own < 0 else own or 2)  # 2: train.py's
        loss = cross_entropy_loss(self.class_weights, self.smoothing)
        fit = train_head(self.cfg, args, setup, self.train_split, data["validation"], loss) if cfg.stages == 2 else None
        self.head_state = copy.deepcopy(adapter_for(setup.model).classifier(setup.model).state_dict()) if fit else None
        self.trainer = blocks_trainer(self.cfg, args, setup, self.train_split, data["validation"], loss)
        stage1 = (fit.best_metric, self.trainer.evaluate()["eval_f1_macro"]) if fit else None
        if stage1:  # train.py keeps stage 1 unless a trial's stage 2 beats it on validation
            logger.info("tune: the head alone (stage 1) scores validation macro-F1 %.3f", stage1[1])
        self.score = KeptModelScore(args, stage1)
        self.trainer.add_callback(self.score)
        self.trainer.model_init = self.model_init

    def own_settings(self) -> dict:
        """The command's own fine-tuning settings in the search's terms (trial 0); 2 blocks when it fine-tunes none."""
        values = {"learning_rate": self.args.learning_rate, "weight_decay": self.args.weight_decay,
                  "label_smoothing_factor": self.smoothing, "num_train_epochs": int(self.args.num_train_epochs),
                  "unfreeze_top_blocks": self.cfg.unfreeze_top_blocks, "augmentation_scale": 1.0}
        return in_space(values, FINE_TUNE_SPACE, self.highs)

    @property
    def highs(self) -> dict:
        return {"unfreeze_top_blocks": self.n_blocks}

    def model_init(self, trial: optuna.Trial | None) -> nn.Module:
        """A fresh pretrained backbone with stage 1's head and the trial's top blocks trainable.

        What ``Trainer``'s search cannot set through ``TrainingArguments`` is set here: the training photos'
        augmentation and the loss's label smoothing (train.py smooths in its own loss, not Trainer's).
        """
        for previous in Path(self.scratch.name).glob("trial-*"):  # a trial's best checkpoint is in its model now
            shutil.rmtree(previous)
        values = suggest(trial, FINE_TUNE_SPACE, self.highs) if trial is not None else self.own_settings()
        cfg = trial_config(self.cfg, values)
        setup = setup_model(cfg, self.label_names)
        if self.head_state is not None:
            adapter_for(setup.model).classifier(setup.model).load_state_dict(self.head_state)
        set_trainable(setup.model, cfg.unfreeze_top_blocks, keep_batchnorm_frozen=cfg.freeze_batchnorm)
        self.trainer.train_dataset = self.train_split.with_transform(batch_transform(setup.train_transform))
        self.trainer.compute_loss_func = cross_entropy_loss(self.class_weights, values["label_smoothing_factor"])
        return setup.model

    def hp_space(self, trial: optuna.Trial) -> dict:
        """The trial's ``TrainingArguments`` values, which ``Trainer`` sets on its args (model_init's draws)."""
        _, training = split_fields(suggest(trial, FINE_TUNE_SPACE, self.highs))
        return {k: v for k, v in training.items() if k != "label_smoothing_factor"}  # smoothed in our loss

    def run(self, study: optuna.Study, storage: optuna.storages.BaseStorage, n_trials: int,
            timeout: float | None) -> None:
        """``n_trials`` more trials of ``study`` through ``Trainer.hyperparameter_search``, which opens it again."""
        self.trainer.hyperparameter_search(
            hp_space=self.hp_space, compute_objective=self.score, n_trials=n_trials, direction="maximize",
            backend="optuna", hp_name=lambda trial: f"trial-{trial.number}", timeout=timeout,
            storage=storage, study_name=study.study_name, load_if_exists=True, sampler=study.sampler,
            pruner=study.pruner)


def trial_config(cfg: TrainConfig, values: dict) -> TrainConfig:
    """``cfg`` with a fine-tuning trial's blocks and augmentation."""
    return dataclasses.replace(cfg, unfreeze_top_blocks=values["unfreeze_top_blocks"],
                               **scaled_augmentation(cfg, values["augmentation_scale"]))


def scaled_augmentation(cfg: TrainConfig, scale: float) -> dict:
    """The augmentation of ``cfg`` times ``scale`` (0: none): rotation, shear, brightness and shift scale, and the
    zoom's missing share of the photo (1 - zoom) does, kept to what the flags accept."""
    return {"rotation": cfg.rotation * scale, "shear": cfg.shear * scale, "brightness": cfg.brightness * scale,
            "shift": min(cfg.shift * scale, MAX_SHIFT), "zoom": min(1.0, max(1 - (1 - cfg.zoom) * scale, MIN_ZOOM))}


class KeptModelScore(TrainerCallback):
    """``compute_objective`` of the fine-tuning search: validation macro-F1 of the model a run would keep.

    ``Trainer`` keeps the checkpoint best by ``metric_for_best_model`` (validation loss by default), and train.py
    keeps stage 1's head when stage 2 never beats it (``stage1``: its metric and macro-F1). The score follows the
    same rule at every evaluation, so a trial is worth what ``train.py`` would save, and the pruner sees it grow.
    """

    def __init__(self, args: TrainingArguments, stage1: tuple[float, float] | None):
        self.metric = "eval_" + args.metric_for_best_model.removeprefix("eval_")
        self.greater_is_better = args.greater_is_better
        self.stage1 = stage1
        self.best, self.f1 = stage1 or (None, None)

    def on_train_begin(self, args, state, control, **kwargs):
        self.best, self.f1 = self.stage1 or (None, None)  # each trial starts from stage 1

    def __call__(self, metrics: dict) -> float:
        if self.f1 is None or improves(metrics.get(self.metric), self.best, self.greater_is_better):
            self.best, self.f1 = metrics.get(self.metric), metrics["eval_f1_macro"]
        return self.f1


# ---------------------------------------------------------------- reports

def write_reports(study: optuna.Study, folder: Path, cfg: TrainConfig, args: TrainingArguments,
                  options: argparse.Namespace, command: str) -> None:
    """``trials.csv``, ``convergence.png``, ``tune.md`` and (once a trial finished) ``best_preset.json``."""
    table = trials_table(study)
    with atomic_write(folder / TRIALS_CSV, newline="") as f:
        table.to_csv(f, index=False)
    plot_convergence(study, folder / CONVERGENCE_PNG, objective_label(options))
    best = best_trial(study)
    if best is not None:
        write_json_atomic(folder / BEST_PRESET_JSON, best_preset(cfg, args, options.search, best.params))
    with atomic_write(folder / TUNE_MD) as f:
        f.write(tune_markdown(study, best, cfg, options, command))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Optuna's ``trials_dataframe`` with each trial's seconds and, for one stopped early, its value when stopped
    (in place of its value: a partial score is not the objective)."""
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "datetime_start"))
    trials = {t.number: t for t in study.trials}
    table["seconds"] = table.pop("duration").dt.total_seconds().round(1)  # empty for a trial still running
    table["stopped_early"] = [stopped_early(trials[n]) for n in table["number"]]
    table["value_when_stopped"] = [value_when_stopped(trials[n]) for n in table["number"]]
    table.loc[table["stopped_early"], "value"] = None
    table["own_settings"] = [bool(trials[n].user_attrs.get("own_settings")) for n in table["number"]]
    return table


def stopped_early(trial: FrozenTrial) -> bool:
    """Whether the pruner stopped ``trial``: pruned (fine-tuning), or a head trial with a partial score."""
    return trial.state == TrialState.PRUNED or STOPPED in trial.user_attrs


def value_when_stopped(trial: FrozenTrial) -> float | None:
    """A stopped trial's running score when it was stopped (its last intermediate value); ``None`` otherwise."""
    if not stopped_early(trial) or not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def fully_scored(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that were not stopped early: the ones whose value is the whole objective."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if not stopped_early(t)]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The fully scored trial with the highest value (the first of equals), or ``None`` when none was."""
    finished = fully_scored(study)
    return max(finished, key=lambda t: (t.value, -t.number)) if finished else None


def objective_label(options: argparse.Namespace) -> str:
    if options.search == "head":
        return f"macro-F1, {options.folds}-fold cross-validated"
    return "macro-F1 on the validation split"


def plot_convergence(study: optuna.Study, path: Path, label: str) -> Path:
    """Each trial's value (dots; those stopped early as crosses at their value when stopped), the best so far
    (steps) and the command's own settings (a dotted line), like the birds write-up's convergence figure."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    finished = fully_scored(study)
    pruned = [t for t in study.get_trials(deepcopy=False) if value_when_stopped(t) is not None]
    if finished:
        numbers, values = [t.number for t in finished], [t.value for t in finished]
        ax.plot(numbers, values, "o", color="tab:blue", label="trial")
        ax.step(numbers, np.maximum.accumulate(values), where="post", color="tab:orange", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [value_when_stopped(t) for t in pruned], "x", color="tab:gray",
                label="stopped early (value when stopped)")
    own = [t for t in finished if t.user_attrs.get("own_settings")]
    if own:
        ax.axhline(own[0].value, color="tab:green", linestyle=":", label="the command's own settings")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=label, title=f"Hyperparameter search: {label}")
    ax.grid(alpha=0.3)
    if finished or pruned:
        ax.legend(loc="lower right")
    return save_figure(fig, path)


def best_preset(cfg: TrainConfig, args: TrainingArguments, search: str, params: dict) -> dict:
    """The command's settings that differ from train.py's defaults, then the best trial's values (field names)."""
    values = head_preset(params) if search == "head" else fine_tune_preset(cfg, params)
    return {**command_overrides(cfg, args), **values}


def head_preset(params: dict) -> dict:
    """A head trial's values as train.py settings: the sgd head alone, on the frozen backbone."""
    return {"head": "sgd", "unfreeze_top_blocks": 0, **params}


def fine_tune_preset(cfg: TrainConfig, params: dict) -> dict:
    """A fine-tuning trial's values as train.py settings: its blocks, and the augmentation scaled."""
    return {**{k: v for k, v in params.items() if k != "augmentation_scale"},
            **scaled_augmentation(cfg, params["augmentation_scale"])}


def command_overrides(cfg: TrainConfig, args: TrainingArguments) -> dict:
    """The TrainConfig and TrainingArguments values of the command that differ from train.py's defaults (the
    preset's and the flags'), leaving out where the photos are and where outputs go."""
    plain_cfg, plain_args = parse_args(["--data_dir", ".", "--output_dir", args.output_dir])
    overrides = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k not in NOT_SETTINGS and v != getattr(plain_cfg, k)}
    ours, plain = args.to_dict(), plain_args.to_dict()
    overrides |= {k: v for k, v in ours.items() if k in plain and k not in NOT_SETTINGS and v != plain[k]}
    return overrides


def tune_markdown(study: optuna.Study, best: FrozenTrial | None, cfg: TrainConfig, options: argparse.Namespace,
                  command: str) -> str:
    """``tune.md``: the command, the objective, the best trial and how to train it, the plot, the trials best first."""
    kinds = ["stopped early" if stopped_early(t) else trial_outcome(t) for t in study.trials]
    counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in dict.fromkeys(kinds))
    seconds = sum(t.duration.total_seconds() for t in study.trials if t.duration)
    pruning = "median (a trial below the median of earlier trials at the same step is stopped)"
    if isinstance(study.pruner, optuna.pruners.NopPruner):
        pruning = "none (GPSampler learns nothing from pruned trials)"
    lines = [f"# Hyperparameter search: {SEARCH_NAMES[options.search]}", "",
             f"`{command}`", "",
             f"- Objective: {objective_label(options)} ({OBJECTIVE_NOTES[options.search]})",
             f"- Sampler: {SAMPLER_NAMES[options.sampler]}; pruner: {pruning}",
             f"- Trials: {len(study.trials)} ({counts}), {seconds / 60:.1f} min of trial time", ""]
    own = [t for t in fully_scored(study) if t.user_attrs.get("own_settings")]
    if best is None:
        lines += ["No trial has been scored in full yet: no best settings to write.", ""]
    else:
        lines += [f"**Best: trial {best.number}, {best.value:.4f}**"
                  + (f" (the command's own settings, trial {own[0].number}: {own[0].value:.4f})" if own else ""), "",
                  markdown_table(["setting", "value"], [[k, _short(v)] for k, v in best.params.items()]), "",
                  *([note, ""] if (note := edge_note(best.params, options.search)) else []),
                  f"Train it: `{train_command(cfg, options)}`", ""]
    lines += [f"![Objective per trial and best so far]({CONVERGENCE_PNG})", "", "## Trials, best first", ""]
    trials = sorted(study.trials, key=lambda t: (not stopped_early(t) and t.value is not None,
                                                t.value if t.value is not None else -1), reverse=True)
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    rows = [[t.number, "" if stopped_early(t) else _short(t.value),
             trial_outcome(t) + (" (own settings)" if t.user_attrs.get("own_settings") else ""),
             _short(value_when_stopped(t)), _short(t.duration.total_seconds() if t.duration else None),
             *(_short(t.params.get(name)) for name in names)] for t in trials]
    lines += [markdown_table(["trial", "value", "outcome", "value when stopped", "seconds", *names], rows), ""]
    return "\n".join(lines)


def trial_outcome(trial: FrozenTrial) -> str:
    """``finished``, ``stopped after k folds`` / ``stopped early`` (the pruner), ``failed`` or ``running``."""
    if STOPPED in trial.user_attrs:
        folds = trial.user_attrs[STOPPED]
        return f"stopped after {folds} fold{'s' if folds != 1 else ''}"
    return {TrialState.COMPLETE: "finished", TrialState.PRUNED: "stopped early"}.get(trial.state,
                                                                                   trial.state.name.lower())


def at_range_edges(params: dict, search: str) -> list[str]:
    """The searched numbers of ``params`` that sit at an end of their range: a wider range might do better."""
    space = HEAD_SPACE if search == "head" else FINE_TUNE_SPACE
    return [name for name, value in params.items() if isinstance(space.get(name), Range)
            and value in (space[name].low, space[name].high)]


def edge_note(params: dict, search: str) -> str:
    """A line saying which of the best trial's values sit at the end of their range ("" when none does)."""
    edges = at_range_edges(params, search)
    if not edges:
        return ""
    return (f"Note: {', '.join(f'{name}={_short(params[name])}' for name in edges)} "
            f"{'is' if len(edges) == 1 else 'are'} at the end of the searched range (tune.py's "
            f"{'HEAD_SPACE' if search == 'head' else 'FINE_TUNE_SPACE'}): a wider range might do better.")


def train_command(cfg: TrainConfig, options: argparse.Namespace) -> str:
    """The train.py command that trains the best trial's settings on the same photos."""
    source = ["--dataset", cfg.dataset] if cfg.dataset else ["--data_dir", cfg.data_dir]
    labels = ["--labels_file", cfg.labels_file] if cfg.labels_file else []
    return shlex.join(["python", "train.py", "--preset_file", str(Path(options.output_dir) / BEST_PRESET_JSON),
                       *source, *labels, "--output_dir", str(Path(options.output_dir) / "best")])


def summary(study: optuna.Study, folder: Path, cfg: TrainConfig, options: argparse.Namespace, seconds: float) -> str:
    """The lines printed at the end: the best value and settings, the time the trials took, how to train it."""
    done, best = done_trials(study), best_trial(study)
    trial_seconds = sum(t.duration.total_seconds() for t in done if t.duration)
    pruned = sum(stopped_early(t) for t in done)
    head = (f"hf-model tune ({options.search} search, {options.sampler} sampler): {len(done)} trials ({pruned} stopped "
            f"early by the pruner), {trial_seconds / 60:.1f} min of trials ({seconds / 60:.1f} min in this run)")
    if best is None:
        return head + f"\nNo trial finished: nothing to train. Reports in {folder}"
    settings = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    note = edge_note(best.params, options.search)
    return (f"{head}\nBest {objective_label(options)}: {best.value:.4f} (trial {best.number}): {settings}\n"
            + (note + "\n" if note else "") + f"Train it: {train_command(cfg, options)}\n"
            f"Reports: {folder / TUNE_MD}, {TRIALS_CSV}, {CONVERGENCE_PNG}, {BEST_PRESET_JSON}")


def _short(value) -> str:
    """A number to 4 significant digits, nothing for a missing one; other values as they are."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
