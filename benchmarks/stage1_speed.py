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

import torch

from hf_model.backbones import BACKBONES, default_cache_dir, load_image_processor, load_model, resolve_backbone
from hf_model.data import build_dataset
from hf_model.features import cache_key
from hf_model.training import parse_args, train_head
from hf_model.transforms import build_eval_transform, build_train_transform


def run(data_dir: str, epochs: int, feature_cache: bool, cache_dir: str) -> dict:
    cfg, args = parse_args(["--preset", "bedrooms", "--data_dir", data_dir, "--output_dir",
                            tempfile.mkdtemp(prefix="stage1-"), "--disable_tqdm", "true"])
    cfg = replace(cfg, feature_cache=feature_cache, head_epochs=epochs, head_patience=epochs, cache_dir=cache_dir)
    data = build_dataset(data_dir, split_fractions=cfg.split_fractions, seed=args.seed)
    labels = data["train"].features["label"].names
    size = BACKBONES[cfg.backbone].image_size
    source = resolve_backbone(cfg.backbone)
    model = load_model(source, labels, size).to(memory_format=torch.channels_last)
    processor = load_image_processor(source, model.config, size)
    train_tf = build_train_transform(processor, size, zoom=cfg.zoom, rotation=cfg.rotation, shift=cfg.shift,
                                     shear=cfg.shear, hflip=cfg.hflip, brightness=cfg.brightness)
    started = time.perf_counter()
    history = train_head(cfg, args, model, data["train"], data["validation"], train_tf,
                         build_eval_transform(processor), None, labels,
                         key=cache_key(source, size, cfg.augmentation_key()))
    total = time.perf_counter() - started
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
