"""``hf-model``: one console script, one subcommand per job (``hf-model <command> --help``)."""

from __future__ import annotations

import importlib
import sys
import textwrap

from hf_model import __version__
from hf_model.exit_status import DEBUG_FLAG, USAGE, exit_statuses

EXIT_STATUSES = (exit_statuses("the command did its job", "it could not (its last line says why)")
                 + " Each command's --help says what 0 and 1 mean for it.")

# command -> (module:function taking argv, one-line help); each module owns its own argument parsing
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_model.training:main", "fine-tune a backbone on a folder or Hub dataset (same as train.py)"),
    "predict": ("hf_model.predict:main", "label photos with a trained model folder or Hub id"),
    "export": ("hf_model.export:main", "write model.onnx beside the weights, checked against PyTorch (fast serving)"),
    "calibrate": ("hf_model.calibration:main", "choose when the model says 'not a bedroom' / 'unsure' (for the Space)"),
    "label-issues": ("hf_model.label_issues:main", "list the labeled photos most likely mislabeled (cleanlab)"),
    "study": ("hf_model.study:main", "cross-validate a grid of backbones, sizes, imbalance settings and heads; "
                                     "--learning_curve: would more labels help?"),
    "tune": ("hf_model.tune:main", "Bayesian hyperparameter search (Optuna); writes best_preset.json for train.py"),
    "suggest-labels": ("hf_model.suggest:main", "rank unlabeled photos by how much a label would teach the model"),
    "publish": ("hf_model.hub:main", "build and upload a model, dataset or Space repo (hf-model publish --help)"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = argv[:1] == [DEBUG_FLAG]  # `hf-model --debug predict ...`: the command reads it among its own flags
    if debug:
        argv = argv[1:]
    if argv[:1] in (["--version"], ["-V"]):
        print(f"hf-model {__version__}")
        return
    if debug and argv:
        argv = [argv[0], DEBUG_FLAG, *argv[1:]]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: hf-model [--debug] <command> [options]   (hf-model --version: the package version)\n\n"
              "commands:\n" + "\n".join(lines) + "\n\n" + textwrap.fill(EXIT_STATUSES, width=100))
        if not argv:
            sys.exit(USAGE)
        if argv[0] not in ("-h", "--help"):
            print(f"hf-model: error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(USAGE)
        return
    module, function = COMMANDS[argv[0]][0].split(":")
    getattr(importlib.import_module(module), function)(argv[1:])
