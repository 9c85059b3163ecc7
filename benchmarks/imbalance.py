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

from hf_model.adapters import adapter_for
from hf_model.backbones import default_cache_dir
from hf_model.config import parse_args
from hf_model.data import load_data, oversampled
from hf_model.features import extract_features
from hf_model.metrics import ClassificationMetrics, softmax
from hf_model.training import balanced_class_weights, cross_entropy_loss, setup_model, train_head

VARIANTS = {"plain": {}, "class_weights auto": {"class_weights": "auto"}, "oversample": {"oversample": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--output", default=None)
    cli = parser.parse_args()
    cfg, args = parse_args(["--preset", "bedrooms", "--data_dir", cli.data_dir, "--output_dir",
                            tempfile.mkdtemp(prefix="imbalance-"), "--disable_tqdm", "true"])
    scores: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for fold in range(cli.folds):
        data = load_data(cfg, args.seed, (fold, cli.folds))
        labels = data["train"].features["label"].names
        for name, change in VARIANTS.items():
            variant = replace(cfg, head="sgd", **change)  # the Trainer head, whose loss the variants change
            setup = setup_model(variant, labels)
            train_split = oversampled(data["train"], args.seed) if variant.oversample else data["train"]
            weights = balanced_class_weights(train_split["label"], 2) if variant.class_weights == "auto" else None
            train_head(variant, args, setup, train_split, data["validation"], cross_entropy_loss(weights))
            test = extract_features(setup.model, data["test"], [setup.eval_transform],
                                    Path(default_cache_dir()) / "features" / setup.feature_key / "eval")[:, 0]
            head = adapter_for(setup.model).classifier(setup.model)
            with torch.no_grad():  # Trainer left the head on the GPU when there is one
                logits = head(torch.from_numpy(test).to(head.weight.device)).float().cpu().numpy()
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
