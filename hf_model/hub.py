"""Publish to the Hugging Face Hub: a trained model, a dataset, or the Space.

``hf-model publish model|dataset|space --repo_id user/name ...`` always builds the repo folder
locally first (``--dry_run`` stops there and prints where), then uploads it as one commit:
``HfApi.create_repo(exist_ok=True)`` followed by one ``upload_folder``. A commit lands whole or
not at all, so a failed upload leaves the repo as it was, and the error says which step failed.

- model: weights (safetensors), ``config.json`` with the class names, the image processor, the
  model card and plots from the training folder; never checkpoints or pickles.
- dataset: the ``DatasetDict`` as Parquet shards in the Hub layout (``data/<split>-00000-of-00001.parquet``,
  images embedded as bytes, row groups the dataset viewer reads) plus the card from
  ``datasets_cards/<name>/README.md`` with its ``configs`` and ``dataset_info`` (class names, split sizes)
  filled in from the data.
- space: ``space/`` with the chosen model ids written into its README (``models:``) and set as
  the Space variables the app reads (``BEDROOM_MODEL``, ``BIRD_MODEL``); when the app imports
  ``hf_model`` and its requirements.txt does not install it, the package source goes along.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from huggingface_hub import DatasetCard, HfApi, ModelCard, SpaceCard, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled

from hf_model.adapters import adapter_for, write_portable_config
from hf_model.atomic import write_json_atomic
from hf_model.config import DEFAULT_SEED, DEFAULT_SPLIT_FRACTIONS, RUN_CONFIG_FILE, TOP_K, TrainConfig, load_run_config
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.images import list_images
from hf_model.public_paths import LocalPaths, is_hub_repo_id
from hf_model.reports import model_files, write_run_card
from hf_model.run_folder import require_finished
from hf_model.serving import CALIBRATION_FILE
from hf_model.snippets import point_at_repo
from hf_model.space_tasks import MAX_EXAMPLES, TASKS

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_ROOT = Path("runs/hub")  # gitignored; each default build folder is replaced on the next build
CARDS_DIR = PROJECT_ROOT / "datasets_cards"

# What a trained folder contributes to the model repo. Never checkpoint-*/ (optimizer state) or
# training_args.bin (a pickle, which the Hub flags as unsafe).
MODEL_FILE_PATTERNS = (
    "config.json", "*.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
    "README.md", "*_results.json", "hf_model_config.json", "*.png",
    CALIBRATION_FILE,  # the Space's out-of-domain threshold (hf-model calibrate)
    "*.onnx",  # hf-model export: the graph the Space serves with ONNX Runtime
)
# the files of a model repo hf-model writes itself (not transformers'), published without the machine's paths
OWN_JSON_FILES = (RUN_CONFIG_FILE, CALIBRATION_FILE, "*_results.json")
PIPELINE_SNIPPET = re.compile(r'pipeline\("image-classification", model="[^"]*"\)')  # the card's usage line
SPACE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".gradio", "flagged", ".pytest_cache", ".env")
SPACE_ID_PLACEHOLDER = "hf-model-demo/photo-demo"  # the Space id in space/README.md's usage snippet
# Space variable (what space/app.py reads) -> CLI flag of `hf-model publish space`
SPACE_MODEL_VARIABLES = {task.env_var: task.flag for task in TASKS}  # {"BEDROOM_MODEL": "bedroom_model", ...}
DATASET_CARD_FIELDS = ("license", "task_categories", "pretty_name")
MAX_SHARD_BYTES = 500 * 10**6  # what datasets' push_to_hub uses
ROWS_PER_ROW_GROUP = 100  # small row groups let the dataset viewer read a page of images without the whole shard
PARQUET_HEADROOM = 0.01  # a row group's Parquet bytes exceed its Arrow bytes by page headers (about 0.01%)
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]


class RepoFolderError(UserInputError, ValueError):
    """The repo folder cannot be built from what was given (a card, a Space, a dataset); nothing was uploaded."""


class PublishError(UserInputError, RuntimeError):
    """Publishing stopped; the message says what was and was not uploaded, and what to do."""


@dataclass
class Published:
    folder: Path  # the repo folder as built locally
    url: str | None  # the commit on the Hub; None for a dry run


# ---------------------------------------------------------------------------------------- CLI


@command("hf-model publish")
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    token = None if args.dry_run else resolve_token()  # before building: a dataset takes a while
    common = {"token": token, "private": args.private, "dry_run": args.dry_run, "out_dir": args.out_dir}
    if args.kind == "model":
        result = publish_model(args.model_dir, args.repo_id, **common)
    elif args.kind == "dataset":
        dataset_dict, card = load_dataset_to_publish(args.source, args.card, args.split_fractions, args.seed,
                                                     args.skip_bad_images)
        result = publish_dataset(dataset_dict, card, args.repo_id, **common)
    else:
        models = {var: getattr(args, flag) for var, flag in SPACE_MODEL_VARIABLES.items() if getattr(args, flag)}
        result = publish_space(args.space_dir, args.repo_id, models, args.datasets,
                               examples_dir=args.examples_dir, **common)
    if result.url is None:
        print(f"Dry run: the {args.kind} repo folder is ready at {result.folder} (nothing uploaded)")
    else:
        print(f"Published {args.kind} {args.repo_id}: {result.url} (built from {result.folder})")


def repo_id(value: str) -> str:
    """``--repo_id``'s type: a Hub repo id (``user/name``), checked by huggingface_hub's own rules before any build."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.count("/") != 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repo id: give user/name or org/name")
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repo id: {err}") from None
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    statuses = exit_statuses("the repo was uploaded (or, with --dry_run, its folder built)",
                             "the folder, card or token cannot be used, or the upload failed (the message says what "
                             "was uploaded)")
    parser = argparse.ArgumentParser(prog="hf-model publish", description=__doc__.splitlines()[0], epilog=statuses)
    kinds = parser.add_subparsers(dest="kind", required=True)
    model = kinds.add_parser("model", help="a trained model folder (train.py --output_dir)", epilog=statuses)
    model.add_argument("model_dir", help="the trained model folder, e.g. runs/bedrooms")
    dataset = kinds.add_parser("dataset", help="a run's photos as Parquet train/validation/test (+ unlabeled)",
                               epilog=statuses)
    dataset.add_argument("source", help="a trained model folder, e.g. runs/bedrooms (its run record gives the photos, "
                                        "split fractions and seed it was trained with), or a photo folder")
    dataset.add_argument("--card", help="dataset card (default: datasets_cards/<bedrooms|birds>/README.md)")
    dataset.add_argument("--split_fractions", type=float, nargs=3, metavar=("TRAIN", "VALIDATION", "TEST"),
                         help=f"photo folder only (default: {' '.join(map(str, DEFAULT_SPLIT_FRACTIONS))})")
    dataset.add_argument("--seed", type=int, default=DEFAULT_SEED, help="photo folder only: the split seed")
    dataset.add_argument("--skip_bad_images", action="store_true",
                         help="photo folder only: leave unreadable photos out (with a warning) instead of stopping")
    space = kinds.add_parser("space", help="the Gradio demo in space/", epilog=statuses)
    space.add_argument("space_dir", nargs="?", default=str(PROJECT_ROOT / "space"), help="default: space/")
    for flag in SPACE_MODEL_VARIABLES.values():
        space.add_argument(f"--{flag}", help=f"model id the Space loads ({flag.replace('_', ' ')})")
    space.add_argument("--datasets", nargs="*", default=[], help="dataset ids to list in the Space card")
    tab_folders = " and ".join(f"{task.key}/" for task in TASKS)
    space.add_argument("--examples_dir", help=f"folder with {tab_folders} photos to ship as the tabs' examples "
                                              f"(up to {MAX_EXAMPLES} each; only photos you may publish)")
    for sub in (model, dataset, space):
        sub.add_argument("--repo_id", required=True, type=repo_id, help="user/name or org/name on the Hub")
        sub.add_argument("--dry_run", action="store_true", help="build the repo folder, print where, upload nothing")
        sub.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps "
                                                                  "its visibility)")
        sub.add_argument("--out_dir", help=f"where to build the repo folder (default: {DEFAULT_OUT_ROOT}/<kind>s--"
                                           "<user>--<name>, rebuilt each time)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------- publish = build + upload


def publish_model(model_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                  dry_run: bool = False, out_dir: str | Path | None = None) -> Published:
    """Build the model repo folder from a trained folder and upload it (``train.py --push_to_hub`` calls this)."""
    token = None if dry_run else resolve_token(token)  # fail before the work, not after it
    folder = build_model_repo(model_dir, prepare_out_dir(out_dir, "model", repo_id), repo_id)
    return _upload_unless_dry_run(folder, repo_id, "model", token, private, dry_run)


def publish_dataset(dataset_dict, card_path: str | Path, repo_id: str, *, token: str | None = None,
                    private: bool = False, dry_run: bool = False, out_dir: str | Path | None = None) -> Published:
    """Export a ``DatasetDict`` and its card as a Hub dataset repo and upload it."""
    token = None if dry_run else resolve_token(token)
    folder = export_dataset_repo(dataset_dict, card_path, prepare_out_dir(out_dir, "dataset", repo_id))
    return _upload_unless_dry_run(folder, repo_id, "dataset", token, private, dry_run)


def publish_space(space_dir: str | Path, repo_id: str, models: Mapping[str, str], datasets: Sequence[str] = (), *,
                  examples_dir: str | Path | None = None, token: str | None = None, private: bool = False,
                  dry_run: bool = False, out_dir: str | Path | None = None) -> Published:
    """Upload ``space/`` as a Gradio Space; ``models`` maps the app's variables to model ids."""
    token = None if dry_run else resolve_token(token)
    folder = build_space_repo(space_dir, prepare_out_dir(out_dir, "space", repo_id), models, datasets, repo_id,
                              examples_dir)
    published = _upload_unless_dry_run(folder, repo_id, "space", token, private, dry_run)
    if not dry_run:
        set_space_variables(repo_id, models, token, published.url)
    return published


def repo_to_push(args) -> str | None:
    """The repo ``train.py --push_to_hub`` publishes to (``TrainingArguments``); the token is checked now,
    not after an hour of training."""
    if not args.push_to_hub:
        return None
    resolve_token(args.hub_token)
    return args.hub_model_id or Path(args.output_dir).name


def publish_trained_model(output_dir: str, repo_id: str, args) -> None:
    """Upload a finished training's model folder; a failed upload exits saying how to retry without training."""
    try:
        published = publish_model(output_dir, repo_id, token=args.hub_token, private=bool(args.hub_private_repo))
    except PublishError as err:  # the training is done and saved: only the upload needs redoing
        sys.exit(f"Publishing failed: {err}\nThe trained model is safe in {output_dir}; upload it without "
                 f"training again: hf-model publish model {output_dir} --repo_id {repo_id}")
    print(f"Published to {published.url}", flush=True)


def _upload_unless_dry_run(folder: Path, repo_id: str, repo_type: str, token: str | None, private: bool,
                           dry_run: bool) -> Published:
    if dry_run:
        return Published(folder, None)
    return Published(folder, upload_repo_folder(folder, repo_id, repo_type, token=token, private=private))


def prepare_out_dir(out_dir: str | Path | None, kind: str, repo_id: str) -> Path:
    """An empty folder to build into: the default one is rebuilt, a given one must be new or empty."""
    if out_dir is None:
        out = DEFAULT_OUT_ROOT / f"{kind}s--{repo_id.replace('/', '--')}"
        if out.exists():
            shutil.rmtree(out)  # our own previous build of this repo
    else:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty: the repo folder must start empty (everything in it is "
                                  "uploaded). Remove it, or leave out --out_dir to use the default build folder.")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------------------------- model repo


def build_model_repo(model_dir: str | Path, out_dir: str | Path, repo_id: str | None = None) -> Path:
    """Copy what ``pipeline()`` and the Hub page need from a trained folder into ``out_dir``.

    Checks that the weights are safetensors, the config names the real classes and the image
    processor loads; keeps the model card and its plots (writing the card from the run record when
    the folder has none, or one that names local paths as Hub repos), its usage snippet pointed at
    ``repo_id`` instead of the local folder. The card and the JSON files hf-model wrote name each local
    path the run record and calibration know (typed or resolved, relative or absolute), and every other
    absolute or home path, by its last part only (:func:`published_paths`). Refuses a folder whose run
    record says its training did not finish (``run_folder.RunFolderError``).
    """
    from transformers import AutoConfig

    from hf_model.backbones import load_image_processor

    source, out = Path(model_dir), Path(out_dir)
    require_finished(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: give the folder train.py wrote (its --output_dir)")
    if not any(source.glob("*.safetensors")):
        raise FileNotFoundError(f"{source} has no *.safetensors weights; re-save the model with save_pretrained()")
    config = AutoConfig.from_pretrained(source)
    labels = [config.id2label[i] for i in sorted(config.id2label)]
    if all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        raise RepoFolderError(f"{source}/config.json names no classes (only {labels[:3]}...): pipeline() would answer "
                         "LABEL_0; set id2label/label2id when building the model (hf_model.backbones.load_model)")

    try:  # pipeline() needs the image processor from the repo alone; the adapter's loader reads it as pipeline() does
        processor = load_image_processor(str(source), config)  # without transformers' torchvision-backend notice
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{source}: no image processor loads from it ({err}); save it with the model "
                                "(Trainer(processing_class=processor) or processor.save_pretrained)") from err

    for path in _model_files(source):
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # copyfile, not copy2: the files get ordinary permissions
    write_portable_config(out)  # a folder trained before it was written so: classes as id2label
    if adapter_for(config).saves_processor and not (out / "preprocessor_config.json").is_file():
        processor.save_pretrained(out)  # timm_wrapper keeps it in config.json and refuses save_pretrained
    paths = published_paths(source)
    for path in (p for pattern in OWN_JSON_FILES for p in out.glob(pattern)):  # their machine paths stay home
        raw = json.loads(path.read_text())
        public = public_record(raw, paths)
        if path.name == RUN_CONFIG_FILE and isinstance(raw.get("command"), str):
            public["command"] = paths.cut_command(raw["command"])  # quoted again: it still runs
        if public != raw:
            write_json_atomic(path, public)
    card_path = out / "README.md"
    local = local_ids_in_card(ModelCard.load(card_path)) if card_path.is_file() else []
    if not card_path.is_file() or local:  # a folder not written by train.py, or by one that took paths for Hub ids
        logger.warning("%s: writing its model card from its config, results and run record (%s)", source,
                       f"its README.md names the local paths {local} as Hub repos" if local else "it has no README.md")
        record = load_run_config(source) if (source / RUN_CONFIG_FILE).is_file() else None
        write_run_card(out, record, _read_json(source / "all_results.json"), labels, repo_id,
                       model_name=None if repo_id else source.resolve().name)
    card = ModelCard.load(card_path)
    # the Hub picks the widget and the "Use this model" snippet from these two fields
    card.data.library_name = card.data.library_name or "transformers"
    card.data.pipeline_tag = card.data.pipeline_tag or "image-classification"
    if repo_id:  # the card was written at training time, when the model lived in a local folder
        pointed = point_at_repo(card.text, repo_id, top_k=min(TOP_K, len(labels)), **model_files(out))
        card.text = pointed if pointed is not None else PIPELINE_SNIPPET.sub(  # a card from before the usage section
            f'pipeline("image-classification", model="{repo_id}")', card.text)
    card.text = paths.cut(card.text)  # a hand-written card's too: the machine's folders stay home
    card.save(card_path)
    return out


def local_ids_in_card(card: ModelCard) -> list[str]:
    """The local paths a model card names where the Hub reads repo ids: ``datasets:``, ``base_model`` and the
    model-index dataset. Cards written before the card writer kept to Hub ids named a ``--dataset`` folder so."""
    data = card.data
    base_models = [data.base_model] if isinstance(data.base_model, str) else data.base_model or []
    ids = [*(data.datasets or []), *base_models, *(result.dataset_type for result in data.eval_results or [])]
    return [name for name in ids if not is_hub_repo_id(name, check_local=False)]


def published_paths(model_dir: Path) -> LocalPaths:
    """The local paths a trained folder's files name: those of its run record (:meth:`LocalPaths.of_record`) and
    the out-of-domain folders its ``calibration.json`` was fitted on."""
    calibration = _read_json(model_dir / CALIBRATION_FILE).get("report") or {}
    return LocalPaths.of_record(_read_json(model_dir / RUN_CONFIG_FILE),
                                extra=calibration.get("out_of_domain_dirs") or [])


def public_record(value, paths: LocalPaths):
    """A run record, calibration or results (as JSON) with every string's paths cut to their last part
    (:meth:`LocalPaths.cut`): a published repo never shows the machine's folders."""
    if isinstance(value, str):
        return paths.cut(value)
    if isinstance(value, dict):
        return {key: public_record(item, paths) for key, item in value.items()}
    if isinstance(value, list):
        return [public_record(item, paths) for item in value]
    return value


def _model_files(source: Path) -> list[Path]:
    found = {p for pattern in MODEL_FILE_PATTERNS for p in source.glob(pattern)}
    found |= {p for p in source.glob("*/**/*.png")
              if not any(part.startswith("checkpoint-") for part in p.relative_to(source).parts)}
    return sorted(p for p in found if p.is_file())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------------- dataset repo


def load_dataset_to_publish(source: str, card: str | None, split_fractions: Sequence[float] | None = None,
                            seed: int = DEFAULT_SEED, skip_bad_images: bool = False):
    """The ``DatasetDict`` to publish and its card path.

    ``source`` is a trained model folder (its run record rebuilds exactly the splits it was trained
    and tested on, unreadable photos skipped as they were) or a photo folder (split with ``split_fractions``
    and ``seed``; ``skip_bad_images`` leaves unreadable photos out instead of raising ``BadImageError``).
    """
    from datasets import ClassLabel

    from hf_model.data import birds_source_names, detect_layout, load_data

    if (Path(source) / RUN_CONFIG_FILE).is_file():
        record = load_run_config(source)
        cfg, seed, fold = record.config, record.training_args.seed, record.cv_fold
    else:
        cfg, fold = TrainConfig(data_dir=source, split_fractions=list(split_fractions or DEFAULT_SPLIT_FRACTIONS),
                                skip_bad_images=skip_bad_images), None
    if card:
        card_path = Path(card)
    elif cfg.data_dir:
        card_path = CARDS_DIR / detect_layout(cfg.data_dir) / "README.md"
    else:
        raise RepoFolderError(f"{source} was trained on the dataset {cfg.dataset} (--dataset), which has no card here: "
                         "pass --card with its dataset card")
    if not card_path.is_file():
        raise FileNotFoundError(f"no dataset card at {card_path}: write one (see datasets_cards/) and pass --card")
    data = load_data(cfg, seed, fold)
    if cfg.data_dir and detect_layout(cfg.data_dir) == "birds":  # the published dataset keeps Kaggle's names
        data = data.cast_column("label", ClassLabel(names=birds_source_names(cfg.data_dir)))
    return data, card_path


def export_dataset_repo(dataset_dict, card_path: str | Path, out_dir: str | Path,
                        max_shard_bytes: int = MAX_SHARD_BYTES, max_row_group_bytes: int | None = None) -> Path:
    """Write ``dataset_dict`` as Hub-layout Parquet shards with embedded images, plus its card.

    ``load_dataset(out_dir)`` gives back the same splits, features (``ClassLabel`` names included)
    and row counts. The card's ``configs``, ``dataset_info`` and ``size_categories`` are filled in
    from the data, so the numbers on the Hub page are always the exported ones.
    """
    from datasets import DatasetInfo, Image, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    card = DatasetCard.load(card_path)
    missing = [field for field in DATASET_CARD_FIELDS if not card.data.get(field)]
    if missing:
        raise RepoFolderError(f"{card_path}: the card's YAML lacks {missing}; the Hub needs them to list the dataset")
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    features = next(iter(dataset_dict.values())).features
    info = DatasetInfo(features=features, splits=SplitDict(), download_size=0, dataset_size=0)
    for split, dataset in dataset_dict.items():
        dataset = dataset.cast_column("image", Image())  # decodable, so its files are embedded below
        files, num_bytes = write_parquet_shards(dataset, out / "data", split, max_shard_bytes, max_row_group_bytes)
        info.splits.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))
        info.download_size += sum(f.stat().st_size for f in files)
        info.dataset_size += num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size

    data_files = [{"split": split, "path": f"data/{split}-*"} for split in dataset_dict]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card.data)
    DatasetInfosDict({"default": info}).to_dataset_card_data(card.data)
    card.data["size_categories"] = [size_category(sum(len(d) for d in dataset_dict.values()))]
    card.save(out / "README.md")
    return out


