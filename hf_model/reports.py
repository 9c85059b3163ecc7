"""Everything a finished run writes for people: plots, the model card, the run record, the summary line.

:func:`write_reports` writes them all at the end of a run; :class:`LearningCurvesCallback` draws
the learning curves when each stage's ``Trainer`` finishes. Each ``plot_*`` function writes one PNG
and returns its path; the ``draw_*`` function behind it returns the matplotlib ``Figure`` so tests
can look at what was drawn. Figures are built on the Agg canvas directly (no pyplot), so nothing
opens a window, touches the global backend or stays in memory after saving. :func:`write_run_card`
writes ``README.md`` with ``huggingface_hub.ModelCard``, for training and for publishing alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import binomtest
from transformers import TrainerCallback

from hf_model.atomic import atomic_write, write_json_atomic
from hf_model.backbones import base_model_id
from hf_model.config import TOP_K, RunRecord
from hf_model.public_paths import LocalPaths, is_hub_repo_id, path_name
from hf_model.snippets import usage_section
from hf_model.temperature import RELIABILITY_PNG, plot_reliability_diagram
from hf_model.transforms import to_rgb

LEARNING_CURVES_PNG = "learning_curves.png"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
TOP_LOSSES_PNG = "top_losses.png"
PLOT_CAPTIONS = {
    LEARNING_CURVES_PNG: "Learning curves: loss and validation metrics per epoch",
    CONFUSION_MATRIX_PNG: "Confusion matrix on the test split",
    TOP_LOSSES_PNG: "The worst mistakes on the test split",
    RELIABILITY_PNG: "Reliability on the test split: how sure the model said it was against how often it was right, "
                     "before and after temperature scaling",
}
# log_history key -> legend label; the loss panel and the metric panel of the learning curves
LOSS_KEYS = {"loss": "train loss", "eval_loss": "validation loss"}
METRIC_KEYS = {"eval_accuracy": "validation accuracy", "eval_f1_macro": "validation macro-F1",
               "eval_top5_accuracy": "validation top-5 accuracy"}
# test_* key in all_results.json -> (model-index metric type, display name, metric args)
CARD_METRICS = {
    "test_accuracy": ("accuracy", "Accuracy", None),
    "test_f1_macro": ("f1", "F1 (macro)", {"average": "macro"}),
    "test_roc_auc": ("roc_auc", "ROC AUC", None),
    "test_top5_accuracy": ("top_k_accuracy", "Top-5 accuracy", {"k": 5}),
}
MAX_CARD_CLASSES = 30  # per-class rows in the card; the rest stay in all_results.json
LABELED_SPLITS = ("train", "validation", "test")  # the photos a card counts as the labeled data
DPI = 110
LOG_HISTORY_JSON = "log_history.json"


# ---------------------------------------------------------------- the end of a run

def write_reports(output_dir: str | Path, record: RunRecord, metrics: dict, probs: np.ndarray, test,
                  seconds: float, model_id: str | None = None, unscaled_probs: np.ndarray | None = None) -> str:
    """Write the test plots, the model card and, last, the run record marked finished; return the summary line.

    ``metrics`` are the ``test_*`` metrics (with ``test_confusion_matrix``; ``chosen``, what validation
    chose, when present), ``probs`` the test photos' class probabilities (photos, classes), ``test`` the test
    split (image, label), ``unscaled_probs`` the probabilities before temperature scaling (for the
    reliability diagram). Every file is replaced whole, and the record says ``finished`` only once all the
    others are written.
    """
    output_dir = Path(output_dir)
    label_names = test.features["label"].names
    if len(test):  # a folder too small for a test split gets no test plots
        plot_confusion_matrix(metrics["test_confusion_matrix"], label_names, output_dir / CONFUSION_MATRIX_PNG)
        truth = np.asarray(test["label"])
        plot_top_losses(list(test["image"]), [label_names[i] for i in truth],
                        [label_names[i] for i in probs.argmax(1)], probs.max(axis=1), output_dir / TOP_LOSSES_PNG,
                        losses=-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)))
        if unscaled_probs is not None:
            plot_reliability_diagram(unscaled_probs, probs, truth, output_dir / RELIABILITY_PNG,
                                     title="Reliability on the test split",
                                     temperature=(metrics.get("chosen") or {}).get("temperature"))
    write_run_card(output_dir, record, metrics, label_names, model_id)
    dataclasses.replace(record, finished=True).save(output_dir)
    return summary_line(metrics, seconds, output_dir, refit_photos=_refit_photos(record))


def summary_line(metrics: dict, seconds: float, output_dir: str | Path, refit_photos: int | None = None) -> str:
    """``Done in 3m25s: test accuracy 0.872 (95% CI 0.73-0.94), macro-F1 0.863, ... on 39 test photos. Model ...``

    ``refit_photos``: the labeled photos the saved model was refit on, after the test photos scored it.
    """
    minutes, secs = divmod(int(seconds), 60)
    model = f"Model (refit on all {refit_photos} labeled photos)" if refit_photos else "Model"
    return f"Done in {minutes}m{secs:02d}s: {metrics_line(metrics)}. {model} saved to {output_dir}"


def metrics_line(metrics: dict) -> str:
    """``test accuracy 0.872, macro-F1 0.863, roc-auc 0.853 on 39 test photos`` from the ``test_*`` metrics."""
    if "test_accuracy" not in metrics:
        return "not tested (too few photos for a test split)"
    low, high = wilson_interval(metrics["test_accuracy"], metrics["test_samples"])
    parts = [f"test accuracy {metrics['test_accuracy']:.3f} (95% CI {low:.2f}-{high:.2f})",
             f"macro-F1 {metrics['test_f1_macro']:.3f}"]
    for key in ("test_roc_auc", f"test_top{TOP_K}_accuracy"):
        if key in metrics:
            parts.append(f"{key.removeprefix('test_').replace('_', '-')} {metrics[key]:.3f}")
    n = metrics["test_samples"]
    return ", ".join(parts) + f" on {n} test photo{'s' if n != 1 else ''}"


class LearningCurvesCallback(TrainerCallback):
    """Writes ``log_history.json`` and ``learning_curves.png`` into ``output_dir`` as each stage ends.

    Give the same instance to every stage's ``Trainer``: each stage's epochs continue after the
    previous stage's, so the curves run on one axis with the stage boundaries dashed.
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.history: list[dict] = []
        self.boundaries: list[float] = []

    def on_train_end(self, args, state, control, **kwargs):
        offset = max((entry.get("epoch", 0) for entry in self.history), default=0)
        if self.history:
            self.boundaries.append(offset)
        stage = len(self.boundaries) + 1
        self.history += [dict(entry, epoch=entry.get("epoch", 0) + offset, stage=stage) for entry in state.log_history]
        if state.is_world_process_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output_dir / LOG_HISTORY_JSON, self.history, indent=1)
            plot_learning_curves(self.history, self.output_dir / LEARNING_CURVES_PNG,
                                 stage_boundaries=self.boundaries or None)


