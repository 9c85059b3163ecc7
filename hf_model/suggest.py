"""``hf-model suggest-labels MODEL_DIR FOLDER --n 50``: the unlabeled photos whose labels would teach the model most.

Uncertainty sampling, kept diverse. A photo the model is unsure of teaches it more, once labeled, than one it
already gets right (Lewis & Gale 1994; the margin between the two likeliest classes: Scheffer, Decomain &
Wrobel 2001, "Active Hidden Markov Models for Information Extraction"; Settles 2009, "Active Learning
Literature Survey", section 3.1). Taken alone, the n most uncertain photos are often n views of one
confusing scene, so, as in diverse mini-batch active learning (Zhdanov 2019, "Diverse mini-batch Active
Learning") and Cluster-Margin (Citovsky et al. 2021, "Batch Active Learning at Scale"): the most uncertain
``pool_factor`` x n photos are clustered by k-means (scikit-learn) on their L2-normalized pooled backbone
features (the classifier layer's input, :mod:`hf_model.features`) into n clusters, and each cluster gives
its most uncertain photo. Near-duplicate photos (the perceptual hashes :mod:`hf_model.data` splits by)
count once, and near-copies of photos already labeled are not candidates at all.

The command writes ``suggestions.csv`` (ranked, the most uncertain first) and a contact sheet
``suggestions.png``; ``benchmarks/label_selection.py`` measures the same :func:`select_for_labeling`
against labeling at random.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import normalize

from hf_model.adapters import adapter_for
from hf_model.atomic import atomic_write
from hf_model.backbones import default_cache_dir, weights_version
from hf_model.data import (
    SPLIT_FOLDERS,
    detect_layout,
    near_duplicate_groups,
    read_bedroom_labels,
    read_birds_csv,
    read_metadata_labels,
    scan_images,
)
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.features import cache_key, extract_features
from hf_model.flags import whole_number
from hf_model.images import list_images
from hf_model.metrics import softmax
from hf_model.predict import expand_paths, load_or_explain, read_photo
from hf_model.reports import new_figure, save_figure

logger = logging.getLogger("hf_model")

PROG = "hf-model suggest-labels"
SUGGESTIONS_CSV = "suggestions.csv"
SUGGESTIONS_PNG = "suggestions.png"
CSV_COLUMNS = ("rank", "file", "uncertainty", "margin", "predicted_label", "p_predicted", "second_label",
               "p_second", "cluster", "cluster_size")
MEASURES = ("margin", "entropy")
DEFAULT_N = 50
# Candidates clustered: this times n, the most uncertain. Zhdanov's 10x suits pools of many thousands; a
# folder of hundreds would then cluster nearly every photo and uncertainty would barely count.
DEFAULT_POOL_FACTOR = 5
SHEET_COLUMNS = 10  # thumbnails per row of the contact sheet
THUMBNAIL_INCHES = 1.4
SHEET_DPI = 90  # thumbnails about 125 px: enough to judge a photo, and 50 of them stay near 1 MB
THUMBNAIL_PIXELS = 200  # each photo shrunk to this before drawing: drawing stays fast however large the photos
EXIT_CODES = exit_statuses("suggestions written", "nothing to suggest, or the model or folder is unusable")


# ---------------------------------------------------------------- the method, on arrays

def uncertainty(probs: np.ndarray, measure: str = "margin") -> np.ndarray:
    """(photos,) uncertainty in [0, 1] of (photos, classes) probabilities, classes >= 2: higher is less sure.

    ``margin``: 1 - (p1 - p2), the two likeliest classes' probabilities (Scheffer et al. 2001);
    ``entropy``: the entropy of the probabilities divided by log(classes) (Settles 2009). Raises
    ``ValueError`` for another measure or fewer than two classes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be (photos, classes) with at least 2 classes, got shape {probs.shape}")
    if measure == "margin":
        top_two = np.sort(probs, axis=1)[:, -2:]
        return 1.0 - (top_two[:, 1] - top_two[:, 0])
    if measure == "entropy":
        entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=1)
        return entropy / math.log(probs.shape[1])
    raise ValueError(f"unknown uncertainty measure {measure!r}; choose from {list(MEASURES)}")


