"""Publishing, checked with no network: the repo folders are what the Hub and the libraries load.

Only the network client is replaced: ``hf_model.hub.HfApi`` becomes :class:`FakeHfApi`, which
records every call and what the uploaded folder held at that moment.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from huggingface_hub import DatasetCard, ModelCard, RepoUrl, SpaceCard
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image as PILImage

from hf_model import hub
from hf_model.config import RunRecord, parse_args
from hf_model.space_tasks import MAX_EXAMPLES

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
CARDS = {"bedrooms": PROJECT / "datasets_cards" / "bedrooms" / "README.md",
         "birds": PROJECT / "datasets_cards" / "birds" / "README.md"}
LABELS = ["Modern", "Old"]


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records calls, touches no network."""

    calls: list[tuple[str, dict]] = []
    fail_upload: Exception | None = None

    def __init__(self, token=None, **kwargs):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[kwargs["repo_type"]]
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        if self.fail_upload:
            raise self.fail_upload
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123"})()

    def add_space_variable(self, repo_id, key, value, **kwargs):
        self.calls.append(("add_space_variable", {"repo_id": repo_id, "key": key, "value": value}))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    FakeHfApi.fail_upload = None
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return FakeHfApi


@pytest.fixture
def no_saved_login(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))


def calls_named(fake, name: str) -> list[dict]:
    return [kwargs for call, kwargs in fake.calls if call == name]


# ------------------------------------------------------------------------------ a trained folder


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """What train.py leaves behind, with an untrained head: weights, config, results, card, plot, checkpoint."""
    from hf_model.backbones import load_model, resolve_backbone

    out = tmp_path_factory.mktemp("runs") / "bedrooms"
    load_model(resolve_backbone("efficientnet-lite0"), LABELS, 224).save_pretrained(out)
    (out / "all_results.json").write_text(json.dumps({"test_accuracy": 0.8, "test_f1_macro": 0.78}))
    cfg, args = parse_args(["--preset", "bedrooms", "--data_dir", "bedrooms", "--output_dir", str(out)])
    RunRecord(cfg, args, "python train.py --preset bedrooms", None, 224, "labels.csv (labels by file name)",
              {"train": 289, "validation": 58, "test": 39}).save(out)
    (out / "training_args.bin").write_bytes(b"pickle")
    (out / "checkpoint-7").mkdir()
    (out / "checkpoint-7" / "optimizer.pt").write_bytes(b"state")
    (out / "plots").mkdir()
    PILImage.new("RGB", (8, 8), "white").save(out / "plots" / "confusion_matrix.png")
    (out / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- bedrooms\n---\n# Bedroom style\n\n"
                                   "![confusion matrix](plots/confusion_matrix.png)\n")
    return out


def photo(path: Path, seed: int, size: int = 32) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path, quality=90)
    return str(path)


# ------------------------------------------------------------------------------------ model repo


def test_exported_model_folder_loads_with_pipeline(trained_dir, tmp_path):
    from transformers import pipeline

    out = hub.build_model_repo(trained_dir, tmp_path / "repo")
    image = PILImage.open(photo(tmp_path / "room.jpg", seed=0))
    exported = pipeline("image-classification", model=str(out), device=-1)(image)
    original = pipeline("image-classification", model=str(trained_dir), device=-1)(image)

    assert {p["label"] for p in exported} == set(LABELS)
    assert [p["label"] for p in exported] == [p["label"] for p in original]
    assert [p["score"] for p in exported] == pytest.approx([p["score"] for p in original], abs=1e-5)