# ---------------------------------------------------------------- learning curves

def plot_learning_curves(log_history: list[dict], path: str | Path,
                         stage_boundaries: Sequence[float] | None = None) -> Path:
    """Loss (train + validation) and validation metrics per epoch, stage boundaries dashed."""
    return save_figure(draw_learning_curves(log_history, stage_boundaries), path)


def draw_learning_curves(log_history: list[dict], stage_boundaries: Sequence[float] | None = None) -> Figure:
    series = learning_curve_series(log_history)
    if not series:
        raise ValueError("log_history holds no 'loss' or 'eval_*' entries: was the Trainer logging per epoch?")
    fig = new_figure(11, 4.2)
    panels = fig.subplots(1, 2)
    for ax, keys, title in zip(panels, (LOSS_KEYS, METRIC_KEYS), ("Loss", "Validation metrics"), strict=True):
        for label in keys.values():
            if label in series:
                epochs, values = series[label]
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        for stage, x in enumerate(stage_boundaries or [], start=2):
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.text(x, 0.98, f" stage {stage}", transform=ax.get_xaxis_transform(), va="top", color="dimgrey")
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig


def learning_curve_series(log_history: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """``{legend label: (epochs, values)}`` for every loss and metric key found in ``log_history``."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in log_history:
        for key, label in {**LOSS_KEYS, **METRIC_KEYS}.items():
            if key in entry and "epoch" in entry:
                epochs, values = series.setdefault(label, ([], []))
                epochs.append(float(entry["epoch"]))
                values.append(float(entry[key]))
    return series


# ---------------------------------------------------------------- confusion matrix

def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                          max_classes: int = 20) -> Path:
    """Row-normalized, annotated matrix; beyond ``max_classes`` classes, a chart of the top confusions."""
    if len(class_names) > max_classes:
        return save_figure(draw_top_confusions(matrix, class_names), path)
    return save_figure(draw_confusion_matrix(matrix, class_names), path)


def draw_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    counts = np.asarray(matrix)
    shares = normalize_rows(counts)
    n = len(class_names)
    fig = new_figure(max(4.5, 0.55 * n + 2.5), max(4.0, 0.5 * n + 2))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for (i, j), share in np.ndenumerate(shares):
        if n > 10 and counts[i, j] == 0:
            continue  # empty cells left blank so the mistakes stand out
        text = f"{share:.2f}\n({counts[i, j]})" if n <= 10 else f"{share:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=9 if n <= 10 else 7,
                color="white" if share > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), [f"{name} (n={int(row.sum())})" for name, row in zip(class_names, counts, strict=True)])
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (each row sums to 1)")
    return fig


def draw_top_confusions(matrix: Sequence[Sequence[int]], class_names: Sequence[str], top: int = 25) -> Figure:
    pairs = top_confusions(matrix, class_names, top)
    fig = new_figure(10, max(2.5, 0.32 * len(pairs) + 1.2))
    ax = fig.subplots()
    if not pairs:
        ax.text(0.5, 0.5, "no confusions on the test split", ha="center", va="center")
        ax.set_axis_off()
        return fig
    labels = [f"{true} → {pred}" for true, pred, _ in pairs]
    counts = [count for _, _, count in pairs]
    bars = ax.barh(range(len(pairs)), counts, color="tab:red")
    ax.bar_label(bars, padding=2)
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.invert_yaxis()  # the most frequent confusion on top
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="test photos")
    # a figure title stays whole however wide the class names make the left margin
    fig.suptitle(f"Top {len(pairs)} confusions among {len(class_names)} classes (true → predicted)")
    return fig


def normalize_rows(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Each row divided by its sum (the share of each true class); rows with no photos stay 0."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def top_confusions(matrix: Sequence[Sequence[int]], class_names: Sequence[str], top: int = 25
                   ) -> list[tuple[str, str, int]]:
    """The most frequent ``(true, predicted, count)`` mistakes, most frequent first."""
    counts = np.array(matrix, dtype=int)
    np.fill_diagonal(counts, 0)
    true_ids, pred_ids = np.nonzero(counts)
    order = sorted(zip(true_ids, pred_ids, strict=True), key=lambda ij: (-counts[ij], ij))[:top]
    return [(class_names[i], class_names[j], int(counts[i, j])) for i, j in order]


# ---------------------------------------------------------------- top losses

def plot_top_losses(images: Sequence, true_labels: Sequence[str], pred_labels: Sequence[str],
                    pred_probs: Sequence[float], path: str | Path, k: int = 12,
                    losses: Sequence[float] | None = None) -> Path:
    """fastai-style grid of the ``k`` worst mistakes, titled true / predicted / p(predicted)."""
    return save_figure(draw_top_losses(images, true_labels, pred_labels, pred_probs, k, losses), path)


def draw_top_losses(images: Sequence, true_labels: Sequence[str], pred_labels: Sequence[str],
                    pred_probs: Sequence[float], k: int = 12, losses: Sequence[float] | None = None) -> Figure:
    worst = select_top_losses(true_labels, pred_labels, pred_probs, k, losses)
    columns = min(4, max(1, len(worst)))
    rows = max(1, math.ceil(len(worst) / columns))
    fig = new_figure(3.2 * columns, 3.6 * rows + 0.4)
    if not worst:
        fig.suptitle("No mistakes on the test split")
        return fig
    fig.suptitle(f"Worst {len(worst)} test mistakes: true / predicted / p(predicted)")
    for ax, i in zip(np.atleast_1d(fig.subplots(rows, columns)).ravel(), worst, strict=False):
        image = to_rgb(images[i])  # upright, 16-bit scaled: what the model saw
        image.thumbnail((320, 320))  # keeps the figure small when photos are large
        ax.imshow(np.asarray(image))
        title = f"true: {_short(true_labels[i])}\npred: {_short(pred_labels[i])}\np = {pred_probs[i]:.2f}"
        ax.set_title(title + (f", loss {losses[i]:.2f}" if losses is not None else ""), fontsize=9)
    for ax in fig.axes:
        ax.set_axis_off()
    return fig


def select_top_losses(true_labels: Sequence, pred_labels: Sequence, pred_probs: Sequence[float], k: int = 12,
                      losses: Sequence[float] | None = None) -> list[int]:
    """Indices of the wrong predictions, worst first: by loss when given, else by p(predicted)."""
    badness = losses if losses is not None else pred_probs
    wrong = [i for i, (true, pred) in enumerate(zip(true_labels, pred_labels, strict=True)) if true != pred]
    return sorted(wrong, key=lambda i: -badness[i])[:k]


# ---------------------------------------------------------------- model card

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## How to use

{{ usage }}

## Results on the test split

{{ results_table }}
{% if provenance %}
{{ provenance }}
{% endif %}
### Per class

{{ per_class_table }}

## Training

Labels: {{ label_source }}.

{{ splits_table }}
{% if command %}
{{ command_intro }}

```bash
{{ command }}
```
{% endif %}{% if hyperparameters_table %}
### Hyperparameters

{{ hyperparameters_table }}
{% endif %}{% if plots %}
## Plots
{% for name, caption in plots %}
![{{ caption }}]({{ name }})
{% endfor %}{% endif %}
## Intended use and limits

{{ intended_use }}
{% for limit in limits %}
- {{ limit }}{% endfor %}
"""


def model_files(model_dir: str | Path) -> dict[str, bool]:
    """Which clients a model folder serves besides transformers: ``timm`` (a timm model behind ``timm_wrapper``,
    its weights timm's own) and ``onnx`` (it holds ``model.onnx``)."""
    config = Path(model_dir) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return {"timm": model_type == "timm_wrapper", "onnx": (Path(model_dir) / "model.onnx").is_file()}


def write_model_card(output_dir: str | Path, *, base_model: str | None, dataset: str | None, metrics: dict,
                     command: str, hyperparameters: dict, label_names: Sequence[str], plots: Sequence[str],
                     label_source: str,
                     split_sizes: dict[str, int], license: str = "apache-2.0", limitations: str | None = None,
                     model_name: str | None = None, model_id: str | None = None, provenance: str = "",
                     data_dir: str | None = None, local_paths: LocalPaths | None = None) -> ModelCard:
    """Write ``output_dir/README.md``: Hub metadata with a ``model-index`` of the test metrics, then the prose.

    ``dataset`` is what ``--dataset`` named (a Hub id, or a local dataset folder), ``data_dir`` the
    ``--data_dir`` photo folder. Only Hub ids (:func:`is_hub_repo_id`) reach the metadata (``datasets:``,
    ``base_model``, the model-index dataset) and the links; a local folder is described in the prose by its
    last part (``bedrooms/``). ``local_paths`` are the run's paths (:meth:`LocalPaths.of_record`; by default
    those the command's path flags name): in the command, label source and hyperparameters each is cut to its
    last part, as is every other absolute or home path (:class:`LocalPaths`), and the command is quoted to run
    as shown. A published card never shows the training machine's folders.
    """
    output_dir = Path(output_dir)
    model_name = model_name or output_dir.resolve().name
    missing = [name for name in plots if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"plots {missing} are not in {output_dir}: write them before the model card")
    hub_dataset = dataset if dataset and is_hub_repo_id(dataset) else None
    local = None if hub_dataset else dataset or data_dir
    folder = f"`{path_name(local)}/`" if local else None  # its last part only: a home path names the user
    base_model = base_model if base_model and is_hub_repo_id(base_model) else None
    local_paths = local_paths or LocalPaths.of_record({"command": command})
    label_source = local_paths.cut(label_source)
    public_command = local_paths.cut_command(command)
    command_intro = ("Trained with this exact command:" if public_command == command
                     else "Trained with this command (local paths cut to their last folder):")
    card_data = ModelCardData(
        model_name=model_name, base_model=base_model, datasets=[hub_dataset] if hub_dataset else None,
        license=license, library_name="transformers", pipeline_tag="image-classification",
        tags=["image-classification", "vision", "hf_model"],
        metrics=[CARD_METRICS[key][0] for key in CARD_METRICS if key in metrics],
        eval_results=eval_results(metrics, hub_dataset),
    )
    card = ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, model_name=model_name,
        usage=usage_section(model_id or str(output_dir), on_hub=bool(model_id), top_k=min(TOP_K, len(label_names)),
                            **model_files(output_dir)),
        summary=_summary(base_model, _data_phrase(hub_dataset, folder, split_sizes), label_names),
        results_table=results_table(metrics, count_test_photos(metrics, split_sizes), len(label_names)),
        provenance=provenance,
        per_class_table=per_class_table(metrics.get("test_per_class", {})), label_source=label_source,
        splits_table=markdown_table(["split", "photos"], list(split_sizes.items())) if split_sizes else "",
        command=public_command, command_intro=command_intro,
        hyperparameters_table=_hyperparameters_table(hyperparameters, local_paths),
        plots=[(name, PLOT_CAPTIONS.get(name, Path(name).stem.replace("_", " "))) for name in plots],
        intended_use=_intended_use(hub_dataset or folder or "the training folder", label_names),
        limits=_limits(metrics, split_sizes, label_source, len(label_names), limitations),
    )
    text = str(card)
    with atomic_write(output_dir / "README.md", newline="", encoding="utf-8") as f:  # as ModelCard.save writes it
        f.write(text)
    return card


