"""What the package needs to know about each architecture, in one registry keyed by ``config.model_type``.

An :class:`Adapter` answers, for one kind of model: where the classifier layer is, which backbone units
are frozen or trained whole (:mod:`hf_model.freezing`), which feature map Grad-CAM explains
(:mod:`hf_model.serving`), and how preprocessing is sized, loaded and saved (:mod:`hf_model.backbones`).
Like fastai's ``model_meta[arch]``: supporting a new architecture is one entry in :data:`ADAPTERS`, and
``tests/test_adapters.py`` then runs every check on it.

- ``timm_wrapper``: any timm model behind transformers' ``TimmWrapperForImageClassification``
  (the offline EfficientNet-Lite backbones).
- ``efficientnet``, ``convnext``, ``resnet``: transformers' own EfficientNet, ConvNeXt and ResNet (Hub backbones).
- Any other model type gets the HF-native defaults of :class:`Adapter`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

LogitsAndFeatureMap = tuple[torch.Tensor, torch.Tensor | None]


class Adapter:
    """One architecture's answers. The defaults fit transformers' own image classifiers: a base model
    whose pooled output goes through ``model.classifier``; entries override what differs.
    """

    saves_processor = True  # preprocessor_config.json is saved beside the model, where pipeline() reads it

    def classifier(self, model: nn.Module) -> nn.Module:
        """The final layer that maps pooled features to class logits."""
        head = getattr(model, "classifier", None)
        if not isinstance(head, nn.Module):
            model_type = model.config.model_type
            raise ValueError(
                f"don't know where the classifier of {type(model).__name__} (model_type {model_type!r}) is: "
                f"add an entry for {model_type!r} to ADAPTERS in hf_model/adapters.py"
            )
        return head

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The backbone's units from input to output, each frozen or trained whole."""
        return list(model.base_model.children())

    def logits_and_feature_map(self, model: nn.Module, pixels: torch.Tensor) -> LogitsAndFeatureMap:
        """The logits and the last (B, C, H, W) feature map they were pooled from (None where there is none)."""
        outputs = model.base_model(pixels)
        pooled = getattr(outputs, "pooler_output", None)
        head = getattr(model, "classifier", None)
        if pooled is None or not isinstance(head, nn.Module):  # e.g. ViT's head reads a token: no heat map
            return model(pixels).logits, None
        feature_map = outputs.last_hidden_state
        return head(pooled), (feature_map if feature_map.ndim == 4 else None)

    def load_processor(self, source: str, config, image_size: int | None = None):
        """The model's saved image processor, resized to ``image_size`` (the training size) where it feeds another."""
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source)
        if image_size and image_size != self.image_size(processor):  # e.g. resize 256 then crop 224 stays as it is
            if "shortest_edge" in processor.size:
                processor.size = {"shortest_edge": image_size}
            else:
                processor.size = {"height": image_size, "width": image_size}
            if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
                processor.crop_size = {"height": image_size, "width": image_size}
        return processor

    def image_size(self, processor) -> int:
        """The side in pixels of the square photos ``processor`` feeds the model: its crop if it crops, else resize."""
        size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
        return size.get("shortest_edge") or size["height"]

    def set_image_size(self, model: nn.Module, image_size: int) -> None:
        """Record the training image size in the model's config; HF-native models keep it in the processor."""

    def name_classes(self, model: nn.Module, labels: list[str]) -> None:
        """Make the saved config name ``labels``; HF-native configs do with ``id2label`` alone."""

    def portable_config(self, config: dict) -> dict:
        """A saved ``config.json`` (as a dict) as it should be published: what other tools read right.

        HF-native configs already name their classes in ``id2label``: returned as they are.
        """
        return config