@dataclass
class Selection:
    """What :func:`select_for_labeling` chose: ``indices`` into the candidates, the most uncertain first, the
    k-means ``cluster`` (0..) each came from and the ``cluster_size`` (uncertain candidates it stands for), every
    candidate's ``uncertainty``, and ``pool``, how many of the most uncertain candidates were clustered."""

    indices: np.ndarray
    cluster: np.ndarray
    cluster_size: np.ndarray
    uncertainty: np.ndarray
    pool: int


def select_for_labeling(features: np.ndarray, probs: np.ndarray, n: int, *, measure: str = "margin",
                        pool_factor: int = DEFAULT_POOL_FACTOR, groups: np.ndarray | None = None,
                        seed: int = 0) -> Selection:
    """The ``n`` candidates to label next: uncertain, and unlike each other (see the module's docstring).

    ``features`` is (candidates, dim), pooled backbone features; ``probs`` (candidates, classes) the model's
    probabilities; ``groups`` (candidates,) near-duplicate group ids, of which at most one photo (the most
    uncertain) is chosen. The ``pool_factor`` x ``n`` most uncertain (one per group) are clustered into ``n``
    by k-means on L2-normalized features (seeded); each cluster gives its most uncertain photo. Where k-means
    leaves a cluster empty (identical features), the next most uncertain photos of the pool fill the places.
    Returns fewer than ``n`` when fewer distinct candidates exist. Ties in uncertainty go to the lower index.
    Raises ``ValueError`` for ``n`` < 1, a ``pool_factor`` < 1, or arrays of different lengths.
    """
    features, probs = np.asarray(features, dtype=np.float64), np.asarray(probs)
    if n < 1 or pool_factor < 1:
        raise ValueError(f"n and pool_factor must be at least 1, got n={n}, pool_factor={pool_factor}")
    if not len(features) == len(probs) == (len(groups) if groups is not None else len(probs)):
        raise ValueError(f"{len(features)} feature rows, {len(probs)} probability rows"
                         + (f" and {len(groups)} groups" if groups is not None else "") + ": one row per candidate")
    scores = uncertainty(probs, measure)
    ranked = np.argsort(-scores, kind="stable")
    if groups is not None:  # one photo per near-duplicate group: its most uncertain
        _, first = np.unique(np.asarray(groups)[ranked], return_index=True)
        ranked = ranked[np.sort(first)]
    pool = ranked[:pool_factor * n]
    k = min(n, len(pool))
    if k == len(pool):  # nothing to choose between: every candidate is its own cluster
        return Selection(pool, np.arange(k), np.ones(k, dtype=int), scores, len(pool))
    with warnings.catch_warnings():  # identical features: fewer distinct clusters than k, filled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        clusters = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit_predict(normalize(features[pool]))
    _, first_of_cluster = np.unique(clusters, return_index=True)  # pool is sorted: the first is the most uncertain
    chosen = np.sort(first_of_cluster)
    if len(chosen) < k:
        chosen = np.sort(np.r_[chosen, np.setdiff1d(np.arange(len(pool)), chosen)[:k - len(chosen)]])
    sizes = np.bincount(clusters, minlength=k)
    return Selection(pool[chosen], clusters[chosen], sizes[clusters[chosen]], scores, len(pool))


# ---------------------------------------------------------------- a folder's candidates

