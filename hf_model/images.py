"""Which files are photos: the one suffix list and folder listing every part of the project uses.

Runtime dependencies only (the Space imports it): training, prediction, calibration and the
demo's examples all see the same photos in a folder, in the same order.
"""

from __future__ import annotations

from pathlib import Path

# What PIL decodes out of the box that cameras, phones and datasets actually produce.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by path (the same order on every machine).

    Hidden files and folders (macOS's ``._photo.jpg``, ``.ipynb_checkpoints/``) are skipped, as ``datasets``'
    imagefolder skips them: they are never photos someone meant to include.
    """
    root = Path(folder)
    return sorted(
        path for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