def write_run_card(output_dir: str | Path, record: RunRecord | None, metrics: dict, label_names: Sequence[str],
                   model_id: str | None = None, model_name: str | None = None) -> ModelCard:
    """The model card of a trained folder, from its run record (when there is one) and test metrics.

    Training writes it at the end of a run; publishing writes it for a folder that has none. The
    plots listed are those of ``PLOT_CAPTIONS`` present in the folder. The card is named
    ``model_name``, else the repo's name in ``model_id``, else the folder's name.
    """
    plots = [name for name in PLOT_CAPTIONS if (Path(output_dir) / name).is_file()]
    model_name = model_name or (model_id.split("/")[-1] if model_id else None)
    if record is None:
        return write_model_card(output_dir, base_model=None, dataset=None, metrics=metrics, command="",
                                hyperparameters={}, label_names=label_names, plots=plots,
                                label_source="the training folder", split_sizes={}, model_id=model_id,
                                model_name=model_name)
    return write_model_card(
        output_dir, base_model=base_model_id(record.config.backbone), dataset=record.config.dataset,
        data_dir=record.config.data_dir, metrics=metrics,
        command=record.command, hyperparameters=card_hyperparameters(record, metrics.get("chosen")),
        label_names=label_names, plots=plots,
        label_source=record.label_source, split_sizes=record.split_sizes, model_id=model_id, model_name=model_name,
        provenance=provenance(record, metrics), local_paths=LocalPaths.of_record(record.to_dict()))


