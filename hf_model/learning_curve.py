"""Would more labels help? Cross-validated accuracy against the number of labeled photos, extrapolated.

``hf-model study --learning_curve`` (the bedroom write-up's question): in each cross-validation fold
(its test photos fixed, as ``train.py --cv_folds k`` tests them) the head learns from a share of the
fold's other labeled photos, 10%, 20%, ... 100%, each share holding the smaller ones (one seeded
order per class) and at least one photo of every class. The error rate is fitted with a power law
in the number of labeled photos, ``error(n) = a * n**-b + c`` (Hestness et al. 2017, "Deep Learning
Scaling is Predictable, Empirically"; Cortes et al. 1994, "Learning Curves: Asymptotic Values and
Rate of Convergence"), and extrapolated to 2x and 4x the labels; refitting it on bootstrap resamples
of the folds gives the interval. Writes ``learning_curve.csv``, ``learning_curve.md``,
``learning_curve.json`` and ``learning_curve.png``.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from scipy.optimize import OptimizeWarning, curve_fit
from transformers import TrainingArguments

from hf_model.atomic import atomic_write, write_json_atomic
from hf_model.config import TrainConfig
from hf_model.head_cv import HeadCrossValidation, load_folds
from hf_model.reports import markdown_table, new_figure, save_figure

logger = logging.getLogger("hf_model")

CURVE_CSV, CURVE_MD, CURVE_JSON, CURVE_PNG = ("learning_curve.csv", "learning_curve.md", "learning_curve.json",
                                              "learning_curve.png")
EXTRAPOLATE = (2, 4)  # times the labeled photos the power law is asked about
BOOTSTRAP = 500  # resamples of the folds for the extrapolation's interval
INTERVAL = (5, 95)  # percentiles: a 90% interval


def run_learning_curve(cfg: TrainConfig, args: TrainingArguments, n_folds: int, fractions: Sequence[float],
                       output_dir: Path, repeats: int = 3) -> list[dict]:
    """Cross-validate the head of ``cfg`` on each share of the labeled photos; write and return one row per share.

    Each share below 100% is drawn ``repeats`` times (other seeds) and each fold's scores are averaged over
    the draws, so one lucky or unlucky subset does not bend the curve.

    Raises ``ValueError`` when a fraction is not in (0, 1], or ``cfg`` fine-tunes blocks (the curve fits the
    head on cached features).
    """
    fractions = sorted(set(fractions))
    if not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"--fractions are shares of the labeled photos, above 0 and at most 1: got {fractions}")
    folds = load_folds(cfg, args.seed, n_folds)
    cv = HeadCrossValidation(cfg, args, folds)
    rows = []
    for fraction in fractions:
        scores = {"test_accuracy": [], "test_f1_macro": []}  # (repeats, folds) each
        for repeat in range(repeats if fraction < 1 else 1):  # every repeat of 100% is the same photos
            subsets = [subsample(data, fraction, args.seed + repeat) for data in folds]
            per_fold = cv.score(cfg, subsets)
            for key, values in scores.items():
                values.append([m[key] for m in per_fold])
        accuracy, f1 = (np.mean(scores[key], axis=0) for key in ("test_accuracy", "test_f1_macro"))  # per fold
        rows.append({"fraction": fraction, "photos": float(np.mean([len(s["train"]) + len(s["validation"])
                                                                    for s in subsets])),
                     "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
                     "f1_macro_mean": float(f1.mean()), "f1_macro_std": float(f1.std()),
                     "fold_accuracies": accuracy.tolist()})
        logger.info("learning curve: %.0f%% of the labeled photos (%.0f per fold): accuracy %.3f ± %.3f",
                    100 * fraction, rows[-1]["photos"], rows[-1]["accuracy_mean"], rows[-1]["accuracy_std"])
    fit = fit_power_law(np.array([r["photos"] for r in rows]), np.array([r["fold_accuracies"] for r in rows]))
    write_outputs(output_dir, rows, fit, cfg, n_folds, repeats)
    print(answer(rows, fit) + f" (table in {output_dir / CURVE_MD}, plot in {output_dir / CURVE_PNG})", flush=True)
    return rows


def subsample(data: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """``data`` with ``fraction`` of each class's train and validation photos (at least one), test untouched.

    Nested: a larger fraction keeps every photo a smaller one kept (one seeded order per split and class).
    """
    out = DatasetDict(dict(data))
    for s, split in enumerate(("train", "validation")):
        labels = np.asarray(data[split]["label"], dtype=int)
        keep = []
        for c in np.unique(labels):
            members = np.random.default_rng([seed, s, c]).permutation(np.flatnonzero(labels == c))
            keep += members[: max(1, round(fraction * len(members)))].tolist()
        out[split] = data[split].select(sorted(keep))
    return out


@dataclass
class PowerLaw:
    """``error(n) = a * n**-b + c`` fitted to the curve; ``extrapolated`` maps a multiple of the labeled photos
    (2, 4) to (predicted accuracy, low, high) of a 90% bootstrap interval; ``None`` when no fit converged."""

    a: float
    b: float
    c: float
    photos: float  # the labeled photos of the full curve (100%), what the multiples multiply
    extrapolated: dict[int, tuple[float, float, float]]

    def accuracy(self, photos: np.ndarray | float) -> np.ndarray | float:
        return 1 - _power_law(np.asarray(photos, dtype=float), self.a, self.b, self.c)


def _power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * n ** -b + c


def fit_power_law(photos: np.ndarray, fold_accuracies: np.ndarray, seed: int = 0) -> PowerLaw | None:
    """Fit ``error(n) = a n^-b + c`` to the mean error per share (``photos``: (shares,), ``fold_accuracies``:
    (shares, folds)); the interval refits it on the folds resampled with replacement. ``None`` with fewer than
    3 shares or when scipy's ``curve_fit`` does not converge on the means."""
    if len(photos) < 3:
        return None
    params = _fit(photos, 1 - fold_accuracies.mean(axis=1))
    if params is None:
        return None
    rng = np.random.default_rng(seed)
    n_folds = fold_accuracies.shape[1]
    resampled = [_fit(photos, 1 - fold_accuracies[:, rng.integers(0, n_folds, n_folds)].mean(axis=1))
                 for _ in range(BOOTSTRAP)]
    resampled = np.array([p for p in resampled if p is not None])
    full = float(photos.max())
    extrapolated = {}
    for times in EXTRAPOLATE:
        spread = 1 - _power_law(times * full, *resampled.T) if len(resampled) else np.array([np.nan])
        low, high = np.percentile(spread, INTERVAL)
        extrapolated[times] = (float(1 - _power_law(times * full, *params)), float(low), float(high))
    return PowerLaw(*map(float, params), photos=full, extrapolated=extrapolated)


