"""Baseline: a logistic regression on frozen backbone features, on the splits a preset trains on.

The issues' reference points ("a logistic regression on frozen EfficientNet-Lite0 features reaches
...") measured on *our* splits, so the README's fine-tuning figures have a baseline to beat:

    HF_HUB_OFFLINE=1 python benchmarks/linear_probe.py --preset birds --data_dir ../shared/data/birds
    HF_HUB_OFFLINE=1 python benchmarks/linear_probe.py --preset bedrooms --data_dir ../shared/data/bedrooms \
        --cv_folds 5 --backbone efficientnet-lite1

The probe (standardized features, L2-regularized) trains on train + validation, which it needs no
early stopping for, and is scored on the test split, or on every fold of ``--cv_folds`` (the
folds ``train.py --cv_folds`` uses). Features of the plain (evaluation) view are cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from datasets import concatenate_datasets
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hf_model.backbones import default_cache_dir
from hf_model.config import parse_args
from hf_model.data import load_data
from hf_model.features import extract_features
from hf_model.metrics import ClassificationMetrics
from hf_model.training import setup_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bedrooms")
    parser.add_argument("--data_dir", default="../shared/data/bedrooms")
    parser.add_argument("--backbone", default=None, help="default: the preset's")
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--cv_folds", type=int, default=0, help="k > 1: score every fold of k-fold CV")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    cli = parser.parse_args()
    cfg, args = parse_args(["--preset", cli.preset, "--data_dir", cli.data_dir, "--output_dir", tempfile.mkdtemp(),
                            *(["--backbone", cli.backbone] if cli.backbone else [])])
    folds = [(i, cli.cv_folds) for i in range(cli.cv_folds)] if cli.cv_folds > 1 else [None]
    splits = [load_data(cfg, args.seed, fold) for fold in folds]
    labels = splits[0]["train"].features["label"].names
    setup = setup_model(cfg, labels)  # the backbone is what counts; its new head is never used
    model, eval_tf = setup.model, setup.eval_transform
    cache = Path(default_cache_dir()) / "features" / setup.feature_key / "eval"
    scores = []
    for data in splits:
        train_split = concatenate_datasets([data["train"], data["validation"]])
        train, test = (extract_features(model, split, [eval_tf], cache, desc="features")[:, 0]
                       for split in (train_split, data["test"]))
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=cli.C, max_iter=2000))
        probe.fit(train, train_split["label"])
        probs = np.zeros((len(test), len(labels)))
        probs[:, probe.classes_] = probe.predict_proba(test)  # classes absent from train keep probability 0
        metrics = ClassificationMetrics(keep_in_memory=True).compute(
            predictions=probs, references=data["test"]["label"], label_names=labels)
        scores.append({k: v for k, v in metrics.items() if isinstance(v, float)})
    summary = {k: {"mean": float(np.mean([s[k] for s in scores])), "std": float(np.std([s[k] for s in scores]))}
               for k in scores[0]}
    where = f"{cli.cv_folds}-fold cross-validation" if cli.cv_folds > 1 else f"the test split ({len(test)} photos)"
    print(f"{cli.preset}: logistic regression (C={cli.C}) on frozen {cfg.backbone} features, on {where}: "
          + ", ".join(f"{k} {v['mean']:.3f}" + (f" ± {v['std']:.3f}" if len(scores) > 1 else "")
                      for k, v in summary.items()))
    if cli.output:
        Path(cli.output).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
