import numpy as np
import pytest
import torch
from conftest import make_photo
from datasets import ClassLabel, Dataset, Features, Image

from hf_model.backbones import load_image_processor, load_model
from hf_model.features import extract_features, feature_file_name, features_dataset
from hf_model.transforms import build_eval_transform, build_train_transform


@pytest.fixture
def photos(tmp_path):
    paths = [str(make_photo(tmp_path / f"{i}.jpg", (40 * i, 90, 200 - 30 * i), seed=i)) for i in range(5)]
    return Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1, 1]},
                             features=Features({"image": Image(), "label": ClassLabel(names=["x", "y"])}))


def plain_and_augmented(tiny_convnext: str):
    """The tiny ConvNeXt and two views of a photo: as it is, and augmented."""
    model = load_model(tiny_convnext, ["x", "y"])
    processor = load_image_processor(tiny_convnext, model.config, 32)
    return model, [build_eval_transform(processor),
                   build_train_transform(processor, 32, zoom=0.5, rotation=20, shift=0.1, shear=5, hflip=True,
                                         brightness=0.3)]


def test_features_are_cached_per_photo_and_reused(photos, tiny_convnext, tmp_path):
    model, views = plain_and_augmented(tiny_convnext)
    first = extract_features(model, photos, views, tmp_path / "cache")
    assert first.shape == (5, 2, 16)  # photos, views, pooled feature size of the tiny ConvNeXt
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    again = extract_features(model, photos, views, tmp_path / "cache")
    assert calls == [] and np.array_equal(first, again)
    assert not np.allclose(first[:, 0], first[:, 1], atol=1e-3)  # the augmented view differs from the plain one


def test_a_write_killed_midway_leaves_no_cache_file_a_reader_could_load(photos, tiny_convnext, tmp_path,
                                                                         monkeypatch):
    model = load_model(tiny_convnext, ["x", "y"])
    views = [build_eval_transform(load_image_processor(tiny_convnext, model.config, 32))]
    real_save, saved = np.save, []

    def killed_on_the_third(file, array):
        if len(saved) == 2:
            file.write(b"\x93NUMPY half a header")  # what a kill leaves in a file written in place
            raise KeyboardInterrupt
        saved.append(1)
        real_save(file, array)

    monkeypatch.setattr(np, "save", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, photos, views, tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(name.endswith(".npy") for name in files)  # no half file, no temporary left
    assert all(np.load(tmp_path / "cache" / name).shape == (1, 16) for name in files)


def test_features_dataset_spreads_views_into_rows():
    features = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    train = features_dataset(features, [0, 1], all_views=True)
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train[4]["features"].tolist() == features[1, 1].tolist()
    assert len(features_dataset(features, [0, 1], all_views=False)) == 2


def test_dataloader_workers_give_the_same_augmented_views_as_the_main_process(photos, tiny_convnext, tmp_path):
    model, views = plain_and_augmented(tiny_convnext)
    in_process = extract_features(model, photos, views, tmp_path / "main", batch_size=2)
    in_workers = extract_features(model, photos, views, tmp_path / "workers", batch_size=2, num_workers=2)
    np.testing.assert_array_equal(in_process, in_workers)  # each view seeded by its photo, wherever it is made


def test_features_computed_in_another_dtype_are_cached_apart():
    digest = "0123456789abcdef0123456789abcdef01234567"
    assert feature_file_name(digest, torch.float32) == f"{digest}.npy"  # float32 caches from before still load
    assert feature_file_name(digest, torch.bfloat16) == f"{digest}.bfloat16.npy"
    assert feature_file_name(digest, torch.float16) == f"{digest}.float16.npy"
