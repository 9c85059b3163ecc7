"""Dataset builders: every source becomes a ``DatasetDict`` of ``image: Image()``, ``label: ClassLabel``.

Sources: the bedroom folder (``bed_N.jpg`` + ``labels.csv`` or ``labels.txt``), the Kaggle
birds layout (``birds.csv``), any ``imagefolder`` tree and any Hub dataset. Splits are seeded,
stratified by label and grouped so that near-duplicate photos (perceptual hash) always land
in the same split. Every photo is decoded once up front, so a broken file is reported here,
by name, and never deep inside a DataLoader.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, concatenate_datasets, load_dataset

from hf_model.config import DEFAULT_SEED, DEFAULT_SPLIT_FRACTIONS, TrainConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BEDROOM_CLASSES = {"M": "Modern", "O": "Old"}
# Two photos are near-duplicates when both their 64-bit pHash and dHash differ in at most
# this many bits (the rule behind shared/data/bedrooms/duplicates.csv).
NEAR_DUPLICATE_BITS = 10


class BadImageError(ValueError):
    """A file that should be a photo cannot be decoded."""


@dataclass
class LabeledFiles:
    """What a folder layout yields before splitting: photo paths, class names, provenance."""

    files: list[str]
    labels: list[int]
    class_names: list[str]
    unlabeled: list[str]
    label_source: str


def build_dataset(
    data_dir: str | None = None,
    dataset_name: str | None = None,
    *,
    labels_file: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = DEFAULT_SEED,
    skip_bad_images: bool = False,
    cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """Build the train/validation/test (and, for bedrooms, unlabeled) splits from a folder or a Hub id.

    ``cv_fold=(i, k)`` makes fold ``i`` of a stratified grouped ``k``-fold split the test set (for
    cross-validation); validation is then carved from the rest in the train:validation ratio.
    """
    if dataset_name:
        return build_hub_dataset(dataset_name, image_column, label_column, split_fractions, seed, skip_bad_images,
                                 cv_fold)
    if not data_dir:
        raise ValueError("give a --data_dir (a folder of photos) or a --dataset (a Hub dataset id)")
    layout = detect_layout(data_dir)
    if layout == "bedrooms":
        found = read_bedroom_labels(data_dir, labels_file)
    elif layout == "birds":
        found = read_birds_csv(data_dir)
    else:
        return build_imagefolder_dataset(data_dir, split_fractions, seed, skip_bad_images, cv_fold)
    return split_labeled_files(found, split_fractions, seed, skip_bad_images, cv_fold)


def load_data(cfg: TrainConfig, seed: int, cv_fold: tuple[int, int] | None = None) -> DatasetDict:
    """The splits a run with ``cfg`` and ``seed`` trains on: the one way every command rebuilds a run's data."""
    return build_dataset(cfg.data_dir, cfg.dataset, labels_file=cfg.labels_file, image_column=cfg.image_column,
                         label_column=cfg.label_column, split_fractions=cfg.split_fractions, seed=seed,
                         skip_bad_images=cfg.skip_bad_images, cv_fold=cv_fold)


def training_photos(data: DatasetDict, oversample: bool, seed: int) -> Dataset:
    """The train split, plus the ``pseudo_labeled`` split of self-training, oversampled when asked."""
    photos = data["train"]
    if "pseudo_labeled" in data:
        photos = concatenate_datasets([photos, data["pseudo_labeled"]])
    return oversampled(photos, seed) if oversample else photos


def oversampled(dataset: Dataset, seed: int) -> Dataset:
    """Repeat photos of the smaller classes until every class is as large as the largest."""
    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    target = np.bincount(labels).max()
    ids = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        extra = rng.choice(members, target - len(members), replace=True) if len(members) < target else []
        ids += [*members, *extra]
    return dataset.select(sorted(ids))


