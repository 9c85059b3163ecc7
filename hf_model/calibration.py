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

Every rate comes with its sample size and a 95% Wilson interval, and calibration refuses to choose a
threshold from fewer photos than :func:`required_photos` asks for unless told to (``allow_small_samples``).
The gate and the model run on ``device`` (default: the GPU when present); nothing about the device is
recorded, so ``calibration.json`` serves the same on any machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from datasets import Image as ImageFeature
from scipy.stats import binomtest

from hf_model.backbones import DEFAULT_BACKBONE
from hf_model.config import load_run_config
from hf_model.data import DataError, load_data
from hf_model.devices import Device, add_device_argument, resolve_device
from hf_model.exit_status import command, exit_statuses
from hf_model.flags import number_in, whole_number
from hf_model.images import list_images, skipped_files
from hf_model.run_folder import require_finished
from hf_model.serving import (
    CALIBRATION_FILE,
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
# The fewest photos a rate of calibration.json is measured on. With 30 photos a rate's 95% Wilson interval
# is at most +-17 points wide (at 50%) and, around the 5% in-domain cap (2 of 30), spans 2-21%; with 10 photos
# those are +-26 points and 0-28%: the threshold's promises would be guesses. 30 is also past 1 / cap = 20,
# the fewest photos on which a 5% cap lets even one photo be turned away (MAPIE refuses conformal calibration
# sets smaller than 1 / alpha for the same reason; required_photos applies that rule to other caps).
MIN_PHOTOS = 30
# Even with allow_small_samples: one validation photo, and one out-of-domain photo in each half.
FEWEST_POSSIBLE = {"validation": 1, "out_of_domain": 2}
CONFIDENCE_LEVEL = 0.95
INTERVALS = "95% Wilson score intervals (scipy.stats.binomtest(...).proportion_ci(method='wilson'))"


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
    allow_small_samples: bool = False,
    device: Device = None,
) -> dict:
    """Choose and save the thresholds of ``model_dir``; returns the report stored with them.

    The gate and the model run on ``device`` (:func:`hf_model.devices.resolve_device`; default: the GPU when
    present). Raises :class:`~hf_model.devices.DeviceError` first for a device this machine does not have,
    :class:`~hf_model.run_folder.RunFolderError` when the folder's training did not finish,
    ``FileNotFoundError`` when it holds no run record, ``BadImageError`` for an unreadable training photo,
    and :class:`~hf_model.data.DataError` when the validation split or the out-of-domain folders hold fewer
    photos than :func:`required_photos` (with ``allow_small_samples``: a loud warning instead, recorded in the
    report's ``sample_sizes``, down to FEWEST_POSSIBLE).
    """
    device = resolve_device(device)
    require_finished(model_dir)
    record = load_run_config(model_dir)
    cfg = dataclasses.replace(record.config, data_dir=str(data_dir)) if data_dir else record.config
    data = load_data(cfg, record.training_args.seed, record.cv_fold)  # exactly the splits the model trained on
    others = out_of_domain_photos(out_of_domain_dirs)
    sets = {split: split_photos(data[split])[:limit] for split in data}
    sets["other_calibration"] = others[0::2][:limit]  # interleaved, so that each room type is in both halves
    sets["other_held_out"] = others[1::2][:limit]
    sample_sizes = {"validation": len(sets["validation"]),
                    "out_of_domain": len(sets["other_calibration"]) + len(sets["other_held_out"])}
    required = required_photos(max_in_domain_rejection)
    small = check_sample_sizes(sample_sizes, required, allow_small_samples, model_dir, out_of_domain_dirs, limit)

    logger.info("calibrating on %s", device)
    gate = load_gate(gate_backbone, device)
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
        "unsure": unsure_report(Classifier.from_pretrained(str(model_dir), warn_uncalibrated=False, device=device),
                                data["validation"], unsure_below, limit),
        "out_of_domain_dirs": [str(d) for d in out_of_domain_dirs],
        "sample_sizes": {**sample_sizes, "required": required, "below_required": small},
        "intervals": INTERVALS,
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


def required_photos(max_in_domain_rejection: float) -> dict[str, int]:
    """The fewest photos calibration chooses a threshold from: ``validation`` photos (in domain) and
    ``out_of_domain`` photos in all (half choose the threshold, half check it), MIN_PHOTOS a set.

    A cap under 1 / MIN_PHOTOS asks for 1 / cap validation photos, the fewest on which the cap allows one
    rejection (MAPIE's ``check_alpha_and_n_samples`` rule for conformal calibration sets).
    """
    by_cap = math.ceil(1 / max_in_domain_rejection) if max_in_domain_rejection > 0 else 0
    return {"validation": max(MIN_PHOTOS, by_cap), "out_of_domain": 2 * MIN_PHOTOS}


def check_sample_sizes(have: dict[str, int], required: dict[str, int], allow_small_samples: bool,
                       model_dir: str | Path, out_of_domain_dirs: list[str | Path], limit: int | None) -> bool:
    """Whether ``have`` falls short of ``required``, which ``allow_small_samples`` turns into a loud warning.

    Raises :class:`~hf_model.data.DataError` (one line: how many photos, how many needed, what to do) when it
    falls short without ``allow_small_samples``, or short of FEWEST_POSSIBLE with it.
    """
    where = (model_dir, out_of_domain_dirs, limit)
    small = too_few_photos(have, required, *where)
    if small and not allow_small_samples:
        raise DataError(f"too few photos to choose a threshold on: {small}. Pass --allow_small_samples to "
                        "calibrate anyway")
    impossible = too_few_photos(have, FEWEST_POSSIBLE, *where)
    if impossible:
        raise DataError(f"too few photos to choose a threshold on: {impossible}")
    if small:
        logger.warning("CALIBRATING ON TOO FEW PHOTOS (--allow_small_samples): %s. The rates in %s come with wide "
                       "intervals (its *_ci95 entries); calibrate again on more photos before relying on them",
                       small, CALIBRATION_FILE)
    return bool(small)


