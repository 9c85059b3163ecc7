"""Does training without the photos cleanlab flags change cross-validated accuracy on all photos?

For each fold of ``train.py --cv_folds K`` (the same test photos): cleanlab (:mod:`hf_model.label_issues`)
flags issues among the fold's training photos only (train + validation, out-of-fold probabilities of an
inner cross-validation on them); the logistic head is fitted on (a) every training photo and (b) the
training photos less the flagged ones, each choosing its ``C`` by inner cross-validation as ``train.py``
does; both score ALL of the fold's test photos, flagged-looking or not. The labels are never changed, so
a gain cannot come from grading the model on cleaned test labels.

    HF_HUB_OFFLINE=1 python benchmarks/label_issues.py --preset bedrooms --data_dir ../shared/data/bedrooms \\
        --feature_views 8

``--feature_views`` names the feature cache (``~/.cache/hf_model/features``); ``--views`` fits on the first
few of them (default: all).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from datasets import concatenate_datasets
from sklearn.metrics import accuracy_score, f1_score

from hf_model.backbones import default_image_size
from hf_model.config import parse_args
from hf_model.data import load_data
from hf_model.features import photo_digests
from hf_model.heads import fit_head
from hf_model.label_issues import find_issues, out_of_fold_probabilities
from hf_model.training import cached_features, setup_model

VARIANTS = ("all training photos", "without flagged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bedrooms")
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--feature_views", type=int, default=8, help="views per photo in the feature cache")
    parser.add_argument("--views", type=int, default=None, help="views the heads are fitted on (default: all)")
    cli = parser.parse_args()
    started = time.time()
    cfg, args = parse_args(["--preset", cli.preset, "--data_dir", cli.data_dir, "--feature_views",
                            str(cli.feature_views), "--output_dir", tempfile.mkdtemp(prefix="label-issues-"),
                            "--disable_tqdm", "true"])
    folds = [load_data(cfg, args.seed, (i, cli.folds)) for i in range(cli.folds)]
    names = folds[0]["train"].features["label"].names
    everything = concatenate_datasets([folds[0][s] for s in ("train", "validation", "test")])
    setup = setup_model(cfg, names)
    views = cli.views or cfg.feature_views
    features = dict(zip(photo_digests(everything),
                        cached_features(cfg, args, setup, everything, cfg.feature_views)[:, :views]))
    class_weight = "balanced" if cfg.class_weights == "auto" else None

    scores: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    dropped = []
    for i, data in enumerate(folds):
        fit_on = concatenate_datasets([data["train"], data["validation"]])  # what the refit model learns from
        digests = np.asarray(photo_digests(fit_on))
        x, y = np.stack([features[d] for d in digests]), np.asarray(fit_on["label"])
        test_x = np.stack([features[d][0] for d in photo_digests(data["test"])])  # the plain view
        test_y = np.asarray(data["test"]["label"])
        head = fit_head("logistic", x, y, len(names), groups=digests, class_weight=class_weight, seed=args.seed)
        probs = out_of_fold_probabilities(x, y, len(names), groups=digests, seed=args.seed, C=head.C,
                                          class_weight=class_weight)
        flagged = find_issues(y, probs)
        keep = np.setdiff1d(np.arange(len(y)), flagged)
        clean = fit_head("logistic", x[keep], y[keep], len(names), groups=digests[keep], class_weight=class_weight,
                         seed=args.seed)
        for variant, fitted in zip(VARIANTS, (head, clean)):
            scores[variant].append(_scores(fitted.logits(test_x).argmax(axis=1), test_y, names))
        dropped.append(np.bincount(y[flagged], minlength=len(names)))
        print(f"fold {i + 1}/{cli.folds}: dropped {len(flagged)} of {len(y)} training photos "
              f"({_per_class(dropped[-1], np.bincount(y, minlength=len(names)), names)}); test accuracy "
              f"{scores[VARIANTS[0]][-1]['accuracy']:.3f} -> {scores[VARIANTS[1]][-1]['accuracy']:.3f} "
              f"on {len(test_y)} photos", flush=True)

    size = cfg.image_size or default_image_size(cfg.backbone)
    print(f"\n{cli.preset}: {cfg.backbone} at {size} px, logistic head on {views} views, "
          f"{cli.folds}-fold CV on {len(everything)} labeled photos; every fold scored on all its test photos")
    metrics = list(scores[VARIANTS[0]][0])
    print(f"{'':22s}" + "".join(f"{m:>18s}" for m in metrics))
    for variant, rows in scores.items():
        print(f"{variant:22s}" + "".join(f"{_mean_std([r[m] for r in rows]):>18s}" for m in metrics))
    gains = {m: [b[m] - a[m] for a, b in zip(*scores.values())] for m in metrics}
    print(f"{'paired difference':22s}" + "".join(f"{_mean_std(gains[m], signed=True):>18s}" for m in metrics))
    total = np.sum(dropped, axis=0)
    print(f"dropped per fold: {[int(d.sum()) for d in dropped]} (in all: "
          f"{', '.join(f'{n} {c}' for n, c in zip(names, total))}); wall time {time.time() - started:.0f} s")


def _scores(predicted: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    row = {"accuracy": accuracy_score(labels, predicted),
           "macro-F1": f1_score(labels, predicted, average="macro", labels=range(len(names)), zero_division=0)}
    if len(names) <= 5:  # a few classes: each one's F1 too (the bedroom goal names Modern's)
        per_class = f1_score(labels, predicted, average=None, labels=range(len(names)), zero_division=0)
        row |= {f"F1 {name}": float(f) for name, f in zip(names, per_class)}
    return row


def _mean_std(values: list[float], signed: bool = False) -> str:
    return f"{np.mean(values):{'+' if signed else ''}.3f} ± {np.std(values):.3f}"


def _per_class(flagged: np.ndarray, labeled: np.ndarray, names: list[str]) -> str:
    return ", ".join(f"{name} {f} of {n}" for name, f, n in zip(names, flagged, labeled))


if __name__ == "__main__":
    main()