def provenance(record: RunRecord, metrics: dict) -> str:
    """The card's note on which model the test figures describe (refit or not) and how its probabilities are scaled."""
    notes = []
    sizes = record.split_sizes
    if record.cv_fold:
        notes.append(f"This is fold {record.cv_fold[0] + 1} of a {record.cv_fold[1]}-fold cross-validation: the test "
                     "photos are the fold's, and the model learned from all the others.")
    elif _refit_photos(record) and sizes.get("test"):
        notes.append(f"**Where these figures come from.** The {sizes['test']} test photos scored the model fitted on "
                     f"the train and validation photos; the model in this repository was then refit on all "
                     f"{_refit_photos(record)} labeled photos with the settings chosen on held-out photos, so it has "
                     "seen the "
                     "test photos too. The figures describe the recipe; for figures over every photo, "
                     "cross-validate it (`--cv_folds 5`).")
    report = (metrics.get("chosen") or {}).get("temperature_report")
    if report:
        test = (f" On the test photos the expected calibration error (15 bins) went from "
                f"{metrics['test_ece_unscaled']:.3f} to {metrics['test_ece']:.3f}." if "test_ece_unscaled" in metrics
                else "")
        notes.append(f"**Confidence.** The probabilities are temperature-scaled (Guo et al. 2017): T = "
                     f"{report['temperature']:.3f}, fitted on {report['n']} held-out predictions and folded into the "
                     f"classifier layer, so `pipeline()` gives them as they are.{test}")
    return "\n\n".join(notes)


