"""A trained model folder as the starting point (``--backbone runs/bedrooms``): fine-tuning it on other
classes reads its image size and names the new classes; on the same classes it keeps its trained head.

Every architecture in ``hf_model.adapters.ADAPTERS`` is tried, as a tiny model folder of
tests/test_adapters.py (classes Modern, Old, Rustic) saved the way training saves it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_photo
from test_adapters import TINY_MODELS, photo, save
from transformers import pipeline

from hf_model.adapters import ADAPTERS, adapter_for
from hf_model.backbones import default_image_size, load_model
from hf_model.config import TrainConfig, load_run_config
from hf_model.training import main, setup_model

OLD = ["Modern", "Old", "Rustic"]  # the classes of every tiny model of TINY_MODELS
SIZE = 32  # the input size every tiny folder is saved with (not any backbone's default)
QUICK = ["--stages", "1", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
         "--split_fractions", "0.5", "0.25", "0.25", "--dataloader_pin_memory", "false"]


def model_folder(model_type: str, folder: Path) -> tuple[str, torch.nn.Module]:
    """A tiny ``model_type`` model saved in ``folder`` with the classes ``OLD``, fed ``SIZE`` x ``SIZE`` photos.

    Returns the folder and the model as saved.
    """
    torch.manual_seed(0)
    model, processor = TINY_MODELS[model_type]()
    adapter_for(model).set_image_size(model, SIZE)  # timm: in config.json; the HF-native processors are 32 already
    return save(model, processor, folder), model


def class_folder(root: Path, names: list[str], per_class: int = 8) -> Path:
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]
    for name, colour in zip(names, colours, strict=False):
        for i in range(per_class):
            make_photo(root / name / f"{i}.jpg", colour, seed=i)
    return root


def saved_label_names(folder: Path) -> list[str]:
    """The class names ``config.json`` gives, in output order: ``label_names`` for timm, ``id2label`` otherwise."""
    config = json.loads((folder / "config.json").read_text())
    if config["model_type"] == "timm_wrapper":
        assert config["num_classes"] == len(config["label_names"])
        return config["label_names"]
    assert "num_labels" not in config or config["num_labels"] == len(config["id2label"])
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


def served_size(folder: Path) -> int:
    """The side of the photos ``pipeline()`` feeds the saved model."""
    classify = pipeline("image-classification", model=str(folder), device=-1)
    return classify.image_processor(photo(), return_tensors="pt")["pixel_values"].shape[-1]


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_a_model_folder_set_up_for_other_classes_is_fed_its_image_size_and_names_them(model_type, tmp_path):
    backbone, _ = model_folder(model_type, tmp_path / "backbone")
    setup = setup_model(TrainConfig(data_dir="unused", backbone=backbone), ["bathroom", "kitchen"])
    assert setup.train_transform(photo()).shape == setup.eval_transform(photo()).shape == (3, SIZE, SIZE)
    out = Path(save(setup.model, setup.processor, tmp_path / "run"))  # what training saves
    assert saved_label_names(out) == ["bathroom", "kitchen"]
    assert served_size(out) == SIZE
    answer = pipeline("image-classification", model=str(out), device=-1)(photo(), top_k=5)
    assert sorted(a["label"] for a in answer) == ["bathroom", "kitchen"]


def test_a_two_class_timm_run_fine_tuned_on_three_classes_names_them_at_its_size(tmp_path):
    """The report: ``--backbone runs/bedrooms`` (timm, Modern/Old) on 3 classes crashed without --image_size
    (``TimmWrapperImageProcessor`` has no ``size``)."""
    pretrained, _ = model_folder("timm_wrapper", tmp_path / "pretrained")
    first = tmp_path / "bedrooms"
    load_model(pretrained, ["Modern", "Old"], 40).save_pretrained(first)  # the model a 40-pixel run saves
    second = tmp_path / "rooms"
    main(["--data_dir", str(class_folder(tmp_path / "three", ["bathroom", "bedroom", "kitchen"])),
          "--backbone", str(first), "--output_dir", str(second), "--cache_dir", str(tmp_path / "cache"), *QUICK])
    config = json.loads((second / "config.json").read_text())
    assert config["num_classes"] == 3 and config["id2label"] == {"0": "bathroom", "1": "bedroom", "2": "kitchen"}
    assert config["pretrained_cfg"]["input_size"] == [3, 40, 40]  # the first run's size, read from its folder
    assert load_run_config(second).image_size == 40
    answer = pipeline("image-classification", model=str(second), device=-1)(photo(), top_k=5)
    assert sorted(a["label"] for a in answer) == ["bathroom", "bedroom", "kitchen"]


def hub_cached(folder: str, repo_id: str) -> None:
    """Put a model folder in the Hub cache as ``repo_id``'s main revision, as a download leaves it (read offline)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("model_type", ["timm_wrapper", "convnext"])
