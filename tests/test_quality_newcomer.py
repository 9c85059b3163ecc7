"""A new user's tries at issue 13 (heads, refit, temperature, label issues, card): each test is a fault found.

Every test here states what a user expects and failed on the code as it was when written; they are tiny
(features made in the test, or the random-init ``tiny_convnext``), all of them in about 20 s.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.special import softmax

import hf_model.training as training
from hf_model import reports
from hf_model.config import RunRecord, parse_args
from hf_model.heads import ABSENT_CLASS_LOGIT, fit_head
from hf_model.temperature import TEMPERATURE_RANGE, calibrate_logits


def blobs(counts: list[int], views: int = 2, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(photos, views, dim) features of well-separated classes with ``counts[c]`` photos each, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(counts), dim))
    labels = np.repeat(np.arange(len(counts)), counts)
    features = centres[labels][:, None, :] + rng.normal(0, 1, (len(labels), views, dim))
    return features.astype(np.float32), labels


# ---------------------------------------------------------------- a class with one photo

@pytest.mark.parametrize("head", ["logistic", "ncm"])
def test_a_photo_whose_class_is_missing_from_its_inner_fold_is_not_a_held_out_prediction(head):
    # 3 classes, 6 / 1 / 2 photos (hf-model train on such a folder): the lone photo of class 1, held out,
    # leaves no class-1 photo to learn from; its logit of -1e4 is no prediction, yet it chose C (held-out
    # log-loss ~1250 for every C) and fitted the temperature
    features, labels = blobs([6, 1, 2])
    fitted = fit_head(head, features, labels, 3)
    assert fitted.held_out_logits is not None
    true_logits = fitted.held_out_logits[np.arange(len(fitted.held_out_labels)), fitted.held_out_labels]
    assert (true_logits > ABSENT_CLASS_LOGIT / 2).all()


def test_a_class_with_one_photo_does_not_flatten_every_probability():
    # the same folder: T = 20 (the search's ceiling), the held-out ECE 0.169 -> 0.562, and pipeline() gave
    # 37-40% to photos of trivially separable colours it classified right
    features, labels = blobs([6, 1, 2])
    fitted = fit_head("logistic", features, labels, 3)
    report = calibrate_logits(fitted.held_out_logits, fitted.held_out_labels)
    assert report.temperature < TEMPERATURE_RANGE[1]
    assert report.ece_after <= report.ece_before


def test_two_classes_one_with_a_single_photo_still_fit_a_logistic_head():
    # hf-model train --data_dir DIR with classes of 5 and 1 photos: an inner fold holding out the lone photo
    # trains on one class, and scikit-learn's "needs samples of at least 2 classes" ended the run in a traceback
    features, labels = blobs([5, 1])
    head = fit_head("logistic", features, labels, 2)
    assert (head.logits(features[labels == 0, 0]).argmax(1) == 0).all()


# ---------------------------------------------------------------- temperature on a few held-out photos

def test_five_held_out_photos_all_right_do_not_make_a_near_tie_certain(tiny_convnext):
    # hf-model train on 2 classes x 3 photos: 5 held-out predictions, all right, gave T = 0.05 (the search's
    # floor: logits x 20), and pipeline() then said 100% for a photo of neither class
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_convnext, num_labels=2,
                                                            ignore_mismatched_sizes=True)
    held_out = (np.array([[2.0, 0.0], [0.0, 2.0], [2.5, 0.0], [0.0, 1.5], [2.0, 0.0]]), np.array([0, 1, 0, 1, 0]))
    temperature, _ = training.calibrate(model, None, [], held_out, batch_size=8)
    near_tie = softmax(np.array([0.3, 0.0]) / temperature)
    assert near_tie.max() < 0.9



def test_two_validation_photos_do_not_flatten_a_sure_prediction(tiny_convnext):
    # --stages 1 --unfreeze_top_blocks 1 --head sgd on 8 + 8 photos: the temperature was fitted on the 2
    # validation photos (one right, one wrong), came out at T = 20 (the search's ceiling), and pipeline() then
    # gave 50-52% to every photo, right or wrong
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_convnext, num_labels=2,
                                                            ignore_mismatched_sizes=True)
    held_out = (np.array([[3.0, 0.0], [3.0, 0.0]]), np.array([0, 1]))
    temperature, _ = training.calibrate(model, None, [], held_out, batch_size=8)
    assert softmax(np.array([4.0, 0.0]) / temperature).max() > 0.9

# ---------------------------------------------------------------- the model card

def _hyperparameter_rows(card: str) -> dict[str, str]:
    table = card.split("### Hyperparameters", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| (\S+) \| (.*?) \|$", table, flags=re.M))


def _head_only_card(tmp_path) -> dict[str, str]:
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path), "--unfreeze_top_blocks", "0"])
    record = RunRecord(cfg, args, "hf-model train --data_dir photos", None, 224, "folder names",
                       {"train": 4, "validation": 1, "test": 1}, ["a", "b"])
    chosen = {"head_C": 0.01, "head_epochs": None, "stage2_epochs": None, "temperature": 1.0,
              "temperature_report": None}
    reports.write_run_card(tmp_path, record, {"test_accuracy": 1.0, "test_samples": 1, "chosen": chosen}, ["a", "b"])
    return _hyperparameter_rows((tmp_path / "README.md").read_text())


def test_card_of_a_logistic_head_names_the_L2_strength_it_chose(tmp_path):
    # the one hyperparameter the default recipe chooses (C, by inner cross-validation) was in no table
    rows = _head_only_card(tmp_path)
    assert any(key.lower().endswith("c") and value == "0.01" for key, value in rows.items()), rows


def test_card_of_a_head_alone_lists_no_trainer_settings_it_never_used(tmp_path):
    # the head-only logistic card listed epochs 3.0, learning_rate 5e-05, head_epochs 100, head_learning_rate ...:
    # none of them touched the model
    rows = _head_only_card(tmp_path)
    assert not {"epochs", "learning_rate", "head_epochs", "head_learning_rate"} & set(rows), rows


def test_a_class_without_test_photos_gets_no_zero_scores_in_the_card():
    # 2 classes x 3 photos: the test split held none of c1, and the card gave c1 precision, recall and F1 0.000
    # beside a macro-F1 of 1.000
    table = reports.per_class_table({"c0": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                                     "c1": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}})
    c1 = next(line for line in table.splitlines() if line.startswith("| c1 "))
    assert "0.000" not in c1, c1



# ---------------------------------------------------------------- refit after a resumed run

def test_a_resumed_two_stage_sgd_run_still_refits(image_folder, tiny_convnext, tmp_path):
    # --head sgd --unfreeze_top_blocks 1, killed in stage 2 and rerun: the rerun resumes stage 2 from its
    # checkpoint and skips stage 1, so nothing chose the head's epochs (Chosen().head_epochs is None), and the
    # refit trained the head for num_train_epochs=None
    from hf_model.data import load_data

    cfg, args = parse_args(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir",
                            str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"), "--head", "sgd",
                            "--unfreeze_top_blocks", "1", "--image_size", "32", "--feature_views", "1",
                            "--dataloader_pin_memory", "false", "--report_to", "none"])
    data = load_data(cfg, args.seed)
    resumed = training.Chosen(stage2_epochs=1.0)  # what fine_tune returns after resuming stage 2
    trainer = training.refit(cfg, args, training.refit_data(data, with_test=True), resumed)
    assert (tmp_path / "run" / "model.safetensors").is_file() and trainer.state.epoch >= 1


# ---------------------------------------------------------------- cross-validation summary

def test_cross_validation_summary_survives_a_fold_whose_test_photos_hold_one_class():
    # 40 vs 4 photos with --cv_folds 5 (or 8 vs 2 with --cv_folds 4): a fold tests no photo of the small class,
    # has no ROC AUC, and summarize_folds raised KeyError 'test_roc_auc' after every fold had trained
    from hf_model.experiments import summarize_folds

    both = {"test_accuracy": 0.9, "test_f1_macro": 0.8, "test_roc_auc": 0.95, "test_samples": 9}
    one_class = {"test_accuracy": 1.0, "test_f1_macro": 1.0, "test_samples": 8}
    summary = summarize_folds([both, one_class])
    assert summary["accuracy"]["folds"] == [0.9, 1.0] and summary["photos"] == 17
    # a metric some folds lack is left out or summarized over the folds that have it, never a KeyError
    assert "roc_auc" not in summary or summary["roc_auc"]["folds"] == [0.95]


# ---------------------------------------------------------------- label_issues.png

def test_contact_sheet_of_one_flagged_photo_shows_its_whole_title():
    # hf-model label-issues on 6 + 6 photos with one copy filed under both classes: one photo flagged, and the
    # PNG (one photo wide) cut its title to "d (1 flagged by cleanlab): given label →" on both sides
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from matplotlib.text import Text
    from PIL import Image

    from hf_model.label_issues import LabeledPhotos, LabelIssues, draw_label_issues

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["c0", "c1"])})
    dataset = Dataset.from_dict({"image": [Image.new("RGB", (8, 8), (220, 30, 30))] * 2, "label": [0, 1]},
                                features=features)
    issues = LabelIssues(LabeledPhotos(dataset, ["train"] * 2, [0, 1], ["", ""]), np.array([0, 1]),
                         np.array([[0.9, 0.1], [0.97, 0.03]]), np.array([1]), ["c0", "c1"])
    fig = draw_label_issues(issues)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # lay out (constrained layout), as savefig does
    title = next(t for t in fig.findobj(Text) if t.get_text() == fig.get_suptitle()).get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width, (title, fig.bbox)
