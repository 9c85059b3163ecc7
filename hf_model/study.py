"""``hf-model study``: the birds write-up's systematic comparison as a command anyone can rerun on a folder.

A grid of backbone x image size x imbalance handling x head (x fine-tuned blocks), each cell
cross-validated with the same folds and seed as ``train.py --cv_folds k``. Head-alone cells (the
default recipe for few photos per class) fit only the head on cached backbone features
(:mod:`hf_model.head_cv`): seconds a cell, and the figures ``train.py --cv_folds k`` would print.
Cells that fine-tune blocks (``--unfreeze_top_blocks 2``) are whole training runs per fold, in
``output_dir/cells/<cell>``, and are slow (the log says so). Each finished cell is appended to
``study.csv`` at once, so an interrupted study rerun with the same command skips the finished
cells. ``study.md`` is the table (mean ± std over folds, time, inference cost, the best marked) and
``study.png`` the metric against inference cost.

``--learning_curve`` asks the bedroom write-up's question instead, "would more labels help?"
(:mod:`hf_model.learning_curve`).

    HF_HUB_OFFLINE=1 hf-model study --preset bedrooms --data_dir ../shared/data/bedrooms \\
        --output_dir studies/bedrooms --image_sizes native 320
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainingArguments

from hf_model.atomic import atomic_write, folder_lock, write_json_atomic
from hf_model.backbones import BACKBONES, NotAModelError, default_image_size
from hf_model.config import HEADS, TOP_K, RunRecord, TrainConfig, parse_args
from hf_model.exit_status import UserInputError, command, exit_statuses
from hf_model.experiments import cross_validate, summarize_folds
from hf_model.head_cv import HeadCrossValidation, load_folds
from hf_model.reports import markdown_table, new_figure, save_figure
from hf_model.run_folder import NOT_RECIPE

logger = logging.getLogger("hf_model")

STUDY_CSV, STUDY_MD, STUDY_PNG, STUDY_JSON = "study.csv", "study.md", "study.png", "study.json"
IMBALANCE = {  # --imbalance name -> the TrainConfig settings it stands for
    "none": {"class_weights": "none", "oversample": False},
    "class_weights": {"class_weights": "auto", "oversample": False},
    "oversample": {"class_weights": "none", "oversample": True},
}
METRICS = ("f1_macro", "accuracy", "top5_accuracy", "roc_auc")
CELL_FIELDS = ("backbone", "image_size", "imbalance", "head", "unfreeze_top_blocks")
NATIVE = "native"
# TrainingArguments that say where and how verbosely to write, not what a cell computes
NOT_TRAINING_SETTINGS = ("output_dir", "logging_dir", "run_name", "disable_tqdm", "push_to_hub", "hub_model_id",
                         "hub_strategy", "hub_private_repo", "resume_from_checkpoint")


@dataclass(frozen=True)
class Cell:
    """One setting of the grid; ``image_size`` in pixels (the backbone's own size resolved)."""

    backbone: str
    image_size: int
    imbalance: str
    head: str
    unfreeze_top_blocks: int

    @property
    def fine_tunes(self) -> bool:
        return self.unfreeze_top_blocks != 0

    def name(self) -> str:
        blocks = f", {self.unfreeze_top_blocks} blocks fine-tuned" if self.fine_tunes else ""
        return f"{self.backbone} {self.image_size}px, {self.imbalance}, {self.head} head{blocks}"

    def slug(self) -> str:
        return (f"{Path(self.backbone).name}-{self.image_size}-{self.imbalance}-{self.head}-"
                f"blocks{self.unfreeze_top_blocks}")

    def config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this cell's settings (the folds' data settings stay the study's)."""
        return dataclasses.replace(base, backbone=self.backbone, image_size=self.image_size, head=self.head,
                                   unfreeze_top_blocks=self.unfreeze_top_blocks, **IMBALANCE[self.imbalance])


@command("hf-model study")
def main(argv: list[str] | None = None) -> list[dict]:
    """``hf-model study``: parse, plan the grid, run the unfinished cells, write the table and the plot."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    study, train_flags = parser.parse_known_args(argv)
    if any(flag in train_flags for flag in ("--cv_folds", "--backbone", "--image_size")):
        parser.error("give the grid with --folds, --backbones and --image_sizes (the study's own flags), not "
                     "--cv_folds / --backbone / --image_size")
    if Path(study.output_dir).exists() and not Path(study.output_dir).is_dir():
        parser.error(f"--output_dir {study.output_dir} is a file: give a folder")
    if study.learning_curve and (study.imbalance or study.unfreeze_top_blocks != [0]):
        parser.error("--learning_curve follows train.py's own settings: give --class_weights auto or --oversample "
                     "(train.py's flags) instead of --imbalance; it fits the head alone (no --unfreeze_top_blocks)")
    cfg, args = parse_args([*train_flags, "--output_dir", study.output_dir, "--disable_tqdm", "true"])
    if study.learning_curve and max(len(study.backbones or []), len(study.image_sizes), len(study.heads or [])) > 1:
        parser.error("--learning_curve follows one backbone at one size with one head: give at most one of each")
    if study.folds < 2:
        parser.error(f"--folds is a number of cross-validation folds, at least 2: got {study.folds}")
    if study.repeats < 1:
        parser.error(f"--repeats counts draws of each share: at least 1, got {study.repeats}")
    if not all(0 < f <= 1 for f in study.fractions):
        parser.error(f"--fractions are shares of the labeled photos, above 0 and at most 1: got {study.fractions}")
    offline = [name for name, backbone in BACKBONES.items() if backbone.offline]
    try:
        cells = plan_cells(cfg, study.backbones or ([cfg.backbone] if study.learning_curve else offline),
                           study.image_sizes, study.imbalance or list(IMBALANCE), study.heads or [cfg.head],
                           study.unfreeze_top_blocks)
    except ValueError as err:
        parser.error(str(err))
    try:
        with folder_lock(study.output_dir, "hf-model study"):
            return _run(study, cfg, args, cells)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished cells are in {Path(study.output_dir) / STUDY_CSV}; rerun the same command "
              "to run the rest", file=sys.stderr)
        sys.exit(130)


def _run(study: argparse.Namespace, cfg: TrainConfig, args: TrainingArguments, cells: list[Cell]) -> list[dict]:
    """The learning curve (one cell's settings) or the grid."""
    if study.learning_curve:
        from hf_model.learning_curve import run_learning_curve

        cfg = dataclasses.replace(cfg, backbone=cells[0].backbone, image_size=cells[0].image_size, head=cells[0].head)
        return run_learning_curve(cfg, args, study.folds, study.fractions, Path(study.output_dir), study.repeats)
    return run_study(cfg, args, cells, study.folds, study.metric, Path(study.output_dir), resume=not study.no_resume)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-model study", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description=__doc__.split("\n\n")[0] + "\n\nAny other flag is train.py's (--preset, --data_dir, --seed, "
                    "--feature_views, --head_learning_rate, ...) and applies to every cell.",
        epilog=exit_statuses("every cell ran", "the data or the output folder is unusable"))
    parser.add_argument("--output_dir", required=True, help="where study.csv, study.md and study.png go")
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="registry names, model folders or Hub ids (default: every one that loads offline, "
                             f"{[name for name, backbone in BACKBONES.items() if backbone.offline]}; with "
                             "--learning_curve, the preset's)")
    parser.add_argument("--image_sizes", nargs="+", default=[NATIVE],
                        help="input sizes in pixels; 'native' is each backbone's own (default: native)")
    parser.add_argument("--imbalance", nargs="+", default=None, choices=list(IMBALANCE),
                        help="none, class_weights (--class_weights auto), oversample (--oversample); default: all")
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=None,
                        help="heads to compare (default: the preset's or --head's)")
    parser.add_argument("--unfreeze_top_blocks", nargs="+", type=int, default=[0],
                        help="0: the head alone on cached features (fast); N > 0 or -1: fine-tune N blocks, a whole "
                             "training run per fold (slow: minutes per fold on a CPU)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (at least 2; default 5)")
    parser.add_argument("--metric", default="f1_macro", choices=METRICS, help="what marks the best cell")
    parser.add_argument("--no_resume", action="store_true", help="run every cell again, ignoring study.csv")
    parser.add_argument("--learning_curve", action="store_true",
                        help="instead of the grid: accuracy vs. the number of labeled photos (train.py's settings)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[round(0.1 * i, 1) for i in range(1, 11)],
                        help="--learning_curve: shares of the labeled photos to learn from (default 0.1 ... 1.0)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--learning_curve: draws of each share below 100%% (other seeds), averaged (default 3)")
    return parser


