import io
import struct
import zlib

import numpy as np
import pytest
import torch
from photo_kinds import (
    PHOTO_KINDS,
    READABLE_KINDS,
    UPRIGHT_BOTTOM,
    UPRIGHT_TOP,
    eight_bit_copy,
    exif_rotated,
    sixteen_bit_png,
    sixteen_bit_values,
)
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


# ---------------------------------------------------------------- high bit depth (issue 12, failure 2)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    with Image.open(sixteen_bit_png(tmp_path)) as wide, Image.open(eight_bit_copy(tmp_path)) as narrow:
        assert wide.mode == "I;16"
        got, expected = np.asarray(to_rgb(wide), dtype=int), np.asarray(to_rgb(narrow), dtype=int)
    assert np.abs(got - expected).max() <= 1  # the same picture, not a white square
    assert 60 < got.mean() < 200


@pytest.mark.parametrize(("mode", "dtype"), [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2"), ("I", "<i4")])
def test_sixteen_bit_grey_in_any_integer_mode_is_divided_by_257(mode, dtype):
    levels = sixteen_bit_values()
    image = Image.frombytes(mode, levels.shape[::-1], levels.astype(dtype).tobytes())
    assert np.asarray(image).astype(int).tolist() == levels.astype(int).tolist()  # the same 16-bit values
    rgb = np.asarray(to_rgb(image), dtype=int)
    assert np.abs(rgb[..., 0] - np.round(levels / 257)).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # floats in [0, 1]
    ([0.0, 100.0, 255.0], [0, 100, 255]),  # 8-bit levels held as floats
    ([0.0, 32896.0, 65535.0], [0, 128, 255]),  # 16-bit levels held as floats
    ([-1.0, 0.0, 1.0], [0, 128, 255]),  # any other range: stretched over 0..255
])
def test_float_images_are_scaled_by_the_range_they_hold(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


def test_eight_bit_grey_held_in_mode_i_keeps_its_levels():
    image = Image.fromarray(np.array([[0, 7, 200, 255]], dtype=np.uint8)).convert("I")
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 7, 200, 255]


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path):
    # Pillow has no 16-bit RGB mode: it reads such a PNG as 8-bit RGB (high bytes); check that stays right
    rgb16 = np.zeros((8, 8, 3), dtype=">u2")
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 32896, 0
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(8, 8, bit_depth=16, colour_type=2, rows=rgb16.reshape(8, -1).tobytes()))
    with Image.open(path) as image:
        assert to_rgb(image).getpixel((3, 3)) == (255, 128, 0)


def png_bytes(width: int, height: int, *, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (filter byte 0 before each row): for layouts Pillow cannot save."""
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", sorted(READABLE_KINDS))
def test_every_readable_kind_of_photo_becomes_rgb(tmp_path, kind):
    with Image.open(PHOTO_KINDS[kind](tmp_path)) as image:
        rgb = to_rgb(image)
    assert rgb.mode == "RGB" and 16 <= min(rgb.size)
    assert np.asarray(rgb).std() > 5  # real content, not one flat colour (a white square has none)


def test_exif_rotated_photo_comes_out_upright_with_its_colours(tmp_path):
    with Image.open(exif_rotated(tmp_path)) as image:
        rgb = to_rgb(image)
    assert rgb.size == (32, 48)
    assert_colour(rgb.getpixel((16, 4)), UPRIGHT_TOP)
    assert_colour(rgb.getpixel((16, 44)), UPRIGHT_BOTTOM)


def assert_colour(pixel: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 30) -> None:
    assert max(abs(a - b) for a, b in zip(pixel, expected)) <= tolerance, (pixel, expected)
