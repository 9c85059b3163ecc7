"""A real training killed mid-epoch with SIGKILL, then rerun: it resumes and finishes with a complete folder.

The killed run is a real ``python train.py`` process; the rerun is the same command line through
``main()`` in this process, which saves a second start-up of torch and transformers.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_photo

from hf_model import hub
from hf_model.run_folder import RunFolderError, last_checkpoint, require_finished
from hf_model.training import main

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 8  # 16 photos, half of them for training, one per batch
EPOCHS = 3


def step_logged(line: str) -> int | None:
    """The global step of a training-step log line that ``PrinterCallback`` prints, e.g.
    ``{'loss': '0.69', ..., 'epoch': '1.125'}`` -> 9; None for any other line."""
    if not line.startswith("{'loss'"):
        return None
    return round(float(ast.literal_eval(line)["epoch"]) * STEPS_PER_EPOCH)


def kill_mid_epoch(command: list[str], env: dict) -> list[int]:
    """Start ``command``; SIGKILL its process group at the first step logged after a saved checkpoint, mid-epoch.

    Returns the steps it logged. Fails the test if training ends before that moment.
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its own process group, dataloader workers included
    steps, output = [], []
    try:
        for line in process.stdout:
            output.append(line)
            step = step_logged(line)
            if step is None:
                continue
            steps.append(step)
            if step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH:  # checkpoint-8 is saved and the next epoch runs
                os.killpg(process.pid, signal.SIGKILL)
                break
    finally:
        process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "training ended before the kill:\n" + "".join(output[-40:])
    return steps


def test_a_run_killed_mid_epoch_resumes_from_its_last_checkpoint_and_finishes(tmp_path, tiny_convnext, capsys,
                                                                              caplog):
    photos, out = tmp_path / "photos", tmp_path / "run"
    for name, colour in [("red", (220, 30, 30)), ("blue", (30, 30, 220))]:
        for i in range(8):
            make_photo(photos / name / f"{i}.jpg", colour, size=32, seed=i)
    flags = ["--data_dir", str(photos), "--backbone", tiny_convnext, "--output_dir", str(out),
             "--cache_dir", str(tmp_path / "cache"), "--stages", "1", "--unfreeze_top_blocks", "2", "--refit", "false",
             "--num_train_epochs", str(EPOCHS),
             "--per_device_train_batch_size", "1", "--image_size", "32", "--split_fractions", "0.5", "0.25", "0.25",
             "--save_strategy", "epoch", "--logging_strategy", "steps", "--logging_steps", "1",
             "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    steps_before = kill_mid_epoch([sys.executable, "-u", str(ROOT / "train.py"), *flags], env)

    # the killed run is recognisable as such, and publishing refuses it
    assert json.loads((out / "hf_model_config.json").read_text())["finished"] is False
    with pytest.raises(RunFolderError, match="did not finish"):
        hub.build_model_repo(out, tmp_path / "repo")
    resume_from = last_checkpoint(out)
    saved_step = int(Path(resume_from).name.split("-")[1])
    assert max(steps_before) - saved_step < STEPS_PER_EPOCH  # at most one epoch's work is lost

    caplog.set_level("INFO", logger="hf_model")
    capsys.readouterr()
    main(flags)  # the same command again
    assert f"resuming from {resume_from}" in caplog.text
    steps_after = [step for line in capsys.readouterr().out.splitlines() if (step := step_logged(line)) is not None]
    assert steps_after == list(range(saved_step + 1, EPOCHS * STEPS_PER_EPOCH + 1))  # from the checkpoint on

    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "test_results.json",
                 "all_results.json", "README.md", "log_history.json", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "hf_model_config.json").read_text())["finished"] is True
    require_finished(out)
    assert not list(out.glob(".*"))  # no staging folder or temporary file left behind
