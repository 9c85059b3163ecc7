"""Run a trained classifier fast: lean preprocessing, and its exported graph in ONNX Runtime when there is one.

- :func:`lean_preprocessing`: the saved image processor's own resize and crop, then a lookup-table normalisation
  in numpy instead of torch's ``ToTensor`` + ``Normalize`` (timm models: equal to the processor, bit for bit;
  other processors are used as they are). One photo in, a (3, H, W) float32 array out.
- :class:`OnnxModel`: ``model.onnx`` (written by :mod:`hf_model.export`) in an ONNX Runtime session.
- :class:`TorchModel`: the same interface on the PyTorch model (channels_last, any device and dtype): the fallback.
- :func:`load_exported`: a model folder's graph when it is there, was exported from the weights beside it, and
  the device has an ONNX Runtime provider; else None, and the caller runs PyTorch.

Runtime dependencies only (the Space imports it): numpy, PIL, torch; onnxruntime where installed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_model.devices import input_device_and_dtype
from hf_model.transforms import to_rgb

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"  # the names optimum's ORTModelForImageClassification reads
PRE_LOGITS = "pre_logits"  # the graph's second output: what the classification layer takes
WEIGHTS_KEY = "hf_model.weights_sha256"  # in the graph's metadata: the weights it was exported from
CPU = torch.device("cpu")

Preprocess = Callable[[Image.Image], np.ndarray]  # one photo -> (3, H, W) float32


def lean_preprocessing(processor) -> Preprocess:
    """The preprocessing of ``processor`` for one photo, as a (3, H, W) float32 array (photos made upright RGB).

    A timm processor (``TimmWrapperImageProcessor``) resizes and crops a PIL image with torchvision, then
    ``ToTensor`` and ``Normalize`` make it a tensor: here its own resize and crop run, and a per-channel lookup
    table of the 256 levels gives the very float32 values ``(level / 255 - mean) / std`` that torch computes,
    several times faster. Any other processor (transformers' own, already torchvision-based) is called as it is.
    """
    steps = _timm_pil_steps(processor)
    if steps is None:
        return lambda image: processor(to_rgb(image), return_tensors="pt")["pixel_values"][0].numpy()
    geometry, table = steps

    def preprocess(image: Image.Image) -> np.ndarray:
        levels = np.asarray(geometry(to_rgb(image)))  # (H, W, 3) uint8
        return np.stack([table[c][levels[..., c]] for c in range(3)])

    return preprocess


def _timm_pil_steps(processor) -> tuple[Callable[[Image.Image], Image.Image], np.ndarray] | None:
    """A timm eval pipeline ``[PIL steps..., (Maybe)ToTensor, Normalize]`` as (its PIL steps, the (3, 256) table).

    None for any other processor, or a timm pipeline of another shape.
    """
    from torchvision import transforms as T

    pipeline = getattr(processor, "val_transforms", None)
    if type(processor).__name__ != "TimmWrapperImageProcessor" or not isinstance(pipeline, T.Compose):
        return None
    *geometric, to_tensor, normalize = pipeline.transforms
    if not (isinstance(to_tensor, T.ToTensor) and isinstance(normalize, T.Normalize)):  # MaybeToTensor is one
        return None
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(3, 1) for v in (normalize.mean, normalize.std))
    levels = torch.arange(256, dtype=torch.float32).div(255).expand(3, 256)  # what ToTensor makes of each level
    table = levels.sub(mean).div(std).numpy()  # Normalize's own float32 arithmetic, once per level
    return T.Compose(geometric), table


def preprocess_batch(preprocess: Preprocess, images: Sequence[Image.Image]) -> np.ndarray:
    """``preprocess`` over ``images``: shape (n, 3, H, W), float32, C-contiguous."""
    return np.stack([preprocess(image) for image in images])


def input_size(preprocess: Preprocess) -> tuple[int, int]:
    """The (H, W) that ``preprocess`` feeds the model (the same for every photo: a fixed resize and crop)."""
    return tuple(preprocess(Image.new("RGB", (64, 48))).shape[1:])


def probabilities(model: OnnxModel | TorchModel, preprocess: Preprocess, images: Sequence[Image.Image],
                  batch_size: int = 32) -> np.ndarray:
    """Class probabilities of RGB ``images`` by ``model``, ``batch_size`` at a time: (n, classes) float32."""
    batches = [model.probabilities(preprocess_batch(preprocess, images[start:start + batch_size]))
               for start in range(0, len(images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, model.num_labels), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (shifted by the row maximum, as ``torch.softmax`` is)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True), dtype=np.float32)
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TorchModel:
    """A transformers image classifier behind the interface of :class:`OnnxModel` (the fallback and GPU path)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.num_labels = model.config.num_labels

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of preprocessed photos (n, 3, H, W): shape (n, classes), float32 on the CPU."""
        device, dtype = input_device_and_dtype(self.model)
        inputs = torch.from_numpy(pixels).to(device, dtype).contiguous(memory_format=torch.channels_last)
        return self.model(pixel_values=inputs).logits.float().softmax(-1).cpu().numpy()


class OnnxModel:
    """An exported classifier (``pixel_values`` (n, 3, H, W) -> ``logits`` (n, classes)) in ONNX Runtime.

    ``source`` is a ``.onnx`` path or its bytes. ``device`` picks the provider: the CPU, or ``cuda:N`` through
    ``CUDAExecutionProvider`` (the onnxruntime-gpu build). ``threads`` is ONNX Runtime's intra-op thread count
    (default: torch's, ``torch.get_num_threads()``, so that one setting, e.g. the Space's, governs both).
    """

    def __init__(self, source: str | Path | bytes, device: torch.device = CPU,
                 threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one graph node at a time: a CNN is a chain
        options.log_severity_level = 3  # errors only: no warnings about unused initializers at every load
        # idle threads sleep instead of spinning after a run: spinning kept the cores busy through the PyTorch pass
        # of a heat map that follows (166 -> 97 ms p50 for the bedroom model; 18.0 -> 18.9 ms without a heat map)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                            providers=[_provider(device)])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        shape = self.session.get_inputs()[0].shape  # ["batch", 3, H, W]
        self.input_size = tuple(shape[2:])
        self.num_labels = self.session.get_outputs()[0].shape[-1]
        self.has_pre_logits = PRE_LOGITS in {output.name for output in self.session.get_outputs()}

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Logits of preprocessed photos (n, 3, H, W) float32: shape (n, classes), float32."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of preprocessed photos (n, 3, H, W): shape (n, classes), float32."""
        return softmax(self.logits(pixels))

    def logits_and_pre_logits(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (n, classes), pre-logits (n, features)) of preprocessed photos, from one run of the graph.
        Only for a graph that has them (``has_pre_logits``; graphs exported before they were added do not)."""
        inputs = {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)}
        logits, pre_logits = self.session.run([OUTPUT_NAME, PRE_LOGITS], inputs)
        return logits, pre_logits


def _provider(device: torch.device) -> str | tuple[str, dict]:
    if device.type == "cuda":
        return "CUDAExecutionProvider", {"device_id": device.index or 0}
    return "CPUExecutionProvider"


def runtime_for(device: torch.device) -> str | None:
    """Why ONNX Runtime cannot run on ``device`` here, in a phrase; None when it can."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(device.type)
    if wanted not in ort.get_available_providers():
        return f"this onnxruntime build has no provider for {device.type}"
    return None


def weights_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of a model folder's ``*.safetensors`` files (sorted by name): which weights a graph was made from."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def load_exported(model_dir: str | Path, device: torch.device, input_size: tuple[int, int], num_labels: int,
                  ) -> OnnxModel | None:
    """The folder's ``model.onnx`` in ONNX Runtime on ``device``, or None when PyTorch must run the model.

    None (logged, saying why and what to do) when there is no graph, onnxruntime has no provider for ``device``,
    the file does not load (damaged), or the graph does not fit the folder: exported from other weights (the model
    was trained again after ``hf-model export``), for another input size (``input_size``, the preprocessing's
    (H, W)) or class count.
    """
    path = Path(model_dir) / ONNX_FILE
    if not path.is_file():
        return None
    missing = runtime_for(device)
    if missing:
        logger.info("%s: %s; running PyTorch", path, missing)
        return None
    try:
        graph = OnnxModel(path, device)
    except Exception as err:  # onnxruntime's own error types: a damaged or foreign file, an opset it lacks
        logger.warning("%s cannot be loaded (%s): running PyTorch (run hf-model export %s again)", path,
                       str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, model_dir)
        return None
    if graph.metadata.get(WEIGHTS_KEY) != weights_fingerprint(model_dir):
        logger.warning("%s was exported from other weights than the folder holds now: running PyTorch (run "
                       "hf-model export %s to export these)", path, model_dir)
        return None
    if graph.input_size != tuple(input_size) or graph.num_labels != num_labels:
        logger.warning("%s takes %s photos and gives %s classes, the model %s and %d: running PyTorch (run "
                       "hf-model export %s again)", path, graph.input_size, graph.num_labels, tuple(input_size),
                       num_labels, model_dir)
        return None
    return graph
