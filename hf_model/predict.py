"""Batch prediction: label many photos with a trained model folder or a Hub id.

``hf-model predict runs/bedrooms photos/ --output predictions.csv`` writes one row per photo
with its top labels; unreadable files and files that are not images get a row saying why, in place,
instead of stopping the run. It exits non-zero when no photo at all could be labeled.

Fast: a model folder's exported graph (``model.onnx``, ``hf-model export``) runs in ONNX Runtime when it is up to
date, else PyTorch; photos are decoded and preprocessed (:func:`hf_model.runtime.lean_preprocessing`) in worker
threads (Pillow and numpy release the GIL) a few batches ahead of the model, which takes ``--batch_size`` at a
time; a progress bar goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from hf_model.atomic import atomic_write
from hf_model.backbones import NotAModelError, class_names, load_config, load_image_processor, not_a_model_reason
from hf_model.devices import Device, add_device_argument, input_device_and_dtype, resolve_device
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.flags import whole_number
from hf_model.images import IMAGE_SUFFIXES, list_images, open_image, skipped_files
from hf_model.runtime import (
    ONNX_FILE,
    OnnxModel,
    Preprocess,
    TorchModel,
    input_size,
    lean_preprocessing,
    load_exported,
)
from hf_model.transforms import build_eval_transform, test_time_views, to_rgb

Item = TypeVar("Item")
Result = TypeVar("Result")


def load_for_inference(source: str, device: Device = None):
    """A trained model folder or Hub id: ``(model, eval_transform)``, the model in eval mode on ``device``.

    ``device`` (:func:`hf_model.devices.resolve_device`) defaults to the GPU when present; one this machine does
    not have raises :class:`~hf_model.devices.DeviceError` before the model loads. The transform is the saved
    image processor's own preprocessing, exactly what ``pipeline("image-classification")`` applies.
    """
    from transformers import AutoModelForImageClassification

    device = resolve_device(device)
    model = AutoModelForImageClassification.from_pretrained(source, use_safetensors=True)  # never a pickle
    model = model.to(device, memory_format=torch.channels_last).eval()
    return model, build_eval_transform(load_image_processor(source, model.config))


@torch.inference_mode()
def view_probabilities(model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], photos: Sequence,
                       *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of every photo under every test-time view: shape (views, photos, classes).

    The one way this package predicts a split: training's test metrics, self-training's
    pseudo-labels, batch prediction and the demo all come through here. ``photos`` are PIL images
    (or a ``datasets`` image column, read batch by batch); ``tta`` adds the mirror image
    (:func:`hf_model.transforms.test_time_views`); average over axis 0 for the TTA answer. The photos go to
    the model's device and dtype (any device, float32 or bf16); the result is float32 on the CPU.
    """
    model.eval()
    device, dtype = input_device_and_dtype(model)
    views = test_time_views(tta)
    out = np.zeros((len(views), len(photos), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(photos), batch_size):
        images = photos[start:start + batch_size]  # made upright RGB by the transform (and the mirror view)
        for v, view in enumerate(views):
            pixels = torch.stack([transform(view(image)) for image in images])
            pixels = pixels.to(device, dtype).contiguous(memory_format=torch.channels_last)
            logits = model(pixel_values=pixels).logits
            out[v, start:start + len(images)] = logits.float().softmax(-1).cpu().numpy()
    return out


def class_probabilities(model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], photos: Sequence,
                        *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
    """(photos, classes) probabilities, averaged over the test-time views (see :func:`view_probabilities`)."""
    return view_probabilities(model, transform, photos, tta=tta, batch_size=batch_size).mean(axis=0)


def expand_paths(paths: list[str]) -> list[tuple[Path, str | None]]:
    """Each file to label, in order, with the reason it is skipped (``None``: to be labeled).

    Files named on the command line come in the order given and are always tried, whatever their suffix
    (Pillow decides from the content). A folder adds its files in sorted path order: images
    (:func:`hf_model.images.list_images`) to label, other visible files with why they are skipped.
    A file reached twice (a folder and a file in it) is kept once, where it first appears.
    Raises ``FileNotFoundError`` naming every path that does not exist.
    """
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist")
    entries: dict[Path, tuple[Path, str | None]] = {}
    for path in map(Path, paths):
        found = [(path, None)] if not path.is_dir() else sorted(
            [(image, None) for image in list_images(path)] + skipped_files(path), key=lambda entry: entry[0])
        for file, reason in found:
            entries.setdefault(file.resolve(), (file, reason))
    return list(entries.values())


def refuse_to_overwrite(output: Path, inputs: list[Path], model: str) -> None:
    """Raise :class:`UserInputError` when the CSV ``output`` would replace a photo or a file of the model.

    ``--output *.jpg`` (a forgotten file name that the shell filled in with a photo) or a path inside the
    model folder would otherwise be overwritten without a word.
    """
    target = output.resolve()
    if target in {path.resolve() for path in inputs} or output.suffix.lower() in IMAGE_SUFFIXES:
        raise UserInputError(f"--output {output} is a photo (or would be one): give a new .csv file name; the CSV "
                             "would replace the photo")
    if Path(model).is_dir() and target.is_relative_to(Path(model).resolve()):
        raise UserInputError(f"--output {output} is inside the model folder {model}: write the CSV elsewhere")


def read_photo(path: Path) -> Image.Image:
    """A file decoded in full as upright 8-bit RGB (:func:`hf_model.transforms.to_rgb`).

    Raises Pillow's errors: ``UnidentifiedImageError``, ``OSError`` (damaged or cut short) and
    ``DecompressionBombError``, also for images between one and two times Pillow's pixel limit, which
    Pillow would only warn about and decode.
    """
    with open_image(path) as image:
        return to_rgb(image)


def unreadable_reason(err: Exception) -> str:
    """What was wrong with a file :func:`read_photo` failed on, in one phrase for the CSV's error column."""
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"not a readable image: too many pixels, refused as a possible decompression bomb ({err})"
    if isinstance(err, UnidentifiedImageError):
        return "not a readable image: empty, or not in any image format Pillow knows"
    if isinstance(err, OSError) and err.errno is not None:  # the file system's refusal, not the image's content
        return f"not a readable image: the file cannot be opened ({err.strerror})"
    if isinstance(err, OSError):
        return f"not a readable image: damaged or cut short ({err})"
    return f"not a readable image ({type(err).__name__}: {err})"


@dataclass(frozen=True)
class Labeler:
    """What batch prediction runs: the class names, the preprocessing of one photo, and the model."""

    labels: list[str]
    preprocess: Preprocess  # one photo -> (3, H, W) float32
    model: OnnxModel | TorchModel  # the exported graph, or PyTorch


def load_labeler(source: str, device: Device = None) -> Labeler:
    """A model folder or Hub id ready to label photos: its exported graph in ONNX Runtime when the folder has an
    up-to-date one (:func:`hf_model.runtime.load_exported`), else the PyTorch model (:func:`load_for_inference`).

    Raises :class:`~hf_model.devices.DeviceError` first for a ``device`` this machine does not have, and
    :class:`NotAModelError` saying in one line why ``source`` is not a model.
    """
    device = resolve_device(device)
    config = load_config(source)  # NotAModelError with the reason
    try:
        preprocess = lean_preprocessing(load_image_processor(source, config))
    except (OSError, ValueError) as err:
        raise NotAModelError(not_a_model_reason(source, err)) from err
    graph = (load_exported(source, device, input_size(preprocess), config.num_labels) if Path(source).is_dir()
             else None)
    if device.type == "cpu" and Path(source).is_dir() and not (Path(source) / ONNX_FILE).is_file():
        print(f"note: {source} has no exported graph ({ONNX_FILE}), so PyTorch labels the photos; `hf-model export "
              f"{source}` makes this several times faster", file=sys.stderr)  # a stale one: load_exported warns
    model = graph or TorchModel(load_or_explain(source, device)[0])
    return Labeler(class_names(config), preprocess, model)


def label_files(labeler: Labeler, files: list[Path], top_k: int = 1, batch_size: int = 16,
                workers: int | None = None) -> Iterator[dict]:
    """Yield ``{"file", "predictions"}`` (top-k ``{"label", "score"}``, best first) or ``{"file", "error"}``.

    One row per file, in the order given; a file that cannot be read gets its :func:`unreadable_reason`.
    ``workers`` threads (default: the CPUs this process may use) decode and preprocess the photos, at most two
    batches ahead of the model, which scores ``batch_size`` photos at a time.
    """
    from hf_model.serving import available_cpus

    def decoded(path: Path) -> np.ndarray | str:
        try:
            return labeler.preprocess(read_photo(path))
        except Exception as err:  # a bad file is reported, the rest still get labels
            return unreadable_reason(err)

    with (ThreadPoolExecutor(workers or available_cpus(), thread_name_prefix="decode") as pool,
          contextlib.closing(prefetched(pool, decoded, files, ahead=2 * batch_size)) as photos):
        for start in range(0, len(files), batch_size):
            batch = [next(photos) for _ in files[start:start + batch_size]]
            pixels = [photo for photo in batch if not isinstance(photo, str)]
            probs = iter(labeler.model.probabilities(np.stack(pixels)) if pixels else [])
            for path, photo in zip(files[start:start + batch_size], batch):  # in the order given, errors included
                if isinstance(photo, str):
                    yield {"file": str(path), "error": photo}
                    continue
                scores = next(probs)
                best = np.argsort(-scores, kind="stable")[:top_k]
                yield {"file": str(path),
                       "predictions": [{"label": labeler.labels[i], "score": float(scores[i])} for i in best]}


def prefetched(pool: ThreadPoolExecutor, fn: Callable[[Item], Result], items: Iterable[Item],
               ahead: int) -> Iterator[Result]:
    """``map(fn, items)`` run in ``pool``, in order, with at most ``ahead`` calls submitted beyond the one awaited.

    ``Executor.map`` would submit every item at once and hold all the results (every decoded photo) in memory.
    When the consumer stops (an error, Ctrl-C), the calls not yet started are cancelled.
    """
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def label_entries(labeler: Labeler, entries: list[tuple[Path, str | None]], top_k: int,
                  batch_size: int) -> Iterator[dict]:
    """:func:`label_files` over the entries to label; skipped ones get ``{"file", "error": "skipped: ..."}``."""
    labeled = label_files(labeler, [path for path, reason in entries if reason is None], top_k, batch_size)
    for path, reason in entries:
        yield next(labeled) if reason is None else {"file": str(path), "error": f"skipped: {reason}", "skipped": True}


def write_rows(out: IO[str], rows: Iterator[dict]) -> Counter:
    """The prediction CSV (file, label, score, top_k, error); returns counts of labeled, unreadable, skipped."""
    writer = csv.writer(out)
    writer.writerow(["file", "label", "score", "top_k", "error"])
    counts = Counter(labeled=0, unreadable=0, skipped=0)
    for row in rows:
        if "error" in row:
            counts["skipped" if row.get("skipped") else "unreadable"] += 1
            writer.writerow([shown_name(row["file"]), "", "", "", row["error"]])
            continue
        counts["labeled"] += 1
        best = row["predictions"][0]
        top = "; ".join(f"{p['label']}={p['score']:.4f}" for p in row["predictions"])
        writer.writerow([shown_name(row["file"]), best["label"], f"{best['score']:.4f}", top, ""])
    return counts


def shown_name(file: str) -> str:
    """``file`` as valid UTF-8 text: bytes of a name that are not UTF-8 (a Latin-1 ``caf\\xe9.jpg`` from an old
    camera or archive; Python holds them as surrogates, which no UTF-8 file accepts) written as ``\\xNN`` escapes."""
    return os.fsencode(file).decode("utf-8", "backslashreplace")


class NothingLabeledError(UserInputError):
    """Every file given was unreadable or skipped, or there were none: the run produced nothing."""


def load_or_explain(source: str, device: Device = None):
    """:func:`load_for_inference`, or :class:`NotAModelError` saying in one line why ``source`` is not a model.

    A folder that is not a model folder, a path that does not exist, and a Hub id that cannot be reached
    (``HF_HUB_OFFLINE=1``, no network) or does not exist each get their own message. A ``device`` this
    machine does not have raises :class:`~hf_model.devices.DeviceError` first, before anything loads.
    """
    device = resolve_device(device)  # outside the try: a DeviceError is a ValueError, but not about the model
    try:
        return load_for_inference(source, device)
    except (OSError, ValueError) as err:
        raise NotAModelError(not_a_model_reason(source, err)) from err


EXIT_STATUSES = exit_statuses("at least one photo was labeled (the CSV's error column and the last line say how "
                              "many could not be)", "no photo could be labeled (an empty folder, only unreadable "
                              "files) or the model does not load")


@command("hf-model predict")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hf-model predict", description=__doc__.splitlines()[0],
                                     epilog=EXIT_STATUSES)
    parser.add_argument("model", help="trained model folder (train.py --output_dir) or Hub id")
    parser.add_argument("paths", nargs="+", help="photos or folders of photos")
    parser.add_argument("--top_k", type=whole_number(1), default=1,
                        help="labels listed per photo (at most the model's number of classes)")
    parser.add_argument("--batch_size", type=whole_number(1), default=16)
    parser.add_argument("--output", help="write a CSV here instead of printing")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.output and (Path(args.output).is_dir() or not Path(args.output).resolve().parent.is_dir()):
        parser.error(f"--output {args.output}: give a CSV file name in an existing folder")
    try:
        entries = expand_paths(args.paths)
    except FileNotFoundError as err:  # a path, not a flag: status 1 like every command's missing folder
        raise UserInputError(f"{err}: check the paths of the photos or folders") from err
    if args.output:
        refuse_to_overwrite(Path(args.output), [file for file, _ in entries], args.model)

    labeler = load_labeler(args.model, args.device)
    top_k = min(args.top_k, len(labeler.labels))
    if top_k < args.top_k:
        print(f"note: --top_k {args.top_k} is more than the model's {top_k} classes; listing all {top_k}",
              file=sys.stderr)
    rows = tqdm(label_entries(labeler, entries, top_k, args.batch_size), total=len(entries), unit="photo",
                file=sys.stderr, disable=None, desc="labeling")  # disable=None: no bar unless stderr is a terminal
    if args.output:  # a killed or stopped run leaves no half CSV under the real name
        with atomic_write(args.output, newline="") as out:
            counts = write_rows(out, rows)
    else:
        counts = write_rows(sys.stdout, rows)
    where = f" to {args.output}" if args.output else ""
    rows_written = f"{len(entries)} row{'' if len(entries) == 1 else 's'}"
    print(f"wrote {rows_written}{where}: {counts['labeled']} labeled, {counts['unreadable']} unreadable, "
          f"{counts['skipped']} skipped (reasons in the error column)", file=sys.stderr)
    if not counts["labeled"]:
        raise NothingLabeledError(f"no photo could be labeled in {' '.join(args.paths)}")