def plan_cells(cfg: TrainConfig, backbones: Sequence[str], image_sizes: Sequence[str], imbalance: Sequence[str],
               heads: Sequence[str], unfreeze: Sequence[int]) -> list[Cell]:
    """Every combination, in order; ``native`` sizes resolved to each backbone's own, duplicates dropped.

    Raises ``ValueError`` for a size that is neither ``native`` nor a number of pixels (at least 32), and for a
    backbone that cannot be loaded (checked here, before any cell runs).
    """
    native = {backbone: _native_size(backbone) for backbone in backbones}
    cells = []
    for backbone, size, balance, head, blocks in itertools.product(backbones, image_sizes, imbalance, heads, unfreeze):
        cells.append(Cell(backbone, native[backbone] if size == NATIVE else _pixels(size), balance, head, blocks))
    return list(dict.fromkeys(cells))


def _native_size(backbone: str) -> int:
    try:
        return default_image_size(backbone)
    except NotAModelError as err:  # its message already says which kind of name it is and why it does not load
        raise ValueError(f"--backbones: {err}") from err


def _pixels(size: str) -> int:
    if not str(size).isdigit() or int(size) < 32:
        raise ValueError(f"--image_sizes takes 'native' or a size in pixels (at least 32), got {size!r}")
    return int(size)


