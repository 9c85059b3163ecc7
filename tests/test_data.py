import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, make_bedroom_folder, make_photo
from datasets import ClassLabel, Dataset, Features, Image, Value

from hf_model.config import DEFAULT_SPLIT_FRACTIONS
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


FRACTIONS = {"default": list(DEFAULT_SPLIT_FRACTIONS), "halves": [0.5, 0.25, 0.25]}


@pytest.mark.parametrize("fractions", list(FRACTIONS), ids=str)
@pytest.mark.parametrize("n_classes", range(2, 7))
@pytest.mark.parametrize("per_class", range(1, 11))
def test_small_classes_split_whenever_each_class_has_enough_photos(per_class, n_classes, fractions, caplog):
    labels = np.repeat(np.arange(n_classes), per_class)
    groups = np.arange(len(labels))
    if per_class == 1:  # nothing left to validate on
        with pytest.raises(ValueError, match=r"needs at least 3 photos.*too few: 0 \(1\), 1 \(1\)"):
            stratified_group_split(labels, groups, FRACTIONS[fractions], seed=42)
        return
    train, val, test = stratified_group_split(labels, groups, FRACTIONS[fractions], seed=42)
    assert set(labels[train]) == set(range(n_classes))  # every class trains
    everything = np.concatenate([train, val, test])
    assert sorted(everything.tolist()) == list(range(len(labels)))  # each photo in exactly one split
    assert len(val) > 0
    if per_class >= 3:
        assert len(test) > 0
    else:  # a class of 2 photos is never tested; a test split of other classes' photos, or none, said so
        assert len(test) > 0 or "no test split" in caplog.text
    again = stratified_group_split(labels, groups, FRACTIONS[fractions], seed=42)
    assert all((x == y).all() for x, y in zip((train, val, test), again))


def test_small_class_split_keeps_near_duplicates_together():
    labels = np.repeat([0, 1], 6)  # the 2 classes x 6 photos, as pairs of near-duplicates
    groups = np.arange(12) // 2
    train, val, test = stratified_group_split(labels, groups, DEFAULT_SPLIT_FRACTIONS, seed=0)
    assert set(labels[train]) == {0, 1} and len(val) and len(test)
    assert not set(groups[train]) & set(groups[val]) and not set(groups[train]) & set(groups[test])
    assert not set(groups[val]) & set(groups[test])


def test_class_with_one_photo_trains_and_is_named_as_never_tested(caplog):
    labels = np.array([0] * 8 + [1] * 8 + [2] + [3, 3])
    train, val, test = stratified_group_split(labels, np.arange(len(labels)), DEFAULT_SPLIT_FRACTIONS, seed=0,
                                              class_names=["attic", "bedroom", "cellar", "den"])
    assert 2 in labels[train] and 3 in labels[train]
    assert 2 not in labels[val] and 2 not in labels[test] and 3 not in labels[test]
    assert "cellar (1 photo: never validated or tested)" in caplog.text
    assert "den (2 photos: never tested)" in caplog.text


def test_classes_of_single_photos_say_how_many_photos_each_class_needs():
    with pytest.raises(ValueError, match=r"each class needs at least 3 photos \(one for each of train, validation "
                                         r"and test\).*too few: cat \(1\), dog \(1\)"):
        stratified_group_split(np.array([0, 1]), np.arange(2), DEFAULT_SPLIT_FRACTIONS, seed=0,
                               class_names=["cat", "dog"])


@pytest.mark.parametrize("per_class", [3, 4, 6, 9])
def test_cross_validation_folds_of_small_classes_train_on_every_class(per_class):
    labels = np.repeat([0, 1, 2], per_class)
    for fold in range(3):
        train, val, test = stratified_group_split(labels, np.arange(len(labels)), DEFAULT_SPLIT_FRACTIONS, seed=0,
                                                  cv_fold=(fold, 3))
        assert set(labels[train]) == {0, 1, 2} and len(val) and len(test)
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))


def test_real_sized_split_is_unchanged_by_the_small_class_fallback():
    # 154 Modern / 232 Old, as the real bedrooms: the seeded StratifiedGroupKFold split, sizes as before
    labels = np.array([0] * 154 + [1] * 232)
    train, val, test = stratified_group_split(labels, np.arange(386), DEFAULT_SPLIT_FRACTIONS, seed=42)
    assert (len(train), len(val), len(test)) == (289, 58, 39)


def test_bad_split_fractions_are_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_group_split(np.zeros(10), np.arange(10), [0.5, 0.5, 0.5], seed=0)