def write_parquet_shards(dataset, folder: Path, split: str, max_shard_bytes: int,
                         max_row_group_bytes: int | None = None) -> tuple[list[Path], int]:
    """``<split>-0000i-of-0000n.parquet`` files with the image bytes inside; returns them and the Arrow size.

    Shards hold about ``max_shard_bytes`` each, as ``push_to_hub`` cuts them. Row groups are bounded by
    bytes as well as rows (:func:`row_group_rows`): at most ``max_row_group_bytes`` uncompressed
    (default ``datasets.config.MAX_ROW_GROUP_SIZE``, 100 MB; the Hub's dataset viewer refuses row groups
    above about 286 MiB) unless one photo alone is larger, and at most :data:`ROWS_PER_ROW_GROUP` rows.
    """
    from datasets import config
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    max_row_group_bytes = max_row_group_bytes or convert_file_size_to_int(config.MAX_ROW_GROUP_SIZE)
    num_shards = max(1, math.ceil(dataset._estimate_nbytes() / max_shard_bytes))  # push_to_hub's estimate
    files, num_bytes = [], 0
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        # Same as push_to_hub: read each image file into the table (path keeps only the file name)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        table = shard.data.table
        rows = row_group_rows([table.slice(i, 1).nbytes for i in range(len(table))], max_row_group_bytes)
        path = folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(path, batch_size=rows)  # one row group per batch
        files.append(path)
        num_bytes += table.nbytes
    return files, num_bytes


