"""Self-training: a teacher labels the unlabeled photos it is sure of, and a student learns from both.

The bedroom folder holds about twice as many unlabeled photos as labeled ones. A model trained on
the labeled photos (the teacher) labels them; the photos it is at least ``threshold`` sure of join
the training split as a ``pseudo_labeled`` split, and a fresh model (the student) trains on both
with the usual augmentations. Validation and test stay hand-labeled, so early stopping and the
reported figures are not fooled by the teacher's mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from hf_model.predict import load_classifier
from hf_model.transforms import to_rgb


def pseudo_label(model_dir: str | Path, unlabeled: Dataset, threshold: float, *, tta: bool = False,
                 class_shares: Sequence[float] | None = None, batch_size: int = 32) -> Dataset:
    """The photos of ``unlabeled`` that the model in ``model_dir`` labels with probability >= ``threshold``.

    Returns a dataset with the same features as ``unlabeled`` and the model's labels; with ``tta``
    the photo and its mirror image are averaged, as at test time. With ``class_shares`` (the labeled
    training photos' class shares) only the most confident photos of each class are kept, in those
    shares: a teacher that leans to the larger class would otherwise tilt the student further.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"the pseudo-label threshold is a probability in (0, 1], got {threshold}")
    probs = class_probabilities(model_dir, unlabeled, tta=tta, batch_size=batch_size)
    confident = np.flatnonzero(probs.max(axis=1) >= threshold)
    if class_shares is not None:
        confident = balanced(confident, probs, np.asarray(class_shares, dtype=float))
    images = unlabeled.cast_column("image", ImageFeature(decode=False)).select(confident)["image"]
    return Dataset.from_dict({"image": images, "label": probs[confident].argmax(axis=1).tolist()},
                             features=unlabeled.features)


def balanced(candidates: np.ndarray, probs: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The largest subset of ``candidates`` whose predicted classes follow ``shares``, most confident first."""
    predicted = probs[candidates].argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(shares))
    present = shares > 0
    total = np.min(counts[present] / shares[present])  # the scarcest class (relative to its share) sets the size
    keep = []
    for c in np.flatnonzero(present):
        members = candidates[predicted == c]
        ranked = members[np.argsort(-probs[members, c], kind="stable")]
        keep += ranked[: int(np.floor(total * shares[c] + 1e-9))].tolist()
    return np.sort(np.asarray(keep, dtype=int))


def class_probabilities(model_dir: str | Path, dataset: Dataset, *, tta: bool = False,
                        batch_size: int = 32) -> np.ndarray:
    """(photos, classes) probabilities from the saved model, through ``pipeline()`` (GPU when present)."""
    classifier = load_classifier(str(model_dir))
    label2id = classifier.model.config.label2id
    probs = np.zeros((len(dataset), len(label2id)))
    for start in range(0, len(dataset), batch_size):
        images = [to_rgb(image) for image in dataset[start:start + batch_size]["image"]]
        views = [images] + ([[image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]] if tta else [])
        for view in views:
            for row, answer in enumerate(classifier(view, top_k=len(label2id), batch_size=batch_size)):
                for guess in answer:
                    probs[start + row, label2id[guess["label"]]] += guess["score"] / len(views)
    return probs
