"""Classification metrics as an ``evaluate`` module, so they run offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; this module is the same kind of
``evaluate.Metric`` defined in the package, computed with scikit-learn like the canonical ones.
It takes class probabilities (not argmax ids) so that ROC-AUC and top-k come from one call.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

TOP_K = 5


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, macro-F1, per-class precision/recall/F1, ROC-AUC, top-5 and the confusion matrix."""

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
        if n_classes > TOP_K:
            top = np.argsort(-probs, axis=1)[:, :TOP_K]
            out[f"top{TOP_K}_accuracy"] = float((top == refs[:, None]).any(axis=1).mean())
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


def build_compute_metrics(label_names: list[str], detailed: bool = False):
    """A ``Trainer`` ``compute_metrics``: scalars while training, the full report when ``detailed``."""
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_pred) -> dict:
        logits, refs = eval_pred.predictions, eval_pred.label_ids
        return metric.compute(predictions=softmax(np.asarray(logits)), references=refs,
                              label_names=label_names, detailed=detailed)

    return compute_metrics
