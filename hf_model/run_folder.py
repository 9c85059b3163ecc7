"""The output folder of a run: resume the same run in it, never mix two runs, and write its files whole.

Like transformers' examples, rerunning a command in the same ``--output_dir`` resumes from its last
checkpoint, but only the same run: the folder's run record (``hf_model_config.json``, written when
training starts) must name the same photos, classes, backbone, image size and recipe. A folder
holding another run stops the new one with a message saying how to start over; a folder holding
this run, finished, is not trained again (resuming it would redo the end of training without stage
1's rollback). ``--no_resume`` (or a fresh folder) starts over, and then nothing from the previous
run (checkpoints, results, calibration) may leak into the new one.

Files a user relies on are written whole or not at all: results through
:func:`hf_model.atomic.write_json_atomic`, the final model through :func:`move_into`. A run that
died before finishing keeps ``finished: false`` in its record; :func:`require_finished` refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from hf_model.atomic import write_json_atomic
from hf_model.config import RUN_CONFIG_FILE, RunRecord
from hf_model.exit_status import UserInputError

logger = logging.getLogger("hf_model")

# TrainingArguments that change what is trained; the others (logging, saving, hardware) may differ on a resume
RECIPE_ARGS = ("seed", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "gradient_accumulation_steps", "weight_decay", "lr_scheduler_type", "warmup_steps",
               "label_smoothing_factor")
# TrainConfig fields that change neither the photos nor the model (a preset's values are in the other fields)
NOT_RECIPE = ("resume", "preset", "preset_file", "cache_dir", "export")
TRAINER_STATE = "trainer_state.json"  # the last file Trainer writes into a checkpoint
STAGING_DIR = ".saving-model"  # the final model is saved here, then renamed file by file into the folder


class RunFolderError(UserInputError, ValueError):
    """The output folder holds another run, or an unfinished one; the message says what to do."""


@dataclass
class RunPlan:
    """What a run does with its output folder: resume from a checkpoint, or nothing left to do, or start over."""

    resume_from: str | None = None  # the checkpoint to resume from
    finished: dict | None = None  # the folder already holds this run, finished: its test metrics


def plan_run(args, resume: bool, record: RunRecord) -> RunPlan:
    """Decide what the run ``record`` does with ``args.output_dir`` (a ``TrainingArguments``).

    ``args.resume_from_checkpoint`` is the user's explicit choice and wins. Otherwise, with
    ``resume``, a folder holding a run (a complete checkpoint, or a finished record) is resumed, or
    reported finished, only when it is the same run as ``record``; a run that stopped before its
    first checkpoint left nothing to resume. With nothing to resume, the main process clears the
    previous run's leftovers. Raises :class:`RunFolderError` when the folder holds another run.
    """
    if args.resume_from_checkpoint:
        logger.info("resuming from %s (--resume_from_checkpoint)", args.resume_from_checkpoint)
        return RunPlan(resume_from=args.resume_from_checkpoint)
    output_dir = Path(args.output_dir)
    if resume:
        previous = read_record(output_dir)
        checkpoint = last_checkpoint(output_dir)
        finished = previous is not None and _finished(previous)
        if checkpoint or finished:
            check_same_run(output_dir, previous, checkpoint, record)
            if finished:
                return RunPlan(finished=finished_results(output_dir))
            logger.info("resuming from %s (pass --no_resume to start over)", checkpoint)
            return RunPlan(resume_from=checkpoint)
    if read_record(output_dir) is None and last_checkpoint(output_dir) is None:
        refuse_foreign_files(output_dir)
    if args.should_save:  # the main process
        clear_previous_run(output_dir)
    return RunPlan()


def refuse_foreign_files(output_dir: Path) -> None:
    """Raise :class:`RunFolderError` when ``output_dir`` holds visible files but no run (no record, no checkpoint)
    besides a previous run's leftovers (:func:`previous_run_leftovers`, which the new run clears).

    A run writes its record before anything else, so such files are the user's (photos, notes, another tool's
    model) and training would overwrite some of them (``README.md``, ``config.json``). transformers refused a
    non-empty ``output_dir`` the same way (``--overwrite_output_dir``); here the user picks another folder.
    """
    if not output_dir.is_dir():
        return
    ours = set(previous_run_leftovers(output_dir))  # a run killed before its record, or another run's results
    foreign = sorted(path.name for path in output_dir.iterdir() if not path.name.startswith(".") and path not in ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(f"--output_dir {output_dir} holds files that are not a training run ({shown}); "
                             "training would write its model and reports among them: choose a new or empty folder")


def check_same_run(output_dir: Path, previous: dict | None, checkpoint: str | None, record: RunRecord) -> None:
    """Raise :class:`RunFolderError` unless the folder's run (its record ``previous``, else the classes saved
    in ``checkpoint``) is the run ``record`` describes: same photos, classes, backbone, image size and recipe."""
    here = run_identity(json.loads(json.dumps(record.to_dict(), default=str)))
    there = run_identity(previous) if previous is not None else {}
    if "label_names" not in there:  # a record from before label_names, or none at all: the saved model's classes
        classes = saved_classes(checkpoint) if checkpoint else saved_classes(output_dir)
        if classes:
            there["label_names"] = classes
    differences = {key: (value, here[key]) for key, value in there.items() if key in here and value != here[key]}
    if differences:
        raise RunFolderError(_conflict_message(output_dir, previous, there, here, differences))


# splits the photo counts of which identify the data (self-training adds a pseudo_labeled split as it goes)
LABELED_SPLITS = ("train", "validation", "test", "unlabeled")


def run_identity(raw: dict) -> dict:
    """What makes two runs the same run, from a run record as stored (``RunRecord.to_dict()``).

    The data (folder or dataset, labels file, split fractions, fold, photos per split), the classes, the backbone and
    image size, every recipe field of ``TrainConfig`` and the ``TrainingArguments`` in
    :data:`RECIPE_ARGS`. Keys an older record lacks are left out, so they are not compared.
    """
    config = raw.get("config") or {}
    args = raw.get("training_args") or {}
    identity = {key: value for key, value in config.items() if key not in (*NOT_RECIPE, "cv_fold")}
    identity |= {key: args[key] for key in RECIPE_ARGS if key in args}
    identity["cv_fold"] = raw.get("cv_fold") or config.get("cv_fold")  # older records kept it in the config
    if "image_size" in raw:
        identity["image_size"] = raw["image_size"]
    if raw.get("label_names"):
        identity["label_names"] = raw["label_names"]
    photos = {split: n for split, n in (raw.get("split_sizes") or {}).items() if split in LABELED_SPLITS}
    if photos:  # photos added to or removed from the folder: the same path, other data
        identity["photos_per_split"] = photos
    return identity


def _conflict_message(output_dir: Path, previous: dict | None, there: dict, here: dict, differences: dict) -> str:
    classes = f"classes {_show(there['label_names'])}" if "label_names" in there else "classes not recorded"
    if previous is None:
        head = (f"{output_dir} holds checkpoints of another run ({classes}, no run record); this run has classes "
                f"{_show(here['label_names'])}.")
    else:
        state = "a finished run" if _finished(previous) else "an unfinished run"
        head = (f"{output_dir} holds {state} on {_data(there)} with {classes}; this run is on {_data(here)} with "
                f"classes {_show(here['label_names'])}.")
        if _data(there) == _data(here) and there.get("label_names") == here["label_names"]:
            same_photos = there.get("photos_per_split", here.get("photos_per_split")) == here.get("photos_per_split")
            head = (f"{output_dir} holds {state} on the same photos and classes with other settings." if same_photos
                    else f"{output_dir} holds {state} on {_data(here)}, whose photos have changed since.")
    rows = [f"  {key}: {_show(old)} there; {_show(new)} here" for key, (old, new) in differences.items()]
    return "\n".join([head, "What differs:", *rows,
                      f"Pass --no_resume to start over in {output_dir} (its checkpoints and results are removed, its "
                      "model replaced), or choose another --output_dir."])


def _data(identity: dict) -> str:
    return str(identity.get("data_dir") or identity.get("dataset") or "photos it did not record")


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _finished(record: dict) -> bool:
    return record.get("finished", True)  # records from before the field were only written at the end of a run


def read_record(folder: Path) -> dict | None:
    """The run record stored in ``folder`` as a dict, or None when there is none.

    Raises :class:`RunFolderError` when it is not valid JSON (it was not written by this package).
    """
    path = folder / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path} is not a readable run record ({err}): remove it, or pass --no_resume to "
                             "start over in that folder") from err


def saved_classes(folder: str | Path) -> list[str] | None:
    """The class names in ``folder/config.json`` (a checkpoint or a saved model), in output order; None without."""
    if not (Path(folder) / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError):  # not a transformers config: nothing to compare
        return None
    return [config.id2label[i] for i in sorted(config.id2label)]


def finished_results(output_dir: Path) -> dict:
    """The test metrics of the finished run in ``output_dir`` (its ``test_results.json``).

    Raises :class:`RunFolderError` when they are missing: the run cannot be reported without training again.
    """
    path = output_dir / "test_results.json"
    if not path.is_file():
        raise RunFolderError(f"{output_dir} holds this run, finished, but not its {path.name}: pass --no_resume "
                             "to train it again")
    return json.loads(path.read_text())


def last_checkpoint(output_dir: Path) -> str | None:
    """The last complete ``checkpoint-N`` in ``output_dir``, or None.

    Trainer writes ``trainer_state.json`` last: a checkpoint without a readable one was cut short
    (a kill while saving) and is skipped, so the run resumes from the one before.
    """
    if not output_dir.is_dir():
        return None
    found = [(int(m[1]), path) for path in output_dir.iterdir()
             if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name))]
    for _, path in sorted(found, reverse=True):
        if _readable_json(path / TRAINER_STATE):
            return str(path)
        logger.warning("skipping %s: it has no readable %s (training stopped while saving it)", path, TRAINER_STATE)
    return None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def previous_run_leftovers(output_dir: Path) -> list[Path]:
    """What a previous run in ``output_dir`` left that would leak into a new one: checkpoints, results, staging."""
    stale = [*output_dir.glob("checkpoint-*"), output_dir / "stage1", *output_dir.glob("*results.json"),
             output_dir / "log_history.json", output_dir / "calibration.json", output_dir / STAGING_DIR,
             *output_dir.glob("label_issues.*"),  # hf-model label-issues' csv and png judged the old model
             output_dir / "model.onnx"]  # the old model's graph (serving would skip it as stale, with a warning)
    return [path for path in stale if path.exists()]


def clear_previous_run(output_dir: Path) -> None:
    """A fresh run in a used folder: drop the old checkpoints and results so none leak into this run's."""
    for path in previous_run_leftovers(output_dir):
        logger.info("starting over: removing %s from a previous run", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def save_results(output_dir: str | Path, split: str, metrics: dict) -> None:
    """``{split}_results.json`` and the merged ``all_results.json``, as ``Trainer.save_metrics`` writes them
    but each replaced whole (a kill never leaves half a results file). Call it on the main process only."""
    output_dir = Path(output_dir)
    write_json_atomic(output_dir / f"{split}_results.json", metrics, indent=4, sort_keys=True)
    combined = output_dir / "all_results.json"
    merged = {**(json.loads(combined.read_text()) if combined.is_file() else {}), **metrics}
    write_json_atomic(combined, merged, indent=4, sort_keys=True)


def move_into(staging: Path, output_dir: Path) -> None:
    """Rename each file of ``staging`` onto its name in ``output_dir``, each flushed to disk first; remove ``staging``.

    Each file is replaced whole (``os.replace``): a kill leaves the old file or the new one, never
    half of one. ``staging`` must hold files only, on the same file system (a folder inside ``output_dir``).
    """
    for path in sorted(staging.iterdir()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def require_finished(model_dir: str | Path) -> None:
    """Raise :class:`RunFolderError` when ``model_dir``'s run record says its training did not finish.

    Such a folder may hold no model yet, or an earlier run's files beside the new run's record. A
    folder without a record (trained elsewhere, a plain transformers folder) passes.
    """
    record = read_record(Path(model_dir))
    if record is None or _finished(record):
        return
    command = record.get("command")
    rerun = f": {command}" if command else ""
    raise RunFolderError(f"{model_dir} holds a run that did not finish (its {RUN_CONFIG_FILE} says finished: false): "
                         "training stopped before it saved its final model, test results and card. Rerun its "
                         f"training command to resume it{rerun}")
