"""Which parameters train in each stage of fine-tuning.

Stage 1 trains only the new head on a frozen backbone; stage 2 unfreezes the top blocks. A
"block" is a whole unit of the network (an MBConv block, a ConvNeXt layer, the head conv), never
a slice of one. BatchNorm stays frozen and in eval mode throughout: its statistics were fitted
on ImageNet and a few hundred photos in small batches would only make them noisier.
"""

from __future__ import annotations

from torch import nn


def classifier_of(model: nn.Module) -> nn.Module:
    """The final linear layer that maps pooled features to class logits."""
    if hasattr(model, "timm_model"):
        return model.timm_model.get_classifier()
    if isinstance(getattr(model, "classifier", None), nn.Module):
        return model.classifier
    raise ValueError(f"don't know where the classifier of {type(model).__name__} is")


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output, each a unit that is frozen or trained whole."""
    if hasattr(model, "timm_model"):
        net = model.timm_model
        if hasattr(net, "blocks") and hasattr(net, "conv_head"):  # timm EfficientNet family
            return [nn.ModuleList([net.conv_stem, net.bn1]), *[b for stage in net.blocks for b in stage],
                    nn.ModuleList([net.conv_head, net.bn2])]
        return [m for name, m in net.named_children() if m is not net.get_classifier()]
    if hasattr(model, "efficientnet"):  # transformers EfficientNet
        enc = model.efficientnet.encoder
        return [model.efficientnet.embeddings, *enc.blocks, nn.ModuleList([enc.top_conv, enc.top_bn])]
    if hasattr(model, "convnext"):  # transformers ConvNeXt
        body = model.convnext
        layers = [layer for stage in body.encoder.stages for layer in [stage.downsampling_layer, *stage.layers]]
        return [body.embeddings, *layers, body.layernorm]
    base = getattr(model, model.base_model_prefix)
    return list(base.children())


def set_trainable(model: nn.Module, top_blocks: int, keep_batchnorm_frozen: bool = True) -> dict[str, int]:
    """Train the head plus the top ``top_blocks`` blocks (-1: all); freeze the rest (and BatchNorm).

    Returns counts of trainable and frozen parameters, for the log.
    """
    model.requires_grad_(False)
    blocks = backbone_blocks(model)
    chosen = blocks if top_blocks < 0 else blocks[len(blocks) - top_blocks:] if top_blocks else []
    for block in chosen:
        block.requires_grad_(True)
    classifier_of(model).requires_grad_(True)
    if keep_batchnorm_frozen:
        freeze_batchnorm(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable,
            "blocks": len(chosen), "of_blocks": len(blocks)}


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers keep their running statistics and weights, even when ``model.train()`` runs."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.requires_grad_(False)
            module.eval()
            if not getattr(module, "_kept_in_eval", False):
                module.register_forward_pre_hook(_stay_in_eval)
                module._kept_in_eval = True


def _stay_in_eval(module: nn.Module, _inputs) -> None:
    module.training = False  # Trainer calls model.train() every step; BN must not follow
