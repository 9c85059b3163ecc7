"""The Space, launched in-process with small models trained here, called through gradio_client."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import sys
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import make_photo
from gradio.route_utils import delete_files_created_by_app
from gradio_client import Client, handle_file
from PIL import Image

from hf_model.serving import Calibration, Classifier, open_photo
from hf_model.training import main as train

APP_FILE = Path(__file__).resolve().parents[1] / "space" / "app.py"
# two optimizer steps on 64-pixel photos: a real trained model folder in seconds
QUICK_TRAINING = (
    "--image_size 64 --split_fractions 0.5 0.25 0.25 --max_steps 2 --per_device_train_batch_size 4 "
    "--eval_strategy steps --eval_steps 2 --save_strategy steps --save_steps 2 --no_resume --disable_tqdm true"
)
BIRDS = [
    "ABBOTTS BABBLER",
    "AFRICAN CROWNED CRANE",
    "BLACK & YELLOW BROADBILL",
    "CAPE MAY WARBLER",
    "D-ARNAUDS BARBET",
    "EURASIAN MAGPIE",
]


def load_app():
    """space/app.py as a module (space/ is the Space repo, not a package)."""
    spec = importlib.util.spec_from_file_location("space_app", APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


app = load_app()


def make_photos(folder: Path, classes: list[str], per_class: int, seed: int = 0) -> None:
    """Small noisy photos, one colour per class."""
    colours = np.random.default_rng(seed).integers(0, 255, (len(classes), 3))
    for name, colour in zip(classes, colours):
        for i in range(per_class):
            make_photo(folder / name / f"{i}.png", tuple(colour), size=56, seed=seed + i)


def train_tiny(root: Path, classes: list[str], per_class: int) -> Path:
    make_photos(root / "photos", classes, per_class)
    train(["--data_dir", str(root / "photos"), "--output_dir", str(root / "model"), *QUICK_TRAINING.split()])
    return root / "model"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return {
        "bedroom": train_tiny(tmp_path_factory.mktemp("bedroom"), ["Modern", "Old"], 8),
        "bird": train_tiny(tmp_path_factory.mktemp("bird"), BIRDS, 4),
    }


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    make_photos(folder, ["bedroom"], 2, seed=5)
    return folder


@pytest.fixture(scope="module")
def models(model_dirs) -> dict:
    tasks = {task.key: task for task in app.TASKS}
    return {key: app.load_task_model(tasks[key], str(path)) for key, path in model_dirs.items()}


@pytest.fixture(scope="module")
def demo(models, examples_dir):
    """The app launched on loopback at a free port."""
    demo = app.build_demo(models, examples_dir)
    app.launch(demo, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(demo, examples_dir):
    return Client(demo.local_url, verbose=False, download_files=str(examples_dir.parent / "downloads"))


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_api_has_one_named_endpoint_per_task(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/predict_bedroom", "/predict_bird"}
    assert [p["parameter_name"] for p in endpoints["/predict_bedroom"]["parameters"]] == ["photo", "show_heatmap"]


def test_bedroom_endpoint_returns_both_styles_with_their_scores(client, models, photo):
    label, sentence, heatmap = client.predict(handle_file(photo), api_name="/predict_bedroom")
    expected = models["bedroom"].classifier.predict(open_photo(photo), top_k=2).scores
    scores = confidences(label)
    assert list(scores) == list(expected) == [label["label"], *[k for k in expected if k != label["label"]]]
    assert set(scores) == {"Modern", "Old"}
    assert list(scores.values()) == pytest.approx(list(expected.values()), abs=1e-4)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] in sentence
    assert Image.open(heatmap).size == (448, 448)


def test_bird_endpoint_returns_the_five_best_species(client, models, photo):
    label, sentence, _ = client.predict(handle_file(photo), api_name="/predict_bird")
    expected = models["bird"].classifier.predict(open_photo(photo), top_k=5).scores
    scores = confidences(label)
    assert len(scores) == 5 and set(scores) <= set(BIRDS)
    assert list(scores) == list(expected)
    assert list(scores.values()) == pytest.approx(list(expected.values()), abs=1e-4)
    assert label["label"] in sentence


def test_heatmap_can_be_turned_off(client, photo):
    label, _, heatmap = client.predict(handle_file(photo), False, api_name="/predict_bedroom")
    assert heatmap is None and label["label"] in {"Modern", "Old"}


@pytest.mark.parametrize("kind", ["rgba", "grayscale", "cmyk", "exif-rotated"])
def test_odd_but_valid_photos_are_classified(client, tmp_path, kind):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    if kind == "rgba":
        path = tmp_path / "photo.png"
        rgb.convert("RGBA").save(path)
    elif kind == "grayscale":
        path = tmp_path / "photo.png"
        rgb.convert("L").save(path)
    elif kind == "cmyk":
        path = tmp_path / "photo.jpg"
        rgb.convert("CMYK").save(path)
    else:
        path = tmp_path / "photo.jpg"
        exif = Image.Exif()
        exif[0x0112] = 8
        rgb.save(path, exif=exif)
    label, sentence, _ = client.predict(handle_file(path), api_name="/predict_bedroom")
    assert set(confidences(label)) == {"Modern", "Old"} and sentence


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_text("not a photo"), "not an image the demo can read"),
        (lambda path: Image.new("1", (10_000, 9_000)).save(path, format="PNG"), "too big to classify"),
    ],
)
def test_unreadable_upload_gets_a_clear_error(client, tmp_path, make, message):
    path = tmp_path / "upload.png"
    make(path)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(path), api_name="/predict_bedroom")


@pytest.fixture
def too_big_upload(tmp_path) -> Path:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff\xd8" + bytes(21 * 1024 * 1024))  # 21 MB, over MAX_FILE_SIZE
    return path


def test_upload_over_the_size_limit_is_refused(client, too_big_upload):
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {20 * 1024 * 1024} bytes"):
        client.predict(handle_file(too_big_upload), api_name="/predict_bedroom")


def test_upload_over_the_size_limit_is_refused_by_the_server_itself(demo, too_big_upload):
    """A caller that skips gradio_client's own check (curl, a browser script) gets HTTP 413 and nothing is kept."""
    before = set(demo.upload_file_set)
    with too_big_upload.open("rb") as upload:
        response = httpx.post(f"{demo.local_url}gradio_api/upload", files={"files": upload}, timeout=60)
    assert response.status_code == 413
    assert f"exceeded maximum allowed size of {20 * 1024 * 1024} bytes" in response.text
    assert demo.upload_file_set == before


