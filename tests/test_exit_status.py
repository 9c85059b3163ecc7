"""Every command ends the same way: one line and status 1 for the user's errors, tracebacks only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_model.cli import COMMANDS
from hf_model.cli import main as hf_model
from hf_model.exit_status import INTERRUPTED, TERMINATED, UserInputError, command

REPO = Path(__file__).resolve().parents[1]


@command("hf-model demo")
def demo(argv: list[str] | None = None) -> list[str]:
    """Raises what its first argument names, else returns the arguments it was given."""
    errors = {"user": UserInputError("photos/: no class folders found"), "bug": ZeroDivisionError("division by zero"),
              "missing": FileNotFoundError(2, "No such file or directory", "photos/a.jpg"),
              "ctrl-c": KeyboardInterrupt()}
    if argv and argv[0] in errors:
        raise errors[argv[0]]
    return argv


def test_a_user_error_is_one_line_naming_the_command_with_exit_status_one():
    with pytest.raises(SystemExit) as stop:
        demo(["user"])
    # a string code is printed to stderr and exits with status 1 (sys.exit's rule)
    assert stop.value.code == "hf-model demo: error: photos/: no class folders found"
    assert stop.value.__suppress_context__  # no "During handling of the above exception" chain either


def test_a_missing_path_reads_path_then_reason():
    with pytest.raises(SystemExit) as stop:
        demo(["missing"])
    assert stop.value.code == "hf-model demo: error: photos/a.jpg: No such file or directory"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        demo(["bug"])


def test_ctrl_c_exits_130_saying_interrupted(capsys):
    with pytest.raises(SystemExit) as stop:
        demo(["ctrl-c"])
    assert stop.value.code == INTERRUPTED == 130
    assert "hf-model demo: interrupted" in capsys.readouterr().err


STOPPED_BY_A_SCHEDULER = """
import os, signal, sys
from hf_model.exit_status import command

@command("hf-model demo", resume_hint="rerun to continue")
def main(argv):
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # `kill PID`, Slurm's preemption, torchrun stopping the other ranks
        signal.pause()
    finally:
        open(sys.argv[1], "w").write("cleaned up")  # what an atomic write's `finally` does with its temporary file

main([])
"""


@pytest.mark.parametrize("debug", [False, True])
def test_sigterm_exits_143_saying_stopped_after_the_command_cleans_up(tmp_path, debug):
    marker = tmp_path / "marker"
    env = {**os.environ, "HF_MODEL_DEBUG": "1" if debug else "0"}
    done = subprocess.run([sys.executable, "-c", STOPPED_BY_A_SCHEDULER, str(marker)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == TERMINATED == 143  # 128 + SIGTERM: the status shells and schedulers read
    assert "hf-model demo: stopped (SIGTERM); rerun to continue" in done.stderr
    assert "Traceback" not in done.stderr
    assert marker.read_text() == "cleaned up"


def test_sigterm_is_left_as_it_was_after_the_command():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert demo(["a.jpg"]) == ["a.jpg"]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("argv", [["user", "--debug"], ["--debug", "user"]])
def test_debug_flag_shows_the_traceback_and_is_not_passed_on(argv):
    with pytest.raises(UserInputError, match="no class folders found"):
        demo(argv)
    assert demo(["--debug", "a.jpg"]) == ["a.jpg"]


def test_debug_after_double_dash_is_an_operand_not_the_flag():
    assert demo(["--", "--debug"]) == ["--", "--debug"]


@pytest.mark.parametrize(("value", "raises"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_hf_model_debug_environment_variable(monkeypatch, value, raises):
    monkeypatch.setenv("HF_MODEL_DEBUG", value)
    if raises:
        with pytest.raises(UserInputError):
            demo(["user"])
    else:
        with pytest.raises(SystemExit):
            demo(["user"])


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        hf_model(argv)
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [[name, "--help"] for name in COMMANDS]
                         + [["publish", kind, "--help"] for kind in ("model", "dataset", "space")])
def test_every_commands_help_lists_its_exit_statuses(argv, capsys):
    text = _help(argv, capsys)
    assert "exit status: 0 " in text and "; 1 " in text
    assert "2 usage error in the flags; 130 interrupted; 143 stopped" in text
    assert "--debug" in text


def test_hf_model_with_no_command_prints_the_commands_and_exits_two(capsys):
    with pytest.raises(SystemExit) as stop:
        hf_model([])
    assert stop.value.code == 2
    assert "exit status: 0 the command did its job" in " ".join(capsys.readouterr().out.split())


def test_train_py_on_a_missing_folder_is_one_line_with_status_one(tmp_path, monkeypatch):
    from hf_model.training import main as train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train(["--data_dir", "no_such_photos", "--output_dir", "out"])
    assert stop.value.code == "python train.py: error: data directory no_such_photos does not exist"


def test_train_py_with_an_unknown_flag_is_a_usage_error_without_traceback(capsys):
    from hf_model.training import main as train

    with pytest.raises(SystemExit) as stop:
        train(["--data_dir", "photos", "--no_such_flag"])
    assert stop.value.code == 2
    assert "--no_such_flag" in capsys.readouterr().err.strip().splitlines()[-1]


def test_debug_shows_the_traceback_a_shell_sees_with_status_one(tmp_path):
    # a real process: the status and stderr are what a shell script sees
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--data_dir", "no_such_photos", "--output_dir",
                             "out", "--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "FileNotFoundError: data directory no_such_photos does not exist"


@pytest.mark.parametrize("value", ["off", "OFF", "no", "false"])
def test_hf_model_debug_off_words_mean_off(monkeypatch, value):
    monkeypatch.setenv("HF_MODEL_DEBUG", value)
    with pytest.raises(SystemExit):
        demo(["user"])
