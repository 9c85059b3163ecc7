import numpy as np
import pytest
from transformers import EvalPrediction

from hf_model.metrics import ClassificationMetrics, build_compute_metrics


def test_binary_metrics_match_hand_computed_values():
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    refs = [0, 1, 1, 0]
    out = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=probs, references=refs, label_names=["a", "b"], detailed=True)
    assert out["accuracy"] == 0.5
    assert out["confusion_matrix"] == [[1, 1], [1, 1]]
    assert out["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    # positives scored 0.8, 0.4; negatives 0.1, 0.7: 3 of 4 pairs ordered right
    assert out["roc_auc"] == pytest.approx(0.75)
    assert "top5_accuracy" not in out


def test_many_classes_get_top5_and_one_vs_rest_auc():
    rng = np.random.default_rng(0)
    refs = np.arange(8)
    probs = rng.random((8, 8)) * 0.1
    probs[np.arange(8), (refs + 1) % 8] = 0.9  # always wrong at top-1...
    probs[np.arange(8), refs] = 0.5  # ...but right at top-2
    out = ClassificationMetrics(keep_in_memory=True).compute(predictions=probs, references=refs)
    assert out["accuracy"] == 0.0
    assert out["top5_accuracy"] == 1.0
    # one-vs-rest for class c: its one photo scores 0.5, above the six photos at < 0.1 but below
    # photo c-1's 0.9, so 6 of 7 pairs are ordered right, for every class
    assert out["roc_auc"] == pytest.approx(6 / 7)


def test_top5_counts_a_photo_whose_class_ranks_sixth_as_wrong():
    probs = np.array([[0.30, 0.25, 0.20, 0.12, 0.08, 0.04, 0.01],  # class 5 ranks sixth
                      [0.05, 0.10, 0.40, 0.15, 0.20, 0.06, 0.04]])  # class 4 ranks second
    out = ClassificationMetrics(keep_in_memory=True).compute(predictions=probs, references=[5, 4])
    assert out["top5_accuracy"] == 0.5  # also when the split holds only some of the classes


def test_compute_metrics_takes_logits_from_trainer():
    compute = build_compute_metrics(["a", "b"])
    out = compute(EvalPrediction(predictions=np.array([[2.0, -1.0], [-3.0, 1.0]]), label_ids=np.array([0, 1])))
    assert out["accuracy"] == 1.0 and out["f1_macro"] == 1.0
    assert "confusion_matrix" not in out  # scalars only while training
