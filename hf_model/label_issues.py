"""``hf-model label-issues RUN_DIR``: the labeled photos of a finished run most likely mislabeled.

Confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset
Labels"), through cleanlab's ``find_label_issues``: every labeled photo of the run (train + validation +
test, rebuilt exactly as the run built them) gets out-of-fold class probabilities from the logistic head
(:mod:`hf_model.heads`) fitted on the other folds' cached backbone features, so no photo vouches for its own
label; cleanlab flags the photos whose given label those probabilities confidently contradict, ranked by
the probability of the given label, lowest first. The command writes ``label_issues.csv`` and a contact
sheet ``label_issues.png`` and never edits a label: deciding is a person's job.

The features are the pretrained backbone's, which the run's head was fitted on: a run that fine-tuned
blocks trained them on every photo, so its own predictions could not be out of fold.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from datasets import Dataset, concatenate_datasets
from datasets import Image as ImageFeature
from matplotlib.figure import Figure

from hf_model.atomic import atomic_write
from hf_model.config import RunRecord, load_run_config
from hf_model.data import HAND_LABELED_SPLITS, DataError, load_data
from hf_model.exit_status import command, exit_statuses
from hf_model.features import photo_digests
from hf_model.flags import whole_number
from hf_model.heads import INNER_FOLDS, LinearHead, fit_head, inner_folds, out_of_fold_logits
from hf_model.metrics import softmax
from hf_model.reports import DPI, draw_top_losses
from hf_model.run_folder import RunFolderError, require_finished
from hf_model.training import cached_features, setup_model

logger = logging.getLogger("hf_model")

LABEL_ISSUES_CSV = "label_issues.csv"
LABEL_ISSUES_PNG = "label_issues.png"
CSV_COLUMNS = ("rank", "file", "split", "index", "given_label", "suggested_label", "p_given", "p_suggested")
DEFAULT_TOP = 12  # photos on the contact sheet: three rows of four
CLASSES_LISTED = 12  # the summary line counts flags per class up to this many classes, the most flagged first
EXIT_CODES = exit_statuses("done (flagged photos or none)", "not a finished run, or its photos are missing")


# ---------------------------------------------------------------- the method, on arrays

def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, *,
                              groups: Sequence | None = None, n_folds: int = INNER_FOLDS, seed: int = 0,
                              C: float | None = None, class_weight: str | None = None) -> np.ndarray:
    """(photos, classes) probabilities of each photo's plain view by a logistic head fitted on the other folds.

    ``features`` is (photos, views, dim), the plain view first (:func:`hf_model.training.cached_features`);
    the head learns from every view of the other folds' photos. Folds are stratified, grouped by ``groups``
    (a photo's digest: copies of one photo never sit on both sides) and at most as many as the largest class
    has photos (:func:`hf_model.heads.inner_folds`). ``C`` is the head's inverse L2 strength; ``None``
    chooses it once by inner cross-validation on all photos (logged). Raises
    :class:`~hf_model.data.DataError` when every class has one photo (nothing can be held out).
    """
    labels = np.asarray(labels)
    groups = None if groups is None else np.asarray(groups)
    folds = inner_folds(labels, groups, n_folds, seed)
    if not folds:
        raise DataError("out-of-fold probabilities need a class with at least 2 labeled photos (one held out, one "
                        "to learn from); every class here has 1")
    if C is None:
        C = fit_head("logistic", features, labels, n_classes, groups=groups, class_weight=class_weight, seed=seed).C
    logger.info("out-of-fold probabilities: logistic head (C=%g) on %d folds of %d photos", C, len(folds),
                len(labels))

    def fit(x: np.ndarray, y: np.ndarray) -> LinearHead:  # a C given: one L-BFGS fit, no inner cross-validation
        return fit_head("logistic", x, y, n_classes, class_weight=class_weight, C=C)

    logits = out_of_fold_logits(fit, features, labels, n_classes, folds)
    return softmax(logits)


def find_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the photos whose label is likely wrong, the likeliest first (confident learning, cleanlab).

    ``probs`` (photos, classes) must be out of fold. cleanlab's default filter (``prune_by_noise_rate``)
    flags photos confidently predicted as another class, as many per pair of classes as the noise it
    estimates; a flagged photo's most probable class is never its given one. Ranked by self-confidence,
    the probability of the given label, lowest first.
    """
    ranked = find_label_issues(np.asarray(labels), np.asarray(probs, dtype=np.float64),
                               return_indices_ranked_by="self_confidence", n_jobs=1)  # no process pool: it is small
    return np.asarray(ranked, dtype=int)


# ---------------------------------------------------------------- a run's photos

@dataclass
class LabeledPhotos:
    """A run's labeled photos in one dataset (its train, validation and test splits in turn) and their origin.

    ``splits[i]`` / ``indices[i]``: photo ``i``'s split and index in it, as :func:`hf_model.data.load_data`
    rebuilds the run; ``files[i]``: its file, or ``""`` for a photo with no local file (a Hub dataset's).
    """

    dataset: Dataset
    splits: list[str]
    indices: list[int]
    files: list[str]


def load_finished_run(run_dir: str | Path) -> RunRecord:
    """The run record of ``run_dir``. Raises :class:`~hf_model.run_folder.RunFolderError` for an unfinished run
    or an unreadable record, ``FileNotFoundError`` for a folder with no record (not a run of ``train.py``)."""
    require_finished(run_dir)
    try:
        return load_run_config(run_dir)
    except ValueError as err:  # a record without its config section
        raise RunFolderError(str(err)) from err


def load_labeled_photos(record: RunRecord, run_dir: str | Path, data_dir: str | None = None) -> LabeledPhotos:
    """The run's labeled photos rebuilt as it built them (its data, seed and fold); ``data_dir`` if they moved.

    Warns when the splits differ from the run's record (photos added or removed since). Raises
    ``FileNotFoundError`` when the photos are not where the record (or ``data_dir``) says.
    """
    cfg = replace(record.config, data_dir=data_dir) if data_dir else record.config
    try:
        data = load_data(cfg, record.training_args.seed, record.cv_fold)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}: {run_dir} was trained on photos that are not there now; pass --data_dir "
                                "with where they are") from err
    splits = [name for name in HAND_LABELED_SPLITS if name in data]
    sizes = {name: len(data[name]) for name in splits}
    recorded = {name: record.split_sizes[name] for name in splits if name in record.split_sizes}
    if recorded and recorded != sizes:
        logger.warning("the photos have changed since %s was trained (splits then: %s; now: %s): flagging the "
                       "photos there now", run_dir, recorded, sizes)
    dataset = concatenate_datasets([data[name] for name in splits])
    cells = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    files = [cell["path"] if cell.get("path") and Path(cell["path"]).is_file() else "" for cell in cells]
    return LabeledPhotos(dataset, [name for name in splits for _ in range(sizes[name])],
                         [i for name in splits for i in range(sizes[name])], files)


