"""Serving: load a trained classifier once, then answer one photo at a time (the Space's engine).

- :func:`open_photo` turns any upload into an upright RGB image, or raises :class:`UnreadablePhotoError`
  with a sentence a person can act on (not an image, damaged, too big, too small, too elongated).
- :class:`Classifier` loads a model folder or Hub id with its :class:`Calibration` (``calibration.json``
  beside ``config.json``, written by :mod:`hf_model.calibration`) and returns a :class:`Prediction`:
  the top-k scores, a verdict (sure, unsure, out of domain), one plain sentence and an optional heat map.
- Out of domain: a generic ImageNet classifier (the :class:`DomainGate`) says what the photo shows; the
  photo is in domain when those ImageNet classes overlap the ones the training photos got.
- Heat map: Grad-CAM on the model's last convolutional feature map, which the model's adapter finds
  (:mod:`hf_model.adapters`: timm CNNs through ``timm_wrapper``, HF-native ConvNeXt and EfficientNet).
- Speed: the scores come from the model's exported graph (``model.onnx``, :mod:`hf_model.export`) in ONNX Runtime
  when the folder has an up-to-date one, after a lean preprocessing (:mod:`hf_model.runtime`); the gate's graph is
  exported once into the backbone cache, or, when the model was trained on the gate's own frozen backbone (the
  birds preset), the gate's ImageNet layer reads the model's pre-logits: one pass answers both. PyTorch runs the
  model only for the heat map (Grad-CAM needs gradients) and where there is no graph or no runtime for the device.
- Device: the model and its gate run where ``device`` says (:func:`hf_model.devices.resolve_device`; by default
  the GPU when present): on the CPU, ONNX Runtime's CPU provider; on a GPU, its CUDA provider where the
  onnxruntime-gpu build is installed, else PyTorch. Results come back to the CPU as float32.

Only runtime dependencies are imported here (torch, transformers, timm, PIL, numpy, onnxruntime): the Space runs
it; exporting the gate also needs onnx and onnxscript (without them the gate runs in PyTorch).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hf_model.adapters import adapter_for
from hf_model.atomic import write_json_atomic
from hf_model.backbones import BACKBONES, DEFAULT_BACKBONE, load_image_processor, resolve_backbone
from hf_model.devices import Device, input_device_and_dtype, resolve_device
from hf_model.exit_status import UserInputError
from hf_model.images import open_image
from hf_model.runtime import (
    ONNX_FILE,
    OnnxModel,
    TorchModel,
    input_size,
    lean_preprocessing,
    load_exported,
    preprocess_batch,
    probabilities,
    softmax,
)
from hf_model.transforms import normalization, to_rgb

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
DEFAULT_UNSURE_BELOW = 0.6  # top class under 60%: the model says it is unsure
VERY_SURE_FROM = 0.9
# Probabilities are shown to people within [1%, 99%]: a model is never certain, and gr.Label prints
# Math.round(confidence * 100) + "%", so the label and the sentence can only agree on whole percents.
SHOWN_PROBABILITY_RANGE = (0.01, 0.99)
# Photos above PIL's decompression-bomb limit (~89 megapixels) are refused; big JPEGs are decoded
# at a reduced scale (Image.draft), which is much faster and still far above the model's input size.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
DRAFT_SIDE = 1024
MIN_SIDE = 16
# The model's processor resizes the short side to ~the model's size and keeps the aspect ratio: a strip of a few KB
# (16 x 5,000,000 pixels, under the pixel limit) would become a resized image of hundreds of GB and take the server
# down. No photo is this elongated; phone panoramas stay under about 10:1.
MAX_ASPECT_RATIO = 20
HEATMAP_SIDE = 448
SURE, UNSURE, OUT_OF_DOMAIN = "sure", "unsure", "out_of_domain"


DAMAGED_PHOTO = "This image file is damaged or incomplete and cannot be decoded. Please upload it again."


def available_cpus() -> int:
    """CPUs this process may use: a container's cgroup quota (a Space's vCPUs) when set, else the affinity mask.

    ``os.cpu_count()`` reports the host's cores inside a container, which would admit far more
    concurrent predictions than the container can run.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return count


class UnreadablePhotoError(UserInputError, ValueError):
    """An upload that cannot be classified; the message says why and what to do."""


