import numpy as np
import pytest
import torch
from conftest import make_photo
from datasets import ClassLabel, Dataset, Features, Image

from hf_model.backbones import load_image_processor, load_model
from hf_model.features import HeadModel, extract_features, features_dataset
from hf_model.training import WeightedLossTrainer, class_weights, oversampled
from hf_model.transforms import build_eval_transform, build_train_transform


@pytest.fixture
def photos(tmp_path):
    paths = [str(make_photo(tmp_path / f"{i}.jpg", (40 * i, 90, 200 - 30 * i), seed=i)) for i in range(5)]
    return Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1, 1]},
                             features=Features({"image": Image(), "label": ClassLabel(names=["x", "y"])}))


def test_features_are_cached_per_photo_and_reused(photos, tiny_convnext, tmp_path):
    model = load_model(tiny_convnext, ["x", "y"])
    processor = load_image_processor(tiny_convnext, model.config, 32)
    views = [build_eval_transform(processor),
             build_train_transform(processor, 32, zoom=0.5, rotation=20, shift=0.1, shear=5, hflip=True,
                                   brightness=0.3)]
    first = extract_features(model, photos, views, tmp_path / "cache")
    assert first.shape == (5, 2, 16)  # photos, views, pooled feature size of the tiny ConvNeXt
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    again = extract_features(model, photos, views, tmp_path / "cache")
    assert calls == [] and np.array_equal(first, again)
    assert not np.allclose(first[:, 0], first[:, 1], atol=1e-3)  # the augmented view differs from the plain one


def test_features_dataset_spreads_views_into_rows():
    features = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    train = features_dataset(features, [0, 1], all_views=True)
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train[4]["features"].tolist() == features[1, 1].tolist()
    assert len(features_dataset(features, [0, 1], all_views=False)) == 2


def test_class_weights_balance_the_classes():
    weights = class_weights([0, 0, 0, 1], 2)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2])
    assert (weights * torch.tensor([3, 1])).tolist() == pytest.approx([2.0, 2.0])


def test_weighted_loss_is_the_weighted_cross_entropy(tmp_path):
    from transformers import TrainingArguments

    head = HeadModel(torch.nn.Linear(3, 2), dropout=0.0)
    weights = torch.tensor([0.25, 4.0])
    trainer = WeightedLossTrainer(model=head, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                                  class_weights=weights)
    features, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 1])
    loss = trainer.compute_loss(head, {"features": features, "labels": labels})
    logits = head.classifier(features)
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_example * weights[labels]).sum() / weights[labels].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = torch.nn.functional.cross_entropy(logits, labels)
    assert loss.item() != pytest.approx(unweighted.item(), rel=1e-3)


def test_oversampling_makes_classes_equal(photos):
    balanced = oversampled(photos, seed=0)
    assert np.bincount(balanced["label"]).tolist() == [3, 3]
