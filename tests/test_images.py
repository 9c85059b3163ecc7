"""Which files count as photos, and in what order every command sees a folder's photos."""

from __future__ import annotations

import pytest
from conftest import make_photo
from PIL import Image

from hf_model.images import IMAGE_SUFFIXES, list_images, skipped_files


def test_list_images_finds_photos_at_any_depth_sorted_by_path(tmp_path):
    for relative in ["b.png", "a/2.JPG", "a/10.jpeg", "a/deep/er/x.webp", "c/d.tiff"]:
        make_photo(tmp_path / relative, (100, 100, 100))
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/10.jpeg", "a/2.JPG", "a/deep/er/x.webp", "b.png", "c/d.tiff"]
    assert list_images(str(tmp_path)) == list_images(tmp_path)  # a str folder works the same


def test_list_images_skips_other_files_folders_and_hidden_ones(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg", (100, 100, 100))
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "album.jpg").mkdir()  # a folder, whatever its name
    make_photo(tmp_path / "._photo.jpg", (0, 0, 0))  # macOS metadata beside a copied photo
    make_photo(tmp_path / ".ipynb_checkpoints" / "photo.jpg", (0, 0, 0))
    assert list_images(tmp_path) == [photo]


def test_image_suffixes_are_lower_case_and_dotted():
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_SUFFIXES


# ---------------------------------------------------------------- every suffix Pillow opens (issue 12, failure 8)


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".JFIF"])
def test_jpeg_under_any_of_its_suffixes_is_an_image(tmp_path, suffix):
    photo = make_photo(tmp_path / "a.jpg", (100, 100, 100)).rename(tmp_path / f"a{suffix}")
    assert list_images(tmp_path) == [photo]


def test_image_suffixes_are_the_formats_pillow_opens_and_decodes():
    opened = {suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert IMAGE_SUFFIXES <= opened
    assert {".jfif", ".jpe", ".qoi", ".ico", ".tga"} <= IMAGE_SUFFIXES
    assert not {".h5", ".grib", ".bufr", ".mpg", ".pdf"} & IMAGE_SUFFIXES  # header-only stubs, video, documents


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES & set(Image.registered_extensions())))
def test_pillow_writes_and_reads_back_every_suffix_it_can_save(tmp_path, suffix):
    fmt = Image.registered_extensions()[suffix]
    if fmt not in Image.SAVE:
        pytest.skip(f"Pillow cannot write {fmt}")
    path = tmp_path / f"photo{suffix}"
    try:
        Image.new("RGB", (32, 32), (120, 60, 30)).save(path)
    except (OSError, ValueError, KeyError) as err:  # a writer that needs another mode or size
        pytest.skip(f"{fmt} cannot save a 32 x 32 RGB picture: {err}")
    assert list_images(tmp_path) == [path]
    with Image.open(path) as image:
        image.load()


@pytest.mark.parametrize("system", ["__MACOSX/._a.jpg", "__MACOSX/a.jpg", "Thumbs.db", "desktop.ini", ".DS_Store",
                                    "sub/__macosx/a.png", "sub/THUMBS.DB"])
def test_system_files_and_folders_are_neither_images_nor_skipped_files(tmp_path, system):
    photo = make_photo(tmp_path / "sub" / "photo.jpg", (100, 100, 100))
    target = tmp_path / system
    if target.suffix in {".jpg", ".png"}:
        make_photo(target, (0, 0, 0))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x00system file")
    assert list_images(tmp_path) == [photo]
    assert skipped_files(tmp_path) == []


def test_skipped_files_lists_every_other_visible_file_with_its_reason_sorted(tmp_path):
    make_photo(tmp_path / "a" / "photo.jfif", (100, 100, 100))
    (tmp_path / "a" / "notes.txt").write_text("not a photo")
    (tmp_path / "README").write_text("no suffix")
    (tmp_path / "b.HEIC").write_bytes(b"\x00" * 8)
    (tmp_path / ".hidden.txt").write_text("hidden")
    skipped = [(p.relative_to(tmp_path).as_posix(), reason) for p, reason in skipped_files(tmp_path)]
    heic = [] if ".heic" in IMAGE_SUFFIXES else [("b.HEIC", "'.heic' is not an image type Pillow opens")]
    assert skipped == sorted([("README", "no file extension, so not taken for an image"),
                              ("a/notes.txt", "'.txt' is not an image type Pillow opens"), *heic])


def test_images_between_one_and_two_times_pillows_limit_are_refused_everywhere(tmp_path, monkeypatch):
    from PIL import Image

    from hf_model.data import BadImageError, scan_images
    from hf_model.images import open_image

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow alone would only warn
    with pytest.raises(Image.DecompressionBombWarning):
        open_image(path)
    with pytest.raises(BadImageError, match="big.png"):  # training refuses what predict and the Space refuse
        scan_images([str(path)])