def recorded_head_C(run_dir: str | Path) -> float | None:
    """The logistic head's ``C`` the run chose (``all_results.json``, ``chosen.head_C``); None when it chose none."""
    path = Path(run_dir) / "all_results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return (results.get("chosen") or {}).get("head_C")


# ---------------------------------------------------------------- the command's work

@dataclass
class LabelIssues:
    """What :func:`label_issues` found: ``ranked`` indices into ``photos`` (the likeliest mislabeled first),
    every photo's out-of-fold ``probs`` (photos, classes) and given ``labels``, and the class names."""

    photos: LabeledPhotos
    labels: np.ndarray
    probs: np.ndarray
    ranked: np.ndarray
    label_names: list[str]

    def rows(self) -> list[dict]:
        """One CSV row per flagged photo, ranked (:data:`CSV_COLUMNS`)."""
        rows = []
        for rank, i in enumerate(self.ranked, start=1):
            given, suggested = int(self.labels[i]), int(self.probs[i].argmax())
            rows.append({"rank": rank, "file": self.photos.files[i], "split": self.photos.splits[i],
                         "index": self.photos.indices[i], "given_label": self.label_names[given],
                         "suggested_label": self.label_names[suggested], "p_given": f"{self.probs[i, given]:.4f}",
                         "p_suggested": f"{self.probs[i, suggested]:.4f}"})
        return rows

    def per_class(self) -> str:
        """``Modern 4 of 200, Old 3 of 251``: flagged and labeled photos per given class, the most flagged first."""
        flagged = np.bincount(self.labels[self.ranked], minlength=len(self.label_names))
        labeled = np.bincount(self.labels, minlength=len(self.label_names))
        order = sorted(range(len(self.label_names)), key=lambda c: -flagged[c])  # stable: class order among ties
        shown = [f"{self.label_names[c]} {flagged[c]} of {labeled[c]}" for c in order[:CLASSES_LISTED]]
        rest = len(order) - CLASSES_LISTED
        return ", ".join(shown) + (f", and {rest} more classes" if rest > 0 else "")


def label_issues(run_dir: str | Path, *, n_folds: int = INNER_FOLDS, data_dir: str | None = None) -> LabelIssues:
    """Find the likely mislabeled photos of the finished run in ``run_dir`` (see the module's docstring).

    Features come from the run's feature cache (computed where missing) with its backbone, image size,
    augmentation and ``feature_views``; the head uses the run's chosen ``C`` and class weights, and the
    folds its seed. Raises ``FileNotFoundError`` (no run record, photos moved),
    :class:`~hf_model.run_folder.RunFolderError` (an unfinished run) or :class:`~hf_model.data.DataError`
    (photos that cannot be read, or too few to hold any out).
    """
    record = load_finished_run(run_dir)
    photos = load_labeled_photos(record, run_dir, data_dir)
    names = photos.dataset.features["label"].names
    cfg, args = record.config, record.training_args
    features = cached_features(cfg, args, setup_model(cfg, names), photos.dataset, cfg.feature_views)
    labels = np.asarray(photos.dataset["label"])
    probs = out_of_fold_probabilities(features, labels, len(names), groups=photo_digests(photos.dataset),
                                      n_folds=n_folds, seed=args.seed, C=recorded_head_C(run_dir),
                                      class_weight="balanced" if cfg.class_weights == "auto" else None)
    return LabelIssues(photos, labels, probs, find_issues(labels, probs), names)