def detect_layout(data_dir: str | Path) -> str:
    """``bedrooms`` (bed_N.jpg + labels), ``birds`` (birds.csv) or ``imagefolder`` (class folders)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    if (root / "birds.csv").is_file():
        return "birds"
    if any(root.glob("bed_*.jpg")) and ((root / "labels.csv").is_file() or (root / "labels.txt").is_file()):
        return "bedrooms"
    return "imagefolder"


def read_bedroom_labels(data_dir: str | Path, labels_file: str | None = None) -> LabeledFiles:
    """Pair ``bed_N.jpg`` photos with Modern/Old labels from ``labels.csv`` or ``labels.txt``.

    ``labels.csv`` (file,label) names each photo, so it survives missing files. ``labels.txt``
    is the write-up's 451 characters: label i belongs to the i-th existing ``bed_N.jpg`` of the
    *full* Kaggle folder in ascending N. If ``labeled_order.txt`` sits beside it, that file
    gives the corrected order; otherwise the rule is applied to this folder, which is only
    right if no Kaggle file is missing (see shared/data/bedrooms/README.md).
    """
    root = Path(data_dir)
    photos = sorted(root.glob("bed_*.jpg"), key=_bed_number)
    path = Path(labels_file) if labels_file else root / "labels.csv"
    if not labels_file and not path.is_file():
        path = root / "labels.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no labels file: {path}")
    if path.suffix == ".csv":
        pairs = _read_label_csv(path)
        source = f"{path.name} (labels by file name)"
    else:
        pairs, source = _pair_labels_txt(path, photos)
    present = {p.name for p in photos}
    missing = [name for name in pairs if name not in present]
    if missing:
        logger.warning("%s: %d labeled files are not in %s (e.g. %s); they are skipped",
                       path, len(missing), root, missing[0])
    class_names = sorted(BEDROOM_CLASSES.values())
    files = [str(root / name) for name in pairs if name in present]
    labels = [class_names.index(BEDROOM_CLASSES[pairs[Path(f).name]]) for f in files]
    unlabeled = [str(p) for p in photos if p.name not in pairs]
    return LabeledFiles(files, labels, class_names, unlabeled, source)


def _bed_number(path: Path) -> int:
    return int(re.search(r"bed_(\d+)", path.name).group(1))


def _read_label_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a header 'file,label' and one row per photo")
    pairs = {}
    for line, row in enumerate(rows, start=2):
        label = row["label"].strip().upper()
        if label not in BEDROOM_CLASSES:
            raise ValueError(f"{path}:{line}: label {row['label']!r} is not one of {sorted(BEDROOM_CLASSES)}")
        pairs[row["file"].strip()] = label
    return pairs


def _pair_labels_txt(path: Path, photos: list[Path]) -> tuple[dict[str, str], str]:
    letters = path.read_text().strip()
    bad = sorted(set(letters) - set(BEDROOM_CLASSES))
    if bad:
        raise ValueError(f"{path}: unexpected characters {bad}; expected only {sorted(BEDROOM_CLASSES)}")
    order_file = path.with_name("labeled_order.txt")
    if order_file.is_file():
        order = order_file.read_text().split()
        if len(order) != len(letters):
            raise ValueError(f"{order_file} lists {len(order)} files but {path} has {len(letters)} labels")
        return dict(zip(order, letters)), f"{path.name} paired by {order_file.name} (corrected Kaggle order)"
    logger.warning("%s: pairing label i with the i-th bed_N.jpg here; this is only right if no Kaggle photo "
                   "is missing from the folder (prefer labels.csv)", path)
    return dict(zip((p.name for p in photos), letters)), f"{path.name} (i-th label -> i-th bed_N.jpg here)"


def read_birds_csv(data_dir: str | Path) -> LabeledFiles:
    """The Kaggle BIRDS-525 layout: ``birds.csv`` (class id, filepaths, labels, ...) + class folders."""
    root = Path(data_dir)
    path = root / "birds.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filepaths", "labels"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns 'filepaths' and 'labels' in the header")
    class_names = sorted({row["labels"].strip() for row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    files = [str(root / row["filepaths"].strip()) for row in rows]
    labels = [index[row["labels"].strip()] for row in rows]
    return LabeledFiles(files, labels, class_names, [], f"{path.name} ({len(class_names)} species)")


def split_labeled_files(
    found: LabeledFiles, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
    cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """Check every photo, group near-duplicates, and make the stratified grouped splits."""
    files, labels = found.files, np.asarray(found.labels)
    hashes, good = scan_images(files + found.unlabeled, skip_bad_images)
    n = len(files)
    keep = good[:n]
    groups = near_duplicate_groups(hashes)
    split_ids = stratified_group_split(labels[keep], groups[:n][keep], split_fractions, seed, cv_fold)
    features = Features({"image": Image(), "label": ClassLabel(names=found.class_names)})
    kept_files = [f for f, ok in zip(files, keep) if ok]
    out = DatasetDict()
    for name, ids in zip(SPLITS, split_ids):
        out[name] = Dataset.from_dict(
            {"image": [kept_files[i] for i in ids], "label": labels[keep][ids].tolist()}, features=features)
    if found.unlabeled:
        # An unlabeled photo that duplicates a labeled one would leak it into pseudo-labeling.
        labeled_groups = set(groups[:n].tolist())
        unlabeled = [f for i, f in enumerate(found.unlabeled)
                     if good[n + i] and groups[n + i] not in labeled_groups]
        out["unlabeled"] = Dataset.from_dict(
            {"image": unlabeled, "label": [-1] * len(unlabeled)}, features=features)
    out.label_source = found.label_source  # shown in the run summary and the card
    return out


def build_imagefolder_dataset(
    data_dir: str | Path, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
    cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """``class_name/*.jpg`` trees (optionally already split into train/validation/test folders)."""
    loaded = load_dataset("imagefolder", data_dir=str(data_dir))
    for split in loaded.values():
        if "label" not in split.column_names:
            raise ValueError(f"{data_dir}: no class folders found; expected {data_dir}/<class name>/<photo>.jpg")
    loaded = loaded.cast_column("image", Image(decode=False))
    class_names = loaded[next(iter(loaded))].features["label"].names
    if set(loaded) >= {"train", "test"} and cv_fold is None:
        return _check_presplit(loaded, class_names, skip_bad_images)
    merged = [ex for split in loaded.values() for ex in split]
    found = LabeledFiles([ex["image"]["path"] for ex in merged], [ex["label"] for ex in merged],
                         class_names, [], f"folder names under {data_dir}")
    return split_labeled_files(found, split_fractions, seed, skip_bad_images, cv_fold)


def _check_presplit(loaded: DatasetDict, class_names: list[str], skip_bad_images: bool) -> DatasetDict:
    out = DatasetDict()
    for name, split in loaded.items():
        _, good = scan_images([ex["path"] for ex in split["image"]], skip_bad_images)
        out["validation" if name == "valid" else name] = split.select(np.flatnonzero(good)).cast_column(
            "image", Image())
    if "validation" not in out:
        held = out["train"].train_test_split(test_size=0.15, stratify_by_column="label", seed=0)
        out["train"], out["validation"] = held["train"], held["test"]
    out.label_source = f"class folders ({len(class_names)} classes), splits from the folder"
    return out


def build_hub_dataset(
    name: str, image_column: str, label_column: str, split_fractions: Sequence[float], seed: int,
    skip_bad_images: bool, cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """A Hub dataset with an image and a label column; its own splits are kept when it has them."""
    loaded = load_dataset(name)
    first = loaded[next(iter(loaded))]
    for column in (image_column, label_column):
        if column not in first.column_names:
            raise ValueError(f"{name} has no column {column!r}; its columns are {first.column_names} "
                             "(set --image_column / --label_column)")
    loaded = loaded.select_columns([image_column, label_column])
    loaded = loaded.rename_columns({c: t for c, t in [(image_column, "image"), (label_column, "label")] if c != t})
    if not isinstance(first.features[label_column], ClassLabel):
        # one ClassLabel for every split: class_encode_column per split would number a split's classes on its own
        loaded = loaded.cast_column("label", Value("string"))  # ints too, named like class_encode_column does
        names = sorted({label for split in loaded.values() for label in split.unique("label")})
        loaded = loaded.cast_column("label", ClassLabel(names=names))
    loaded = loaded.cast_column("image", Image())
    if "validation" not in loaded and "valid" in loaded:
        loaded["validation"] = loaded.pop("valid")
    if all(s in loaded for s in SPLITS) and cv_fold is None:
        out = DatasetDict({s: loaded[s] for s in SPLITS})
    else:
        everything = _concatenate(list(loaded.values()))
        hashes, good = scan_images(everything["image"], skip_bad_images)
        labels = np.asarray(everything["label"])
        ids = np.flatnonzero(good)
        split_ids = stratified_group_split(labels[ids], near_duplicate_groups(hashes)[ids], split_fractions, seed,
                                           cv_fold)
        out = DatasetDict({s: everything.select(ids[i]) for s, i in zip(SPLITS, split_ids)})
    out.label_source = f"Hub dataset {name} (column {label_column!r})"
    return out


def _concatenate(parts: list[Dataset]) -> Dataset:
    from datasets import concatenate_datasets

    return concatenate_datasets(parts)


def scan_images(images: Iterable, skip_bad_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode every photo once: perceptual hashes (n, 2) and a mask of the readable ones.

    A file that does not decode raises :class:`BadImageError` naming it, or is skipped with a
    warning when ``skip_bad_images`` is set.
    """
    items = list(images)
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes without the GIL
        results = list(pool.map(_hash_one, items))
    hashes = np.zeros((len(items), 2), dtype=np.uint64)
    good = np.ones(len(items), dtype=bool)
    for i, (item, result) in enumerate(zip(items, results)):
        if isinstance(result, Exception):
            name = item if isinstance(item, str) else getattr(item, "filename", f"image #{i}")
            message = f"{name}: not a readable image ({type(result).__name__}: {result})"
            if not skip_bad_images:
                raise BadImageError(message + ". Fix or remove the file, or pass --skip_bad_images to skip it.")
            logger.warning("skipping %s", message)
            good[i] = False
        else:
            hashes[i] = result
    return hashes, good


def _hash_one(item) -> tuple[int, int] | Exception:
    import imagehash
    from PIL import Image as PILImage

    try:
        image = PILImage.open(item) if isinstance(item, str | Path) else item
        image.load()
        image = image.convert("RGB")
        return int(str(imagehash.phash(image)), 16), int(str(imagehash.dhash(image)), 16)
    except Exception as err:  # any decoder failure is reported against the file name
        return err


def near_duplicate_groups(hashes: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Connected components of the 'near-duplicate' relation: one group id per photo."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    rows, cols = [], []
    for start in range(0, n, 1024):  # chunks keep the pairwise table small for big folders
        block = hashes[start:start + 1024]
        close = np.ones((len(block), n), dtype=bool)
        for k in range(hashes.shape[1]):
            close &= np.bitwise_count(block[:, k, None] ^ hashes[None, :, k]) <= max_bits
        r, c = np.nonzero(close)
        rows.append(r + start)
        cols.append(c)
    graph = coo_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, split_fractions: Sequence[float], seed: int,
    cv_fold: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Indices of train/validation/test: stratified by label, no group in two splits, seeded.

    With ``cv_fold=(i, k)`` the test set is fold ``i`` of ``k`` instead of a ``split_fractions`` share.
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    fractions = np.asarray(split_fractions, dtype=float)
    if len(fractions) != 3 or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be three numbers (train, validation, test) summing to 1, "
                         f"got {list(split_fractions)}")

    def hold_out(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0:
            return idx, idx[:0]
        if fraction >= 1:
            return idx[:0], idx
        n_splits = max(2, round(1 / fraction))
        largest_class = np.unique(labels[idx], return_counts=True)[1].max()
        if largest_class < 2:  # one photo per class: nothing to stratify, keep groups whole
            folds = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            rest, held = next(folds.split(idx, groups=groups[idx]))
            return idx[rest], idx[held]
        if n_splits > largest_class:
            # Classes smaller than the fold count (e.g. 4 photos per bird): hold out one fold of
            # as many folds as the largest class allows, then keep the right share of that fold.
            rest, held = hold_out(idx, 1 / max(2, largest_class), seed)
            back, held = hold_out(held, min(1.0, fraction * max(2, largest_class)), seed + 100)
            return np.concatenate([rest, back]), held
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
            warnings.simplefilter("ignore", UserWarning)
            rest, held = next(folds.split(idx, labels[idx], groups[idx]))
        return idx[rest], idx[held]

    everything = np.arange(len(labels))
    if cv_fold is None:
        rest, test = hold_out(everything, fractions[2], seed)
    else:
        fold, n_folds = cv_fold
        if not 0 <= fold < n_folds:
            raise ValueError(f"cross-validation fold {fold} is not in 0..{n_folds - 1}")
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            everything, labels, groups)
        rest, test = list(splits)[fold]
    train, validation = hold_out(rest, fractions[1] / (fractions[0] + fractions[1]), seed + 1)
    return [np.sort(train), np.sort(validation), np.sort(test)]