def open_photo(source) -> Image.Image:
    """An upright RGB image from a path, file object or PIL image; EXIF rotation, RGBA, CMYK, P and L handled."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = open_image(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UnreadablePhotoError(
                f"This image is too big to classify (over {MAX_PIXELS / 1e6:.0f} megapixels). "
                "Please resize it and try again."
            ) from err
        except (UnidentifiedImageError, IsADirectoryError, ValueError) as err:
            raise UnreadablePhotoError(
                "This file is not an image the demo can read. Please upload a photo (JPEG, PNG, WebP, ...)."
            ) from err
        except OSError as err:  # a known format whose header is cut short ("Truncated File Read")
            raise UnreadablePhotoError(DAMAGED_PHOTO) from err
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UnreadablePhotoError(
            f"This image is too big to classify ({width} x {height} pixels; the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels). Please resize it and try again."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnreadablePhotoError(
            f"This image is too elongated to classify ({width} x {height} pixels; the long side may be at most "
            f"{MAX_ASPECT_RATIO} times the short one). Please crop it and try again."
        )
    image.draft(None, (DRAFT_SIDE, DRAFT_SIDE))  # JPEG only; a no-op for other formats
    try:
        image.load()
    except OSError as err:  # truncated or corrupt data
        raise UnreadablePhotoError(DAMAGED_PHOTO) from err
    image = to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise UnreadablePhotoError(
            f"This image is too small to classify ({image.size[0]} x {image.size[1]} pixels; "
            f"it needs at least {MIN_SIDE} pixels a side)."
        )
    return image


@dataclass
class Prediction:
    """What the model says about one photo."""

    scores: dict[str, float]  # the top-k labels and their probabilities, best first (for people: shown_scores)
    verdict: str  # SURE, UNSURE or OUT_OF_DOMAIN
    message: str  # one plain sentence for people
    domain_score: float | None = None  # None when the model has no calibration
    heatmap: Image.Image | None = None  # Grad-CAM over what the model saw


@dataclass
class Calibration:
    """The out-of-domain threshold and the 'unsure' level of one model, stored as ``calibration.json``."""

    gate_backbone: str  # the ImageNet classifier that says what a photo shows (a backbones registry name)
    profile: list[float]  # mean ImageNet class probabilities over the training photos
    domain_threshold: float  # photos whose domain score is below this are out of domain
    unsure_below: float = DEFAULT_UNSURE_BELOW
    report: dict = field(default_factory=dict)  # how often the thresholds reject what (calibration.py)

    def save(self, model_dir: str | Path) -> Path:
        """Write ``calibration.json`` into ``model_dir`` atomically: a killed run leaves the old file or none."""
        return write_json_atomic(Path(model_dir) / CALIBRATION_FILE, asdict(self), indent=1)

    @classmethod
    def load(cls, model_dir: str | Path) -> Calibration | None:
        path = Path(model_dir) / CALIBRATION_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


class DomainGate:
    """A pretrained ImageNet classifier used as a generic judge of what a photo shows.

    The domain score of a photo is ``p @ profile``: the chance that the photo and a random training
    photo get the same ImageNet class. Bedrooms land on four-poster, quilt, studio couch; a kitchen
    lands on microwave or dining table and scores low against a bedroom profile.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, device: Device = None):
        """The gate ``backbone`` (a registry name, model folder or Hub id) on ``device`` (default: the GPU when
        present). Its graph runs when it has one: a registry backbone's is exported once into the backbone cache
        (:func:`hf_model.export.exported_backbone`), a folder's is its ``model.onnx``. ``model`` is then None;
        otherwise it is the PyTorch model that runs.

        Raises :class:`~hf_model.devices.DeviceError` for a device this machine does not have.
        """
        from transformers import AutoConfig, AutoModelForImageClassification

        device = resolve_device(device)  # before anything loads
        source = resolve_backbone(backbone)
        config = AutoConfig.from_pretrained(source)
        self.processor = load_image_processor(source, config)
        self.preprocess = lean_preprocessing(self.processor)
        self.graph = _gate_graph(backbone, source, device, input_size(self.preprocess), config.num_labels)
        self.model = None
        if self.graph is None:
            model = AutoModelForImageClassification.from_pretrained(source, config=config, use_safetensors=True)
            self.model = _for_inference(model, device)

    def imagenet_probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """ImageNet class probabilities of RGB images, shape (n, 1000), float32 on the CPU."""
        return probabilities(self.graph or TorchModel(self.model), self.preprocess, images)


