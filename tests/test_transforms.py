import io

import pytest
import torch
from PIL import Image

from hf_model.backbones import load_image_processor, load_model, resolve_backbone
from hf_model.transforms import batch_transform, build_eval_transform, build_train_transform, collate, to_rgb


def test_to_rgb_handles_odd_modes():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent becomes white, not black
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"
    assert to_rgb(Image.new("L", (4, 4))).mode == "RGB"


def test_to_rgb_applies_exif_rotation():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert to_rgb(Image.open(buffer)).size == (20, 40)


@pytest.fixture(scope="module")
def processor():
    source = resolve_backbone("efficientnet-lite0")
    return load_image_processor(source, load_model(source, ["a", "b"], 96).config, 96)


def test_train_transform_gives_normalized_tensor_of_the_right_size(processor):
    transform = build_train_transform(processor, 96, zoom=0.5, rotation=30, shift=0.2, shear=10, hflip=True,
                                      brightness=0.4)
    out = transform(Image.new("RGB", (200, 150), (255, 255, 255)))
    assert out.shape == (3, 96, 96)
    assert out.max() <= 1.0 + 1e-5 and out.min() >= -1.0 - 1e-5  # mean=std=0.5 maps [0,1] to [-1,1]


def test_eval_transform_equals_the_processor(processor):
    image = Image.new("RGB", (120, 90), (10, 200, 30))
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(build_eval_transform(processor)(image), expected)


def test_batches_are_channels_last_with_labels(processor):
    apply = batch_transform(build_eval_transform(processor))
    batch = apply({"image": [Image.new("RGB", (50, 50))] * 2, "label": [0, 1]})
    pairs = zip(batch["pixel_values"], batch["labels"])
    stacked = collate([{"pixel_values": p, "labels": label} for p, label in pairs])
    assert stacked["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert stacked["labels"].tolist() == [0, 1]