def row_group_rows(row_bytes: Sequence[int], max_bytes: int, max_rows: int = ROWS_PER_ROW_GROUP) -> int:
    """Rows per Parquet row group such that every group of that many consecutive rows holds at most ``max_bytes``.

    ``datasets`` sizes row groups from the average row (``get_writer_batch_size_from_data_size``), which
    overshoots when photo sizes vary; here each group's own bytes (``row_bytes``, Arrow bytes per row)
    are summed. The answer is the largest divisor of ``max_rows`` that fits (so the viewer's pages of
    ``max_rows`` rows are whole groups), or 1 when a single row is larger than ``max_bytes``. A
    :data:`PARQUET_HEADROOM` share of ``max_bytes`` is left for Parquet's page headers.
    """
    sizes = np.asarray(row_bytes, dtype=np.int64)
    budget = max_bytes * (1 - PARQUET_HEADROOM)
    for rows in (n for n in range(max_rows, 0, -1) if max_rows % n == 0):
        if not len(sizes) or np.add.reduceat(sizes, np.arange(0, len(sizes), rows)).max() <= budget:
            return rows
    return 1


def size_category(num_examples: int) -> str:
    """The Hub's ``size_categories`` value for a row count."""
    for limit, name in SIZE_CATEGORIES:
        if num_examples < limit:
            return name
    return "n>1B"


