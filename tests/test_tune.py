"""hf-model tune: Bayesian search over the head (cross-validated on cached features) or fine-tuning (Trainer's
hyperparameter_search), resumable, and a best_preset.json that train.py --preset_file trains."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from hf_model import tune
from hf_model.config import load_run_config, parse_args
from hf_model.training import main as train_main

FAST = ["--image_size", "32", "--split_fractions", "0.5", "0.25", "0.25", "--per_device_eval_batch_size", "8",
        "--dataloader_pin_memory", "false"]


@pytest.fixture
def quick_spaces(monkeypatch):
    """The searched ranges cut to a few epochs, so a trial takes about a second on the tiny model."""
    monkeypatch.setitem(tune.HEAD_SPACE, "head_epochs", tune.Range(1, 3, integer=True))
    monkeypatch.setitem(tune.FINE_TUNE_SPACE, "num_train_epochs", tune.Range(1, 1, integer=True))


def tune_command(image_folder, tiny_convnext, tmp_path, *extra: str) -> list[str]:
    return ["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(tmp_path / "tune"),
            "--cache_dir", str(tmp_path / "cache"), "--folds", "2", "--head_patience", "1", *FAST, *extra]


def read_trials(folder) -> list[dict]:
    with open(folder / tune.TRIALS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def test_head_search_writes_the_reports_and_a_preset_train_py_applies(image_folder, tiny_convnext, tmp_path,
                                                                      quick_spaces, capsys):
    tune.main(tune_command(image_folder, tiny_convnext, tmp_path, "--n_trials", "3"))

    out = tmp_path / "tune"
    trials = read_trials(out)
    assert [row["number"] for row in trials] == ["0", "1", "2"]
    assert trials[0]["own_settings"] == "True" and float(trials[0]["params_head_learning_rate"]) == 1e-3
    assert all(row["state"] in ("COMPLETE", "PRUNED") and float(row["seconds"]) > 0 for row in trials)
    assert "## Trials, best first" in (out / tune.TUNE_MD).read_text()
    assert Image.open(out / tune.CONVERGENCE_PNG).size[0] > 100
    preset = json.loads((out / tune.BEST_PRESET_JSON).read_text())
    best = max((row for row in trials if row["value"]), key=lambda row: float(row["value"]))
    assert preset["head"] == "sgd" and preset["unfreeze_top_blocks"] == 0
    assert preset["head_learning_rate"] == float(best["params_head_learning_rate"])
    assert preset["image_size"] == 32 and preset["backbone"] == tiny_convnext  # the command's own settings too
    assert "data_dir" not in preset and "output_dir" not in preset  # where the photos are is the user's to give
    assert "--preset_file" in capsys.readouterr().out  # the summary says how to train it

    run = tmp_path / "best"
    train_main(["--preset_file", str(out / tune.BEST_PRESET_JSON), "--data_dir", str(image_folder),
                "--output_dir", str(run), "--cache_dir", str(tmp_path / "cache"), "--head_epochs", "1"])
    record = load_run_config(run)
    assert record.config.head == "sgd" and record.config.head_dropout == preset["head_dropout"]
    assert record.training_args.weight_decay == preset["weight_decay"]
    assert record.training_args.label_smoothing_factor == preset["label_smoothing_factor"]
    assert record.config.head_epochs == 1  # a flag still wins over the preset file


def test_rerunning_continues_the_study_and_another_search_in_its_folder_is_refused(image_folder, tiny_convnext,
                                                                                  tmp_path, quick_spaces):
    command = tune_command(image_folder, tiny_convnext, tmp_path, "--n_trials", "2")
    first = tune.main(command)
    started = [t.datetime_start for t in first.trials]

    again = tune.main(command)
    assert [t.datetime_start for t in again.trials] == started  # nothing trained again

    more = tune.main(tune_command(image_folder, tiny_convnext, tmp_path, "--n_trials", "3"))
    assert len(more.trials) == 3 and [t.datetime_start for t in more.trials[:2]] == started
    assert len(read_trials(tmp_path / "tune")) == 3

    with pytest.raises(SystemExit, match="holds another search.*head_learning_rate"):
        tune.main([*command, "--head_learning_rate", "0.01"])


def test_fine_tune_search_runs_trainer_hyperparameter_search(image_folder, tiny_convnext, tmp_path, quick_spaces):
    study = tune.main(tune_command(image_folder, tiny_convnext, tmp_path, "--n_trials", "2", "--search", "fine_tune",
                                   "--per_device_train_batch_size", "8"))

    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(0 <= t.value <= 1 for t in study.trials)
    preset = json.loads((tmp_path / "tune" / tune.BEST_PRESET_JSON).read_text())
    best = study.best_trial.params
    assert preset["unfreeze_top_blocks"] == best["unfreeze_top_blocks"] >= 1
    assert preset["learning_rate"] == best["learning_rate"] and "augmentation_scale" not in preset
    assert preset["rotation"] == pytest.approx(20.0 * best["augmentation_scale"])  # the preset's 20 degrees, scaled
    cfg, args = parse_args(["--preset_file", str(tmp_path / "tune" / tune.BEST_PRESET_JSON), "--data_dir", "x",
                            "--output_dir", "o"])
    assert cfg.unfreeze_top_blocks == best["unfreeze_top_blocks"] and args.num_train_epochs == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--n_trials", "0"], "--n_trials"),
    (["--folds", "1"], "--folds"),
    (["--cv_folds", "5"], "--folds"),
    (["--sampler", "random"], "--sampler"),
])
def test_a_bad_tune_flag_is_a_usage_error(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--data_dir", "x", "--output_dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_fine_tune_trials_score_the_model_train_py_would_keep():
    args = parse_args(["--data_dir", "x", "--output_dir", "o"])[1]  # best checkpoint by validation loss
    score = tune.KeptModelScore(args, stage1=(0.5, 0.80))  # stage 1: validation loss 0.5, macro-F1 0.80
    score.on_train_begin(args, None, None)
    assert score({"eval_loss": 0.6, "eval_f1_macro": 0.95}) == 0.80  # stage 2 worse by loss: stage 1 is kept
    assert score({"eval_loss": 0.4, "eval_f1_macro": 0.85}) == 0.85  # better by loss: this checkpoint is kept
    assert score({"eval_loss": 0.45, "eval_f1_macro": 0.99}) == 0.85
    score.on_train_begin(args, None, None)  # the next trial starts from stage 1 again
    assert score({"eval_loss": 0.7, "eval_f1_macro": 0.9}) == 0.80


def test_augmentation_strength_scales_every_augmentation_within_what_the_flags_accept():
    cfg = parse_args(["--data_dir", "x", "--output_dir", "o", "--zoom", "0.4", "--shift", "0.5"])[0]
    assert tune.scaled_augmentation(cfg, 0.0) == {"rotation": 0.0, "shear": 0.0, "brightness": 0.0, "shift": 0.0,
                                                  "zoom": 1.0}  # none at all
    assert tune.scaled_augmentation(cfg, 1.0)["zoom"] == pytest.approx(0.4)
    strong = tune.scaled_augmentation(cfg, 2.0)
    assert strong["rotation"] == 2 * cfg.rotation and strong["zoom"] == tune.MIN_ZOOM and strong["shift"] < 1


def test_a_trial_stopped_early_is_shown_with_its_partial_score_and_is_never_the_best(tmp_path):
    import optuna

    study = optuna.create_study(direction="maximize")
    space = {"head_dropout": optuna.distributions.FloatDistribution(0, 0.6)}
    study.add_trial(optuna.trial.create_trial(params={"head_dropout": 0.1}, distributions=space, value=0.8,
                                              intermediate_values={0: 0.7, 1: 0.8}))
    study.add_trial(optuna.trial.create_trial(params={"head_dropout": 0.5}, distributions=space, value=0.9,
                                              intermediate_values={0: 0.9}, user_attrs={tune.STOPPED: 1}))

    assert tune.best_trial(study).params == {"head_dropout": 0.1}  # a lucky first fold is not a cross-validation
    table = tune.trials_table(study)
    assert table["stopped_early"].tolist() == [False, True] and table["value"].isna().tolist() == [False, True]
    assert table["value_when_stopped"].tolist()[1] == 0.9
    assert tune.trial_outcome(study.trials[1]) == "stopped after 1 fold"
    assert tune.plot_convergence(study, tmp_path / "c.png", "macro-F1").stat().st_size > 0
