"""The lean preprocessing equals the model's own image processor; the fingerprint follows the weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from hf_model.images import list_images
from hf_model.runtime import input_size, lean_preprocessing, softmax, weights_fingerprint
from hf_model.transforms import to_rgb

LITE1_CFG = {  # what the offline EfficientNet-Lite1 backbone's config.json holds (hf_model.backbones)
    "input_size": [3, 240, 240], "interpolation": "bicubic", "crop_pct": 0.882, "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 2,
}
IMAGENET_CFG = {**LITE1_CFG, "input_size": [3, 96, 96], "interpolation": "bilinear", "crop_pct": 0.95,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# (width, height): landscape, portrait, one pixel off square, far wider than tall, smaller than the crop
SIZES = [(120, 90), (90, 120), (241, 240), (700, 40), (30, 30)]


def timm_processor(cfg: dict):
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture="tf_efficientnet_lite1")


def noisy(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def reference(processor, image: Image.Image) -> np.ndarray:
    """What pipeline() feeds the model: the processor's own output for the upright RGB photo."""
    return processor(to_rgb(image), return_tensors="pt")["pixel_values"][0].numpy()


@pytest.mark.parametrize("cfg", [LITE1_CFG, IMAGENET_CFG], ids=["lite1_bicubic", "imagenet_bilinear"])
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_lean_preprocessing_of_a_timm_model_equals_its_processor_bit_for_bit(cfg, size):
    processor = timm_processor(cfg)
    image = noisy(size)
    pixels = lean_preprocessing(processor)(image)
    assert pixels.dtype == np.float32 and pixels.shape == tuple(cfg["input_size"])
    np.testing.assert_array_equal(pixels, reference(processor, image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_lean_preprocessing_takes_any_colour_mode_as_the_processor_does(mode):
    processor = timm_processor(LITE1_CFG)
    image = noisy((100, 80), mode=mode)
    np.testing.assert_array_equal(lean_preprocessing(processor)(image), reference(processor, image))


def test_a_processor_of_another_kind_is_used_as_it_is():
    from transformers import ConvNextImageProcessor

    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    image = noisy((120, 90))
    pixels = lean_preprocessing(processor)(image)
    assert pixels.shape == (3, 32, 32)
    np.testing.assert_array_equal(pixels, reference(processor, image))


def test_input_size_is_the_crop_the_model_is_fed():
    assert input_size(lean_preprocessing(timm_processor(LITE1_CFG))) == (240, 240)
    assert input_size(lean_preprocessing(timm_processor(IMAGENET_CFG))) == (96, 96)


def test_softmax_equals_torchs():
    import torch

    logits = np.random.default_rng(0).normal(0, 30, (4, 7)).astype(np.float32)
    np.testing.assert_allclose(softmax(logits), torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-7)


def test_the_weights_fingerprint_changes_with_the_weights_and_only_with_them(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    before = weights_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"id2label": {}}')
    assert weights_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weights trained again")
    assert weights_fingerprint(tmp_path) != before


@pytest.mark.real_data
@pytest.mark.parametrize("cfg", [LITE1_CFG, {**LITE1_CFG, "input_size": [3, 224, 224], "crop_pct": 0.875}],
                         ids=["lite1_240", "lite0_224"])
def test_lean_preprocessing_equals_the_processor_on_real_photos(cfg):
    processor = timm_processor(cfg)
    preprocess = lean_preprocessing(processor)
    files = [path for folder in ("bedrooms", "rooms_other", "birds") for path in list_images(SHARED_DATA / folder)[:40]]
    worst = max(float(np.abs(preprocess(Image.open(path)) - reference(processor, Image.open(path))).max())
                for path in files)
    assert len(files) == 120 and worst <= 1e-3


def test_onnx_runtime_threads_sleep_between_runs_so_pytorch_gets_the_cores(exported_tiny_convnext):
    from hf_model.runtime import OnnxModel

    graph = OnnxModel(exported_tiny_convnext / "model.onnx")
    assert graph.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