# -------------------------------------------------------------------------------------- space repo


def build_space_repo(space_dir: str | Path, out_dir: str | Path, models: Mapping[str, str],
                     datasets: Sequence[str] = (), repo_id: str | None = None,
                     examples_dir: str | Path | None = None) -> Path:
    """Copy ``space/`` and record the model ids (``{"BEDROOM_MODEL": "user/bedroom-style", ...}``) in its card.

    A model not given keeps the card's default; ``repo_id`` replaces the placeholder Space id in
    the card's ``gradio_client`` snippet. ``examples_dir/<bedroom|bird>/`` photos become the app's
    ``examples/`` (the app shows them under each tab).
    """
    source, out = Path(space_dir), Path(out_dir)
    if not (source / "README.md").is_file():
        raise FileNotFoundError(f"{source}/README.md is missing: a Space needs it, with YAML front matter "
                                "(title, sdk: gradio, app_file, ...)")
    unknown = sorted(set(models) - set(SPACE_MODEL_VARIABLES))
    if unknown:
        raise RepoFolderError(f"unknown Space model variables {unknown}; the app reads {sorted(SPACE_MODEL_VARIABLES)}")
    require_hub_ids([("--datasets", name) for name in datasets], "dataset")
    require_hub_ids([(f"--{SPACE_MODEL_VARIABLES[var]}", name) for var, name in models.items()], "model")
    shutil.copytree(source, out, ignore=SPACE_IGNORE, dirs_exist_ok=True)
    card = SpaceCard.load(out / "README.md")
    if card.data.get("sdk") != "gradio":
        raise RepoFolderError(f"{source}/README.md: expected 'sdk: gradio' in its YAML, found {card.data.get('sdk')!r}")
    app_file = card.data.get("app_file") or "app.py"
    if not (out / app_file).is_file():
        raise FileNotFoundError(f"{source}/README.md names app_file {app_file!r}, which is not in {source}")
    # the card lists the default models in TASKS order (bedroom, bird)
    chosen = dict(zip(SPACE_MODEL_VARIABLES, card.data.get("models") or []))
    card.data.models = list({**chosen, **models}.values())
    if datasets:
        card.data.datasets = list(datasets)
    if repo_id:
        card.text = card.text.replace(SPACE_ID_PLACEHOLDER, repo_id)
    card.save(out / "README.md")
    if examples_dir:
        copy_space_examples(Path(examples_dir), out / "examples")
    if _imports_hf_model(out) and not _requires_hf_model(out / "requirements.txt"):
        # The Space installs only requirements.txt; ship our package's source beside app.py
        shutil.copytree(Path(__file__).parent, out / "hf_model", ignore=shutil.ignore_patterns("__pycache__"))
    return out


