"""Dataset builders: every source becomes a ``DatasetDict`` of ``image: Image()``, ``label: ClassLabel``.

Sources: the bedroom folder (``bed_N.jpg`` + ``labels.csv`` or ``labels.txt``), the Kaggle
birds layout (``birds.csv``), the ``datasets`` ImageFolder layouts (class folders, or a ``metadata.csv``,
``.jsonl`` or ``.parquet`` whose ``file_name`` and label columns name each photo's class; either optionally
split in advance into train/, validation/, test/) and any Hub dataset.
Photos in folders are found with :func:`hf_model.images.list_images`, as prediction finds them.
Splits are seeded, stratified by label and grouped so that near-duplicate photos (perceptual
hash) always land in the same split. Every photo is decoded once up front, so a broken file is
reported here, by name, and never deep inside a DataLoader.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, concatenate_datasets, load_dataset

from hf_model.config import DEFAULT_SEED, DEFAULT_SPLIT_FRACTIONS, TrainConfig
from hf_model.distributed import main_process_result
from hf_model.exit_status import UserInputError
from hf_model.images import IMAGE_SUFFIXES, is_hidden, list_images, open_image, skipped_files

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Top-level folders that hold a split made in advance, under the names people give them.
SPLIT_FOLDERS = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "test": "test"}
LAYOUTS_ACCEPTED = (
    "Layouts accepted: class folders, <data_dir>/<class>/<photo> (photos may sit in subfolders of their class "
    "folder: bedroom/2022/a.jpg is a 'bedroom' photo); a metadata.csv (or metadata.jsonl, metadata.parquet) with "
    "columns file_name (the photo's path relative to the metadata file) and label (its class), as datasets' "
    "ImageFolder reads it; either inside <data_dir>/train/, validation/ (or valid/, val/) and test/ for splits made "
    "in advance; bed_N.jpg photos with labels.csv or labels.txt; birds.csv beside the photos it lists.")
# The metadata files of datasets' ImageFolder (FolderBasedBuilder.METADATA_FILENAMES) and the column naming each photo.
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
FILE_NAME_COLUMN = "file_name"
BEDROOM_CLASSES = {"M": "Modern", "O": "Old"}
# Two photos are near-duplicates when both their 64-bit pHash and dHash differ in at most
# this many bits (the rule behind shared/data/bedrooms/duplicates.csv).
NEAR_DUPLICATE_BITS = 10
CLASSES_LISTED = 12  # the log names each class and its count up to this many classes, then summarises


class DataError(UserInputError, ValueError):
    """The photos or labels given cannot be trained on as they are; the message names the file and the fix."""


class BadImageError(DataError):
    """A file that should be a photo cannot be decoded."""


@dataclass
class LabeledFiles:
    """What a folder layout yields before splitting: photo paths, class names, provenance."""

    files: list[str]
    labels: list[int]
    class_names: list[str]
    unlabeled: list[str]
    label_source: str


class LabelRow(NamedTuple):
    """One label read from an index file: where it was read (``labels.csv:5``), the photo it names, its label."""

    where: str
    file: str
    label: str

HAND_LABELED_SPLITS = ("train", "validation", "test")  # the unlabeled split (bedrooms) is not among them


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

    Raises:
        BadImageError: a photo does not decode (unless ``skip_bad_images``).
        ValueError: a layout, label file or class that cannot train a model; the message says what to change.
    """
    if dataset_name:
        return build_hub_dataset(dataset_name, image_column, label_column, split_fractions, seed, skip_bad_images,
                                 cv_fold)
    if not data_dir:
        raise DataError("give a --data_dir (a folder of photos) or a --dataset (a Hub dataset id)")
    layout = detect_layout(data_dir)
    if labels_file and layout == "imagefolder" and any(Path(data_dir).glob("bed_*.jpg")):
        layout = "bedrooms"  # bed_N.jpg photos whose labels file has another name
    if labels_file and layout != "bedrooms":  # read by the bed_N.jpg layout only: never ignore it silently
        raise DataError(f"--labels_file {labels_file}: only a folder of bed_N.jpg photos reads a labels file, and "
                        f"{data_dir} is not one (its labels come from {layout_labels(layout)}); to label photos from a "
                        "file, put a metadata.csv with file_name and label columns beside them")
    if layout == "bedrooms":
        found = read_bedroom_labels(data_dir, labels_file)
    elif layout == "birds":
        found = read_birds_csv(data_dir)
    else:
        return build_imagefolder_dataset(data_dir, split_fractions, seed, skip_bad_images, cv_fold, label_column)
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
    if root.is_file():
        raise DataError(f"data directory {root} is a file: give the folder that holds the photos")
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
    right if no Kaggle file is missing (see shared/data/bedrooms/README.md). Labeled files that
    are not here are skipped with a warning naming where they were listed.

    Raises:
        FileNotFoundError: no labels file.
        ValueError: a label that is not M or O, or more labels than photos (naming file, line and count).
    """
    root = Path(data_dir)
    photos = sorted(root.glob("bed_*.jpg"), key=_bed_number)
    path = Path(labels_file) if labels_file else root / "labels.csv"
    if not labels_file and not path.is_file():
        path = root / "labels.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no labels file: {path}")
    if path.suffix == ".csv":
        rows, source = _read_label_csv(path), f"{path.name} (labels by file name)"
    else:
        rows, source = _pair_labels_txt(path, photos)
    pairs = {row.file: row.label for row in _skip_missing(rows, root, {p.name for p in photos})}
    class_names = sorted(BEDROOM_CLASSES.values())
    files = [str(root / name) for name in pairs]
    labels = [class_names.index(BEDROOM_CLASSES[label]) for label in pairs.values()]
    unlabeled = [str(p) for p in photos if p.name not in pairs]
    return LabeledFiles(files, labels, class_names, unlabeled, source)


def _bed_number(path: Path) -> int:
    return int(re.search(r"bed_(\d+)", path.name).group(1))


def _read_label_csv(path: Path) -> list[LabelRow]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(f"{path}: expected a comma-separated header 'file,label' and one row per photo, got "
                        f"{list(rows[0]) if rows else 'no rows'}")
    labels: dict[str, LabelRow] = {}
    for line, row in enumerate(rows, start=2):
        label = (row["label"] or "").strip().upper()
        if label not in BEDROOM_CLASSES:
            raise DataError(f"{path}:{line}: label {row['label']!r} is not one of {sorted(BEDROOM_CLASSES)}")
        name = os.path.normpath((row["file"] or "").strip())  # ./bed_9.jpg is bed_9.jpg
        earlier = labels.get(name)
        if earlier and earlier.label != label:
            raise DataError(f"{path}:{line}: {name} is labeled {label} here but {earlier.label} at {earlier.where}; "
                            "keep one row per photo")
        labels.setdefault(name, LabelRow(f"{path.name}:{line}", name, label))
    return list(labels.values())


def _pair_labels_txt(path: Path, photos: list[Path]) -> tuple[list[LabelRow], str]:
    letters = _read_label_letters(path)
    order_file = path.with_name("labeled_order.txt")
    if order_file.is_file():
        order = [(line, name.strip()) for line, name in enumerate(order_file.read_text().splitlines(), start=1)
                 if name.strip()]
        if len(order) != len(letters):
            raise DataError(f"{order_file} lists {len(order)} files but {path} has {len(letters)} labels")
        rows = [LabelRow(f"{order_file.name}:{line}", name, letter) for (line, name), letter in zip(order, letters)]
        return rows, f"{path.name} paired by {order_file.name} (corrected Kaggle order)"
    if len(letters) > len(photos):
        raise DataError(f"{path} has {len(letters)} labels but {path.parent} has only {len(photos)} bed_N.jpg photos: "
                         f"label i goes to the i-th photo in ascending N, so {len(letters) - len(photos)} labels have "
                         "no photo and the others may belong to other photos. Put the missing photos back, give the "
                         "order in labeled_order.txt (one file name a line), or use labels.csv (file,label).")
    unlabeled = len(photos) - len(letters)
    logger.warning("%s: %d labels for %d bed_N.jpg photos: label i goes to the i-th photo in ascending N%s. This is "
                   "only right if no photo is missing from the folder (prefer labels.csv: file,label)", path,
                   len(letters), len(photos), f", the other {unlabeled} stay unlabeled" if unlabeled else "")
    rows = [LabelRow(f"{path.name} label {i}", p.name, letter)
            for i, (p, letter) in enumerate(zip(photos, letters), start=1)]
    return rows, f"{path.name} (i-th label -> i-th bed_N.jpg here)"


def _read_label_letters(path: Path) -> str:
    """The M/O letters of a ``labels.txt``: all on one line, one a line, or apart by spaces; any case.

    Raises:
        ValueError: another character, naming its line, its position among the labels and the character.
    """
    letters = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        for char in "".join(text.split()):
            if char.upper() not in BEDROOM_CLASSES:
                raise DataError(f"{path}:{line}: label {len(letters) + 1} is {char!r}; {path.name} holds one letter "
                                 f"per photo, {' or '.join(BEDROOM_CLASSES)} ({', '.join(BEDROOM_CLASSES.values())})")
            letters.append(char.upper())
    return "".join(letters)


def read_birds_csv(data_dir: str | Path) -> LabeledFiles:
    """The Kaggle BIRDS-525 layout: ``birds.csv`` (class id, filepaths, labels, ...) + class folders.

    Rows naming a file that is not here are skipped with a warning naming their lines, as for
    ``labels.csv``: an index often lists more than one download holds (held-out or unfetched photos).
    """
    root = Path(data_dir)
    path = root / "birds.csv"
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filepaths", "labels"} <= set(rows[0]):
        raise DataError(f"{path}: expected columns 'filepaths' and 'labels' in the header")
    source_names = sorted({row["labels"].strip() for row in rows})  # the class ids of the Kaggle names' order
    index = {name: i for i, name in enumerate(source_names)}
    listed = [LabelRow(f"{path.name}:{line}", row["filepaths"].strip(), row["labels"].strip())
              for line, row in enumerate(rows, start=2)]
    here = _skip_missing(listed, root, {row.file for row in listed if (root / row.file).is_file()})
    return LabeledFiles([str(root / row.file) for row in here], [index[row.label] for row in here],
                        species_names(source_names), [], f"{path.name} ({len(source_names)} species)")


def birds_source_names(data_dir: str | Path) -> list[str]:
    """The species as ``birds.csv`` writes them (``AFRICAN CROWNED CRANE``), in class-id order: what a published
    copy of the dataset keeps, where :func:`read_birds_csv` gives people :func:`natural_case` names."""
    with (Path(data_dir) / "birds.csv").open(newline="", encoding="utf-8-sig") as f:
        return sorted({row["labels"].strip() for row in csv.DictReader(f)})


def species_names(source_names: Sequence[str]) -> list[str]:
    """The :func:`natural_case` of each of ``birds.csv``'s distinct names, in their order; names that would then read
    the same as another (``AMERICAN GOLDFINCH`` and ``American Goldfinch``) stay as the CSV writes them, so that
    distinct classes keep distinct names."""
    natural = [natural_case(name) for name in source_names]
    taken = Counter(natural)
    return [person if taken[person] == 1 else source for source, person in zip(source_names, natural)]


def natural_case(name: str) -> str:
    """A class name as people write it: ``AFRICAN CROWNED CRANE`` -> ``African Crowned Crane``.

    Only a name written all in capitals changes (any lower-case letter means the dataset chose its case). Each
    word starts with a capital, after any opening bracket or quote (``(Great)``), and so does each part after a
    slash (``Crow/Raven``). After a hyphen or an apostrophe the next letter stays lower case, as bird names are
    written (``Black-throated Sparrow``, ``Carmine Bee-eater``, ``ABBOTT'S`` -> ``Abbott's`` where ``str.title``
    gives ``Abbott'S``), unless a single letter comes before it (``D-Arnauds``, ``O'Brien``). Roman numerals stay
    capitals (``II``); ``&`` and other signs are kept as they are. Joining words stay lower case after the first
    word (``COCK OF THE ROCK`` -> ``Cock of the Rock``). ``MCKAYS`` stays ``Mckays``: renaming one of the Kaggle
    species would part the models trained on it from their dataset.
    """
    if not name.isupper():
        return name
    first, *rest = name.lower().split(" ")
    return " ".join([_natural_word(first), *(w if w in JOINING_WORDS else _natural_word(w) for w in rest)])


JOINING_WORDS = frozenset({"a", "an", "and", "at", "de", "del", "der", "di", "du", "in", "la", "of", "on", "or", "the",
                           "van", "von"})  # lower case inside a name, as English and common names write them
ROMAN_NUMERAL = re.compile(r"x{0,3}(ix|iv|v?i{0,3})")
# a lower-case word's letters that take a capital: its first (after a bracket or quote), the first after a slash,
# and after a single letter and a hyphen or apostrophe (d-arnauds, o'brien)
CAPITAL_LETTERS = re.compile(r"(?:(?<=^)|(?<=^\W)|(?<=/)|(?<=^\w[-'’])|(?<=\W\w[-'’]))[^\W\d_]")


def _natural_word(word: str) -> str:
    if len(word) > 1 and ROMAN_NUMERAL.fullmatch(word):
        return word.upper()
    return CAPITAL_LETTERS.sub(lambda letter: letter.group().upper(), word)


def _skip_missing(rows: list[LabelRow], root: Path, present: set[str]) -> list[LabelRow]:
    """The rows whose file is ``present``; the others are skipped with one warning that says where they were listed."""
    missing = [row for row in rows if row.file not in present]
    if missing:
        shown = ", ".join(f"{row.where} {row.file}" for row in missing[:5]) + (", ..." if len(missing) > 5 else "")
        logger.warning("%d of %d labeled files are not in %s and are skipped: %s", len(missing), len(rows), root, shown)
    return [row for row in rows if row.file in present]


# ---- metadata files: the datasets ImageFolder convention (a file_name column, a label column) ----

def find_metadata_files(root: Path) -> list[Path]:
    """The metadata files under ``root`` at any depth, hidden folders left out, sorted by path.

    Raises:
        DataError: metadata files of two formats (``datasets`` refuses such a folder too), naming them.
    """
    found = sorted(path for path in root.rglob("metadata.*")
                   if path.name in METADATA_FILES and path.is_file() and not is_hidden(path.relative_to(root)))
    formats = {path.suffix for path in found}
    if len(formats) > 1:
        shown = ", ".join(str(path.relative_to(root)) for path in found[:4])
        raise DataError(f"{root}: metadata files of {len(formats)} formats ({shown}); keep one format "
                        f"({', '.join(METADATA_FILES)}) for the whole folder, as datasets' ImageFolder requires")
    return found


def read_metadata(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """A metadata file's column names and its rows, each with where it was read (``metadata.csv:5``,
    ``metadata.jsonl:4``, ``metadata.parquet row 3``). CSV cells are text; JSON Lines and Parquet keep their types.

    Raises:
        DataError: a file that does not parse, naming it (and the line, for JSON Lines).
    """
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
                reader = csv.DictReader(f)
                rows = [(f"{path}:{reader.line_num}", row) for row in reader]
                return list(reader.fieldnames or []), rows
        if path.suffix == ".jsonl":
            return _read_json_lines(path)
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.column_names, [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot be read as {path.suffix[1:].upper()} ({type(err).__name__}: {err})") from None


def _read_json_lines(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    columns: dict[str, None] = {}  # every key of every row, in order of first appearance
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line}: not a JSON object ({err}); metadata.jsonl holds one object a line, "
                            '{"file_name": "a.jpg", "label": "cat"}') from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line}: a {type(row).__name__}, not a JSON object; metadata.jsonl holds one "
                            'object a line, {"file_name": "a.jpg", "label": "cat"}')
        columns.update(dict.fromkeys(row))
        rows.append((f"{path}:{line}", row))
    return list(columns), rows


def read_metadata_labels(data_dir: str | Path, label_column: str = "label") -> LabeledFiles | None:
    """Photos and labels from the metadata files under ``data_dir`` (``metadata.csv``, ``.jsonl`` or ``.parquet``).

    The ``datasets`` ImageFolder convention: each row names a photo in its ``file_name`` column, a path relative
    to the metadata file's folder (which may be a split folder, ``train/metadata.csv``), and gives its class in
    ``label_column``. Labels are class names or numbers; the class names are sorted as text, as ``datasets``'
    ``class_encode_column`` names a column's values. Other columns are left out (logged). Photos that no row lists
    are left out, with a warning that counts them. Returns None when no metadata file has ``label_column``: the
    class folders then give the labels (logged; a :class:`DataError` when there are none).

    Raises:
        DataError: naming the file (and line): no ``file_name`` column; a metadata file without ``label_column`` beside
            ones with it; a ``file_name`` outside the metadata file's folder or not a file there; a row without a
            label; a photo listed twice with two labels; fewer than two classes.
    """
    root = Path(data_dir)
    tables = {path: read_metadata(path) for path in find_metadata_files(root)}
    if not tables:
        return None
    labeled = [path for path, (columns, _) in tables.items() if label_column in columns]
    if not labeled:
        _require_class_folders(root, tables, label_column)
        return None
    rows: dict[str, LabelRow] = {}
    for path, (columns, table) in tables.items():
        _require_columns(path, columns, label_column)
        for row in _metadata_rows(path, table, label_column):
            earlier = rows.setdefault(row.file, row)
            if earlier.label != row.label:
                raise DataError(f"{row.where}: {row.file} is labeled {row.label!r} here but {earlier.label!r} at "
                                f"{earlier.where}; keep one row per photo")
    _warn_about_unlisted_photos(root, rows)
    source = _metadata_source(root, list(tables), label_column)
    class_names = sorted({row.label for row in rows.values()})
    _require_two_classes_listed(source, class_names)
    unused = sorted({c for columns, _ in tables.values() for c in columns} - {FILE_NAME_COLUMN, label_column})
    if unused:
        logger.info("%s: column%s %s not used (training reads the photo and its label)", source,
                    "s" if len(unused) > 1 else "", ", ".join(unused))
    if all(re.fullmatch(r"-?\d+", name) for name in class_names):
        shown = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
        logger.warning("%s: the labels are numbers, so the classes are named %s; a column of class names gives "
                       "predictions readable names", source, shown)
    index = {name: i for i, name in enumerate(class_names)}
    return LabeledFiles([row.file for row in rows.values()], [index[row.label] for row in rows.values()], class_names,
                        [], source)


def _require_columns(path: Path, columns: list[str], label_column: str) -> None:
    for column in (FILE_NAME_COLUMN, label_column):
        if column not in columns:
            raise DataError(f"{path}: no {column!r} column (its columns: {', '.join(columns) or 'none'}); each row "
                            f"names a photo in {FILE_NAME_COLUMN} (its path relative to the folder of {path.name}) "
                            f"and gives its class in {label_column} (--label_column names another column)")


def _metadata_rows(path: Path, table: list[tuple[str, dict]], label_column: str) -> list[LabelRow]:
    """The rows of one metadata file as (where, photo path under the data folder, class name).

    Raises:
        DataError: a ``file_name`` that is empty, absolute or leaves the metadata file's folder (``datasets`` refuses
            those too), a label missing, or files that are not there (counted, the first few named).
    """
    folder = path.parent
    rows, missing = [], []
    for where, row in table:
        name = str(row.get(FILE_NAME_COLUMN) or "").strip()
        relative = os.path.normpath(name)
        if not name or os.path.isabs(name) or relative == ".." or relative.startswith(".." + os.sep) or "://" in name:
            raise DataError(f"{where}: file_name {name!r} is not a path inside {folder}; give each photo's path "
                            f"relative to the folder of {path.name}")
        value = row.get(label_column)
        if isinstance(value, list | tuple | dict | np.ndarray) or (isinstance(value, float) and math.isfinite(value)
                                                                    and not value.is_integer()):
            raise DataError(f"{where}: {name} has the label {value!r} in column {label_column!r}, and a label here "
                            "is one class name (or whole number) per photo: multi-label and numeric targets are not "
                            "image classification")
        label = _label_text(value)
        if not label:
            raise DataError(f"{where}: {name} has no label in column {label_column!r}; give every listed photo a "
                            "label, or remove its row")
        file = folder / relative
        if not file.is_file():
            missing.append(f"{where} {name}")
        rows.append(LabelRow(where, str(file), label))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(f"{path}: {len(missing)} of {len(rows)} rows name a file that is not there ({shown}); "
                        f"file_name is relative to the folder of {path.name}: fix the paths, or remove the rows")
    return rows


def _label_text(value: object) -> str:
    """A label cell as a class name: text stripped, whole numbers as their digits (a Parquet integer column with a
    gap reads as float), ``""`` for a missing label (empty, null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _require_class_folders(root: Path, tables: dict[Path, tuple[list[str], list]], label_column: str) -> None:
    """Metadata without labels: the class folders give them (logged), or, where photos sit outside class folders,
    a :class:`DataError` naming the metadata file."""
    path, (columns, _) = next(iter(tables.items()))
    folders = [root] + [sub for sub in _visible_folders(root) if sub.name.lower() in SPLIT_FOLDERS]
    loose = [folder for folder in folders if _photos_directly_in(folder)]
    if loose or not _visible_folders(root):
        raise DataError(f"{path}: no {label_column!r} column (its columns: {', '.join(columns) or 'none'}) and the "
                        f"photos in {loose[0] if loose else root} are not in class folders, so no photo has a label. "
                        f"Add a {label_column} column (or name yours with --label_column), or move each photo into a "
                        f"folder named for its class. {LAYOUTS_ACCEPTED}")
    logger.info("%s: no %r column (its columns: %s): the class folders give the labels",
                ", ".join(str(p.relative_to(root)) for p in tables), label_column, ", ".join(columns))


def _photos_directly_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                  and not is_hidden(Path(path.name)))


