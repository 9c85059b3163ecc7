"""``hf-model <command>``: the help lists every command, each dispatches to its module's main."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from hf_model.cli import COMMANDS, main


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_help_lists_every_command_with_its_summary(argv, capsys):
    main(argv)
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-model [--debug] <command>")
    for name, (_, summary) in COMMANDS.items():
        assert any(line.split() == [name, *summary.split()] for line in out.splitlines()), name


def test_unknown_command_exits_non_zero_naming_it():
    # a real process: the exit status is what a shell script sees
    result = subprocess.run([sys.executable, "-c", "from hf_model.cli import main; main()", "frobnicate", "--x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "unknown command 'frobnicate'" in result.stderr
    assert "predict" in result.stdout  # and the list of commands that do exist


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_runs_its_module_main_with_the_remaining_arguments(command, monkeypatch):
    module, function = COMMANDS[command][0].split(":")
    calls = []
    monkeypatch.setattr(importlib.import_module(module), function, calls.append)
    main([command, "runs/model", "photo.jpg", "--top_k", "2"])
    main(["--debug", command, "photo.jpg"])  # the command reads --debug among its own flags
    assert calls == [["runs/model", "photo.jpg", "--top_k", "2"], ["--debug", "photo.jpg"]]


@pytest.mark.parametrize("argv", [["--version"], ["-V"]])
def test_version_prints_the_installed_package_version(argv, capsys):
    from importlib.metadata import version

    main(argv)

    assert capsys.readouterr().out.strip() == f"hf-model {version('hf-model')}"


def test_train_py_version_prints_the_package_version_and_exits_zero(capsys):
    from importlib.metadata import version

    from hf_model.config import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-model {version('hf-model')}"


@pytest.mark.parametrize("argv", [["--debug", "--version"], ["--debug", "-V"]])
def test_debug_before_version_still_prints_the_version(argv, capsys):
    main(argv)
    assert capsys.readouterr().out.startswith("hf-model ")