# ---- the --dataset path: a Hub-layout dataset saved in the test, loaded offline ----

COLOURS = {"crow": (20, 20, 20), "finch": (220, 200, 30), "jay": (30, 60, 220)}


def write_hub_dataset(root: Path, splits: dict[str, list[str]]) -> Path:
    """``root/data/<split>-00000-of-00001.parquet``: embedded photos, string species and a column to drop."""
    features = Features({"photo": Image(), "species": Value("string"), "notes": Value("string")})
    seeds = iter(range(1000))  # every photo its own noise: no two are near-duplicates
    for split, species in splits.items():
        photos = [{"bytes": make_photo(root / "src" / f"{split}{i}.png", COLOURS[name], seed=next(seeds)).read_bytes(),
                   "path": None} for i, name in enumerate(species)]
        Dataset.from_dict({"photo": photos, "species": species, "notes": [""] * len(species)}, features=features
                          ).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    shutil.rmtree(root / "src")  # the Parquet files hold the photos themselves, as on the Hub
    return root


def colour_class(image) -> str:
    """The species a photo was drawn as, read back from its pixels."""
    mean = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
    return min(COLOURS, key=lambda name: np.abs(mean - COLOURS[name]).sum())


def test_hub_dataset_is_renamed_class_encoded_and_split_stratified(tmp_path):
    root = write_hub_dataset(tmp_path / "hub", {"train": [name for name in COLOURS for _ in range(8)]})
    data = build_dataset(dataset_name=str(root), image_column="photo", label_column="species",
                         split_fractions=[0.5, 0.25, 0.25], seed=0)
    assert set(data) == {"train", "validation", "test"}
    for split in data.values():
        assert split.column_names == ["image", "label"]
        assert split.features["label"] == ClassLabel(names=["crow", "finch", "jay"])
        names = split.features["label"].names
        assert all(colour_class(ex["image"]) == names[ex["label"]] for ex in split)  # each photo keeps its label
    counts = {s: Counter(data[s]["label"]) for s in data}
    assert counts == {"train": {0: 4, 1: 4, 2: 4}, "validation": {0: 2, 1: 2, 2: 2}, "test": {0: 2, 1: 2, 2: 2}}
    assert "species" in data.label_source


def test_hub_dataset_keeps_its_own_splits(tmp_path):
    splits = {"train": list(COLOURS) * 3, "validation": list(COLOURS), "test": ["jay", "crow", "finch"]}
    data = build_dataset(dataset_name=str(write_hub_dataset(tmp_path / "hub", splits)), image_column="photo",
                         label_column="species")
    assert {s: len(data[s]) for s in data} == {"train": 9, "validation": 3, "test": 3}
    names = data["test"].features["label"].names
    assert [names[i] for i in data["test"]["label"]] == ["jay", "crow", "finch"]


@pytest.mark.parametrize("given", ["test", "validation"])
def test_hub_dataset_keeps_its_held_out_split_and_carves_the_missing_one_from_train(tmp_path, given):
    splits = {"train": list(COLOURS) * 4, given: ["jay", "crow", "finch"]}
    data = build_dataset(dataset_name=str(write_hub_dataset(tmp_path / "hub", splits)), image_column="photo",
                         label_column="species", split_fractions=[0.5, 0.25, 0.25], seed=0)
    names = data[given].features["label"].names
    assert [names[i] for i in data[given]["label"]] == ["jay", "crow", "finch"]  # kept as given, in its order
    carved = "validation" if given == "test" else "test"
    assert len(data["train"]) + len(data[carved]) == 12 and len(data[carved]) >= 3
    assert set(data["train"]["label"]) == set(data[carved]["label"]) == {0, 1, 2}


def test_hub_dataset_splits_share_one_class_numbering(tmp_path):
    # the test split lacks "crow": encoded on its own it would call "finch" 0 and "jay" 1
    splits = {"train": list(COLOURS) * 3, "validation": list(COLOURS), "test": ["jay", "finch", "jay"]}
    data = build_dataset(dataset_name=str(write_hub_dataset(tmp_path / "hub", splits)), image_column="photo",
                         label_column="species")
    assert {s: data[s].features["label"].names for s in data} == {s: ["crow", "finch", "jay"] for s in data}
    assert data["test"]["label"][:] == [2, 1, 2]
    assert all(colour_class(ex["image"]) == "crow" for ex in data["train"] if ex["label"] == 0)


@pytest.mark.parametrize(("image_column", "label_column", "missing"),
                         [("photo", "label", "'label'"), ("image", "species", "'image'")])
