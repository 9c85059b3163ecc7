"""Class imbalance on the bedrooms (232 Old vs 154 Modern): plain vs ``--class_weights auto`` vs ``--oversample``.

Each variant trains the stage-1 head on cached features in every fold of a stratified grouped
5-fold cross-validation and is scored on the fold's test photos, so the comparison isolates the
loss/sampling change and costs seconds once the features are cached:

    HF_HUB_OFFLINE=1 python benchmarks/imbalance.py --data_dir ../shared/data/bedrooms
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hf_model.backbones import BACKBONES, default_cache_dir, load_image_processor, load_model, resolve_backbone
from hf_model.data import build_dataset
from hf_model.features import cache_key, extract_features
from hf_model.freezing import classifier_of
from hf_model.metrics import ClassificationMetrics, softmax
from hf_model.training import class_weights, oversampled, parse_args, train_head
from hf_model.transforms import build_eval_transform, build_train_transform

VARIANTS = {"plain": {}, "class_weights auto": {"class_weights": "auto"}, "oversample": {"oversample": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--output", default=None)
    cli = parser.parse_args()
    cfg, args = parse_args(["--preset", "bedrooms", "--data_dir", cli.data_dir, "--output_dir",
                            tempfile.mkdtemp(prefix="imbalance-"), "--disable_tqdm", "true"])
    size = BACKBONES[cfg.backbone].image_size
    source = resolve_backbone(cfg.backbone)
    key = cache_key(source, size, cfg.augmentation_key())
    scores: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for fold in range(cli.folds):
        data = build_dataset(cli.data_dir, split_fractions=cfg.split_fractions, seed=args.seed,
                             cv_fold=(fold, cli.folds))
        labels = data["train"].features["label"].names
        for name, change in VARIANTS.items():
            variant = replace(cfg, **change)
            model = load_model(source, labels, size).to(memory_format=torch.channels_last)
            processor = load_image_processor(source, model.config, size)
            eval_tf = build_eval_transform(processor)
            train_tf = build_train_transform(processor, size, zoom=cfg.zoom, rotation=cfg.rotation, shift=cfg.shift,
                                              shear=cfg.shear, hflip=cfg.hflip, brightness=cfg.brightness)
            train_split = oversampled(data["train"], args.seed) if variant.oversample else data["train"]
            weights = class_weights(train_split["label"], 2) if variant.class_weights == "auto" else None
            train_head(variant, args, model, train_split, data["validation"], train_tf, eval_tf, weights, labels, key)
            test = extract_features(model, data["test"], [eval_tf],
                                    Path(default_cache_dir()) / "features" / key / "eval")[:, 0]
            with torch.no_grad():
                logits = classifier_of(model)(torch.from_numpy(test)).numpy()
            scores[name].append(ClassificationMetrics(keep_in_memory=True).compute(
                predictions=softmax(logits), references=data["test"]["label"], label_names=labels, detailed=True))
    results = {}
    for name, folds in scores.items():
        row = {"accuracy": [f["accuracy"] for f in folds], "f1_macro": [f["f1_macro"] for f in folds],
               "f1_Modern": [f["per_class"]["Modern"]["f1"] for f in folds],
               "recall_Modern": [f["per_class"]["Modern"]["recall"] for f in folds]}
        results[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in row.items()}
        print(f"{name:>20}: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in results[name].items()))
    if cli.output:
        Path(cli.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