def _refit_photos(record: RunRecord) -> int | None:
    """The labeled photos a refit single run's saved model learned from (``None`` without a refit, or in a fold)."""
    if not getattr(record.config, "refit", False) or record.cv_fold:
        return None
    return sum(n for split, n in record.split_sizes.items() if split in ("train", "validation", "test",
                                                                           "pseudo_labeled")) or None


# Settings only a Trainer stage uses: a card of the closed-form head alone leaves them out
TRAINER_SETTINGS = ("learning_rate", "epochs", "batch_size", "devices", "multi_device_batch", "weight_decay",
                    "lr_scheduler", "stages",
                    "freeze_batchnorm", "head_learning_rate", "head_epochs", "head_patience", "head_dropout",
                    "early_stopping_patience", "resume")


def card_hyperparameters(record: RunRecord, chosen: dict | None = None) -> dict:
    """The card's hyperparameter table: the main ``TrainingArguments``, the recipe (not the data paths), and what
    held-out photos chose (``chosen``: the logistic head's ``C``, the temperature)."""
    args = record.training_args
    # the learning rates and batch as trained: on several devices, after distributed.for_devices
    lr_scale = record.devices if record.config.multi_device_batch == "scale_lr" else 1
    table = {"seed": args.seed, "learning_rate": args.learning_rate * lr_scale, "epochs": args.num_train_epochs,
             "batch_size": record.global_batch_size  # photos per optimizer step on all devices
             or args.per_device_train_batch_size * args.gradient_accumulation_steps,
             **({"devices": record.devices} if record.devices > 1 else {}), "weight_decay": args.weight_decay,
             "lr_scheduler": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
             "image_size": record.image_size,
             **({"cross_validation_fold": f"{record.cv_fold[0] + 1} of {record.cv_fold[1]}"} if record.cv_fold else {}),
             **{k: v for k, v in dataclasses.asdict(record.config).items()  # image_size: the size trained at, above
                if k not in ("data_dir", "dataset", "labels_file", "preset", "preset_file", "cache_dir",
                             "image_size")}}
    table["head_learning_rate"] *= lr_scale
    if record.devices == 1:
        table.pop("multi_device_batch")  # a rule for several devices only
    chosen = chosen or {}
    if chosen.get("head_C") is not None:
        table["head_C"] = chosen["head_C"]  # the L2 strength inner cross-validation chose
    if chosen.get("temperature_report"):
        table["temperature"] = round(chosen["temperature"], 4)
    if record.config.unfreeze_top_blocks == 0 and record.config.head != "sgd":
        table = {k: v for k, v in table.items() if k not in TRAINER_SETTINGS}
    return table


