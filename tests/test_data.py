import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, make_bedroom_folder, make_photo
from datasets import ClassLabel, Image

from hf_model.data import (
    BadImageError,
    build_dataset,
    detect_layout,
    near_duplicate_groups,
    read_bedroom_labels,
    scan_images,
    stratified_group_split,
)


def test_imagefolder_gives_image_and_classlabel_features(image_folder):
    data = build_dataset(str(image_folder), split_fractions=[0.5, 0.25, 0.25], seed=0)
    assert set(data) == {"train", "validation", "test"}
    assert isinstance(data["train"].features["image"], Image)
    assert data["train"].features["label"] == ClassLabel(names=["blue", "red"])
    assert sum(len(s) for s in data.values()) == 24


def test_bedroom_labels_csv_names_classes_and_keeps_unlabeled(tmp_path):
    root = make_bedroom_folder(tmp_path)
    with (root / "labels.csv").open("w") as f:
        f.write("file,label\n" + "".join(f"bed_{i}.jpg,{'M' if i % 2 else 'O'}\n" for i in range(1, 21)))
    data = build_dataset(str(root), split_fractions=[0.5, 0.25, 0.25])
    assert data["train"].features["label"].names == ["Modern", "Old"]
    assert len(data["unlabeled"]) == 4
    assert "labels.csv" in data.label_source
    for split in ("train", "validation", "test"):
        for example in data[split]:
            number = int(Path(example["image"].filename).stem.split("_")[1])
            assert example["label"] == (0 if number % 2 else 1)


def test_labels_txt_pairs_the_ith_label_with_the_ith_existing_file(tmp_path):
    root = make_bedroom_folder(tmp_path, 8)
    (root / "bed_3.jpg").unlink()  # a gap: label 3 belongs to bed_4 under the write-up's rule
    (root / "labels.txt").write_text("MOMO")
    found = read_bedroom_labels(root)
    names = [Path(f).name for f in found.files]
    assert names == ["bed_1.jpg", "bed_2.jpg", "bed_4.jpg", "bed_5.jpg"]
    assert [found.class_names[i] for i in found.labels] == ["Modern", "Old", "Modern", "Old"]
    assert "labels.txt" in found.label_source


def test_labels_txt_uses_labeled_order_when_present(tmp_path):
    root = make_bedroom_folder(tmp_path, 6)
    (root / "labels.txt").write_text("MOM")
    (root / "labeled_order.txt").write_text("bed_2.jpg\nbed_9.jpg\nbed_4.jpg\n")  # bed_9 is not here
    found = read_bedroom_labels(root)
    assert [Path(f).name for f in found.files] == ["bed_2.jpg", "bed_4.jpg"]
    assert [found.class_names[i] for i in found.labels] == ["Modern", "Modern"]


def test_bad_label_letter_names_the_file_and_line(tmp_path):
    root = make_bedroom_folder(tmp_path, 4)
    (root / "labels.csv").write_text("file,label\nbed_1.jpg,M\nbed_2.jpg,X\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: label 'X'"):
        read_bedroom_labels(root)


def test_broken_image_gives_clear_error_naming_it(image_folder):
    broken = image_folder / "red" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg.*--skip_bad_images"):
        build_dataset(str(image_folder), split_fractions=[0.5, 0.25, 0.25])
    data = build_dataset(str(image_folder), split_fractions=[0.5, 0.25, 0.25], skip_bad_images=True)
    assert sum(len(s) for s in data.values()) == 24


def test_near_duplicates_share_a_group(tmp_path):
    a = make_photo(tmp_path / "a.jpg", (200, 10, 10), size=64, seed=1)
    b = tmp_path / "b.png"
    from PIL import Image as PILImage

    PILImage.open(a).resize((60, 60)).save(b)  # same photo, rescaled and re-encoded
    c = make_photo(tmp_path / "c.jpg", (10, 10, 200), size=64, seed=2)
    hashes, good = scan_images([str(a), str(b), str(c)])
    groups = near_duplicate_groups(hashes)
    assert good.all() and groups[0] == groups[1] != groups[2]


