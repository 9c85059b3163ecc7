"""Heads that suit few photos: fitted on cached backbone features, written into the model's own classifier layer.

With a few photos per class, fine-tuning the backbone overfits and a linear classifier on its frozen
features is as good as it gets (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?").
How that linear layer is fitted matters, and is one choice (``--head``):

- ``logistic``: multinomial logistic regression (scikit-learn, L-BFGS) on standardized features, its L2
  strength ``C`` chosen by inner cross-validation on the training photos (grouped by photo, so the
  augmented views of one photo never sit on both sides). The inner folds' held-out logits are kept
  for temperature scaling (:mod:`hf_model.temperature`).
- ``ncm``: cosine nearest class mean (Mensink et al. 2013, "Distance-based image classification"; the
  cosine form of Chen et al. 2019, "A Closer Look at Few-shot Classification"): each class is the mean
  of its L2-normalized features.
- ``sgd``: the head trained by ``Trainer`` (AdamW, early stopping on validation), in
  :func:`hf_model.training.train_head`.

Every head is a :class:`LinearHead` (weight, bias) that :meth:`LinearHead.write_into` copies into the
model's ``nn.Linear`` classifier, so ``pipeline("image-classification")`` loads one plain model.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from hf_model.temperature import negative_log_likelihood

logger = logging.getLogger("hf_model")

# Inverse L2 strengths tried (scikit-learn's C, on standardized features; every view of a photo is a row)
DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1)  # extended 10x at a time while the largest is best, up to MAX_C
MAX_C = 100.0
INNER_FOLDS = 5
ABSENT_CLASS_LOGIT = -1e4  # a class with no training photo: probability 0, whatever the photo
MAX_ITER = 500
COSINE_SCALE = 16.0  # logits of the ncm head: this times the cosine to each class mean


@dataclass
class LinearHead:
    """A fitted linear classifier on pooled features: ``logits = features @ weight.T + bias``.

    ``weight`` is (classes, dim) and ``bias`` (classes,), as in ``nn.Linear``. ``held_out_logits``
    (photos, classes) are the inner cross-validation's predictions of each training photo's plain
    view by a head that did not see it (``None`` when the head was not cross-validated), with
    ``held_out_labels``; ``C`` is the chosen inverse L2 strength of a logistic head.
    """

    weight: np.ndarray
    bias: np.ndarray
    held_out_logits: np.ndarray | None = None
    held_out_labels: np.ndarray | None = None
    C: float | None = None

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, classes) logits of (n, dim) features."""
        return features @ self.weight.T + self.bias

    def write_into(self, classifier: nn.Linear) -> None:
        """Copy the head into a model's classifier layer (same shape), keeping its dtype and device.

        Raises ``ValueError`` when the shapes differ (another backbone's features, or other classes).
        """
        if tuple(classifier.weight.shape) != self.weight.shape:
            raise ValueError(f"the head is {self.weight.shape} (classes, features), the model's classifier layer "
                             f"{tuple(classifier.weight.shape)}: fitted on another backbone's features or classes")
        with torch.no_grad():
            classifier.weight.copy_(torch.from_numpy(self.weight))
            if classifier.bias is not None:
                classifier.bias.copy_(torch.from_numpy(self.bias))


def fit_head(name: str, features: np.ndarray, labels: np.ndarray, n_classes: int, *, groups: np.ndarray | None = None,
             class_weight: str | None = None, seed: int = 0, C: float | None = None) -> LinearHead:
    """Fit the ``logistic`` or ``ncm`` head on (photos, views, dim) features and (photos,) labels.

    With ``C`` given (a refit repeating an earlier choice) the logistic head is fitted once, with no inner
    cross-validation and so no held-out logits; the ``ncm`` head has nothing to choose and ignores it.
    Raises ``ValueError`` for another name (``sgd`` trains through ``Trainer``, not here).
    """
    labels = np.asarray(labels)
    if name == "logistic":
        if C is not None:
            return _fit_logistic_once(features, labels, n_classes, C, class_weight)
        return fit_logistic(features, labels, n_classes, groups=groups, class_weight=class_weight, seed=seed)
    if name == "ncm":
        head = fit_ncm(features, labels, n_classes)
        folds = inner_folds(labels, groups, INNER_FOLDS, seed) if C is None else []
        scored = held_out_photos(folds, labels)
        if len(scored):  # held-out logits for the temperature, as the logistic head has
            logits = out_of_fold_logits(lambda f, y: fit_ncm(f, y, n_classes), features, labels, n_classes, folds)
            head.held_out_logits, head.held_out_labels = logits[scored], labels[scored]
        return head
    raise ValueError(f"no closed-form fit for head {name!r}; choose from 'logistic', 'ncm'")


