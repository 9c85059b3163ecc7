"""Which parameters train in each stage of fine-tuning.

Stage 1 trains only the new head on a frozen backbone; stage 2 unfreezes the top blocks. A
"block" is a whole unit of the network (an MBConv block, a ConvNeXt layer, the head conv), never
a slice of one; which units a model has, and where its classifier is, its adapter says
(:mod:`hf_model.adapters`). BatchNorm stays frozen and in eval mode throughout: its statistics
were fitted on ImageNet and a few hundred photos in small batches would only make them noisier.
"""

from __future__ import annotations

from torch import nn

from hf_model.adapters import adapter_for


def set_trainable(model: nn.Module, top_blocks: int, keep_batchnorm_frozen: bool = True) -> dict[str, int]:
    """Train the head plus the top ``top_blocks`` blocks (-1: all); freeze the rest (and BatchNorm).

    Returns counts of trainable and frozen parameters, for the log.
    """
    adapter = adapter_for(model)
    model.requires_grad_(False)
    blocks = adapter.blocks(model)
    chosen = blocks if top_blocks < 0 else blocks[len(blocks) - top_blocks:] if top_blocks else []
    for block in chosen:
        block.requires_grad_(True)
    adapter.classifier(model).requires_grad_(True)
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
