"""Every architecture in hf_model.adapters.ADAPTERS passes the same checks, on a tiny model made here.

Registering an architecture means adding its tiny model to TINY_MODELS; every test below then runs on it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hf_model.adapters import ADAPTERS, adapter_for
from hf_model.freezing import set_trainable
from hf_model.serving import grad_cam
from hf_model.transforms import normalization

LABELS = ["Modern", "Old", "Rustic"]
LABEL_MAPS = {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)),
              "label2id": {name: i for i, name in enumerate(LABELS)}}
SIDE = 64  # stride 32 leaves a 2 x 2 feature map: enough for a heat map


def tiny_timm_wrapper():
    """A random-init EfficientNet-Lite0 behind TimmWrapperForImageClassification, as our offline backbones are."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    arch = "tf_efficientnet_lite0"
    config = TimmWrapperConfig(architecture=arch, pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict(),
                               **LABEL_MAPS)
    return TimmWrapperForImageClassification(config), TimmWrapperImageProcessor(
        pretrained_cfg=config.pretrained_cfg, architecture=arch)


def tiny_efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

    config = EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
                                **LABEL_MAPS)
    processor = EfficientNetImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    return EfficientNetForImageClassification(config), processor


def tiny_convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **LABEL_MAPS)
    return ConvNextForImageClassification(config), ConvNextImageProcessor(size={"shortest_edge": 32})


def tiny_resnet():
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], **LABEL_MAPS)
    return ResNetForImageClassification(config), ConvNextImageProcessor(size={"shortest_edge": 32})  # ResNet's own


# model_type -> a tiny random-init model of it and the image processor it is served with
TINY_MODELS: dict[str, Callable[[], tuple[nn.Module, object]]] = {
    "timm_wrapper": tiny_timm_wrapper,
    "efficientnet": tiny_efficientnet,
    "convnext": tiny_convnext,
    "resnet": tiny_resnet,
}


@pytest.fixture(params=sorted(ADAPTERS))
def model_type(request) -> str:
    return request.param


@pytest.fixture
def tiny(model_type):
    """(model, processor) of ``model_type``, in eval mode, with weights that keep the signal alive."""
    torch.manual_seed(0)
    model, processor = TINY_MODELS[model_type]()
    with torch.no_grad():  # the default init (std 0.02 everywhere) fades to an all-zero feature map
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
    return model.eval(), processor


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))


def save(model, processor, folder) -> str:
    """Saved the way training saves: the processor beside the model only where the adapter says so."""
    model.save_pretrained(folder)
    if adapter_for(model).saves_processor:
        processor.save_pretrained(folder)
    return str(folder)


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def test_every_registered_architecture_has_a_tiny_model():
    assert set(TINY_MODELS) == set(ADAPTERS), "add a tiny model of each new ADAPTERS entry to TINY_MODELS"


def test_classifier_is_the_linear_layer_that_gives_the_logits(tiny):
    model, _ = tiny
    head = adapter_for(model).classifier(model)
    assert isinstance(head, nn.Linear) and head.out_features == len(LABELS)
    outputs = []
    hook = head.register_forward_hook(lambda _m, _inputs, output: outputs.append(output))
    with torch.no_grad():
        logits = model(pixels()).logits
    hook.remove()
    torch.testing.assert_close(outputs[0], logits)


def test_blocks_are_disjoint_ordered_and_cover_the_backbone(tiny):
    model, _ = tiny
    adapter = adapter_for(model)
    blocks = [list(block.parameters()) for block in adapter.blocks(model)]
    flat = [id(p) for block in blocks for p in block]
    assert len(flat) == len(set(flat)), "a parameter is in two blocks"
    assert set(flat) == ids(model.parameters()) - ids(adapter.classifier(model).parameters())
    ran_at = forward_order(model)
    spans = [(min(ran_at[id(p)] for p in block), max(ran_at[id(p)] for p in block)) for block in blocks if block]
    assert all(earlier[1] < later[0] for earlier, later in zip(spans, spans[1:])), "blocks not in input->output order"


def forward_order(model: nn.Module) -> dict[int, int]:
    """For each parameter (by id): when, in one forward pass, the module that holds it started."""
    started: dict[nn.Module, int] = {}

    def note(module: nn.Module, _inputs) -> None:
        started.setdefault(module, len(started))

    hooks = [module.register_forward_pre_hook(note) for module in model.modules()]
    with torch.no_grad():
        model(pixels())
    for hook in hooks:
        hook.remove()
    modules = dict(model.named_modules())
    return {id(p): started[modules[name.rpartition(".")[0]]] for name, p in model.named_parameters()}


