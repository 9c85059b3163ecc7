"""Classification metrics as an ``evaluate`` module, so they run offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; this module is the same kind of
``evaluate.Metric`` defined in the package, computed with scikit-learn like the canonical ones.
It takes class probabilities (not argmax ids) so that ROC-AUC and top-k come from one call.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, top_k_accuracy_score

from hf_model.config import TOP_K


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, macro-F1, per-class precision/recall/F1, ROC-AUC, top-k and the confusion matrix."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="",
            inputs_description="predictions: class probabilities per example; references: class ids",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, label_names: list[str] | None = None, detailed: bool = False):
        probs = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references)
        n_classes = probs.shape[1]
        names = label_names or [str(i) for i in range(n_classes)]
        preds = probs.argmax(axis=1)
        labels = np.arange(n_classes)
        precision, recall, f1, support = precision_recall_fscore_support(
            refs, preds, labels=labels, zero_division=0)
        present = support > 0  # classes absent from this split would drag macro scores to 0
        out = {
            "accuracy": float((preds == refs).mean()),
            "f1_macro": float(f1[present].mean()),
            "precision_macro": float(precision[present].mean()),
            "recall_macro": float(recall[present].mean()),
        }
        auc = roc_auc(probs, refs)
        if auc is not None:
            out["roc_auc"] = auc
        if n_classes > TOP_K:  # with TOP_K classes or fewer every photo would count as right
            # labels=: a split need not hold every class, yet the columns are all of them
            out[f"top{TOP_K}_accuracy"] = float(top_k_accuracy_score(refs, probs, k=TOP_K, labels=labels))
        if detailed:
            out["per_class"] = {
                names[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                           "support": int(support[i])} for i in labels}
            out["confusion_matrix"] = confusion_matrix(refs, preds, labels=labels).tolist()
        return out


def roc_auc(probs: np.ndarray, refs: np.ndarray) -> float | None:
    """Binary AUC of the second class, or one-vs-rest macro AUC over the classes present."""
    present = np.unique(refs)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(refs, probs[:, 1]))
    # one-vs-rest per class present, averaged: sklearn's multi_class="ovr" needs every class present
    scores = [roc_auc_score(refs == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def build_compute_metrics(label_names: list[str]):
    """A ``Trainer`` ``compute_metrics``: scalars only (the full report is ``compute(..., detailed=True)``)."""
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_pred) -> dict:
        logits, refs = eval_pred.predictions, eval_pred.label_ids
        return metric.compute(predictions=softmax(np.asarray(logits)), references=refs,
                              label_names=label_names)

    return compute_metrics


def split_metrics(view_probs: np.ndarray, references, label_names: list[str]) -> dict:
    """The full ``test_*`` report of one split from its test-time views' probabilities (views, photos, classes).

    The views are averaged (test-time augmentation); with more than one view, the accuracy of the
    plain view alone is reported too (``test_accuracy_without_tta``). ``test_loss`` is the mean
    cross-entropy of the averaged probabilities.
    """
    from sklearn.metrics import log_loss

    from hf_model.temperature import bin_totals, expected_calibration_error

    probs = view_probs.mean(axis=0)
    refs = np.asarray(references)
    metrics = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=probs, references=refs, label_names=label_names, detailed=True)
    out = {f"test_{k}": v for k, v in metrics.items()}
    out["test_loss"] = float(log_loss(refs, probs, labels=np.arange(len(label_names))))
    out["test_ece"] = expected_calibration_error(probs, refs)
    out["test_calibration_bins"] = bin_totals(probs, refs)  # cross-validation adds them up: the ECE over every photo
    if len(view_probs) > 1:
        out["test_accuracy_without_tta"] = float((view_probs[0].argmax(1) == refs).mean())
    out["test_samples"] = len(refs)
    return out
