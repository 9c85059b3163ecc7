"""Does labeling the photos ``hf-model suggest-labels`` picks beat labeling photos at random? A simulation.

For each fold of ``train.py --cv_folds K`` (its test photos fixed), the fold's other labeled photos are the
pool whose labels are known but hidden. Start from a small random labeled subset (at least one photo per
class, seeded), fit the logistic head on it (:func:`hf_model.heads.fit_head`, ``C`` by inner
cross-validation, as ``train.py`` fits it), score the fold's test photos, then add ``--step`` photos from
the pool and refit, until the whole pool is labeled. Strategies:

- ``uncertain + diverse``: :func:`hf_model.suggest.select_for_labeling` on the head fitted so far (the
  function the command calls, with its defaults; near-duplicate groups by perceptual hash, as the command);
- ``uncertain only``: the same function with ``pool_factor=1``, the plain ``step`` most uncertain photos
  (the ablation: does the clustering matter?);
- ``random``: photos drawn at random.

Every strategy starts from the same subset; several seeds vary the subset and the random draws. Accuracy
and macro-F1 on the fold's test photos are averaged over folds x seeds; the table also gives the paired
difference to random (mean and standard error over the folds x seeds runs, which share folds, so the
error is a rough guide) and how many runs selection won.

    HF_HUB_OFFLINE=1 python benchmarks/label_selection.py --preset bedrooms --data_dir ../shared/data/bedrooms

Other flags (``--backbone``, ``--image_size``, ``--class_weights``, ...) pass to ``train.py``'s parser.
Writes ``label_selection.png`` and ``label_selection.json`` into ``--output_dir``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import Image as ImageFeature
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, f1_score
from threadpoolctl import threadpool_limits

from hf_model.atomic import atomic_write, write_json_atomic
from hf_model.config import parse_args
from hf_model.data import near_duplicate_groups, scan_images
from hf_model.features import photo_digests
from hf_model.head_cv import FoldArrays, HeadCrossValidation, labeled_photos, load_folds
from hf_model.heads import fit_head
from hf_model.metrics import softmax
from hf_model.suggest import DEFAULT_POOL_FACTOR, select_for_labeling

STRATEGIES = {"uncertain + diverse": DEFAULT_POOL_FACTOR, "uncertain only": 1, "random": None}  # -> pool_factor
METRICS = {"accuracy": "accuracy", "f1_macro": "macro-F1"}  # key -> name shown
COLOURS = {"uncertain + diverse": "tab:blue", "uncertain only": "tab:orange", "random": "tab:grey"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20, help="photos labeled at the start (random, every class)")
    parser.add_argument("--step", type=int, default=20, help="photos added per round")
    parser.add_argument("--seeds", type=int, default=3, help="starting subsets and random draws per fold")
    parser.add_argument("--output_dir", default="label_selection")
    cli, train_flags = parser.parse_known_args()
    started = time.time()
    cfg, args = parse_args([*train_flags, "--output_dir", tempfile.mkdtemp(prefix="label-selection-"),
                            "--disable_tqdm", "true"])
    folds = load_folds(cfg, args.seed, cli.folds)
    cv = HeadCrossValidation(cfg, args, folds)
    groups = photo_groups(folds)
    class_weight = "balanced" if cfg.class_weights == "auto" else None
    runs = []  # one per fold x seed: {strategy: {metric: [score at each count]}}
    with threadpool_limits(1):  # small L-BFGS fits: BLAS threads only fight each other (6x slower on 2 busy cores)
        for fold, data in enumerate(folds):
            runs += simulate_fold(cv.arrays(data), groups, cli, len(cv.label_names), class_weight, fold, started)
    pools = sorted({len(cv.arrays(data).fit_y) for data in folds})
    report(runs, pools, cli, train_flags, f"{cfg.backbone}, logistic head, {cli.folds}-fold CV x {cli.seeds} seeds on "
           f"{len(groups)} labeled photos", time.time() - started)


def report(runs: list[dict], pools: list[int], cli: argparse.Namespace, train_flags: list[str], setting: str,
           seconds: float) -> None:
    """Print the tables, write ``label_selection.json`` and ``label_selection.png`` into ``cli.output_dir``."""
    counts = label_counts(pools[0], cli.start, cli.step)
    summary = summarize(runs, counts)
    print(f"\n{setting}; start {cli.start}, +{cli.step} a round, up to the whole pool ({pools[0]}-{pools[-1]} photos, "
          f"shown as {counts[-1]}); wall time {seconds:.0f} s")
    for metric, shown in METRICS.items():
        print(f"\ntest {shown}\n" + table(summary, counts, metric) + "\n" + overall(summary, counts, metric))
    output_dir = Path(cli.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "label_selection.json", {
        "setting": setting, "train_flags": train_flags, "folds": cli.folds, "seeds": cli.seeds, "start": cli.start,
        "step": cli.step, "pool_factor": DEFAULT_POOL_FACTOR, "seconds": round(seconds), "counts": counts,
        "summary": summary, "runs": runs})
    plot(summary, counts, output_dir / "label_selection.png", f"{cli.folds}-fold CV x {cli.seeds} seeds")
    print(f"\nwrote {output_dir / 'label_selection.json'} and {output_dir / 'label_selection.png'}")


def simulate_fold(arrays: FoldArrays, groups: dict[str, int], cli: argparse.Namespace, n_classes: int,
                  class_weight: str | None, fold: int, started: float) -> list[dict]:
    """Every strategy from each seed's starting subset on one fold: ``[{strategy: {metric: [scores]}}]``."""
    pool_groups = np.asarray([groups[d] for d in arrays.fit_groups])
    runs = []
    for seed in range(cli.seeds):
        start = initial_subset(arrays.fit_y, cli.start, seed)
        runs.append({name: simulate(arrays, pool_groups, start, cli.step, pool_factor, seed, n_classes, class_weight)
                     for name, pool_factor in STRATEGIES.items()})
        print(f"fold {fold + 1}/{cli.folds} seed {seed}: accuracy at {cli.start + cli.step} labels "
              + ", ".join(f"{name} {run['accuracy'][1]:.3f}" for name, run in runs[-1].items())
              + f" ({time.time() - started:.0f} s)", flush=True)
    return runs


