"""The training entry point's data: which folder layouts it accepts, and what each kind of bad input does.

Everything goes through :func:`hf_model.data.build_dataset`, as ``hf-model train --data_dir`` does.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_bedroom_folder, make_photo, write_birds
from datasets import ClassLabel, Image
from photo_kinds import PHOTO_KINDS, READABLE_KINDS, UNREADABLE_KINDS, UPRIGHT_BOTTOM, UPRIGHT_TOP, eight_bit_copy
from PIL import Image as PILImage

from hf_model.config import TrainConfig
from hf_model.data import BadImageError, DataError, build_dataset, load_data, natural_case, scan_images

HALVES = [0.5, 0.25, 0.25]
COLOURS = {"bathroom": (30, 200, 30), "bedroom": (220, 30, 30), "kitchen": (30, 30, 220)}


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="hf_model.data")
    return caplog


def make_class_folders(root: Path, per_class: int = 6, classes=("bedroom", "kitchen"), subfolder=lambda i: "",
                       seed: int = 0) -> Path:
    """``root/<class>/<subfolder(i)>/<i>.jpg``; every photo its own noise (``seed`` apart), so none are
    near-duplicates."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            make_photo(root / name / subfolder(i) / f"{i}.jpg", COLOURS[name], seed=seed + 100 * c + i)
    return root


def class_counts(data) -> dict[str, int]:
    """Photos per class name over the train, validation and test splits."""
    names = data["train"].features["label"].names
    return dict(Counter(names[label] for split in ("train", "validation", "test") for label in data[split]["label"]))


def file_names(split) -> list[str]:
    return sorted(Path(item["path"]).name for item in split.cast_column("image", Image(decode=False))["image"])


def file_paths(split) -> set[Path]:
    return {Path(item["path"]).resolve() for item in split.cast_column("image", Image(decode=False))["image"]}


# ---- class folders: the class is the top-level folder ----

def test_nested_folders_are_photos_of_their_top_level_class(tmp_path):
    root = tmp_path / "photos"
    for name, years in [("bedroom", ("2022", "2023")), ("kitchen", ("2022", "2024"))]:
        make_class_folders(root, 6, (name,), subfolder=lambda i, years=years: years[i % 2])
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"].names == ["bedroom", "kitchen"]
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    for split in ("train", "validation", "test"):  # every photo keeps its top-level folder's class
        names = data[split].features["label"].names
        for item, label in zip(data[split].cast_column("image", Image(decode=False))["image"], data[split]["label"]):
            assert Path(item["path"]).parts[-3] == names[label]


def test_classes_and_photo_counts_are_logged_before_training(tmp_path, info_logs):
    make_class_folders(tmp_path / "photos", 6, ("bedroom", "kitchen", "bathroom"))
    (tmp_path / "photos" / "kitchen" / "7.jpg").write_bytes((tmp_path / "photos" / "kitchen" / "0.jpg").read_bytes())
    build_dataset(str(tmp_path / "photos"), split_fractions=HALVES, seed=0)
    assert "3 classes, 19 photos: bathroom 6, bedroom 6, kitchen 7" in info_logs.text


def test_many_classes_are_logged_as_one_summary_line(tmp_path, info_logs):
    root = tmp_path / "photos"
    for c in range(30):
        for i in range(3 + (c == 0)):
            make_photo(root / f"class_{c:02d}" / f"{i}.jpg", (8 * c, 255 - 8 * c, 128), size=32, seed=10 * c + i)
    build_dataset(str(root), split_fractions=HALVES, seed=0)
    [line] = [r.getMessage() for r in info_logs.records if "30 classes" in r.getMessage()]
    assert "91 photos" in line and "3 to 4 photos a class" in line and len(line) < 400


def test_non_image_files_are_left_out_and_counted_in_the_log(tmp_path, info_logs):
    root = make_class_folders(tmp_path / "photos")
    (root / "bedroom" / "notes.txt").write_text("the blue one is a guest room")
    (root / "kitchen" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "README").write_text("my photos")
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert "3 files are not images and are left out" in info_logs.text
    assert "bedroom/notes.txt ('.txt' is not an image type Pillow opens)" in info_logs.text


def test_hidden_and_system_files_are_ignored(tmp_path):
    root = make_class_folders(tmp_path / "photos")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "bedroom" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / "__MACOSX" / "bedroom").mkdir(parents=True)
    (root / "__MACOSX" / "bedroom" / "._1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "kitchen" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"].names == ["bedroom", "kitchen"]
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}


