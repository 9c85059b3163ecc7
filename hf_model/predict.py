"""Batch prediction: label many photos with a trained model folder or a Hub id.

``hf-model predict runs/bedrooms photos/ --output predictions.csv`` writes one row per photo
with its top labels; unreadable files get an error row instead of stopping the run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from hf_model.data import IMAGE_SUFFIXES
from hf_model.transforms import to_rgb


def load_classifier(model: str, device: int | str | None = None):
    """``pipeline("image-classification")`` for a model folder or Hub id, on the GPU when present."""
    import torch
    from transformers import pipeline

    if device is None:
        device = 0 if torch.cuda.is_available() else -1
    return pipeline("image-classification", model=model, device=device)


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, plus every image under each folder, in a stable order."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return out


def predict_files(classifier, files: list[Path], top_k: int = 1, batch_size: int = 16) -> Iterator[dict]:
    """Yield ``{"file", "predictions"}`` or ``{"file", "error"}`` per photo, batch by batch."""
    for start in range(0, len(files), batch_size):
        batch, images = [], []
        for path in files[start:start + batch_size]:
            try:
                with Image.open(path) as image:
                    images.append(to_rgb(image))
                batch.append(path)
            except Exception as err:  # a bad file is reported, the rest still get labels
                yield {"file": str(path), "error": f"not a readable image ({type(err).__name__}: {err})"}
        if images:
            results = classifier(images, top_k=top_k, batch_size=batch_size)
            for path, predictions in zip(batch, results):
                yield {"file": str(path), "predictions": predictions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hf-model predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="trained model folder (train.py --output_dir) or Hub id")
    parser.add_argument("paths", nargs="+", help="photos or folders of photos")
    parser.add_argument("--top_k", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", help="write a CSV here instead of printing")
    args = parser.parse_args(argv)

    classifier = load_classifier(args.model)
    files = expand_paths(args.paths)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["file", "label", "score", "top_k", "error"])
    failures = 0
    for row in predict_files(classifier, files, args.top_k, args.batch_size):
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
