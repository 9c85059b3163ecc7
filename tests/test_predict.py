"""``hf-model predict``: one CSV row per photo, real label names, unreadable files reported in place."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from photo_kinds import PHOTO_KINDS, READABLE_KINDS, UNREADABLE_KINDS, eight_bit_copy, sixteen_bit_png
from PIL import Image

from hf_model.predict import class_probabilities, label_files, load_for_inference, load_labeler, main, read_photo

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


def test_a_missing_path_is_a_clear_error(model_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_photo.jpg"
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(missing), "--output", str(tmp_path / "out.csv")])
    # a missing path is the user's input, not a bad flag: status 1 (a string code), like every command's
    assert stop.value.code == (f"hf-model predict: error: {missing} does not exist: check the paths of the photos "
                               "or folders")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("output", ["photos/0.jpg", "photos/new.png", "model/predictions.csv"])
def test_an_output_that_would_replace_a_photo_or_a_model_file_is_refused(model_dir, tmp_path, monkeypatch, output):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(model_dir, tmp_path / "model")
    make_photo(tmp_path / "photos" / "0.jpg", (90, 160, 90))
    before = (tmp_path / "photos" / "0.jpg").read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(["model", "photos", "--output", output])
    assert stop.value.code.startswith(f"hf-model predict: error: --output {output} is ")
    assert (tmp_path / "photos" / "0.jpg").read_bytes() == before
    assert not (tmp_path / output).exists() or output == "photos/0.jpg"


# ---------------------------------------------------------------- files that are not labeled (issue 12, failure 8)


def test_every_file_in_a_folder_gets_a_row_in_sorted_order_with_skipped_ones_saying_why(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    make_photo(folder / "a.jpg", (90, 160, 90))
    make_photo(folder / "b.jpg", (90, 160, 90)).rename(folder / "b.jfif")  # a JPEG under another JPEG suffix
    (folder / "c.txt").write_text("notes")
    make_photo(folder / "d.png", (90, 160, 90))
    (folder / ".DS_Store").write_bytes(b"\x00")  # system files get no row
    make_photo(folder / "__MACOSX" / "._a.jpg", (0, 0, 0))
    rows = predict(model_dir, tmp_path, str(folder))
    assert [Path(row["file"]).name for row in rows] == ["a.jpg", "b.jfif", "c.txt", "d.png"]
    assert [row["label"] for row in rows] == ["owl", "owl", "", "owl"]
    assert rows[2]["error"] == "skipped: '.txt' is not an image type Pillow opens"
    assert "3 labeled, 0 unreadable, 1 skipped" in capsys.readouterr().err


def test_a_file_named_on_the_command_line_is_tried_whatever_its_suffix(model_dir, tmp_path):
    jpeg = make_photo(tmp_path / "photo.jpg", (90, 160, 90)).rename(tmp_path / "photo.download")
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    rows = predict(model_dir, tmp_path, str(text), str(jpeg))
    assert [row["file"] for row in rows] == [str(text), str(jpeg)]  # in the order given
    assert rows[0]["label"] == "" and rows[0]["error"].startswith("not a readable image")
    assert rows[1]["label"] == "owl" and rows[1]["error"] == ""


def test_a_photo_reached_twice_is_labeled_once(model_dir, tmp_path):
    folder = tmp_path / "photos"
    photos = [make_photo(folder / f"{i}.jpg", (90, 160, 90), seed=i) for i in range(2)]
    rows = predict(model_dir, tmp_path, str(folder), str(photos[1]), str(folder / ".." / "photos" / "0.jpg"))
    assert [row["file"] for row in rows] == [str(p) for p in photos]


# ---------------------------------------------------------------- flags checked when parsed (issue 12, failure 7)


@pytest.mark.parametrize(("flag", "value"), [("--top_k", "0"), ("--top_k", "-1"), ("--top_k", "two"),
                                             ("--batch_size", "0"), ("--batch_size", "1.5")])
def test_numeric_flags_out_of_range_stop_at_parse_time_naming_the_flag(tmp_path, capsys, flag, value):
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    with pytest.raises(SystemExit) as stop:  # before any model is loaded: the model path does not even exist
        main([str(tmp_path / "no_model"), str(photo), flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: must be a whole number of at least 1, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["no_folder/predictions.csv", "."])
def test_an_output_that_cannot_be_written_stops_before_any_photo_is_labeled(tmp_path, capsys, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    with pytest.raises(SystemExit) as stop:  # before the model loads: the model path does not even exist
        main([str(tmp_path / "no_model"), str(photo), "--output", output])
    assert stop.value.code == 2
    assert f"--output {output}: give a CSV file name in an existing folder" in capsys.readouterr().err


def test_top_k_above_the_number_of_classes_lists_them_all_with_a_note(model_dir, tmp_path, capsys):
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    (row,) = predict(model_dir, tmp_path, str(photo), "--top_k", "10")
    assert list(top_k(row)) == ["owl", "dog", "cat"]
    assert "--top_k 10 is more than the model's 3 classes" in capsys.readouterr().err


@pytest.mark.parametrize(("where", "reason"), [
    ("runs/nope", "runs/nope is neither a model folder nor a Hub id (and the Hub is offline: HF_HUB_OFFLINE=1)"),
    ("{tmp}/runs/nope", "{tmp}/runs/nope: no such model folder (and, as a path, it cannot be a Hub id)"),
    ("empty_folder", "empty_folder is a folder, but not a model folder: it holds no config.json"),
])
def test_a_path_that_is_not_a_model_is_one_line_saying_why_not_a_traceback(tmp_path, monkeypatch, where, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_folder").mkdir()
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    source = where.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([source, str(photo)])
    message = str(stop.value.code)
    assert message.startswith(f"hf-model predict: error: {reason.format(tmp=tmp_path)}")
    assert "\n" not in message


def test_an_empty_folder_labels_nothing_and_exits_non_zero(model_dir, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(tmp_path / "photos")])
    assert stop.value.code == f"hf-model predict: error: no photo could be labeled in {tmp_path / 'photos'}"
    assert "wrote 0 rows: 0 labeled" in capsys.readouterr().err


def test_help_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 at least one photo was labeled" in help_text
    assert "1 no photo could be labeled" in help_text and "2 usage error" in help_text


# ---------------------------------------------------------------- every kind of bad input (issue 12, part 1)


@pytest.mark.parametrize("kind", sorted(PHOTO_KINDS))
def test_each_kind_of_photo_gets_a_label_or_an_error_row_naming_the_problem(model_dir, tmp_path, kind):
    good = make_photo(tmp_path / "photos" / "0_good.jpg", (90, 160, 90))
    odd = PHOTO_KINDS[kind](tmp_path / "photos")
    rows = {row["file"]: row for row in predict(model_dir, tmp_path, str(tmp_path / "photos"))}  # exits 0
    assert rows[str(good)]["label"] == "owl"
    if kind in READABLE_KINDS:
        assert rows[str(odd)]["label"] == "owl" and rows[str(odd)]["error"] == ""
    else:
        assert rows[str(odd)]["label"] == ""
        assert re.match(r"not a readable image: (empty|damaged|too many pixels)", rows[str(odd)]["error"])


def test_a_run_that_labels_nothing_exits_non_zero_with_the_reasons_in_the_csv(model_dir, tmp_path):
    for kind in sorted(UNREADABLE_KINDS):
        PHOTO_KINDS[kind](tmp_path / "photos")
    output = tmp_path / "predictions.csv"
    with pytest.raises(SystemExit, match="no photo could be labeled"):
        main([str(model_dir), str(tmp_path / "photos"), "--output", str(output)])
    with output.open(newline="") as f:
        assert all(row["error"] for row in csv.DictReader(f))


def test_photos_over_pillows_warning_limit_are_refused_not_decoded(model_dir, tmp_path, monkeypatch):
    # lowered so that a 48 x 48 photo is between one and two times the limit: Pillow warns but would decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    (row,) = label_files(load_labeler(str(model_dir)), [photo])
    assert "decompression bomb" in row["error"] and "predictions" not in row


def test_sixteen_bit_photo_gets_the_same_probabilities_as_its_eight_bit_copy(tiny_convnext, tmp_path):
    labeler = load_labeler(tiny_convnext)  # random weights: the scores depend on the pixels
    white = tmp_path / "white.png"
    Image.new("RGB", (48, 48), (255, 255, 255)).save(white)
    files = [sixteen_bit_png(tmp_path), eight_bit_copy(tmp_path), white]
    wide, narrow, blank = (row["predictions"] for row in label_files(labeler, files, top_k=10))
    assert {p["label"]: p["score"] for p in wide} == pytest.approx({p["label"]: p["score"] for p in narrow}, abs=2e-3)
    assert {p["label"]: p["score"] for p in wide} != pytest.approx({p["label"]: p["score"] for p in blank}, abs=2e-3)


# ---------------------------------------------------------------- interrupted runs (issue 12, part 2)


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _sigterm() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)  # `kill PID`, a scheduler's stop: mid-run, from a decoding thread


@pytest.mark.parametrize(("stop_run", "status"), [(_ctrl_c, 130), (_sigterm, 143)], ids=["ctrl-c", "sigterm"])
def test_a_run_stopped_while_writing_leaves_the_old_csv_and_no_temporary_file(model_dir, tmp_path, monkeypatch,
                                                                               stop_run, status):
    import signal

    for i in range(8):
        make_photo(tmp_path / "photos" / f"{i}.jpg", (90, 160, 90), seed=i)
    output = tmp_path / "predictions.csv"
    output.write_text("the previous run's rows\n")
    calls = iter(range(100))

    def stopped_on_the_third(path):
        if next(calls) == 2:
            stop_run()
        return read_photo(path)

    monkeypatch.setattr("hf_model.predict.read_photo", stopped_on_the_third)
    # what SIGTERM does here when the command leaves it alone: nothing (its default would end pytest itself)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with pytest.raises(SystemExit) as stop:
            main([str(model_dir), str(tmp_path / "photos"), "--output", str(output), "--batch_size", "1"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == status  # 128 + the signal: what a shell reports
    assert output.read_text() == "the previous run's rows\n"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["predictions.csv"]  # no temporary file left


# ---------------------------------------------------------------- where the model runs (issue 17, part 8)



def test_device_cpu_labels_the_photos_as_before(model_dir, tmp_path):
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    (row,) = predict(model_dir, tmp_path, str(photo), "--device", "cpu", "--top_k", "3")
    assert row["label"] == "owl"
    assert top_k(row) == pytest.approx(PROBS, abs=1e-3)


def test_a_device_this_machine_lacks_exits_1_in_one_line_before_the_model_loads(model_dir, tmp_path, no_accelerator):
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    with pytest.raises(SystemExit) as stop:
        main([str(model_dir), str(photo), "--device", "cuda", "--output", str(tmp_path / "out.csv")])
    assert stop.value.code == ("hf-model predict: error: --device cuda: this machine has no such device (present here: "
                               "cpu); give one of those or auto")
    assert not (tmp_path / "out.csv").exists()


def test_a_malformed_device_is_a_usage_error(tmp_path, capsys):
    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "no_model"), str(photo), "--device", "gpu"])
    assert stop.value.code == 2
    assert "argument --device: must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in capsys.readouterr().err


def test_help_says_the_device_defaults_to_the_gpu_when_present(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--device DEVICE where the model runs: auto (the default: a CUDA GPU when present" in " ".join(
        capsys.readouterr().out.split())


def test_a_bfloat16_model_gives_float32_probabilities_close_to_its_float32_ones(tiny_convnext):
    model, transform = load_for_inference(tiny_convnext, device="cpu")
    photos = [Image.new("RGB", (48, 48), colour) for colour in [(200, 30, 30), (30, 30, 200)]]
    expected = class_probabilities(model, transform, photos)
    probabilities = class_probabilities(model.to(torch.bfloat16), transform, photos)  # photos cast to the model
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-3)  # bf16 keeps about 3 significant digits


# ---------------------------------------------------------------- the fast path (issue 15, part 3)


@pytest.fixture
def exported_dir(exported_tiny_convnext) -> Path:
    """The tiny ConvNeXt (random weights: its scores depend on the pixels) with its graph exported."""
    return exported_tiny_convnext


def mixed_folder(root: Path) -> Path:
    """Seven photos of different colours and sizes, one broken file and one text file."""
    for i in range(7):
        make_photo(root / f"{i}.jpg", (30 * i, 200 - 20 * i, 90), size=40 + 9 * i, seed=i)
    (root / "3_broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not a photo")
    return root


def test_the_exported_graph_labels_the_photos_as_pytorch_does(exported_dir, tiny_convnext, tmp_path, capsys):
    from hf_model.predict import load_labeler
    from hf_model.runtime import OnnxModel

    assert isinstance(load_labeler(str(exported_dir), "cpu").model, OnnxModel)
    folder = mixed_folder(tmp_path / "photos")
    fast = predict(exported_dir, tmp_path, str(folder), "--top_k", "10", "--batch_size", "3")
    assert "no exported graph" not in capsys.readouterr().err
    slow = predict(Path(tiny_convnext), tmp_path, str(folder), "--top_k", "10", "--batch_size", "3")
    assert f"has no exported graph (model.onnx), so PyTorch labels the photos; `hf-model export {tiny_convnext}`" in (
        capsys.readouterr().err)
    assert [(r["file"], r["label"], r["error"]) for r in fast] == [(r["file"], r["label"], r["error"]) for r in slow]
    assert len(fast) == 9 and sum(bool(r["error"]) for r in fast) == 2
    for quick, plain in zip(fast, slow):
        if plain["top_k"]:
            assert top_k(quick) == pytest.approx(top_k(plain), abs=1e-4)  # one unit of the CSV's 4 decimals
            assert list(top_k(quick)) == list(top_k(plain))


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (2, 3), (4, 2), (32, 4)])
def test_rows_come_in_the_order_given_whatever_the_batch_size_and_workers(exported_dir, tmp_path, batch_size,
                                                                          workers):
    from hf_model.predict import label_files, load_labeler

    files = sorted(mixed_folder(tmp_path / "photos").glob("*.jpg"))
    labeler = load_labeler(str(exported_dir), "cpu")
    rows = list(label_files(labeler, files, 3, batch_size, workers))
    one_by_one = list(label_files(labeler, files, 3, 1, 1))
    assert [row["file"] for row in rows] == [str(f) for f in files]
    assert [row.get("error") for row in rows] == [row.get("error") for row in one_by_one]
    for row, alone in zip(rows, one_by_one):
        if "predictions" in alone:
            assert [p["label"] for p in row["predictions"]] == [p["label"] for p in alone["predictions"]]
            assert [p["score"] for p in row["predictions"]] == pytest.approx(
                [p["score"] for p in alone["predictions"]], abs=1e-5)


def test_decoding_runs_at_most_the_given_number_of_photos_ahead():
    from concurrent.futures import ThreadPoolExecutor

    from hf_model.predict import prefetched

    submitted = []
    with ThreadPoolExecutor(2) as pool:
        results = prefetched(pool, lambda i: submitted.append(i) or i * i, range(100), ahead=4)
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        pool.submit(lambda: None).result()  # let the workers settle
        assert len(submitted) <= 3 + 4
        assert list(results) == [i * i for i in range(3, 100)]


def test_a_progress_bar_counts_the_photos_on_a_terminal(exported_dir, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    folder = mixed_folder(tmp_path / "photos")
    main([str(exported_dir), str(folder), "--output", str(tmp_path / "out.csv")])
    assert "labeling" in terminal.getvalue() and "9/9" in terminal.getvalue()


# ---------------------------------------------------------------- what real folders hold (issue 15, tried anew)


def test_a_file_name_that_is_not_utf8_gets_its_row_with_the_odd_bytes_escaped(model_dir, tmp_path):
    import os

    folder = tmp_path / "photos"
    make_photo(folder / "a.jpg", (90, 160, 90))
    os.rename(make_photo(folder / "b.jpg", (90, 160, 90)), os.fsencode(folder) + b"/caf\xe9.jpg")  # Latin-1 name
    output = tmp_path / "predictions.csv"
    main([str(model_dir), str(folder), "--output", str(output)])
    with output.open(encoding="utf-8", newline="") as f:  # strict: the CSV is valid UTF-8
        rows = list(csv.DictReader(f))
    assert [(row["file"], row["label"]) for row in rows] == [(f"{folder}/a.jpg", "owl"),
                                                             (f"{folder}/caf\\xe9.jpg", "owl")]


def test_a_file_that_cannot_be_opened_is_not_called_damaged(model_dir, tmp_path):
    from hf_model.predict import label_files, load_labeler

    photo = make_photo(tmp_path / "photo.jpg", (90, 160, 90))
    gone = tmp_path / "moved_away_during_the_run.jpg"  # listed, then moved by a sync client before it was read
    rows = list(label_files(load_labeler(str(model_dir), "cpu"), [photo, gone]))
    assert rows[0]["predictions"][0]["label"] == "owl"
    assert rows[1] == {"file": str(gone), "error": "not a readable image: the file cannot be opened (No such file or "
                                                   "directory)"}
