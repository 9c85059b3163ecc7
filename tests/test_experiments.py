"""Experiments over runs: cross-validation folds and their summary; self-training's pseudo-labels and teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_bedroom_folder, make_photo
from datasets import ClassLabel, Dataset, Features, Image

from hf_model.config import parse_args
from hf_model.experiments import balanced, cross_validate, pseudo_label, summarize_folds
from hf_model.training import main

FAST = ["--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--image_size", "32",
        "--split_fractions", "0.5", "0.25", "0.25", "--stages", "1"]


@pytest.fixture
def sure_model(tiny_convnext, tmp_path):
    """A tiny model that ignores the photo: its logits are its bias, (0, 3), so it says 'Old' with p = 0.95."""
    from transformers import AutoModelForImageClassification, ConvNextImageProcessor

    model = AutoModelForImageClassification.from_pretrained(
        tiny_convnext, num_labels=2, id2label={0: "Modern", 1: "Old"}, label2id={"Modern": 0, "Old": 1},
        ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 3.0]))
    out = tmp_path / "sure"
    model.save_pretrained(out)
    ConvNextImageProcessor.from_pretrained(tiny_convnext).save_pretrained(out)
    return out


@pytest.fixture
def unlabeled(tmp_path) -> Dataset:
    files = [str(make_photo(tmp_path / "u" / f"{i}.jpg", (40 * i, 90, 200 - 30 * i), seed=i)) for i in range(5)]
    features = Features({"image": Image(), "label": ClassLabel(names=["Modern", "Old"])})
    return Dataset.from_dict({"image": files, "label": [-1] * 5}, features=features)


def test_photos_the_model_is_sure_of_get_its_label(sure_model, unlabeled):
    labeled = pseudo_label(sure_model, unlabeled, threshold=0.9, tta=True)
    assert len(labeled) == 5 and labeled["label"] == [1] * 5  # 'Old', p = 0.953 >= 0.9
    assert labeled.features == unlabeled.features
    assert labeled[0]["image"].size == unlabeled[0]["image"].size


def test_photos_below_the_threshold_stay_unlabeled(sure_model, unlabeled):
    assert len(pseudo_label(sure_model, unlabeled, threshold=0.96)) == 0


def test_balanced_keeps_the_class_shares_and_the_surest_photos():
    probs = np.array([[0.99, 0.01], [0.95, 0.05], [0.91, 0.09], [0.90, 0.10], [0.02, 0.98], [0.3, 0.7]])
    candidates = np.arange(5)  # the last photo is under the threshold
    # 4 confident 'Modern', 1 confident 'Old'; shares 40/60: 'Old' is scarce, so 1 Old and 0.67 -> 0 Modern...
    assert balanced(candidates, probs, np.array([0.4, 0.6])).tolist() == [4]
    # ...and at 50/50: 1 of each, the surest Modern first
    assert balanced(candidates, probs, np.array([0.5, 0.5])).tolist() == [0, 4]
    assert balanced(candidates, probs, np.array([0.8, 0.2])).tolist() == [0, 1, 2, 3, 4]


def test_threshold_must_be_a_probability(sure_model, unlabeled):
    with pytest.raises(ValueError, match="probability"):
        pseudo_label(sure_model, unlabeled, threshold=1.5)


def test_self_training_trains_a_teacher_then_a_student_on_its_labels(tiny_convnext, tmp_path, monkeypatch):
    import hf_model.experiments as experiments

    def teacher_knows_the_colours(model_dir, dataset, **kwargs):  # what a good teacher answers, whatever it learned
        assert (Path(model_dir) / "model.safetensors").is_file()
        assert kwargs["device"] == torch.device("cpu")  # the run's device (its GPU on a GPU machine)
        paths = dataset.cast_column("image", Image(decode=False))["image"]
        odd = np.array([int(Path(p["path"]).stem.split("_")[1]) % 2 for p in paths])
        return np.stack([np.where(odd, 0.95, 0.05), np.where(odd, 0.05, 0.95)], axis=1)  # odd numbers: Modern

    monkeypatch.setattr(experiments, "teacher_probabilities", teacher_knows_the_colours)
    root = make_bedroom_folder(tmp_path / "bedrooms", 32)
    (root / "labels.csv").write_text("file,label\n" + "".join(f"bed_{i}.jpg,{'M' if i % 2 else 'O'}\n"
                                                              for i in range(1, 25)))
    out = tmp_path / "run"
    main(["--data_dir", str(root), "--backbone", tiny_convnext, "--output_dir", str(out), "--cache_dir",
          str(tmp_path / "cache"), "--learning_rate", "0.01", "--pseudo_label_threshold", "0.5", *FAST])
    teacher = json.loads((out / "teacher" / "hf_model_config.json").read_text())
    student = json.loads((out / "hf_model_config.json").read_text())
    assert "pseudo_labeled" not in teacher["split_sizes"]
    # 4 Modern and 4 Old photos are confident; balancing to the train split's shares keeps most of them
    assert 6 <= student["split_sizes"]["pseudo_labeled"] <= student["split_sizes"]["unlabeled"] == 8
    assert student["split_sizes"]["test"] == teacher["split_sizes"]["test"]  # same hand-labeled test photos
    assert (out / "teacher" / "model.safetensors").is_file() and (out / "all_results.json").is_file()
    assert "pseudo_labeled" in (out / "README.md").read_text()


def test_self_training_without_unlabeled_photos_is_a_clear_error(image_folder, tiny_convnext, tmp_path):
    with pytest.raises(ValueError, match="unlabeled photos"):
        main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(tmp_path / "o"),
              "--cache_dir", str(tmp_path / "cache"), "--pseudo_label_threshold", "0.9", *FAST])


def test_cross_validation_runs_every_fold_into_its_own_folder_and_averages(tmp_path):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path / "cv"), "--cv_folds", "3"])
    runs = []

    def run(fold_cfg, fold_args, command, cv_fold):  # stands in for training.train: known metrics per fold
        runs.append((fold_cfg.cv_folds, fold_args.output_dir, cv_fold))
        accuracy = [0.5, 0.75, 1.0][cv_fold[0]]
        return {"test_accuracy": accuracy, "test_f1_macro": accuracy / 2, "test_samples": 4,
                "test_per_class": {"a": {"f1": accuracy}, "b": {"f1": 0.0}}}

    summary = cross_validate(run, cfg, args, "python train.py ...")
    assert runs == [(0, str(tmp_path / "cv" / f"fold-{i}"), (i, 3)) for i in range(3)]
    assert summary["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.75, 1.0]))
    assert summary["f1_a"]["folds"] == [0.5, 0.75, 1.0] and summary["photos"] == 12
    saved = json.loads((tmp_path / "cv" / "cv_results.json").read_text())
    assert saved["folds"] == 3 and saved["f1_macro"]["mean"] == pytest.approx(0.375)


def test_only_the_main_process_writes_and_prints_the_cross_validation_summary(tmp_path, monkeypatch, capsys):
    from transformers import TrainingArguments

    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path / "cv"), "--cv_folds", "2"])
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))  # rank 1 of a torchrun job

    def run(fold_cfg, fold_args, command, cv_fold):
        return {"test_accuracy": 0.5, "test_f1_macro": 0.5, "test_samples": 2}

    summary = cross_validate(run, cfg, args, "python train.py ...")
    assert summary["accuracy"]["mean"] == pytest.approx(0.5)  # every rank still gets the figures
    assert not (tmp_path / "cv" / "cv_results.json").exists() and capsys.readouterr().out == ""


def test_rerunning_an_interrupted_cross_validation_trains_only_its_unfinished_folds(image_folder, tiny_convnext,
                                                                                   tmp_path, monkeypatch, capsys):
    import hf_model.training as training

    fine_tune, trained = training.fine_tune, []

    def interrupted_in_fold_1(cfg, args, data, *resume_from):
        trained.append(Path(args.output_dir).name)
        if trained == ["fold-0", "fold-1"]:
            raise KeyboardInterrupt  # Ctrl-C during the second fold of the first attempt
        return fine_tune(cfg, args, data, *resume_from)

    monkeypatch.setattr(training, "fine_tune", interrupted_in_fold_1)
    out = tmp_path / "cv"
    command = ["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--cv_folds",
               "2", "--cache_dir", str(tmp_path / "cache"), "--dataloader_pin_memory", "false", *FAST]
    with pytest.raises(SystemExit) as stop:
        main(command)
    assert stop.value.code == 130  # Ctrl-C's exit status
    assert "interrupted; rerun the same command to continue" in capsys.readouterr().err
    fold0 = json.loads((out / "fold-0" / "test_results.json").read_text())
    summary = main(command)
    assert trained == ["fold-0", "fold-1", "fold-1"]  # fold 0 finished the first time: reported, not retrained
    assert summary["photos"] == 24 and summary["accuracy"]["folds"][0] == fold0["test_accuracy"]
    assert json.loads((out / "fold-1" / "hf_model_config.json").read_text())["finished"] is True


def test_fold_summary_keeps_only_scalar_metrics():
    folds = [{"test_accuracy": 1.0, "test_samples": 2, "test_confusion_matrix": [[1, 0], [0, 1]]},
             {"test_accuracy": 0.0, "test_samples": 3, "test_confusion_matrix": [[0, 1], [2, 0]]}]
    summary = summarize_folds(folds)
    assert set(summary) == {"accuracy", "photos"} and summary["photos"] == 5