def fit_logistic(features: np.ndarray, labels: np.ndarray, n_classes: int, *, groups: np.ndarray | None = None,
                 Cs: tuple[float, ...] = DEFAULT_CS, n_folds: int = INNER_FOLDS, class_weight: str | None = None,
                 seed: int = 0) -> LinearHead:
    """Multinomial logistic regression on every view of every photo, ``C`` chosen by inner cross-validation.

    ``features`` is (photos, views, dim) with the plain view first; ``groups`` (photos,) keeps
    repeated photos (oversampling) in one inner fold. Each ``C`` is scored by the log-loss of the
    held-out photos' plain view (a proper score, smoother than accuracy on a few photos); while the
    largest ``C`` tried scores best, a 10x larger one is tried too (up to :data:`MAX_C`: many classes
    with a few photos each want little regularization). The chosen one is refitted on all photos. With
    one photo per class there is nothing to hold out, and the middle ``C`` is used.
    """
    labels = np.asarray(labels)
    folds = inner_folds(labels, groups, n_folds, seed)
    scored = held_out_photos(folds, labels)
    if not len(scored):
        logger.info("logistic head: too few photos per class for inner cross-validation; C=%g", Cs[len(Cs) // 2])
        return _fit_logistic_once(features, labels, n_classes, Cs[len(Cs) // 2], class_weight)
    started = time.perf_counter()
    held_out: dict[float, np.ndarray] = {}
    losses: dict[float, float] = {}
    Cs = list(Cs)
    while Cs:
        C = Cs.pop(0)
        held_out[C] = out_of_fold_logits(partial(_fit_logistic_once, n_classes=n_classes, C=C,
                                                 class_weight=class_weight), features, labels, n_classes, folds)
        losses[C] = negative_log_likelihood(held_out[C][scored], labels[scored])
        if not Cs and min(losses, key=losses.get) == C and C < MAX_C:  # still improving at the top: try 10x weaker L2
            Cs.append(C * 10)
    best = min(losses, key=losses.get)
    if best == max(losses) and best >= MAX_C:
        logger.warning("logistic head: the chosen C=%g is the weakest L2 tried: the features separate the training "
                       "photos easily, and held-out photos still prefer less regularization", best)
    logger.info("logistic head: inner %d-fold log-loss by C: %s; chosen C=%g (%.0f s)", len(folds),
                ", ".join(f"{C:g}: {loss:.3f}" for C, loss in losses.items()), best, time.perf_counter() - started)
    head = _fit_logistic_once(features, labels, n_classes, best, class_weight)
    head.held_out_logits, head.held_out_labels = held_out[best][scored], labels[scored]
    return head


def inner_folds(labels: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified grouped folds of the photos: ``(train, held_out)`` index pairs; ``[]`` with one photo per class.

    The fold count is capped by the largest class, so 3 photos per class give 3 folds, each holding out one.
    """
    counts = np.bincount(labels)
    k = min(n_folds, int(counts.max()))
    if k < 2:
        return []
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    with warnings.catch_warnings():  # "the least populated class has only 1 member": it is held out once
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels, groups))


def held_out_photos(folds: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> np.ndarray:
    """The held-out photos whose class has a photo in their fold's training part: real predictions to score.

    A class's only photo, held out, leaves nothing of its class to learn from: its logits say nothing about
    how sure the head is, and would drive ``C`` and the temperature to extremes.
    """
    kept = [held[np.isin(labels[held], labels[train])] for train, held in folds]
    return np.sort(np.concatenate(kept)) if kept else np.array([], dtype=int)


def out_of_fold_logits(fit: Callable[[np.ndarray, np.ndarray], LinearHead], features: np.ndarray,
                       labels: np.ndarray, n_classes: int, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(photos, classes) logits of each photo's plain view by a head ``fit(features, labels)`` on the other folds.

    Photos in no held-out fold keep logits of 0. Used to choose ``C``, to fit the temperature, and by
    ``hf-model label-issues`` (out-of-fold probabilities for cleanlab).
    """
    labels = np.asarray(labels)
    logits = np.zeros((len(labels), n_classes), dtype=np.float32)
    for train, held in folds:
        logits[held] = fit(features[train], labels[train]).logits(features[held, 0])
    return logits


def fit_ncm(features: np.ndarray, labels: np.ndarray, n_classes: int) -> LinearHead:
    """Cosine nearest class mean as a linear layer: row ``c`` is the unit mean direction of class ``c``.

    ``argmax(features @ weight.T)`` is exactly the nearest class mean by cosine (the photo's own norm
    scales every class alike). The rows are divided by the features' mean norm, so that logits are
    :data:`COSINE_SCALE` times the cosines on a typical photo (cosine classifiers' usual scale; raw cosines
    in [-1, 1] would give near-uniform probabilities); temperature scaling then sets how sharp they are.
    """
    flat = features.reshape(-1, features.shape[-1])
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    row_labels = np.repeat(np.asarray(labels), features.shape[1])
    weight = np.zeros((n_classes, flat.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, ABSENT_CLASS_LOGIT, dtype=np.float32)
    for c in np.unique(row_labels):
        mean = unit[row_labels == c].mean(axis=0)
        weight[c] = mean / max(np.linalg.norm(mean), 1e-12)
        bias[c] = 0.0
    return LinearHead(weight * COSINE_SCALE / float(np.linalg.norm(flat, axis=1).mean()), bias)


def _fit_logistic_once(features: np.ndarray, labels: np.ndarray, n_classes: int, C: float,
                       class_weight: str | None = None) -> LinearHead:
    """One L-BFGS fit on every view (rows), standardization folded into the weights; absent classes never win."""
    n, views, dim = features.shape
    weight = np.zeros((n_classes, dim), dtype=np.float32)
    bias = np.full(n_classes, ABSENT_CLASS_LOGIT, dtype=np.float32)
    if len(np.unique(labels)) == 1:  # one class to learn from (scikit-learn needs two): it always wins
        bias[labels[0]] = 0.0
        return LinearHead(weight, bias, C=C)
    rows, row_labels = features.reshape(n * views, dim), np.repeat(labels, views)
    scaler = StandardScaler().fit(rows)
    model = LogisticRegression(C=C, max_iter=MAX_ITER, class_weight=class_weight)
    with warnings.catch_warnings():  # a strong C on separable photos stops at max_iter: the fit is still good
        warnings.simplefilter("ignore", ConvergenceWarning)
        # few photos of many classes (one per species) is what this head is for, not "a regression problem"
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        model.fit(scaler.transform(rows), row_labels)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight[model.classes_] = coef / scaler.scale_
    bias[model.classes_] = intercept - (coef / scaler.scale_) @ scaler.mean_
    return LinearHead(weight, bias, C=C)

