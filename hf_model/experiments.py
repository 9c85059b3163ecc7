"""Experiments over training runs: cross-validation and self-training.

Each experiment takes ``run``, the function that does one whole training run
(:func:`hf_model.training.train`: data -> fine-tune -> test -> model folder), and calls it several
times: once per fold, or once for the teacher and once for the student.

- Cross-validation (``--cv_folds k``): stratified grouped k-fold; every labeled photo is tested
  exactly once; ``cv_results.json`` holds each metric's mean, standard deviation and per-fold values.
- Self-training (``--pseudo_label_threshold p``): the bedroom folder holds about twice as many
  unlabeled photos as labeled ones. A model trained on the labeled photos (the teacher, a whole run
  of its own in ``output_dir/teacher``) labels them; the photos it is at least ``p`` sure of join the
  training split as ``pseudo_labeled``, and a fresh model (the student) trains on both. Validation and
  test stay hand-labeled, so early stopping and the reported figures are not fooled by the teacher.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from transformers import TrainingArguments

from hf_model.atomic import write_json_atomic
from hf_model.config import TrainConfig
from hf_model.distributed import main_process_result
from hf_model.predict import class_probabilities, load_for_inference
from hf_model.temperature import expected_calibration_error_of_totals

logger = logging.getLogger("hf_model")

CV_RESULTS_JSON = "cv_results.json"
TEACHER_DIR = "teacher"
# One training run: (config, training arguments, command, cv_fold) -> test metrics
RunFn = Callable[[TrainConfig, TrainingArguments, str, "tuple[int, int] | None"], dict]


# ---------------------------------------------------------------- cross-validation

def cross_validate(run: RunFn, cfg: TrainConfig, args: TrainingArguments, command: str) -> dict:
    """``cfg.cv_folds`` runs, fold ``i`` in ``output_dir/fold-i``; returns the metrics' mean ± std over folds.

    Each fold is a run of its own: rerunning an interrupted cross-validation resumes its unfinished
    fold and reports the finished ones without training them again. Only the main process
    (``args.should_save``) writes ``cv_results.json`` and prints the summary.
    """
    root = Path(args.output_dir)
    per_fold = []
    for fold in range(cfg.cv_folds):
        logger.info("cross-validation fold %d of %d", fold + 1, cfg.cv_folds)
        fold_args = dataclasses.replace(args, output_dir=str(root / f"fold-{fold}"), push_to_hub=False)
        per_fold.append(run(dataclasses.replace(cfg, cv_folds=0), fold_args, command, (fold, cfg.cv_folds)))
    summary = summarize_folds(per_fold)
    if not args.should_save:  # another rank of a distributed run: the main process writes and reports
        return summary
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / CV_RESULTS_JSON, {"command": command, "folds": cfg.cv_folds, **summary})
    acc, f1 = summary["accuracy"], summary["f1_macro"]
    top5 = summary.get("top5_accuracy")
    print(f"{cfg.cv_folds}-fold cross-validation over {summary['photos']} photos: accuracy {acc['mean']:.3f} ± "
          f"{acc['std']:.3f}, macro-F1 {f1['mean']:.3f} ± {f1['std']:.3f}"
          + (f", top-5 {top5['mean']:.3f} ± {top5['std']:.3f}" if top5 else "")
          + (f", calibration error (ECE, all photos) {summary['ece_all_photos']:.3f}" if "ece_all_photos" in summary
             else "") + f" (results in {root / CV_RESULTS_JSON})", flush=True)
    return summary


def summarize_folds(per_fold: list[dict]) -> dict:
    """``{metric: {"mean", "std", "folds"}}`` over the folds' ``test_*`` scalars, per-class F1 included."""
    flat = [{**m, **{f"test_f1_{name}": row["f1"] for name, row in m.get("test_per_class", {}).items()}}
            for m in per_fold]
    # a metric some folds lack (ROC AUC of a fold testing one class) is summarized over the folds that have it
    keys = list(dict.fromkeys(k for m in flat for k, v in m.items() if isinstance(v, float)))
    summary = {k.removeprefix("test_"): {"mean": float(np.mean([m[k] for m in flat if k in m])),
                                         "std": float(np.std([m[k] for m in flat if k in m])),
                                         "folds": [m[k] for m in flat if k in m]} for k in keys}
    summary["photos"] = sum(m["test_samples"] for m in flat)
    if all("test_calibration_bins" in m for m in per_fold):  # every fold's test photos at once, not a mean of folds
        summary["ece_all_photos"] = expected_calibration_error_of_totals([m["test_calibration_bins"] for m in per_fold])
    return summary


