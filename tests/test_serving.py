"""Serving: odd uploads, scores, verdicts, heat maps and the out-of-domain calibration."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from photo_kinds import (
    PHOTO_KINDS,
    READABLE_KINDS,
    UNREADABLE_KINDS,
    UPRIGHT_BOTTOM,
    UPRIGHT_TOP,
    decompression_bomb,
    eight_bit_copy,
    exif_rotated,
    sixteen_bit_png,
)
from PIL import Image
from skimage import data as skimage_data

from hf_model.adapters import ADAPTERS, adapter_for
from hf_model.backbones import load_model, resolve_backbone
from hf_model.calibration import calibrate, choose_threshold
from hf_model.devices import DeviceError
from hf_model.runtime import OnnxModel
from hf_model.serving import (
    CALIBRATION_FILE,
    HEATMAP_SIDE,
    OUT_OF_DOMAIN,
    SURE,
    UNSURE,
    Calibration,
    Classifier,
    UnreadablePhotoError,
    domain_scores,
    grad_cam,
    load_gate,
    model_input_image,
    open_photo,
    overlay_heatmap,
    percent,
    shared_gate_head,
    shown_probability,
    shown_scores,
)

LABELS = ["Modern", "Old"]


# ---------------------------------------------------------------- models made in the test (no training needed)


@pytest.fixture(scope="module")
def lite_dir(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (timm_wrapper) with a fresh 2-class head, saved like train.py saves it."""
    out = tmp_path_factory.mktemp("lite")
    load_model(resolve_backbone("efficientnet-lite0"), LABELS, image_size=96).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def efficientnet_dir(tmp_path_factory) -> Path:
    """A tiny random HF-native EfficientNet with its image processor."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

    out = tmp_path_factory.mktemp("efficientnet")
    config = EfficientNetConfig(
        image_size=64,
        width_coefficient=0.1,
        depth_coefficient=0.1,
        hidden_dim=128,
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    torch.manual_seed(0)
    model = EfficientNetForImageClassification(config)
    with torch.no_grad():  # the default init (std 0.02 everywhere) fades to an all-zero feature map
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    model.save_pretrained(out)
    EfficientNetImageProcessor(
        size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=False
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory) -> Path:
    """A tiny random HF-native ResNet with its image processor."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    out = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                          id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    ResNetForImageClassification(config).save_pretrained(out)
    ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=1.0).save_pretrained(out)  # what ResNet ships
    return out


# model_type -> the fixture of a saved model of it: serving is tested on every architecture in ADAPTERS
SERVED_MODELS = {"timm_wrapper": "lite_dir", "convnext": "tiny_convnext", "efficientnet": "efficientnet_dir",
                 "resnet": "resnet_dir"}


@pytest.fixture(params=sorted(ADAPTERS))
def model_dir(request) -> Path:
    """A saved model of each architecture hf_model.adapters knows."""
    return Path(request.getfixturevalue(SERVED_MODELS[request.param]))


def test_every_registered_architecture_is_served_in_these_tests():
    assert set(SERVED_MODELS) == set(ADAPTERS), "add a saved model of each new ADAPTERS entry to SERVED_MODELS"