def test_hub_dataset_without_the_named_column_says_which_to_set(tmp_path, image_column, label_column, missing):
    root = write_hub_dataset(tmp_path / "hub", {"train": ["crow", "jay"] * 4})
    with pytest.raises(ValueError, match=rf"has no column {missing}; its columns are \['photo', 'species', 'notes'\] "
                                         r"\(set --image_column / --label_column\)"):
        build_dataset(dataset_name=str(root), image_column=image_column, label_column=label_column)


# ---- real photos in ../shared/data ----

def file_names(split) -> list[str]:
    return [Path(item["path"]).name for item in split.cast_column("image", Image(decode=False))["image"]]


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
    for split in bedrooms:
        assert file_names(again[split]) == file_names(bedrooms[split]), split


@pytest.mark.real_data
def test_real_known_duplicates_never_straddle_splits(bedrooms):
    where = {name: split for split, data in bedrooms.items() for name in file_names(data)}
    with (SHARED_DATA / "bedrooms" / "duplicates.csv").open() as f:
        pairs = [(r["file_a"], r["file_b"]) for r in csv.DictReader(f)]
    with (SHARED_DATA / "bedrooms" / "labels.csv").open() as f:
        labeled = {r["file"] for r in csv.DictReader(f)}
    together = dropped = 0
    for a, b in pairs:
        if a in where and b in where:
            assert where[a] == where[b], (a, b)
            together += 1
        elif a in where or b in where:
            # The twin in no split must be an unlabeled copy of a labeled photo, dropped so that
            # pseudo-labeling never sees a test photo again; a labeled photo is never lost.
            kept, left_out = (a, b) if a in where else (b, a)
            assert where[kept] != "unlabeled" and left_out not in labeled, (kept, left_out)
            dropped += 1
    assert together >= 10 and dropped >= 5


@pytest.mark.real_data
def test_real_birds_one_class_per_species():
    data = build_dataset(str(SHARED_DATA / "birds"), split_fractions=[0.75, 0.125, 0.125], seed=42)
    names = data["train"].features["label"].names
    assert len(names) == 525 and "Abbotts Babbler" in names and "African Crowned Crane" in names
    assert sum(len(s) for s in data.values()) == 2100
    assert len(set(data["train"]["label"])) == 525


def test_four_folds_of_four_photos_per_class_test_one_photo_of_every_class_each():
    """The bird fold scheme: stratified grouped folds leave small classes out of some folds; dealing fixes it."""
    labels = np.repeat(np.arange(60), 4)
    groups = np.arange(len(labels))
    groups[1] = groups[0]  # a near-duplicate pair in class 0: it counts as one photo, tested once
    for fold in range(4):
        train, val, test = stratified_group_split(labels, groups, [0.75, 0.125, 0.125], seed=42, cv_fold=(fold, 4))
        counts = np.bincount(labels[test], minlength=60)
        assert counts[1:].tolist() == [1] * 59 and counts[0] <= 2
        assert np.bincount(labels[np.concatenate([train, val])], minlength=60)[1:].tolist() == [3] * 59
    tested = np.concatenate([stratified_group_split(labels, groups, [0.75, 0.125, 0.125], 42, (f, 4))[2]
                             for f in range(4)])
    assert sorted(tested.tolist()) == list(range(len(labels)))  # every photo tested exactly once


@pytest.mark.real_data
def test_bird_folds_test_each_species_once_per_fold():
    from hf_model.config import parse_args
    from hf_model.data import load_data

    cfg, args = parse_args(["--preset", "birds", "--data_dir", str(SHARED_DATA / "birds"), "--output_dir", "unused"])
    tested = np.stack([np.bincount(load_data(cfg, args.seed, (fold, 4))["test"]["label"], minlength=525)
                       for fold in range(4)])
    assert (tested.sum(axis=0) == 4).all()  # every photo is tested once
    # each species once per fold; a species with a near-duplicate pair (one photo, twice) has it in one fold
    assert ((tested == 1).all(axis=0)).sum() >= 500 and tested.max() <= 2


# ---- near-duplicate groups: multi-index hashing gives the partition of comparing every pair ----