def test_photos_beside_class_folders_stop_with_the_layouts_accepted(tmp_path):
    root = make_class_folders(tmp_path / "photos")
    make_photo(root / "stray.jpg", (0, 0, 0))
    with pytest.raises(ValueError, match=r"photos: 1 photo \(stray\.jpg\) sits directly in the folder.*"
                                         r"Layouts accepted: .*<class>/"):
        build_dataset(str(root))


def test_folder_without_class_folders_stops_with_the_layouts_accepted(tmp_path):
    for i in range(6):
        make_photo(tmp_path / "photos" / f"room_{i}.jpg", (50, 50, 50), seed=i)
    with pytest.raises(ValueError, match=r"6 photos .*sit directly in .*Layouts accepted: .*train/, validation/"):
        build_dataset(str(tmp_path / "photos"))


def test_a_single_class_folder_stops_saying_two_are_needed(tmp_path):
    root = make_class_folders(tmp_path / "photos", classes=("bedroom",))
    with pytest.raises(ValueError, match=r"1 class folder \(bedroom\).*at least two"):
        build_dataset(str(root))


@pytest.mark.parametrize("leftover", [None, "notes.txt", ".DS_Store"])
def test_empty_class_folder_stops_naming_it(tmp_path, leftover):
    root = make_class_folders(tmp_path / "photos")
    (root / "attic").mkdir()
    if leftover:
        (root / "attic" / leftover).write_text("")
    with pytest.raises(ValueError, match=r"class folder 'attic' .*no photos.*add photos .*or remove the folder"):
        build_dataset(str(root))


# ---- folders split in advance ----

@pytest.mark.parametrize("validation_name", ["validation", "valid", "val"])
def test_presplit_folders_keep_their_splits(tmp_path, validation_name):
    root = tmp_path / "photos"
    make_class_folders(root / "train", 4, subfolder=lambda i: "2022" if i % 2 else "")
    make_class_folders(root / validation_name, 2, seed=1000)
    make_class_folders(root / "test", 3, seed=2000)
    data = build_dataset(str(root), seed=0)
    assert {s: len(data[s]) for s in ("train", "validation", "test")} == {"train": 8, "validation": 4, "test": 6}
    for split, folder in [("train", "train"), ("validation", validation_name), ("test", "test")]:
        assert {p.relative_to(root.resolve()).parts[0] for p in file_paths(data[split])} == {folder}
    assert data["test"].features["label"].names == ["bedroom", "kitchen"]


def test_presplit_train_and_test_keep_the_test_and_carve_validation_from_train(tmp_path):
    root = tmp_path / "photos"
    make_class_folders(root / "train", 3)  # too small for a 15 % stratified share
    make_class_folders(root / "test", 2, seed=2000)
    data = build_dataset(str(root), seed=0)
    train_files = {p.resolve() for p in (root / "train").rglob("*.jpg")}
    assert file_paths(data["test"]) == {p.resolve() for p in (root / "test").rglob("*.jpg")}
    assert file_paths(data["train"]) | file_paths(data["validation"]) == train_files
    assert not file_paths(data["train"]) & file_paths(data["validation"])
    assert set(data["train"]["label"]) == {0, 1} and len(data["validation"]) >= 1


def test_presplit_train_and_validation_keep_the_validation_and_carve_test_from_train(tmp_path):
    root = tmp_path / "photos"
    make_class_folders(root / "train", 8)
    make_class_folders(root / "validation", 2, seed=1000)
    data = build_dataset(str(root), seed=0)
    assert file_paths(data["validation"]) == {p.resolve() for p in (root / "validation").rglob("*.jpg")}
    train_files = {p.resolve() for p in (root / "train").rglob("*.jpg")}
    assert file_paths(data["train"]) | file_paths(data["test"]) == train_files
    assert set(data["test"]["label"]) == {0, 1}


def test_split_folders_mixed_with_class_folders_stop(tmp_path):
    root = make_class_folders(tmp_path / "photos", 3, ("bedroom", "kitchen"))
    make_class_folders(root / "train", 3)
    with pytest.raises(ValueError, match=r"split folders \(train\) beside other folders \(bedroom, kitchen\)"):
        build_dataset(str(root))


