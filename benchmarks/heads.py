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
from datasets import concatenate_datasets

from hf_model.adapters import adapter_for
from hf_model.backbones import default_cache_dir
from hf_model.config import parse_args
from hf_model.data import load_data
from hf_model.features import extract_features, photo_digests
from hf_model.heads import fit_head
from hf_model.metrics import ClassificationMetrics, softmax
from hf_model.temperature import expected_calibration_error, fit_temperature
from hf_model.training import cross_entropy_loss, setup_model, train_head
from hf_model.transforms import test_time_views


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
    folds = [load_data(cfg, args.seed, (i, cli.folds)) for i in range(cli.folds)]
    names = folds[0]["train"].features["label"].names
    setup = setup_model(cfg, names)
    cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / setup.feature_key
    everything = concatenate_datasets([folds[0][s] for s in ("train", "validation", "test")])
    started = time.time()
    n_cached = cli.cached_views or max(cli.views)
    views = [setup.eval_transform] + [setup.train_transform] * (n_cached - 1)
    features = dict(zip(photo_digests(everything),
                        extract_features(setup.model, everything, views, cache / f"views{n_cached}")))
    mirror = test_time_views(True)[1]
    mirrored = dict(zip(photo_digests(everything), extract_features(
        setup.model, everything, [lambda image: setup.eval_transform(mirror(image))], cache / "eval-mirrored")[:, 0]))
    print(f"features of {len(everything)} photos: {time.time() - started:.0f} s; inference "
          f"{_milliseconds_per_photo(setup, everything):.1f} ms a photo (batch 1, decode excluded)", flush=True)

    results: dict[str, list[dict]] = {}
    pooled: dict[str, list[tuple]] = {}  # every fold's test predictions: the ECE over all photos, not per fold
    for i, data in enumerate(folds):
        fit_on = concatenate_datasets([data["train"], data["validation"]])
        train_x = np.stack([features[d] for d in photo_digests(fit_on)])
        test_digests = photo_digests(data["test"])
        test_x = np.stack([features[d][0] for d in test_digests])
        test_flip = np.stack([mirrored[d] for d in test_digests])
        labels, test_labels = np.asarray(fit_on["label"]), np.asarray(data["test"]["label"])
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
          f"({len(everything)} photos):")
    for key, row in summary.items():
        logits, scaled, labels = (np.concatenate(part) for part in zip(*pooled[key]))
        row["ece_all_photos"] = {"mean": expected_calibration_error(softmax(logits), labels), "std": 0.0}
        row["ece_scaled_all_photos"] = {"mean": expected_calibration_error(softmax(scaled), labels), "std": 0.0}
        print(f"{key:28s} " + "  ".join(f"{m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in row.items()))
    if cli.output:
        Path(cli.output).write_text(json.dumps({"argv": argv, "summary": summary}, indent=2))


def _milliseconds_per_photo(setup, photos, n: int = 20) -> float:
    """Median forward time of one preprocessed photo (the inference cost of this backbone at this size)."""
    import torch

    model = setup.model.eval()
    pixels = [setup.eval_transform(image)[None].contiguous(memory_format=torch.channels_last)
              for image in photos.select(range(min(n, len(photos))))["image"]]
    times = []
    with torch.inference_mode():
        model(pixel_values=pixels[0])  # warm-up
        for batch in pixels:
            t = time.perf_counter()
            model(pixel_values=batch)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


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