def test_one_top_block_trains_the_head_and_that_block_without_batchnorm(tiny):
    model, _ = tiny
    adapter = adapter_for(model)
    set_trainable(model, 1)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batchnorm = ids(p for m in norms for p in m.parameters())
    head = ids(adapter.classifier(model).parameters())
    top_block = ids(adapter.blocks(model)[-1].parameters()) - batchnorm
    assert top_block, "the top block has nothing to train"
    assert ids(p for p in model.parameters() if p.requires_grad) == head | top_block


def test_grad_cam_explains_the_logits_the_model_gives(tiny):
    model, _ = tiny
    adapter = adapter_for(model)
    logits, feature_map = adapter.logits_and_feature_map(model, pixels())
    torch.testing.assert_close(logits, model(pixels()).logits)
    assert feature_map.ndim == 4 and feature_map.shape[0] == 2
    heat_maps = []
    for c in range(len(LABELS)):  # a fresh forward per class: grad_cam consumes the graph
        logits, feature_map = adapter.logits_and_feature_map(model, pixels(1))
        heat_maps.append(grad_cam(logits[0, c], feature_map))
    assert all(cam.shape == tuple(feature_map.shape[2:]) for cam in heat_maps)
    assert max(cam.max() for cam in heat_maps) == 1.0, "every heat map is empty"


def test_saved_model_answers_with_its_label_names_through_pipeline(tiny, tmp_path):
    from transformers import pipeline

    answer = pipeline("image-classification", model=save(*tiny, tmp_path), device=-1)(photo(), top_k=len(LABELS))
    assert sorted(a["label"] for a in answer) == sorted(LABELS)
    assert sum(a["score"] for a in answer) == pytest.approx(1.0, abs=1e-5)


def test_reloaded_processor_is_sized_for_training_and_normalizes_as_it_says(tiny, tmp_path):
    from transformers import AutoConfig

    model, processor = tiny
    adapter = adapter_for(model)
    adapter.set_image_size(model, 48)
    folder = save(model, processor, tmp_path)
    reloaded = adapter.load_processor(folder, AutoConfig.from_pretrained(folder), 48)
    grey = reloaded(Image.new("RGB", (80, 60), (128, 128, 128)), return_tensors="pt")["pixel_values"][0]
    assert grey.shape == (3, 48, 48)
    mean, std, _ = normalization(reloaded)
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(grey.mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_image_size_is_the_side_of_the_photos_the_processor_feeds_the_model(tiny, tmp_path):
    from transformers import AutoConfig

    model, processor = tiny
    adapter = adapter_for(model)
    adapter.set_image_size(model, 48)
    folder = save(model, processor, tmp_path)
    reloaded = adapter.load_processor(folder, AutoConfig.from_pretrained(folder), 48)
    fed = reloaded(photo(), return_tensors="pt")["pixel_values"]
    assert adapter.image_size(reloaded) == fed.shape[-1] == fed.shape[-2] == 48


def test_adapter_is_found_from_a_model_its_config_or_its_model_type(tiny, model_type):
    model, _ = tiny
    assert adapter_for(model) is adapter_for(model.config) is adapter_for(model_type) is ADAPTERS[model_type]


def test_unregistered_architecture_without_a_classifier_is_a_clear_error():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=2)
    model = DeiTForImageClassificationWithTeacher(config)  # two heads, neither called "classifier"
    with pytest.raises(ValueError, match=r"'deit'.*add an entry for 'deit' to ADAPTERS in hf_model/adapters\.py"):
        adapter_for(model).classifier(model)


def test_unregistered_hf_native_architecture_gets_the_generic_adapter():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=2)
    model = MobileNetV2ForImageClassification(config).eval()
    adapter = adapter_for(model)
    assert "mobilenet_v2" not in ADAPTERS and adapter.classifier(model) is model.classifier
    assert adapter.blocks(model) == list(model.mobilenet_v2.children())
    logits, feature_map = adapter.logits_and_feature_map(model, pixels())
    torch.testing.assert_close(logits, model(pixels()).logits)
    assert feature_map.ndim == 4 and feature_map.shape[0] == 2


def test_a_timm_backbone_with_classes_of_its_own_names_the_new_ones(tmp_path):
    """TimmWrapperConfig saves the label_names it was loaded with; a re-headed model must not keep them."""
    from transformers import pipeline

    from hf_model.backbones import load_model

    model, processor = tiny_timm_wrapper()
    model.save_pretrained(tmp_path / "backbone")  # a timm model with classes: Modern, Old, Rustic
    for labels in (["cat", "dog"], ["x", "y", "z"]):  # fewer classes, and as many
        load_model(str(tmp_path / "backbone"), labels, SIDE).save_pretrained(tmp_path / "run")
        answer = pipeline("image-classification", model=str(tmp_path / "run"), device=-1)(photo(), top_k=5)
        assert sorted(a["label"] for a in answer) == labels
