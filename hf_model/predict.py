"""Batch prediction: label many photos with a trained model folder or a Hub id.

``hf-model predict runs/bedrooms photos/ --output predictions.csv`` writes one row per photo
with its top labels; unreadable files get an error row instead of stopping the run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_model.backbones import load_image_processor
from hf_model.images import list_images
from hf_model.transforms import build_eval_transform, test_time_views, to_rgb


def load_for_inference(source: str, device: str | torch.device | None = None):
    """A trained model folder or Hub id: ``(model, eval_transform)``, the model in eval mode on ``device``.

    ``device`` defaults to the GPU when present. The transform is the saved image processor's own
    preprocessing, exactly what ``pipeline("image-classification")`` applies.
    """
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    return model, build_eval_transform(load_image_processor(source, model.config))


@torch.inference_mode()
def view_probabilities(model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], photos: Sequence,
                       *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of every photo under every test-time view: shape (views, photos, classes).

    The one way this package predicts a split: training's test metrics, self-training's
    pseudo-labels, batch prediction and the demo all come through here. ``photos`` are PIL images
    (or a ``datasets`` image column, read batch by batch); ``tta`` adds the mirror image
    (:func:`hf_model.transforms.test_time_views`); average over axis 0 for the TTA answer.
    """
    model.eval()
    device = next(model.parameters()).device
    views = test_time_views(tta)
    out = np.zeros((len(views), len(photos), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(photos), batch_size):
        images = photos[start:start + batch_size]  # made upright RGB by the transform (and the mirror view)
        for v, view in enumerate(views):
            pixels = torch.stack([transform(view(image)) for image in images])
            pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)
            logits = model(pixel_values=pixels).logits
            out[v, start:start + len(images)] = logits.float().softmax(-1).cpu().numpy()
    return out


def class_probabilities(model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], photos: Sequence,
                        *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
    """(photos, classes) probabilities, averaged over the test-time views (see :func:`view_probabilities`)."""
    return view_probabilities(model, transform, photos, tta=tta, batch_size=batch_size).mean(axis=0)


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, plus every image under each folder, in a stable order."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            out += list_images(path)
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return out


def predict_files(model, transform, files: list[Path], top_k: int = 1, batch_size: int = 16) -> Iterator[dict]:
    """Yield ``{"file", "predictions"}`` (top-k ``{"label", "score"}``, best first) or ``{"file", "error"}``."""
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for start in range(0, len(files), batch_size):
        rows: list[dict] = []
        images = []
        for path in files[start:start + batch_size]:
            try:
                with Image.open(path) as image:
                    images.append(to_rgb(image))
                rows.append({"file": str(path)})
            except Exception as err:  # a bad file is reported, the rest still get labels
                rows.append({"file": str(path), "error": f"not a readable image ({type(err).__name__}: {err})"})
        probs = iter(class_probabilities(model, transform, images, batch_size=batch_size) if images else [])
        for row in rows:  # in the order given, errors included
            if "error" not in row:
                scores = next(probs)
                best = np.argsort(-scores, kind="stable")[:top_k]
                row["predictions"] = [{"label": labels[i], "score": float(scores[i])} for i in best]
            yield row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hf-model predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="trained model folder (train.py --output_dir) or Hub id")
    parser.add_argument("paths", nargs="+", help="photos or folders of photos")
    parser.add_argument("--top_k", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", help="write a CSV here instead of printing")
    args = parser.parse_args(argv)

    model, transform = load_for_inference(args.model)
    files = expand_paths(args.paths)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["file", "label", "score", "top_k", "error"])
    failures = 0
    for row in predict_files(model, transform, files, args.top_k, args.batch_size):
        if "error" in row:
            failures += 1
            writer.writerow([row["file"], "", "", "", row["error"]])
            continue
        best = row["predictions"][0]
        top = "; ".join(f"{p['label']}={p['score']:.3f}" for p in row["predictions"])
        writer.writerow([row["file"], best["label"], f"{best['score']:.4f}", top, ""])
    if args.output:
        out.close()
        print(f"wrote {len(files)} predictions to {args.output} ({failures} unreadable)", file=sys.stderr)
