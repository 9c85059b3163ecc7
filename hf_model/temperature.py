"""Temperature scaling: fit on held-out logits, expected calibration error, reliability diagram, folding.

A network's softmax percentages are often too sure of themselves. Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks") divides every logit by one number ``T > 0``, fitted on
held-out predictions (validation or out-of-fold) by minimising their negative log-likelihood. It never
changes which class wins, only how sure the model says it is. :func:`fold_temperature` then divides the
classifier layer's weight and bias by ``T``, so the saved model itself gives calibrated percentages in
``pipeline("image-classification")``, batch prediction and the Space, with no extra file.

How well percentages match reality is measured by the top-label expected calibration error over 15
equal-width confidence bins (Naeini et al. 2015, Guo et al. 2017) and drawn as a reliability diagram.

Not to be confused with :mod:`hf_model.calibration`: that one fits the demo's out-of-domain and
"unsure" thresholds (``calibration.json``); this one fits the model's own probabilities.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from hf_model.atomic import atomic_write

ECE_BINS = 15  # Guo et al. 2017
TEMPERATURE_RANGE = (0.05, 20.0)  # the bounded search; separable data pushes T towards the lower end
PROBABILITY_SUM_TOLERANCE = 1e-3  # rows of probabilities must sum to 1 within this (float16 inputs too)
RELIABILITY_PNG = "reliability_diagram.png"
DPI = 110  # as hf_model.reports


@dataclasses.dataclass(frozen=True)
class TemperatureReport:
    """What temperature scaling did to ``n`` held-out predictions: ECE over ``n_bins`` bins, NLL in nats per photo."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    n_bins: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ReliabilityBins(NamedTuple):
    """Per confidence bin (arrays of length ``n_bins``): mean top-label confidence, accuracy, photo count.

    ``confidence`` and ``accuracy`` are NaN where a bin holds no photo; ``edges`` has ``n_bins + 1`` entries.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray


# ---------------------------------------------------------------- fitting

def calibrate_logits(logits: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> TemperatureReport:
    """Fit the temperature on held-out ``logits`` (n, k) with true ``labels`` (n,) and measure ECE and NLL
    before and after. The probabilities for :func:`plot_reliability_diagram` are ``scipy.special.softmax``
    of ``logits`` and of ``logits / report.temperature``. Raises ValueError as :func:`fit_temperature`.
    """
    logits, labels = _check_logits(logits, labels)
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits, axis=1), softmax(logits / temperature, axis=1)
    return TemperatureReport(
        temperature=temperature,
        ece_before=expected_calibration_error(before, labels, n_bins),
        ece_after=expected_calibration_error(after, labels, n_bins),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        n=len(labels),
        n_bins=n_bins,
    )


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    ``logits`` (n, k) are held-out predictions, ``labels`` (n,) integers in ``[0, k)``. The NLL is convex
    in ``1 / T``, so a bounded Brent search over ``log T`` in :data:`TEMPERATURE_RANGE` finds the one
    minimum deterministically; where the NLL keeps falling (perfectly separated predictions) it returns
    a low temperature in the range, where the NLL has flattened to zero in float64. ``T > 1`` means the
    model was overconfident. Raises ValueError on mismatched shapes, no predictions, fewer than two
    classes, non-finite logits or labels out of range.
    """
    logits, labels = _check_logits(logits, labels)
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def negative_log_likelihood(logits: np.ndarray, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood in nats of ``softmax(logits / temperature)``: the cross-entropy loss.

    ``logits`` (n, k), ``labels`` (n,) class indices; computed in float64 with a stable log-softmax.
    """
    labels = np.asarray(labels)
    log_probs = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


# ---------------------------------------------------------------- measuring

def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (Naeini et al. 2015; Guo et al. 2017), in ``[0, 1]``.

    ``sum over bins of (count / n) * |accuracy - mean confidence|``, over ``n_bins`` equal-width bins of
    the top-label confidence (see :func:`reliability_bins`). ``probs`` (n, k), rows summing to 1;
    ``labels`` (n,). Raises ValueError as :func:`reliability_bins`.
    """
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins.count > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.count[filled] / bins.count.sum() * gaps))