def photo_groups(folds: list) -> dict[str, int]:
    """Near-duplicate group (perceptual hash, as the command's) of every labeled photo, by its SHA-1."""
    photos = labeled_photos(folds[0])
    hashes, _ = scan_images(photos.cast_column("image", ImageFeature(decode=False))["image"])
    return dict(zip(photo_digests(photos), near_duplicate_groups(hashes).tolist()))


def initial_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` random photo indices (sorted), at least one of each class present."""
    rng = np.random.default_rng(seed)
    one_each = [rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), one_each))[:max(0, size - len(one_each))]
    return np.sort(np.r_[one_each, rest]).astype(int)


def label_counts(pool: int, start: int, step: int) -> list[int]:
    """Labeled photos after each round: start, start + step, ..., the whole pool."""
    return [*range(start, pool, step), pool]


def simulate(arrays: FoldArrays, groups: np.ndarray, start: np.ndarray, step: int, pool_factor: int | None,
             seed: int, n_classes: int, class_weight: str | None) -> dict[str, list[float]]:
    """Test scores after each round of one strategy on one fold: ``{metric: [score per round]}``.

    ``pool_factor`` ``None`` draws at random; otherwise :func:`select_for_labeling` chooses with it.
    """
    x, y = arrays.fit_x, arrays.fit_y
    fit_groups = np.asarray(arrays.fit_groups)
    labeled = np.zeros(len(y), dtype=bool)
    labeled[start] = True
    rng = np.random.default_rng(1000 + seed)
    scores: dict[str, list[float]] = {metric: [] for metric in METRICS}
    while True:
        head = fit_head("logistic", x[labeled], y[labeled], n_classes, groups=fit_groups[labeled],
                        class_weight=class_weight, seed=seed)
        predicted = head.logits(arrays.test_x).argmax(axis=1)
        scores["accuracy"].append(float(accuracy_score(arrays.test_y, predicted)))
        scores["f1_macro"].append(float(f1_score(arrays.test_y, predicted, average="macro", labels=range(n_classes),
                                                 zero_division=0)))
        unlabeled = np.flatnonzero(~labeled)
        if not len(unlabeled):
            return scores
        if pool_factor is None:
            labeled[rng.choice(unlabeled, min(step, len(unlabeled)), replace=False)] = True
            continue
        features = x[unlabeled, 0]
        chosen = select_for_labeling(features, softmax(head.logits(features)), step, pool_factor=pool_factor,
                                     groups=groups[unlabeled], seed=seed).indices
        if len(chosen) < min(step, len(unlabeled)):  # the rest are near-twins of each other: take them too
            chosen = np.r_[chosen, np.setdiff1d(np.arange(len(unlabeled)), chosen)[:step - len(chosen)]]
        labeled[unlabeled[chosen]] = True


def summarize(runs: list[dict], counts: list[int]) -> dict:
    """Per strategy and metric: mean and std over runs at each count; for the others, the paired difference
    to random (mean, standard error) and the runs won, tied and lost."""
    summary: dict = {}
    for name in STRATEGIES:
        summary[name] = {}
        for metric in METRICS:
            values = np.array([run[name][metric][:len(counts)] for run in runs])
            entry = {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}
            if name != "random":
                diff = values - np.array([run["random"][metric][:len(counts)] for run in runs])
                entry |= {"diff_mean": diff.mean(axis=0).tolist(),
                          "diff_se": (diff.std(axis=0, ddof=1) / np.sqrt(len(runs))).tolist(),
                          "won": (diff > 0).sum(axis=0).tolist(), "tied": (diff == 0).sum(axis=0).tolist(),
                          "lost": (diff < 0).sum(axis=0).tolist()}
            summary[name][metric] = entry
    return summary


def table(summary: dict, counts: list[int], metric: str) -> str:
    """A Markdown table: labeled photos, each strategy's mean ± std, the others' difference to random."""
    chosen = [name for name in STRATEGIES if name != "random"]
    header = ["labeled", *STRATEGIES, *(f"{name} − random (won/tied/lost)" for name in chosen)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for i, count in enumerate(counts):
        cells = [str(count)]
        cells += [f"{summary[n][metric]['mean'][i]:.3f} ± {summary[n][metric]['std'][i]:.3f}" for n in STRATEGIES]
        for name in chosen:
            entry = summary[name][metric]
            cells.append(f"{entry['diff_mean'][i]:+.3f} ± {entry['diff_se'][i]:.3f} "
                         f"({entry['won'][i]}/{entry['tied'][i]}/{entry['lost'][i]})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overall(summary: dict, counts: list[int], metric: str) -> str:
    """Each strategy's difference to random averaged over the rounds where they can differ (not the first or last):
    the area between the learning curves, per label count."""
    inner = slice(1, len(counts) - 1)
    return "; ".join(f"{name} − random, mean over {counts[1]}-{counts[-2]} labels: "
                     f"{np.mean(summary[name][metric]['diff_mean'][inner]):+.3f}"
                     for name in STRATEGIES if name != "random")


def plot(summary: dict, counts: list[int], path: Path, runs: str) -> None:
    """Accuracy and macro-F1 (mean ± std over runs) against labeled photos, one line per strategy."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, 2), METRICS):
        for k, name in enumerate(STRATEGIES):
            entry = summary[name][metric]
            shift = (k - 1) * 1.5  # side by side, so the error bars do not hide each other
            ax.errorbar(np.array(counts) + shift, entry["mean"], yerr=entry["std"], label=name, color=COLOURS[name],
                        marker="o", markersize=3, capsize=2, linewidth=1.2, elinewidth=0.8)
        ax.set_xlabel("labeled photos")
        ax.set_ylabel(f"test {METRICS[metric]}")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Which photos to label: chosen by suggest-labels vs. at random ({runs}; bars: std)", fontsize=10)
    with atomic_write(path, "wb") as out:
        fig.savefig(out, dpi=100, format="png")


if __name__ == "__main__":
    main()
