"""Which files count as photos, and in what order every command sees a folder's photos."""

from __future__ import annotations

from conftest import make_photo

from hf_model.images import IMAGE_SUFFIXES, list_images


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