def bin_totals(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin: photos, summed confidence and right answers, as lists (JSON-ready).

    Totals of several test sets (the folds of a cross-validation) add up, so
    :func:`expected_calibration_error_of_totals` gives the ECE over all their photos at once, which is
    far less noisy than the mean of the folds' ECEs on a few dozen photos each.
    """
    bins = reliability_bins(probs, labels, n_bins)
    return {"count": bins.count.astype(float).tolist(),
            "confidence": np.nan_to_num(bins.confidence * bins.count).tolist(),
            "correct": np.nan_to_num(bins.accuracy * bins.count).tolist()}


def expected_calibration_error_of_totals(totals: list[dict[str, list[float]]]) -> float:
    """The ECE over all the photos behind several :func:`bin_totals` (same bin count), e.g. every fold's test photos."""
    count, confidence, correct = (np.sum([t[key] for t in totals], axis=0) for key in ("count", "confidence",
                                                                                         "correct"))
    filled = count > 0
    return float(np.sum(np.abs(correct[filled] - confidence[filled])) / count.sum())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Group predictions by top-label confidence into ``n_bins`` equal-width bins ``(a, b]`` over [0, 1].

    Bins are closed on the right as in Guo et al.'s code, so confidence 1.0 falls in the last bin.
    ``probs`` (n, k) are class probabilities (rows summing to 1), ``labels`` (n,) the true classes.
    Raises ValueError on mismatched shapes, no predictions, values that are not probabilities,
    labels out of range or ``n_bins < 1``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number >= 1, got {n_bins!r}")
    probs, labels = _check_probs(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(confidence, edges[1:-1], right=True)  # 0 .. n_bins - 1, right-closed
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):  # empty bins: 0 / 0 -> NaN, as documented
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(mean_confidence, accuracy, count, edges)


# ---------------------------------------------------------------- the diagram

def plot_reliability_diagram(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: str | Path,
                             n_bins: int = ECE_BINS, title: str = "Reliability on held-out photos",
                             temperature: float | None = None) -> Path:
    """Write one PNG: reliability diagrams before and after temperature scaling, side by side; return its path.

    ``before`` and ``after`` are the same photos' probabilities (n, k), ``labels`` (n,) their true
    classes; ``temperature``, if given, is named in the second panel. The file is replaced whole.
    """
    fig = draw_reliability_diagram(before, after, labels, n_bins, title, temperature)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:  # a kill mid-save leaves the previous plot, not half a PNG
        fig.savefig(f, dpi=DPI, format="png")
    fig.clear()
    return path


def draw_reliability_diagram(before: np.ndarray, after: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS,
                             title: str = "Reliability on held-out photos",
                             temperature: float | None = None) -> Figure:
    """The figure behind :func:`plot_reliability_diagram`: per panel, accuracy per confidence bin against
    the diagonal with the gap shaded, and below it the photos per bin."""
    fig = Figure(figsize=(10, 5.6), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever the process-wide backend is
    fig.suptitle(title)
    axes = fig.subplots(2, 2, sharex=True, height_ratios=(3, 1))
    after_name = "After temperature scaling" + (f" (T = {temperature:.2f})" if temperature is not None else "")
    for column, (probs, name) in enumerate(((before, "Before temperature scaling"), (after, after_name))):
        bins = reliability_bins(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        _draw_reliability(axes[0, column], bins, f"{name}\nECE {ece:.3f} ({n_bins} bins)")
        _draw_counts(axes[1, column], bins)
    return fig


def _draw_reliability(ax, bins: ReliabilityBins, title: str) -> None:
    centres, width = (bins.edges[:-1] + bins.edges[1:]) / 2, np.diff(bins.edges)
    filled = bins.count > 0
    ax.bar(centres[filled], bins.accuracy[filled], width[filled], color="tab:blue", edgecolor="black",
           linewidth=0.6, label="accuracy")
    gap = bins.confidence[filled] - bins.accuracy[filled]  # > 0: overconfident in that bin
    ax.bar(centres[filled], gap, width[filled], bottom=bins.accuracy[filled], color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _draw_counts(ax, bins: ReliabilityBins) -> None:
    ax.bar(bins.edges[:-1], bins.count, np.diff(bins.edges), align="edge", color="grey", edgecolor="black",
           linewidth=0.6)
    ax.set(xlim=(0, 1), xlabel="confidence (top class)", ylabel="photos")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- into the model

def fold_temperature(classifier: torch.nn.Linear, temperature: float) -> None:
    """Divide ``classifier``'s weight and bias (if any) by ``temperature`` in place.

    Afterwards ``softmax(classifier(x)) == softmax(original(x) / temperature)``: the saved model gives
    calibrated probabilities everywhere it is loaded, argmax unchanged. Raises ValueError unless
    ``temperature`` is finite and > 0, TypeError unless ``classifier`` is a ``torch.nn.Linear``.
    """
    if not isinstance(classifier, torch.nn.Linear):
        raise TypeError(f"fold_temperature needs the model's nn.Linear classifier, got {type(classifier).__name__}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    with torch.no_grad():
        classifier.weight.div_(temperature)
        if classifier.bias is not None:
            classifier.bias.div_(temperature)


# ---------------------------------------------------------------- checking inputs

def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = _check_labels(logits, labels, "logits")
    if not np.isfinite(logits).all():
        raise ValueError(f"logits hold {int((~np.isfinite(logits)).sum())} NaN or infinite values: "
                         "check the model's outputs before fitting a temperature")
    return logits, labels


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = _check_labels(probs, labels, "probs")
    sums = probs.sum(axis=1)
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 \
            or not np.allclose(sums, 1.0, rtol=0, atol=PROBABILITY_SUM_TOLERANCE):
        raise ValueError("probs must be class probabilities (each in [0, 1], each row summing to 1), "
                         f"got rows summing to {sums.min():.4g}..{sums.max():.4g}: pass softmax(logits), not logits")
    return probs, labels


def _check_labels(scores: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Shapes (n, k) and (n,), n >= 1, k >= 2, integer labels in [0, k); returns the labels as an array."""
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.ndim != 1:
        raise ValueError(f"{name} must be (photos, classes) and labels (photos,), got shapes {scores.shape} "
                         f"and {labels.shape}")
    if len(scores) != len(labels):
        raise ValueError(f"{name} has {len(scores)} rows but labels has {len(labels)}: one label per prediction")
    if len(labels) == 0:
        raise ValueError(f"no predictions: {name} and labels are empty (need held-out predictions)")
    if scores.shape[1] < 2:
        raise ValueError(f"{name} has {scores.shape[1]} class column(s): need at least two classes")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        bad = labels[(labels < 0) | (labels >= scores.shape[1])]
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}) for {scores.shape[1]} classes, "
                         f"got {bad[:5].tolist()}")
    return labels