@dataclass
class Candidates:
    """The photos of a folder that may be suggested, and what was left out (counts and reasons for the summary).

    ``files`` are readable photos, neither labeled nor near-copies of a labeled photo; ``groups`` their
    near-duplicate group ids. ``labeled``: photos the folder's layout labels (``label_source`` says how);
    ``near_labeled``: candidates left out as near-copies of labeled photos; ``unreadable``: files that did not
    decode; ``not_images``: other files.
    """

    files: list[Path]
    groups: np.ndarray
    labeled: int
    label_source: str
    near_labeled: int
    unreadable: list[Path]
    not_images: int


def labeled_files(folder: Path, class_names: list[str]) -> tuple[set[Path], str]:
    """The photos under ``folder`` that already have a label (resolved paths) and where the labels come from.

    The bedroom layout (``labels.csv`` / ``labels.txt``), ``birds.csv`` and a ``metadata.csv`` (``.jsonl``,
    ``.parquet``) with a label column label the files they list (:mod:`hf_model.data`'s readers); in any other
    folder a photo is labeled when it sits in a folder named for one of the model's classes (``Modern/a.jpg``, or
    ``train/Modern/a.jpg``). Raises :class:`~hf_model.data.DataError` for a label file that cannot be read.
    """
    layout = detect_layout(folder)
    if layout in ("bedrooms", "birds"):
        found = read_bedroom_labels(folder) if layout == "bedrooms" else read_birds_csv(folder)
        return {Path(f).resolve() for f in found.files}, found.label_source
    found = read_metadata_labels(folder)
    if found is not None:  # the datasets ImageFolder layout: metadata.csv's label column
        return {Path(f).resolve() for f in found.files}, found.label_source
    classes = set(class_names)
    labeled = {path.resolve() for path in list_images(folder) if _in_class_folder(path.relative_to(folder), classes)}
    return labeled, "folders named for the model's classes"


def _in_class_folder(relative: Path, classes: set[str]) -> bool:
    folders = relative.parts[:-1]
    if folders and folders[0].lower() in SPLIT_FOLDERS:
        folders = folders[1:]
    return bool(folders) and folders[0] in classes


def find_candidates(folder: Path, class_names: list[str]) -> Candidates:
    """The readable, unlabeled photos under ``folder`` (sorted by path) with their near-duplicate groups.

    Every photo is decoded once (:func:`hf_model.data.scan_images`), labeled ones too: a candidate within
    :data:`~hf_model.data.NEAR_DUPLICATE_BITS` of a labeled photo is a copy of it and is left out. Raises
    :class:`~hf_model.data.DataError` for a label file that cannot be read.
    """
    entries = expand_paths([str(folder)])
    photos = [path for path, reason in entries if reason is None]
    labeled, source = labeled_files(folder, class_names)
    is_labeled = np.array([path.resolve() in labeled for path in photos], dtype=bool)
    hashes, readable = scan_images(map(str, photos), skip_bad_images=True)  # logs each unreadable file's error
    groups = np.full(len(photos), -1)
    groups[readable] = near_duplicate_groups(hashes[readable]) if readable.any() else []
    near_labeled = ~is_labeled & readable & np.isin(groups, groups[is_labeled & readable])
    keep = ~is_labeled & readable & ~near_labeled
    unreadable = [path for path, bad in zip(photos, ~is_labeled & ~readable) if bad]
    return Candidates([path for path, k in zip(photos, keep) if k], groups[keep], int(is_labeled.sum()), source,
                      int(near_labeled.sum()), unreadable, len(entries) - len(photos))


# ---------------------------------------------------------------- the model's view of them

