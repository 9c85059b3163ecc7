"""Heads fitted on cached features (hf_model.heads) and how training uses them: export, refit, folds, recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_photo
from datasets import ClassLabel, Dataset, DatasetDict
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from transformers import AutoModelForImageClassification, pipeline

import hf_model.training as training
from hf_model.config import MANY_PHOTOS
from hf_model.heads import LinearHead, fit_head, fit_logistic, fit_ncm, inner_folds

FAST = ["--image_size", "32", "--dataloader_pin_memory", "false", "--feature_views", "2",
        "--split_fractions", "0.5", "0.25", "0.25"]


def blobs(n_per_class: int, n_classes: int, views: int = 2, dim: int = 6, seed: int = 0):
    """(photos, views, dim) features of well-separated classes, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels][:, None, :] + rng.normal(0, 1, (len(labels), views, dim))
    return features.astype(np.float32), labels


def test_two_class_logistic_head_gives_scikit_learns_probabilities():
    features, labels = blobs(20, 2, views=1)
    head = fit_head("logistic", features, labels, 2, C=0.5)
    rows = StandardScaler().fit_transform(features[:, 0])
    expected = LogisticRegression(C=0.5, max_iter=500).fit(rows, labels).predict_proba(rows)
    logits = head.logits(features[:, 0])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), expected, atol=1e-4)


def test_logistic_head_chooses_C_by_inner_cross_validation_and_keeps_held_out_logits():
    features, labels = blobs(6, 3)
    head = fit_logistic(features, labels, 3, Cs=(1e-4, 1.0))
    assert head.C in (1e-4, 1.0, 10.0, 100.0)  # the range grows while its largest C is best
    assert head.held_out_logits.shape == (18, 3) and len(head.held_out_labels) == 18
    assert (head.held_out_logits.argmax(1) == head.held_out_labels).mean() > 0.9  # separable blobs


def test_a_class_without_training_photos_is_never_predicted():
    features, labels = blobs(5, 2)
    head = fit_head("logistic", features, labels, 3, C=1.0)
    assert (head.logits(features[:, 0]).argmax(1) != 2).all()
    assert head.bias[2] < -1e3


def test_cosine_nearest_class_mean_predicts_the_nearest_mean_direction():
    features, labels = blobs(8, 4, views=3)
    head = fit_ncm(features, labels, 4)
    means = np.stack([features[labels == c].reshape(-1, 6) for c in range(4)])
    unit = means / np.linalg.norm(means, axis=2, keepdims=True)
    directions = unit.mean(axis=1)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    query = np.random.default_rng(1).normal(0, 3, (50, 6)).astype(np.float32)
    cosine = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ directions.T
    assert (head.logits(query).argmax(1) == cosine.argmax(1)).all()


def test_inner_folds_hold_out_one_photo_per_class_when_classes_have_three():
    labels = np.repeat(np.arange(5), 3)
    folds = inner_folds(labels, None, 5, seed=0)
    assert len(folds) == 3
    for train, held in folds:
        assert sorted(labels[held]) == list(range(5)) and len(train) == 10
    assert inner_folds(np.arange(4), None, 5, seed=0) == []  # one photo per class: nothing to hold out


def test_head_written_into_a_model_is_what_pipeline_answers(tiny_convnext, tmp_path):
    """The exported head is the model's own classifier layer: pipeline() gives the head's probabilities."""
    from hf_model.adapters import adapter_for
    from hf_model.backbones import load_image_processor
    from hf_model.features import extract_features
    from hf_model.transforms import build_eval_transform

    model = AutoModelForImageClassification.from_pretrained(
        tiny_convnext, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2},
        ignore_mismatched_sizes=True).eval()
    photos = [make_photo(tmp_path / f"{i}.png", (40 * i, 200 - 30 * i, 90), seed=i) for i in range(6)]
    dataset = Dataset.from_dict({"image": [str(p) for p in photos]}).cast_column("image", _image())
    transform = build_eval_transform(load_image_processor(tiny_convnext, model.config))
    features = extract_features(model, dataset, [transform], tmp_path / "cache")
    head = fit_head("logistic", features, np.array([0, 1, 2, 0, 1, 2]), 3, C=1.0)
    head.write_into(adapter_for(model).classifier(model))
    model.save_pretrained(tmp_path / "model")
    load_image_processor(tiny_convnext, model.config).save_pretrained(tmp_path / "model")
    answers = pipeline("image-classification", model=str(tmp_path / "model"), top_k=3)([str(p) for p in photos])
    logits = head.logits(features[:, 0])
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for answer, row in zip(answers, expected):
        got = {a["label"]: a["score"] for a in answer}
        np.testing.assert_allclose([got["a"], got["b"], got["c"]], row, atol=1e-3)  # the cache keeps float16


