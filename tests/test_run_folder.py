"""The output folder: resume only the same run, report a finished one, refuse to mix runs, write files whole."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import ConvNextConfig

from hf_model import hub
from hf_model.config import RunRecord, parse_args
from hf_model.run_folder import (
    RunFolderError,
    RunPlan,
    move_into,
    plan_run,
    require_finished,
    save_results,
)


def run(tmp_path: Path, photos: str, classes: list[str], *flags: str, finished: bool = False):
    """The record and TrainingArguments of a run on ``tmp_path/photos`` into ``tmp_path/out``."""
    (tmp_path / photos).mkdir(parents=True, exist_ok=True)
    cfg, args = parse_args(["--data_dir", str(tmp_path / photos), "--output_dir", str(tmp_path / "out"), *flags])
    record = RunRecord(cfg, args, f"python train.py --data_dir {photos}", None, 224, "class folders", {"train": 8},
                       classes, finished)
    return record, args


def checkpoint(out: Path, step: int, classes: list[str] | None = None, complete: bool = True) -> Path:
    """A ``checkpoint-<step>`` as Trainer leaves it: its config names the classes; trainer_state.json comes last."""
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if classes:
        ConvNextConfig(id2label=dict(enumerate(classes))).save_pretrained(folder)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_a_folder_holding_a_run_on_other_photos_is_not_resumed(tmp_path):
    old, _ = run(tmp_path, "a/photos", ["bedroom", "kitchen"])
    old.save(tmp_path / "out")
    checkpoint(tmp_path / "out", 4, ["bedroom", "kitchen"])
    new, args = run(tmp_path, "b/photos", ["bathroom", "living"])
    with pytest.raises(RunFolderError) as error:
        plan_run(args, True, new)
    message = str(error.value)
    assert f"holds an unfinished run on {tmp_path / 'a/photos'} with classes bedroom, kitchen" in message
    assert f"this run is on {tmp_path / 'b/photos'} with classes bathroom, living" in message
    assert "--no_resume" in message and "--output_dir" in message
    assert (tmp_path / "out" / "checkpoint-4").is_dir()  # nothing of the other run was touched


def test_photos_added_to_the_same_folder_are_not_ignored_on_a_rerun(tmp_path):
    old, _ = run(tmp_path, "photos", ["a", "b"], finished=True)
    old.save(tmp_path / "out")
    new, args = run(tmp_path, "photos", ["a", "b"])
    new = dataclasses.replace(new, split_sizes={"train": 10, "validation": 2, "pseudo_labeled": 3})
    changed = r"(?s)whose photos have changed since.*photos_per_split: train 8 there; train 10, validation 2 here"
    with pytest.raises(RunFolderError, match=changed):
        plan_run(args, True, new)


@pytest.mark.parametrize(("flags", "difference"), [
    (["--learning_rate", "0.01"], "learning_rate: 0.0003 there; 0.01 here"),
    (["--backbone", "resnet50"], "backbone: efficientnet-lite0 there; resnet50 here"),
    (["--seed", "7"], "seed: 42 there; 7 here"),
    (["--stages", "1"], "stages: 2 there; 1 here"),
    (["--split_fractions", "0.6", "0.2", "0.2"], "split_fractions: 0.76, 0.14, 0.1 there; 0.6, 0.2, 0.2 here"),
])
def test_the_same_photos_with_another_recipe_are_not_resumed(tmp_path, flags, difference):
    recipe = ["--learning_rate", "3e-4", "--backbone", "efficientnet-lite0"]
    old, _ = run(tmp_path, "photos", ["a", "b"], *recipe)
    old.save(tmp_path / "out")
    checkpoint(tmp_path / "out", 4)
    new, args = run(tmp_path, "photos", ["a", "b"], *recipe, *flags)
    with pytest.raises(RunFolderError, match=f"(?s)on the same photos and classes with other settings.*{difference}"):
        plan_run(args, True, new)


def test_the_same_unfinished_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    old, args = run(tmp_path, "photos", ["a", "b"])
    old.save(tmp_path / "out")
    checkpoint(tmp_path / "out", 4)
    checkpoint(tmp_path / "out", 12)
    checkpoint(tmp_path / "out", 8)
    checkpoint(tmp_path / "out", 16, complete=False)  # killed while saving: no trainer_state.json yet
    again, _ = run(tmp_path, "photos", ["a", "b"], "--cache_dir", str(tmp_path / "elsewhere"),
                   "--dataloader_num_workers", "1")  # settings that do not change the model may change
    assert plan_run(args, True, again) == RunPlan(resume_from=str(tmp_path / "out" / "checkpoint-12"))


def test_a_finished_run_is_reported_not_trained_again(tmp_path):
    done, args = run(tmp_path, "photos", ["a", "b"], finished=True)
    done.save(tmp_path / "out")
    checkpoint(tmp_path / "out", 8)
    (tmp_path / "out" / "test_results.json").write_text(json.dumps({"test_accuracy": 0.75}))
    plan = plan_run(args, True, run(tmp_path, "photos", ["a", "b"])[0])
    assert plan == RunPlan(finished={"test_accuracy": 0.75})
    assert (tmp_path / "out" / "checkpoint-8").is_dir()


def test_a_run_that_died_before_its_first_checkpoint_leaves_nothing_to_resume(tmp_path):
    old, _ = run(tmp_path, "a", ["x", "y"])
    old.save(tmp_path / "out")
    (tmp_path / "out" / "train_results.json").write_text("{}")
    new, args = run(tmp_path, "b", ["p", "q", "r"])
    assert plan_run(args, True, new) == RunPlan()
    assert not (tmp_path / "out" / "train_results.json").exists()


def test_checkpoints_without_a_record_resume_only_with_the_same_classes(tmp_path):
    checkpoint(tmp_path / "out", 6, ["blue", "red"])  # an older version, or killed before writing its record
    same, args = run(tmp_path, "photos", ["blue", "red"])
    assert plan_run(args, True, same).resume_from == str(tmp_path / "out" / "checkpoint-6")
    other, _ = run(tmp_path, "photos", ["blue", "green", "red"])
    with pytest.raises(RunFolderError, match="checkpoints of another run \\(classes blue, red, no run record\\)"):
        plan_run(args, True, other)


def test_an_older_record_without_class_names_is_compared_with_the_saved_models_classes(tmp_path):
    old, _ = run(tmp_path, "photos", [])
    raw = old.to_dict()
    del raw["label_names"], raw["finished"]  # what the previous version wrote, at the end of a run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hf_model_config.json").write_text(json.dumps(raw))
    ConvNextConfig(id2label={0: "cat", 1: "dog"}).save_pretrained(tmp_path / "out")
    new, args = run(tmp_path, "photos", ["car", "dog"])
    with pytest.raises(RunFolderError, match="(?s)a finished run .* classes cat, dog"):
        plan_run(args, True, new)


def test_no_resume_starts_over_in_another_runs_folder(tmp_path):
    old, _ = run(tmp_path, "a", ["x", "y"])
    old.save(tmp_path / "out")
    checkpoint(tmp_path / "out", 4, ["x", "y"])
    new, args = run(tmp_path, "b", ["p", "q"], "--no_resume")
    assert plan_run(args, False, new) == RunPlan()
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_resume_from_checkpoint_is_the_users_explicit_choice(tmp_path):
    old, _ = run(tmp_path, "a", ["x", "y"])
    old.save(tmp_path / "out")
    chosen = checkpoint(tmp_path / "elsewhere", 4, ["x", "y"])
    new, args = run(tmp_path, "b", ["p", "q"], "--resume_from_checkpoint", str(chosen))
    assert plan_run(args, True, new) == RunPlan(resume_from=str(chosen))


def test_an_unfinished_run_is_refused_naming_the_command_that_resumes_it(tmp_path):
    record, _ = run(tmp_path, "photos", ["a", "b"])
    record.save(tmp_path / "out")
    with pytest.raises(RunFolderError, match="(?s)did not finish.*python train.py --data_dir photos"):
        require_finished(tmp_path / "out")
    require_finished(tmp_path / "nothing_recorded")  # trained elsewhere: nothing says it is unfinished
    run(tmp_path, "photos", ["a", "b"], finished=True)[0].save(tmp_path / "done")
    require_finished(tmp_path / "done")


def test_publishing_an_unfinished_run_stops_with_advice(tmp_path, capsys):
    record, _ = run(tmp_path, "photos", ["a", "b"])
    record.save(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        hub.main(["model", str(tmp_path / "out"), "--repo_id", "someone/x", "--dry_run",
                  "--out_dir", str(tmp_path / "repo")])
    assert "did not finish" in str(exit_info.value.code) and "Rerun its training command" in str(exit_info.value.code)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_results_are_merged_like_trainers_and_a_failed_write_keeps_the_old_file(tmp_path):
    save_results(tmp_path, "train", {"train_loss": 0.5})
    save_results(tmp_path, "test", {"test_accuracy": 0.75})
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 0.5, "test_accuracy": 0.75}
    with pytest.raises(TypeError):
        save_results(tmp_path, "test", {"test_accuracy": object()})  # fails halfway through writing
    assert json.loads((tmp_path / "test_results.json").read_text()) == {"test_accuracy": 0.75}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_results.json", "test_results.json",
                                                          "train_results.json"]  # no temporary file left


def test_staged_files_replace_the_folders_files_whole(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"old weights")
    staging = tmp_path / ".saving-model"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"new weights")
    (staging / "config.json").write_text("{}")
    move_into(staging, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"new weights" and (tmp_path / "config.json").is_file()
    assert not staging.exists()


@pytest.mark.parametrize("resume", [True, False])
def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(tmp_path, resume):
    (tmp_path / "out").mkdir()
    for name in ("README.md", "config.json", "notes.txt", "photo.jpg"):
        (tmp_path / "out" / name).write_text("mine")
    record, args = run(tmp_path, "photos", ["a", "b"])
    with pytest.raises(RunFolderError) as error:
        plan_run(args, resume, record)
    assert str(error.value) == (f"--output_dir {tmp_path / 'out'} holds files that are not a training run (README.md, "
                                "config.json, notes.txt and 1 more); training would write its model and reports "
                                "among them: choose a new or empty folder")
    assert sorted(p.read_text() for p in (tmp_path / "out").iterdir()) == ["mine"] * 4


def test_an_empty_folder_or_one_with_only_hidden_files_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".DS_Store").write_text("")
    record, args = run(tmp_path, "photos", ["a", "b"])
    assert plan_run(args, True, record) == RunPlan()


def test_starting_over_removes_the_old_models_label_issues(tmp_path):
    old, _ = run(tmp_path, "a", ["x", "y"], finished=True)
    old.save(tmp_path / "out")
    for name in ("label_issues.csv", "label_issues.png"):
        (tmp_path / "out" / name).write_text("judged the old model")
    new, args = run(tmp_path, "b", ["p", "q"])
    assert plan_run(args, False, new) == RunPlan()
    assert not list((tmp_path / "out").glob("label_issues.*"))