def test_split_is_stratified_grouped_and_seeded():
    labels = np.array([0] * 60 + [1] * 40)
    groups = np.arange(100) // 2  # pairs of duplicates
    train, val, test = stratified_group_split(labels, groups, [0.7, 0.15, 0.15], seed=3)
    assert len(train) + len(val) + len(test) == 100
    assert not set(groups[test]) & set(groups[train]) and not set(groups[val]) & set(groups[train])
    assert abs(labels[test].mean() - 0.4) < 0.1
    again = stratified_group_split(labels, groups, [0.7, 0.15, 0.15], seed=3)
    assert all((x == y).all() for x, y in zip((train, val, test), again))
    other = stratified_group_split(labels, groups, [0.7, 0.15, 0.15], seed=4)
    assert not (other[2].shape == test.shape and (other[2] == test).all())


def test_split_works_when_classes_are_smaller_than_the_fold_count():
    labels = np.repeat(np.arange(50), 4)  # four photos per species, like the birds
    train, val, test = stratified_group_split(labels, np.arange(200), [0.75, 0.125, 0.125], seed=0)
    assert len(test) == pytest.approx(25, abs=6) and len(val) == pytest.approx(25, abs=8)
    assert len(set(labels[train])) == 50  # every species keeps training photos


def test_bad_split_fractions_are_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_group_split(np.zeros(10), np.arange(10), [0.5, 0.5, 0.5], seed=0)


# ---- real photos in ../shared/data ----

@pytest.fixture(scope="module")
def bedrooms():
    return build_dataset(str(SHARED_DATA / "bedrooms"), seed=42)


@pytest.mark.real_data
def test_real_bedrooms_counts_and_split_sizes(bedrooms):
    assert detect_layout(SHARED_DATA / "bedrooms") == "bedrooms"
    labeled = {s: len(bedrooms[s]) for s in ("train", "validation", "test")}
    assert sum(labeled.values()) == 386
    counts = Counter(label for s in ("train", "validation", "test") for label in bedrooms[s]["label"])
    assert counts == {1: 232, 0: 154}  # Old, Modern from labels.csv
    assert 0.72 < labeled["train"] / 386 < 0.80 and 0.08 < labeled["test"] / 386 < 0.13
    assert len(bedrooms["unlabeled"]) > 700


@pytest.mark.real_data
def test_real_bedroom_split_is_stratified_and_reproducible(bedrooms):
    for split in ("train", "validation", "test"):
        share_old = np.mean(bedrooms[split]["label"])
        assert abs(share_old - 232 / 386) < 0.07, split
    again = build_dataset(str(SHARED_DATA / "bedrooms"), seed=42)
    assert again["test"]["image"][0].filename == bedrooms["test"]["image"][0].filename
    assert [Path(x["path"]).name for x in again["test"].cast_column("image", Image(decode=False))["image"]] == \
        [Path(x["path"]).name for x in bedrooms["test"].cast_column("image", Image(decode=False))["image"]]


@pytest.mark.real_data
def test_real_known_duplicates_never_straddle_splits(bedrooms):
    where = {}
    for split, data in bedrooms.items():
        for item in data.cast_column("image", Image(decode=False))["image"]:
            where[Path(item["path"]).name] = split
    with (SHARED_DATA / "bedrooms" / "duplicates.csv").open() as f:
        pairs = [(r["file_a"], r["file_b"]) for r in csv.DictReader(f)]
    checked = 0
    for a, b in pairs:
        if a in where and b in where:
            assert where[a] == where[b], (a, b)
            checked += 1
        elif (a in where) != (b in where) and (where.get(a) or where.get(b)) != "unlabeled":
            # an unlabeled twin of a labeled photo is dropped, never kept in another split
            assert (a if a in where else b) in where
    assert checked >= 10


@pytest.mark.real_data
def test_real_birds_one_class_per_species():
    data = build_dataset(str(SHARED_DATA / "birds"), split_fractions=[0.75, 0.125, 0.125], seed=42)
    names = data["train"].features["label"].names
    assert len(names) == 525 and "ABBOTTS BABBLER" in names
    assert sum(len(s) for s in data.values()) == 2100
    assert len(set(data["train"]["label"])) == 525
