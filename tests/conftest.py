"""Shared fixtures: tiny photos and tiny models made in the test, and the real data folder."""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
# Hermetic: the datasets/evaluate caches and matplotlib's config go to a folder of this session, not $HOME
# (set before any test module imports those libraries).
_SESSION_HOME = tempfile.mkdtemp(prefix="hf_model_tests-")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)  # ~100 MB a session: never left behind
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "huggingface")
os.environ["MPLCONFIGDIR"] = os.path.join(_SESSION_HOME, "matplotlib")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory) -> Iterator[Path]:
    """Converted backbones go to a folder of this session, never ~/.cache/hf_model (converted once per session)."""
    folder = tmp_path_factory.mktemp("hf_model_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_MODEL_CACHE", str(folder))  # read by hf_model.backbones.default_cache_dir
        yield folder


def make_photo(path: Path, colour: tuple[int, int, int], size: int = 48, seed: int = 0) -> Path:
    """A small photo of one colour with noise, so photos of a class look alike but are not identical."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path



def make_bedroom_folder(root: Path, n: int = 24) -> Path:
    """bed_1..bed_n; odd numbers look 'Modern' (light), even 'Old' (dark)."""
    for i in range(1, n + 1):
        make_photo(root / f"bed_{i}.jpg", (230, 230, 230) if i % 2 else (60, 40, 20), seed=i)
    return root

def write_birds(root: Path, species: dict[str, int], missing: dict[str, int] | None = None) -> Path:
    """``birds.csv`` (class id, filepaths, labels, data set) and ``images/<SPECIES>/<i>.jpg``; ``missing`` rows
    name files that are not there."""
    rows = []
    for s, (name, count) in enumerate(species.items()):
        for i in range(count + (missing or {}).get(name, 0)):
            path = f"images/{name}/{i}.jpg"
            if i < count:
                make_photo(root / path, (40 * s, 200 - 40 * s, 90), seed=50 * s + i)
            rows.append({"class id": s, "filepaths": path, "labels": name, "data set": "train"})
    with (root / "birds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """class_name/*.jpg with two well-separated classes of 12 photos each."""
    root = tmp_path / "photos"
    for name, colour in [("red", (220, 30, 30)), ("blue", (30, 30, 220))]:
        for i in range(12):
            make_photo(root / name / f"{i}.jpg", colour, seed=i)
    return root


@pytest.fixture(scope="session")
def tiny_convnext(tmp_path_factory) -> str:
    """A random-init HF-native ConvNeXt with its image processor: the Hub-model code path, offline."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    out = tmp_path_factory.mktemp("tiny_convnext")
    torch.manual_seed(0)  # the same random weights in every session: no test depends on a lucky draw
    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=10)
    ConvNextForImageClassification(config).save_pretrained(out)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(out)
    return str(out)


@pytest.fixture
def no_accelerator(monkeypatch):
    """torch finds no GPU, whatever this machine has: ``auto`` is the CPU and ``cuda`` is not there."""
    import torch

    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)


@pytest.fixture(autouse=True)
def no_export_at_the_end_of_training(request, monkeypatch):
    """Training in this process skips ``--export onnx`` (seconds a run; test_export.py and tests marked
    ``exports_onnx`` check it), unless the test is so marked. Module-scoped training fixtures still export."""
    if "exports_onnx" not in request.keywords:
        monkeypatch.setattr("hf_model.training.export_or_warn", lambda *args, **kwargs: None)


@pytest.fixture(scope="session")
def exported_tiny_convnext(tiny_convnext, tmp_path_factory) -> Path:
    """A copy of the tiny ConvNeXt folder with its ONNX graph exported (``hf-model export``)."""
    import shutil

    from hf_model.export import export_model

    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(tiny_convnext, folder)
    export_model(folder)
    return folder