def test_a_class_missing_from_the_train_folder_stops(tmp_path):
    root = tmp_path / "photos"
    make_class_folders(root / "train", 4, ("bedroom", "kitchen"))
    make_class_folders(root / "test", 2, ("bedroom", "kitchen", "bathroom"), seed=2000)
    with pytest.raises(ValueError, match=r"bathroom.*not in .*train"):
        build_dataset(str(root))


# ---- bedroom labels: labels.txt and labels.csv ----

def test_labels_txt_with_more_labels_than_photos_stops_with_both_counts(tmp_path):
    root = make_bedroom_folder(tmp_path, 6)
    (root / "labels.txt").write_text("MOMOMOMO")
    with pytest.raises(ValueError, match=r"labels.txt has 8 labels but .* only 6 bed_N.jpg photos.*labels.csv"):
        build_dataset(str(root))


def test_labels_txt_with_fewer_labels_than_photos_says_how_many_stay_unlabeled(tmp_path, info_logs):
    root = make_bedroom_folder(tmp_path, 12)
    (root / "labels.txt").write_text("MOMOMOMO")
    data = build_dataset(str(root), split_fractions=HALVES)
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 8 and len(data["unlabeled"]) == 4
    assert "8 labels for 12 bed_N.jpg photos" in info_logs.text and "other 4 stay unlabeled" in info_logs.text


def test_labels_txt_may_hold_one_label_a_line(tmp_path):
    root = make_bedroom_folder(tmp_path, 8)
    (root / "labels.txt").write_text("M\nO\nm\no\nM\nO\nM\nO\n")
    data = build_dataset(str(root), split_fractions=HALVES)
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 8


def test_unknown_label_letter_names_the_file_the_position_and_the_letter(tmp_path):
    root = make_bedroom_folder(tmp_path, 8)
    (root / "labels.txt").write_text("MOMO\nMXMO\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: label 6 is 'X'; .*M or O"):
        build_dataset(str(root))


