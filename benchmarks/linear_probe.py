"""Baseline: a logistic regression on frozen backbone features, on the same split a preset trains on.

The issue's reference points ("a logistic regression on frozen EfficientNet-Lite0 features reaches
...") measured on *our* split, so the README's fine-tuning figures have a baseline to beat:

    HF_HUB_OFFLINE=1 python benchmarks/linear_probe.py --preset bedrooms --data_dir ../shared/data/bedrooms
    HF_HUB_OFFLINE=1 python benchmarks/linear_probe.py --preset birds --data_dir ../shared/data/birds

Features of the plain (evaluation) view come from, and go to, the stage-1 feature cache.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from hf_model.backbones import BACKBONES, default_cache_dir, load_image_processor, load_model, resolve_backbone
from hf_model.data import build_dataset
from hf_model.features import cache_key, extract_features
from hf_model.metrics import ClassificationMetrics
from hf_model.training import parse_args
from hf_model.transforms import build_eval_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bedrooms")
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--backbone", default=None, help="default: the preset's")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    cli = parser.parse_args()
    cfg, args = parse_args(["--preset", cli.preset, "--data_dir", cli.data_dir, "--output_dir", tempfile.mkdtemp(),
                            *(["--backbone", cli.backbone] if cli.backbone else [])])
    data = build_dataset(cli.data_dir, split_fractions=cfg.split_fractions, seed=args.seed)
    labels = data["train"].features["label"].names
    size = BACKBONES[cfg.backbone].image_size
    source = resolve_backbone(cfg.backbone)
    model = load_model(source, labels, size)
    eval_tf = build_eval_transform(load_image_processor(source, model.config, size))
    cache = Path(default_cache_dir()) / "features" / cache_key(source, size, cfg.augmentation_key()) / "eval"
    train, test = (extract_features(model, data[split], [eval_tf], cache, desc=split)[:, 0]
                   for split in ("train", "test"))
    probe = LogisticRegression(C=cli.C, max_iter=1000).fit(train, data["train"]["label"])
    probs = np.zeros((len(test), len(labels)))
    probs[:, probe.classes_] = probe.predict_proba(test)  # classes absent from train keep probability 0
    metrics = ClassificationMetrics(keep_in_memory=True).compute(
        predictions=probs, references=data["test"]["label"], label_names=labels)
    summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"{cli.preset}: logistic regression (C={cli.C}) on frozen {cfg.backbone} features, {len(train)} train / "
          f"{len(test)} test photos: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    if cli.output:
        Path(cli.output).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