def test_hf_native_model_keeps_its_image_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    source = tmp_path / "vit"
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {name: i for i, name in enumerate(LABELS)}}
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, **labels)
    ViTForImageClassification(config).save_pretrained(source)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(source)
    out = hub.build_model_repo(source, tmp_path / "repo")

    assert (out / "preprocessor_config.json").is_file()
    predictions = pipeline("image-classification", model=str(out), device=-1)(photo(tmp_path / "x.jpg", seed=1))
    assert {p["label"] for p in predictions} == set(LABELS)

    (source / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no image processor"):
        hub.build_model_repo(source, tmp_path / "repo2")


def test_model_repo_keeps_weights_card_and_plots_but_no_checkpoints(trained_dir, tmp_path):
    out = hub.build_model_repo(trained_dir, tmp_path / "repo")
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}

    assert {"config.json", "model.safetensors", "README.md", "all_results.json", "hf_model_config.json",
            "plots/confusion_matrix.png"} <= files
    assert not any(f.startswith("checkpoint-") or f.endswith(".bin") for f in files)
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0"  # the card from reports is kept, only completed
    assert "plots/confusion_matrix.png" in card.text


def test_model_card_snippet_names_the_repo_not_the_local_folder(image_folder, tiny_convnext, tmp_path):
    from hf_model.training import main as train_main

    run = tmp_path / "run"
    train_main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(run),
                "--stages", "1", "--num_train_epochs", "1", "--image_size", "32", "--cache_dir", str(tmp_path / "c"),
                "--split_fractions", "0.5", "0.25", "0.25"])
    assert f'model="{run}"' in (run / "README.md").read_text()
    out = hub.build_model_repo(run, tmp_path / "repo", "alice/colours")

    card = ModelCard.load(out / "README.md")
    assert 'pipeline("image-classification", model="alice/colours")' in card.text
    assert f'model="{run}"' not in card.text
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "accuracy"  # metrics survive


def test_model_repo_without_card_gets_the_training_card_from_the_run_record(trained_dir, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("README.md", "checkpoint-*"))
    out = hub.build_model_repo(source, tmp_path / "repo", "alice/bedroom-style")

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "accuracy"
    assert "Modern, Old" in card.text and 'model="alice/bedroom-style"' in card.text
    assert "### Hyperparameters" in card.text  # the same writer as training's, fed by hf_model_config.json
    assert card.text.lstrip().startswith("# bedroom-style")  # named for the repo, not the build folder


def test_model_repo_refuses_a_config_without_class_names(trained_dir, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((source / "config.json").read_text())
    config.pop("label_names", None)
    config.pop("id2label", None)
    config.pop("label2id", None)
    (source / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="names no classes"):
        hub.build_model_repo(source, tmp_path / "repo")


# ---------------------------------------------------------------------------------- dataset repo


@pytest.fixture
def tiny_bedrooms(tmp_path) -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=LABELS)})
    sizes = {"train": 6, "validation": 3, "test": 3, "unlabeled": 4}
    out, seed = DatasetDict(), 0
    for split, n in sizes.items():
        files = [photo(tmp_path / f"bed_{seed + i}.jpg", seed + i) for i in range(n)]
        labels = [-1] * n if split == "unlabeled" else [i % 2 for i in range(n)]
        out[split] = Dataset.from_dict({"image": files, "label": labels}, features=features)
        seed += n
    return out


def test_exported_dataset_round_trips_through_load_dataset(tiny_bedrooms, tmp_path):
    out = hub.export_dataset_repo(tiny_bedrooms, CARDS["bedrooms"], tmp_path / "repo")
    for photo_file in tmp_path.glob("bed_*.jpg"):
        photo_file.unlink()  # the export must hold the image bytes, not paths to these files
    loaded = load_dataset(str(out))

    assert set(loaded) == set(tiny_bedrooms)
    for split, original in tiny_bedrooms.items():
        assert loaded[split].features == original.features
        assert loaded[split].num_rows == original.num_rows
        assert loaded[split]["label"] == original["label"]
    assert loaded["train"].features["label"].names == LABELS
    assert loaded["train"][0]["image"].size == (32, 32)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "unlabeled-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet"]


def test_large_splits_are_sharded_in_the_hub_layout(tiny_bedrooms, tmp_path):
    out = hub.export_dataset_repo(tiny_bedrooms, CARDS["bedrooms"], tmp_path / "repo", max_shard_bytes=4000)

    train_shards = sorted(p.name for p in (out / "data").glob("train-*"))
    assert train_shards[0].startswith("train-00000-of-000") and len(train_shards) > 1
    assert load_dataset(str(out), split="train").num_rows == 6


