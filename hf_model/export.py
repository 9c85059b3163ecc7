"""Export a trained model to ONNX: ``model.onnx`` beside ``model.safetensors``, checked against PyTorch first.

    hf-model export runs/bedrooms                 # checked on photos of the run's own training folder
    hf-model export runs/bedrooms --photos more/  # or on these photos

:mod:`hf_model.serving` and ``hf-model predict`` then run the graph in ONNX Runtime (:mod:`hf_model.runtime`);
``pipeline("image-classification")`` reads the folder as before and ignores the graph.

- How: ``torch.onnx.export`` with the ``torch.export`` ("dynamo") exporter, PyTorch's maintained one, with a
  dynamic batch axis; input ``pixel_values``, outputs ``logits`` (the names optimum's
  ``ORTModelForImageClassification`` reads) and ``pre_logits``, what the classification layer takes (the gate's
  head can share them). optimum's own exporter does not take transformers' ``timm_wrapper`` folders
  (huggingface/optimum#2423), which every offline backbone here is. The graph's metadata records the SHA-256 of the
  weights it came from, so that a model trained again in place is never served by its old graph.
- The check: the PyTorch model and the graph score the same photos, all in one batch and the first one alone (the
  batch axis must really be dynamic). The graph is written (atomically) only when no class probability differs by
  more than :data:`PROBABILITY_TOLERANCE`, which also keeps the top class except between two classes tied that
  closely; otherwise :class:`ExportError` says so and nothing is written.
- What lost, on this project's 2-core AVX2 CPU (no VNNI) with the bedrooms model (EfficientNet-Lite1, 240 px),
  measured side by side (``benchmarks/bench_inference.py``; README, Performance): OpenVINO 2026.4 fp32 ran the same
  graph no faster (best of 40 single photos 19.3 ms vs ONNX Runtime's 18.9; batch 32: 44 vs 47 img/s, one thread)
  and installs 180 MB against 78. int8 (onnxruntime.quantization: static QDQ calibrated on 64 training photos, per
  channel, MinMax or percentile, signed or unsigned weights, with and without the head; and dynamic) moved class
  probabilities by 0.12-0.74 (top-1 agreement 80-100% on 64-100 photos), far over the 2e-2 int8 may take; on this
  CPU ONNX Runtime's int8 kernels were also slower than fp32, and OpenVINO's int8 only ~20% faster.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_model.adapters import adapter_for
from hf_model.atomic import atomic_write
from hf_model.backbones import load_config, load_image_processor
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.flags import whole_number
from hf_model.images import list_images
from hf_model.runtime import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    PRE_LOGITS,
    WEIGHTS_KEY,
    OnnxModel,
    lean_preprocessing,
    load_exported,
    runtime_for,
    weights_fingerprint,
)
from hf_model.transforms import to_rgb

logger = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-4  # fp32 graphs differ from PyTorch by ~1e-6: anything more is a wrong graph
CHECK_PHOTOS = 32
ONNX_OPSET = 18  # the exporter's default in torch 2.14; ONNX Runtime >= 1.16 runs it
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


class ExportError(UserInputError, RuntimeError):
    """The model could not be exported, or its graph does not predict what the model does; nothing was written."""


@dataclass(frozen=True)
class ExportCheck:
    """How the written graph compares with the PyTorch model on the check photos."""

    path: Path  # the graph written
    photos: int
    photo_source: str  # where the check photos came from, for people
    max_probability_difference: float
    top1_agreement: float  # fraction of photos whose top class is the same

    def summary(self) -> str:
        size = self.path.stat().st_size / 1e6
        return (f"wrote {self.path} ({size:.1f} MB): on {self.photos} {self.photo_source} the largest probability "
                f"difference from PyTorch is {self.max_probability_difference:.1e} and the top class agrees on "
                f"{self.top1_agreement:.1%}")


def export_model(model_dir: str | Path, photos: Sequence[Image.Image] | None = None,
                 photo_source: str = "photos", *, tolerance: float = PROBABILITY_TOLERANCE) -> ExportCheck:
    """Export the model folder ``model_dir`` to ``model_dir/model.onnx``, after checking it on ``photos``.

    ``photos`` are PIL images (``photo_source`` says what they are, for the summary); None or none: made photos
    (:func:`made_photos`). Raises :class:`~hf_model.backbones.NotAModelError` when ``model_dir`` is not a model
    folder and :class:`ExportError` when the exporter fails or the graph disagrees with the model (by more than
    ``tolerance`` in any class probability); then ``model.onnx`` is left as it was.
    """
    from transformers import AutoModelForImageClassification

    model_dir = Path(model_dir)
    config = load_config(str(model_dir))
    model = AutoModelForImageClassification.from_pretrained(model_dir, config=config, use_safetensors=True,
                                                            dtype=torch.float32).eval()
    processor = load_image_processor(str(model_dir), config)
    if not photos:  # None, or a run too small for a validation split
        photos, photo_source = made_photos(), "made photos"
    pixels = torch.stack([processor(to_rgb(image), return_tensors="pt")["pixel_values"][0] for image in photos])
    graph = onnx_graph(model, tuple(pixels.shape[2:]), weights_fingerprint(model_dir))
    difference, agreement = compare(model, OnnxModel(graph), pixels)
    if not difference <= tolerance:  # also refuses NaN
        raise ExportError(f"the ONNX graph of {model_dir} does not predict what the model does: a class probability "
                          f"differs by {difference:.1e} (over {tolerance:.0e}) on {len(photos)} {photo_source}. "
                          "Nothing was written; the model still serves with PyTorch")
    path = model_dir / ONNX_FILE
    with atomic_write(path, "wb") as f:
        f.write(graph)
    return ExportCheck(path, len(photos), photo_source, difference, agreement)


def export_or_warn(model_dir: str | Path, photos: Sequence[Image.Image] | None = None,
                   photo_source: str = "photos") -> ExportCheck | None:
    """:func:`export_model`, for a job that must not fail on it (the end of training, the gate's first use): a
    failure is logged as a warning saying the model serves with PyTorch, and gives None."""
    try:
        check = export_model(model_dir, photos, photo_source)
    except (ExportError, ImportError, OSError) as err:  # ImportError: onnx or onnxscript not installed
        logger.warning("%s was not exported to ONNX (%s): it serves with PyTorch, slower on a CPU", model_dir, err)
        return None
    logger.info("%s", check.summary())
    return check


class _Outputs(torch.nn.Module):
    """The classifier as plain tensors, what the exporter traces: ``pixel_values`` -> (logits, pre-logits).

    The pre-logits (what the classification layer takes, timm's term) let a second head share the backbone's work:
    serving's out-of-domain gate, when its backbone is the classifier's (:func:`hf_model.serving.shared_gate_head`).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.head = adapter_for(model).classifier(model)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        hook = self.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            logits = self.model(pixel_values=pixel_values).logits
        finally:
            hook.remove()
        return logits, seen[0]


def onnx_graph(model: torch.nn.Module, input_size: tuple[int, int], weights: str) -> bytes:
    """The serialized ONNX graph of ``model`` for (batch, 3, *input_size) float32 photos, giving ``logits`` and
    ``pre_logits``; ``weights`` (:func:`~hf_model.runtime.weights_fingerprint`) goes into its metadata.

    Raises :class:`ExportError` (with the exporter's first line) when ``torch.onnx.export`` fails.
    """
    import onnx

    example = torch.zeros(2, 3, *input_size)  # a batch of 2: an example batch of 1 would fix the axis at 1
    try:
        with _quiet(EXPORTER_LOGGERS):
            program = torch.onnx.export(
                _Outputs(model).eval(), (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, PRE_LOGITS],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, opset_version=ONNX_OPSET,
                dynamo=True, verbose=False)
    except Exception as err:  # torch.export and onnxscript raise many kinds: all mean "this model does not export"
        raise ExportError(f"torch.onnx.export could not export {type(model).__name__}: {root_cause(err)}. The model "
                          "still serves with PyTorch") from err
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {WEIGHTS_KEY: weights})
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """The loggers ``names`` at WARNING while the block runs: the exporter's graph passes log a line per
    initializer they merge (some 80 per EfficientNet), which would bury a serving log at INFO."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def root_cause(err: BaseException) -> str:
    """The first line of the innermost cause of ``err``: torch.onnx wraps the real error in a step-by-step one."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()  # without terminal colour codes
    return lines[0] if lines else type(err).__name__


@torch.inference_mode()
def compare(model: torch.nn.Module, graph: OnnxModel, pixels: torch.Tensor) -> tuple[float, float]:
    """(largest class-probability difference, top-1 agreement) of ``graph`` against ``model`` on ``pixels``.

    The graph scores the photos in one batch and the first photo alone: both must match.
    """
    expected = model(pixel_values=pixels).logits.float().softmax(-1).numpy()
    batch = graph.probabilities(pixels.numpy())
    alone = graph.probabilities(pixels[:1].numpy())
    difference = max(float(np.abs(batch - expected).max()), float(np.abs(alone - expected[:1]).max()))
    return difference, float((batch.argmax(-1) == expected.argmax(-1)).mean())


def made_photos(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """``n`` smooth random RGB photos (320 x 240): for checking a graph where no real photos are at hand."""
    rng = np.random.default_rng(seed)
    coarse = [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)) for _ in range(n)]
    return [image.resize((320, 240), Image.Resampling.BICUBIC) for image in coarse]


