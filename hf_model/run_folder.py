"""The output folder of a run: resume an interrupted run in it, or clear a finished one's leftovers.

Like transformers' examples, re-running a command in the same ``--output_dir`` resumes from its
last checkpoint; ``--no_resume`` (or a fresh folder) starts over, and then nothing from the
previous run (checkpoints, results, calibration) may leak into the new one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger("hf_model")


def resume_or_start_over(args, resume: bool) -> str | None:
    """The checkpoint to resume from (``TrainingArguments.resume_from_checkpoint``, else the folder's last one
    when ``resume``); with none, the main process clears the previous run's leftovers from the folder."""
    resuming = args.resume_from_checkpoint or (last_checkpoint(args.output_dir) if resume else None)
    if not resuming and args.process_index == 0:
        clear_previous_run(Path(args.output_dir))
    return resuming


def clear_previous_run(output_dir: Path) -> None:
    """A fresh run in a used folder: drop the old checkpoints and results so none leak into this run's."""
    stale = [*output_dir.glob("checkpoint-*"), output_dir / "stage1", *output_dir.glob("*results.json"),
             output_dir / "log_history.json", output_dir / "calibration.json"]
    for path in (p for p in stale if p.exists()):
        logger.info("starting over: removing %s from a previous run", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def last_checkpoint(output_dir: str) -> str | None:
    """Resume an interrupted run in the same output dir, like transformers' examples do."""
    if not Path(output_dir).is_dir():
        return None
    checkpoint = get_last_checkpoint(output_dir)
    if checkpoint:
        logger.info("resuming from %s (pass --no_resume to start over)", checkpoint)
    return checkpoint