def eval_results(metrics: dict, dataset: str | None) -> list[EvalResult]:
    """One ``EvalResult`` per test metric present (accuracy, macro-F1, ROC AUC, top-5).

    ``dataset`` is the Hub dataset id tested on, or None for local photos (``imagefolder``, named
    "local photo folder"): the Hub reads the model-index dataset type as a dataset id.
    """
    return [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=dataset or "imagefolder", dataset_name=dataset or "local photo folder",
                   dataset_split="test",
                   metric_type=metric_type, metric_name=name, metric_args=args, metric_value=float(metrics[key]))
        for key, (metric_type, name, args) in CARD_METRICS.items() if key in metrics
    ]


def results_table(metrics: dict, test_photos: int | None, n_classes: int) -> str:
    rows = [[name, f"{metrics[key]:.3f}"] for key, (_, name, _) in CARD_METRICS.items()
            if key in metrics]
    if not rows:
        return "No test results were recorded with this model."
    if test_photos and "test_accuracy" in metrics:
        low, high = wilson_interval(metrics["test_accuracy"], test_photos)
        rows[0][1] += f" (95% CI {low:.3f}–{high:.3f}, Wilson, n={test_photos})"
    note = "\n\nWith more than two classes ROC AUC is one-vs-rest, averaged over classes." if n_classes > 2 else ""
    return markdown_table(["metric", "value"], rows) + note


