"""One small file of every kind of photo a user may hand us, good and bad: the bad-input tests of every entry point.

``PHOTO_KINDS[kind](folder)`` writes ``folder/<kind><suffix>`` (the folder is created) and returns its path.
Readable kinds decode to a 32-64 px picture; unreadable ones must be reported, never crash a run.

- ``exif_rotated``: stored sideways with EXIF Orientation 6; upright it is 32 wide x 48 tall, top half
  red and bottom half blue (:data:`UPRIGHT_TOP`, :data:`UPRIGHT_BOTTOM`).
- ``sixteen_bit_png``: mode ``I;16``, values 16-bit (:data:`SIXTEEN_BIT_MIN` .. :data:`SIXTEEN_BIT_MAX`); its
  8-bit copy is :func:`eight_bit_copy`. Pillow's ``convert("RGB")`` clips it to a white square.
- ``decompression_bomb``: a PNG a few dozen bytes long whose header declares 20000 x 20000 pixels, over twice
  ``Image.MAX_IMAGE_PIXELS``, so Pillow raises ``DecompressionBombError`` with its default limit on. It
  holds no pixel data: even with the limit off it fails to decode rather than fill memory.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

UPRIGHT_TOP, UPRIGHT_BOTTOM = (220, 20, 20), (20, 20, 220)
SIXTEEN_BIT_MIN, SIXTEEN_BIT_MAX = 12_000, 52_000
BOMB_SIDE = 20_000


def _photo(size: tuple[int, int] = (48, 48), seed: int = 0) -> Image.Image:
    """A noisy RGB picture (width, height) with a horizontal colour gradient: real content, not one flat colour."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 215, width)[None, :, None] * np.array([1.0, 0.6, 0.3])
    pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _save(folder: Path, name: str, image: Image.Image, **save_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, **save_kwargs)
    return folder / name


def corrupt_jpeg(folder: Path) -> Path:
    """A JPEG's SOI and JFIF header, then random bytes: recognised as JPEG, but no decodable frame."""
    header = _jpeg_bytes(_photo())[:20]  # FFD8 + the APP0/JFIF segment
    return _write(folder, "corrupt_jpeg.jpg", header + np.random.default_rng(1).bytes(2000))


def truncated_jpeg(folder: Path) -> Path:
    """A real JPEG cut in half (an interrupted download): the header opens, the pixels do not load."""
    data = _jpeg_bytes(_photo())
    return _write(folder, "truncated_jpeg.jpg", data[: len(data) // 2])


def zero_bytes(folder: Path) -> Path:
    return _write(folder, "zero_bytes.jpg", b"")


def text_named_jpg(folder: Path) -> Path:
    return _write(folder, "text_named_jpg.jpg", b"these are my notes, not a photo\n" * 4)


def rgba_png(folder: Path) -> Path:
    """RGBA with a transparent left half."""
    image = _photo().convert("RGBA")
    alpha = np.full((48, 48), 255, np.uint8)
    alpha[:, :24] = 0
    image.putalpha(Image.fromarray(alpha))
    return _save(folder, "rgba_png.png", image)


def palette_png_transparent(folder: Path) -> Path:
    """Mode P with palette index 0 transparent."""
    image = _photo().quantize(16)
    return _save(folder, "palette_png_transparent.png", image, transparency=0)


def grayscale(folder: Path) -> Path:
    return _save(folder, "grayscale.jpg", _photo().convert("L"))


def cmyk_jpeg(folder: Path) -> Path:
    return _save(folder, "cmyk_jpeg.jpg", _photo().convert("CMYK"))


def sixteen_bit_values(size: int = 48) -> np.ndarray:
    """The 16-bit grey levels of ``sixteen_bit_png``: a ramp plus noise, mid-grey on average."""
    rng = np.random.default_rng(2)
    ramp = np.linspace(SIXTEEN_BIT_MIN + 4000, SIXTEEN_BIT_MAX - 4000, size)[None, :]
    return np.clip(ramp + rng.normal(0, 1500, (size, size)), SIXTEEN_BIT_MIN, SIXTEEN_BIT_MAX).astype(np.uint16)


def sixteen_bit_png(folder: Path) -> Path:
    """A 16-bit grayscale PNG (opens as mode ``I;16``)."""
    return _save(folder, "sixteen_bit_png.png", Image.fromarray(sixteen_bit_values()))


def eight_bit_copy(folder: Path) -> Path:
    """``sixteen_bit_png`` as an 8-bit grayscale PNG (value / 257, rounded): what a correct reader sees."""
    levels = np.round(sixteen_bit_values() / 257).astype(np.uint8)
    return _save(folder, "eight_bit_copy.png", Image.fromarray(levels))


def exif_rotated(folder: Path) -> Path:
    """Upright: 32 x 48, red top half, blue bottom half. Stored turned 90 degrees with Orientation 6."""
    upright = Image.new("RGB", (32, 48), UPRIGHT_TOP)
    upright.paste(UPRIGHT_BOTTOM, (0, 24, 32, 48))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; Orientation 6 turns it back
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to view"
    return _save(folder, "exif_rotated.jpg", stored, exif=exif, quality=95)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(folder: Path) -> Path:
    """A tiny PNG declaring ``BOMB_SIDE`` x ``BOMB_SIDE`` 1-bit pixels (4e8, over 2x Pillow's limit)."""
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 1, 0, 0, 0, 0)  # 1 bit grey, deflate, no interlace
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))
    return _write(folder, "decompression_bomb.png", data)


PHOTO_KINDS: dict[str, Callable[[Path], Path]] = {
    maker.__name__: maker
    for maker in [corrupt_jpeg, truncated_jpeg, zero_bytes, text_named_jpg, rgba_png, palette_png_transparent,
                  grayscale, cmyk_jpeg, sixteen_bit_png, exif_rotated, decompression_bomb]
}
UNREADABLE_KINDS = frozenset({"corrupt_jpeg", "truncated_jpeg", "zero_bytes", "text_named_jpg", "decompression_bomb"})
READABLE_KINDS = frozenset(PHOTO_KINDS) - UNREADABLE_KINDS
