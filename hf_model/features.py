"""Fast stage 1: pooled backbone features computed once, cached on disk, then a head trained on them.

With the backbone frozen, every epoch would push the same photos through the same network.
Instead each photo is seen through a few augmented views once; the pooled features (the input
of the classifier layer) are stored under ``<cache>/features/<backbone key>/<transform key>/
<photo sha1>.npy``, so a rerun, another fold or another head reuses them. The head then trains
with ``Trainer`` on the cached vectors in milliseconds per epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from hf_model.adapters import adapter_for
from hf_model.atomic import atomic_write


class HeadModel(nn.Module):
    """Dropout + a copy of the model's classifier layer, fed cached features: what stage 1 trains."""

    def __init__(self, classifier: nn.Linear, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        # note: the loss is the Trainer's compute_loss_func; ``labels`` stays in the signature because
        # Trainer finds the label columns there (without it, evaluation would report no eval_loss)
        return {"logits": self.classifier(self.dropout(features))}


def photo_digests(dataset: Dataset) -> list[str]:
    """SHA-1 of each photo's bytes: the cache key that survives renames and moved folders."""
    raw = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    digests = []
    for item in raw:
        data = item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes()
        digests.append(hashlib.sha1(data).hexdigest())
    return digests


def cache_key(*parts) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    view_transforms: list[Callable[[Image.Image], torch.Tensor]],
    cache_dir: Path,
    batch_size: int = 32,
    desc: str = "features",
) -> np.ndarray:
    """Pooled features of every photo under every view: an array (n_photos, n_views, dim).

    Views are seeded per photo and view index, so the cache holds the same numbers a recompute
    would give.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    digests = photo_digests(dataset)
    todo = [i for i, d in enumerate(digests) if not (cache_dir / f"{d}.npy").is_file()]
    if todo:
        model.eval()
        device = next(model.parameters()).device
        captured: list[torch.Tensor] = []
        classifier = adapter_for(model).classifier(model)
        hook = classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        try:
            for start in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch"):
                ids = todo[start:start + batch_size]
                images = dataset.select(ids)["image"]
                per_view = []
                for v, transform in enumerate(view_transforms):
                    pixels = []
                    for i, image in zip(ids, images):
                        torch.manual_seed(int(digests[i][:8], 16) + v)
                        pixels.append(transform(image))
                    batch = torch.stack(pixels).to(device).contiguous(memory_format=torch.channels_last)
                    captured.clear()
                    model(pixel_values=batch)
                    per_view.append(captured[0].float().flatten(1).cpu())
                stacked = torch.stack(per_view, dim=1).numpy()  # (batch, views, dim)
                for i, features in zip(ids, stacked):  # renamed into place: a reader never sees half a file
                    with atomic_write(cache_dir / f"{digests[i]}.npy", "wb") as f:
                        np.save(f, features.astype(np.float16))
        finally:
            hook.remove()
    return np.stack([np.load(cache_dir / f"{d}.npy").astype(np.float32) for d in digests])


class FeatureRows(torch.utils.data.Dataset):
    """In-memory (features, labels) rows: indexing tensors, not Arrow, keeps a head epoch in milliseconds."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i]}


def features_dataset(features: np.ndarray, labels: list[int], all_views: bool) -> FeatureRows:
    """Rows of (features, labels): every view as its own row for training, view 0 only for evaluation."""
    views = features if all_views else features[:, :1]
    n, k, _ = views.shape
    return FeatureRows(views.reshape(n * k, -1), np.repeat(np.asarray(labels), k))
