"""``hf-model suggest-labels``: uncertain photos first, one per cluster, never a labeled one; the command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import make_bedroom_folder, make_photo
from PIL import Image

from hf_model.suggest import SUGGESTIONS_CSV, SUGGESTIONS_PNG, main, select_for_labeling, uncertainty

LABELS = ["Modern", "Old"]


def two_class_probs(p_first: list[float]) -> np.ndarray:
    p = np.asarray(p_first, dtype=float)
    return np.c_[p, 1 - p]


# ---------------------------------------------------------------- the method, on arrays

def test_margin_and_entropy_are_one_for_a_coin_toss_and_zero_for_a_sure_answer():
    probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]])
    assert uncertainty(probs, "margin") == pytest.approx([1.0, 0.0, 0.5])
    assert uncertainty(np.full((1, 3), 1 / 3), "entropy") == pytest.approx([1.0])
    assert uncertainty(probs, "entropy")[1] == pytest.approx(0.0)


def test_unknown_measure_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'margin', 'entropy'"):
        uncertainty(np.array([[0.5, 0.5]]), "variance")


def test_uncertain_photos_are_chosen_over_confident_ones_most_uncertain_first():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(104, 8))
    probs = two_class_probs([0.99] * 100 + [0.6, 0.5, 0.8, 0.55])  # photos 100..103 are the unsure ones
    chosen = select_for_labeling(features, probs, 2, pool_factor=2).indices
    assert set(chosen) <= {100, 101, 102, 103}
    assert np.all(np.diff(uncertainty(probs)[chosen]) <= 0)  # ranked: the most uncertain first


def test_two_tight_clusters_give_one_photo_each_not_two_twins():
    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(2, 16) * 10, 5, axis=0)  # photos 0-4 around one point, 5-9 around another
    features = centres + rng.normal(scale=0.01, size=centres.shape)
    probs = two_class_probs([0.5] * 10)  # equally uncertain: the plain top 2 would be photos 0 and 1
    selection = select_for_labeling(features, probs, 2)
    assert sorted(i // 5 for i in selection.indices) == [0, 1]
    assert sorted(selection.cluster_size) == [5, 5]


def test_each_cluster_gives_its_most_uncertain_photo():
    rng = np.random.default_rng(1)
    features = np.repeat(np.eye(2, 16) * 10, 4, axis=0) + rng.normal(scale=0.01, size=(8, 16))
    probs = two_class_probs([0.9, 0.6, 0.7, 0.95, 0.85, 0.8, 0.52, 0.99])  # most unsure: 1 in 0-3, 6 in 4-7
    assert select_for_labeling(features, probs, 2).indices.tolist() == [6, 1]


def test_near_duplicates_count_once_so_fewer_are_returned_than_asked():
    features = np.eye(4, 8)
    groups = np.array([0, 0, 1, 1])  # two pairs of near-twins
    selection = select_for_labeling(features, two_class_probs([0.5, 0.6, 0.7, 0.55]), 4, groups=groups)
    assert selection.indices.tolist() == [0, 3]  # each pair's most uncertain


def test_identical_features_still_give_n_photos():
    features = np.ones((6, 4))  # k-means finds one distinct cluster for 3 asked
    selection = select_for_labeling(features, two_class_probs([0.9, 0.5, 0.6, 0.7, 0.8, 0.95]), 3, pool_factor=2)
    assert selection.indices.tolist() == [1, 2, 3]


def test_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match="one row per candidate"):
        select_for_labeling(np.zeros((3, 4)), two_class_probs([0.5, 0.5]), 1)


# ---------------------------------------------------------------- the command on tiny photos

@pytest.fixture(scope="module")
def model_dir(tiny_convnext, tmp_path_factory) -> Path:
    """A saved two-class model folder (random head, so photos get different probabilities), as train.py leaves it."""
    import torch
    from transformers import AutoModelForImageClassification, ConvNextImageProcessor

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(
        tiny_convnext, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        ignore_mismatched_sizes=True)
    out = tmp_path_factory.mktemp("suggest_model")
    model.save_pretrained(out)
    ConvNextImageProcessor.from_pretrained(tiny_convnext).save_pretrained(out)
    return out


@pytest.fixture
def bedroom_folder(tmp_path: Path) -> Path:
    """bed_1..bed_20, of which labels.csv labels bed_1..bed_8; plus a broken photo and a note."""
    root = make_bedroom_folder(tmp_path / "bedrooms", n=20)
    rows = [f"bed_{i}.jpg,{'M' if i % 2 else 'O'}" for i in range(1, 9)]
    (root / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    (root / "bed_99.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("to do")
    return root


def suggestions(output_dir: Path) -> list[dict]:
    with (output_dir / SUGGESTIONS_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def test_writes_n_ranked_rows_and_a_contact_sheet(model_dir, bedroom_folder, tmp_path, capsys):
    out = tmp_path / "out"
    main([str(model_dir), str(bedroom_folder), "--n", "5", "--output_dir", str(out)])
    rows = suggestions(out)
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(row["predicted_label"] in LABELS and row["second_label"] in LABELS for row in rows)
    assert [float(row["uncertainty"]) for row in rows] == sorted((float(row["uncertainty"]) for row in rows),
                                                                 reverse=True)
    assert all(float(row["p_predicted"]) >= float(row["p_second"]) for row in rows)
    with Image.open(out / SUGGESTIONS_PNG) as sheet:
        sheet.verify()
        assert sheet.format == "PNG"
    printed = capsys.readouterr().out
    assert "8 already labeled" in printed and "1 unreadable (bed_99.jpg)" in printed
    assert "2 files that are not images" in printed  # labels.csv and notes.txt
    assert str(out / SUGGESTIONS_CSV) in printed and str(out / SUGGESTIONS_PNG) in printed


def test_labeled_photos_are_never_suggested_even_when_more_are_asked_for(model_dir, bedroom_folder, tmp_path, capsys):
    out = tmp_path / "out"
    main([str(model_dir), str(bedroom_folder), "--n", "50", "--output_dir", str(out)])
    suggested = {Path(row["file"]).name for row in suggestions(out)}
    assert suggested == {f"bed_{i}.jpg" for i in range(9, 21)}  # every unlabeled readable photo, no labeled one
    assert "note: --n 50 is more than the 12 distinct candidates" in capsys.readouterr().out


def test_a_copy_of_a_labeled_photo_is_not_a_candidate(model_dir, bedroom_folder, tmp_path):
    (bedroom_folder / "bed_30.jpg").write_bytes((bedroom_folder / "bed_1.jpg").read_bytes())
    main([str(model_dir), str(bedroom_folder), "--n", "50", "--output_dir", str(tmp_path / "out")])
    assert "bed_30.jpg" not in {Path(row["file"]).name for row in suggestions(tmp_path / "out")}


def test_photos_in_folders_named_for_the_model_classes_count_as_labeled(model_dir, tmp_path):
    for i in range(3):
        make_photo(tmp_path / "photos" / "Modern" / f"{i}.jpg", (230, 230, 230), seed=i)
        make_photo(tmp_path / "photos" / "inbox" / f"{i}.jpg", (60, 40, 20), seed=10 + i)
    main([str(model_dir), str(tmp_path / "photos"), "--n", "9", "--output_dir", str(tmp_path / "out")])
    assert {Path(row["file"]).parent.name for row in suggestions(tmp_path / "out")} == {"inbox"}


def test_photos_a_metadata_csv_labels_count_as_labeled(model_dir, tmp_path):
    for i in range(3):
        make_photo(tmp_path / "photos" / f"labeled_{i}.jpg", (230, 230, 230), seed=i)
        make_photo(tmp_path / "photos" / f"new_{i}.jpg", (60, 40, 20), seed=10 + i)
    (tmp_path / "photos" / "metadata.csv").write_text(
        "file_name,label\n" + "".join(f"labeled_{i}.jpg,{LABELS[i % 2]}\n" for i in range(3)))
    main([str(model_dir), str(tmp_path / "photos"), "--n", "9", "--output_dir", str(tmp_path / "out")])
    assert {Path(row["file"]).name for row in suggestions(tmp_path / "out")} == {f"new_{i}.jpg" for i in range(3)}


def test_a_folder_with_every_photo_labeled_has_nothing_to_suggest(model_dir, tmp_path):
    root = make_bedroom_folder(tmp_path / "bedrooms", n=4)
    (root / "labels.csv").write_text("file,label\n" + "".join(f"bed_{i}.jpg,M\n" for i in range(1, 5)))
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(root), "--output_dir", str(tmp_path / "out")])
    assert isinstance(stop.value.code, str) and "nothing to suggest" in stop.value.code  # exit status 1
    assert not (tmp_path / "out").exists()


def test_a_folder_without_photos_has_nothing_to_suggest(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")])
    assert "nothing to suggest" in stop.value.code and str(tmp_path / "empty") in stop.value.code


def test_a_folder_that_is_not_a_model_stops_with_one_line_naming_it(bedroom_folder, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), str(bedroom_folder)])
    assert stop.value.code.startswith("hf-model suggest-labels: ") and str(tmp_path) in stop.value.code


@pytest.mark.parametrize("flags", [["--n", "0"], ["--measure", "variance"]])
def test_bad_flags_are_usage_errors(model_dir, bedroom_folder, flags):
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(bedroom_folder), *flags])
    assert stop.value.code == 2


def test_a_missing_folder_is_a_usage_error(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "is not a folder" in capsys.readouterr().err