def test_a_hub_model_is_fed_the_image_size_its_repo_says(model_type, tmp_path):
    backbone, _ = model_folder(model_type, tmp_path / "backbone")
    repo_id = f"someone/tiny-{model_type}-{tmp_path.name}"
    hub_cached(backbone, repo_id)
    assert default_image_size(repo_id) == SIZE  # what the run record keeps
    setup = setup_model(TrainConfig(data_dir="unused", backbone=repo_id), ["bathroom", "kitchen"])
    assert setup.train_transform(photo()).shape == setup.eval_transform(photo()).shape == (3, SIZE, SIZE)
    assert [setup.model.config.id2label[i] for i in range(2)] == ["bathroom", "kitchen"]


def head_of(model: torch.nn.Module) -> torch.Tensor:
    head = adapter_for(model).classifier(model)
    return torch.cat([head.weight, head.bias[:, None]], dim=1).detach()


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_the_same_classes_keep_their_trained_head_in_the_new_order(model_type, tmp_path):
    folder, saved = model_folder(model_type, tmp_path / "backbone")
    torch.testing.assert_close(head_of(load_model(folder, OLD)), head_of(saved))
    reordered = ["Rustic", "Modern", "Old"]
    model = load_model(folder, reordered)
    torch.testing.assert_close(head_of(model), head_of(saved)[[2, 0, 1]])  # each class keeps its own row
    assert [model.config.id2label[i] for i in range(3)] == reordered


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_as_many_classes_under_other_names_get_a_fresh_head(model_type, tmp_path):
    folder, saved = model_folder(model_type, tmp_path / "backbone")
    new = ["bathroom", "bedroom", "kitchen"]
    model = load_model(folder, new)
    fresh = head_of(model)
    assert not any(torch.allclose(row, old) for row in fresh for old in head_of(saved)), "an old class's row was kept"
    model.save_pretrained(tmp_path / "run")
    assert saved_label_names(tmp_path / "run") == new


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_image_size_of_a_model_folder_is_its_saved_preprocessing_size(model_type, tmp_path):
    folder, _ = model_folder(model_type, tmp_path / "backbone")
    assert default_image_size(folder) == SIZE


def test_image_size_of_a_run_folder_is_the_size_its_record_says_it_trained_at(tmp_path):
    folder, _ = model_folder("convnext", tmp_path / "run")
    (tmp_path / "run" / "hf_model_config.json").write_text(json.dumps({"config": {}, "image_size": 48}))
    assert default_image_size(folder) == 48


def test_retraining_a_folder_in_place_does_not_reuse_its_cached_features(tmp_path):
    folder, _ = model_folder("convnext", tmp_path / "backbone")
    cfg = TrainConfig(data_dir="unused", backbone=folder)
    before = setup_model(cfg, ["a", "b"]).feature_key
    torch.manual_seed(1)
    other, _ = TINY_MODELS["convnext"]()
    other.save_pretrained(folder)  # the same run folder, trained again: other weights
    assert setup_model(cfg, ["a", "b"]).feature_key != before


def tiny_vit_folder(folder: Path) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, num_labels=2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_image_size_a_fixed_size_vit_cannot_take_is_refused_at_setup(tmp_path):
    folder = tiny_vit_folder(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"--image_size 48.*leave --image_size out"):
        setup_model(TrainConfig(data_dir="unused", backbone=folder, image_size=48), ["a", "b"])
    setup = setup_model(TrainConfig(data_dir="unused", backbone=folder), ["a", "b"])  # its own size works
    assert setup.eval_transform(photo()).shape == (3, 32, 32)
