import pytest
import torch
from torch import nn

from hf_model.adapters import adapter_for
from hf_model.backbones import load_model, resolve_backbone
from hf_model.freezing import set_trainable


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    source = resolve_backbone("efficientnet-lite0", cache_dir=tmp_path_factory.mktemp("cache"))
    return load_model(source, ["a", "b"], 64)


def _trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _unit_modules(model) -> list[set[str]]:
    """Each block as the names of the modules whose parameters it holds."""
    names = {id(p): name.rsplit(".", 1)[0] for name, p in model.named_parameters()}
    return [{names[id(p)] for p in block.parameters()} for block in adapter_for(model).blocks(model)]


def test_lite0_units_are_the_stem_each_mbconv_block_and_the_head_conv(lite0):
    units = _unit_modules(lite0)
    mbconv = [f"timm_model.blocks.{s}.{j}" for s, depth in enumerate([1, 2, 2, 3, 3, 4, 1]) for j in range(depth)]
    assert len(units) == 18
    assert units[0] == {"timm_model.conv_stem", "timm_model.bn1"}
    assert [{name.rsplit(".", 1)[0] for name in unit} for unit in units[1:17]] == [{block} for block in mbconv]
    assert units[17] == {"timm_model.conv_head", "timm_model.bn2"}  # timm's group_matcher merges it into the last


def test_stage1_trains_only_the_head(lite0):
    counts = set_trainable(lite0, 0)
    assert _trainable_names(lite0) == {"timm_model.classifier.weight", "timm_model.classifier.bias"}
    assert counts["trainable"] == 1280 * 2 + 2


def test_stage2_unfreezes_whole_top_blocks_but_not_batchnorm(lite0):
    set_trainable(lite0, 2)
    names = _trainable_names(lite0)
    assert any(n.startswith("timm_model.conv_head.") for n in names)
    assert any(n.startswith("timm_model.blocks.6.0.conv_pw.") for n in names)  # the whole last block
    assert {n for n in names if n.startswith("timm_model.blocks.6.0.")} == {
        "timm_model.blocks.6.0.conv_pw.weight", "timm_model.blocks.6.0.conv_dw.weight",
        "timm_model.blocks.6.0.conv_pwl.weight"}  # its three convs, none of its BatchNorms
    assert not any(n.startswith("timm_model.blocks.5.") for n in names)
    assert not any("bn" in n for n in names)


def test_batchnorm_stays_in_eval_mode_through_training(lite0):
    set_trainable(lite0, -1)
    lite0.train()  # what Trainer does at every step
    bn = lite0.timm_model.bn2
    before = bn.running_mean.clone()
    lite0(pixel_values=torch.randn(4, 3, 64, 64) * 3)
    assert not bn.training
    assert torch.equal(bn.running_mean, before)
    assert lite0.timm_model.blocks[6][0].conv_pw.weight.requires_grad


def test_hf_native_convnext_blocks_and_head(tiny_convnext):
    model = load_model(tiny_convnext, ["a", "b"])
    blocks = adapter_for(model).blocks(model)
    assert blocks[0] is model.convnext.embeddings and blocks[-1] is model.convnext.layernorm
    set_trainable(model, 1)
    names = _trainable_names(model)
    assert names == {"classifier.weight", "classifier.bias", "convnext.layernorm.weight", "convnext.layernorm.bias"}
    assert isinstance(adapter_for(model).classifier(model), nn.Linear)


def test_hf_native_efficientnet_blocks():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    config = EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=32,
                                num_labels=3)
    model = EfficientNetForImageClassification(config)
    set_trainable(model, 1)
    names = _trainable_names(model)
    assert "efficientnet.encoder.top_conv.weight" in names and "classifier.weight" in names
    assert not any("top_bn" in n or "blocks.0." in n for n in names)