class StudyFolderError(UserInputError, ValueError):
    """The output folder holds a study of other photos, folds or settings."""


def run_study(cfg: TrainConfig, args: TrainingArguments, cells: list[Cell], n_folds: int, metric: str,
              output_dir: Path, resume: bool = True) -> list[dict]:
    """Cross-validate every cell not yet in ``study.csv``; returns every cell's row (finished ones included).

    Raises :class:`StudyFolderError` when ``output_dir`` holds a study with other data, folds or flags.
    """
    settings = study_settings(cfg, args, n_folds)
    rows = _previous_rows(output_dir, settings) if resume else []
    done = {_row_cell(row) for row in rows}
    todo = [cell for cell in cells if cell not in done]
    logger.info("study: %d cells, %d already in %s, %d to run (%d-fold cross-validation each)", len(cells),
                len(cells) - len(todo), output_dir / STUDY_CSV, len(todo), n_folds)
    if any(cell.fine_tunes for cell in todo):
        logger.warning("study: %d cells fine-tune blocks: each is %d whole training runs on images, minutes per fold "
                       "on a CPU (the head-alone cells take seconds)", sum(c.fine_tunes for c in todo), n_folds)
    folds = load_folds(cfg, args.seed, n_folds) if todo else []
    n_classes = len(folds[0]["train"].features["label"].names) if folds else None
    if metric == "top5_accuracy" and n_classes is not None and n_classes <= TOP_K:
        raise StudyFolderError(f"--metric top5_accuracy needs more than {TOP_K} classes, and these photos have "
                               f"{n_classes}: choose f1_macro or accuracy")
    write_json_atomic(output_dir / STUDY_JSON, settings)  # once the photos load: a failed start leaves no claim
    for (backbone, size), group in itertools.groupby(todo, key=lambda c: (c.backbone, c.image_size)):
        group = list(group)
        setup_cfg = dataclasses.replace(cfg, backbone=backbone, image_size=size)
        cv = HeadCrossValidation(setup_cfg, args, folds)
        cost = (cv.milliseconds_per_photo(), cv.gigaflops_per_photo())
        for cell in group:
            logger.info("study: cell %d of %d: %s", len(rows) + 1, len(cells), cell.name())
            started = time.time()
            per_fold = (_fine_tuned(cell.config(cfg), args, n_folds, output_dir / "cells" / cell.slug())
                        if cell.fine_tunes else cv.score(cell.config(setup_cfg)))
            rows.append(_row(cell, summarize_folds(per_fold), time.time() - started, cv.feature_seconds, *cost))
            write_rows(output_dir / STUDY_CSV, rows)  # at once: a killed study keeps every finished cell
    rows = [row for cell in cells for row in rows if _row_cell(row) == cell]  # the grid's order, this grid's cells
    write_markdown(output_dir / STUDY_MD, rows, metric, n_folds, settings)
    plot_study(output_dir / STUDY_PNG, rows, metric)
    best = max(rows, key=lambda row: row[f"{metric}_mean"])
    print(markdown_table(*_table(rows, metric)))
    print(f"best {metric}: {best[f'{metric}_mean']:.3f} ± {best[f'{metric}_std']:.3f} with {_row_cell(best).name()} "
          f"(results in {output_dir / STUDY_MD}, plot in {output_dir / STUDY_PNG})", flush=True)
    return rows