def photo(seed: int = 0, size=(120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------- odd uploads


def saved(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_transparent_png_becomes_rgb_on_white(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    image = open_photo(saved(rgba, tmp_path / "a.png"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (0, 0, 255) and image.getpixel((35, 5)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16"])
def test_other_colour_modes_become_rgb(tmp_path, mode):
    source = photo().convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 300)
    path = saved(source, tmp_path / ("a.jpg" if mode in ("L", "CMYK") else "a.png"))
    image = open_photo(path)
    assert image.mode == "RGB" and image.size == source.size


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    red = Image.new("RGB", (40, 30), (220, 30, 30))
    image = open_photo(saved(red.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95))
    r, g, b = image.getpixel((20, 15))
    assert r > 180 and g < 80 and b < 80


def test_exif_rotated_photo_is_turned_upright(tmp_path):
    wide = photo(size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image = open_photo(saved(wide, tmp_path / "rotated.jpg", exif=exif))
    assert image.size == (40, 60)


def test_a_wide_panorama_is_still_classified(tmp_path):
    image = open_photo(saved(photo(size=(1900, 100)), tmp_path / "panorama.png"))  # 19:1, just under the limit
    assert image.size == (1900, 100)


def test_big_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    big = saved(photo(size=(4800, 3600)), tmp_path / "big.jpg", quality=50)
    image = open_photo(big)
    assert 1024 <= min(image.size) < 3600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not a photo", "not an image"),
        (b"", "not an image"),
        ("truncated-jpeg", "damaged"),
        ("jpeg-header-only", "damaged"),
        ("huge-png", "too big"),
        ("tiny-png", "too small"),
        ("strip-png", r"too elongated to classify \(16 x 2000000 pixels; the long side may be at most 20 times"),
    ],
)
def test_unreadable_uploads_get_a_clear_message(tmp_path, content, message):
    path = tmp_path / "upload"
    if content == "truncated-jpeg":
        buffer = io.BytesIO()
        photo(size=(300, 200)).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue()[:2000])
    elif content == "jpeg-header-only":  # cut inside the header: Image.open itself fails ("Truncated File Read")
        buffer = io.BytesIO()
        photo(size=(300, 200)).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue()[:100])
    elif content == "huge-png":
        Image.new("1", (10_000, 9_000)).save(path, format="PNG")  # 90 megapixels, a few KB on disk
    elif content == "tiny-png":
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    elif content == "strip-png":  # a few KB; resized to the model's size it would take some 20 GB
        Image.new("1", (16, 2_000_000)).save(path, format="PNG")
    else:
        path.write_bytes(content)
    with pytest.raises(UnreadablePhotoError, match=message):
        open_photo(path)


# ---------------------------------------------------------------- predictions


def test_scores_match_the_transformers_pipeline(model_dir):
    from transformers import pipeline

    classifier = Classifier.from_pretrained(str(model_dir))
    image = photo(3)
    prediction = classifier.predict(image, top_k=2)
    expected = pipeline("image-classification", model=str(model_dir), device=-1)(image, top_k=2)
    assert list(prediction.scores) == [e["label"] for e in expected]
    assert list(prediction.scores.values()) == pytest.approx([e["score"] for e in expected], abs=1e-4)


def test_top_k_is_capped_by_the_number_of_classes(lite_dir):
    prediction = Classifier.from_pretrained(str(lite_dir)).predict(photo(), top_k=5)
    assert set(prediction.scores) == set(LABELS)
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(prediction.scores.values()) == sorted(prediction.scores.values(), reverse=True)


def test_split_forward_gives_the_model_logits_and_a_feature_map(model_dir):
    classifier = Classifier.from_pretrained(str(model_dir))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, feature_map = classifier.logits_and_feature_map(pixels)
        expected = classifier.model(pixels).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert feature_map.ndim == 4 and feature_map.shape[0] == 2


# ConvNeXt is left out: its LayerNorm between pooling and head makes Grad-CAM differ from CAM
@pytest.mark.parametrize("fixture", ["lite_dir", "efficientnet_dir"])
def test_grad_cam_equals_the_class_activation_map_of_a_pooled_linear_head(request, fixture):
    # With global average pooling then one linear layer, Grad-CAM is exactly CAM: sum_k W[c, k] A_k.
    classifier = Classifier.from_pretrained(str(request.getfixturevalue(fixture)))
    head = adapter_for(classifier.model).classifier(classifier.model)
    pixels = torch.randn(1, 3, 128, 128, requires_grad=True)
    logits, feature_map = classifier.logits_and_feature_map(pixels)
    cams = torch.einsum("ck,khw->chw", head.weight, feature_map[0].detach())
    c = int(cams.amax(dim=(1, 2)).argmax())  # a class with some positive evidence, so the map is not all zero
    expected = torch.relu(cams[c]) / cams[c].max()
    np.testing.assert_allclose(grad_cam(logits[0, c], feature_map), expected.numpy(), atol=1e-5)
    assert expected.max() == 1.0


def test_heatmap_colours_only_where_the_model_looked():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 0] = 1.0  # the top-left corner is hot
    overlay = np.asarray(overlay_heatmap(grey, cam, side=64)).astype(int)
    assert overlay.shape == (64, 64, 3)
    r, g, b = overlay[2, 2]
    assert r > 180 and b < 80  # red where hot
    assert (overlay[40:, 40:] == 128).all()  # the photo itself where cold


def test_predict_with_heatmap_returns_an_overlay_and_the_same_scores(model_dir):
    classifier = Classifier.from_pretrained(str(model_dir))
    plain = classifier.predict(photo(1), top_k=3)
    explained = classifier.predict(photo(1), top_k=3, heatmap=True)
    assert explained.heatmap.size == (HEATMAP_SIDE, HEATMAP_SIDE)
    assert plain.heatmap is None
    assert list(explained.scores.values()) == pytest.approx(list(plain.scores.values()), abs=1e-5)


# ---------------------------------------------------------------- verdicts: sure, unsure, out of domain


@pytest.fixture(scope="module")
def coffee_calibration() -> Calibration:
    """A calibration whose domain is 'photos like skimage's coffee cup'."""
    gate = load_gate()
    profile = gate.imagenet_probabilities([Image.fromarray(skimage_data.coffee())])[0]
    return Calibration("efficientnet-lite0", profile.tolist(), domain_threshold=0.5 * float(profile @ profile))


def classifier_with(lite_dir: Path, calibration: Calibration) -> Classifier:
    from transformers import AutoModelForImageClassification

    plain = Classifier.from_pretrained(str(lite_dir))
    model = AutoModelForImageClassification.from_pretrained(lite_dir)
    return Classifier(model, plain.processor, calibration, subject="a coffee cup")


def test_photo_unlike_the_training_photos_gets_no_answer(lite_dir, coffee_calibration):
    classifier = classifier_with(lite_dir, coffee_calibration)
    cat = classifier.predict(Image.fromarray(skimage_data.chelsea()), heatmap=True)
    cup = classifier.predict(Image.fromarray(skimage_data.coffee()).rotate(5), heatmap=True)
    assert cat.verdict == OUT_OF_DOMAIN
    assert cat.message == "This photo does not look like a coffee cup, so the model gives no answer."
    assert cat.heatmap is None
    assert cup.verdict != OUT_OF_DOMAIN and cup.heatmap is not None
    assert cup.domain_score > coffee_calibration.domain_threshold > cat.domain_score


@pytest.mark.parametrize(("unsure_below", "verdict", "words"), [(0.99, UNSURE, "unsure"), (0.0, SURE, "sure this is")])
def test_low_top_score_is_called_unsure(lite_dir, coffee_calibration, unsure_below, verdict, words):
    calibration = Calibration(**{**coffee_calibration.__dict__, "domain_threshold": 0.0, "unsure_below": unsure_below})
    prediction = classifier_with(lite_dir, calibration).predict(photo())
    assert prediction.verdict == verdict
    assert words in prediction.message and next(iter(prediction.scores)) in prediction.message


def test_percentages_never_claim_certainty():
    assert [percent(p) for p in (1.0, 0.9996, 0.996, 0.934, 0.004, 0.0004, 0.0)] == [
        "99%", "99%", "99%", "93%", "1%", "1%", "1%"]


def test_percentages_round_half_up_like_gradios_label():
    # gr.Label prints Math.round(confidence * 100): halves go up, where Python's format would go to even
    assert [percent(p) for p in (0.125, 0.135, 0.5, 0.985)] == ["13%", "14%", "50%", "99%"]
    assert f"{0.125:.0%}" == "12%"


def test_people_are_shown_probabilities_between_one_and_ninety_nine_percent_in_the_same_order():
    scores = {"Old": 0.996, "Modern": 0.004}
    assert shown_scores(scores) == {"Old": 0.99, "Modern": 0.01}
    assert list(shown_scores({"c": 0.5, "a": 0.3, "b": 0.2})) == ["c", "a", "b"]
    assert [shown_probability(p) for p in (1.0, 0.99, 0.42, 0.01, 0.0)] == [0.99, 0.99, 0.42, 0.01, 0.01]


def test_calibration_travels_with_the_model_folder(tmp_path, lite_dir, coffee_calibration):
    model_dir = tmp_path / "model"
    Classifier.from_pretrained(str(lite_dir)).model.save_pretrained(model_dir)
    assert Classifier.from_pretrained(str(model_dir)).calibration is None
    coffee_calibration.save(model_dir)
    assert (model_dir / CALIBRATION_FILE).is_file()
    loaded = Classifier.from_pretrained(str(model_dir)).calibration
    assert loaded.domain_threshold == coffee_calibration.domain_threshold
    assert loaded.profile == pytest.approx(coffee_calibration.profile)


def test_a_calibration_json_written_before_the_intervals_still_loads(tmp_path, lite_dir):
    model_dir = tmp_path / "model"
    Classifier.from_pretrained(str(lite_dir)).model.save_pretrained(model_dir)
    old_report = {"held_out": {"in_domain": {"photos": 834, "rejected": 0.054},
                               "out_of_domain": {"photos": 75, "rejected": 0.8667}},
                  "unsure": {"unsure_below": 0.6, "unsure_share": 0.31, "accuracy_when_sure": 0.84,
                             "accuracy_when_unsure": 0.5}}
    old = {"gate_backbone": "efficientnet-lite0", "profile": [0.001] * 1000, "domain_threshold": 0.0,
           "unsure_below": 0.6, "report": old_report}
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(old))
    classifier = Classifier.from_pretrained(str(model_dir))
    assert classifier.calibration.report == old_report
    assert classifier.predict(photo()).verdict in (SURE, UNSURE)


# ---------------------------------------------------------------- calibration


def test_threshold_separates_the_two_sets_when_it_can():
    threshold = choose_threshold(np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3]), 0.05)
    assert 0.3 < threshold <= 0.6