def _gate_graph(backbone: str, source: str, device: torch.device, size: tuple[int, int],
                num_labels: int) -> OnnxModel | None:
    """The gate's graph: a registry backbone's exported into the cache on first use; a folder's own model.onnx."""
    if backbone in BACKBONES and BACKBONES[backbone].offline:  # converted into this package's cache: ours to write
        from hf_model.export import exported_backbone

        return exported_backbone(source, device)
    return load_exported(source, device, size, num_labels) if Path(source).is_dir() else None


def load_gate(backbone: str = DEFAULT_BACKBONE, device: Device = None) -> DomainGate:
    """One gate per backbone and device per process, shared by every task that uses it (default: the GPU when
    present). Raises :class:`~hf_model.devices.DeviceError` for a device this machine does not have."""
    return _shared_gate(backbone, resolve_device(device))


@functools.cache
def _shared_gate(backbone: str, device: torch.device) -> DomainGate:
    return DomainGate(backbone, device)


def domain_scores(imagenet_probabilities: np.ndarray, profile) -> np.ndarray:
    return imagenet_probabilities @ np.asarray(profile, dtype=np.float32)


@dataclass(frozen=True)
class GateHead:
    """The gate's ImageNet classification layer, run on a classifier's pre-logits (the two share their backbone)."""

    weight: np.ndarray  # (1000, features) float32
    bias: np.ndarray  # (1000,) float32

    def imagenet_probabilities(self, pre_logits: np.ndarray) -> np.ndarray:
        """ImageNet class probabilities (n, 1000) from pre-logits (n, features)."""
        return softmax(pre_logits @ self.weight.T + self.bias)


def shared_gate_head(model, processor, gate_backbone: str) -> GateHead | None:
    """The gate's classification layer when ``model`` is the gate's own network with another head, else None.

    The same: architecture, preprocessing (``processor``), and every weight and batch-norm statistic outside the
    head, as when a head is trained on the gate's frozen backbone (the birds preset: EfficientNet-Lite0 at 224 px,
    the default gate). Then the gate's answer is its layer applied to the model's pre-logits, with no second pass.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    source = resolve_backbone(gate_backbone)
    if not Path(source).is_dir():  # a Hub id: not worth a download to find out
        return None
    config = AutoConfig.from_pretrained(source)
    kind = (config.model_type, getattr(config, "architecture", None))
    if kind != (model.config.model_type, getattr(model.config, "architecture", None)):
        return None
    if _preprocessing_settings(load_image_processor(source, config)) != _preprocessing_settings(processor):
        return None
    gate = AutoModelForImageClassification.from_pretrained(source, config=config, use_safetensors=True)
    head = adapter_for(gate).classifier(gate)
    if not isinstance(head, torch.nn.Linear) or head.bias is None:
        return None
    prefix = next(name for name, module in gate.named_modules() if module is head) + "."
    ours = model.state_dict()
    for name, theirs in gate.state_dict().items():
        mine = ours.get(name)
        if not name.startswith(prefix) and (mine is None or mine.shape != theirs.shape
                                            or not torch.equal(mine.detach().cpu().float(), theirs.float())):
            return None
    return GateHead(head.weight.detach().float().numpy(), head.bias.detach().float().numpy())


def _preprocessing_settings(processor) -> dict:
    """What decides a processor's output: timm's data config, or a transformers processor's settings."""
    return getattr(processor, "data_config", None) or processor.to_dict()