def _fine_tuned(cfg: TrainConfig, args: TrainingArguments, n_folds: int, cell_dir: Path) -> list[dict]:
    """A fine-tuning cell: ``train.py --cv_folds`` into ``cell_dir`` (each fold resumable), its per-fold metrics."""
    from hf_model.training import train

    fold_args = dataclasses.replace(args, output_dir=str(cell_dir))
    cross_validate(train, dataclasses.replace(cfg, cv_folds=n_folds), fold_args, f"hf-model study cell {cell_dir}")
    return [json.loads((cell_dir / f"fold-{i}" / "test_results.json").read_text()) for i in range(n_folds)]


def _row(cell: Cell, summary: dict, seconds: float, feature_seconds: float, cost_ms: float, gflops: float) -> dict:
    row = dataclasses.asdict(cell)
    for metric in METRICS:
        if metric in summary:
            row[f"{metric}_mean"], row[f"{metric}_std"] = summary[metric]["mean"], summary[metric]["std"]
    row["ece_all_photos"] = summary.get("ece_all_photos")
    row.update(photos=summary["photos"], seconds=round(seconds, 1), feature_seconds=round(feature_seconds, 1),
               inference_ms=round(cost_ms, 1), inference_gflops=round(gflops, 3))
    return row


def _row_cell(row: dict) -> Cell:
    return Cell(row["backbone"], int(row["image_size"]), row["imbalance"], row["head"],
                int(row["unfreeze_top_blocks"]))


