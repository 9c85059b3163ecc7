"""Calibrate when a trained model should say "this is not a bedroom" or "I am unsure", and store it.

``calibrate("runs/bedrooms", ["../shared/data/rooms_other"])`` rebuilds the run's own splits
(from its run record, ``hf_model_config.json``: folder or Hub dataset, labels file, split
fractions, seed, cross-validation fold), then:

1. runs the ImageNet gate (:class:`hf_model.serving.DomainGate`) over the training photos: their mean
   ImageNet class probabilities are the task's *profile*;
2. picks the domain threshold on the validation photos (in domain) against every other photo of the
   out-of-domain folders: the threshold that best separates them (Youden's J) while rejecting at most
   ``max_in_domain_rejection`` of the validation photos;
3. reports how often that threshold rejects photos neither choice saw: the test split and the
   unlabeled photos (in domain) against the other half of the out-of-domain photos;
4. writes ``calibration.json`` into the model folder, where :class:`hf_model.serving.Classifier` reads it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np
from datasets import Image as ImageFeature

from hf_model.backbones import DEFAULT_BACKBONE
from hf_model.config import load_run_config
from hf_model.data import DataError, load_data
from hf_model.flags import number_in, whole_number
from hf_model.images import list_images, skipped_files
from hf_model.run_folder import RunFolderError, require_finished
from hf_model.serving import (
    DEFAULT_UNSURE_BELOW,
    Calibration,
    Classifier,
    UnreadablePhotoError,
    domain_scores,
    load_gate,
    open_photo,
)

logger = logging.getLogger(__name__)

MAX_IN_DOMAIN_REJECTION = 0.05


def calibrate(
    model_dir: str | Path,
    out_of_domain_dirs: list[str | Path],
    *,
    data_dir: str | Path | None = None,
    gate_backbone: str = DEFAULT_BACKBONE,
    max_in_domain_rejection: float = MAX_IN_DOMAIN_REJECTION,
    unsure_below: float = DEFAULT_UNSURE_BELOW,
    limit: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Choose and save the thresholds of ``model_dir``; returns the report stored with them.

    Raises :class:`~hf_model.run_folder.RunFolderError` when the folder's training did not finish,
    ``FileNotFoundError`` when it holds no run record, and ``BadImageError`` for an unreadable training photo.
    """
    require_finished(model_dir)
    record = load_run_config(model_dir)
    cfg = dataclasses.replace(record.config, data_dir=str(data_dir)) if data_dir else record.config
    data = load_data(cfg, record.training_args.seed, record.cv_fold)  # exactly the splits the model trained on
    others = out_of_domain_photos(out_of_domain_dirs)
    if len(others) < 2:
        raise DataError(f"need at least 2 readable out-of-domain photos in {[str(d) for d in out_of_domain_dirs]}, "
                         f"found {len(others)}: add photos the model should turn away")
    sets = {split: split_photos(data[split])[:limit] for split in data}
    sets["other_calibration"] = others[0::2][:limit]  # interleaved, so that each room type is in both halves
    sets["other_held_out"] = others[1::2][:limit]

    gate = load_gate(gate_backbone)
    probs = {name: photo_probabilities(gate.imagenet_probabilities, images, batch_size)
             for name, images in sets.items()}
    profile = probs.pop("train").mean(axis=0)
    scores = {name: domain_scores(p, profile) for name, p in probs.items()}
    threshold = choose_threshold(scores["validation"], scores["other_calibration"], max_in_domain_rejection)

    unseen_in_domain = np.concatenate([s for name, s in scores.items() if name in data and name != "validation"])
    report = {
        # photos neither choice saw: what a user of the Space can expect
        "held_out": {
            "in_domain": rejection(unseen_in_domain, threshold),
            "out_of_domain": rejection(scores["other_held_out"], threshold),
        },
        "threshold_chosen_on": {
            "in_domain": f"validation ({len(scores['validation'])} photos)",
            "out_of_domain": f"other_calibration ({len(scores['other_calibration'])} photos)",
        },
        "rejected": {name: rejection(s, threshold) for name, s in scores.items()},
        "unsure": unsure_report(Classifier.from_pretrained(str(model_dir)), data["validation"], unsure_below, limit),
        "out_of_domain_dirs": [str(d) for d in out_of_domain_dirs],
    }
    calibration = Calibration(gate_backbone, [round(float(p), 7) for p in profile], threshold, unsure_below, report)
    logger.info("wrote %s: %s", calibration.save(model_dir), json.dumps(report["rejected"]))
    return report


def choose_threshold(in_domain: np.ndarray, out_of_domain: np.ndarray, max_in_domain_rejection: float) -> float:
    """The score below which photos are rejected: best J = out rejected - in rejected, within the cap."""
    in_domain, out_of_domain = np.sort(in_domain), np.sort(out_of_domain)
    candidates = np.unique(np.concatenate([in_domain, out_of_domain, [np.inf]]))  # a photo at t is accepted
    in_rejected = np.searchsorted(in_domain, candidates, side="left") / len(in_domain)
    out_rejected = np.searchsorted(out_of_domain, candidates, side="left") / len(out_of_domain)
    j = np.where(in_rejected <= max_in_domain_rejection, out_rejected - in_rejected, -np.inf)
    return float(candidates[np.argmax(j)])  # argmax takes the first, lowest, of equal thresholds


