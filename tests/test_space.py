"""The Space, launched in-process with small models trained here, called through gradio_client."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from conftest import make_photo
from gradio.route_utils import delete_files_created_by_app
from gradio_client import Client, handle_file
from PIL import Image

from hf_model.devices import DeviceError
from hf_model.serving import Calibration, Classifier, open_photo, shown_scores
from hf_model.training import main as train

APP_FILE = Path(__file__).resolve().parents[1] / "space" / "app.py"
# two optimizer steps on 64-pixel photos: a real trained model folder in seconds
QUICK_TRAINING = (
    "--image_size 64 --split_fractions 0.5 0.25 0.25 --max_steps 2 --per_device_train_batch_size 4 "
    "--eval_strategy steps --eval_steps 2 --save_strategy steps --save_steps 2 --no_resume --disable_tqdm true "
    "--export none"  # PyTorch serves: the tests below change the model's weights in place
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
    expected = shown_scores(models["bedroom"].classifier.predict(open_photo(photo), top_k=2).scores)
    scores = confidences(label)
    assert list(scores) == list(expected) == [label["label"], *[k for k in expected if k != label["label"]]]
    assert set(scores) == {"Modern", "Old"}
    assert list(scores.values()) == pytest.approx(list(expected.values()), abs=1e-4)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] in sentence
    assert Image.open(heatmap).size == (448, 448)


def test_bird_endpoint_returns_the_five_best_species(client, models, photo):
    label, sentence, _ = client.predict(handle_file(photo), api_name="/predict_bird")
    expected = shown_scores(models["bird"].classifier.predict(open_photo(photo), top_k=5).scores)
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


# ---------------------------------------------------------------- the label and the sentence agree (issue 18, part 10)


def fixed_probabilities(model_dir: Path, probabilities: list[float], subject: str) -> Classifier:
    """The trained model with a head that gives ``probabilities`` (in label order) whatever the photo."""
    classifier = Classifier.from_pretrained(str(model_dir), subject)
    head = [m for m in classifier.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(torch.tensor(probabilities)))
    return classifier


def gradio_prints(confidence: float) -> str:
    """The percentage gr.Label writes beside a class: ``Math.round(confidence * 100) + "%"`` in its Svelte template
    (gradio/templates/frontend/assets/Index-*.js); Math.round rounds halves up."""
    return f"{math.floor(confidence * 100 + 0.5)}%"


def test_the_label_shows_the_same_percentages_as_the_sentence_never_a_flat_100_or_0(model_dirs, photo):
    classifier = fixed_probabilities(model_dirs["bedroom"], [0.004, 0.996], "a bedroom")  # Modern, Old
    label, sentence, _ = app.make_predict(app.TASKS[0], app.TaskModel(classifier, ""))({"path": str(photo)}, False)

    assert list(label) == ["Old", "Modern"] and label == pytest.approx({"Old": 0.99, "Modern": 0.01})
    shown = gr.Label(num_top_classes=2).postprocess(label)  # what the page's label component receives
    assert shown.label == "Old"
    assert [(c.label, gradio_prints(c.confidence)) for c in shown.confidences] == [("Old", "99%"), ("Modern", "1%")]
    assert sentence == "The model is very sure this is Old (99%)."


def test_the_label_keeps_the_top_five_in_order_when_several_show_as_one_percent(model_dirs, photo):
    probabilities = [0.9951, 0.003, 0.0012, 0.0004, 0.0002, 0.0001]  # BIRDS in this order, best first
    classifier = fixed_probabilities(model_dirs["bird"], probabilities, "a bird")
    label, sentence, _ = app.make_predict(app.TASKS[1], app.TaskModel(classifier, ""))({"path": str(photo)}, False)

    shown = gr.Label(num_top_classes=5).postprocess(label)
    assert [c.label for c in shown.confidences] == BIRDS[:5]
    assert [gradio_prints(c.confidence) for c in shown.confidences] == ["99%", "1%", "1%", "1%", "1%"]
    assert sentence == f"The model is very sure this is {BIRDS[0]} (99%)."


# ---------------------------------------------------------------- what the tab says about its gate (issue 18, part 7)


def note_for(report: dict) -> str:
    calibration = Calibration("efficientnet-lite0", [0.001] * 1000, 0.1, report=report)
    return app.calibration_note(app.TASKS[0], app.TaskModel(SimpleNamespace(calibration=calibration), ""))


HELD_OUT = {"in_domain": {"photos": 834, "rejected": 0.054, "rejected_ci95": [0.0404, 0.0718]},
            "out_of_domain": {"photos": 75, "rejected": 0.8667, "rejected_ci95": [0.7717, 0.9259]}}


def test_the_tab_gives_each_rate_of_its_gate_with_sample_size_and_interval():
    sizes = {"validation": 700, "out_of_domain": 150, "required": {"validation": 30, "out_of_domain": 60},
             "below_required": False}
    assert note_for({"held_out": HELD_OUT, "sample_sizes": sizes}) == (
        "Photos that do not look like a bedroom get “Not a bedroom”: on held-out photos, 87% [77-93%] of 75 other "
        "photos and 5% [4-7%] of 834 photos like the training set (95% intervals in brackets).")


def test_the_tab_says_when_its_gate_was_calibrated_on_too_few_photos():
    held_out = {"in_domain": {"photos": 3, "rejected": 0.3333, "rejected_ci95": [0.0615, 0.7923]},
                "out_of_domain": {"photos": 1, "rejected": 0.0, "rejected_ci95": [0.0, 0.7935]}}
    sizes = {"validation": 3, "out_of_domain": 2, "required": {"validation": 30, "out_of_domain": 60},
             "below_required": True}
    assert note_for({"held_out": held_out, "sample_sizes": sizes}) == (
        "Photos that do not look like a bedroom get “Not a bedroom”: on held-out photos, 0% [0-79%] of 1 other "
        "photos and 33% [6-79%] of 3 photos like the training set (95% intervals in brackets). **Calibrated on few "
        "photos** (3 like the training set and 2 others, where at least 30 and 60 are asked for): these rates are "
        "rough.")


def test_a_calibration_json_from_before_the_intervals_is_described_without_them():
    old = {name: {"photos": entry["photos"], "rejected": entry["rejected"]} for name, entry in HELD_OUT.items()}
    assert note_for({"held_out": old}) == (
        "Photos that do not look like a bedroom get “Not a bedroom”: on held-out photos, 87% of 75 other photos "
        "and 5% of 834 photos like the training set.")


def test_a_model_flag_that_does_not_load_stops_the_app_in_one_line_saying_why(tmp_path, monkeypatch):
    app = load_app()
    monkeypatch.setattr(app, "configure_serving", lambda: None)
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as stop:
        app.main(["--bedroom_model", str(tmp_path / "photos")])
    assert stop.value.code == (f"space/app.py: error: could not load the bedroom style model: {tmp_path / 'photos'} "
                               "is a folder, but not a model folder: it holds no config.json (train.py --output_dir "
                               "does)")


# ---------------------------------------------------------------- where the models run (issue 17, part 8)



def test_the_models_run_on_the_device_flag_which_defaults_to_auto(tiny_convnext, no_accelerator):
    assert app.parse_args([]).device == "auto" and app.parse_args(["--device", "cuda:1"]).device == "cuda:1"
    model = app.load_task_model(app.TASKS[0], tiny_convnext, app.parse_args([]).device)
    assert model.classifier.device == model.classifier.model.device == torch.device("cpu")  # auto without a GPU


def test_a_device_the_machine_lacks_stops_the_app_in_one_line_before_any_model_loads(monkeypatch, no_accelerator):
    app = load_app()
    monkeypatch.setattr(app, "configure_serving", lambda: None)
    monkeypatch.setattr(app, "load_task_model", lambda *args: pytest.fail("no model loads on a missing device"))
    with pytest.raises(SystemExit) as stop:
        app.main(["--device", "cuda"])
    assert stop.value.code == ("space/app.py: error: --device cuda: this machine has no such device (present here: "
                               "cpu); give one of those or auto")


def test_a_device_the_machine_lacks_is_not_taken_for_a_hub_failure(tiny_convnext, monkeypatch, caplog,
                                                                   no_accelerator):
    monkeypatch.delenv("BEDROOM_MODEL", raising=False)
    task = dataclasses.replace(app.TASKS[0], local_fallback=tiny_convnext)  # a fallback that would load
    with pytest.raises(DeviceError, match="^--device cuda: "):
        app.load_task_model(task, None, "cuda")
    assert not [r.getMessage() for r in caplog.records if r.name == "space"]  # no "could not load ...; using local"


def test_the_space_readme_snippet_runs_against_the_app_as_written(demo, photo, monkeypatch, capsys):
    readme = (APP_FILE.parent / "README.md").read_text()
    code = re.search(r"## Call it from Python\s+```python\n(.*?)```", readme, re.DOTALL).group(1)
    monkeypatch.chdir(photo.parent)
    photo.rename(photo.parent / "bedroom.jpg")
    code = code.replace('"hf-model-demo/photo-demo"', repr(demo.local_url))  # the Space's id -> the app here
    exec(compile(code, "<space README snippet>", "exec"), {})  # noqa: S102 - the README's own code, as users run it
    printed = capsys.readouterr().out
    assert re.search(r"^(Modern|Old) \[\{'label': '(Modern|Old)', 'confidence': ", printed, re.MULTILINE)