def write_label_issues(issues: LabelIssues, output_dir: str | Path, top: int = DEFAULT_TOP) -> tuple[Path, Path]:
    """``label_issues.csv`` (every flagged photo, ranked) and ``label_issues.png`` (the first ``top``), each
    replaced whole, in ``output_dir`` (made if missing); returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = output_dir / LABEL_ISSUES_CSV, output_dir / LABEL_ISSUES_PNG
    with atomic_write(csv_path, newline="") as out:  # a killed run leaves no half CSV under the real name
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(issues.rows())
    fig = draw_label_issues(issues, top)
    with atomic_write(png_path, "wb") as out:
        fig.savefig(out, dpi=DPI, format="png")
    return csv_path, png_path


def draw_label_issues(issues: LabelIssues, top: int = DEFAULT_TOP) -> Figure:
    """Contact sheet of the ``top`` likeliest mislabeled photos, each titled rank, given → suggested, probabilities.

    The grid is :func:`hf_model.reports.draw_top_losses`'s. Its order is by loss, -log p(given), which is
    cleanlab's ranking (its sort is stable, so ties keep the CSV's order); the titles are then rewritten.
    """
    shown = issues.ranked[:top]
    given, suggested = issues.labels[shown], issues.probs[shown].argmax(axis=1)
    p_given, p_suggested = issues.probs[shown, given], issues.probs[shown, suggested]
    given_names = [issues.label_names[c] for c in given]
    suggested_names = [issues.label_names[c] for c in suggested]
    fig = draw_top_losses(list(issues.photos.dataset.select(shown)["image"]), given_names, suggested_names, p_suggested,
                          k=len(shown), losses=-np.log(np.clip(p_given, 1e-12, None)))
    if not len(shown):
        fig.suptitle("No photo flagged as likely mislabeled")
        return fig
    title = (f"The {len(shown)} photos most likely mislabeled ({len(issues.ranked)} flagged by cleanlab): "
             "given label → suggested, out-of-fold probabilities")
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())))  # one photo wide: several lines
    for rank, (ax, g, s, pg, ps) in enumerate(zip(fig.axes, given_names, suggested_names, p_given, p_suggested), 1):
        ax.set_title(f"{rank}. {_short(g)} → {_short(s)}\np(given) {pg:.2f}, p(suggested) {ps:.2f}", fontsize=9)
    return fig


def _short(label: str, width: int = 22) -> str:
    return textwrap.shorten(label, width=width, placeholder="…")


@command("hf-model label-issues")
def main(argv: list[str] | None = None) -> None:
    """``hf-model label-issues RUN_DIR [--output_dir DIR] [--top N] [--folds K] [--data_dir DIR]``."""
    parser = argparse.ArgumentParser(prog="hf-model label-issues", epilog=EXIT_CODES, description=(
        "List the labeled photos of a finished run most likely mislabeled (confident learning, cleanlab): a ranked "
        f"{LABEL_ISSUES_CSV} and a contact sheet {LABEL_ISSUES_PNG}. No label is changed."))
    parser.add_argument("run_dir", help="a finished training run (train.py --output_dir)")
    parser.add_argument("--output_dir", help=f"where {LABEL_ISSUES_CSV} and {LABEL_ISSUES_PNG} go (default: run_dir)")
    parser.add_argument("--top", type=whole_number(1), default=DEFAULT_TOP, help="photos on the contact sheet")
    parser.add_argument("--folds", type=whole_number(2), default=INNER_FOLDS,
                        help="cross-validation folds of the out-of-fold probabilities (at most the largest class's "
                             "photos)")
    parser.add_argument("--data_dir", help="the run's photos, if not where its hf_model_config.json says")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir or args.run_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output_dir {output_dir} is a file: give a folder")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    issues = label_issues(args.run_dir, n_folds=args.folds, data_dir=args.data_dir)
    csv_path, png_path = write_label_issues(issues, output_dir, args.top)
    shown = (f"the first {min(args.top, len(issues.ranked))} shown in {png_path}" if len(issues.ranked)
             else f"nothing to show in {png_path}")
    print(f"{len(issues.ranked)} of {len(issues.labels)} labeled photos flagged as likely mislabeled "
          f"({issues.per_class()}): ranked in {csv_path}, {shown}. No label was changed.", flush=True)