class Classifier:
    """A trained image classifier ready to serve: scores, verdict, sentence and heat map for one photo.

    The model (moved to ``device``; default: the GPU when present) and its gate run on the same device, in the
    model's dtype. ``graph`` is the model's exported graph (:func:`hf_model.runtime.load_exported`, which
    :meth:`from_pretrained` finds): it gives the scores when given, and PyTorch only the heat map. When the gate's
    backbone is the model's own (:func:`shared_gate_head`), the graph's pre-logits also give the gate's answer
    (``gate_head``; ``gate`` is then None).
    Raises :class:`~hf_model.devices.DeviceError` for a device this machine does not have.
    """

    def __init__(self, model, processor, calibration: Calibration | None = None, subject: str = "the training photos",
                 *, device: Device = None, graph: OnnxModel | None = None):
        self.device = resolve_device(device)
        self.model = _for_inference(model, self.device)
        self.processor = processor
        self.preprocess = lean_preprocessing(processor)
        self.graph = graph
        self.engine = graph or TorchModel(self.model)  # what gives the scores
        self.calibration = calibration
        # the gate's ImageNet layer on this model's own pre-logits when both share one backbone: one pass for both
        shares = calibration is not None and graph is not None and graph.has_pre_logits
        self.gate_head = shared_gate_head(self.model, processor, calibration.gate_backbone) if shares else None
        needs_gate = calibration is not None and self.gate_head is None
        self.gate = load_gate(calibration.gate_backbone, self.device) if needs_gate else None
        self.subject = subject  # what the photos should show, e.g. "a bedroom"
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def from_pretrained(cls, source: str, subject: str = "the training photos", *,
                        warn_uncalibrated: bool = True, device: Device = None) -> Classifier:
        """A model folder (``train.py --output_dir``) or a Hub id, with its ``calibration.json`` and its exported
        graph (``model.onnx``, used when up to date) when present, on ``device`` (default: the GPU when present;
        checked before anything loads).

        Without a calibration it logs a warning (unless ``warn_uncalibrated`` is false: ``hf-model calibrate``).
        """
        from transformers import AutoModelForImageClassification

        device = resolve_device(device)
        model_dir = Path(source) if Path(source).is_dir() else _download(source)
        model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)  # never a pickle
        calibration = Calibration.load(model_dir)
        if calibration is None and warn_uncalibrated:
            logger.warning(
                "%s has no %s: photos will not be checked for being out of domain "
                "(hf-model calibrate adds the check)",
                source,
                CALIBRATION_FILE,
            )
        processor = load_image_processor(str(model_dir), model.config)
        graph = load_exported(model_dir, device, input_size(lean_preprocessing(processor)), model.config.num_labels)
        return cls(model, processor, calibration, subject, device=device, graph=graph)

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities for a batch of RGB images, shape (n, classes), float32 on the CPU."""
        return probabilities(self.engine, self.preprocess, images)

    def predict(self, image: Image.Image, top_k: int = 5, heatmap: bool = False) -> Prediction:
        """Top-k scores, verdict and sentence for one RGB image; a Grad-CAM heat map when asked and in domain."""
        pixels = preprocess_batch(self.preprocess, [image])  # (1, 3, H, W) float32: what the model sees
        probs, domain_score = self._scores(image, pixels)
        in_domain = domain_score is None or domain_score >= self.calibration.domain_threshold
        top = np.argsort(-probs, kind="stable")[:top_k]
        scores = {self.labels[i]: float(probs[i]) for i in top}
        unsure_below = self.calibration.unsure_below if self.calibration else DEFAULT_UNSURE_BELOW
        verdict = OUT_OF_DOMAIN if not in_domain else UNSURE if float(probs[top[0]]) < unsure_below else SURE
        overlay = self.heat_map(pixels, int(top[0])) if heatmap and in_domain else None
        return Prediction(scores, verdict, self.sentence(verdict, scores), domain_score, overlay)

    def heat_map(self, pixels: np.ndarray, class_index: int) -> Image.Image | None:
        """Grad-CAM of class ``class_index`` over the photo the model saw (``pixels``: (1, 3, H, W) float32), by the
        PyTorch model; None where the model has no convolutional feature map (a ViT)."""
        inputs = _to_model(torch.from_numpy(pixels), self.model).requires_grad_(True)  # weights are frozen
        with torch.enable_grad():
            logits, feature_map = self.logits_and_feature_map(inputs)
        if feature_map is None or feature_map.ndim != 4:  # not a CNN feature map (B, C, H, W)
            return None
        cam = grad_cam(logits[0, class_index], feature_map)
        return overlay_heatmap(model_input_image(self.processor, torch.from_numpy(pixels[0])), cam)

    def _scores(self, image: Image.Image, pixels: np.ndarray) -> tuple[np.ndarray, float | None]:
        """The class probabilities (classes,) and the domain score of one photo (``pixels``: it preprocessed)."""
        if self.gate_head is not None:  # one pass of the shared backbone answers both
            logits, pre_logits = self.graph.logits_and_pre_logits(pixels)
            return softmax(logits)[0], self._domain(self.gate_head.imagenet_probabilities(pre_logits))
        return self.engine.probabilities(pixels)[0], self.domain_score(image)

    def domain_score(self, image: Image.Image) -> float | None:
        """How much the photo looks like the training photos to the ImageNet gate; None without calibration."""
        if self.calibration is None:
            return None
        if self.gate_head is not None:
            return self._scores(image, preprocess_batch(self.preprocess, [image]))[1]
        return self._domain(self.gate.imagenet_probabilities([image]))

    def _domain(self, imagenet_probabilities: np.ndarray) -> float:
        return float(domain_scores(imagenet_probabilities, self.calibration.profile)[0])

    def sentence(self, verdict: str, scores: dict[str, float]) -> str:
        (best, p), *rest = scores.items()
        if verdict == OUT_OF_DOMAIN:
            return f"This photo does not look like {self.subject}, so the model gives no answer."
        if verdict == UNSURE:
            runner_up = f" or {rest[0][0]} ({percent(rest[0][1])})" if rest else ""
            return f"The model is unsure: perhaps {best} ({percent(p)}){runner_up}."
        return f"The model is {'very' if p >= VERY_SURE_FROM else 'fairly'} sure this is {best} ({percent(p)})."

    def logits_and_feature_map(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits and the last feature map they were pooled from (None where the model has none)."""
        return adapter_for(self.model).logits_and_feature_map(self.model, pixels)