def test_head_of_another_shape_is_refused():
    head = LinearHead(np.zeros((3, 4), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="another backbone"):
        head.write_into(torch.nn.Linear(5, 3))


# ---------------------------------------------------------------- in training

def record_head_fits(monkeypatch) -> list[np.ndarray]:
    """Spy on training's fit_head: the labels each head was fitted on, in order."""
    seen = []
    real = training.fit_head

    def spy(name, features, labels, n_classes, **kwargs):
        seen.append(np.asarray(labels))
        return real(name, features, labels, n_classes, **kwargs)

    monkeypatch.setattr(training, "fit_head", spy)
    return seen


def test_refit_model_learned_from_every_labeled_photo(image_folder, tiny_convnext, tmp_path, monkeypatch, capsys):
    seen = record_head_fits(monkeypatch)
    out = tmp_path / "run"
    training.main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
                   "--cache_dir", str(tmp_path / "cache"), *FAST])
    sizes = json.loads((out / "hf_model_config.json").read_text())["split_sizes"]
    assert len(seen) == 2  # the head chosen on train + validation, then the refit
    assert len(seen[0]) == sizes["train"] + sizes["validation"] and len(seen[-1]) == 24
    assert "refit on all 24 labeled photos" in capsys.readouterr().out
    assert "refit on all 24 labeled photos" in (out / "README.md").read_text()


def test_no_refit_keeps_the_test_photos_out_of_the_saved_model(image_folder, tiny_convnext, tmp_path, monkeypatch):
    seen = record_head_fits(monkeypatch)
    training.main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(tmp_path / "r"),
                   "--cache_dir", str(tmp_path / "cache"), "--refit", "false", *FAST])
    assert len(seen) == 1 and len(seen[0]) < 24


def test_saved_model_gives_the_temperature_scaled_probabilities(image_folder, tiny_convnext, tmp_path, monkeypatch):
    """The temperature is folded into the classifier: pipeline() returns softmax(logits / T) of the unscaled head."""
    monkeypatch.setattr(training, "MIN_HELD_OUT", 10)  # a tiny folder: 18 held-out predictions
    before = {}
    real = training.fold_temperature

    def spy(classifier, temperature):
        before["layer"] = torch.nn.Linear(classifier.in_features, classifier.out_features)
        before["layer"].load_state_dict(classifier.state_dict())
        real(classifier, temperature)

    monkeypatch.setattr(training, "fold_temperature", spy)
    out = tmp_path / "run"
    training.main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
                   "--cache_dir", str(tmp_path / "cache"), *FAST])
    chosen = json.loads((out / "all_results.json").read_text())["chosen"]
    temperature = chosen["temperature"]
    assert temperature != 1.0 and chosen["temperature_report"]["n"] > 0
    saved = AutoModelForImageClassification.from_pretrained(out)
    layer = saved.classifier
    torch.testing.assert_close(layer.weight, before["layer"].weight / temperature)
    torch.testing.assert_close(layer.bias, before["layer"].bias / temperature)
    assert (out / "reliability_diagram.png").stat().st_size > 1000
    assert "temperature-scaled" in (out / "README.md").read_text()


