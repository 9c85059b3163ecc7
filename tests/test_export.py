"""``hf-model export``: model.onnx beside the weights predicts what PyTorch does, or is not written."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo

from hf_model import export
from hf_model.export import ExportError, export_model, export_or_warn, exported_backbone, made_photos, main
from hf_model.runtime import ONNX_FILE, WEIGHTS_KEY, OnnxModel, load_exported, weights_fingerprint

CPU = torch.device("cpu")


def pytorch_probabilities(model_dir: Path, photos) -> tuple[np.ndarray, np.ndarray]:
    """(the processor's pixels, the PyTorch model's probabilities) of ``photos``."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    pixels = AutoImageProcessor.from_pretrained(model_dir)(photos, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return pixels.numpy(), model(pixel_values=pixels).logits.softmax(-1).numpy()


@pytest.fixture
def exported(exported_tiny_convnext) -> Path:
    return exported_tiny_convnext


def test_the_exported_graph_gives_pytorchs_probabilities_for_any_batch_size(exported):
    photos = made_photos(5, seed=1)
    pixels, expected = pytorch_probabilities(exported, photos)
    graph = OnnxModel(exported / ONNX_FILE)
    np.testing.assert_allclose(graph.probabilities(pixels), expected, atol=1e-4)
    np.testing.assert_allclose(graph.probabilities(pixels[2:3]), expected[2:3], atol=1e-4)
    assert graph.input_size == (32, 32) and graph.num_labels == 10


def test_the_graph_records_the_weights_it_was_exported_from(exported):
    assert OnnxModel(exported / ONNX_FILE).metadata[WEIGHTS_KEY] == weights_fingerprint(exported)


def test_pipeline_still_reads_the_folder_after_export(exported, tiny_convnext):
    from transformers import pipeline

    photo = made_photos(1, seed=2)[0]
    after = pipeline("image-classification", model=str(exported), device=-1)(photo, top_k=3)
    before = pipeline("image-classification", model=tiny_convnext, device=-1)(photo, top_k=3)
    assert after == before and len(after) == 3


def test_the_check_reports_how_close_the_graph_is(tiny_convnext, tmp_path):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    check = export_model(folder, made_photos(3), "test photos")
    assert check.path == folder / ONNX_FILE and check.photos == 3
    assert check.max_probability_difference <= 1e-5 and check.top1_agreement == 1.0
    assert check.summary().startswith(f"wrote {folder / ONNX_FILE} (") and "on 3 test photos" in check.summary()


