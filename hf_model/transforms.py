"""Train and eval transforms, both derived from the model's saved image processor.

Eval uses the image processor itself, so validation and test see exactly what
``pipeline("image-classification")`` will feed the published model. Training adds the
write-up's augmentations (zoom, rotation, shift, shear, flip, brightness) with torchvision v2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB whatever the file held: EXIF rotation applied; 16-bit, 32-bit and float grey scaled to 8 bits;
    RGBA, LA, P, L, CMYK converted, transparent areas on white."""
    image = to_eight_bit(ImageOps.exif_transpose(image))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent -> white, not black
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


# The ranges grey levels of more than 8 bits usually span: floats in [0, 1], 8-bit and 16-bit levels.
_USUAL_RANGES = (1.0, 255.0, 65535.0)


def to_eight_bit(image: Image.Image) -> Image.Image:
    """Grey of more than 8 bits (modes ``I;16*``, ``I``, ``F``) as an 8-bit ``L`` image; other modes unchanged.

    Pillow's own ``convert`` clips such levels at 255, which turns a 16-bit photo into a white square.
    ``I;16*`` is divided by 257 (65535 -> 255). ``I`` and ``F`` are scaled from the smallest usual range
    that holds every value (0..1, 0..255, 0..65535), or else stretched from their own minimum..maximum.
    """
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    levels = np.asarray(image, dtype=np.float64)
    low, high = float(levels.min(initial=0.0)), float(levels.max(initial=0.0))
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif low >= 0 and high <= _USUAL_RANGES[-1]:
        low, high = 0.0, next(top for top in _USUAL_RANGES if high <= top)
    scaled = (levels - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def normalization(processor) -> tuple[list[float], list[float], InterpolationMode]:
    """Mean, std and resize interpolation of an image processor, read where its class keeps them."""
    read = _NORMALIZATION_READERS.get(type(processor).__name__, _hf_normalization)
    return read(processor)


def _hf_normalization(processor) -> tuple[list[float], list[float], InterpolationMode]:
    """HF-native processors: ``image_mean``, ``image_std`` and a PIL ``resample`` code."""
    names = {0: "nearest", 2: "bilinear", 3: "bicubic"}
    resample = int(getattr(processor, "resample", 3))
    return list(processor.image_mean), list(processor.image_std), InterpolationMode(names.get(resample, "bilinear"))


def _timm_normalization(processor) -> tuple[list[float], list[float], InterpolationMode]:
    """``TimmWrapperImageProcessor``: timm's ``data_config``."""
    cfg = processor.data_config
    return list(cfg["mean"]), list(cfg["std"]), InterpolationMode(cfg.get("interpolation", "bicubic"))


def _efficientnet_normalization(processor) -> tuple[list[float], list[float], InterpolationMode]:
    """transformers' EfficientNet processor, a port of Keras': ``include_top`` divides by std a second
    time, and ``rescale_offset`` maps pixels to [-1, 1] before normalizing. Returned as one mean and std
    on [0, 1] pixels, what ``T.ToDtype(scale=True)`` then ``T.Normalize`` compute.
    """
    mean, std, interpolation = _hf_normalization(processor)
    scale = 255 * processor.rescale_factor  # the processor's pixels per [0, 1] pixel
    offset = 1.0 if processor.rescale_offset else 0.0
    twice = processor.include_top
    return ([(m + offset) / scale for m in mean], [s * (s if twice else 1.0) / scale for s in std], interpolation)


# keyed by class name, so that this module need not import transformers (and, through it, timm)
_NORMALIZATION_READERS = {
    "TimmWrapperImageProcessor": _timm_normalization,
    "EfficientNetImageProcessor": _efficientnet_normalization,
    "EfficientNetImageProcessorPil": _efficientnet_normalization,
}


def build_train_transform(
    processor, image_size: int, *, zoom: float, rotation: float, shift: float, shear: float,
    hflip: bool, brightness: float,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random zoom/rotation/shift/shear/flip/brightness, then the processor's normalization."""
    mean, std, interpolation = normalization(processor)
    steps = [T.RandomResizedCrop(image_size, scale=(zoom, 1.0), interpolation=interpolation, antialias=True)]
    if rotation or shift or shear:
        fill = tuple(round(m * 255) for m in mean)  # pads with the mean colour: zero after normalizing
        steps.append(T.RandomAffine(degrees=rotation, translate=(shift, shift) if shift else None,
                                    shear=shear or None, interpolation=InterpolationMode.BILINEAR, fill=fill))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if brightness:
        steps.append(T.ColorJitter(brightness=brightness))
    steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    pipeline = T.Compose(steps)
    return lambda image: pipeline(to_rgb(image))


def build_eval_transform(processor) -> Callable[[Image.Image], torch.Tensor]:
    """Exactly the processor's own preprocessing, one image at a time."""
    return lambda image: processor(to_rgb(image), return_tensors="pt")["pixel_values"][0]


def batch_transform(transform: Callable[[Image.Image], torch.Tensor]):
    """Wrap a per-image transform for ``Dataset.with_transform`` (runs lazily, per batch)."""

    def apply(batch: dict) -> dict:
        return {"pixel_values": [transform(image) for image in batch["image"]], "labels": batch["label"]}

    return apply


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack a batch in channels_last, which roughly doubles conv speed on CPU."""
    pixels = torch.stack([e["pixel_values"] for e in examples]).contiguous(memory_format=torch.channels_last)
    return {"pixel_values": pixels, "labels": torch.tensor([e["labels"] for e in examples])}


def test_time_views(tta: bool) -> list[Callable[[Image.Image], Image.Image]]:
    """Test-time augmentation, defined once: the photo itself, plus its mirror image when ``tta``.

    The mirror is taken of the upright photo (EXIF rotation applied first), so it mirrors what the
    model sees; the plain view is left to the eval transform, which makes it upright RGB itself.
    """
    views = [lambda image: image]
    if tta:
        views.append(lambda image: to_rgb(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return views