def shown_probability(p: float) -> float:
    """``p`` as people are shown it: clipped to SHOWN_PROBABILITY_RANGE, so never a flat 0% or 100%.

    The Space's ``gr.Label`` gets these values (:func:`shown_scores`), and :func:`percent` writes them in the
    sentence below it: both screens then print the same whole percent for the same photo.
    """
    low, high = SHOWN_PROBABILITY_RANGE
    return min(max(float(p), low), high)


def shown_scores(scores: dict[str, float]) -> dict[str, float]:
    """Top-k scores (best first, as in :class:`Prediction`) with each probability as people are shown it."""
    return {label: shown_probability(p) for label, p in scores.items()}


def percent(p: float) -> str:
    """A probability for people, as a whole percent from 1% to 99% (0.996 -> "99%", 0.004 -> "1%").

    Rounded half up, exactly as gradio's Label component rounds (``Math.round(confidence * 100)``), so the
    sentence agrees with the label above it; never 100% or 0%, which a model cannot know.
    """
    return f"{math.floor(shown_probability(p) * 100 + 0.5)}%"


def grad_cam(class_logit: torch.Tensor, feature_map: torch.Tensor) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017): feature channels weighted by their mean gradient, positive part, scaled
    to [0, 1]. ``feature_map`` is (1, C, H, W) on any device and in any dtype; returns (H, W) float32 on the CPU.
    """
    (grads,) = torch.autograd.grad(class_logit, feature_map)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # summed in float32: bf16 drops small channels
    cam = torch.relu((weights * feature_map.detach().float()).sum(dim=1))[0]
    top = cam.max()
    return (cam / top if top > 0 else cam).cpu().numpy()


def model_input_image(processor, pixel_values: torch.Tensor) -> Image.Image:
    """The normalized (3, H, W) tensor the model saw, on any device and in any dtype, back as an RGB image
    (the crop, at the model's size)."""
    pixels = pixel_values.detach().float()
    mean, std = (torch.tensor(values, dtype=pixels.dtype, device=pixels.device)[:, None, None]
                 for values in normalization(processor)[:2])  # made where the pixels are: no device mix-up
    pixels = (pixels * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


# dark blue -> cyan -> yellow -> red, like the usual "jet"-style heat maps
_HEAT_COLOURS = np.array([[0, 0, 140], [0, 200, 255], [255, 230, 0], [230, 0, 0]], dtype=np.float32)


def overlay_heatmap(photo: Image.Image, cam: np.ndarray, side: int = HEATMAP_SIDE) -> Image.Image:
    """The heat map blended over the photo: hot regions coloured, cold regions left as they are."""
    photo = np.asarray(photo.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    heat = Image.fromarray(cam.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR)
    heat = np.clip(np.asarray(heat), 0, 1)[..., None]
    stops = np.linspace(0, 1, len(_HEAT_COLOURS))
    colour = np.stack([np.interp(heat[..., 0], stops, _HEAT_COLOURS[:, c]) for c in range(3)], axis=-1)
    alpha = 0.65 * heat
    return Image.fromarray((photo * (1 - alpha) + colour * alpha).round().astype(np.uint8))


def _for_inference(model, device: torch.device):
    model.eval().requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last)  # roughly 1.5x faster convolutions on CPU


def _to_model(pixels: torch.Tensor, model) -> torch.Tensor:
    """``pixels`` on the model's device and in its dtype (a bf16 model refuses float32 photos), channels last."""
    device, dtype = input_device_and_dtype(model)
    return pixels.to(device, dtype).contiguous(memory_format=torch.channels_last)


def _download(repo_id: str) -> Path:
    """A Hub model's files (weights, configs, calibration.json, the exported graph) in the local cache."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", ONNX_FILE]))