def _fit(photos: np.ndarray, errors: np.ndarray) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            params, _ = curve_fit(_power_law, photos, errors, p0=(1.0, 0.5, errors.min() / 2),
                                  bounds=([0, 0, 0], [np.inf, 2, 1]), maxfev=20000)
        except (RuntimeError, ValueError):
            return None
    return params


def answer(rows: list[dict], fit: PowerLaw | None) -> str:
    """The question's answer in one sentence: the accuracy now, and what the power law expects with more labels."""
    last = rows[-1]
    now = (f"With {last['photos']:.0f} labeled photos, accuracy is {last['accuracy_mean']:.3f} ± "
           f"{last['accuracy_std']:.3f}")
    if len(rows) > 1:
        half = min(rows, key=lambda r: abs(r["photos"] - last["photos"] / 2))
        now += f" ({half['accuracy_mean']:.3f} with {half['photos']:.0f})"
    if fit is None:
        return now + "; no power law fits these points, so there is no extrapolation."
    now += f". A power law fitted to the curve ({fit.accuracy(fit.photos):.3f} at {fit.photos:.0f}) expects "
    more = "; ".join(f"{times}x the labels ({times * fit.photos:.0f}): {acc:.3f} (90% interval {low:.3f}-{high:.3f})"
                     for times, (acc, low, high) in fit.extrapolated.items())
    return f"{now}{more}."


def write_outputs(output_dir: Path, rows: list[dict], fit: PowerLaw | None, cfg: TrainConfig, n_folds: int,
                  repeats: int) -> None:
    """``learning_curve.csv`` / ``.json`` / ``.md`` / ``.png`` in ``output_dir`` (each written atomically)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = ["fraction", "photos", "accuracy_mean", "accuracy_std", "f1_macro_mean", "f1_macro_std"]
    with atomic_write(output_dir / CURVE_CSV, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(output_dir / CURVE_JSON, {
        "backbone": cfg.backbone, "head": cfg.head, "folds": n_folds, "repeats": repeats, "rows": rows,
        "power_law": None if fit is None else {"a": fit.a, "b": fit.b, "c": fit.c, "photos": fit.photos,
                                               "extrapolated": {str(k): v for k, v in fit.extrapolated.items()}}})
    table = markdown_table(["share", "labeled photos", "accuracy", "macro-F1"], [
        [f"{r['fraction']:.0%}", f"{r['photos']:.0f}", f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}",
         f"{r['f1_macro_mean']:.3f} ± {r['f1_macro_std']:.3f}"] for r in rows])
    with atomic_write(output_dir / CURVE_MD) as f:
        f.write(f"# Would more labels help?\n\n{cfg.backbone}, {cfg.head} head, {n_folds}-fold cross-validation "
                f"(the same test photos at every share; each share below 100% drawn {repeats} times, each fold's "
                f"scores averaged over the draws; mean ± std over folds).\n\n{table}\n\n{answer(rows, fit)}\n")
    plot_learning_curve(output_dir / CURVE_PNG, rows, fit)


def plot_learning_curve(path: Path, rows: list[dict], fit: PowerLaw | None) -> Path:
    """Accuracy (mean ± std over folds) against labeled photos, the power law and its extrapolations."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    photos = [r["photos"] for r in rows]
    ax.errorbar(photos, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_std"] for r in rows], fmt="o",
                capsize=3, label="cross-validated accuracy (mean ± std over folds)")
    if fit is not None:
        grid = np.linspace(min(photos), max(EXTRAPOLATE) * fit.photos, 200)
        ax.plot(grid, fit.accuracy(grid), "--", color="gray",
                label=f"power law: error = {fit.a:.2f} n^-{fit.b:.2f} + {fit.c:.3f}")
        for times, (acc, low, high) in fit.extrapolated.items():
            ax.errorbar([times * fit.photos], [acc], yerr=[[acc - low], [high - acc]], fmt="s", color="C3", capsize=3)
            ax.annotate(f"{times}x: {acc:.3f}", (times * fit.photos, acc), xytext=(5, -12), textcoords="offset points",
                        fontsize=8)
        ax.plot([], [], "s", color="C3", label="extrapolated (90% bootstrap interval)")
        ax.set_xlim(0, (max(EXTRAPOLATE) + 0.4) * fit.photos)  # room for the last label
    ax.set_xlabel("labeled photos the model learns from (per fold)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Would more labels help?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