def too_few_photos(have: dict[str, int], need: dict[str, int], model_dir: str | Path,
                   out_of_domain_dirs: list[str | Path], limit: int | None) -> str:
    """What falls short of ``need`` in ``have`` (as counted by :func:`calibrate`) and what to do; "" when nothing."""
    problems = []
    if have["validation"] < need["validation"]:
        problems.append(f"{have['validation']} validation photos in the run {model_dir} (need {need['validation']}: "
                        "train on more photos or with a larger validation share, --split_fractions)")
    if have["out_of_domain"] < need["out_of_domain"]:
        problems.append(f"{have['out_of_domain']} readable out-of-domain photos in "
                        f"{', '.join(map(str, out_of_domain_dirs))} (need {need['out_of_domain']}, half to choose "
                        "the threshold and half to check it: add photos the model should turn away)")
    if problems and limit is not None:
        problems.append(f"--limit {limit} caps each set")
    return "; ".join(problems)


def wilson_interval(successes: int, trials: int) -> list[float]:
    """The 95% Wilson score interval of ``successes / trials`` as ``[low, high]``, rounded to 4 places.

    Wilson (1927), recommended for small samples and rates near 0 or 1 by Brown, Cai & DasGupta (2001,
    "Interval estimation for a binomial proportion"), where the textbook normal interval collapses to a point;
    computed by ``scipy.stats.binomtest``. Raises ``ValueError`` when ``trials`` is 0.
    """
    interval = binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE_LEVEL, method="wilson")
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def rate(hits: np.ndarray, name: str) -> dict:
    """``{name: share of True, name_ci95: its Wilson interval}``; None for both when there is nothing to count."""
    if not len(hits):
        return {name: None, f"{name}_ci95": None}
    count = int(np.sum(hits))
    return {name: round(count / len(hits), 4), f"{name}_ci95": wilson_interval(count, len(hits))}


def rejection(scores: np.ndarray, threshold: float) -> dict:
    """How many photos there were and which share of them the threshold turns away, with its interval."""
    return {"photos": len(scores), **rate(scores < threshold, "rejected")}


def unsure_report(classifier: Classifier, validation, unsure_below: float, limit: int | None) -> dict:
    """How many validation photos the model calls unsure, and how often it is right on each side."""
    photos, labels = split_photos(validation)[:limit], np.asarray(validation["label"][:limit])
    probs = photo_probabilities(classifier.probabilities, photos, 32)
    right, unsure = probs.argmax(axis=1) == labels, probs.max(axis=1) < unsure_below
    return {
        "unsure_below": unsure_below,
        "photos": len(right),
        **rate(unsure, "unsure_share"),
        "photos_sure": int(np.sum(~unsure)),
        **rate(right[~unsure], "accuracy_when_sure"),
        "photos_unsure": int(np.sum(unsure)),
        **rate(right[unsure], "accuracy_when_unsure"),
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


@command("hf-model calibrate")
def main(argv: list[str] | None = None) -> None:
    """``hf-model calibrate runs/bedrooms ../shared/data/rooms_other``: write and report ``calibration.json``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="hf-model calibrate", description=__doc__.splitlines()[0],
        epilog=exit_statuses("calibration.json written", "too few photos (without --allow_small_samples), or the run "
                             "or photo folders cannot be used"))
    parser.add_argument("model_dir", help="a trained model folder (train.py --output_dir)")
    parser.add_argument("out_of_domain_dirs", nargs="+", help="folders of photos the model should turn away")
    parser.add_argument("--data_dir", help="the training photos, if not where hf_model_config.json says")
    parser.add_argument("--max_in_domain_rejection", type=number_in(0, 1, high_included=False),
                        default=MAX_IN_DOMAIN_REJECTION, help="share of in-domain photos the threshold may turn away "
                        f"(a share under 1/{MIN_PHOTOS} needs 1/share validation photos)")
    parser.add_argument("--unsure_below", type=number_in(0, 1), default=DEFAULT_UNSURE_BELOW,
                        help="top-class probability under which the model says it is unsure")
    parser.add_argument("--limit", type=whole_number(1), help="photos per set at most (a quick calibration)")
    parser.add_argument("--batch_size", type=whole_number(1), default=32)
    parser.add_argument("--allow_small_samples", action="store_true",
                        help=f"calibrate on fewer than {MIN_PHOTOS} validation photos or {2 * MIN_PHOTOS} "
                        "out-of-domain photos (refused without it): a loud warning, and calibration.json and the "
                        "Space say so")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    report = calibrate(args.model_dir, args.out_of_domain_dirs, data_dir=args.data_dir,
                       max_in_domain_rejection=args.max_in_domain_rejection, unsure_below=args.unsure_below,
                       limit=args.limit, batch_size=args.batch_size, allow_small_samples=args.allow_small_samples,
                       device=args.device)
    held_out = report["held_out"]
    print(f"calibration.json written to {args.model_dir}. On photos the threshold was not chosen on it turns away "
          f"{rate_text(held_out['out_of_domain'])} out-of-domain photos and {rate_text(held_out['in_domain'])} "
          "in-domain ones (95% intervals in brackets).")


def rate_text(entry: dict) -> str:
    """One entry of the report's ``held_out`` for people: ``86.7% [77.3-92.7%] of 75``."""
    if entry["rejected"] is None:
        return "none of 0"
    low, high = entry["rejected_ci95"]
    return f"{entry['rejected']:.1%} [{low * 100:.1f}-{high:.1%}] of {entry['photos']}"