def test_cached_uploads_are_deleted_within_the_hour(demo):
    every, age = demo.delete_cache
    assert (every, age) == app.DELETE_CACHE and every <= age <= 3600


def test_uploads_are_kept_only_in_gradios_temporary_folder_which_the_sweep_empties(demo, client, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    before = set(demo.upload_file_set)
    client.predict(handle_file(path), False, api_name="/predict_bedroom")
    (upload,) = demo.upload_file_set - before
    assert Path(upload).is_relative_to(gradio_temp_folder()) and Path(upload).read_bytes() == path.read_bytes()
    delete_files_created_by_app(demo, age=0)  # what delete_cache runs every DELETE_CACHE[0] seconds
    assert not Path(upload).exists()


def gradio_temp_folder() -> Path:
    return Path(gr.utils.get_upload_folder()).resolve()


def test_out_of_domain_photo_is_answered_with_not_a_bedroom(model_dirs, photo):
    base = Classifier.from_pretrained(str(model_dirs["bedroom"]))
    nothing_passes = Calibration("efficientnet-lite0", [1e-3] * 1000, domain_threshold=1.0)
    model = app.TaskModel(Classifier(base.model, base.processor, nothing_passes, "a bedroom"), "")
    label, sentence, heatmap = app.make_predict(app.TASKS[0], model)({"path": str(photo)})
    assert label == "Not a bedroom"
    assert sentence == "This photo does not look like a bedroom, so the model gives no answer."
    assert heatmap is None


def test_a_photo_sent_as_a_data_url_is_read(photo):
    data_url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    image = open_photo(app.uploaded_file({"path": None, "url": data_url}))
    assert image.size == open_photo(photo).size


def test_hub_model_out_of_reach_falls_back_to_the_local_folder(model_dirs, monkeypatch):
    monkeypatch.delenv("BEDROOM_MODEL", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # what a Space sees when the Hub fails
    task = dataclasses.replace(app.TASKS[0], local_fallback=str(model_dirs["bedroom"]))
    model = app.load_task_model(task)
    assert model.classifier.labels == ["Modern", "Old"]
    assert "local" in model.note and "could not be loaded" in model.note


def test_no_model_anywhere_is_explained_in_the_tab_and_the_api(tmp_path, photo):
    task = dataclasses.replace(app.TASKS[1], hub_id=str(tmp_path / "nope"), local_fallback=str(tmp_path / "none"))
    model = app.load_task_model(task)
    assert model.classifier is None
    assert model.note.startswith("No bird species model") and "BIRD_MODEL" in model.note
    with pytest.raises(gr.Error, match="No bird species model"):
        app.make_predict(task, model)({"path": str(photo)})


def test_environment_chooses_the_model_and_falls_back_when_it_fails(model_dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("BEDROOM_MODEL", str(model_dirs["bedroom"]))
    model = app.load_task_model(app.TASKS[0])
    assert model.classifier.labels == ["Modern", "Old"] and str(model_dirs["bedroom"]) in model.note

    monkeypatch.setenv("BEDROOM_MODEL", str(tmp_path / "gone"))  # a Space variable pointing nowhere
    model = app.load_task_model(dataclasses.replace(app.TASKS[0], local_fallback=str(model_dirs["bedroom"])))
    assert model.classifier is not None and "could not be loaded" in model.note


def test_a_model_named_on_the_command_line_must_load(tmp_path):
    assert app.parse_args(["--bird_model", "birds/flag"]).bird_model == "birds/flag"
    with pytest.raises((OSError, ValueError)):  # not found / not a valid Hub id: no silent fallback
        app.load_task_model(app.TASKS[0], str(tmp_path / "gone"))


def test_examples_come_from_the_examples_folder(examples_dir):
    photos = app.example_photos(examples_dir, app.TASKS[0])
    assert len(photos) == 2 and all(Path(p).parent == examples_dir / "bedroom" for p in photos)
    assert app.example_photos(examples_dir, app.TASKS[1]) == []
    assert app.example_photos(None, app.TASKS[0]) == []