def _metadata_source(root: Path, paths: list[Path], label_column: str) -> str:
    """Where the labels come from, in words for the log and the model card: paths relative to the data folder."""
    shown = ", ".join(str(path.relative_to(root)) for path in paths[:3]) + (
        f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"column {label_column!r} of {shown}"


def _warn_about_unlisted_photos(root: Path, rows: dict[str, LabelRow]) -> None:
    listed = {Path(file).resolve() for file in rows}
    unlisted = [path for path in list_images(root) if path.resolve() not in listed]
    if unlisted:
        shown = ", ".join(str(path.relative_to(root)) for path in unlisted[:3]) + (", ..." if len(unlisted) > 3 else "")
        many = len(unlisted) > 1
        logger.warning("%s: %d photo%s in no metadata file and %s left out (they have no label): %s", root,
                       len(unlisted), "s are" if many else " is", "are" if many else "is", shown)


def _require_two_classes_listed(source: str, class_names: list[str]) -> None:
    if len(class_names) < 2:
        found = f"1 class ({class_names[0]})" if class_names else "no labeled photos"
        raise DataError(f"{source}: {found}; a classifier needs at least two classes: label photos of another class "
                        "too")


def split_labeled_files(
    found: LabeledFiles, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
    cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """Check every photo, group near-duplicates, and make the stratified grouped splits.

    Raises:
        BadImageError: a photo does not decode (unless ``skip_bad_images``).
        ValueError: a class left without photos, or classes too small to split.
    """
    files, labels = found.files, np.asarray(found.labels, dtype=int)
    log_classes(found.label_source, labels, found.class_names)
    hashes, good = scan_images(files + found.unlabeled, skip_bad_images)
    n = len(files)
    keep = good[:n]
    _require_every_class(labels[keep], found.class_names, found.label_source)
    groups = near_duplicate_groups(hashes)
    split_ids = stratified_group_split(labels[keep], groups[:n][keep], split_fractions, seed, cv_fold,
                                       class_names=found.class_names)
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


def log_classes(source: str, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """One info line before training: the classes found and their photo counts (a summary for many classes)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(class_names))
    if len(class_names) <= CLASSES_LISTED:
        listed = ", ".join(f"{name} {count}" for name, count in zip(class_names, counts))
    else:
        fewest = ", ".join(f"{class_names[c]} {counts[c]}" for c in np.argsort(counts, kind="stable")[:3])
        listed = (f"{counts.min()} to {counts.max()} photos a class (median {np.median(counts):g}); "
                  f"fewest: {fewest}")
    logger.info("%s: %d classes, %d photos: %s", source, len(class_names), counts.sum(), listed)
    warn_near_identical_names(source, class_names)


def warn_near_identical_names(source: str, class_names: Sequence[str]) -> None:
    """Warn of class names that differ only in case or surrounding spaces (``Bath`` and ``bath``): most often one
    class typed twice, and one folder on the case-insensitive disks of macOS and Windows."""
    groups: dict[str, list[str]] = {}
    for name in class_names:
        groups.setdefault(str(name).strip().casefold(), []).append(str(name))
    for names in (names for names in groups.values() if len(names) > 1):
        logger.warning("%s: the classes %s differ only in case or spaces and are trained as %d classes; if they are "
                       "one class, give them one name", source, " and ".join(map(repr, names)), len(names))


def _require_every_class(labels: np.ndarray, class_names: Sequence[str], source: str) -> None:
    empty = [name for c, name in enumerate(class_names) if not (labels == c).any()]
    if empty:
        raise DataError(f"{source}: no photos of class {', '.join(empty)} (its files are missing or were skipped as "
                         "unreadable); a class without photos cannot be learned. Add photos, or remove the class.")


def build_imagefolder_dataset(
    data_dir: str | Path, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
    cv_fold: tuple[int, int] | None = None, label_column: str = "label",
) -> DatasetDict:
    """The ``datasets`` ImageFolder layouts: labels from a metadata file's ``label_column``, else from class folders.

    A ``metadata.csv`` (``.jsonl``, ``.parquet``) anywhere under ``data_dir`` with ``label_column`` labels the photos
    it lists (:func:`read_metadata_labels`). Otherwise a photo's class is the top-level folder under ``data_dir`` it
    sits in, at any depth (a metadata file without the column is then left aside, logged). Top-level ``train/``,
    ``validation/`` (or ``valid/``, ``val/``) and ``test/`` folders, holding the class folders or the listed photos,
    are splits made in advance: they are kept, and a missing validation or test split is carved from train (with
    ``cv_fold``, everything is pooled and re-split). Files that are not images are left out and counted in the log;
    hidden and system files are ignored.

    Raises:
        DataError: a metadata file that cannot label the photos (see :func:`read_metadata_labels`), photos beside
            class folders, a class folder without photos, fewer than two classes, split folders beside class
            folders or photos, or a class missing from train/ (each names the file or folder and what to change).
    """
    root = Path(data_dir)
    _log_skipped_files(root)
    listed = read_metadata_labels(root, label_column)
    if listed is not None:
        given = _listed_by_split(root, listed)
        if not given:
            return split_labeled_files(listed, split_fractions, seed, skip_bad_images, cv_fold)
        return _split_in_advance(given, listed.label_source, split_fractions, seed, skip_bad_images, cv_fold)
    folders = _visible_folders(root)
    split_folders = {f.name.lower(): f for f in folders if f.name.lower() in SPLIT_FOLDERS}
    if not split_folders:
        by_class = _class_folders(root)
        _require_two_classes(root, list(by_class))
        found = _labeled_files([by_class], sorted(by_class), f"folder names under {data_dir}")
        return split_labeled_files(found, split_fractions, seed, skip_bad_images, cv_fold)
    by_split = _presplit_class_folders(root, folders, split_folders)
    class_names = sorted(set().union(*by_split.values()))
    given = {name: _labeled_files([by_class], class_names, f"folder names under {data_dir}")
             for name, by_class in by_split.items()}
    return _split_in_advance(given, "class folders", split_fractions, seed, skip_bad_images, cv_fold)


def _split_in_advance(
    given: dict[str, LabeledFiles], source: str, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
    cv_fold: tuple[int, int] | None,
) -> DatasetDict:
    """The splits made in advance (train and validation and/or test) kept, the missing one carved from train; or,
    with ``cv_fold`` or train alone, every photo pooled and split. ``source`` says where the labels come from."""
    class_names = given["train"].class_names
    if cv_fold is not None or set(given) == {"train"}:
        parts = list(given.values())
        pooled = LabeledFiles([f for s in parts for f in s.files], [c for s in parts for c in s.labels], class_names,
                              [], given["train"].label_source)
        return split_labeled_files(pooled, split_fractions, seed, skip_bad_images, cv_fold)
    features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
    log_classes(f"{source} in {', '.join(given)}", sum((s.labels for s in given.values()), []), class_names)
    out = _carve_missing_splits(DatasetDict(
        {name: Dataset.from_dict({"image": s.files, "label": s.labels}, features=features)
         for name, s in given.items()}), split_fractions, seed, skip_bad_images)
    carved = [name for name in SPLITS if name not in given]
    out.label_source = (f"{source} ({len(class_names)} classes), splits from the folder"
                        + (f"; {' and '.join(carved)} carved from train" if carved else ""))
    return out


def _listed_by_split(root: Path, found: LabeledFiles) -> dict[str, LabeledFiles]:
    """The photos a metadata file lists, by the split folder (train/, validation/, ...) they sit in; ``{}`` when none
    sits in one.

    Raises:
        DataError: photos inside and outside split folders, two folders for one split, no train/ photos, or a class
            that is not in train/.
    """
    folder_of = [_split_folder(root, Path(file)) for file in found.files]
    if not any(folder_of):
        return {}
    outside = [file for file, folder in zip(found.files, folder_of) if folder is None]
    if outside:
        inside = sorted({folder for folder in folder_of if folder})
        raise DataError(f"{found.label_source}: lists photos in split folders ({', '.join(inside)}) and "
                        f"{len(outside)} outside them ({Path(outside[0]).relative_to(root)}"
                        f"{', ...' if len(outside) > 1 else ''}): either every photo sits in a split folder or none "
                        f"does. {LAYOUTS_ACCEPTED}")
    given: dict[str, LabeledFiles] = {}
    for file, label, folder in zip(found.files, found.labels, folder_of):
        split = given.setdefault(SPLIT_FOLDERS[folder.lower()],
                                 LabeledFiles([], [], found.class_names, [], found.label_source))
        split.files.append(file)
        split.labels.append(label)
    classes = {split: {found.class_names[c] for c in s.labels} for split, s in given.items()}
    _require_splits_with_train(root, sorted(set(folder_of)), classes)
    return given


def _split_folder(root: Path, file: Path) -> str | None:
    """The top-level folder of ``file`` under ``root`` when it is a split folder (``train``, ``val``, ...)."""
    parts = file.relative_to(root).parts
    return parts[0] if len(parts) > 1 and parts[0].lower() in SPLIT_FOLDERS else None


def _log_skipped_files(root: Path) -> None:
    skipped = [(path, why) for path, why in skipped_files(root) if path.name not in METADATA_FILES]
    if skipped:
        shown = "; ".join(f"{path.relative_to(root)} ({why})" for path, why in skipped[:3])
        what = "1 file is not an image and is" if len(skipped) == 1 else f"{len(skipped)} files are not images and are"
        logger.warning("%s: %s left out: %s%s", root, what, shown, "; ..." if len(skipped) > 3 else "")


def _visible_folders(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` that are not hidden or system folders (``.git``, ``__MACOSX``), sorted."""
    return sorted(sub for sub in folder.iterdir() if sub.is_dir() and not is_hidden(Path(sub.name)))


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Each class folder of ``folder`` with its photos at any depth.

    Raises:
        ValueError: photos directly in ``folder`` (their class is unknown), or a class folder without photos.
    """
    _refuse_stray_photos(folder)
    by_class = {sub.name: list_images(sub) for sub in _visible_folders(folder)}
    empty = [name for name, photos in by_class.items() if not photos]
    if empty:
        raise DataError(
            f"{folder}: class folder{'s' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
            f"{'hold' if len(empty) > 1 else 'holds'} no photos (files that are not images and hidden files do not "
            "count); a class without photos cannot be learned: add photos to it, or remove the folder.")
    return by_class


def _refuse_stray_photos(folder: Path) -> None:
    stray = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                   and not is_hidden(Path(path.name)))
    if stray:
        shown = ", ".join(p.name for p in stray[:3]) + (", ..." if len(stray) > 3 else "")
        many = len(stray) > 1
        raise DataError(f"{folder}: {len(stray)} photo{'s' if many else ''} ({shown}) {'sit' if many else 'sits'} "
                         "directly in the folder, but a photo's class is the folder it sits in: move "
                         f"{'them' if many else 'it'} into a folder named for the class. {LAYOUTS_ACCEPTED}")


def _require_two_classes(folder: Path, class_names: list[str]) -> None:
    if len(class_names) < 2:
        found = f"{len(class_names)} class folder ({class_names[0]})" if class_names else "no class folders"
        raise DataError(f"{folder}: found {found}; a classifier needs at least two classes, each a folder of "
                         f"photos. {LAYOUTS_ACCEPTED}")


def _presplit_class_folders(
    root: Path, folders: list[Path], split_folders: dict[str, Path],
) -> dict[str, dict[str, list[Path]]]:
    """``{split: {class: photos}}`` of a folder split in advance (train/, validation/ or valid/ or val/, test/).

    Raises:
        ValueError: split folders beside class folders or photos, two folders for one split, no train/, fewer than
            two classes, or a class that is not in train/.
    """
    others = [f.name for f in folders if f.name.lower() not in SPLIT_FOLDERS]
    if others:
        raise DataError(f"{root}: split folders ({', '.join(split_folders)}) beside other folders "
                         f"({', '.join(others)}): either every top-level folder is a split or every one is a class. "
                         f"{LAYOUTS_ACCEPTED}")
    _refuse_stray_photos(root)
    given = {SPLIT_FOLDERS[name]: _class_folders(folder) for name, folder in split_folders.items()}
    _require_splits_with_train(root, [folder.name for folder in split_folders.values()], given)
    _require_two_classes(split_folders["train"], sorted(set().union(*given.values())))
    return given


def _require_splits_with_train(root: Path, folder_names: list[str], classes: dict[str, Iterable[str]]) -> None:
    """Check the split folders of ``root`` and the classes each split holds (``{split: class names}``).

    Raises:
        DataError: two folders for one split, no train/ folder, or a class with photos in other splits only.
    """
    for split in sorted({SPLIT_FOLDERS[name.lower()] for name in folder_names}):
        twins = [name for name in folder_names if SPLIT_FOLDERS[name.lower()] == split]
        if len(twins) > 1:
            raise DataError(f"{root}: folders {' and '.join(twins)} both hold the {split} split; keep one")
    if "train" not in classes:
        raise DataError(f"{root}: split folders ({', '.join(folder_names)}) but no train/ folder. {LAYOUTS_ACCEPTED}")
    untrained = sorted(set().union(*classes.values()) - set(classes["train"]))
    if untrained:
        raise DataError(f"{root}: class {', '.join(untrained)} has photos in other splits but is not in "
                        f"{root / 'train'}: a model cannot predict a class it never trained on. Add its photos to the "
                        "train folder.")


def _labeled_files(by_class_parts: list[dict[str, list[Path]]], class_names: list[str], source: str) -> LabeledFiles:
    """Photo paths and class numbers of ``{class: photos}`` mappings, in order."""
    files, labels = [], []
    for by_class in by_class_parts:
        for name, photos in by_class.items():
            files += [str(p) for p in photos]
            labels += [class_names.index(name)] * len(photos)
    return LabeledFiles(files, labels, class_names, [], source)


def _carve_missing_splits(
    given: DatasetDict, split_fractions: Sequence[float], seed: int, skip_bad_images: bool,
) -> DatasetDict:
    """Keep the train and validation and/or test splits ``given`` (every photo checked) and carve the missing one
    from train: stratified, grouped by near-duplicates, in its share of ``split_fractions``."""
    checked, train_hashes = {}, None
    for name, split in given.items():
        hashes, good = scan_images(_image_cells(split), skip_bad_images)
        checked[name] = split.select(np.flatnonzero(good))
        if name == "train":
            train_hashes = hashes[good]
    if set(checked) == set(SPLITS):
        return DatasetDict({name: checked[name] for name in SPLITS})
    train = checked["train"]
    shares = [share if name == "train" or name not in given else 0.0 for name, share in zip(SPLITS, split_fractions)]
    ids = stratified_group_split(np.asarray(train["label"]), near_duplicate_groups(train_hashes),
                                 np.asarray(shares) / sum(shares), seed, class_names=train.features["label"].names)
    carved = {name: train.select(i) for name, i in zip(SPLITS, ids) if name == "train" or name not in given}
    return DatasetDict({name: carved.get(name, checked.get(name)) for name in SPLITS})


def _image_cells(split: Dataset) -> list[dict]:
    """The image column undecoded (``{"bytes", "path"}`` per photo), for :func:`scan_images` to decode in parallel."""
    return list(split.cast_column("image", Image(decode=False))["image"])


def layout_labels(layout: str) -> str:
    """Where the labels of a :func:`detect_layout` layout come from, for messages."""
    return {"birds": "birds.csv", "bedrooms": "labels.csv"}.get(layout, "its class folders or a metadata file")


def load_hub_dataset(name: str) -> DatasetDict:
    """``datasets.load_dataset(name)``; raises :class:`DataError` in one line when it cannot be found or reached."""
    from huggingface_hub import constants

    try:
        return load_dataset(name)
    except (ConnectionError, FileNotFoundError) as err:  # datasets' DatasetNotFoundError is a FileNotFoundError
        offline = " (and the Hub is offline: HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"--dataset {name}: neither a local folder nor a Hub dataset that could be loaded{offline}: "
                        f"{cause}") from err


def build_hub_dataset(
    name: str, image_column: str, label_column: str, split_fractions: Sequence[float], seed: int,
    skip_bad_images: bool, cv_fold: tuple[int, int] | None = None,
) -> DatasetDict:
    """A Hub dataset with an image and a label column.

    Its own splits are kept: a train split with validation and/or test keeps them and gets the missing one
    carved from train; a dataset with no such splits (or with ``cv_fold``) is pooled and re-split.
    """
    loaded = load_hub_dataset(name)
    first = loaded[next(iter(loaded))]
    for column in (image_column, label_column):
        if column not in first.column_names:
            local = (f"; {name} is a local folder: pass it as --data_dir, where class folders give the labels even "
                     "beside a metadata file" if Path(name).is_dir() else "")
            raise DataError(f"{name} has no column {column!r}; its columns are {first.column_names} "
                            f"(set --image_column / --label_column){local}")
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
    if cv_fold is None and "train" in loaded and {"validation", "test"} & set(loaded):
        out = _carve_missing_splits(DatasetDict({s: loaded[s] for s in SPLITS if s in loaded}), split_fractions, seed,
                                    skip_bad_images)
    else:
        everything = concatenate_datasets(list(loaded.values()))
        hashes, good = scan_images(_image_cells(everything), skip_bad_images)
        labels = np.asarray(everything["label"])
        ids = np.flatnonzero(good)
        split_ids = stratified_group_split(labels[ids], near_duplicate_groups(hashes)[ids], split_fractions, seed,
                                           cv_fold, class_names=everything.features["label"].names)
        out = DatasetDict({s: everything.select(ids[i]) for s, i in zip(SPLITS, split_ids)})
    where = f"the dataset folder {Path(name).name}/" if Path(name).exists() else f"Hub dataset {name}"
    out.label_source = f"{where} (column {label_column!r})"
    return out


def scan_images(images: Iterable, skip_bad_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decode every photo once: perceptual hashes (n, 2) and a mask of the readable ones.

    ``images`` are file paths, PIL images or ``datasets`` image cells (``{"bytes", "path"}``). A photo
    is hashed as the model sees it: upright RGB, high bit depths scaled (:func:`hf_model.transforms.to_rgb`).
    A file that does not decode (Pillow's decompression-bomb limit included) raises
    :class:`BadImageError` naming it, or is skipped with a warning when ``skip_bad_images`` is set.
    Under ``torchrun`` only the main process decodes; the other ranks get its answer (or its error), so every
    rank builds the same splits without decoding the photos again (:func:`hf_model.distributed.main_process_result`).
    """
    items = list(images)
    return main_process_result(lambda: _scan(items, skip_bad_images))


def _scan(items: list, skip_bad_images: bool) -> tuple[np.ndarray, np.ndarray]:
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes without the GIL
        results = list(pool.map(_hash_one, items))
    hashes = np.zeros((len(items), 2), dtype=np.uint64)
    good = np.ones(len(items), dtype=bool)
    for i, (item, result) in enumerate(zip(items, results)):
        if isinstance(result, Exception):
            message = f"{_image_name(item, i)}: not a readable image ({type(result).__name__}: {result})"
            if not skip_bad_images:
                raise BadImageError(message + ". Fix or remove the file, or pass --skip_bad_images to skip it.")
            logger.warning("skipping %s", message)
            good[i] = False
        else:
            hashes[i] = result
    return hashes, good


def _image_name(item, i: int) -> str:
    if isinstance(item, str | Path):
        return str(item)
    path = item.get("path") if isinstance(item, dict) else getattr(item, "filename", None)
    return path or f"image #{i}"


def _hash_one(item) -> tuple[int, int] | Exception:
    import imagehash
    from PIL import Image as PILImage

    from hf_model.transforms import to_rgb

    try:
        if isinstance(item, dict):  # a datasets image cell: its bytes, or the file it names
            item = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        image = item if isinstance(item, PILImage.Image) else open_image(item)
        image.load()
        image = to_rgb(image)
        return int(str(imagehash.phash(image)), 16), int(str(imagehash.dhash(image)), 16)
    except Exception as err:  # any decoder failure is reported against the file name
        return err


def near_duplicate_groups(hashes: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Connected components of the 'near-duplicate' relation: one group id per photo, shape (n,).

    Two photos are near-duplicates when each of their hashes (the columns of ``hashes``, an (n, k) uint64 array:
    pHash and dHash) differs in at most ``max_bits`` bits. Groups are numbered 0, 1, ... in the order of their
    first photo, as :func:`scipy.sparse.csgraph.connected_components` numbers them.

    Identical hashes are merged first; the rest are searched by multi-index hashing (Norouzi, Punjani and Fleet,
    "Fast search in Hamming space with multi-index hashing", CVPR 2012): cut each 64-bit hash into
    ``max_bits + 1`` bands; by the pigeonhole principle two hashes within ``max_bits`` bits agree exactly on at
    least one band of each hash. Only photos that share a band of each hash are compared, in vector steps: for
    random hashes about 1 pair in 24, so 50,000 photos take about 4 s on 2 CPU cores where comparing every pair
    took about 30 s, in flat memory (benchmarks/bench_scale.py). Sorting the 121 band tables grows as n log n and
    dominates up to some 10,000 photos; beyond, the pairs compared (about n**2 / 48) do. Hashes crowded into a
    few bands (thousands of near-copies) fall back to comparing every pair, never costing much more than that did.

    Raises:
        ValueError: ``max_bits`` is not in 0..63.
    """
    if not 0 <= max_bits < 64:
        raise ValueError(f"max_bits={max_bits}: near-duplicate hashes differ in 0 to 63 of their 64 bits")
    unique, photo_hash = np.unique(np.asarray(hashes, dtype=np.uint64), axis=0, return_inverse=True)
    component = _components(len(unique), _close_pairs(unique, max_bits))
    return _numbered_by_first_photo(component[photo_hash.reshape(-1)])


def _close_pairs(hashes: np.ndarray, max_bits: int) -> Iterable[np.ndarray]:
    """(p, 2) batches of index pairs of distinct rows of ``hashes`` whose every column is within ``max_bits`` bits.

    By band tables when they propose fewer pairs than there are, else by comparing every pair.
    """
    columns = [np.ascontiguousarray(column) for column in hashes.T]
    proposed = sum(_pairs_sharing_a_key(keys) for keys in _band_keys(columns, max_bits))
    if proposed > len(hashes) * (len(hashes) - 1) // 2:  # crowded bands: thousands of near-copies
        yield from _close_pairs_all(hashes, max_bits)
        return
    for keys in _band_keys(columns, max_bits):
        yield from _close_pairs_sharing_a_key(columns, keys, max_bits)


def _band_keys(columns: list[np.ndarray], max_bits: int) -> Iterable[np.ndarray]:
    """One key per row for each choice of one band of each column: rows within ``max_bits`` share a key somewhere.

    The bands of a choice are mixed into one 64-bit key (multiplying by the golden-ratio constant, Knuth's
    multiplicative hashing): a rare collision of two different choices only proposes a pair that is then checked.
    """
    bands = [_bands(column, max_bits + 1) for column in columns]
    for choice in np.ndindex(*[max_bits + 1] * len(columns)):
        keys = np.zeros(len(columns[0]), dtype=np.uint64)
        for column_bands, band in zip(bands, choice):
            keys = keys * np.uint64(0x9E3779B97F4A7C15) + column_bands[band]
        yield keys


def _bands(column: np.ndarray, count: int) -> list[np.ndarray]:
    """The bits of a hash column cut into ``count`` bands, each band's bits read as one number per row.

    Only bits that vary are cut: one every hash shares (pHash's DC bit is always set) never tells two apart,
    and leaving it out makes the bands that would hold it as selective as the rest.
    """
    varying = int(np.bitwise_or.reduce(column ^ column[:1]))
    positions = np.array([bit for bit in range(64) if varying >> bit & 1], dtype=np.uint64)
    bands = []
    for bits in np.array_split(positions, count):
        value = np.zeros(len(column), dtype=np.uint64)
        for i, bit in enumerate(bits):
            value |= ((column >> bit) & np.uint64(1)) << np.uint64(i)
        bands.append(value)
    return bands


def _pairs_sharing_a_key(keys: np.ndarray) -> int:
    """How many pairs of rows share a key."""
    sizes = np.unique(keys, return_counts=True)[1]
    return int(np.sum(sizes * (sizes - 1) // 2))


def _close_pairs_sharing_a_key(columns: list[np.ndarray], keys: np.ndarray, max_bits: int) -> Iterable[np.ndarray]:
    """(p, 2) batches of the close pairs among rows that share a key.

    With the rows sorted by key, row i meets row i + d for d = 1, 2, ... while both share a key: each pair
    once, in vector steps of at most len(keys) pairs.
    """
    order = np.argsort(keys)
    keys, columns = keys[order], [column[order] for column in columns]
    first = np.flatnonzero(keys[1:] == keys[:-1])
    for step in range(1, len(keys)):
        if not len(first):
            return
        close = np.ones(len(first), dtype=bool)
        for column in columns:
            close &= np.bitwise_count(column[first] ^ column[first + step]) <= max_bits
        yield np.stack([order[first[close]], order[first[close] + step]], axis=1)
        first = first[first + step + 1 < len(keys)]
        first = first[keys[first] == keys[first + step + 1]]


def _close_pairs_all(hashes: np.ndarray, max_bits: int, block: int = 256) -> Iterable[np.ndarray]:
    """Every close pair, found by comparing each row with every later row, ``block`` rows at a time."""
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        close = np.ones((len(rows), len(hashes) - start), dtype=bool)
        for k in range(hashes.shape[1]):
            close &= np.bitwise_count(rows[:, k, None] ^ hashes[None, start:, k]) <= max_bits
        i, j = np.nonzero(close)
        yield np.stack([i + start, j + start], axis=1)


def _components(n: int, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Each of ``n`` rows' lowest connected row, the edges given as (p, 2) batches of pairs.

    Edges are joined whenever n of them wait, and joined rows are kept as one edge per row, so memory stays
    linear in n however many edges come.
    """
    component = np.arange(n)
    waiting: list[np.ndarray] = []
    count = 0
    for pairs in batches:
        waiting.append(pairs)
        count += len(pairs)
        if count >= n:
            component, waiting, count = _joined(component, np.concatenate(waiting)), [], 0
    return _joined(component, np.concatenate(waiting)) if count else component


def _joined(component: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``component`` (each row's lowest connected row) after also connecting the (p, 2) ``pairs``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(component)
    rows = np.r_[np.arange(n), pairs[:, 0]]
    cols = np.r_[component, pairs[:, 1]]
    graph = coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))  # repeated edges: still True
    labels = connected_components(graph, directed=False)[1]  # numbered in the order of each group's lowest row
    return np.unique(labels, return_index=True)[1][labels]


def _numbered_by_first_photo(group: np.ndarray) -> np.ndarray:
    """Group ids renumbered 0, 1, ... in the order each group first appears in ``group``."""
    _, first, index = np.unique(group, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[index.reshape(-1)]


def stratified_group_split(
    labels: np.ndarray, groups: np.ndarray, split_fractions: Sequence[float], seed: int,
    cv_fold: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Indices of train/validation/test: stratified by label, no group in two splits, seeded.

    With ``cv_fold=(i, k)`` the test set is fold ``i`` of ``k`` instead of a ``split_fractions`` share.
    Where scikit-learn's folds cannot serve small classes, each class gets the smallest valid
    allocation instead: a photo in train always, one in validation from 2 photos and in test from 3
    (near-duplicates count as one photo). Classes left out of validation or test are named in a
    warning (``class_names``, else their numbers), and so is an empty test split.

    Raises:
        ValueError: bad ``split_fractions`` or ``cv_fold``; no class with 2 photos (nothing to validate on).
    """
    fractions = _checked_fractions(split_fractions)
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max(initial=-1)) + 1)]
    photos = _photos_per_class(labels, groups)
    _require_photos_to_validate(photos, fractions, names)
    if cv_fold is None:
        splits = _fold_split(np.arange(len(labels)), labels, groups, fractions, seed)
    else:
        splits = _cv_fold_split(labels, groups, fractions, seed, cv_fold)
    _warn_about_small_classes(splits, labels, photos, fractions, names)
    return [np.sort(s) for s in splits]


# Photos a class needs before it gets one in validation / in test (train always gets the first).
PHOTOS_TO_VALIDATE, PHOTOS_TO_TEST = 2, 3


def _checked_fractions(split_fractions: Sequence[float]) -> np.ndarray:
    fractions = np.asarray(split_fractions, dtype=float)
    if len(fractions) != 3 or (fractions < 0).any() or fractions[0] <= 0 or not np.isclose(fractions.sum(), 1.0):
        raise DataError(f"split fractions must be three numbers (train, validation, test) summing to 1, with "
                         f"train above 0, got {list(split_fractions)}")
    return fractions


def _photos_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Distinct photos per class: a group of near-duplicates counts once."""
    return {int(c): len(np.unique(groups[labels == c])) for c in np.unique(labels)}


def _require_photos_to_validate(photos: dict[int, int], fractions: np.ndarray, names: list[str]) -> None:
    if not photos:
        raise DataError("no labeled photos to split")
    if fractions[1] > 0 and max(photos.values()) < PHOTOS_TO_VALIDATE:
        short = [f"{names[c]} ({n})" for c, n in photos.items() if n < PHOTOS_TO_TEST]
        listed = ", ".join(short[:10]) + (f" and {len(short) - 10} more" if len(short) > 10 else "")
        raise DataError(f"too few photos to split: each class needs at least {PHOTOS_TO_TEST} photos (one for each "
                         f"of train, validation and test), and no class has the {PHOTOS_TO_VALIDATE} needed to "
                         f"validate on (near-duplicates count as one photo); too few: {listed}. Add photos.")


def _fold_split(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, seed: int,
) -> list[np.ndarray]:
    """Train/validation/test of ``idx``: seeded stratified grouped folds, or per class where folds shortchange one."""
    try:
        rest, test = _hold_out(idx, labels, groups, fractions[2], seed)
        train, val = _hold_out(rest, labels, groups, fractions[1] / (fractions[0] + fractions[1]), seed + 1)
        splits = [train, val, test]
    except ValueError:  # scikit-learn: "the resulting train set will be empty" and kin, on small classes
        splits = None
    if splits is None or _misallocated(splits, labels, _photos_per_class(labels[idx], groups[idx]), fractions):
        logger.info("classes too small for stratified folds: splitting %d photos class by class", len(idx))
        splits = _allocate_per_class(idx, labels, groups, fractions, seed)
    return splits


def _hold_out(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` as (rest, held), about ``fraction`` held: one fold of a seeded StratifiedGroupKFold."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

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
        rest, held = _hold_out(idx, labels, groups, 1 / max(2, largest_class), seed)
        back, held = _hold_out(held, labels, groups, min(1.0, fraction * max(2, largest_class)), seed + 100)
        return np.concatenate([rest, back]), held
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        rest, held = next(folds.split(idx, labels[idx], groups[idx]))
    return idx[rest], idx[held]


def _misallocated(splits: list[np.ndarray], labels: np.ndarray, photos: dict[int, int], fractions: np.ndarray) -> bool:
    """Whether a split leaves a class out of train, out of a split its share fills with a photo or more,
    or leaves validation or test empty although a class has the photos for it."""
    present = [set(labels[s].tolist()) for s in splits]
    if set(photos) - present[0]:
        return True
    for held, fraction, needed in zip(present[1:], fractions[1:], (PHOTOS_TO_VALIDATE, PHOTOS_TO_TEST)):
        if fraction > 0 and not held and max(photos.values()) >= needed:
            return True
        if any(fraction * n >= 1 and c not in held for c, n in photos.items()):
            return True
    return False


def _allocate_per_class(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, seed: int,
) -> list[np.ndarray]:
    """The smallest valid split: each class's groups shuffled (seeded), then dealt to validation and test
    (:func:`_held_out_counts`), the rest to train. A group of near-duplicates goes where its first photo's class
    sends it."""
    _, first, unit_of = np.unique(groups[idx], return_index=True, return_inverse=True)
    unit_label = labels[idx][first]
    rng = np.random.default_rng(seed)
    split_of_unit = np.zeros(len(first), dtype=int)
    for c in np.unique(unit_label):
        units = rng.permutation(np.flatnonzero(unit_label == c))
        n_val, n_test = _held_out_counts(len(units), fractions)
        split_of_unit[units[:n_val]] = 1
        split_of_unit[units[n_val:n_val + n_test]] = 2
    split_of_photo = split_of_unit[unit_of]
    return [idx[split_of_photo == s] for s in range(3)]


def _held_out_counts(n: int, fractions: np.ndarray) -> tuple[int, int]:
    """Validation and test photos of a class of ``n``: its shares rounded, at least one where the class has
    the photos for it, and always one left for train."""
    val, test = (int(np.floor(n * f + 0.5)) for f in fractions[1:])
    if fractions[1] > 0 and n >= PHOTOS_TO_VALIDATE:
        val = max(val, 1)
    if fractions[2] > 0 and n >= PHOTOS_TO_TEST:
        test = max(test, 1)
    val = min(val, n - 1)
    return val, min(test, n - 1 - val)


def _cv_fold_split(
    labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, seed: int, cv_fold: tuple[int, int],
) -> list[np.ndarray]:
    """Fold ``i`` of a stratified grouped ``k``-fold split is the test set; validation is carved from the rest."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold, n_folds = cv_fold
    if not 0 <= fold < n_folds:
        raise DataError(f"cross-validation fold {fold} is not in 0..{n_folds - 1}")
    everything = np.arange(len(labels))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(everything, labels, groups)
    try:
        folds = list(folds)
        if _some_class_skips_a_fold(folds, labels, groups):
            logger.info("classes too small for stratified grouped folds to test each in every fold: dealing each "
                        "class's photos to the %d folds in turn", n_folds)
            folds = _deal_to_folds(labels, groups, n_folds, seed)
        rest, test = folds[fold]
    except ValueError as err:  # fewer photos (or near-duplicate groups) than folds
        largest = int(np.bincount(labels).max())
        raise DataError(f"--cv_folds {n_folds}: too few photos for {n_folds} folds (the largest class has {largest}, "
                        f"{len(np.unique(groups))} photos are distinct; {err}). Each fold tests at least one photo of "
                        f"a class: use --cv_folds {max(2, min(largest, len(np.unique(groups))))} or fewer, or add "
                        "photos.") from None
    shares = np.array([fractions[0], fractions[1], 0.0]) / (fractions[0] + fractions[1])
    train, val, _ = _fold_split(rest, labels, groups, shares, seed)
    return [train, val, test]


def _some_class_skips_a_fold(folds: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                             groups: np.ndarray) -> bool:
    """Whether a class with at least as many distinct photos as folds is missing from some fold's test photos."""
    tested = [set(labels[test].tolist()) for _, test in folds]
    return any(n >= len(folds) and any(c not in fold for fold in tested)
               for c, n in _photos_per_class(labels, groups).items())


def _deal_to_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rest, test) of ``n_folds`` folds where each class's photos (near-duplicate groups as one) are shuffled and dealt
    to the folds in turn: a class of 4 photos in 4 folds is tested once in each. A group goes where its first
    photo's class sends it; each class starts where the previous one stopped, so small classes fill folds evenly."""
    _, first, unit_of = np.unique(groups, return_index=True, return_inverse=True)
    unit_label = labels[first]
    rng = np.random.default_rng(seed)
    fold_of_unit = np.zeros(len(first), dtype=int)
    dealt = 0
    for c in np.unique(unit_label):
        units = rng.permutation(np.flatnonzero(unit_label == c))
        fold_of_unit[units] = (dealt + np.arange(len(units))) % n_folds
        dealt += len(units)
    fold_of_photo = fold_of_unit[unit_of]
    return [(np.flatnonzero(fold_of_photo != f), np.flatnonzero(fold_of_photo == f)) for f in range(n_folds)]


def _warn_about_small_classes(
    splits: list[np.ndarray], labels: np.ndarray, photos: dict[int, int], fractions: np.ndarray, names: list[str],
) -> None:
    """Name the classes that train but are never validated or tested for want of photos; say so if test is empty."""
    present = [set(labels[s].tolist()) for s in splits]
    notes = []
    for c, n in photos.items():
        never = [verb for held, fraction, verb in zip(present[1:], fractions[1:], ("validated", "tested"))
                 if fraction > 0 and c not in held]
        if n < PHOTOS_TO_TEST and never and c in present[0]:
            notes.append(f"{names[c]} ({n} photo{'s' if n > 1 else ''}: never {' or '.join(never)})")
    untested = [names[c] for c, n in photos.items() if n >= PHOTOS_TO_TEST and c in present[0] and c not in present[2]]
    if fractions[2] > 0 and untested and len(splits[2]):
        logger.warning("no test photo in this split for %d of the classes (%s): they get no test score; "
                       "--cv_folds tests every photo once", len(untested), ", ".join(untested[:8])
                       + (", ..." if len(untested) > 8 else ""))
    if notes:
        logger.warning("%d classes have too few photos to be validated and tested (a class needs %d, one for each "
                       "split); they train, but: %s. Add photos to these classes.", len(notes), PHOTOS_TO_TEST,
                       ", ".join(notes))
    if fractions[2] > 0 and not len(splits[2]):
        logger.warning("no test split: no class has the %d photos it takes to be tested, so the run has no test "
                       "score. Add photos.", PHOTOS_TO_TEST)