def test_exported_card_holds_the_real_class_names_and_split_sizes(tiny_bedrooms, tmp_path):
    out = hub.export_dataset_repo(tiny_bedrooms, CARDS["bedrooms"], tmp_path / "repo")
    card = DatasetCard.load(out / "README.md")

    info = card.data["dataset_info"]
    assert info["features"][1]["dtype"]["class_label"]["names"] == {"0": "Modern", "1": "Old"}
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {"train": 6, "validation": 3, "test": 3,
                                                                      "unlabeled": 4}
    assert card.data["size_categories"] == ["n<1K"]
    assert "## Labeling rule" in card.text  # the prose of the card travels with it


@pytest.mark.parametrize("name", sorted(CARDS))
def test_dataset_card_yaml_has_what_the_hub_needs(name):
    card = DatasetCard.load(CARDS[name])
    data = card.data.to_dict()

    assert data["license"] and data["pretty_name"]
    assert data["task_categories"] == ["image-classification"]
    assert data["size_categories"] == ["1K<n<10K"]
    assert [c["config_name"] for c in data["configs"]] == ["default"]
    splits = {f["split"]: f["path"] for f in data["configs"][0]["data_files"]}
    assert splits["train"] == "data/train-*" and {"validation", "test"} <= set(splits)
    names = data["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert len(names) == {"bedrooms": 2, "birds": 525}[name]
    assert {s["name"] for s in data["dataset_info"]["splits"]} == set(splits)
    headings = [line for line in card.text.splitlines() if line.startswith("#")]
    for section in ("license", "Labeling rule", "label noise", "ear-duplicates", "Intended use"):
        assert any(section.lower() in heading.lower() for heading in headings), section


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["bedrooms", "birds"])
def test_real_dataset_export_matches_its_card_and_round_trips(name, tmp_path):
    if not (SHARED_DATA / name).is_dir():
        pytest.skip(f"{SHARED_DATA / name} is not here")
    dataset_dict, card_path = hub.load_dataset_to_publish(str(SHARED_DATA / name), None, None, seed=42)
    out = hub.export_dataset_repo(dataset_dict, card_path, tmp_path / "repo")
    loaded = load_dataset(str(out))

    assert {s: d.num_rows for s, d in loaded.items()} == {s: d.num_rows for s, d in dataset_dict.items()}
    assert loaded["train"].features == dataset_dict["train"].features
    exported = DatasetCard.load(out / "README.md").data["dataset_info"]
    committed = DatasetCard.load(CARDS[name]).data["dataset_info"]
    assert committed["features"] == exported["features"], f"refresh {CARDS[name]} from {out}/README.md"
    def counts(splits):  # num_bytes moves with pyarrow versions; the photo counts must not
        return {s["name"]: s["num_examples"] for s in splits}

    assert counts(committed["splits"]) == counts(exported["splits"]), f"refresh {CARDS[name]} from {out}/README.md"


# ------------------------------------------------------------------------------------ space repo


@pytest.fixture
def space_dir(tmp_path) -> Path:
    space = tmp_path / "space"
    (space / "__pycache__").mkdir(parents=True)
    (space / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"")
    (space / "app.py").write_text("import gradio as gr\n")
    (space / "requirements.txt").write_text("gradio\n")
    (space / "README.md").write_text("---\ntitle: Rooms and birds\nsdk: gradio\napp_file: app.py\n"
                                     "models:\n- someone/old-model\n---\n# Demo\n")
    return space