def groups_by_comparing_every_pair(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """The all-pairs search near_duplicate_groups replaced, kept as the reference it must equal."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    rows, cols = [], []
    for start in range(0, n, 1024):
        block = hashes[start:start + 1024]
        close = np.ones((len(block), n), dtype=bool)
        for k in range(hashes.shape[1]):
            close &= np.bitwise_count(block[:, k, None] ^ hashes[None, :, k]) <= max_bits
        r, c = np.nonzero(close)
        rows.append(r + start)
        cols.append(c)
    graph = coo_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def flipped(hashes: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``hashes`` (k,) with exactly ``bits`` random bits flipped in each of its k hashes."""
    out = hashes.copy()
    for k in range(len(out)):
        for bit in rng.choice(64, size=bits, replace=False):
            out[k] ^= np.uint64(1) << np.uint64(bit)
    return out


def random_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64)


def planted_hashes(n: int, max_bits: int, rng: np.random.Generator) -> np.ndarray:
    """Random pHash/dHash pairs with copies at 0 to max_bits + 2 bits from another photo, and chains of copies."""
    hashes = random_hashes(n, rng)
    for _ in range(n // 5):  # copies just within and just beyond the limit
        hashes[rng.integers(n)] = flipped(hashes[rng.integers(n)], rng.integers(0, max_bits + 3), rng)
    for start in rng.choice(n, size=n // 100, replace=False):  # chains whose ends differ by far more than max_bits
        for i in range(start + 1, min(start + 6, n)):
            hashes[i] = flipped(hashes[i - 1], max_bits, rng)
    return hashes


@pytest.mark.parametrize("max_bits", [10, 4, 1, 0])
def test_near_duplicate_groups_equal_comparing_every_pair_on_planted_copies_and_chains(max_bits):
    rng = np.random.default_rng(max_bits)
    hashes = planted_hashes(3000, max_bits, rng)
    expected = groups_by_comparing_every_pair(hashes, max_bits)
    assert expected.max() + 1 < 2900  # the planted copies did make groups
    assert near_duplicate_groups(hashes, max_bits).tolist() == expected.tolist()


def test_a_chain_of_near_duplicates_is_one_group_though_its_ends_are_far_apart():
    rng = np.random.default_rng(0)
    hashes = random_hashes(8, rng)
    for i in range(1, 5):  # photos 0..4: each 10 bits from the one before
        hashes[i] = flipped(hashes[i - 1], 10, rng)
    assert np.bitwise_count(hashes[0] ^ hashes[4]).min() > 10
    assert near_duplicate_groups(hashes, 10).tolist() == [0, 0, 0, 0, 0, 1, 2, 3]


def test_photos_close_in_one_hash_only_are_not_near_duplicates():
    rng = np.random.default_rng(0)
    hashes = random_hashes(3, rng)
    hashes[1] = [hashes[0, 0] ^ np.uint64(0b111), hashes[0, 1] ^ np.uint64(2**11 - 1)]  # pHash 3 bits, dHash 11
    hashes[2] = hashes[0]
    assert near_duplicate_groups(hashes, 10).tolist() == [0, 1, 0]


def test_thousands_of_near_copies_of_one_photo_group_as_comparing_every_pair():
    """Crowded bands (a burst of near-identical photos, many identical ones) still give the all-pairs answer."""
    rng = np.random.default_rng(0)
    hashes = random_hashes(3000, rng)
    hashes[:1500] = [flipped(hashes[0], int(rng.integers(0, 4)), rng) for _ in range(1500)]
    hashes[1500:1800] = hashes[1]  # blank photos: one hash many times
    expected = groups_by_comparing_every_pair(hashes, 10)
    assert near_duplicate_groups(hashes, 10).tolist() == expected.tolist()


@pytest.mark.parametrize("max_bits", [-1, 64])
def test_near_duplicate_bits_beyond_a_64_bit_hash_are_refused(max_bits):
    with pytest.raises(ValueError, match="0 to 63"):
        near_duplicate_groups(random_hashes(4, np.random.default_rng(0)), max_bits)


@pytest.mark.real_data
def test_real_bedroom_near_duplicate_groups_equal_comparing_every_pair():
    from hf_model.images import list_images

    folder = SHARED_DATA / "bedrooms"
    files = [str(path) for path in list_images(folder)]
    hashes, good = scan_images(files)
    groups = near_duplicate_groups(hashes)
    assert good.all() and groups.tolist() == groups_by_comparing_every_pair(hashes, 10).tolist()
    group_of = {Path(file).name: group for file, group in zip(files, groups)}
    with (folder / "duplicates.csv").open() as f:
        pairs = [(row["file_a"], row["file_b"]) for row in csv.DictReader(f)]
    assert len(pairs) > 20 and all(group_of[a] == group_of[b] for a, b in pairs)