def test_four_fold_cross_validation_of_four_photos_per_class_tests_one_and_learns_from_three(
        tiny_convnext, tmp_path, monkeypatch):
    """The bird fold scheme: with 4 photos per class and --cv_folds 4, each fold tests one photo of every class
    and the refit model learns from the other three."""
    for k, (name, colour) in enumerate([("a", (220, 30, 30)), ("b", (30, 30, 220)), ("c", (30, 200, 30))]):
        for i in range(4):
            make_photo(tmp_path / "photos" / name / f"{i}.jpg", colour, seed=100 * k + i)
    seen = record_head_fits(monkeypatch)
    summary = training.main(["--data_dir", str(tmp_path / "photos"), "--backbone", tiny_convnext, "--output_dir",
                             str(tmp_path / "cv"), "--cache_dir", str(tmp_path / "cache"), "--cv_folds", "4",
                             "--image_size", "32", "--feature_views", "2", "--dataloader_pin_memory", "false"])
    assert summary["photos"] == 12
    assert len(seen) == 4  # the head alone learns from train + validation at once: nothing left to refit
    assert all(sorted(np.bincount(labels)) == [3, 3, 3] for labels in seen)
    for fold in range(4):
        sizes = json.loads((tmp_path / "cv" / f"fold-{fold}" / "hf_model_config.json").read_text())["split_sizes"]
        assert sizes["test"] == 3


def _labels_dataset(counts: list[int]) -> DatasetDict:
    labels = np.repeat(np.arange(len(counts)), counts)
    feature = ClassLabel(names=[f"c{i}" for i in range(len(counts))])
    split = Dataset.from_dict({"label": labels}).cast_column("label", feature)
    return DatasetDict(train=split, validation=split.select([]), test=split.select([]))


@pytest.mark.parametrize(("counts", "blocks"), [([40, 60], 0), ([MANY_PHOTOS, MANY_PHOTOS + 10], 2)])
def test_default_recipe_depends_on_the_photos_per_class_and_says_why(counts, blocks, caplog):
    from hf_model.config import TrainConfig

    caplog.set_level("INFO", logger="hf_model")
    cfg = training.choose_recipe(TrainConfig(data_dir="unused"), _labels_dataset(counts))
    assert cfg.unfreeze_top_blocks == blocks
    assert f"--unfreeze_top_blocks {blocks}" in caplog.text and "median class" in caplog.text
    given = training.choose_recipe(TrainConfig(data_dir="unused", unfreeze_top_blocks=3), _labels_dataset(counts))
    assert given.unfreeze_top_blocks == 3  # a flag given is kept


def _image():
    from datasets import Image

    return Image()


def test_the_same_command_gives_the_same_model_and_figures(image_folder, tiny_convnext, tmp_path):
    """Reproducible on CPU: the default recipe has no random start (closed-form head, views seeded per photo)."""
    from safetensors.torch import load_file

    runs = []
    for name in ("first", "second"):  # separate feature caches: the second run computes everything again
        metrics = training.main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir",
                                 str(tmp_path / name), "--cache_dir", str(tmp_path / f"cache-{name}"), *FAST])
        runs.append((metrics, load_file(tmp_path / name / "model.safetensors")))
    (first, weights), (second, again) = runs
    assert first["test_loss"] == second["test_loss"] and first["test_accuracy"] == second["test_accuracy"]
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)


def test_logistic_head_tries_weaker_regularization_while_the_weakest_tried_is_best(caplog):
    """Many classes with a few photos each (the birds) want a larger C than the default range holds."""
    from hf_model.heads import DEFAULT_CS, MAX_C

    caplog.set_level("INFO", logger="hf_model")
    features, labels = blobs(6, 3)  # separable: held-out log-loss keeps falling as C grows
    head = fit_logistic(features, labels, 3)
    assert head.C > max(DEFAULT_CS) and head.C <= MAX_C
    assert f"{max(DEFAULT_CS) * 10:g}:" in caplog.text  # the extension was scored and logged


def test_one_photo_per_class_fits_without_scikit_learns_regression_warning(recwarn):
    features = np.random.default_rng(0).normal(size=(30, 1, 4)).astype(np.float32)  # scikit-learn warns from 21

    fit_head("logistic", features, np.arange(30), 30)

    assert not [w for w in recwarn if "unique classes" in str(w.message)]