def require_hub_ids(given: Iterable[tuple[str, str]], kind: str) -> None:
    """Raise ``ValueError`` when a ``(flag, name)`` for the Space card's ``datasets:`` / ``models:`` is not a Hub
    repo id: the Space reads those repos from the Hub, and a local path there would publish the machine's folders."""
    local = [f"{flag} {name}" for flag, name in given if not is_hub_repo_id(name, check_local=False)]
    if local:
        raise RepoFolderError(f"{', '.join(local)}: not a Hub {kind} id (user/name); the Space card lists Hub repos "
                         f"only. Publish the {kind} first (hf-model publish {kind}) and give its repo id")


def copy_space_examples(examples_dir: Path, out: Path) -> None:
    """The first photos under each tab's subfolder (``bedroom/``, ``bird/``), in the order the app lists them."""
    keys = [task.key for task in TASKS]
    tabs = [examples_dir / key for key in keys if (examples_dir / key).is_dir()]
    if not tabs:
        raise FileNotFoundError(f"{examples_dir} has none of the subfolders {keys} of example photos")
    for tab in tabs:
        for photo in list_images(tab)[:MAX_EXAMPLES]:
            target = out / tab.name / photo.relative_to(tab)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)


def _imports_hf_model(folder: Path) -> bool:
    pattern = re.compile(r"^\s*(from|import)\s+hf_model\b", re.MULTILINE)
    return any(pattern.search(path.read_text(errors="ignore")) for path in folder.rglob("*.py"))