def test_space_repo_lists_the_chosen_models(space_dir, tmp_path):
    models = {"BEDROOM_MODEL": "alice/bedroom-style", "BIRD_MODEL": "alice/bird-species"}
    out = hub.build_space_repo(space_dir, tmp_path / "repo", models, ["alice/bedroom-style"])

    card = SpaceCard.load(out / "README.md")
    assert card.data.models == ["alice/bedroom-style", "alice/bird-species"]
    assert card.data.datasets == ["alice/bedroom-style"]
    assert card.data.sdk == "gradio"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "requirements.txt"]


def test_space_ships_the_example_photos(space_dir, tmp_path):
    examples = tmp_path / "examples"
    for tab, n in (("bedroom", 10), ("bird", 2)):
        (examples / tab).mkdir(parents=True)
        for i in range(n):
            photo(examples / tab / f"{i:02d}.jpg", seed=i)
    (examples / "bird" / "notes.txt").write_text("not a photo")
    out = hub.build_space_repo(space_dir, tmp_path / "repo", {}, examples_dir=examples)

    assert len(list((out / "examples" / "bedroom").iterdir())) == MAX_EXAMPLES
    assert sorted(p.name for p in (out / "examples" / "bird").iterdir()) == ["00.jpg", "01.jpg"]
    with pytest.raises(FileNotFoundError, match="bedroom"):
        hub.build_space_repo(space_dir, tmp_path / "repo2", {}, examples_dir=tmp_path / "empty")


def test_space_that_imports_hf_model_gets_the_package(space_dir, tmp_path):
    (space_dir / "app.py").write_text("import gradio as gr\n\nfrom hf_model.predict import load_classifier\n")
    out = hub.build_space_repo(space_dir, tmp_path / "repo", {})

    assert (out / "hf_model" / "predict.py").is_file() and (out / "hf_model" / "__init__.py").is_file()
    assert not (out / "hf_model" / "__pycache__").exists()


def test_project_space_folder_builds(tmp_path):
    default = SpaceCard.load(PROJECT / "space" / "README.md").data.models
    out = hub.build_space_repo(PROJECT / "space", tmp_path / "repo", {"BEDROOM_MODEL": "alice/bedroom-style"},
                               repo_id="alice/rooms-demo")
    card = SpaceCard.load(out / "README.md")
    assert card.data.models == ["alice/bedroom-style", default[1]]  # the bird tab keeps its default model
    assert 'Client("alice/rooms-demo")' in card.text and hub.SPACE_ID_PLACEHOLDER not in card.text


# ------------------------------------------------------------------------- publish command and HfApi


def test_publish_model_creates_the_repo_then_uploads_one_folder(fake_hub, trained_dir, tmp_path, capsys):
    out = tmp_path / "build"
    hub.main(["model", str(trained_dir), "--repo_id", "alice/bedroom-style", "--out_dir", str(out)])

    assert calls_named(fake_hub, "init") == [{"token": "hf_test_token"}]
    assert calls_named(fake_hub, "create_repo") == [
        {"repo_id": "alice/bedroom-style", "repo_type": "model", "private": None, "exist_ok": True}]
    [upload] = calls_named(fake_hub, "upload_folder")
    assert (upload["repo_id"], upload["repo_type"], upload["folder_path"]) == ("alice/bedroom-style", "model", str(out))
    assert "model.safetensors" in upload["files"] and "training_args.bin" not in upload["files"]
    assert upload["delete_patterns"] == "*"  # the repo mirrors the folder: no stale shards or plots survive
    assert "https://huggingface.co/alice/bedroom-style/commit/abc123" in capsys.readouterr().out