class TimmWrapperAdapter(Adapter):
    """Any timm model inside ``TimmWrapperForImageClassification``; timm's own metadata does the work."""

    saves_processor = False  # preprocessing lives in config.json (pretrained_cfg); the processor refuses to save

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.timm_model.get_classifier()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """timm's ``group_matcher`` units (stem, each block, ...), classifier excluded, as parameter lists."""
        from timm.models import group_parameters  # timm takes seconds to import; only timm models need it

        net = model.timm_model
        head = {id(p) for p in net.get_classifier().parameters()}
        params = dict(net.named_parameters())
        groups = group_parameters(net, _unmerged(net.group_matcher(coarse=False)))
        units = [[params[name] for name in names if id(params[name]) not in head] for names in groups.values()]
        return [nn.ParameterList(unit) for unit in units if unit]

    def logits_and_feature_map(self, model: nn.Module, pixels: torch.Tensor) -> LogitsAndFeatureMap:
        net = model.timm_model
        features = net.forward_features(pixels)  # (B, C, H, W) for CNNs, (B, tokens, C) for ViTs
        return net.forward_head(features), (features if features.ndim == 4 else None)

    def load_processor(self, source: str, config, image_size: int | None = None):
        """Rebuilt from ``config.pretrained_cfg``, where :meth:`set_image_size` recorded the size."""
        from transformers import TimmWrapperImageProcessor

        return TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)

    def image_size(self, processor) -> int:
        """timm's ``data_config`` input size: what the processor resizes and crops to."""
        return processor.data_config["input_size"][-1]

    def name_classes(self, model: nn.Module, labels: list[str]) -> None:
        # note: TimmWrapperConfig saves the label_names it was loaded with and reads them back before id2label,
        # so a backbone that had classes (a timm Hub model, one of our runs) would name the new ones wrongly
        model.config.label_names = list(labels)

    def portable_config(self, config: dict) -> dict:
        """The classes as ``id2label`` / ``label2id`` for transformers and in ``pretrained_cfg`` for timm.

        ``TimmWrapperConfig`` keeps the ``label_names`` it was loaded with and saves them again (transformers 5.24),
        so the standard recipe for new classes (``AutoConfig.from_pretrained(dir, num_labels=3, id2label=...)``,
        then ``save_pretrained``) would write the old names, and the new model would answer ``LABEL_0``. Without a
        top-level ``label_names`` the file loads ``id2label`` like any transformers config and saves the new names;
        timm (``create_model("hf-hub:...")``) reads the names from ``pretrained_cfg``. A ``model_args`` of ``null``
        is left out: timm 1.0 reads it as a dict.
        """
        from timm.data import infer_imagenet_subset

        config = dict(config)
        if config.get("model_args", {}) is None:
            del config["model_args"]
        if infer_imagenet_subset(config):  # 1000 (or 11k, 21k) classes: without label_names, ImageNet's would load
            return config
        names = config.pop("label_names", None)
        if names is not None:
            config["id2label"] = {str(i): name for i, name in enumerate(names)}
            config["label2id"] = {name: i for i, name in enumerate(names)}
            config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), "label_names": names}
        return config

    def set_image_size(self, model: nn.Module, image_size: int) -> None:
        # note: assign a new dict; the saved config.json (and so pipeline()) reads pretrained_cfg
        cfg = dict(model.config.pretrained_cfg)
        cfg["input_size"] = [3, image_size, image_size]
        cfg["pool_size"] = [image_size // 32, image_size // 32]
        model.config.pretrained_cfg = cfg


class EfficientNetAdapter(Adapter):
    """transformers' EfficientNet: the stem, each MBConv block, then the head conv as one unit."""

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        encoder = model.efficientnet.encoder
        return [model.efficientnet.embeddings, *encoder.blocks, nn.ModuleList([encoder.top_conv, encoder.top_bn])]


class ConvNextAdapter(Adapter):
    """transformers' ConvNeXt: the stem, per stage its downsampling layer then each layer, the final norm."""

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        body = model.convnext
        layers = [layer for stage in body.encoder.stages for layer in [stage.downsampling_layer, *stage.layers]]
        return [body.embeddings, *layers, body.layernorm]


class ResNetAdapter(Adapter):
    """transformers' ResNet: the stem, then each residual layer of each stage; the head is Flatten + Linear."""

    def classifier(self, model: nn.Module) -> nn.Module:
        return model.classifier[-1]

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        body = model.resnet
        return [body.embedder, *(layer for stage in body.encoder.stages for layer in stage.layers)]


ADAPTERS: dict[str, Adapter] = {
    "timm_wrapper": TimmWrapperAdapter(),
    "efficientnet": EfficientNetAdapter(),
    "convnext": ConvNextAdapter(),
    "resnet": ResNetAdapter(),
}
HF_NATIVE = Adapter()  # any other transformers image classifier


def adapter_for(model_or_config) -> Adapter:
    """The adapter of a model, a model config or a ``model_type`` string; HF-native defaults if unregistered."""
    if isinstance(model_or_config, nn.Module):
        model_or_config = model_or_config.config
    model_type = model_or_config if isinstance(model_or_config, str) else model_or_config.model_type
    return ADAPTERS.get(model_type, HF_NATIVE)


def _unmerged(matcher):
    """timm's group matcher with "merge into the previous group" entries made groups of their own.

    timm folds layers that follow the last block into it (``MATCH_PREV_GROUP``: EfficientNet's
    conv_head/bn2, a ViT's final norm). Here they stay a unit of their own, so that training "the top
    block" of EfficientNet-Lite means its head conv alone, as it always has. Order is unchanged.
    """
    from timm.models._manipulate import MATCH_PREV_GROUP

    if not isinstance(matcher, dict):
        return matcher  # a function matcher: its groups as timm makes them

    def unmerge(spec):
        if not isinstance(spec, (list, tuple)):
            return spec
        # (99999, 0) sorts where (99999,) did, but is no longer the merge marker
        return [(regex, (*suffix, 0) if suffix == MATCH_PREV_GROUP else suffix) for regex, suffix in spec]

    return {name: unmerge(spec) for name, spec in matcher.items()}


def write_portable_config(folder: str | Path) -> None:
    """Rewrite ``folder/config.json`` as :meth:`Adapter.portable_config` says (atomically; unchanged files stay)."""
    from hf_model.atomic import write_json_atomic

    path = Path(folder) / "config.json"
    raw = json.loads(path.read_text())
    portable = adapter_for(raw.get("model_type", "")).portable_config(raw)
    if portable != raw:
        write_json_atomic(path, portable)
