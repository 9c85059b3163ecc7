"""``hf-model predict``: one CSV row per photo, real label names, unreadable files reported in place."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
import torch
from conftest import make_photo

from hf_model.predict import main

LABELS = ["cat", "dog", "owl"]
# The model ignores the photo: logits are its bias (0, 1, 2), so every photo gets these probabilities.
PROBS = dict(zip(LABELS, torch.tensor([0.0, 1.0, 2.0]).softmax(-1).tolist()))  # owl 0.665, dog 0.245, cat 0.090
HEADER = ["file", "label", "score", "top_k", "error"]


@pytest.fixture(scope="module")
def model_dir(tiny_convnext, tmp_path_factory) -> Path:
    """A saved model folder with real class names and its image processor, as train.py leaves it."""
    from transformers import AutoModelForImageClassification, ConvNextImageProcessor

    model = AutoModelForImageClassification.from_pretrained(
        tiny_convnext, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)}, ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    out = tmp_path_factory.mktemp("predict_model")
    model.save_pretrained(out)
    ConvNextImageProcessor.from_pretrained(tiny_convnext).save_pretrained(out)
    return out


def predict(model_dir: Path, tmp_path: Path, *args: str) -> list[dict]:
    """Run the CLI with ``--output`` and return the CSV rows, checking the header."""
    output = tmp_path / "predictions.csv"
    main([str(model_dir), *args, "--output", str(output)])
    with output.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def top_k(row: dict) -> dict[str, float]:
    """``"owl=0.665; dog=0.245"`` -> ``{"owl": 0.665, "dog": 0.245}``, in the order listed."""
    return {label: float(score) for label, score in (pair.split("=") for pair in row["top_k"].split("; "))}


def test_each_photo_gets_one_row_with_a_real_label_name(model_dir, tmp_path):
    photos = [make_photo(tmp_path / f"{name}.jpg", (200, 40, 40), seed=i) for i, name in enumerate(["b", "a"])]
    rows = predict(model_dir, tmp_path, *map(str, photos))
    assert [row["file"] for row in rows] == [str(p) for p in photos]  # files given one by one keep their order
    for row in rows:
        assert row["label"] == "owl" and row["error"] == ""
        assert float(row["score"]) == pytest.approx(PROBS["owl"], abs=1e-4)
        assert top_k(row) == pytest.approx({"owl": PROBS["owl"]}, abs=1e-3)  # --top_k defaults to 1


@pytest.mark.parametrize("k", [2, 3])
def test_top_k_lists_k_labels_best_first_with_scores_summing_to_at_most_one(model_dir, tmp_path, k):
    photo = make_photo(tmp_path / "photo.png", (40, 40, 200))
    (row,) = predict(model_dir, tmp_path, str(photo), "--top_k", str(k))
    listed = top_k(row)
    assert list(listed) == ["owl", "dog", "cat"][:k]
    assert listed == pytest.approx({label: PROBS[label] for label in listed}, abs=1e-3)
    assert sum(listed.values()) <= 1 + 1e-3
    assert row["label"] == next(iter(listed)) and float(row["score"]) == pytest.approx(max(listed.values()), abs=1e-3)


def test_unreadable_file_gets_an_error_row_and_the_others_still_get_labels(model_dir, tmp_path):
    folder = tmp_path / "photos"
    good = [make_photo(folder / f"{i}.jpg", (90, 160, 90), seed=i) for i in range(3)]
    broken = folder / "1_broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    rows = {row["file"]: row for row in predict(model_dir, tmp_path, str(folder), "--batch_size", "2")}
    assert set(rows) == {str(p) for p in [*good, broken]}
    assert rows[str(broken)]["label"] == rows[str(broken)]["score"] == rows[str(broken)]["top_k"] == ""
    assert "not a readable image" in rows[str(broken)]["error"]
    assert all(rows[str(p)]["label"] == "owl" and rows[str(p)]["error"] == "" for p in good)


def test_a_folder_is_expanded_recursively_in_sorted_order(model_dir, tmp_path):
    folder = tmp_path / "photos"
    for relative in ["b/2.png", "a/z.jpg", "a/deeper/1.JPEG", "0.webp", "c.jpg"]:
        make_photo(folder / relative, (120, 120, 120))
    (folder / "notes.txt").write_text("not a photo")  # skipped: not an image file
    rows = predict(model_dir, tmp_path, str(folder))
    expected = ["0.webp", "a/deeper/1.JPEG", "a/z.jpg", "b/2.png", "c.jpg"]
    assert [Path(row["file"]).relative_to(folder).as_posix() for row in rows] == expected
    assert all(row["label"] == "owl" for row in rows)


def test_without_output_the_csv_is_printed(model_dir, tmp_path, capsys):
    photo = make_photo(tmp_path / "photo.jpg", (10, 200, 10))
    main([str(model_dir), str(photo), "--top_k", "2"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == HEADER
    assert rows[1][:2] == [str(photo), "owl"] and len(rows) == 2


def test_a_missing_path_is_a_clear_error(model_dir, tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    with pytest.raises((FileNotFoundError, SystemExit), match=re.escape(str(missing)) + ".*does not exist"):
        main([str(model_dir), str(missing), "--output", str(tmp_path / "out.csv")])
