"""Stage 1 (head on the frozen backbone): cached features vs the plain image path.

Trains the same head both ways on the same split and reports seconds per epoch and the best
validation accuracy. Run on the real bedrooms (a few minutes on a 2-core CPU):

    HF_HUB_OFFLINE=1 python benchmarks/stage1_speed.py --data_dir ../shared/data/bedrooms --epochs 15

By default the user's feature cache is used (warm, as after a first run); ``--cold`` starts from an
empty cache and reports the one-off extraction separately.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

from hf_model.backbones import default_cache_dir
from hf_model.config import parse_args
from hf_model.data import load_data
from hf_model.reports import LearningCurvesCallback
from hf_model.training import cross_entropy_loss, setup_model, train_head


def run(data_dir: str, epochs: int, feature_cache: bool, cache_dir: str) -> dict:
    cfg, args = parse_args(["--preset", "bedrooms", "--data_dir", data_dir, "--output_dir",
                            tempfile.mkdtemp(prefix="stage1-"), "--disable_tqdm", "true"])
    cfg = replace(cfg, head="sgd", feature_cache=feature_cache, head_epochs=epochs, head_patience=epochs,
                  cache_dir=cache_dir)
    data = load_data(cfg, args.seed)
    setup = setup_model(cfg, data["train"].features["label"].names)
    curves = LearningCurvesCallback(args.output_dir)  # holds the stage's log history
    started = time.perf_counter()
    train_head(cfg, args, setup, data["train"], data["validation"], cross_entropy_loss(None), curves)
    total = time.perf_counter() - started
    history = curves.history
    summary = next(e for e in history if "train_runtime" in e)
    evals = [e for e in history if "eval_accuracy" in e]
    return {
        "path": "cached features" if feature_cache else "plain images",
        "epochs": len(evals),
        "seconds_per_epoch": summary["train_runtime"] / max(1, len(evals)),
        "seconds_total": total,
        "best_val_accuracy": max(e["eval_accuracy"] for e in evals),
        "val_accuracy_at_best_loss": min(evals, key=lambda e: e["eval_loss"])["eval_accuracy"],
        "photos_per_epoch": len(data["train"]) * (cfg.feature_views if feature_cache else 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--cold", action="store_true", help="start from an empty feature cache and time the extraction")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as fresh:
        cache = fresh if args.cold else str(default_cache_dir())
        if args.cold:
            cold = run(args.data_dir, args.epochs, True, cache)  # includes the one-off extraction
        warm = run(args.data_dir, args.epochs, True, cache)
        plain = run(args.data_dir, args.epochs, False, cache)
    if args.cold:
        warm["extraction_seconds"] = cold["seconds_total"] - warm["seconds_total"]
    results = {"cached": warm, "plain": plain, "speedup_per_epoch": plain["seconds_per_epoch"] /
               warm["seconds_per_epoch"]}
    for row in (warm, plain):
        print(f"{row['path']:>16}: {row['seconds_per_epoch']:7.2f} s/epoch ({row['photos_per_epoch']} views), "
              f"best val accuracy {row['best_val_accuracy']:.3f}, at best loss {row['val_accuracy_at_best_loss']:.3f}")
    print(f"speed-up per epoch: {results['speedup_per_epoch']:.0f}x")
    if args.cold:
        print(f"one-off feature extraction: {warm['extraction_seconds']:.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