def test_a_graph_that_disagrees_with_the_model_is_refused_and_the_old_one_kept(tiny_convnext, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    (folder / ONNX_FILE).write_bytes(b"the previous graph")
    traced = export._Outputs.forward

    def wrong(self, pixel_values):  # a graph whose logits are three times the model's
        return tuple(out * 3 for out in traced(self, pixel_values))

    monkeypatch.setattr(export._Outputs, "forward", wrong)
    with pytest.raises(ExportError, match=r"does not predict what the model does: a class probability differs by"):
        export_model(folder)
    assert (folder / ONNX_FILE).read_bytes() == b"the previous graph"
    left = {p.name for p in folder.iterdir()}
    assert left == {p.name for p in Path(tiny_convnext).iterdir()} | {ONNX_FILE}  # no temporary file left


def test_a_model_the_exporter_cannot_take_is_one_error_saying_so(tiny_convnext, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(ExportError, match=r"could not export ConvNextForImageClassification: Unsupported operator "
                                          r"aten::frobnicate\. The model still serves with PyTorch$"):
        export_model(folder)
    assert not (folder / ONNX_FILE).exists()


def test_an_exporter_error_is_told_by_its_root_cause_without_terminal_colours():
    try:
        try:
            raise ValueError("\x1b[96mData-dependent branching\x1b[0m at line 3\nmore detail")
        except ValueError as cause:
            raise RuntimeError("Failed to export the model with torch.export. This is step 1/3") from cause
    except RuntimeError as err:
        assert export.root_cause(err) == "Data-dependent branching at line 3"
    assert export.root_cause(RuntimeError("")) == "RuntimeError"


def test_an_export_at_the_end_of_a_job_warns_instead_of_failing_it(tiny_convnext, tmp_path, monkeypatch, caplog):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with caplog.at_level(logging.WARNING):
        assert export_or_warn(folder, made_photos(2), "validation photos") is None
    assert f"{folder} was not exported to ONNX" in caplog.text and "serves with PyTorch" in caplog.text
    monkeypatch.undo()
    check = export_or_warn(folder, made_photos(2), "validation photos")
    assert check.photos == 2 and (folder / ONNX_FILE).is_file()


def test_a_graph_of_other_weights_is_not_used(exported, tmp_path, caplog):
    from transformers import AutoModelForImageClassification

    folder = Path(shutil.copytree(exported, tmp_path / "model"))
    model = AutoModelForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(folder)  # trained again in place: the old graph stays behind
    with caplog.at_level(logging.WARNING):
        assert load_exported(folder, CPU, (32, 32), 10) is None
    assert "exported from other weights" in caplog.text and f"hf-model export {folder}" in caplog.text
    assert load_exported(exported, CPU, (32, 32), 10) is not None


@pytest.mark.parametrize(("size", "labels"), [((64, 64), 10), ((32, 32), 3)])
def test_a_graph_for_another_input_size_or_class_count_is_not_used(exported, caplog, size, labels):
    with caplog.at_level(logging.WARNING):
        assert load_exported(exported, CPU, size, labels) is None
    assert "hf-model export" in caplog.text


def test_a_damaged_graph_is_not_used(exported, tmp_path, caplog):
    folder = Path(shutil.copytree(exported, tmp_path / "model"))
    graph = (folder / ONNX_FILE).read_bytes()
    (folder / ONNX_FILE).write_bytes(graph[: len(graph) // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        assert load_exported(folder, CPU, (32, 32), 10) is None
    assert "cannot be loaded" in caplog.text


def test_a_backbone_is_exported_once_when_several_users_start_together(tiny_convnext, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "backbones" / "tiny"))
    exports = []
    real_export = export.export_model
    monkeypatch.setattr(export, "export_model", lambda *a, **k: exports.append(a) or real_export(*a, **k))
    graphs = []
    users = [threading.Thread(target=lambda: graphs.append(exported_backbone(folder, CPU))) for _ in range(3)]
    for user in users:
        user.start()
    for user in users:
        user.join()
    assert len(exports) == 1 and len(graphs) == 3 and all(isinstance(graph, OnnxModel) for graph in graphs)
    assert exported_backbone(folder, CPU) is not None and len(exports) == 1  # a later start finds it made


def read_only(folder: Path, monkeypatch) -> None:
    """Opening a file under ``folder`` for writing fails as on a read-only cache (tests may run as root, whom
    file modes do not stop)."""
    import builtins

    def refusing(file, mode="r", *args, **kwargs):
        if "r" not in mode and Path(file).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(export, "open", refusing, raising=False)


def test_a_backbone_exported_before_is_served_from_a_read_only_cache(exported, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(exported, tmp_path / "backbones" / "tiny"))
    read_only(tmp_path / "backbones", monkeypatch)
    graph = exported_backbone(folder, CPU)
    assert isinstance(graph, OnnxModel) and graph.num_labels == 10


def test_a_read_only_cache_without_the_graph_runs_pytorch_with_a_warning(tiny_convnext, tmp_path, monkeypatch,
                                                                          caplog):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "backbones" / "tiny"))
    read_only(tmp_path / "backbones", monkeypatch)
    monkeypatch.setattr(export, "export_model", lambda *a, **k: pytest.fail("nothing can be written there"))
    with caplog.at_level(logging.WARNING):
        assert exported_backbone(folder, CPU) is None
    assert f"{folder} cannot be exported to ONNX there" in caplog.text and "Permission denied" in caplog.text


# ---------------------------------------------------------------- the command


def test_the_command_checks_on_the_training_photos_of_the_run_record(tiny_convnext, tmp_path, capsys):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    data_dir = tmp_path / "photos"
    for i in range(4):
        make_photo(data_dir / "red" / f"{i}.jpg", (200, 30, 30), seed=i)
    (data_dir / "red" / "broken.jpg").write_bytes(b"not a photo")  # unreadable files are left out of the check
    (folder / "hf_model_config.json").write_text(json.dumps({"config": {"data_dir": str(data_dir)}}))
    main([str(folder)])
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {folder / ONNX_FILE} (")
    assert f"on 4 photos of the training folder {data_dir} the largest probability difference" in out
    assert OnnxModel(folder / ONNX_FILE).num_labels == 10


def test_the_command_checks_on_the_photos_given(tiny_convnext, tmp_path, capsys):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    photos = [make_photo(tmp_path / "photos" / f"{i}.png", (30, 30, 200), seed=i) for i in range(3)]
    main([str(folder), "--photos", str(photos[0].parent), "--check_photos", "2"])
    assert f"on 2 photos from {photos[0].parent} " in capsys.readouterr().out


@pytest.mark.parametrize(("where", "message"), [
    ("missing", "{tmp}/missing is not a folder: give a trained model folder (train.py --output_dir)"),
    ("empty", "{tmp}/empty is a folder, but not a model folder: it holds no config.json"),
])
def test_a_folder_that_is_not_a_model_is_one_line_saying_why(tmp_path, where, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / where)])
    assert str(stop.value.code).startswith(f"hf-model export: error: {message.format(tmp=tmp_path)}")
    assert "\n" not in str(stop.value.code)


def test_photos_that_hold_no_photo_are_one_line_saying_so(tiny_convnext, tmp_path):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no photo here")
    with pytest.raises(SystemExit) as stop:
        main([str(folder), "--photos", str(tmp_path / "notes")])
    assert stop.value.code == (f"hf-model export: error: --photos {tmp_path / 'notes'}: no readable photo there to "
                               "check the graph on")
    assert not (folder / ONNX_FILE).exists()


def test_an_unfinished_run_is_not_exported(tiny_convnext, tmp_path):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    (folder / "hf_model_config.json").write_text(json.dumps({"config": {}, "finished": False}))
    with pytest.raises(SystemExit) as stop:
        main([str(folder)])
    assert "holds a run that did not finish" in str(stop.value.code)
    assert not (folder / ONNX_FILE).exists()


def test_photos_that_do_not_exist_are_named_as_missing(tiny_convnext, tmp_path):
    folder = Path(shutil.copytree(tiny_convnext, tmp_path / "model"))
    make_photo(tmp_path / "photos" / "a.jpg", (30, 30, 200))
    with pytest.raises(SystemExit) as stop:
        main([str(folder), "--photos", str(tmp_path / "photos"), str(tmp_path / "phtos")])  # a typo
    assert stop.value.code == f"hf-model export: error: --photos {tmp_path / 'phtos'}: no such file or folder"
    assert not (folder / ONNX_FILE).exists()
