"""The Space's tasks: one list that the app and ``hf-model publish space`` both read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_model import hub
from hf_model.space_tasks import TASKS

# What pyproject.toml's train extra adds: the Space installs only space/requirements.txt, without them.
TRAINING_ONLY = ("datasets", "evaluate", "sklearn", "scipy", "matplotlib", "imagehash", "accelerate")


def test_the_space_modules_import_without_the_training_extras():
    # None in sys.modules makes `import datasets` fail, as it would on the Space
    code = (f"import sys\nfor name in {TRAINING_ONLY!r}:\n    sys.modules[name] = None\n"
            "import hf_model.images, hf_model.serving, hf_model.space_tasks")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_task_keys_are_unique():
    assert len({task.key for task in TASKS}) == len(TASKS)


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.key)
def test_publish_space_has_a_flag_per_task_that_sets_its_space_variable(task):
    args = hub.parse_args(["space", "--repo_id", "alice/demo", f"--{task.flag}", "alice/model"])
    assert getattr(args, task.flag) == "alice/model"
    assert hub.SPACE_MODEL_VARIABLES[task.env_var] == task.flag