def exported_backbone(folder: str | Path, device: torch.device) -> OnnxModel | None:
    """The graph of a backbone in this package's cache (e.g. the out-of-domain gate), exported on first use.

    Safe for several processes at once: one exports under a lock file (``fcntl.flock``, released when the process
    dies) while the others wait, then load what it wrote. A graph already there is loaded without the lock, so a
    read-only cache (baked into an image, another user's) serves it. None when ONNX Runtime cannot run on
    ``device``, the export fails or the cache cannot be written (logged): the caller runs PyTorch.
    """
    folder = Path(folder)
    if runtime_for(device) is not None:
        return None
    processor = load_image_processor(str(folder))
    input_size = lean_preprocessing(processor)(made_photos(1)[0]).shape[1:]
    num_labels = load_config(str(folder)).num_labels
    graph = load_exported(folder, device, input_size, num_labels)
    if graph is not None:
        return graph
    try:
        lock = open(folder.parent / f".{folder.name}.onnx.lock", "w")
    except OSError as err:  # a read-only cache: nothing can be exported into it
        logger.warning("%s cannot be exported to ONNX there (%s): it runs in PyTorch, slower on a CPU", folder, err)
        return None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        graph = load_exported(folder, device, input_size, num_labels)
        if graph is None:
            logger.info("exporting %s to ONNX, once (under a minute)", folder)
            graph = export_or_warn(folder) and load_exported(folder, device, input_size, num_labels)
    return graph