def test_labels_csv_naming_missing_files_skips_them_naming_lines_and_count(tmp_path, info_logs):
    root = make_bedroom_folder(tmp_path, 12)
    rows = [f"bed_{i}.jpg,{'M' if i % 2 else 'O'}" for i in range(1, 13)]
    rows[3:3] = ["bed_99.jpg,M"]
    (root / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    data = build_dataset(str(root), split_fractions=HALVES)
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 12
    assert "1 of 13 labeled files are not in" in info_logs.text and "labels.csv:5 bed_99.jpg" in info_logs.text


# ---- the birds layout: birds.csv ----

def test_birds_csv_naming_missing_files_skips_them_naming_lines_and_count(tmp_path, info_logs):
    root = write_birds(tmp_path / "birds", {"CROW": 4, "JAY": 4}, missing={"JAY": 2})
    data = build_dataset(str(root), split_fractions=HALVES)
    assert class_counts(data) == {"Crow": 4, "Jay": 4}  # species in the natural case; birds.csv's for the files
    assert "2 of 10 labeled files are not in" in info_logs.text and "birds.csv:10 images/JAY/4.jpg" in info_logs.text


def test_birds_csv_class_whose_files_are_all_missing_stops_naming_it(tmp_path):
    root = write_birds(tmp_path / "birds", {"CROW": 4, "JAY": 4, "OWL": 0}, missing={"OWL": 3})
    with pytest.raises(ValueError, match=r"no photos of class Owl"):
        build_dataset(str(root), split_fractions=HALVES)


@pytest.mark.parametrize(("kaggle", "natural"), [
    ("AFRICAN CROWNED CRANE", "African Crowned Crane"),
    ("BLACK-THROATED SPARROW", "Black-throated Sparrow"),  # bird names keep the part after a hyphen lower case
    ("CARMINE BEE-EATER", "Carmine Bee-eater"),
    ("D-ARNAUDS BARBET", "D-Arnauds Barbet"),  # an elided D' keeps its capital
    ("ABBOTT'S BABBLER", "Abbott's Babbler"),  # not str.title()'s "Abbott'S"
    ("BLACK & YELLOW BROADBILL", "Black & Yellow Broadbill"),
    ("Cape May Warbler", "Cape May Warbler"),  # a name with lower-case letters is the dataset's own choice
    ("HOUSE  SPARROW", "House  Sparrow"),
    ("COCK OF THE ROCK", "Cock of the Rock"),  # joining words stay lower case, after the first word
    ("CHARA DE COLLAR", "Chara de Collar"),
    ("OF THE YEAR", "Of the Year"),
])
def test_natural_case_writes_species_as_people_do(kaggle, natural):
    assert natural_case(kaggle) == natural


def test_a_published_birds_dataset_keeps_the_kaggle_names_in_class_id_order(tmp_path):
    from hf_model.hub import load_dataset_to_publish

    root = write_birds(tmp_path / "birds", {"BAR-TAILED GODWIT": 4, "CROW": 4, "JAY": 4})
    trained_on = build_dataset(str(root), split_fractions=HALVES)
    published, _ = load_dataset_to_publish(str(root), None, HALVES)
    assert trained_on["train"].features["label"].names == ["Bar-tailed Godwit", "Crow", "Jay"]
    assert published["train"].features["label"].names == ["BAR-TAILED GODWIT", "CROW", "JAY"]
    assert published["train"]["label"] == trained_on["train"]["label"]


# ---- photos of every kind ----

@pytest.mark.parametrize("kind", sorted(UNREADABLE_KINDS))
def test_unreadable_photo_stops_naming_it_unless_skipped(tmp_path, kind, info_logs):
    root = make_class_folders(tmp_path / "photos")
    bad = PHOTO_KINDS[kind](root / "bedroom")
    limit = PILImage.MAX_IMAGE_PIXELS
    with pytest.raises(BadImageError, match=rf"{bad.name}: not a readable image .*--skip_bad_images"):
        build_dataset(str(root), split_fractions=HALVES)
    assert PILImage.MAX_IMAGE_PIXELS == limit  # Pillow's decompression-bomb limit stays on
    data = build_dataset(str(root), split_fractions=HALVES, skip_bad_images=True)
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert f"skipping {bad}" in info_logs.text


def test_decompression_bomb_is_reported_as_one(tmp_path):
    root = make_class_folders(tmp_path / "photos")
    PHOTO_KINDS["decompression_bomb"](root / "kitchen")
    with pytest.raises(BadImageError, match=r"decompression_bomb.png: not a readable image \(DecompressionBombError"):
        build_dataset(str(root), split_fractions=HALVES)


@pytest.mark.parametrize("kind", sorted(READABLE_KINDS))
def test_readable_photo_kinds_load_as_rgb(tmp_path, kind):
    root = make_class_folders(tmp_path / "photos")
    odd = PHOTO_KINDS[kind](root / "bedroom")
    data = build_dataset(str(root), split_fractions=HALVES)
    assert class_counts(data) == {"bedroom": 7, "kitchen": 6}
    split = next(s for s in ("train", "validation", "test") if odd.name in file_names(data[s]))
    position = [Path(i["path"]).name for i in data[split].cast_column("image", Image(decode=False))["image"]].index(
        odd.name)
    assert data[split][position]["image"].size[0] > 0


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(sum(np.bitwise_count(a ^ b)))


def test_exif_rotated_photo_is_hashed_upright(tmp_path):
    rotated = PHOTO_KINDS["exif_rotated"](tmp_path)
    upright = PILImage.new("RGB", (32, 48), UPRIGHT_TOP)
    upright.paste(UPRIGHT_BOTTOM, (0, 24, 32, 48))
    upright.save(tmp_path / "upright.png")
    sideways = PILImage.open(rotated).convert("RGB")  # the pixels as stored, EXIF ignored
    sideways.save(tmp_path / "sideways.png")
    hashes, good = scan_images([str(rotated), str(tmp_path / "upright.png"), str(tmp_path / "sideways.png")])
    assert good.all()
    assert hamming(hashes[0], hashes[1]) <= 4 < hamming(hashes[0], hashes[2])


def test_sixteen_bit_photo_is_hashed_on_its_scaled_pixels_not_a_white_square(tmp_path):
    sixteen = PHOTO_KINDS["sixteen_bit_png"](tmp_path)
    eight = eight_bit_copy(tmp_path)
    PILImage.new("RGB", (48, 48), (255, 255, 255)).save(tmp_path / "white.png")
    hashes, good = scan_images([str(sixteen), str(eight), str(tmp_path / "white.png")])
    assert good.all()
    assert hamming(hashes[0], hashes[1]) <= 4 < hamming(hashes[0], hashes[2])


def write_bedroom_labels(root: Path, rows: list[str], encoding: str = "utf-8") -> None:
    (root / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n", encoding=encoding)


def test_labels_csv_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path):
    root = make_bedroom_folder(tmp_path / "bedrooms", n=12)
    write_bedroom_labels(root, [f"bed_{i},{'MO'[i % 2]}".replace(",", ".jpg,") for i in range(1, 13)], "utf-8-sig")
    data = build_dataset(str(root))
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 12


def test_a_photo_labeled_twice_with_different_labels_stops_naming_both_lines(tmp_path):
    root = make_bedroom_folder(tmp_path / "bedrooms", n=12)
    write_bedroom_labels(root, [f"bed_{i}.jpg,{'MO'[i % 2]}" for i in range(1, 13)] + ["bed_9.jpg,M"])
    with pytest.raises(ValueError, match=r"labels.csv:14: bed_9.jpg is labeled M here but O at labels.csv:10"):
        build_dataset(str(root))


def test_labels_csv_paths_starting_with_dot_slash_name_the_same_photo(tmp_path):
    root = make_bedroom_folder(tmp_path / "bedrooms", n=12)
    write_bedroom_labels(root, [f"./bed_{i}.jpg,{'MO'[i % 2]}" for i in range(1, 13)])
    data = build_dataset(str(root))
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 12 and "unlabeled" not in data


def test_more_folds_than_photos_stop_naming_the_flag_and_a_fold_count_that_works(tmp_path):
    root = make_class_folders(tmp_path / "photos", per_class=3)
    with pytest.raises(ValueError, match=r"--cv_folds 5: too few photos .*use --cv_folds 3 or fewer"):
        build_dataset(str(root), cv_fold=(0, 5))


def test_classes_left_out_of_the_test_split_are_named(tmp_path, caplog):
    root = make_class_folders(tmp_path / "photos", per_class=6, classes=("bedroom", "kitchen", "bathroom"))
    with caplog.at_level(logging.WARNING):
        data = build_dataset(str(root), split_fractions=(0.76, 0.14, 0.10))
    tested = {data["test"].features["label"].names[i] for i in data["test"]["label"]}
    missing = sorted({"bedroom", "kitchen", "bathroom"} - tested)
    assert missing and f"no test photo in this split for {len(missing)} of the classes ({', '.join(missing)})" \
        in caplog.text


# ---- metadata files: datasets' ImageFolder convention (file_name + label columns) ----

def write_metadata(path: Path, rows: list[dict]) -> Path:
    """``rows`` as ``metadata.csv``, ``.jsonl`` or ``.parquet`` (by ``path``'s suffix), as ``datasets`` reads them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_listed_photos(folder: Path, per_class: int = 6, classes=("bedroom", "kitchen"), seed: int = 0,
                       subfolder=lambda c, i: "") -> list[dict]:
    """Photos ``folder/<subfolder(c, i)>/<class>_<i>.jpg`` and their metadata rows (``file_name``, ``label``): the
    class is in each file's name, so a test can check every photo's label."""
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            file = str(Path(subfolder(c, i)) / f"{name}_{i}.jpg")
            make_photo(folder / file, COLOURS[name], seed=seed + 100 * c + i)
            rows.append({"file_name": file, "label": name})
    return rows


def labels_by_file(data, splits=("train", "validation", "test")) -> dict[str, str]:
    """``{file name: class name}`` over ``splits``."""
    names = data["train"].features["label"].names
    out = {}
    for split in splits:
        for name, label in zip(file_names_in_order(data[split]), data[split]["label"]):
            out[name] = names[label]
    return out


def file_names_in_order(split) -> list[str]:
    return [Path(item["path"]).name for item in split.cast_column("image", Image(decode=False))["image"]]


def assert_labels_follow_file_names(data, splits=("train", "validation", "test")) -> None:
    for file, label in labels_by_file(data, splits).items():
        assert file.rsplit("_", 1)[0] == label, file


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_flat_folder_with_a_metadata_file_takes_each_photos_label_from_it(tmp_path, fmt):
    root = tmp_path / "photos"
    write_metadata(root / f"metadata.{fmt}", make_listed_photos(root))
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"] == ClassLabel(names=["bedroom", "kitchen"])
    assert set(data["train"].features) == {"image", "label"}
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert_labels_follow_file_names(data)
    assert data.label_source == f"column 'label' of metadata.{fmt}"


def test_class_folders_beside_a_metadata_csv_without_labels_take_their_labels_from_the_folders(tmp_path, info_logs):
    root = make_class_folders(tmp_path / "photos")
    rows = [{"file_name": str(p.relative_to(root)), "photographer": "ann"} for p in sorted(root.rglob("*.jpg"))]
    write_metadata(root / "metadata.csv", rows)
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"].names == ["bedroom", "kitchen"]
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert ("metadata.csv: no 'label' column (its columns: file_name, photographer): the class folders give the "
            "labels") in info_logs.text
    assert "not an image" not in info_logs.text  # the metadata file is data, not a stray file


def test_a_metadata_label_column_labels_photos_whatever_folders_they_sit_in(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root, subfolder=lambda c, i: f"batch{i % 2}")  # batch0/, batch1/ mix both classes
    write_metadata(root / "metadata.csv", rows)
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"].names == ["bedroom", "kitchen"]
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert_labels_follow_file_names(data)


def test_file_names_are_relative_to_the_metadata_file_in_a_subfolder(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root / "images", subfolder=lambda c, i: "2023" if i < 3 else "2024")
    write_metadata(root / "images" / "metadata.jsonl", rows)
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert_labels_follow_file_names(data)


def test_split_folders_each_with_their_own_metadata_file_keep_their_splits(tmp_path):
    root = tmp_path / "photos"
    for split, count, seed in [("train", 4, 0), ("validation", 2, 1000), ("test", 3, 2000)]:
        write_metadata(root / split / "metadata.csv", make_listed_photos(root / split, count, seed=seed))
    data = build_dataset(str(root), seed=0)
    assert {s: len(data[s]) for s in ("train", "validation", "test")} == {"train": 8, "validation": 4, "test": 6}
    for split in ("train", "validation", "test"):
        assert {p.relative_to(root.resolve()).parts[0] for p in file_paths(data[split])} == {split}
    assert data["test"].features["label"].names == ["bedroom", "kitchen"]
    assert_labels_follow_file_names(data)
    assert data.label_source.startswith("column 'label' of test/metadata.csv, train/metadata.csv, validation/")


def test_integer_labels_become_classes_named_by_their_digits(tmp_path, info_logs):
    root = tmp_path / "photos"
    rows = make_listed_photos(root, classes=("bedroom", "kitchen", "bathroom"))
    numbers = {"bedroom": 0, "kitchen": 1, "bathroom": 2}
    write_metadata(root / "metadata.jsonl", [{**row, "label": numbers[row["label"]]} for row in rows])
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert data["train"].features["label"].names == ["0", "1", "2"]
    assert class_counts(data) == {"0": 6, "1": 6, "2": 6}
    by_file = labels_by_file(data)
    assert all(by_file[f"{name}_{i}.jpg"] == str(n) for name, n in numbers.items() for i in range(6))
    assert "the labels are numbers, so the classes are named 0, 1, 2" in info_logs.text


def test_extra_metadata_columns_are_left_out_of_the_dataset_and_logged(tmp_path, info_logs):
    root = tmp_path / "photos"
    rows = [{**row, "photographer": "ann", "year": 2023} for row in make_listed_photos(root)]
    write_metadata(root / "metadata.csv", rows)
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert all(set(data[s].features) == {"image", "label"} for s in data)
    assert "column 'label' of metadata.csv: columns photographer, year not used" in info_logs.text


def test_label_column_names_another_metadata_column(tmp_path):
    root = tmp_path / "photos"
    rows = [{"file_name": row["file_name"], "room": row["label"]} for row in make_listed_photos(root)]
    write_metadata(root / "metadata.csv", rows)
    data = build_dataset(str(root), label_column="room", split_fractions=HALVES, seed=0)
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert_labels_follow_file_names(data)


def test_photos_no_metadata_row_lists_are_left_out_and_counted(tmp_path, info_logs):
    root = tmp_path / "photos"
    rows = make_listed_photos(root)
    make_photo(root / "extra" / "unsorted_1.jpg", (0, 0, 0))
    make_photo(root / "unsorted_2.jpg", (0, 0, 0))
    write_metadata(root / "metadata.csv", rows)
    data = build_dataset(str(root), split_fractions=HALVES, seed=0)
    assert class_counts(data) == {"bedroom": 6, "kitchen": 6}
    assert "2 photos are in no metadata file and are left out (they have no label): extra/unsorted_1.jpg, " \
        "unsorted_2.jpg" \
        in info_logs.text


def test_the_training_entry_point_loads_a_metadata_labeled_folder(tmp_path):
    root = tmp_path / "photos"
    write_metadata(root / "metadata.parquet", [{**row, "label": row["label"].title()} for row in
                                               make_listed_photos(root, 8)])
    data = load_data(TrainConfig(data_dir=str(root), split_fractions=HALVES), seed=0)
    assert data["train"].features["label"].names == ["Bedroom", "Kitchen"]
    assert {split: len(data[split]) for split in ("train", "validation", "test")} == {"train": 8, "validation": 4,
                                                                                       "test": 4}
    assert {data["test"].features["label"].names[c] for c in data["test"]["label"]} == {"Bedroom", "Kitchen"}


# ---- metadata files that cannot label the photos: one line naming the file ----

def test_metadata_without_a_label_column_beside_loose_photos_stops_naming_the_file(tmp_path):
    root = tmp_path / "photos"
    rows = [{"file_name": row["file_name"], "photographer": "ann"} for row in make_listed_photos(root)]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv: no 'label' column \(its columns: file_name, photographer\) "
                                        r"and the photos in .*photos are not in class folders.*--label_column"):
        build_dataset(str(root))


def test_a_file_name_that_is_not_there_stops_naming_the_line_and_the_count(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root)
    rows[3:3] = [{"file_name": "ghost.jpg", "label": "bedroom"}]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv: 1 of 13 rows name a file that is not there "
                                        r"\(.*metadata.csv:5 ghost.jpg\)"):
        build_dataset(str(root))


def test_a_row_without_a_label_stops_naming_its_line(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root)
    rows[2]["label"] = ""
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv:4: bedroom_2.jpg has no label in column 'label'"):
        build_dataset(str(root))


def test_a_jsonl_row_with_a_null_label_stops_naming_its_line(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root)
    rows[7]["label"] = None
    write_metadata(root / "metadata.jsonl", rows)
    with pytest.raises(DataError, match=r"metadata.jsonl:8: kitchen_1.jpg has no label"):
        build_dataset(str(root))


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", ""])
def test_a_file_name_outside_the_metadata_folder_stops(tmp_path, name):
    root = tmp_path / "photos"
    rows = make_listed_photos(root) + [{"file_name": name, "label": "bedroom"}]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=rf"metadata.csv:14: file_name '{name}' is not a path inside"):
        build_dataset(str(root))


def test_metadata_without_a_file_name_column_stops_naming_the_file(tmp_path):
    root = tmp_path / "photos"
    rows = [{"path": row["file_name"], "label": row["label"]} for row in make_listed_photos(root)]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv: no 'file_name' column \(its columns: path, label\)"):
        build_dataset(str(root))


def test_a_photo_listed_twice_with_two_labels_stops_naming_both_lines(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root) + [{"file_name": "./bedroom_1.jpg", "label": "kitchen"}]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv:14: .*bedroom_1.jpg is labeled 'kitchen' here but 'bedroom' at "
                                        r".*metadata.csv:3"):
        build_dataset(str(root))


def test_metadata_of_one_class_stops_saying_two_are_needed(tmp_path):
    root = tmp_path / "photos"
    write_metadata(root / "metadata.csv", make_listed_photos(root, classes=("bedroom",)))
    with pytest.raises(DataError, match=r"column 'label' of metadata.csv: 1 class \(bedroom\).*at least two"):
        build_dataset(str(root))


def test_metadata_files_of_two_formats_stop_naming_them(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root, subfolder=lambda c, i: "a" if c == 0 else "b")
    write_metadata(root / "a" / "metadata.csv", [r for r in rows if r["file_name"].startswith("a")])
    write_metadata(root / "b" / "metadata.jsonl", [r for r in rows if r["file_name"].startswith("b")])
    with pytest.raises(DataError, match=r"metadata files of 2 formats \(a/metadata.csv, b/metadata.jsonl\)"):
        build_dataset(str(root))


def test_a_metadata_jsonl_line_that_is_not_json_stops_naming_the_line(tmp_path):
    root = tmp_path / "photos"
    path = write_metadata(root / "metadata.jsonl", make_listed_photos(root))
    path.write_text(path.read_text() + "{file_name: oops}\n")
    with pytest.raises(DataError, match=r"^\S*metadata.jsonl:13: not a JSON object"):
        build_dataset(str(root))


def test_listed_photos_inside_and_outside_split_folders_stop(tmp_path):
    root = tmp_path / "photos"
    rows = make_listed_photos(root, subfolder=lambda c, i: "train" if i < 4 else "")
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"metadata.csv: lists photos in split folders \(train\) and 4 outside them"):
        build_dataset(str(root))


def test_a_local_folder_given_as_a_hub_dataset_says_to_pass_it_as_data_dir(tmp_path):
    root = make_class_folders(tmp_path / "photos", per_class=3)
    rows = [{"file_name": str(p.relative_to(root)), "photographer": "ann"} for p in sorted(root.rglob("*.jpg"))]
    write_metadata(root / "metadata.csv", rows)
    with pytest.raises(DataError, match=r"has no column 'label'.*local folder: pass it as --data_dir"):
        build_dataset(dataset_name=str(root))


def test_a_metadata_parquet_that_is_not_parquet_stops_naming_it(tmp_path):
    root = tmp_path / "photos"
    make_listed_photos(root)
    (root / "metadata.parquet").write_text("file_name,label\n")
    with pytest.raises(DataError, match=r"^\S*photos/metadata.parquet: cannot be read as PARQUET \(Arrow"):
        build_dataset(str(root))


def test_a_labels_file_on_class_folders_is_refused_not_ignored(tmp_path):
    make_class_folders(tmp_path / "photos")
    with pytest.raises(DataError, match=r"--labels_file my_labels.csv: only a folder of bed_N.jpg photos reads a "
                                        r"labels file, and .*photos is not one \(its labels come from its class "
                                        r"folders or a metadata file\)"):
        build_dataset(str(tmp_path / "photos"), labels_file="my_labels.csv")


def test_bed_photos_with_a_labels_file_of_another_name_read_it(tmp_path):
    root = make_bedroom_folder(tmp_path / "bedrooms", n=12)
    (root / "my_labels.csv").write_text("file,label\n" + "".join(f"bed_{i}.jpg,{'MO'[i % 2]}\n" for i in range(1, 13)))
    data = build_dataset(str(root), labels_file=str(root / "my_labels.csv"))
    assert sum(len(data[s]) for s in ("train", "validation", "test")) == 12


def test_a_hub_dataset_that_cannot_be_reached_is_one_data_error_naming_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    with pytest.raises(DataError, match=r"^--dataset nosuch/photos: neither a local folder nor a Hub dataset that "
                                        r"could be loaded \(and the Hub is offline: HF_HUB_OFFLINE=1\)"):
        build_dataset(dataset_name="nosuch/photos")


def test_a_local_folder_given_as_dataset_is_named_as_a_folder_not_a_hub_dataset(tmp_path):
    make_class_folders(tmp_path / "photos")
    data = build_dataset(dataset_name=str(tmp_path / "photos"))
    assert data.label_source == "the dataset folder photos/ (column 'label')"


@pytest.mark.parametrize("label", [["cat"], {"name": "cat"}, 0.5])
def test_a_metadata_label_that_is_a_list_or_a_fraction_is_refused_naming_the_line(tmp_path, label):
    root = tmp_path / "photos"
    rows = make_listed_photos(root)
    rows[1]["label"] = label
    write_metadata(root / "metadata.jsonl", rows)
    with pytest.raises(DataError, match=r"metadata.jsonl:2: .* has the label .* a label here is one class name"):
        build_dataset(str(root))


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    with pytest.raises(DataError, match=r"photo.jpg is a file: give the folder that holds the photos"):
        build_dataset(str(tmp_path / "photo.jpg"))


def test_class_names_differing_only_in_case_are_warned_of(tmp_path, caplog):
    for c, name in enumerate(("Bath", "bath", "kitchen")):
        for i in range(6):
            make_photo(tmp_path / "photos" / name / f"{i}.jpg", (30, 80 * c, 200), seed=100 * c + i)
    with caplog.at_level(logging.WARNING, logger="hf_model.data"):
        build_dataset(str(tmp_path / "photos"))
    assert "the classes 'Bath' and 'bath' differ only in case or spaces and are trained as 2 classes" in caplog.text