def test_publish_dataset_uploads_parquet_and_card(fake_hub, tmp_path, monkeypatch):
    photos = tmp_path / "bedrooms"
    photos.mkdir()
    rows = [(Path(photo(photos / f"bed_{i}.jpg", i)).name, "M" if i % 2 else "O") for i in range(1, 41)]
    photo(photos / "bed_99.jpg", 99)  # no label: goes to the unlabeled split
    with (photos / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    monkeypatch.chdir(tmp_path)  # the default build folder, runs/hub/..., lands here

    hub.main(["dataset", str(photos), "--repo_id", "alice/bedroom-style", "--private"])

    [create] = calls_named(fake_hub, "create_repo")
    assert (create["repo_id"], create["repo_type"], create["private"]) == ("alice/bedroom-style", "dataset", True)
    [upload] = calls_named(fake_hub, "upload_folder")
    assert upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == Path("runs/hub/datasets--alice--bedroom-style")
    assert "README.md" in upload["files"]
    assert {f.split("-")[0] for f in upload["files"] if f.startswith("data/")} == {
        "data/train", "data/validation", "data/test", "data/unlabeled"}
    assert load_dataset(upload["folder_path"], split="unlabeled").num_rows == 1


def test_publish_space_uploads_and_points_the_app_at_the_models(fake_hub, space_dir, tmp_path):
    hub.main(["space", str(space_dir), "--repo_id", "alice/rooms-demo", "--out_dir", str(tmp_path / "build"),
              "--bedroom_model", "alice/bedroom-style", "--bird_model", "alice/bird-species"])

    [create] = calls_named(fake_hub, "create_repo")
    assert (create["repo_id"], create["repo_type"], create["space_sdk"]) == ("alice/rooms-demo", "space", "gradio")
    [upload] = calls_named(fake_hub, "upload_folder")
    assert (upload["repo_type"], upload["folder_path"]) == ("space", str(tmp_path / "build"))
    assert calls_named(fake_hub, "add_space_variable") == [
        {"repo_id": "alice/rooms-demo", "key": "BEDROOM_MODEL", "value": "alice/bedroom-style"},
        {"repo_id": "alice/rooms-demo", "key": "BIRD_MODEL", "value": "alice/bird-species"}]


def test_dry_run_builds_the_folder_and_calls_no_hub(fake_hub, no_saved_login, trained_dir, tmp_path, capsys):
    out = tmp_path / "build"
    hub.main(["model", str(trained_dir), "--repo_id", "alice/bedroom-style", "--dry_run", "--out_dir", str(out)])

    assert fake_hub.calls == []
    assert (out / "model.safetensors").is_file()
    assert f"ready at {out}" in capsys.readouterr().out


def test_no_token_is_a_clear_error_before_any_work(fake_hub, no_saved_login, trained_dir, tmp_path):
    with pytest.raises(SystemExit, match="no Hugging Face token: set HF_TOKEN"):
        hub.main(["model", str(trained_dir), "--repo_id", "alice/x", "--out_dir", str(tmp_path / "build")])
    assert fake_hub.calls == [] and not (tmp_path / "build").exists()


def test_no_token_stops_a_dataset_before_reading_the_photos(fake_hub, no_saved_login, tmp_path):
    with pytest.raises(SystemExit, match="no Hugging Face token"):
        hub.main(["dataset", str(tmp_path / "not-read"), "--repo_id", "alice/x"])
    assert fake_hub.calls == []


def test_a_failed_upload_says_nothing_was_committed(fake_hub, trained_dir, tmp_path):
    response = type("Response", (), {"status_code": 403, "headers": {}, "request": None})()
    fake_hub.fail_upload = HfHubHTTPError("403 Forbidden", response=response)

    with pytest.raises(SystemExit, match=r"exists .* but the upload failed: the token may not write there \(403\)"
                                         r".*No commit was made"):
        hub.main(["model", str(trained_dir), "--repo_id", "alice/x", "--out_dir", str(tmp_path / "build")])


def test_offline_mode_with_the_real_client_is_a_clear_error(trained_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE is set.*Nothing was uploaded"):
        hub.main(["model", str(trained_dir), "--repo_id", "alice/x", "--out_dir", str(tmp_path / "build")])


def test_unreachable_hub_with_the_real_client_is_a_clear_error(trained_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there

    with pytest.raises(SystemExit, match="cannot be reached.*Nothing was uploaded"):
        hub.main(["model", str(trained_dir), "--repo_id", "alice/x", "--out_dir", str(tmp_path / "build")])


def test_a_given_out_dir_that_is_not_empty_is_refused(trained_dir, tmp_path):
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "old.txt").write_text("stale")
    with pytest.raises(FileExistsError, match="not empty"):
        hub.publish_model(trained_dir, "alice/x", dry_run=True, out_dir=tmp_path / "build")


def test_publish_dataset_skips_an_unreadable_photo_when_asked_as_its_error_advises(tmp_path, capsys):
    from conftest import make_photo

    photos = tmp_path / "photos"
    for name, colour in [("red", (220, 30, 30)), ("blue", (30, 30, 220))]:
        for i in range(6):
            make_photo(photos / name / f"{i}.jpg", colour, seed=i)
    (photos / "red" / "broken.jpg").write_bytes(b"not a photo")
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: cc-by-4.0\npretty_name: Colours\ntask_categories:\n- image-classification\n"
                    "---\n# x\n")
    flags = ["dataset", str(photos), "--repo_id", "me/colours", "--dry_run", "--out_dir", str(tmp_path / "repo"),
             "--card", str(card)]
    with pytest.raises(SystemExit, match="broken.jpg.*pass --skip_bad_images"):
        hub.main(flags)
    hub.main([*flags, "--skip_bad_images"])
    published = load_dataset("parquet", data_dir=str(tmp_path / "repo" / "data"))
    assert sum(len(split) for split in published.values()) == 12  # every readable photo, the broken one left out


# ------------------------------------------------------------------- no machine paths in a published repo


def test_published_record_and_calibration_keep_no_machine_paths_and_still_load(trained_dir, tmp_path):
    from hf_model.config import load_run_config

    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*"))
    (source / "calibration.json").write_text(json.dumps({"threshold": 0.6, "report": {"out_of_domain_dirs": [
        "/home/alice/photos/not_rooms", "../alice/rooms_other"]}}))  # calibrate records the folders as typed
    assert str(trained_dir) in (source / "hf_model_config.json").read_text()  # output_dir, as trained
    out = hub.build_model_repo(source, tmp_path / "repo", "alice/bedroom-style")

    assert str(trained_dir.parent) not in (out / "hf_model_config.json").read_text()
    record = load_run_config(out)
    assert record.training_args.output_dir == "bedrooms"  # cut to its last folder
    assert record.config.data_dir == "bedrooms" and record.split_sizes == {"train": 289, "validation": 58, "test": 39}
    assert json.loads((out / "calibration.json").read_text()) == {
        "threshold": 0.6, "report": {"out_of_domain_dirs": ["not_rooms", "rooms_other"]}}
    assert (out / "all_results.json").read_text() == (source / "all_results.json").read_text()  # nothing to cut


def test_a_card_that_names_a_local_dataset_as_a_hub_repo_is_rewritten_when_published(trained_dir, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*"))
    (source / "README.md").write_text(  # what cards written before the fix said for --dataset /home/alice/bedrooms
        "---\ndatasets:\n- /home/alice/bedrooms\nmodel-index:\n- name: bedrooms\n  results:\n  - task:\n"
        "      type: image-classification\n    dataset:\n      name: /home/alice/bedrooms\n"
        "      type: /home/alice/bedrooms\n    metrics:\n    - type: accuracy\n      value: 0.8\n---\n"
        "# bedrooms\n\nTrained on [/home/alice/bedrooms](https://huggingface.co/datasets//home/alice/bedrooms).\n")
    out = hub.build_model_repo(source, tmp_path / "repo", "alice/bedroom-style")

    card = ModelCard.load(out / "README.md")
    assert card.data.datasets is None
    assert [(r.dataset_type, r.dataset_name) for r in card.data.eval_results] == [
        ("imagefolder", "local photo folder")] * 2  # accuracy and F1 from all_results.json
    assert "/home/alice" not in str(card) and "a local folder of photos (`bedrooms/`, 386 labeled photos)" in card.text


def test_a_hand_written_card_is_published_without_absolute_paths(trained_dir, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*"))
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Rooms\n\nPhotos from /home/alice/rooms, "
                                      "trained with `--data_dir ~/rooms`; see ../notes.md.\n")
    out = hub.build_model_repo(source, tmp_path / "repo", "alice/bedroom-style")

    text = ModelCard.load(out / "README.md").text
    assert "Photos from rooms, trained with `--data_dir rooms`; see ../notes.md." in text


@pytest.mark.parametrize(("flag", "typed", "name"), [
    ("--data_dir", "{tmp}/x/Alice Smith/Client Photos", "Client Photos"),  # absolute, with spaces
    ("--data_dir", "../x/alice/photos", "photos"),  # relative
    ("--dataset", "alice/photos", "photos"),  # a local folder given relatively, shaped like a Hub id
], ids=["absolute-with-spaces", "relative", "relative-dataset-folder"])
def test_published_repo_names_the_runs_paths_by_their_last_part(trained_dir, tmp_path, monkeypatch, flag, typed,
                                                                 name):
    from hf_model.config import load_run_config

    typed = typed.format(tmp=tmp_path)
    (tmp_path / "x" / "Alice Smith" / "Client Photos").mkdir(parents=True)
    (tmp_path / "x" / "alice" / "photos").mkdir(parents=True)
    (tmp_path / "work" / "alice" / "photos").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    source = tmp_path / "runs" / "alice" / "bedrooms"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*", "README.md"))
    argv = [flag, typed, "--output_dir", "../runs/alice/bedrooms"]
    label_source = (f"folder names under {typed}" if flag == "--data_dir"  # as hf_model.data words them
                    else f"the dataset folder {name}/ (column 'label')")
    cfg, args = parse_args(argv)
    RunRecord(cfg, args, shlex.join(["hf-model", "train", *argv]), None, 224, label_source, {"train": 20, "test": 4},
              LABELS).save(source)
    out = hub.build_model_repo(source, tmp_path / "repo", "someone/bedrooms")

    published = json.loads((out / "hf_model_config.json").read_text())
    public_label_source = label_source.replace(typed, name)
    assert published["command"] == f"hf-model train {flag} {shlex.quote(name)} --output_dir bedrooms"
    assert published["label_source"] == public_label_source
    assert published["config"][flag[2:]] == name and published["training_args"]["output_dir"] == "bedrooms"
    card = (out / "README.md").read_text()
    assert f"```bash\nhf-model train {flag} {shlex.quote(name)} --output_dir bedrooms\n```" in card
    assert f"Labels: {public_label_source}." in card and f"on a local folder of photos (`{name}/`" in card
    assert [word for word in ("Alice", "alice", "/tmp", "..") if word in card + json.dumps(published)] == []
    assert getattr(load_run_config(out).config, flag[2:]) == name  # the published record still loads


def test_a_card_cut_at_a_space_by_an_earlier_version_is_published_by_the_last_part(trained_dir, tmp_path):
    photos = tmp_path / "Alice Smith" / "Client Photos"
    photos.mkdir(parents=True)
    source = tmp_path / "run"
    shutil.copytree(trained_dir, source, ignore=shutil.ignore_patterns("checkpoint-*"))
    cfg, args = parse_args(["--data_dir", str(photos), "--output_dir", str(source)])
    RunRecord(cfg, args, f"hf-model train --data_dir {photos}", None, 224, f"folder names under {photos}").save(source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Rooms\n\n"  # the earlier card's lines
                                      "Labels: folder names under Alice Smith/Client Photos.\n")
    out = hub.build_model_repo(source, tmp_path / "repo", "someone/bedrooms")
    assert ModelCard.load(out / "README.md").text.strip() == "# Rooms\n\nLabels: folder names under Client Photos."


def test_space_card_refuses_local_paths_as_dataset_or_model_ids(space_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--datasets /home/alice/bedrooms: not a Hub dataset id"):
        hub.build_space_repo(space_dir, tmp_path / "repo", {}, ["alice/bedroom-style", "/home/alice/bedrooms"])
    with pytest.raises(ValueError, match=r"--bedroom_model runs/bedrooms/model: not a Hub model id"):
        hub.build_space_repo(space_dir, tmp_path / "repo2", {"BEDROOM_MODEL": "runs/bedrooms/model"})


# --------------------------------------------------------------- Parquet row groups the viewer can read


def random_photos(sizes: list[int], seed: int = 0) -> Dataset:
    """Rows whose image cells hold ``sizes[i]`` random bytes: stand-ins for photos (nothing decodes them)."""
    rng = np.random.default_rng(seed)
    images = [{"bytes": rng.bytes(int(size)), "path": f"IMG_{i:04d}.jpg"} for i, size in enumerate(sizes)]
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(len(sizes))]},
                             features=Features({"image": Image(), "label": ClassLabel(names=LABELS)}))


