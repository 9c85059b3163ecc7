"""Our model folders in the tools users already have: plain transformers, pipeline(), timm, gradio_client."""

import json
import logging
from pathlib import Path

import pytest
from conftest import make_photo
from transformers import AutoConfig, AutoModelForImageClassification, pipeline

from hf_model.snippets import FINE_TUNE, snippets
from hf_model.training import main


@pytest.fixture(scope="module")
def our_folder(tmp_path_factory) -> Path:
    """A folder written by ``train.py`` on a timm_wrapper backbone (EfficientNet-Lite0), as users download it."""
    root = tmp_path_factory.mktemp("interop")
    for name, colour in [("Modern", (220, 220, 230)), ("Old", (120, 70, 30))]:
        for i in range(10):
            make_photo(root / "photos" / name / f"{i}.jpg", colour, seed=i)
    out = root / "runs" / "rooms"
    main(["--data_dir", str(root / "photos"), "--backbone", "efficientnet-lite0", "--image_size", "64",
          "--output_dir", str(out), "--cache_dir", str(root / "cache"), "--disable_tqdm", "true"])
    return out


def test_reheading_one_of_our_folders_with_the_transformers_recipe_names_the_new_classes(our_folder, tmp_path):
    names = {0: "a", 1: "b", 2: "c"}
    config = AutoConfig.from_pretrained(our_folder, num_labels=3, id2label=names,
                                        label2id={v: k for k, v in names.items()})
    model = AutoModelForImageClassification.from_pretrained(our_folder, config=config, ignore_mismatched_sizes=True)
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["label_names"] == ["a", "b", "c"]
    photo = make_photo(tmp_path / "photo.jpg", (200, 200, 200))
    answer = pipeline("image-classification", model=str(tmp_path / "out"))(str(photo))
    assert sorted(row["label"] for row in answer) == ["a", "b", "c"]


def test_our_folder_names_its_classes_in_id2label_which_pipeline_reads(our_folder, tmp_path):
    saved = json.loads((our_folder / "config.json").read_text())
    assert "label_names" not in saved and saved["id2label"] == {"0": "Modern", "1": "Old"}
    photo = make_photo(tmp_path / "photo.jpg", (200, 200, 200))
    answer = pipeline("image-classification", model=str(our_folder))(str(photo))
    assert {row["label"] for row in answer} == {"Modern", "Old"}


def test_a_folder_saved_before_gets_its_classes_as_id2label_when_published(tmp_path):
    from hf_model.backbones import load_model, resolve_backbone
    from hf_model.hub import build_model_repo

    old = tmp_path / "old"
    load_model(resolve_backbone("efficientnet-lite0"), ["Modern", "Old"], 64).save_pretrained(old)
    assert json.loads((old / "config.json").read_text())["label_names"] == ["Modern", "Old"]  # as saved before
    repo = build_model_repo(old, tmp_path / "repo", "someone/rooms")
    published = json.loads((repo / "config.json").read_text())
    assert "label_names" not in published and published["id2label"] == {"0": "Modern", "1": "Old"}


def test_a_thousand_class_folder_keeps_its_label_names_so_imagenet_names_never_replace_them():
    from hf_model.adapters import adapter_for

    names = [f"class {i}" for i in range(1000)]
    config = {"model_type": "timm_wrapper", "num_classes": 1000, "label_names": names, "pretrained_cfg": {}}
    assert adapter_for("timm_wrapper").portable_config(config) == config


def test_only_plain_autoimageprocessor_prints_the_backend_notice_and_our_loaders_do_not(our_folder, caplog):
    from transformers import AutoImageProcessor

    from hf_model.serving import Classifier

    notice = "Requested torchvision backend is not available"
    logging.Logger.warning_once.cache_clear()  # transformers prints it once per process
    with caplog.at_level(logging.WARNING):
        AutoImageProcessor.from_pretrained(our_folder)
    assert notice in caplog.text  # transformers' own notice: timm models have only a PIL processor
    caplog.clear()
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        Classifier.from_pretrained(str(our_folder), warn_uncalibrated=False, device="cpu")
    assert notice not in caplog.text


def test_publishing_one_of_our_folders_prints_no_backend_notice(our_folder, tmp_path, caplog):
    from hf_model.hub import build_model_repo

    logging.Logger.warning_once.cache_clear()  # transformers prints it once per process
    with caplog.at_level(logging.WARNING):
        repo = build_model_repo(our_folder, tmp_path / "repo", "someone/rooms")
    assert (repo / "model.safetensors").is_file()
    assert "Requested torchvision backend is not available" not in caplog.text