def per_class_table(per_class: dict[str, dict], limit: int = MAX_CARD_CLASSES) -> str:
    """Precision/recall/F1/support per class; beyond ``limit`` classes only the lowest F1 are shown."""
    names = list(per_class)
    note = ""
    if len(names) > limit:
        names = sorted(names, key=lambda name: (per_class[name]["f1"], -per_class[name]["support"]))[:limit]
        note = (f"\n\nShowing the {limit} classes with the lowest F1; {len(per_class) - limit} more are "
                "omitted here and listed in `all_results.json` (`test_per_class`).")
    rows = [[name, *(f"{per_class[name][k]:.3f}" if per_class[name]["support"] else "—"  # untested: no score
                     for k in ("precision", "recall", "f1")), per_class[name]["support"]] for name in names]
    return markdown_table(["class", "precision", "recall", "F1", "photos"], rows) + note


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    """95% confidence interval of an accuracy measured on ``n`` photos: Wilson's score interval (scipy)."""
    return tuple(binomtest(round(accuracy * n), n).proportion_ci(confidence_level=0.95, method="wilson"))


def count_test_photos(metrics: dict, split_sizes: dict[str, int]) -> int | None:
    """Test photos: the per-class supports when present, else the recorded split size."""
    per_class = metrics.get("test_per_class")
    return sum(c["support"] for c in per_class.values()) if per_class else split_sizes.get("test")


def _hyperparameters_table(hyperparameters: dict, local_paths: LocalPaths) -> str:
    """The card's hyperparameter table, sorted by name; a path in it (a local backbone) shows its last part."""
    rows = sorted((name, local_paths.cut(value) if isinstance(value, str) else value)
                  for name, value in hyperparameters.items())
    return markdown_table(["hyperparameter", "value"], rows) if rows else ""


def _data_phrase(hub_dataset: str | None, folder: str | None, split_sizes: dict[str, int]) -> str:
    """The training data in the card's summary: a linked Hub id, or the local folder's name and photo count."""
    if hub_dataset:
        return f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})"
    if not folder:
        return "a local folder of photos"
    photos = sum(n for split, n in split_sizes.items() if split in LABELED_SPLITS)
    return f"a local folder of photos ({folder}{f', {photos} labeled photos' if photos else ''})"


def _summary(base_model: str | None, data: str, label_names: Sequence[str]) -> str:
    if not base_model:
        base = "a pretrained backbone from a local folder"
    else:
        base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model.count("/") == 1 else base_model
    return (f"An image classifier fine-tuned from {base} on {data}. It sorts a photo into one of "
            f"{len(label_names)} classes: {_names(label_names)}.")


def _intended_use(data_name: str, label_names: Sequence[str]) -> str:
    return (f"Sorting photos like those it was trained on ({data_name}) into "
            f"{_names(label_names, 6)}, as a first pass that a person can check. It is not meant for decisions "
            "about people or for photos of other kinds.")


def _limits(metrics: dict, split_sizes: dict, label_source: str, n_classes: int, extra: str | None) -> list[str]:
    limits = [f"**Label noise.** Labels come from {label_source}. Wrong or debatable labels are learned as they "
              "are and cap the accuracy that can be measured."]
    n = count_test_photos(metrics, split_sizes)
    if n and "test_accuracy" in metrics:
        low, high = wilson_interval(metrics["test_accuracy"], n)
        limits.append(f"**Small test set.** The test split holds {n} photos, so the test accuracy "
                      f"{metrics['test_accuracy']:.3f} has an approximate 95% confidence interval of "
                      f"{low:.3f}–{high:.3f} (Wilson score interval); differences between runs smaller than "
                      "that are noise.")
    limits.append(f"**Out-of-domain photos.** The model always answers with one of its {n_classes} classes, even "
                  "for a photo that belongs to none of them; its probabilities are calibrated on photos like the "
                  "training ones only. "
                  "Photos unlike the training data (other cameras, drawings, screenshots) may be misclassified "
                  "with high confidence.")
    return limits + ([extra] if extra else [])


# ---------------------------------------------------------------- small shared helpers

def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches that renders with Agg, free of pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever the process-wide backend is
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically, then free it; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:  # a kill mid-save leaves the previous plot, not half a PNG
        fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    fig.clear()  # a pyplot-free Figure is freed once unreferenced; clear() drops its artists now
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` and newlines in cells are escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names)} in all)"


def _short(label, width: int = 34) -> str:
    return textwrap.shorten(str(label), width=width, placeholder="…")
