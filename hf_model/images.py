"""Which files are photos: the one suffix list and folder listing every part of the project uses.

Runtime dependencies only (the Space imports it): training, prediction, calibration, publishing and the
demo's examples all see the same photos in a folder, in the same order, and report the other files the same way.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import IO

from PIL import EpsImagePlugin, Image, ImageFile

# Formats Pillow identifies but cannot decode pixels of: stubs that need an outside handler (BUFR, GRIB, HDF5,
# WMF off Windows), MPEG, of which Pillow reads only a video's frame size, and EPS without Ghostscript installed.
_NO_PIXELS = frozenset({"MPEG"} | (set() if EpsImagePlugin.has_ghostscript() else {"EPS"}))
# Files operating systems and archivers leave beside photos; dot-files (.DS_Store, ._photo.jpg) are hidden anyway.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
SYSTEM_FOLDERS = frozenset({"__macosx"})


def _decodable_suffixes() -> frozenset[str]:
    """Suffixes of the formats this Pillow opens and decodes (``.jfif``, ``.jpe``, ``.avif`` where built in, ...)."""
    def decodes(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile)
        return factory is not None and not stub and fmt not in _NO_PIXELS

    return frozenset(suffix.lower() for suffix, fmt in Image.registered_extensions().items() if decodes(fmt))


IMAGE_SUFFIXES = _decodable_suffixes()


def is_hidden(relative: Path) -> bool:
    """Hidden or system, judged on a path relative to the folder listed: a dot-name anywhere (``.DS_Store``,
    ``._photo.jpg``, ``.ipynb_checkpoints/``), a ``__MACOSX/`` folder, ``Thumbs.db`` or ``desktop.ini``."""
    parts = [part.lower() for part in relative.parts]
    hidden_part = any(part.startswith(".") or part in SYSTEM_FOLDERS for part in parts)
    return hidden_part or relative.name.lower() in SYSTEM_FILES


def _visible_files(folder: str | Path) -> list[Path]:
    """Files under ``folder`` (recursively, sorted by path) that are not hidden or system files."""
    root = Path(folder)
    return sorted(path for path in root.rglob("*") if path.is_file() and not is_hidden(path.relative_to(root)))


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by path (the same order on every machine).

    An image file is one whose suffix (any case) is in :data:`IMAGE_SUFFIXES`. Hidden and system files and
    folders (:func:`is_hidden`) are left out, as ``datasets``' imagefolder leaves out dot-files.
    """
    return [path for path in _visible_files(folder) if path.suffix.lower() in IMAGE_SUFFIXES]


def skipped_files(folder: str | Path) -> list[tuple[Path, str]]:
    """``(file, reason)`` for every visible file under ``folder`` that :func:`list_images` leaves out, sorted."""
    return [(path, skip_reason(path)) for path in _visible_files(folder) if path.suffix.lower() not in IMAGE_SUFFIXES]


def skip_reason(path: Path) -> str:
    """Why a file is not taken for an image, in one phrase."""
    if not path.suffix:
        return "no file extension, so not taken for an image"
    return f"{path.suffix.lower()!r} is not an image type Pillow opens"


def open_image(source: str | Path | IO[bytes]) -> Image.Image:
    """``PIL.Image.open`` (lazy: nothing decoded yet) with the decompression-bomb limit enforced in full.

    Pillow raises ``DecompressionBombError`` above twice ``Image.MAX_IMAGE_PIXELS`` and only warns
    between one and two times it; here both raise, so every part of the project refuses the same files.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(source)
