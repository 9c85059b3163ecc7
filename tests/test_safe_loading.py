"""Safe loading: weights come only from safetensors; no pickle is ever unpickled, no remote code is run."""

from __future__ import annotations

import ast
import json
import pathlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from hf_model.backbones import load_model, resolve_backbone
from hf_model.predict import load_for_inference
from hf_model.serving import Classifier, DomainGate

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("hf_model", "space", "benchmarks", "train.py")  # the code that loads models or files
NO_SAFETENSORS = r"no file named model\.safetensors"  # transformers' words with use_safetensors=True


class RunsCodeWhenUnpickled:
    """A pickled object whose unpickling creates ``marker``: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def craft_pickle(path: Path, marker: Path, zip_format: bool) -> None:
    """A state dict that runs code when loaded, in torch.save's zip format or its legacy (pre-1.6) one."""
    torch.save({"classifier.weight": RunsCodeWhenUnpickled(marker)}, path, _use_new_zipfile_serialization=zip_format)


@pytest.fixture(params=["zip", "legacy"])
def pickle_only_folder(request, tmp_path, tiny_convnext) -> tuple[Path, Path]:
    """A model folder whose only weights are a pickle ``pytorch_model.bin``; and the marker it would write."""
    folder = tmp_path / "pickle_model"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(Path(tiny_convnext) / name, folder / name)
    marker = tmp_path / "unpickled.marker"
    craft_pickle(folder / "pytorch_model.bin", marker, zip_format=request.param == "zip")
    return folder, marker


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_crafted_pickle_runs_code_when_unpickled_unsafely(tmp_path, zip_format):
    marker = tmp_path / "unpickled.marker"
    craft_pickle(tmp_path / "pytorch_model.bin", marker, zip_format)
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)  # what an unprotected loader does
    assert marker.exists()


LOAD_PATHS = {
    "predict.load_for_inference": lambda folder: load_for_inference(str(folder), device="cpu"),
    "serving.Classifier.from_pretrained": lambda folder: Classifier.from_pretrained(str(folder)),
    "backbones.load_model (--backbone)": lambda folder: load_model(resolve_backbone(str(folder)), ["a", "b"]),
    "serving.DomainGate (calibration.json's gate_backbone)": lambda folder: DomainGate(str(folder)),
}


@pytest.mark.parametrize("load", LOAD_PATHS.values(), ids=LOAD_PATHS.keys())
def test_a_pickle_only_model_folder_is_refused_without_unpickling(pickle_only_folder, load):
    folder, marker = pickle_only_folder
    with pytest.raises(OSError, match=NO_SAFETENSORS) as refused:
        load(folder)
    assert str(folder) in str(refused.value)
    assert not marker.exists(), "the pickle was unpickled: a model folder could run code on our machine"


@pytest.mark.parametrize("load", LOAD_PATHS.values(), ids=LOAD_PATHS.keys())
def test_safetensors_win_over_a_pickle_in_the_same_folder(tmp_path, tiny_convnext, load):
    folder = tmp_path / "both"
    shutil.copytree(tiny_convnext, folder)
    marker = tmp_path / "unpickled.marker"
    craft_pickle(folder / "pytorch_model.bin", marker, zip_format=True)
    load(folder)
    assert not marker.exists()


def test_a_config_pointing_at_a_pickle_file_is_not_unpickled(tmp_path, tiny_convnext):
    """``transformers_weights`` in config.json may name a file; a pickle named there must not be unpickled."""
    folder = tmp_path / "redirected"
    shutil.copytree(tiny_convnext, folder)
    marker = tmp_path / "unpickled.marker"
    craft_pickle(folder / "adapter_model.bin", marker, zip_format=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    for load in LOAD_PATHS.values():
        with pytest.raises((OSError, pickle.UnpicklingError)):  # torch's restricted unpickler refuses its globals
            load(folder)
    assert not marker.exists()


def python_files() -> list[Path]:
    paths = [REPO / name for name in CHECKED]
    return sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*.py")))


def unsafe_calls(source: str) -> list[str]:
    """Calls that could run code from a model file, each as ``"line N: call"``: ``trust_remote_code`` not False,
    ``use_safetensors=False``, ``torch.load`` without ``weights_only=True``, ``pickle.load``/``pickle.loads``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name, keywords = ast.unparse(node.func), {k.arg: k.value for k in node.keywords}
        remote = keywords.get("trust_remote_code")
        if remote is not None and not is_constant(remote, False):
            found.append(f"line {node.lineno}: {name}(trust_remote_code={ast.unparse(remote)})")
        if is_constant(keywords.get("use_safetensors"), False):
            found.append(f"line {node.lineno}: {name}(use_safetensors=False)")
        if name.endswith("torch.load") and not is_constant(keywords.get("weights_only"), True):
            found.append(f"line {node.lineno}: {name}(...) without weights_only=True")
        if name.endswith(("pickle.load", "pickle.loads")):
            found.append(f"line {node.lineno}: {name}(...)")
    return found


def is_constant(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


@pytest.mark.parametrize(
    "line",
    [
        "AutoModel.from_pretrained(path, trust_remote_code=True)",
        "pipeline('image-classification', model=path, trust_remote_code=flag)",
        "state = torch.load(path)",
        "state = torch.load(path, weights_only=False)",
        "state = pickle.loads(blob)",
        "AutoModelForImageClassification.from_pretrained(path, use_safetensors=False)",
    ],
)
def test_the_static_check_catches_unsafe_loading(line):
    assert unsafe_calls(f"import torch\n{line}\n")


def test_safe_calls_pass_the_static_check():
    safe = "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\nf(trust_remote_code=False)\n"
    assert not unsafe_calls(safe)


def test_no_code_loads_pickles_or_remote_code():
    files = python_files()
    found = {str(p.relative_to(REPO)): calls for p in files if (calls := unsafe_calls(p.read_text()))}
    assert len(files) > 10 and found == {}