# ---------------------------------------------------------------- self-training

def teach(run: RunFn, cfg: TrainConfig, args: TrainingArguments, data: DatasetDict, command: str,
          cv_fold: tuple[int, int] | None = None) -> Dataset:
    """Self-training's first half: a teacher run in ``output_dir/teacher`` labels the unlabeled photos.

    Returns the ``pseudo_labeled`` split for the student. The teacher is a whole run of its own
    (model, results, card), so an interrupted self-training run resumes it, and its test figures
    sit beside the student's for comparison. Raises ``ValueError`` when ``data`` has no unlabeled photos.
    """
    if len(data.get("unlabeled", [])) == 0:
        raise ValueError("--pseudo_label_threshold needs unlabeled photos, and this dataset has none "
                         "(a bedroom folder's photos without a label are used)")
    teacher_dir = Path(args.output_dir) / TEACHER_DIR
    logger.info("self-training: training the teacher in %s", teacher_dir)
    # no refit: a teacher that learned from the test photos would pass their labels on through its pseudo-labels
    run(dataclasses.replace(cfg, pseudo_label_threshold=0.0, refit=False),
        dataclasses.replace(args, output_dir=str(teacher_dir), push_to_hub=False), command, cv_fold)
    names = data["train"].features["label"].names
    shares = np.bincount(data["train"]["label"], minlength=len(names))
    # labelled once, by the main process (which saved the teacher) on its accelerator; every rank gets its answer
    pseudo = main_process_result(lambda: pseudo_label(
        teacher_dir, data["unlabeled"], cfg.pseudo_label_threshold, tta=cfg.tta, class_shares=shares / shares.sum(),
        batch_size=args.per_device_eval_batch_size, device=args.device))
    counts = np.bincount(pseudo["label"], minlength=len(names))
    logger.info("self-training: %d of %d unlabeled photos get the label the teacher is at least %.0f%% sure of, "
                "in the training photos' class shares (%s); the student trains on them too", len(pseudo),
                len(data["unlabeled"]), 100 * cfg.pseudo_label_threshold,
                ", ".join(f"{n} {c}" for n, c in zip(names, counts)))
    return pseudo


def pseudo_label(model_dir: str | Path, unlabeled: Dataset, threshold: float, *, tta: bool = False,
                 class_shares: Sequence[float] | None = None, batch_size: int = 32,
                 device: str | torch.device | None = None) -> Dataset:
    """The photos of ``unlabeled`` that the model in ``model_dir`` labels with probability >= ``threshold``.

    Returns a dataset with the same features as ``unlabeled`` and the model's labels; with ``tta``
    the photo and its mirror image are averaged, as at test time. With ``class_shares`` (the labeled
    training photos' class shares) only the most confident photos of each class are kept, in those
    shares: a teacher that leans to the larger class would otherwise tilt the student further.
    The teacher runs on ``device`` (default: the GPU when present). Raises ``ValueError`` when ``threshold`` is
    not in (0, 1].
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"the pseudo-label threshold is a probability in (0, 1], got {threshold}")
    probs = teacher_probabilities(model_dir, unlabeled, tta=tta, batch_size=batch_size, device=device)
    confident = np.flatnonzero(probs.max(axis=1) >= threshold)
    if class_shares is not None:
        confident = balanced(confident, probs, np.asarray(class_shares, dtype=float))
    images = unlabeled.cast_column("image", ImageFeature(decode=False)).select(confident)["image"]
    return Dataset.from_dict({"image": images, "label": probs[confident].argmax(axis=1).tolist()},
                             features=unlabeled.features)


def teacher_probabilities(model_dir: str | Path, dataset: Dataset, *, tta: bool = False, batch_size: int = 32,
                          device: str | torch.device | None = None) -> np.ndarray:
    """(photos, classes) probabilities of the saved teacher on ``device`` (default: the GPU when present)."""
    model, transform = load_for_inference(str(model_dir), device)
    return class_probabilities(model, transform, dataset["image"], tta=tta, batch_size=batch_size)


def balanced(candidates: np.ndarray, probs: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The largest subset of ``candidates`` whose predicted classes follow ``shares``, most confident first."""
    predicted = probs[candidates].argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(shares))
    present = shares > 0
    total = np.min(counts[present] / shares[present])  # the scarcest class (relative to its share) sets the size
    keep = []
    for c in np.flatnonzero(present):
        members = candidates[predicted == c]
        ranked = members[np.argsort(-probs[members, c], kind="stable")]
        keep += ranked[: int(np.floor(total * shares[c] + 1e-9))].tolist()
    return np.sort(np.asarray(keep, dtype=int))
