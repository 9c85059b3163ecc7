"""Temperature scaling: synthetic predictions whose true temperature is known, and hand-computed ECE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from hf_model.temperature import (
    TEMPERATURE_RANGE,
    calibrate_logits,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    plot_reliability_diagram,
    reliability_bins,
)


def calibrated_sample(n: int, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): softmax(z) is perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    cumulative = softmax(logits, axis=1).cumsum(axis=1)
    labels = (cumulative > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


# ---------------------------------------------------------------- fitting

@pytest.mark.parametrize("scale, expected", [(3.0, 3.0), (0.5, 0.5)])
def test_fit_recovers_the_temperature_that_distorted_calibrated_logits(scale, expected):
    logits, labels = calibrated_sample(5000)
    assert fit_temperature(logits * scale, labels) == pytest.approx(expected, rel=0.1)


def test_fit_is_deterministic():
    logits, labels = calibrated_sample(2000, seed=1)
    assert fit_temperature(logits * 2, labels) == fit_temperature(logits * 2, labels)


def test_perfectly_separated_predictions_get_a_sharpening_temperature_in_range_not_a_crash():
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[labels] * 10.0  # every prediction right by a wide margin: the NLL keeps falling as T -> 0
    temperature = fit_temperature(logits, labels)
    assert math.isfinite(temperature)
    assert TEMPERATURE_RANGE[0] <= temperature < 1.0


def test_a_single_class_present_still_gives_a_temperature_in_range():
    rng = np.random.default_rng(0)
    temperature = fit_temperature(rng.normal(size=(30, 4)), np.zeros(30, dtype=int))
    assert TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]


# ---------------------------------------------------------------- measuring

def test_ece_matches_a_hand_computed_example():
    # Two bins, (0, 0.5] and (0.5, 1]; every number is a binary fraction, so the float result is exact.
    probs = np.array([
        [0.375, 0.25, 0.25, 0.125],  # confidence 0.375, right   -> bin 0
        [0.5, 0.25, 0.125, 0.125],   # confidence 0.5,   wrong   -> bin 0 (bins are closed on the right)
        [0.75, 0.125, 0.125, 0.0],   # confidence 0.75,  right   -> bin 1
        [0.0, 0.875, 0.125, 0.0],    # confidence 0.875, wrong   -> bin 1
    ])
    labels = np.array([0, 3, 0, 2])
    # bin 0: accuracy 0.5, confidence 0.4375 -> gap 0.0625; bin 1: accuracy 0.5, confidence 0.8125 -> gap 0.3125
    assert expected_calibration_error(probs, labels, n_bins=2) == 0.5 * 0.0625 + 0.5 * 0.3125
    bins = reliability_bins(probs, labels, n_bins=2)
    assert bins.count.tolist() == [2, 2]
    assert bins.confidence.tolist() == [0.4375, 0.8125]
    assert bins.accuracy.tolist() == [0.5, 0.5]


def test_confidence_one_falls_in_the_last_bin_and_empty_bins_are_nan():
    bins = reliability_bins(np.array([[1.0, 0.0]]), np.array([0]))
    assert bins.count[-1] == 1 and bins.count.sum() == 1
    assert np.isnan(bins.accuracy[:-1]).all()
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_calibrated_predictions_have_small_ece_and_overconfident_ones_large():
    logits, labels = calibrated_sample(20000)
    assert expected_calibration_error(softmax(logits, axis=1), labels) < 0.02
    assert expected_calibration_error(softmax(logits * 3, axis=1), labels) > 0.15


def test_temperature_scaling_lowers_ece_and_nll_of_overconfident_predictions():
    logits, labels = calibrated_sample(5000, seed=2)
    report = calibrate_logits(logits * 3, labels)
    assert report.ece_before > 0.15 and report.ece_after < 0.03
    assert report.nll_after < report.nll_before
    assert report.n == 5000 and report.n_bins == 15
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


# ---------------------------------------------------------------- folding into the classifier

@pytest.mark.parametrize("bias", [True, False])
def test_folded_layer_gives_the_scaled_probabilities(bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 7, bias=bias)
    inputs = torch.randn(32, 16)
    original = layer(inputs).detach()
    fold_temperature(layer, 2.5)
    folded = layer(inputs).detach()
    torch.testing.assert_close(folded.softmax(dim=1), (original / 2.5).softmax(dim=1), atol=1e-6, rtol=0)
    assert torch.equal(folded.argmax(dim=1), original.argmax(dim=1))


def test_folded_model_gives_calibrated_percentages_in_pipeline(tiny_convnext, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    model = AutoModelForImageClassification.from_pretrained(tiny_convnext).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_convnext)
    with torch.no_grad():
        logits = model(**processor(photo, return_tensors="pt")).logits[0]
    expected = (logits / 4.0).softmax(dim=0)
    assert (logits.softmax(dim=0) - expected).abs().max() > 1e-3  # unfolded, the pipeline would fail this test
    fold_temperature(model.classifier, 4.0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    scores = {row["label"]: row["score"] for row in pipeline("image-classification", model=str(tmp_path))(
        photo, top_k=model.config.num_labels)}
    got = torch.tensor([scores[model.config.id2label[i]] for i in range(len(expected))])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_fold_rejects_a_temperature_that_is_not_positive_and_finite(temperature):
    layer = torch.nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fold_temperature(layer, temperature)
    assert torch.equal(layer.weight, before)


# ---------------------------------------------------------------- the diagram

def test_reliability_diagram_is_a_whole_png(tmp_path: Path):
    logits, labels = calibrated_sample(500)
    temperature = fit_temperature(logits * 3, labels)
    path = plot_reliability_diagram(softmax(logits * 3, axis=1), softmax(logits * 3 / temperature, axis=1), labels,
                                    tmp_path / "model" / "reliability_diagram.png", temperature=temperature)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 600 and image.height > 400
        image.verify()
    assert [p.name for p in path.parent.iterdir()] == ["reliability_diagram.png"]  # no temporary file left


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((3, 2)), np.array([0, 1]), "3 rows but labels has 2"),
    (np.zeros((0, 2)), np.array([], dtype=int), "no predictions"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), "NaN or infinite"),
    (np.zeros((2, 3)), np.array([0, 3]), r"labels must lie in \[0, 3\).*\[3\]"),
    (np.zeros((2, 3)), np.array([-1, 0]), r"labels must lie in \[0, 3\)"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer class indices"),
    (np.zeros((2, 1)), np.array([0, 0]), "at least two classes"),
    (np.zeros(4), np.array([0, 1, 0, 1]), r"must be \(photos, classes\)"),
])
def test_fit_rejects_bad_inputs_naming_the_problem(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)


def test_ece_rejects_logits_passed_as_probabilities():
    with pytest.raises(ValueError, match="pass softmax"):
        expected_calibration_error(np.array([[2.0, -1.0], [0.5, 0.3]]), np.array([0, 1]))


def test_ece_rejects_no_predictions_and_bad_bin_counts():
    with pytest.raises(ValueError, match="no predictions"):
        expected_calibration_error(np.zeros((0, 2)), np.array([], dtype=int))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0]), n_bins=0)


def test_fold_rejects_a_layer_that_is_not_linear():
    with pytest.raises(TypeError, match="nn.Linear classifier, got Conv2d"):
        fold_temperature(torch.nn.Conv2d(3, 2, 1), 2.0)
