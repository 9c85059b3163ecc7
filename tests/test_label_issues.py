"""``hf-model label-issues``: out-of-fold probabilities, cleanlab's flags, and the command on a tiny run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_model.data import DataError
from hf_model.label_issues import (
    LABEL_ISSUES_CSV,
    LABEL_ISSUES_PNG,
    LabeledPhotos,
    LabelIssues,
    draw_label_issues,
    find_issues,
    load_labeled_photos,
    main,
    out_of_fold_probabilities,
)
from hf_model.training import main as train

FAST = ["--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--image_size", "32",
        "--split_fractions", "0.5", "0.25", "0.25", "--dataloader_pin_memory", "false", "--feature_views", "2"]
RED, BLUE = (220, 30, 30), (30, 30, 220)


def separated_features(per_class: int = 20, classes: int = 3, views: int = 2, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(photos, views, 8) features around one far-apart centre per class, and their (true) labels."""
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.eye(classes, 8)
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels][:, None, :] + rng.normal(size=(len(labels), views, 8))
    return features.astype(np.float32), labels


@pytest.mark.parametrize("C", [None, 0.1])  # chosen by inner cross-validation, or the run's own
def test_flags_exactly_the_photos_filed_under_the_wrong_class(C):
    features, labels = separated_features()
    wrong = np.array([3, 25, 47])  # one photo of each class, filed under the next class
    noisy = labels.copy()
    noisy[wrong] = (labels[wrong] + 1) % 3
    probs = out_of_fold_probabilities(features, noisy, 3, seed=0, C=C)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(axis=1), 1)
    assert sorted(find_issues(noisy, probs)) == sorted(wrong)


def test_issues_are_ranked_by_the_probability_of_the_given_label():
    labels = np.array([0] * 10 + [1] * 10)
    probs = np.tile([[0.95, 0.05]], (20, 1))
    probs[10:] = [0.05, 0.95]
    probs[[2, 4]] = [[0.04, 0.96], [0.01, 0.99]]  # class 0 photos the model surely calls class 1
    assert find_issues(labels, probs).tolist() == [4, 2]


def test_a_clean_dataset_flags_nothing():
    features, labels = separated_features()
    assert len(find_issues(labels, out_of_fold_probabilities(features, labels, 3, C=0.1))) == 0


def test_one_photo_per_class_cannot_be_held_out():
    features, labels = separated_features(per_class=1)
    with pytest.raises(DataError, match="at least 2 labeled photos"):
        out_of_fold_probabilities(features, labels, 3)


def test_photos_without_a_file_are_named_by_split_and_index(monkeypatch, tmp_path):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["blue", "red"])})
    split = Dataset.from_dict({"image": [Image.new("RGB", (8, 8), RED)] * 2, "label": [1, 1]}, features=features)
    monkeypatch.setattr("hf_model.label_issues.load_data",
                        lambda cfg, seed, fold: DatasetDict(train=split, validation=split, test=split))
    record = type("Record", (), {"config": None, "training_args": type("Args", (), {"seed": 0}), "cv_fold": None,
                                 "split_sizes": {}})
    photos = load_labeled_photos(record, tmp_path)
    assert photos.files == [""] * 6  # a Hub dataset's photos are bytes, not files
    assert list(zip(photos.splits, photos.indices)) == [("train", 0), ("train", 1), ("validation", 0),
                                                        ("validation", 1), ("test", 0), ("test", 1)]


def test_contact_sheet_titles_follow_the_csv_ranking_given_then_suggested():
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["blue", "red"])})
    images = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, RED, RED)]
    dataset = Dataset.from_dict({"image": images, "label": [1, 0, 0, 0]}, features=features)
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    photos = LabeledPhotos(dataset, ["train"] * 4, list(range(4)), [""] * 4)
    issues = LabelIssues(photos, np.array([1, 0, 0, 0]), probs, np.array([3, 2]), ["blue", "red"])
    titles = [ax.get_title() for ax in draw_label_issues(issues, top=5).axes if ax.get_title()]
    assert titles == ["1. blue → red\np(given) 0.20, p(suggested) 0.80",
                      "2. blue → red\np(given) 0.30, p(suggested) 0.70"]
    assert [row["index"] for row in issues.rows()] == [3, 2]
    assert issues.per_class() == "blue 2 of 3, red 0 of 1"


# ---------------------------------------------------------------- the command on a tiny run

MISLABELED = ("red_in_blue_0.jpg", "red_in_blue_1.jpg", "red_in_blue_2.jpg")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, tiny_convnext) -> Path:
    """A finished tiny run on red and blue photos, three clearly red photos filed under blue."""
    root = tmp_path_factory.mktemp("noisy")
    for name, colour in (("red", RED), ("blue", BLUE)):
        for i in range(12):
            make_photo(root / "photos" / name / f"{i}.jpg", colour, seed=i)
    for i, name in enumerate(MISLABELED):
        make_photo(root / "photos" / "blue" / name, RED, seed=100 + i)
    run = root / "run"
    train(["--data_dir", str(root / "photos"), "--backbone", tiny_convnext, "--output_dir", str(run),
           "--cache_dir", str(root / "cache"), *FAST])
    return run


def test_command_ranks_the_mislabeled_photos_first_and_draws_them(noisy_run, capsys):
    main([str(noisy_run), "--top", "4"])
    with open(noisy_run / LABEL_ISSUES_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {Path(row["file"]).name for row in rows[:3]} == set(MISLABELED)
    assert [row["rank"] for row in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert all(row["given_label"] == "blue" and row["suggested_label"] == "red" for row in rows[:3])
    assert all(float(row["p_given"]) < 0.5 < float(row["p_suggested"]) for row in rows)
    with Image.open(noisy_run / LABEL_ISSUES_PNG) as sheet:
        sheet.verify()
        assert sheet.format == "PNG"
    out = capsys.readouterr().out
    assert f"{len(rows)} of 27 labeled photos flagged" in out and f"blue {len(rows)} of 15" in out
    assert str(noisy_run / LABEL_ISSUES_CSV) in out


def test_command_writes_into_output_dir_and_leaves_the_labels(noisy_run, tmp_path):
    before = json.loads((noisy_run / "hf_model_config.json").read_text())
    main([str(noisy_run), "--output_dir", str(tmp_path / "review"), "--folds", "3"])
    assert (tmp_path / "review" / LABEL_ISSUES_CSV).is_file() and (tmp_path / "review" / LABEL_ISSUES_PNG).is_file()
    assert json.loads((noisy_run / "hf_model_config.json").read_text()) == before
    assert (noisy_run.parent / "photos" / "blue" / MISLABELED[0]).is_file()  # still filed where it was


def test_a_folder_that_is_not_a_run_stops_with_one_line_naming_it(tmp_path):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert isinstance(stop.value.code, str) and str(tmp_path) in stop.value.code  # a message: exit status 1
    assert "not trained with train.py" in stop.value.code


def test_an_unfinished_run_is_refused_naming_the_folder(tmp_path):
    (tmp_path / "hf_model_config.json").write_text(json.dumps({"config": {"data_dir": "x"}, "finished": False}))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert str(tmp_path) in stop.value.code and "did not finish" in stop.value.code


@pytest.mark.parametrize("flag", [["--folds", "1"], ["--top", "0"]])
def test_bad_flags_are_usage_errors(tmp_path, flag):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), *flag])
    assert stop.value.code == 2