def row_groups(path: Path) -> list[tuple[int, int]]:
    """``(rows, uncompressed bytes)`` of each row group of a Parquet file."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    return [(metadata.row_group(i).num_rows, metadata.row_group(i).total_byte_size)
            for i in range(metadata.num_row_groups)]


def test_row_groups_of_large_photos_stay_within_datasets_byte_bound(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "MAX_ROW_GROUP_SIZE", "1MB")  # 100 MB scaled down, as photos are
    sizes = np.random.default_rng(1).integers(20_000, 250_000, 60).tolist()  # phone photos of varied sizes, / 100
    out = hub.export_dataset_repo(DatasetDict(train=random_photos(sizes)), CARDS["bedrooms"], tmp_path / "repo")

    groups = row_groups(out / "data" / "train-00000-of-00001.parquet")
    assert all(size <= 1_000_000 for _, size in groups)
    assert sum(rows for rows, _ in groups) == 60 and len(groups) > 1
    assert 100 % groups[0][0] == 0 and {rows for rows, _ in groups[:-1]} == {groups[0][0]}  # pages are whole groups
    loaded = load_dataset(str(out), split="train").cast_column("image", Image(decode=False))
    original = random_photos(sizes).cast_column("image", Image(decode=False))
    assert [cell["bytes"] for cell in loaded["image"]] == [cell["bytes"] for cell in original["image"]]


def test_a_photo_larger_than_the_bound_gets_a_row_group_of_its_own(tmp_path):
    sizes = [50_000] * 9 + [1_500_000] + [50_000] * 10
    files, _ = hub.write_parquet_shards(random_photos(sizes), tmp_path, "train", hub.MAX_SHARD_BYTES,
                                        max_row_group_bytes=1_000_000)

    groups = row_groups(files[0])
    assert [rows for rows, _ in groups] == [1] * 20
    assert [size > 1_000_000 for _, size in groups] == [i == 9 for i in range(20)]


def test_small_images_keep_row_groups_of_100_rows(tmp_path):
    files, _ = hub.write_parquet_shards(random_photos([300] * 250), tmp_path, "train", hub.MAX_SHARD_BYTES)
    assert [rows for rows, _ in row_groups(files[0])] == [100, 100, 50]


def test_row_group_rows_bounds_the_worst_group_where_an_average_overshoots(monkeypatch):
    import datasets
    from datasets.arrow_writer import get_writer_batch_size_from_data_size

    sizes = [10_000] * 100
    sizes[0] = sizes[50] = 700_000  # two large photos among small ones
    monkeypatch.setattr(datasets.config, "MAX_ROW_GROUP_SIZE", "1MB")
    average_rows = get_writer_batch_size_from_data_size(len(sizes), sum(sizes))
    assert sum(sizes[:average_rows]) > 1_000_000  # datasets' average-based size overshoots in the first group

    assert hub.row_group_rows(sizes, 1_000_000) == 25  # 700 KB + 24 x 10 KB; 50 rows would hold 1.19 MB
    assert hub.row_group_rows([10_000] * 100, 1_000_000) == 50
    assert hub.row_group_rows([2_000_000], 1_000_000) == 1
    assert hub.row_group_rows([], 1_000_000) == 100
