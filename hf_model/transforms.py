"""Train and eval transforms, both derived from the model's saved image processor.

Eval uses the image processor itself, so validation and test see exactly what
``pipeline("image-classification")`` will feed the published model. Training adds the
write-up's augmentations (zoom, rotation, shift, shear, flip, brightness) with torchvision v2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB whatever the file held: EXIF rotation applied; RGBA, P, L, CMYK converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent -> white, not black
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def normalization(processor) -> tuple[list[float], list[float], InterpolationMode]:
    """Mean, std and resize interpolation of a timm or HF-native image processor."""
    if hasattr(processor, "data_config"):  # TimmWrapperImageProcessor
        cfg = processor.data_config
        return list(cfg["mean"]), list(cfg["std"]), InterpolationMode(cfg.get("interpolation", "bicubic"))
    resample = getattr(processor, "resample", 3)
    names = {0: "nearest", 2: "bilinear", 3: "bicubic"}
    return (list(processor.image_mean), list(processor.image_std),
            InterpolationMode(names.get(int(resample), "bilinear")))


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