def check_photos(model_dir: Path, folders: list[str] | None, limit: int = CHECK_PHOTOS,
                 ) -> tuple[list[Image.Image] | None, str]:
    """Up to ``limit`` photos to check a graph on, spread over the list, with what they are (for people).

    From ``folders`` (``--photos``) when given; else from the training folder the run record names, when it is
    still there; else none (None: made photos). Raises :class:`UserInputError` when one of ``folders`` does not
    exist or they hold no photo.
    """
    from hf_model.predict import read_photo
    from hf_model.run_folder import read_record

    if folders:
        missing = [folder for folder in folders if not Path(folder).exists()]
        if missing:
            raise UserInputError(f"--photos {' '.join(missing)}: no such file or folder")
        files = [path for folder in folders for path in (list_images(folder) if Path(folder).is_dir()
                                                         else [Path(folder)])]
        source = f"photos from {', '.join(folders)}"
    else:
        data_dir = ((read_record(model_dir) or {}).get("config") or {}).get("data_dir")
        if not data_dir or not Path(data_dir).is_dir():
            return None, "made photos"
        files, source = list_images(data_dir), f"photos of the training folder {data_dir}"
    photos = []
    for path in files[:: max(1, len(files) // limit)][:limit]:
        with contextlib.suppress(Exception):  # an unreadable file is no use for a check: the others are
            photos.append(read_photo(path))
    if not photos:
        raise UserInputError(f"--photos {' '.join(folders or [])}: no readable photo there to check the graph on")
    return photos, source


EXIT_STATUSES = exit_statuses(f"{ONNX_FILE} was written and predicts what the model does",
                              "the folder is not a model folder, or the graph could not be exported or disagrees "
                              "with the model (nothing written)")


@command("hf-model export")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hf-model export", description=__doc__.splitlines()[0],
                                     epilog=EXIT_STATUSES)
    parser.add_argument("model_dir", help="trained model folder (train.py --output_dir)")
    parser.add_argument("--photos", nargs="+", help="photos or folders to check the graph on (default: the "
                                                    "training folder in the run record, else made photos)")
    parser.add_argument("--check_photos", type=whole_number(1), default=CHECK_PHOTOS,
                        help="how many photos the check uses")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise UserInputError(f"{model_dir} is not a folder: give a trained model folder (train.py --output_dir); "
                             "a Hub model must be downloaded first")
    from hf_model.run_folder import require_finished

    require_finished(model_dir)
    photos, source = check_photos(model_dir, args.photos, args.check_photos)
    print(export_model(model_dir, photos, source).summary())