def write_rows(path: Path, rows: list[dict]) -> None:
    """``study.csv``: one row per finished cell, every column a cell's setting or a figure (atomic)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    """The rows :func:`write_rows` wrote, figures as floats."""
    with path.open(newline="") as f:
        return [{k: _number(v) if k not in CELL_FIELDS[:4] else v for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None


def study_settings(cfg: TrainConfig, args: TrainingArguments, n_folds: int) -> dict:
    """What makes two studies comparable cell for cell: the photos (absolute paths), folds, seed and every
    ``train.py`` setting the grid does not vary, as JSON values (the run record's normalized form)."""
    record = RunRecord(cfg, args).to_dict()
    varied = (*CELL_FIELDS, "class_weights", "oversample", *NOT_RECIPE, "cv_folds")
    settings = {"folds": n_folds, **{f"config.{k}": v for k, v in record["config"].items() if k not in varied},
                **{f"training_args.{k}": v for k, v in record["training_args"].items()
                   if k not in NOT_TRAINING_SETTINGS}}
    return json.loads(json.dumps(settings, default=str))


def _previous_rows(output_dir: Path, settings: dict) -> list[dict]:
    previous = output_dir / STUDY_JSON
    if not previous.is_file():
        return []
    held = json.loads(previous.read_text())
    if held != settings:
        differ = sorted(key for key in held.keys() | settings.keys() if held.get(key) != settings.get(key))
        raise StudyFolderError(f"{output_dir} holds a study of other photos, folds or train.py settings (they differ "
                               f"in: {', '.join(differ)}; {previous}): give another --output_dir, or --no_resume to "
                               "start over there")
    return read_rows(output_dir / STUDY_CSV) if (output_dir / STUDY_CSV).is_file() else []


def _table(rows: list[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    best = max(range(len(rows)), key=lambda i: rows[i][f"{metric}_mean"])
    shown = [m for m in METRICS if f"{m}_mean" in rows[0]]
    header = ["backbone", "size", "imbalance", "head", "blocks", *shown, "ECE", "fit s", "GFLOPs", "ms/photo"]
    lines = []
    for i, row in enumerate(rows):
        figures = [f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}" for m in shown]
        if i == best:
            figures[shown.index(metric)] = f"**{figures[shown.index(metric)]}** (best)"
        ece = "" if row.get("ece_all_photos") is None else f"{row['ece_all_photos']:.3f}"
        lines.append([row["backbone"], f"{int(row['image_size'])}", row["imbalance"], row["head"],
                      f"{int(row['unfreeze_top_blocks'])}", *figures, ece, f"{row['seconds']:.0f}",
                      f"{row['inference_gflops']:.2f}", f"{row['inference_ms']:.0f}"])
    return header, lines


def write_markdown(path: Path, rows: list[dict], metric: str, n_folds: int, settings: dict) -> None:
    """``study.md``: the table, what each column means, and the best cell."""
    photos = int(rows[0]["photos"])
    text = "\n".join([
        f"# Study: {n_folds}-fold cross-validation over {photos} labeled photos",
        "",
        f"Data: `{settings['config.data_dir'] or settings['config.dataset']}`; seed {settings['training_args.seed']}; "
        "every cell tests the same "
        f"{n_folds} folds. Figures are mean ± standard deviation over the folds; ECE is the expected calibration "
        "error over every test photo at once; fit s is the cell's wall time (features cached); GFLOPs is one "
        "photo's forward pass in billions of floating-point operations (PyTorch's count), ms/photo its median time "
        "at batch 1 on this machine (inflated by anything else running). The best "
        f"{metric} is in bold.",
        "",
        markdown_table(*_table(rows, metric)),
        "",
    ])
    with atomic_write(path) as f:
        f.write(text)


def plot_study(path: Path, rows: list[dict], metric: str) -> Path:
    """``study.png``: each cell's ``metric`` (mean ± std over folds) against its inference cost in GFLOPs.

    Cells of one backbone and size share a cost; they are drawn side by side, labeled once, the best ringed.
    """
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    markers = dict(zip(IMBALANCE, "os^"))
    colors = {b: f"C{i}" for i, b in enumerate(dict.fromkeys(row["backbone"] for row in rows))}
    heads = list(dict.fromkeys(row["head"] for row in rows))
    span = max(row["inference_gflops"] for row in rows) or 1.0
    settings = list(itertools.product(IMBALANCE, heads))
    position = {}
    for row in rows:
        dodge = (settings.index((row["imbalance"], row["head"])) - (len(settings) - 1) / 2) * 0.012 * span
        x, y = row["inference_gflops"] + dodge, row[f"{metric}_mean"]
        position[id(row)] = (x, y)
        ax.errorbar(x, y, yerr=row[f"{metric}_std"], fmt=markers[row["imbalance"]], color=colors[row["backbone"]],
                    alpha=0.8, capsize=2, markersize=6, mfc="white" if heads.index(row["head"]) else None)
    for (_, size), group in itertools.groupby(rows, key=lambda r: (r["backbone"], r["image_size"])):
        top = max(group, key=lambda r: r[f"{metric}_mean"] + r[f"{metric}_std"])
        ax.annotate(f"{int(size)}px", (top["inference_gflops"], top[f"{metric}_mean"] + top[f"{metric}_std"]),
                    fontsize=7, xytext=(0, 4), textcoords="offset points", ha="center")
    best = max(rows, key=lambda row: row[f"{metric}_mean"])
    ax.plot(*position[id(best)], "o", ms=15, mfc="none", mec="black", label="best")
    for backbone, color in colors.items():
        ax.plot([], [], "o", color=color, label=Path(backbone).name)
    for name in dict.fromkeys(row["imbalance"] for row in rows):
        ax.plot([], [], markers[name], color="gray", label=f"imbalance: {name}")
    for head in heads[1:]:
        ax.plot([], [], "o", color="gray", mfc="white", label=f"hollow: {head} head (filled: {heads[0]})")
    ax.set_xlabel("inference cost (GFLOPs per photo)")
    ax.set_ylabel(f"{metric} ({int(rows[0]['photos'])} photos, cross-validated)")
    ax.set_title("Study: each cell's score (mean ± std over folds) against its cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)
