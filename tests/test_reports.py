"""Plots and model card: hand-made inputs with known answers."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from hf_model import public_paths, reports

# Two stages: stage 1 ran epochs 1-2, stage 2 (its own Trainer, epochs offset by 2) ran epochs 3-4.
LOG_HISTORY = [
    {"epoch": 1.0, "loss": 0.9, "step": 10},
    {"epoch": 1.0, "eval_loss": 0.8, "eval_accuracy": 0.6, "eval_f1_macro": 0.5, "step": 10},
    {"epoch": 2.0, "loss": 0.7, "step": 20},
    {"epoch": 2.0, "eval_loss": 0.6, "eval_accuracy": 0.7, "eval_f1_macro": 0.65, "step": 20},
    {"epoch": 2.0, "train_loss": 0.8, "train_runtime": 3.0, "step": 20},  # the stage's summary, not a point
    {"epoch": 3.0, "loss": 0.4, "step": 30},
    {"epoch": 3.0, "eval_loss": 0.5, "eval_accuracy": 0.8, "eval_f1_macro": 0.75, "step": 30},
    {"epoch": 4.0, "loss": 0.3, "step": 40},
    {"epoch": 4.0, "eval_loss": 0.45, "eval_accuracy": 0.85, "eval_f1_macro": 0.8, "step": 40},
    {"test_loss": 0.5, "test_accuracy": 0.8},  # trainer.evaluate(..., metric_key_prefix="test") has no epoch
]
METRICS = {
    "test_accuracy": 0.7948717948717948,
    "test_f1_macro": 0.7833333333333333,
    "test_roc_auc": 0.836111111111111,
    "test_loss": 0.51,
    "test_per_class": {
        "Modern": {"precision": 0.7333, "recall": 0.7333, "f1": 0.7333, "support": 15},
        "Old": {"precision": 0.8333, "recall": 0.8333, "f1": 0.8333, "support": 24},
    },
    "test_confusion_matrix": [[11, 4], [4, 20]],
}
COMMAND = "python train.py --preset bedrooms --data_dir ../shared/data/bedrooms --output_dir runs/bedrooms"


def write_card(output_dir, metrics=METRICS, label_names=("Modern", "Old"), plots=(), **overrides):
    kwargs = dict(base_model="timm/tf_efficientnet_lite0.in1k", dataset=None, metrics=metrics, command=COMMAND,
                  hyperparameters={"learning_rate": 3e-4, "num_train_epochs": 12}, label_names=list(label_names),
                  plots=list(plots), label_source="labels.csv (labels by file name)",
                  split_sizes={"train": 289, "validation": 58, "test": 39})
    return reports.write_model_card(output_dir, **{**kwargs, **overrides})


# ---------------------------------------------------------------- learning curves

def test_learning_curve_series_reads_losses_and_metrics_per_epoch():
    series = reports.learning_curve_series(LOG_HISTORY)
    assert series["train loss"] == ([1.0, 2.0, 3.0, 4.0], [0.9, 0.7, 0.4, 0.3])
    assert series["validation loss"] == ([1.0, 2.0, 3.0, 4.0], [0.8, 0.6, 0.5, 0.45])
    assert series["validation accuracy"][1] == [0.6, 0.7, 0.8, 0.85]
    assert series["validation macro-F1"][1] == [0.5, 0.65, 0.75, 0.8]
    assert "validation top-5 accuracy" not in series


def test_learning_curves_png_is_a_valid_image(tmp_path):
    path = reports.plot_learning_curves(LOG_HISTORY, tmp_path / "plots" / reports.LEARNING_CURVES_PNG, [2.0])
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.width > 400 and image.height > 200


def test_stage_boundary_is_a_dashed_line_on_both_panels():
    fig = reports.draw_learning_curves(LOG_HISTORY, stage_boundaries=[2.0])
    loss_panel, metric_panel = fig.axes
    for ax in (loss_panel, metric_panel):
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert [list(line.get_xdata()) for line in dashed] == [[2.0, 2.0]]
        assert any("stage 2" in text.get_text() for text in ax.texts)
    assert {line.get_label() for line in loss_panel.lines} >= {"train loss", "validation loss"}
    assert {line.get_label() for line in metric_panel.lines} >= {"validation accuracy", "validation macro-F1"}


def test_no_stage_boundary_draws_no_dashed_line():
    fig = reports.draw_learning_curves(LOG_HISTORY)
    assert not [line for ax in fig.axes for line in ax.lines if line.get_linestyle() == "--"]


def test_learning_curves_without_logged_epochs_say_so():
    with pytest.raises(ValueError, match="log_history"):
        reports.draw_learning_curves([{"train_runtime": 3.0}])


# ---------------------------------------------------------------- confusion matrix

def test_normalized_rows_sum_to_one_and_empty_rows_stay_zero():
    shares = reports.normalize_rows([[11, 4], [4, 20], [0, 0]])
    np.testing.assert_allclose(shares[:2].sum(axis=1), [1.0, 1.0])
    np.testing.assert_allclose(shares[0], [11 / 15, 4 / 15])
    assert shares[2].tolist() == [0.0, 0.0]


def test_confusion_matrix_draws_the_row_shares_with_counts():
    fig = reports.draw_confusion_matrix([[11, 4], [4, 20]], ["Modern", "Old"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[11 / 15, 4 / 15], [4 / 24, 20 / 24]])
    assert "0.73\n(11)" in [text.get_text() for text in ax.texts]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["Modern (n=15)", "Old (n=24)"]


def test_top_confusions_are_the_most_frequent_off_diagonal_pairs():
    matrix = [[9, 1, 5],
              [0, 7, 0],
              [2, 3, 8]]
    assert reports.top_confusions(matrix, ["a", "b", "c"], top=3) == [("a", "c", 5), ("c", "b", 3), ("c", "a", 2)]
    assert reports.top_confusions(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_many_classes_get_the_top_confusions_chart(tmp_path, monkeypatch):
    n = 30
    matrix = np.eye(n, dtype=int) * 4
    matrix[3, 9] = 6
    names = [f"class {i}" for i in range(n)]
    fig = reports.draw_top_confusions(matrix, names)
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == ["class 3 → class 9"]
    drawn = []
    monkeypatch.setattr(reports, "draw_top_confusions", lambda *args: drawn.append(args) or fig)
    path = reports.plot_confusion_matrix(matrix, names, tmp_path / "cm.png", max_classes=20)
    assert drawn and path.stat().st_size > 0


# ---------------------------------------------------------------- top losses

def test_top_losses_are_the_wrong_predictions_worst_first():
    true = ["a", "a", "b", "b", "a"]
    pred = ["a", "b", "a", "b", "b"]
    p_pred = [0.99, 0.6, 0.9, 0.8, 0.7]
    assert reports.select_top_losses(true, pred, p_pred) == [2, 4, 1]  # the correct 0 and 3 are left out
    assert reports.select_top_losses(true, pred, p_pred, k=2, losses=[0, 5.0, 1.0, 0, 3.0]) == [1, 4]


def test_top_losses_grid_titles_name_true_predicted_and_p(tmp_path):
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    fig = reports.draw_top_losses(images, ["Old", "Modern", "Old"], ["Modern", "Modern", "Modern"], [0.9, 0.8, 0.6])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true: Old\npred: Modern\np = 0.90", "true: Old\npred: Modern\np = 0.60"]
    path = reports.plot_top_losses(images, ["Old", "Modern", "Old"], ["Modern", "Modern", "Modern"],
                                   [0.9, 0.8, 0.6], tmp_path / reports.TOP_LOSSES_PNG)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_top_losses_with_no_mistakes_still_writes_a_png(tmp_path):
    fig = reports.draw_top_losses([Image.new("RGB", (8, 8))], ["a"], ["a"], [0.9])
    assert fig.get_suptitle() == "No mistakes on the test split"
    path = reports.plot_top_losses([Image.new("RGB", (8, 8))], ["a"], ["a"], [0.9], tmp_path / "t.png")
    assert path.stat().st_size > 0


# ---------------------------------------------------------------- model card

def test_wilson_interval_matches_known_values():
    low, high = reports.wilson_interval(0.5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert reports.wilson_interval(1.0, 20) == (pytest.approx(0.8389, abs=1e-4), 1.0)


def test_card_yaml_has_pipeline_tag_base_model_and_exact_test_metrics(tmp_path):
    write_card(tmp_path, model_name="bedrooms-test")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification"
    assert data["library_name"] == "transformers"
    assert data["base_model"] == "timm/tf_efficientnet_lite0.in1k"
    assert data["license"] == "apache-2.0"
    (index,) = data["model-index"]
    assert index["name"] == "bedrooms-test"
    (result,) = index["results"]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["split"] == "test"
    values = {metric["type"]: metric["value"] for metric in result["metrics"]}
    assert values == {"accuracy": METRICS["test_accuracy"], "f1": METRICS["test_f1_macro"],
                      "roc_auc": METRICS["test_roc_auc"]}


def test_card_reports_top5_and_hub_dataset_when_present(tmp_path):
    metrics = {"test_accuracy": 0.9, "test_f1_macro": 0.85, "test_roc_auc": 0.99, "test_top5_accuracy": 0.97}
    write_card(tmp_path, metrics=metrics, label_names=[f"bird {i}" for i in range(8)], dataset="someone/birds")
    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data["datasets"] == ["someone/birds"]
    metrics_in_index = data["model-index"][0]["results"][0]["metrics"]
    assert {"type": "top_k_accuracy", "value": 0.97, "name": "Top-5 accuracy", "args": {"k": 5}} in metrics_in_index


def test_card_text_has_usage_results_command_plots_and_limits(tmp_path):
    for name in (reports.LEARNING_CURVES_PNG, reports.CONFUSION_MATRIX_PNG):
        (tmp_path / name).write_bytes(b"png")
    card = write_card(tmp_path, plots=[reports.LEARNING_CURVES_PNG, reports.CONFUSION_MATRIX_PNG],
                      model_id="someone/bedrooms", limitations="Trained on listing photos only.")
    text = (tmp_path / "README.md").read_text()
    assert text == str(card)
    assert 'pipeline("image-classification", model="someone/bedrooms")' in text
    assert ("Trained with this command (local paths cut to their last folder):\n\n```bash\n"  # of COMMAND
            "python train.py --preset bedrooms --data_dir bedrooms --output_dir bedrooms\n```") in text
    assert "| Modern | 0.733 | 0.733 | 0.733 | 15 |" in text
    assert "| learning_rate | 0.0003 |" in text
    assert "](learning_curves.png)" in text and "](confusion_matrix.png)" in text
    low, high = reports.wilson_interval(METRICS["test_accuracy"], 39)
    assert f"{low:.3f}–{high:.3f}" in text and "39 photos" in text
    assert "Label noise" in text and "Out-of-domain" in text and "Trained on listing photos only." in text


def test_per_class_table_is_capped_and_says_how_many_are_omitted():
    per_class = {f"c{i}": {"precision": 1.0, "recall": 1.0, "f1": i / 40, "support": 2} for i in range(40)}
    table = reports.per_class_table(per_class, limit=30)
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]  # after the header
    assert len(rows) == 30 and rows[0].startswith("| c0 |")  # lowest F1 first
    assert "| c35 |" not in table
    assert "10 more are omitted" in table


def test_card_refuses_a_plot_that_is_not_in_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="top_losses.png"):
        write_card(tmp_path, plots=[reports.TOP_LOSSES_PNG])
    assert not (tmp_path / "README.md").exists()


# ---------------------------------------------------------------- the end of a run

def test_learning_curves_callback_joins_the_stages_on_one_epoch_axis(tmp_path):
    import json

    from transformers import TrainerControl, TrainerState, TrainingArguments

    callback = reports.LearningCurvesCallback(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    for stage_log in (LOG_HISTORY[:5], [dict(e, epoch=e["epoch"] - 2) for e in LOG_HISTORY[5:9]]):
        callback.on_train_end(args, TrainerState(log_history=stage_log), TrainerControl())
    saved = json.loads((tmp_path / reports.LOG_HISTORY_JSON).read_text())
    assert [e["epoch"] for e in saved if "eval_loss" in e] == [1.0, 2.0, 3.0, 4.0]
    assert [e["stage"] for e in saved if "eval_loss" in e] == [1, 1, 2, 2]
    assert callback.boundaries == [2.0]
    assert (tmp_path / reports.LEARNING_CURVES_PNG).stat().st_size > 1000


def test_summary_line_names_the_metrics_and_the_folder():
    line = reports.summary_line({**METRICS, "test_samples": 39}, 205, "runs/bedrooms")
    assert line == ("Done in 3m25s: test accuracy 0.795 (95% CI 0.64-0.89), macro-F1 0.783, roc-auc 0.836 on 39 test "
                    "photos. "
                    "Model saved to runs/bedrooms")


def test_run_card_without_a_record_still_has_usage_and_results(tmp_path):
    (tmp_path / reports.CONFUSION_MATRIX_PNG).write_bytes(b"png")
    reports.write_run_card(tmp_path, None, {"test_accuracy": 0.5}, ["cat", "dog"], model_id="alice/pets")
    text = (tmp_path / "README.md").read_text()
    assert 'pipeline("image-classification", model="alice/pets")' in text
    assert "| Accuracy | 0.500" in text and "](confusion_matrix.png)" in text
    assert "Trained with this exact command" not in text  # nothing recorded, nothing claimed
    reports.write_run_card(tmp_path, None, {}, ["cat", "dog"])
    assert "No test results were recorded" in (tmp_path / "README.md").read_text()


def test_a_fold_card_says_which_fold_it_is(tmp_path):
    from hf_model.config import RunRecord, parse_args

    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path)])
    table = reports.card_hyperparameters(RunRecord(cfg, args, cv_fold=(1, 5)))
    assert table["cross_validation_fold"] == "2 of 5" and table["learning_rate"] == args.learning_rate
    assert "cross_validation_fold" not in reports.card_hyperparameters(RunRecord(cfg, args))


# ---------------------------------------------------------------- files written whole

def _fail_halfway(self, target, **kwargs):
    """``Figure.savefig`` on a full disk: some bytes reach the file, then it raises."""
    if isinstance(target, str | Path):
        Path(target).write_bytes(b"\x89PNG half")
    else:
        target.write(b"\x89PNG half")
    raise OSError("No space left on device")


def test_a_plot_that_fails_halfway_leaves_the_previous_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = reports.plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / reports.CONFUSION_MATRIX_PNG)
    before = path.read_bytes()
    monkeypatch.setattr(Figure, "savefig", _fail_halfway)
    with pytest.raises(OSError, match="No space"):
        reports.plot_confusion_matrix([[0, 4], [4, 0]], ["cat", "dog"], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [reports.CONFUSION_MATRIX_PNG]  # no temporary file left


def test_a_card_that_fails_halfway_leaves_the_previous_card(tmp_path, monkeypatch):
    write_card(tmp_path)
    before = (tmp_path / "README.md").read_text()

    def broken(self):
        raise MemoryError("rendering the card")

    monkeypatch.setattr(ModelCard, "__str__", broken)
    with pytest.raises(MemoryError):
        write_card(tmp_path, model_id="someone/else")
    assert (tmp_path / "README.md").read_text() == before


def test_the_record_says_finished_only_once_plots_and_card_are_written(tmp_path, monkeypatch):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    from hf_model.config import RunRecord, load_run_config, parse_args

    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path)])
    record = RunRecord(cfg, args, label_names=["cat", "dog"], finished=False)
    record.save(tmp_path)  # what training writes when it starts
    test = Dataset.from_dict({"image": [Image.new("RGB", (8, 8), c) for c in ("red", "blue")], "label": [0, 1]},
                             features=Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog"])}))
    metrics = {**METRICS, "test_samples": 2, "test_confusion_matrix": [[1, 0], [1, 0]]}
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])

    def no_card(*args, **kwargs):
        raise OSError("killed while writing the card")

    monkeypatch.setattr(reports, "write_run_card", no_card)
    with pytest.raises(OSError):
        reports.write_reports(tmp_path, record, metrics, probs, test, 1.0)
    assert load_run_config(tmp_path).finished is False
    monkeypatch.undo()
    reports.write_reports(tmp_path, record, metrics, probs, test, 1.0)
    assert load_run_config(tmp_path).finished is True and (tmp_path / "README.md").is_file()


# ---------------------------------------------------------------- only Hub ids in the metadata

SPLITS = {"train": 289, "validation": 58, "test": 39, "unlabeled": 795}


def run_card(tmp_path, *flags: str, command: str = "", label_source: str = "labels.csv (labels by file name)"):
    """The card of a run trained with ``flags``, written from its run record as loaded back from disk."""
    from hf_model.config import RunRecord, load_run_config, parse_args

    run = tmp_path / "run"
    cfg, args = parse_args([*flags, "--output_dir", str(run)])
    RunRecord(cfg, args, command, None, 224, label_source, SPLITS, ["Modern", "Old"]).save(run)
    return run, load_run_config(run)


def assert_local_data_card(card: ModelCard, text: str, hidden: str):
    data = card.data.to_dict()
    assert "datasets" not in data
    (result,) = data["model-index"][0]["results"]
    assert result["dataset"] == {"name": "local photo folder", "type": "imagefolder", "split": "test"}
    assert "on a local folder of photos (`bedrooms/`, 386 labeled photos). It sorts" in text
    assert "Sorting photos like those it was trained on (`bedrooms/`) into" in text
    assert "huggingface.co/datasets" not in text
    assert hidden not in text


def test_a_local_dataset_folder_is_prose_not_metadata_after_it_moved(tmp_path):
    folder = tmp_path / "home" / "alice" / "bedrooms"
    folder.mkdir(parents=True)
    run, record = run_card(tmp_path, "--dataset", str(folder))
    assert record.config.dataset == str(folder)  # the record keeps where it was at training time
    folder.rename(tmp_path / "moved")  # the card rebuilt after the folder moved, or on another machine

    card = reports.write_run_card(run, record, METRICS, ["Modern", "Old"], model_id="alice/bedrooms")
    assert_local_data_card(card, (run / "README.md").read_text(), hidden=str(tmp_path))


def test_a_relative_local_dataset_folder_is_prose_when_training_writes_the_card(tmp_path, monkeypatch):
    from hf_model.config import RunRecord, parse_args

    monkeypatch.chdir(tmp_path)
    Path("bedrooms").mkdir()  # --dataset bedrooms: load_dataset reads the folder, not a Hub repo of that name
    cfg, args = parse_args(["--dataset", "bedrooms", "--output_dir", "run"])
    Path("run").mkdir()
    card = reports.write_run_card("run", RunRecord(cfg, args, "", None, 224, "", SPLITS), METRICS, ["Modern", "Old"])
    assert_local_data_card(card, Path("run/README.md").read_text(), hidden="datasets/bedrooms")


def test_a_hub_dataset_id_is_metadata_and_a_link(tmp_path):
    run, record = run_card(tmp_path, "--dataset", "someone/bedrooms")
    card = reports.write_run_card(run, record, METRICS, ["Modern", "Old"])
    text = (run / "README.md").read_text()

    assert card.data.datasets == ["someone/bedrooms"]
    assert card.data.eval_results[0].dataset_type == "someone/bedrooms"
    assert "on [someone/bedrooms](https://huggingface.co/datasets/someone/bedrooms)" in text
    assert "Sorting photos like those it was trained on (someone/bedrooms) into" in text


def test_a_data_dir_run_card_shows_no_absolute_path(tmp_path):
    photos = tmp_path / "home" / "alice" / "photos" / "bedrooms"
    photos.mkdir(parents=True)
    (photos / "labels.csv").write_text("file_name,label\n")
    command = f"hf-model train --data_dir {photos} --labels_file={photos}/labels.csv --output_dir {tmp_path}/run"
    run, record = run_card(tmp_path, "--data_dir", str(photos), "--labels_file", str(photos / "labels.csv"),
                           command=command, label_source=f"{photos}/labels.csv (labels by file name)")
    card = reports.write_run_card(run, record, METRICS, ["Modern", "Old"], model_id="someone/bedrooms")
    text = (run / "README.md").read_text()

    assert str(tmp_path) not in text and "alice" not in text
    assert ("Trained with this command (local paths cut to their last folder):\n\n```bash\nhf-model train "
            "--data_dir bedrooms --labels_file=labels.csv --output_dir run\n```") in text
    assert "Labels: labels.csv (labels by file name)." in text
    assert "| labels_file |" not in text and "| seed |" in text  # the data's files are not hyperparameters
    assert_local_data_card(card, text, hidden="photos/bedrooms")


def test_a_local_backbone_folder_is_no_base_model(tmp_path):
    backbone = tmp_path / "home" / "alice" / "my-backbone"
    backbone.mkdir(parents=True)
    run, record = run_card(tmp_path, "--data_dir", "bedrooms", "--backbone", str(backbone))
    backbone.rmdir()  # published from another machine: base_model_id cannot see it is a folder
    card = reports.write_run_card(run, record, METRICS, ["Modern", "Old"], model_id="someone/bedrooms")
    text = (run / "README.md").read_text()

    assert card.data.base_model is None and "alice" not in text
    assert "fine-tuned from a pretrained backbone from a local folder" in text
    assert "| backbone | my-backbone |" in text


@pytest.mark.parametrize(("name", "is_hub_id"), [
    ("someone/bedrooms", True), ("beans", True), ("timm/tf_efficientnet_lite0.in1k", True),
    ("/home/alice/bedrooms", False), ("./bedrooms", False), ("../data/bedrooms", False), ("~/bedrooms", False),
    ("C:\\Users\\alice\\bedrooms", False), ("data\\bedrooms", False), ("data/photos/bedrooms", False),
    ("bedrooms/", False),
])
def test_is_hub_repo_id_follows_the_hubs_repo_id_rules(name, is_hub_id):
    assert public_paths.is_hub_repo_id(name) is is_hub_id


def test_a_name_that_is_a_local_folder_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("someone", "bedrooms").mkdir(parents=True)
    assert not public_paths.is_hub_repo_id("someone/bedrooms")
    assert public_paths.is_hub_repo_id("someone/bedrooms", check_local=False)


@pytest.mark.parametrize(("text", "public"), [
    ("--data_dir /home/alice/photos/bedrooms --output_dir runs/b", "--data_dir bedrooms --output_dir runs/b"),
    ("--dataset=/home/alice/bedrooms/", "--dataset=bedrooms"),
    ("--data_dir ~/photos/bedrooms", "--data_dir bedrooms"),
    ("--data_dir C:\\Users\\alice\\bedrooms", "--data_dir bedrooms"),
    ("Hub dataset /home/alice/bedrooms (column 'label')", "Hub dataset bedrooms (column 'label')"),
    ("--data_dir ../shared/data/bedrooms", "--data_dir ../shared/data/bedrooms"),  # relative: kept
    ("see https://huggingface.co/datasets/someone/x", "see https://huggingface.co/datasets/someone/x"),
    ("train / validation, 3/4 of a/b", "train / validation, 3/4 of a/b"),
])
def test_without_machine_paths_cuts_absolute_and_home_paths_only(text, public):
    assert public_paths.without_machine_paths(text) == public


# ---------------------------------------------------------------- the paths a run names, published by their last part

def published_card(argv: list[str], label_source: str, join=shlex.join) -> str:
    """The card of a run trained with ``argv`` (run from the current folder), as publishing writes it from the record.

    ``join`` makes the recorded command: ``shlex.join`` as training records it, or ``" ".join`` as older records did.
    """
    from hf_model.config import RunRecord, load_run_config, parse_args

    cfg, args = parse_args(argv)
    RunRecord(cfg, args, join(["hf-model", "train", *argv]), None, 224, label_source, SPLITS,
              ["Modern", "Old"]).save(args.output_dir)
    reports.write_run_card(args.output_dir, load_run_config(args.output_dir), METRICS, ["Modern", "Old"],
                           model_id="someone/bedrooms")
    return (Path(args.output_dir) / "README.md").read_text()


def assert_published_by_last_part(text: str, command: str, labels: str, folder: str, hidden=("Alice", "alice", "/tmp")):
    assert f"Trained with this command (local paths cut to their last folder):\n\n```bash\n{command}\n```" in text
    assert f"Labels: {labels}." in text
    assert f"- **Label noise.** Labels come from {labels}. Wrong" in text
    assert f"on a local folder of photos (`{folder}/`, 386 labeled photos)" in text
    assert [word for word in hidden if word in text] == []


@pytest.mark.parametrize("join", [shlex.join, " ".join], ids=["quoted", "older-record-unquoted"])
def test_an_absolute_data_dir_with_spaces_is_published_by_its_last_part(tmp_path, join):
    photos = tmp_path / "x" / "Alice Smith" / "Client Photos"
    photos.mkdir(parents=True)
    text = published_card(["--data_dir", str(photos), "--output_dir", str(tmp_path / "run")],
                          f"folder names under {photos}", join)
    assert_published_by_last_part(text, "hf-model train --data_dir 'Client Photos' --output_dir run",
                                  "folder names under Client Photos", "Client Photos")


def test_a_relative_data_dir_is_published_by_its_last_part(tmp_path, monkeypatch):
    (tmp_path / "x" / "alice" / "photos").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    text = published_card(["--data_dir", "../x/alice/photos", "--output_dir", "../runs/alice/bedrooms"],
                          "folder names under ../x/alice/photos")
    assert_published_by_last_part(text, "hf-model train --data_dir photos --output_dir bedrooms",
                                  "folder names under photos", "photos", hidden=("Alice", "alice", "/tmp", ".."))


def test_a_local_dataset_folder_given_relatively_is_published_by_its_last_part(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("alice", "photos").mkdir(parents=True)  # --dataset alice/photos: a folder here, though shaped like a Hub id
    text = published_card(["--dataset", "alice/photos", "--output_dir", "run"],
                          "the dataset folder photos/ (column 'label')")
    assert_published_by_last_part(text, "hf-model train --dataset photos --output_dir run",
                                  "the dataset folder photos/ (column 'label')", "photos")
    assert "datasets:" not in text


def test_hub_ids_stay_in_the_published_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "someone/bedrooms", "--backbone", "timm/tf_efficientnet_lite0.in1k", "--output_dir", "run"]
    text = published_card(argv, "Hub dataset someone/bedrooms (column 'label')")
    assert ("Trained with this exact command:\n\n```bash\nhf-model train --dataset someone/bedrooms --backbone "
            "timm/tf_efficientnet_lite0.in1k --output_dir run\n```") in text
    assert "Labels: Hub dataset someone/bedrooms (column 'label')." in text


@pytest.mark.parametrize(("command", "public"), [
    ("train --data_dir '/h/Alice Smith/My Photos/' --output_dir=/h/b", "train --data_dir 'My Photos' --output_dir=b"),
    ("train --data-dir=/h/Alice Smith/My Photos --output_dir /h/b", "train '--data-dir=My Photos' --output_dir b"),
    ("train --data_dir /h/Alice's photos --output_dir /h/b", "train --data_dir 'Alice'\"'\"'s photos' --output_dir b"),
    ("train --data_dir ../Alice Smith/My Photos --output_dir b --labels_file /h/other/labels.csv",
     "train --data_dir 'My Photos' --output_dir b --labels_file labels.csv"),  # labels_file: the regex fallback
])
def test_a_recorded_command_is_cut_path_by_path_and_stays_runnable(command, public):
    data_dir = "/h/Alice's photos" if "Alice's" in command else "/h/Alice Smith/My Photos"
    record = {"command": command, "config": {"data_dir": data_dir}, "training_args": {"output_dir": "/h/b"}}
    assert public_paths.LocalPaths.of_record(record).cut_command(command) == public