@pytest.fixture
def in_a_folder_with_a_photo(tmp_path, monkeypatch) -> Path:
    """The snippets' working folder: it holds ``photo.jpg``, as a user's would."""
    make_photo(tmp_path / "photo.jpg", (200, 200, 210))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("client", ["pipeline()", "transformers", "timm"])
def test_each_card_snippet_runs_as_written_and_names_our_classes(our_folder, client, in_a_folder_with_a_photo,
                                                                capsys):
    code = snippets(str(our_folder), on_hub=False, top_k=2, timm=True, onnx=False)[client]
    exec(compile(code, f"<{client} snippet>", "exec"), {})  # noqa: S102 - the card's own code, run as a user would
    printed = capsys.readouterr().out
    assert "Modern" in printed and "Old" in printed


def test_the_card_shows_every_client_and_publishing_points_them_at_the_repo(our_folder, tmp_path):
    from hf_model.hub import build_model_repo

    card = (our_folder / "README.md").read_text()
    assert (our_folder / "model.onnx").is_file()  # exported at the end of training (--export onnx, the default)
    for heading in ["With pipeline():", "With transformers:", "With timm:", "With ONNX Runtime:",
                    "### Fine-tune on your own classes"]:
        assert heading in card
    assert f'timm.create_model("local-dir:{our_folder}"' in card and "torchvision backend" in card
    published = (build_model_repo(our_folder, tmp_path / "repo", "someone/rooms") / "README.md").read_text()
    assert 'timm.create_model("hf-hub:someone/rooms"' in published
    assert 'from_pretrained("someone/rooms")' in published and str(our_folder) not in published


def test_the_fine_tune_snippet_gives_a_model_that_pipeline_names_with_the_new_classes(our_folder, tmp_path):
    code = FINE_TUNE.substitute(model=str(our_folder))
    namespace: dict = {}
    exec(compile(code, "<fine-tune snippet>", "exec"), namespace)  # noqa: S102 - the card's own code
    namespace["model"].save_pretrained(tmp_path / "mine")
    photo = make_photo(tmp_path / "photo.jpg", (200, 200, 200))
    answer = pipeline("image-classification", model=str(tmp_path / "mine"))(str(photo))
    assert sorted(row["label"] for row in answer) == ["cat", "dog", "fox"]


def test_the_card_says_the_fine_tune_recipe_keeps_the_trained_head_when_the_classes_are_as_many(our_folder):
    import torch

    from hf_model.snippets import usage_section

    code = FINE_TUNE.substitute(model=str(our_folder)).replace('["cat", "dog", "fox"]', '["cat", "dog"]')
    namespace: dict = {}
    exec(compile(code, "<fine-tune snippet>", "exec"), namespace)  # noqa: S102 - the card's own code, 2 classes
    trained = AutoModelForImageClassification.from_pretrained(our_folder)
    kept = namespace["model"].timm_model.get_classifier().weight
    assert torch.equal(kept, trained.timm_model.get_classifier().weight)  # transformers re-initializes no head
    card = usage_section(str(our_folder), on_hub=False, top_k=2, timm=True, onnx=False)
    assert "With as many classes as this model has, the sizes match and its trained head is kept" in card
    assert "get a fresh head" not in card


def test_the_onnx_snippet_runs_on_the_graph_training_exported_and_agrees_with_pipeline(our_folder,
                                                                                     in_a_folder_with_a_photo, capsys):
    code = snippets(str(our_folder), on_hub=False, top_k=2, timm=True, onnx=True)["ONNX Runtime"]
    exec(compile(code, "<ONNX snippet>", "exec"), {})  # noqa: S102 - the card's own code, run as a user would
    printed = eval(capsys.readouterr().out.strip().splitlines()[-1])  # noqa: S307 - the dict the snippet printed
    expected = {row["label"]: round(row["score"], 3)
                for row in pipeline("image-classification", model=str(our_folder))("photo.jpg")}
    assert printed == pytest.approx(expected, abs=2e-3)


def test_the_readme_shows_the_snippets_the_tests_run():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = snippets("runs/bedrooms", on_hub=False, top_k=2, timm=True, onnx=True)
    for client, code in [*shown.items(), ("fine-tune", FINE_TUNE.substitute(model="runs/bedrooms"))]:
        assert f"```python\n{code}\n```" in readme, client