def features_and_probabilities(model: torch.nn.Module, transform, files: list[Path], source: str,
                               batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(photos, dim) pooled features and (photos, classes) probabilities of ``files`` under the model.

    One forward pass per photo, cached (:func:`hf_model.features.extract_features`, under
    ``<default_cache_dir>/features/<model key>/eval``, keyed by the model's weight files and preprocessing
    configs, so a model trained again in place is not read from a stale cache); the probabilities are the
    classifier layer applied to the cached features (stored in float16: they may differ from
    ``hf-model predict``'s in the fourth decimal).
    """
    dataset = Dataset.from_dict({"image": [str(f) for f in files]}, features=Features({"image": ImageFeature()}))
    configs = sorted(Path(source).glob("*config.json")) if Path(source).is_dir() else []
    key = cache_key(weights_version(source), *(path.read_text() for path in configs))
    features = extract_features(model, dataset, [transform], default_cache_dir() / "features" / key / "eval",
                                batch_size=batch_size, desc="features of the candidates")[:, 0]
    classifier = adapter_for(model).classifier(model)
    weight = classifier.weight.detach().float().cpu().numpy()
    bias = classifier.bias.detach().float().cpu().numpy() if classifier.bias is not None else 0.0
    return features, softmax(features @ weight.T + bias)


# ---------------------------------------------------------------- the command's outputs

def suggestion_rows(files: list[Path], selection: Selection, probs: np.ndarray, label_names: list[str]) -> list[dict]:
    """One CSV row per suggestion, ranked (:data:`CSV_COLUMNS`).

    Clusters are numbered 1.. in the order they first appear: one per row, unless k-means left clusters
    empty and a cluster gave two photos.
    """
    numbers: dict[int, int] = {}
    rows = []
    for rank, (i, cluster, size) in enumerate(zip(selection.indices, selection.cluster, selection.cluster_size), 1):
        first, second = np.argsort(-probs[i], kind="stable")[:2]
        rows.append({"rank": rank, "file": str(files[i]), "uncertainty": f"{selection.uncertainty[i]:.4f}",
                     "margin": f"{probs[i, first] - probs[i, second]:.4f}", "predicted_label": label_names[first],
                     "p_predicted": f"{probs[i, first]:.4f}", "second_label": label_names[second],
                     "p_second": f"{probs[i, second]:.4f}",
                     "cluster": numbers.setdefault(int(cluster), len(numbers) + 1), "cluster_size": int(size)})
    return rows


def draw_contact_sheet(rows: list[dict], title: str) -> Figure:
    """A grid of the suggested photos (:data:`SHEET_COLUMNS` a row), each titled rank, predicted label, probability."""
    columns = max(1, min(SHEET_COLUMNS, len(rows)))
    grid_rows = max(1, math.ceil(len(rows) / columns))
    fig = new_figure(THUMBNAIL_INCHES * columns + 0.2, (THUMBNAIL_INCHES + 0.35) * grid_rows + 0.5)
    fig.suptitle(textwrap.fill(title, width=int(12 * fig.get_figwidth())), fontsize=9)
    for ax, row in zip(np.atleast_1d(fig.subplots(grid_rows, columns)).ravel(), rows):
        image = read_photo(Path(row["file"]))
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        ax.imshow(np.asarray(image))
        label = textwrap.shorten(row["predicted_label"], width=16, placeholder="…")
        ax.set_title(f"{row['rank']}. {label} {float(row['p_predicted']):.2f}", fontsize=7)
    for ax in fig.axes:
        ax.set_axis_off()
    return fig


def write_suggestions(rows: list[dict], output_dir: Path, title: str) -> tuple[Path, Path]:
    """``suggestions.csv`` and ``suggestions.png`` in ``output_dir`` (made if missing), each replaced whole."""
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = output_dir / SUGGESTIONS_CSV, output_dir / SUGGESTIONS_PNG
    with atomic_write(csv_path, newline="") as out:  # a killed run leaves no half CSV under the real name
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    save_figure(draw_contact_sheet(rows, title), png_path, dpi=SHEET_DPI)
    return csv_path, png_path


def describe_candidates(folder: Path, found: Candidates) -> str:
    """One line: the photos found, what was left out and why, and how many are candidates."""
    left_out = []
    if found.labeled:
        left_out.append(f"{found.labeled} already labeled ({found.label_source})")
    if found.near_labeled:
        left_out.append(f"{found.near_labeled} near-copies of labeled photos")
    if found.unreadable:
        names = ", ".join(p.name for p in found.unreadable[:3]) + (", ..." if len(found.unreadable) > 3 else "")
        left_out.append(f"{len(found.unreadable)} unreadable ({names})")
    if found.not_images:
        what = "file that is not an image" if found.not_images == 1 else "files that are not images"
        left_out.append(f"{found.not_images} {what}")
    return (f"{folder}: {len(found.files)} candidate photo{'s' if len(found.files) != 1 else ''}"
            + (f"; left out: {', '.join(left_out)}" if left_out else ""))


@command(PROG)
def main(argv: list[str] | None = None) -> None:
    """``hf-model suggest-labels MODEL_DIR FOLDER [--n N] [--output_dir DIR] [--measure M] [--batch_size B]``."""
    parser = argparse.ArgumentParser(prog=PROG, epilog=EXIT_CODES, description=(
        "Rank the unlabeled photos of a folder by how much labeling them would teach the model: the most uncertain, "
        f"kept diverse by clustering their features. Writes {SUGGESTIONS_CSV} and a contact sheet {SUGGESTIONS_PNG}."))
    parser.add_argument("model_dir", help="a trained model folder (train.py --output_dir) or Hub id")
    parser.add_argument("folder", help="photos to choose from; in a training folder only its unlabeled photos")
    parser.add_argument("--n", type=whole_number(1), default=DEFAULT_N, help="photos to suggest")
    parser.add_argument("--output_dir", default="label_suggestions",
                        help=f"where {SUGGESTIONS_CSV} and {SUGGESTIONS_PNG} go (default: ./label_suggestions)")
    parser.add_argument("--measure", choices=MEASURES, default="margin",
                        help="uncertainty: margin between the two likeliest classes, or entropy")
    parser.add_argument("--pool_factor", type=whole_number(1), default=DEFAULT_POOL_FACTOR,
                        help="the pool_factor x n most uncertain photos are clustered into n")
    parser.add_argument("--batch_size", type=whole_number(1), default=32, help="photos per forward pass")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="seed of the k-means clustering")
    args = parser.parse_args(argv)
    folder, output_dir = Path(args.folder), Path(args.output_dir)
    if not folder.is_dir():
        parser.error(f"FOLDER {folder} is not a folder: give the folder of photos to choose from")
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output_dir {output_dir} is a file: give a folder")

    model, transform = load_or_explain(args.model_dir)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    found = find_candidates(folder, label_names)
    print(describe_candidates(folder, found), flush=True)
    if not found.files:
        raise UserInputError(f"nothing to suggest: {folder} has no unlabeled photo the model can read")
    features, probs = features_and_probabilities(model, transform, found.files, args.model_dir, args.batch_size)
    selection = select_for_labeling(features, probs, args.n, measure=args.measure, pool_factor=args.pool_factor,
                                    groups=found.groups, seed=args.seed)
    if len(selection.indices) < args.n:
        print(f"note: --n {args.n} is more than the {len(selection.indices)} distinct candidates (near-duplicates "
              "count once): suggesting all of them", flush=True)
    rows = suggestion_rows(found.files, selection, probs, label_names)
    title = (f"The {len(rows)} photos to label next, the most uncertain first ({args.measure}; one per cluster of "
             f"the {selection.pool} most uncertain of {len(found.files)}): rank. predicted label, its probability")
    csv_path, png_path = write_suggestions(rows, output_dir, title)
    chosen = selection.uncertainty[selection.indices]
    print(f"{len(rows)} photos to label next, from {len(found.files)} candidates ({args.measure} uncertainty "
          f"{chosen.min():.2f} to {chosen.max():.2f}, one per cluster of the {selection.pool} most uncertain): "
          f"ranked in {csv_path}, contact sheet {png_path}", flush=True)
