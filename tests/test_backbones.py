import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import pipeline

from hf_model.backbones import BACKBONES, load_image_processor, load_model, rename_lite_keys, resolve_backbone


def test_registry_names_the_offline_default():
    assert BACKBONES["efficientnet-lite0"].offline and BACKBONES["efficientnet-lite0"].image_size == 224
    assert BACKBONES["convnext-tiny"].hub_id == "facebook/convnext-tiny-224"


def test_rename_maps_stage_blocks():
    sd = {"_conv_stem.weight": 1, "_blocks.0._depthwise_conv.weight": 2, "_blocks.1._expand_conv.weight": 3,
          "_blocks.3._bn1.bias": 4, "_fc.bias": 5}
    out = rename_lite_keys(sd, [1, 2, 2])
    assert out == {"conv_stem.weight": 1, "blocks.0.0.conv_dw.weight": 2, "blocks.1.0.conv_pw.weight": 3,
                   "blocks.2.0.bn2.bias": 4, "classifier.bias": 5}


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone("no-such-net")


def test_hub_ids_pass_through():
    assert resolve_backbone("convnext-tiny") == "facebook/convnext-tiny-224"
    assert resolve_backbone("someone/their-model") == "someone/their-model"


def test_default_weights_are_imagenet_pretrained(tmp_path):
    """The converted Lite0 names a cat photo shipped by scikit-image as a cat."""
    from skimage import data

    source = resolve_backbone("efficientnet-lite0", cache_dir=tmp_path)
    config = json.loads((tmp_path / "backbones" / "efficientnet-lite0" / "config.json").read_text())
    assert "label_names" not in config  # it would turn fine-tuned labels into LABEL_0 (weights README)
    top = pipeline("image-classification", model=source)(Image.fromarray(data.chelsea()), top_k=3)
    assert "cat" in top[0]["label"]
    assert sum(p["score"] for p in top if "cat" in p["label"]) > 0.7


def test_new_head_keeps_label_names_and_image_size(tmp_path):
    source = resolve_backbone("efficientnet-lite0")
    model = load_model(source, ["Modern", "Old"], image_size=160)
    processor = load_image_processor(source, model.config, 160)
    assert processor(Image.new("RGB", (300, 200)), return_tensors="pt")["pixel_values"].shape[-1] == 160
    model.save_pretrained(tmp_path)
    answer = pipeline("image-classification", model=str(tmp_path))(Image.new("RGB", (300, 200)))
    assert sorted(p["label"] for p in answer) == ["Modern", "Old"]
    assert answer[0]["score"] + answer[1]["score"] == pytest.approx(1.0, abs=1e-5)


def test_hf_native_model_gets_fresh_head_and_resized_processor(tiny_convnext):
    model = load_model(tiny_convnext, ["a", "b", "c"])
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    processor = load_image_processor(tiny_convnext, model.config, image_size=40)
    pixels = processor(Image.new("RGB", (90, 60)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == torch.Size([40, 40])


def test_a_processor_that_already_feeds_the_training_size_keeps_its_resize_and_crop(tiny_convnext, tmp_path):
    from transformers import EfficientNetImageProcessor

    shutil.copytree(tiny_convnext, tmp_path / "model", ignore=shutil.ignore_patterns("preprocessor_config.json"))
    EfficientNetImageProcessor(size={"height": 40, "width": 40}, do_center_crop=True,
                               crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    processor = load_image_processor(str(tmp_path / "model"), image_size=32)
    assert processor.size == {"height": 40, "width": 40}  # still resized larger, then cropped: the same photos
    assert processor(Image.new("RGB", (90, 60)), return_tensors="pt")["pixel_values"].shape[-2:] == (32, 32)


def test_converting_a_backbone_leaves_the_seeded_random_state_alone(tmp_path):
    """A first run converts the weights, later runs do not: both must draw the same random numbers after seeding."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    resolve_backbone("efficientnet-lite0", cache_dir=tmp_path / "cold")  # converts: builds a timm model first
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("name", "reason"), [
    ("nosuch/model", "nosuch/model is neither a model folder nor a Hub id (and the Hub is offline: HF_HUB_OFFLINE=1)"),
    ("/no/such/folder", "/no/such/folder: no such model folder (and, as a path, it cannot be a Hub id)"),
    ("efficientnet-lite9",
     "efficientnet-lite9 is neither a model folder, a Hub id nor a registry backbone "
     "(efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, efficientnet-b0, convnext-tiny)"),
])
def test_a_backbone_that_does_not_load_is_a_user_error_saying_why(name, reason):
    from hf_model.backbones import NotAModelError, default_image_size
    from hf_model.exit_status import UserInputError

    with pytest.raises(NotAModelError) as err:
        default_image_size(name)
    assert str(err.value) == reason
    assert isinstance(err.value, UserInputError)


def test_an_unfinished_run_folder_is_named_as_such_not_as_a_non_model(tmp_path):
    from hf_model.backbones import NotAModelError, load_config

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "hf_model_config.json").write_text('{"finished": false}')
    (tmp_path / "photos").mkdir()
    with pytest.raises(NotAModelError, match=r"run holds a training run that did not finish \(interrupted, or still "
                                             r"running\): rerun its training command to finish it"):
        load_config(str(tmp_path / "run"))
    with pytest.raises(NotAModelError, match=r"photos is a folder, but not a model folder: it holds no config.json"):
        load_config(str(tmp_path / "photos"))


def test_processes_converting_the_same_backbone_at_once_convert_it_once_and_all_load_it(tmp_path, monkeypatch):
    import threading
    import time

    from transformers import AutoConfig

    from hf_model import backbones

    convert, conversions, errors, sources = backbones._convert_lite, [], [], []

    def slow_convert(backbone, parent):
        conversions.append(1)
        time.sleep(0.5)  # long enough for every other rank to arrive while this one converts
        return convert(backbone, parent)

    def rank():  # flock is per open file: threads contend for it as torchrun's processes do
        try:
            source = resolve_backbone("efficientnet-lite0", cache_dir=tmp_path)
            sources.append(source)
            AutoConfig.from_pretrained(source)
        except Exception as err:  # noqa: BLE001 - the test reports whatever a rank raised
            errors.append(err)

    monkeypatch.setattr(backbones, "_convert_lite", slow_convert)
    ranks = [threading.Thread(target=rank) for _ in range(4)]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join()
    assert errors == [] and len(conversions) == 1
    assert set(sources) == {str(tmp_path / "backbones" / "efficientnet-lite0")}
    assert [p.name for p in (tmp_path / "backbones").iterdir() if p.is_dir()] == ["efficientnet-lite0"]  # no temp


def test_the_new_head_a_fine_tune_asks_for_is_one_line_not_transformers_mismatch_table(tiny_convnext, caplog):
    with caplog.at_level("INFO"):
        load_model(tiny_convnext, ["a", "b"])
    assert "LOAD REPORT" not in caplog.text  # transformers logged a MISMATCH table for the 10-class head
    assert f"{tiny_convnext}: a new head for 2 classes (its head had 10)" in caplog.text


def test_weights_that_do_not_fit_outside_the_head_still_get_transformers_report(tiny_convnext, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "odd"
    shutil.copytree(tiny_convnext, folder)
    weights = load_file(folder / "model.safetensors")
    weights["convnext.extra.weight"] = torch.zeros(3)  # a key the architecture does not have
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="transformers.modeling_utils"):
        load_model(str(folder), ["a", "b"])
    assert "LOAD REPORT" in caplog.text and "convnext.extra.weight" in caplog.text
