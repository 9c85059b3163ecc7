"""Heads, feature views and test-time flip on cached features, scored by cross-validation.

Each fold's test photos are the ones ``train.py --cv_folds K`` tests; each head is fitted on the
rest of the fold's labeled photos (train + validation: the refit model ``--refit`` ships), except
``sgd``, which needs the validation photos for early stopping (``Trainer``, as ``--head sgd`` trains).
Temperature scaling is fitted on the head's inner cross-validation logits, never on the test photos.

    HF_HUB_OFFLINE=1 python benchmarks/heads.py --preset bedrooms --data_dir ../shared/data/bedrooms
    HF_HUB_OFFLINE=1 python benchmarks/heads.py --preset birds --data_dir ../shared/data/birds --folds 4 \\
        --heads logistic ncm --views 8

Features of ``max(--views)`` views per photo are computed once into the feature cache training uses
(fewer views are the first ones of those); ``--tta`` adds the mirror image's features. Other flags go to
``train.py``'s parser (e.g. ``--zoom 0.9 --rotation 5`` for weaker augmented views).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hf_model.adapters import adapter_for
from hf_model.config import parse_args
from hf_model.head_cv import HeadCrossValidation, load_folds
from hf_model.heads import fit_head
from hf_model.metrics import ClassificationMetrics, softmax
from hf_model.temperature import expected_calibration_error, fit_temperature
from hf_model.training import cross_entropy_loss, setup_model, train_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bedrooms")
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--backbone", default=None, help="default: the preset's")
    parser.add_argument("--image_size", type=int, default=None, help="default: the backbone's")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--heads", nargs="+", default=["logistic", "ncm", "sgd"])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8], help="feature views per photo to compare")
    parser.add_argument("--cached_views", type=int, default=None,
                        help="compute (or read) this many views per photo, more than --views uses (default: max)")
    parser.add_argument("--tta", action="store_true", help="also score the plain + mirrored test view")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    cli, train_flags = parser.parse_known_args()  # any other train.py flag, e.g. --zoom 0.9 --rotation 5
    argv = [*train_flags, "--preset", cli.preset, "--data_dir", cli.data_dir,
            "--output_dir", tempfile.mkdtemp(prefix="heads-"),
            "--feature_views", str(cli.cached_views or max(cli.views)),
            "--disable_tqdm", "true", "--cv_folds", str(cli.folds)]
    argv += ["--backbone", cli.backbone] if cli.backbone else []
    argv += ["--image_size", str(cli.image_size)] if cli.image_size else []
    cfg, args = parse_args(argv)
    started = time.time()
    folds = load_folds(cfg, args.seed, cli.folds)
    cv = HeadCrossValidation(cfg, args, folds)  # features of --cached_views views per photo, computed once
    names = cv.label_names
    print(f"features of {sum(len(f['test']) for f in folds)} photos: {time.time() - started:.0f} s; inference "
          f"{cv.milliseconds_per_photo():.1f} ms a photo (batch 1, decode excluded)", flush=True)

    results: dict[str, list[dict]] = {}
    pooled: dict[str, list[tuple]] = {}  # every fold's test predictions: the ECE over all photos, not per fold
    for i, data in enumerate(folds):
        fold = cv.arrays(data)
        test_flip = cv.mirrored_features(data["test"]) if cli.tta else None
        train_x, labels, test_x, test_labels = fold.fit_x, fold.fit_y, fold.test_x, fold.test_y
        for head_name in cli.heads:
            for n_views in cli.views:
                t = time.time()
                if head_name == "sgd":
                    head = _sgd_head(replace(cfg, head="sgd", feature_views=n_views), args, data)
                else:
                    head = fit_head(head_name, train_x[:, :n_views], labels, len(names), seed=args.seed)
                seconds = time.time() - t
                temperature = (fit_temperature(head.held_out_logits, head.held_out_labels)
                               if head.held_out_logits is not None else 1.0)
                for tta in (False, True) if cli.tta else (False,):
                    logits = head.logits(test_x) if not tta else (head.logits(test_x) + head.logits(test_flip)) / 2
                    key = f"{head_name} views={n_views}" + (" +flip" if tta else "")
                    results.setdefault(key, []).append(
                        _scores(logits, test_labels, names, temperature) | {"seconds": seconds})
                    pooled.setdefault(key, []).append((logits, logits / temperature, test_labels))
        print(f"fold {i + 1}/{cli.folds} done", flush=True)
    summary = {key: {metric: {"mean": float(np.mean([f[metric] for f in rows])),
                              "std": float(np.std([f[metric] for f in rows]))} for metric in rows[0]}
               for key, rows in results.items()}
    print(f"\n{cli.preset}, {cfg.backbone} at {cfg.image_size or 'its own size'} px, {cli.folds}-fold CV "
          f"({sum(len(f['test']) for f in folds)} photos):")
    for key, row in summary.items():
        logits, scaled, labels = (np.concatenate(part) for part in zip(*pooled[key]))
        row["ece_all_photos"] = {"mean": expected_calibration_error(softmax(logits), labels), "std": 0.0}
        row["ece_scaled_all_photos"] = {"mean": expected_calibration_error(softmax(scaled), labels), "std": 0.0}
        print(f"{key:28s} " + "  ".join(f"{m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in row.items()))
    if cli.output:
        Path(cli.output).write_text(json.dumps({"argv": argv, "summary": summary}, indent=2))


def _sgd_head(cfg, args, data):
    """The ``Trainer`` head (early stopping on the fold's validation photos), as a LinearHead.

    A fresh model each fold: a head that starts where the last fold's ended has seen this fold's test photos.
    """
    from hf_model.heads import LinearHead

    setup = setup_model(cfg, data["train"].features["label"].names)
    train_head(cfg, args, setup, data["train"], data["validation"], cross_entropy_loss(None))
    layer = adapter_for(setup.model).classifier(setup.model)
    return LinearHead(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())


def _scores(logits: np.ndarray, labels: np.ndarray, names: list[str], temperature: float) -> dict:
    probs = softmax(logits)
    metrics = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=probs, references=labels, label_names=names, detailed=len(names) <= 10)
    row = {k: v for k, v in metrics.items() if k in ("accuracy", "f1_macro", "top5_accuracy")}
    if len(names) <= 10:
        row |= {f"f1_{n}": metrics["per_class"][n]["f1"] for n in names}
    row["ece"] = expected_calibration_error(probs, labels)
    row["ece_scaled"] = expected_calibration_error(softmax(logits / temperature), labels)
    row["temperature"] = temperature
    return row


if __name__ == "__main__":
    main()