def _requires_hf_model(requirements: Path) -> bool:
    if not requirements.is_file():
        return False
    lines = (line.split("#", 1)[0] for line in requirements.read_text().splitlines())
    return any(re.search(r"hf[-_]model", line) for line in lines)


def set_space_variables(repo_id: str, models: Mapping[str, str], token: str, commit_url: str | None) -> None:
    """Point the running Space at the chosen models: the app reads them as environment variables."""
    api = HfApi(token=token)
    for variable, model_id in models.items():
        try:
            api.add_space_variable(repo_id, variable, model_id)
        except Exception as err:
            raise PublishError(
                f"the Space files were uploaded ({commit_url}) but setting {variable}={model_id} failed: "
                f"{explain(err)}. Set it under the Space's Settings > Variables, or rerun this command") from err


# ------------------------------------------------------------------------------------------ upload


def resolve_token(token: str | None = None) -> str:
    """The given token, else ``HF_TOKEN``, else the one saved by ``hf auth login``."""
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN to a write token (huggingface.co/settings/tokens) "
                           "or run `hf auth login`; or pass --dry_run to only build the repo folder")
    return token


def upload_repo_folder(folder: str | Path, repo_id: str, repo_type: str, *, token: str, private: bool = False,
                       commit_message: str | None = None) -> str:
    """``create_repo(exist_ok=True)`` then one ``upload_folder`` commit; returns the commit URL."""
    api = HfApi(token=token)
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    try:
        repo = api.create_repo(repo_id, repo_type=repo_type, private=True if private else None, exist_ok=True,
                               **extra)
    except Exception as err:
        raise PublishError(f"could not create or reach the {repo_type} repo {repo_id}: {explain(err)}. "
                           f"Nothing was uploaded; the repo folder is ready at {folder}") from err
    try:
        # delete_patterns="*": the repo ends up holding exactly the folder (the Hub keeps .gitattributes), so
        # a rebuild with fewer Parquet shards or plots leaves no stale file behind to be loaded with the new ones
        commit = api.upload_folder(repo_id=repo.repo_id, repo_type=repo_type, folder_path=str(folder),
                                   delete_patterns="*",
                                   commit_message=commit_message or f"Upload {repo_type} with hf-model publish")
    except Exception as err:
        raise PublishError(f"the {repo_type} repo {repo.repo_id} exists ({repo}) but the upload failed: "
                           f"{explain(err)}. No commit was made: the repo keeps what it held before (nothing, if "
                           f"it was just created); rerun the publish command to retry (the folder {folder} is kept)"
                           ) from err
    return commit.commit_url


def explain(err: Exception) -> str:
    """One line on what went wrong with the Hub, and what to do about it."""
    if isinstance(err, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set; unset it (or set HF_HUB_OFFLINE=0) to publish"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return "the token was refused (401): check HF_TOKEN or run `hf auth login` again"
        if status == 403:
            return "the token may not write there (403): use a token with write access to that user or organization"
        return f"the Hub answered {status}: {err}"
    if isinstance(err, HTTPError | OSError):
        return f"the Hub cannot be reached (no network?): {type(err).__name__}: {err}"
    return f"{type(err).__name__}: {err}"