def test_threshold_rejects_no_more_in_domain_photos_than_allowed():
    in_domain = np.linspace(0.0, 1.0, 100)
    out_of_domain = np.linspace(0.0, 0.5, 50)  # every step up turns away more of these than of in_domain
    threshold = choose_threshold(in_domain, out_of_domain, max_in_domain_rejection=0.1)
    assert np.mean(in_domain < threshold) <= 0.1
    assert threshold == in_domain[10]  # as far up as the cap allows


def test_calibrate_writes_a_threshold_that_turns_away_other_photos(tmp_path, lite_dir):
    # In domain: crops of the coffee photo (two "classes"); out of domain: crops of the cat and the rocket.
    rng = np.random.default_rng(0)

    def crops(array, folder: Path, n: int):
        folder.mkdir(parents=True)
        height, width = array.shape[:2]
        for i in range(n):
            top, left = rng.integers(0, height // 4), rng.integers(0, width // 4)
            Image.fromarray(array[top : top + 3 * height // 4, left : left + 3 * width // 4]).save(folder / f"{i}.jpg")

    crops(skimage_data.coffee(), tmp_path / "cups" / "left", 10)
    crops(skimage_data.coffee()[:, ::-1], tmp_path / "cups" / "right", 10)
    crops(skimage_data.chelsea(), tmp_path / "other" / "cats", 6)
    crops(skimage_data.rocket(), tmp_path / "other" / "rockets", 6)
    model_dir = tmp_path / "model"
    Classifier.from_pretrained(str(lite_dir)).model.save_pretrained(model_dir)
    record = {"config": {"data_dir": str(tmp_path / "cups"), "split_fractions": [0.5, 0.25, 0.25]}}
    (model_dir / "hf_model_config.json").write_text(json.dumps(record))

    report = calibrate(model_dir, [tmp_path / "other"], allow_small_samples=True)  # 5 validation photos, 12 others

    calibration = Calibration.load(model_dir)
    assert report["rejected"]["other_held_out"]["rejected"] == 1.0
    assert report["rejected"]["validation"]["rejected"] <= 0.05
    assert report["held_out"]["out_of_domain"] == {"photos": 6, "rejected": 1.0, "rejected_ci95": [0.6097, 1.0]}
    cat_score = domain_scores(
        load_gate().imagenet_probabilities([Image.fromarray(skimage_data.chelsea())]), calibration.profile
    )[0]
    assert cat_score < calibration.domain_threshold


@pytest.mark.real_data
def test_calibrated_gate_turns_away_other_rooms_but_not_bedrooms(tmp_path, lite_dir):
    model_dir = tmp_path / "model"
    Classifier.from_pretrained(str(lite_dir)).model.save_pretrained(model_dir)
    record = {"config": {"data_dir": str(SHARED_DATA / "bedrooms"), "split_fractions": [0.76, 0.14, 0.10]}}
    (model_dir / "hf_model_config.json").write_text(json.dumps(record))

    report = calibrate(model_dir, [SHARED_DATA / "rooms_other"], limit=40)

    rejected = {name: r["rejected"] for name, r in report["rejected"].items()}
    assert rejected["other_held_out"] >= 0.6, rejected
    assert rejected["test"] <= 0.15 and rejected["unlabeled"] <= 0.15, rejected


# ---------------------------------------------------------------- every kind of upload (issue 12, part 1)


@pytest.mark.parametrize("kind", sorted(READABLE_KINDS))
def test_each_readable_kind_of_upload_becomes_upright_rgb_with_its_content(tmp_path, kind):
    path = PHOTO_KINDS[kind](tmp_path)
    image = open_photo(path)
    assert image.mode == "RGB" and image.size == ((32, 48) if kind == "exif_rotated" else (48, 48))
    assert np.asarray(image).std() > 5  # real content: not a white (or black) square


@pytest.mark.parametrize("kind", sorted(UNREADABLE_KINDS))
def test_each_unreadable_kind_of_upload_gets_a_sentence_saying_why(tmp_path, kind):
    expected = {"decompression_bomb": "too big"}.get(kind, "not an image|damaged")
    with pytest.raises(UnreadablePhotoError, match=expected) as refused:
        open_photo(PHOTO_KINDS[kind](tmp_path))
    message = str(refused.value)
    assert message.startswith("This ") and message.endswith(".")


def test_a_decompression_bomb_is_refused_and_pillows_limit_stays_on(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(UnreadablePhotoError, match="too big"):
        open_photo(decompression_bomb(tmp_path))
    assert Image.MAX_IMAGE_PIXELS == limit and limit is not None


def test_an_exif_rotated_upload_comes_out_upright(tmp_path):
    image = open_photo(exif_rotated(tmp_path))
    top, bottom = image.getpixel((16, 4)), image.getpixel((16, 44))
    assert max(abs(a - b) for a, b in zip(top, UPRIGHT_TOP)) <= 30
    assert max(abs(a - b) for a, b in zip(bottom, UPRIGHT_BOTTOM)) <= 30


def test_a_sixteen_bit_upload_looks_like_its_eight_bit_copy(tmp_path):
    wide = np.asarray(open_photo(sixteen_bit_png(tmp_path)), dtype=int)
    assert np.abs(wide - np.asarray(open_photo(eight_bit_copy(tmp_path)), dtype=int)).max() <= 1


def test_calibration_is_saved_atomically(tmp_path, monkeypatch):
    Calibration("gate", [0.5, 0.5], 0.1).save(tmp_path)
    before = (tmp_path / CALIBRATION_FILE).read_text()

    def write_half_then_die(text: str, write) -> None:
        write(text[: len(text) // 2])
        raise KeyboardInterrupt  # the process is stopped mid-write

    # whichever way the file is written, the writer dies halfway through
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: write_half_then_die(text, self.open("w").write))
    monkeypatch.setattr(json, "dump", lambda data, f, **k: write_half_then_die(json.dumps(data, **k), f.write))
    with pytest.raises(KeyboardInterrupt):
        Calibration("gate", [0.2, 0.8], 0.3).save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / CALIBRATION_FILE).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]


# ---------------------------------------------------------------- devices and dtypes (issue 17, part 8)



def test_a_classifier_on_the_cpu_gives_the_scores_of_the_transformers_pipeline(tiny_convnext):
    from transformers import pipeline

    classifier = Classifier.from_pretrained(tiny_convnext, device="cpu")
    prediction = classifier.predict(photo(3), top_k=3)
    expected = pipeline("image-classification", model=tiny_convnext, device=-1)(photo(3), top_k=3)
    assert classifier.device == torch.device("cpu") and classifier.model.device == torch.device("cpu")
    assert list(prediction.scores) == [e["label"] for e in expected]
    assert list(prediction.scores.values()) == pytest.approx([e["score"] for e in expected], abs=1e-4)


def test_a_bfloat16_model_still_gives_scores_and_a_heat_map(model_dir):
    # on a GPU a model is often served in bf16: photos must be cast to it, and bf16 results read back as float32
    from transformers import AutoModelForImageClassification

    plain = Classifier.from_pretrained(str(model_dir), device="cpu")
    bf16 = AutoModelForImageClassification.from_pretrained(model_dir).to(torch.bfloat16)
    classifier = Classifier(bf16, plain.processor, device="cpu")
    prediction = classifier.predict(photo(1), top_k=3, heatmap=True)
    probabilities = classifier.probabilities([photo(1)])
    assert prediction.heatmap.size == (HEATMAP_SIDE, HEATMAP_SIDE)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, plain.probabilities([photo(1)]), atol=0.01)  # bf16 keeps ~3 digits
    labels = [classifier.labels[i] for i in np.argsort(-probabilities[0], kind="stable")[:3]]
    assert set(prediction.scores) == set(labels)
    assert list(prediction.scores.values()) == pytest.approx(sorted(probabilities[0], reverse=True)[:3], abs=0.01)


def test_the_heat_map_photo_of_bfloat16_pixels_that_carry_gradients_is_that_of_their_float32_values(tiny_convnext):
    processor = Classifier.from_pretrained(tiny_convnext, device="cpu").processor
    pixels = torch.randn(3, 28, 28).to(torch.bfloat16)
    shown = model_input_image(processor, pixels.clone().requires_grad_(True))  # as Grad-CAM differentiates them
    assert shown.size == (28, 28)
    assert np.array_equal(np.asarray(shown), np.asarray(model_input_image(processor, pixels.float())))


def test_the_gate_runs_on_the_classifiers_device_and_is_shared_per_backbone_and_device(tiny_convnext, no_accelerator):
    # the tiny model stands in for the ImageNet gate: any image classifier folder can be one
    plain = Classifier.from_pretrained(tiny_convnext, device="cpu")
    calibration = Calibration(tiny_convnext, [0.1] * 10, domain_threshold=0.0)
    classifier = Classifier(plain.model, plain.processor, calibration, device="cpu")
    assert classifier.gate is load_gate(tiny_convnext, "cpu") is load_gate(tiny_convnext)  # auto is the CPU here
    assert classifier.gate.model.device == classifier.device == torch.device("cpu")
    assert classifier.predict(photo()).domain_score == pytest.approx(0.1, abs=1e-5)  # p @ uniform profile


def test_a_device_this_machine_lacks_is_refused_before_the_model_loads(tmp_path, no_accelerator):
    with pytest.raises(DeviceError, match=r"^--device cuda: this machine has no such device \(present here: cpu\)"):
        Classifier.from_pretrained(str(tmp_path / "not_even_a_model"), device="cuda")
    with pytest.raises(DeviceError, match="^--device cuda:1: "):
        load_gate("efficientnet-lite0", "cuda:1")


# ---------------------------------------------------------------- the exported graph (issue 15, part 2)


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def exported_dir(request, tmp_path_factory) -> Path:
    """A copy of a saved model of each architecture, with its graph exported (hf-model export)."""
    from hf_model.export import export_model

    folder = tmp_path_factory.mktemp(f"exported_{request.param}") / "model"
    shutil.copytree(request.getfixturevalue(SERVED_MODELS[request.param]), folder)
    export_model(folder)
    return folder


def pytorch_only(classifier: Classifier) -> Classifier:
    """The same model and processor, served by PyTorch alone (no graph)."""
    return Classifier(classifier.model, classifier.processor, device="cpu")


def test_a_classifier_with_an_exported_graph_gives_the_scores_it_gives_without(exported_dir):
    classifier = Classifier.from_pretrained(str(exported_dir), device="cpu")
    assert isinstance(classifier.graph, OnnxModel)
    photos = [photo(seed) for seed in range(4)]
    np.testing.assert_allclose(classifier.probabilities(photos), pytorch_only(classifier).probabilities(photos),
                               atol=1e-4)
    fast, slow = classifier.predict(photos[1], top_k=3), pytorch_only(classifier).predict(photos[1], top_k=3)
    assert list(fast.scores) == list(slow.scores) or max(slow.scores.values()) - min(slow.scores.values()) < 1e-4
    assert list(fast.scores.values()) == pytest.approx(list(slow.scores.values()), abs=1e-4)


def test_with_a_graph_the_heat_map_is_pytorchs_grad_cam_of_the_same_photo(exported_dir):
    classifier = Classifier.from_pretrained(str(exported_dir), device="cpu")
    explained = classifier.predict(photo(2), top_k=3, heatmap=True)
    expected = pytorch_only(classifier).predict(photo(2), top_k=3, heatmap=True)
    assert explained.scores == classifier.predict(photo(2), top_k=3).scores  # the heat map changes no score
    diff = np.abs(np.asarray(explained.heatmap, dtype=int) - np.asarray(expected.heatmap, dtype=int))
    assert explained.heatmap.size == (HEATMAP_SIDE, HEATMAP_SIDE) and diff.max() <= 1


def test_with_a_graph_pytorch_runs_only_for_the_heat_map(exported_dir):
    classifier = Classifier.from_pretrained(str(exported_dir), device="cpu")
    runs = []
    stem = next(m for m in classifier.model.modules() if isinstance(m, torch.nn.Conv2d))  # every path goes through it
    stem.register_forward_pre_hook(lambda module, inputs: runs.append(inputs[0].shape[0]))
    assert len(classifier.predict(photo(), top_k=2).scores) == 2
    assert classifier.probabilities([photo(), photo(1)]).shape[0] == 2
    assert runs == []
    classifier.predict(photo(), heatmap=True)
    assert runs == [1]


def test_the_gate_runs_from_its_graph_exported_once_into_the_backbone_cache(backbone_cache):
    from transformers import AutoModelForImageClassification

    gate = load_gate("efficientnet-lite0", "cpu")
    folder = backbone_cache / "backbones" / "efficientnet-lite0"
    assert isinstance(gate.graph, OnnxModel) and gate.model is None and (folder / "model.onnx").is_file()
    photos = [Image.fromarray(skimage_data.coffee()), Image.fromarray(skimage_data.chelsea()), photo(1)]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    pixels = torch.stack([gate.processor(image, return_tensors="pt")["pixel_values"][0] for image in photos])
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits.softmax(-1).numpy()
    np.testing.assert_allclose(gate.imagenet_probabilities(photos), expected, atol=1e-4)


@pytest.fixture(scope="module")
def gate_network_dir(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 at its own 224 px with a new 2-class head on the untouched backbone, exported: the gate's
    own network with another head, as the birds preset trains it (the head alone, on the frozen backbone)."""
    from hf_model.export import export_model

    out = tmp_path_factory.mktemp("gate_network") / "model"
    load_model(resolve_backbone("efficientnet-lite0"), LABELS).save_pretrained(out)
    export_model(out)
    return out


def test_a_gate_on_the_models_own_backbone_shares_its_pass_and_gives_the_gates_answer(gate_network_dir,
                                                                                     coffee_calibration):
    plain = Classifier.from_pretrained(str(gate_network_dir), device="cpu")
    shared = Classifier(plain.model, plain.processor, coffee_calibration, "a coffee cup", device="cpu",
                        graph=plain.graph)
    separate = Classifier(plain.model, plain.processor, coffee_calibration, "a coffee cup", device="cpu")
    assert shared.gate_head is not None and shared.gate is None and separate.gate is not None
    runs = []
    graph_run = shared.graph.session.run
    shared.graph.session.run = lambda *args: runs.append(args) or graph_run(*args)
    for image in (Image.fromarray(skimage_data.coffee()), Image.fromarray(skimage_data.chelsea()), photo(4)):
        fast, slow = shared.predict(image, top_k=2), separate.predict(image, top_k=2)
        assert fast.domain_score == pytest.approx(slow.domain_score, abs=1e-5)
        assert fast.verdict == slow.verdict and fast.scores == pytest.approx(slow.scores, abs=1e-4)
    assert len(runs) == 3  # one pass of the graph per photo, for the scores and the gate together
    assert shared.predict(Image.fromarray(skimage_data.chelsea())).verdict == OUT_OF_DOMAIN


def test_a_model_whose_backbone_differs_from_the_gates_keeps_its_own_gate(gate_network_dir, lite_dir):
    plain = Classifier.from_pretrained(str(gate_network_dir), device="cpu")
    other_size = Classifier.from_pretrained(str(lite_dir), device="cpu")  # the same network at 96 px
    assert shared_gate_head(other_size.model, other_size.processor, "efficientnet-lite0") is None
    with torch.no_grad():
        plain.model.timm_model.blocks[6][0].bn1.running_mean.add_(0.01)  # the top block's statistics, fine-tuned
    assert shared_gate_head(plain.model, plain.processor, "efficientnet-lite0") is None
