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
from hf_model.distributed import barrier, rank_and_world


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


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    view_transforms: list[Callable[[Image.Image], torch.Tensor]],
    cache_dir: Path,
    batch_size: int = 32,
    desc: str = "features",
    *,
    num_workers: int = 0,
    dtype: torch.dtype = torch.float32,
    split_across_ranks: bool = False,
) -> np.ndarray:
    """Pooled features of every photo under every view: an array (n_photos, n_views, dim), float32.

    Views are seeded per photo and view index, so the cache holds the same numbers a recompute would give.
    Photos are decoded and transformed by a ``DataLoader`` with ``num_workers`` worker processes; the model
    runs under autocast in ``dtype`` on an accelerator (float32 on a CPU), and the dtype is part of each
    cached file's name, so features computed in bfloat16 never stand in for float32 ones.

    ``split_across_ranks`` (every rank of a ``torchrun`` job calls this at the same point): each rank computes
    the missing photos whose digest falls to it, all wait for each other, then every rank reads the whole
    cache (and computes itself whatever another node's cache holds and its own does not).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    dtype = dtype if device.type != "cpu" else torch.float32
    digests = photo_digests(dataset)
    files = [cache_dir / feature_file_name(d, dtype) for d in digests]
    missing = [i for i, file in enumerate(files) if not file.is_file()]
    if split_across_ranks:
        rank, world = rank_and_world()
        if world > 1:
            first = {d: i for i, d in reversed(list(enumerate(digests)))}  # one photo per digest: no double work
            _compute(model, dataset, view_transforms, digests, files, dtype, batch_size, num_workers, desc,
                     [i for i in missing if first[digests[i]] == i and int(digests[i][:8], 16) % world == rank])
            barrier()
            missing = [i for i in missing if not files[i].is_file()]
    _compute(model, dataset, view_transforms, digests, files, dtype, batch_size, num_workers, desc,
             list({digests[i]: i for i in missing}.values()))
    return np.stack([np.load(file).astype(np.float32) for file in files])


def feature_file_name(digest: str, dtype: torch.dtype) -> str:
    """``<sha1>.npy`` for float32 features, ``<sha1>.bfloat16.npy`` (...) for those computed under autocast."""
    return f"{digest}.npy" if dtype == torch.float32 else f"{digest}.{str(dtype).removeprefix('torch.')}.npy"


class _Views(torch.utils.data.Dataset):
    """Photo ``ids[k]`` under every view transform, (views, C, H, W), each view seeded by the photo's digest."""

    def __init__(self, dataset: Dataset, ids: list[int], digests: list[str],
                 view_transforms: list[Callable[[Image.Image], torch.Tensor]]):
        self.dataset, self.ids, self.digests, self.view_transforms = dataset, ids, digests, view_transforms

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> torch.Tensor:
        i = self.ids[k]
        image = self.dataset[i]["image"]
        views = []
        for v, transform in enumerate(self.view_transforms):
            torch.manual_seed(int(self.digests[i][:8], 16) + v)  # in a worker too: its own RNG, seeded here
            views.append(transform(image))
        return torch.stack(views)


@torch.no_grad()
def _compute(model: nn.Module, dataset: Dataset, view_transforms: list, digests: list[str], files: list[Path],
             dtype: torch.dtype, batch_size: int, num_workers: int, desc: str, ids: list[int]) -> None:
    """Features of photos ``ids`` written to ``files``: each renamed into place, so a reader never sees half a file."""
    if not ids:
        return
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_Views(dataset, ids, digests, view_transforms), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    captured: list[torch.Tensor] = []
    classifier = adapter_for(model).classifier(model)
    hook = classifier.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    done = 0
    try:
        for batch in tqdm(loader, desc=desc, unit="batch"):  # (photos, views, C, H, W)
            per_view = []
            for v in range(batch.shape[1]):
                pixels = batch[:, v].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                captured.clear()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    model(pixel_values=pixels)
                per_view.append(captured[0].float().flatten(1).cpu())
            stacked = torch.stack(per_view, dim=1).numpy()  # (photos, views, dim)
            for i, features in zip(ids[done:done + len(stacked)], stacked):
                with atomic_write(files[i], "wb") as f:
                    np.save(f, features.astype(np.float16))
            done += len(stacked)
    finally:
        hook.remove()


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