def rejection(scores: np.ndarray, threshold: float) -> dict:
    return {"photos": len(scores), "rejected": round(float(np.mean(scores < threshold)), 4)}


def unsure_report(classifier: Classifier, validation, unsure_below: float, limit: int | None) -> dict:
    """How many validation photos the model calls unsure, and how often it is right on each side."""
    photos, labels = split_photos(validation)[:limit], np.asarray(validation["label"][:limit])
    probs = photo_probabilities(classifier.probabilities, photos, 32)
    right, unsure = probs.argmax(axis=1) == labels, probs.max(axis=1) < unsure_below
    return {
        "unsure_below": unsure_below,
        "unsure_share": round(float(unsure.mean()), 4),
        "accuracy_when_sure": round(float(right[~unsure].mean()), 4) if (~unsure).any() else None,
        "accuracy_when_unsure": round(float(right[unsure].mean()), 4) if unsure.any() else None,
    }


def out_of_domain_photos(folders: list[str | Path]) -> list[Path]:
    """Every readable image file under the folders, in a stable order.

    Files that are not images (:func:`hf_model.images.skipped_files`) and images ``open_photo`` refuses
    are left out with a warning naming each one: one bad file among hundreds should not stop calibration.
    Raises ``FileNotFoundError`` for a folder that does not exist.
    """
    photos = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"out-of-domain folder {folder} does not exist")
        for path, reason in skipped_files(folder):
            logger.warning("skipping %s: %s", path, reason)
        photos += [path for path in list_images(folder) if _readable(path)]
    return photos


def _readable(path: Path) -> bool:
    try:
        open_photo(path)
    except UnreadablePhotoError as err:
        logger.warning("skipping %s: %s", path, err)
        return False
    return True


def split_photos(split) -> list:
    """A split's photos as paths (or bytes for Hub datasets), opened later batch by batch like uploads."""
    files = split.cast_column("image", ImageFeature(decode=False))["image"]
    return [f["path"] if f.get("path") and Path(f["path"]).is_file() else io.BytesIO(f["bytes"]) for f in files]


def photo_probabilities(fn, photos: list, batch_size: int) -> np.ndarray:
    """``fn`` over the photos, opened with serving's ``open_photo`` so they look exactly like uploads.

    Raises :class:`UnreadablePhotoError` naming the photo when one cannot be read.
    """
    batches = [fn([_open(p) for p in photos[i : i + batch_size]]) for i in range(0, len(photos), batch_size)]
    return np.concatenate(batches)


def _open(photo):
    try:
        return open_photo(photo)
    except UnreadablePhotoError as err:
        name = photo if isinstance(photo, str | Path) else "a photo of the dataset"
        raise UnreadablePhotoError(f"{name}: {err} Fix or remove it, then calibrate again.") from err


def main(argv: list[str] | None = None) -> None:
    """``hf-model calibrate runs/bedrooms ../shared/data/rooms_other``: write and report ``calibration.json``."""
    import argparse

    parser = argparse.ArgumentParser(prog="hf-model calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a trained model folder (train.py --output_dir)")
    parser.add_argument("out_of_domain_dirs", nargs="+", help="folders of photos the model should turn away")
    parser.add_argument("--data_dir", help="the training photos, if not where hf_model_config.json says")
    parser.add_argument("--max_in_domain_rejection", type=number_in(0, 1, high_included=False),
                        default=MAX_IN_DOMAIN_REJECTION, help="share of in-domain photos the threshold may turn away")
    parser.add_argument("--unsure_below", type=number_in(0, 1), default=DEFAULT_UNSURE_BELOW,
                        help="top-class probability under which the model says it is unsure")
    parser.add_argument("--limit", type=whole_number(1), help="photos per set at most (a quick calibration)")
    parser.add_argument("--batch_size", type=whole_number(1), default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        report = calibrate(args.model_dir, args.out_of_domain_dirs, data_dir=args.data_dir,
                           max_in_domain_rejection=args.max_in_domain_rejection, unsure_below=args.unsure_below,
                           limit=args.limit, batch_size=args.batch_size)
    except (FileNotFoundError, UnreadablePhotoError, RunFolderError, DataError) as err:  # the user's folders: one line
        raise SystemExit(f"hf-model calibrate: {err}") from None
    held_out = report["held_out"]
    print(f"calibration.json written to {args.model_dir}. On photos the threshold was not chosen on it turns away "
          f"{held_out['out_of_domain']['rejected']:.1%} of {held_out['out_of_domain']['photos']} out-of-domain photos "
          f"and {held_out['in_domain']['rejected']:.1%} of {held_out['in_domain']['photos']} in-domain ones.")
