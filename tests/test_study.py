"""``hf-model study``: the grid, its files, resuming, and the learning curve (tiny photos and a tiny random model)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hf_model import study
from hf_model.config import parse_args
from hf_model.head_cv import HeadCrossValidation, load_folds
from hf_model.learning_curve import fit_power_law, subsample
from hf_model.study import Cell, plan_cells
from hf_model.training import main as train_main


def _study(folder, backbone, out, *extra):
    return study.main(["--data_dir", str(folder), "--backbones", backbone, "--output_dir", str(out), "--folds", "2",
                       *extra])


def _rows(out):
    with (out / "study.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_grid_writes_one_row_per_cell_a_table_marking_the_best_and_a_plot(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "study"
    rows = _study(image_folder, tiny_convnext, out, "--image_sizes", "native", "40")

    assert len(rows) == 6  # 2 sizes x 3 imbalance settings x 1 head
    saved = _rows(out)
    assert [(r["image_size"], r["imbalance"]) for r in saved] == [
        (size, balance) for size in ("32", "40") for balance in ("none", "class_weights", "oversample")]
    assert all(0 <= float(r["f1_macro_mean"]) <= 1 and float(r["inference_ms"]) > 0 for r in saved)
    assert all(float(r["photos"]) == 24 for r in saved)  # every labeled photo tested once per cell
    table = (out / "study.md").read_text()
    assert table.count("(best)") == 1 and table.count("\n| ") == 7  # header + 6 cells
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_head_cell_scores_what_train_py_cross_validation_prints(image_folder, tiny_convnext, tmp_path):
    rows = _study(image_folder, tiny_convnext, tmp_path / "study", "--imbalance", "class_weights")
    summary = train_main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--cv_folds", "2",
                          "--class_weights", "auto", "--unfreeze_top_blocks", "0", "--output_dir",
                          str(tmp_path / "cv")])

    assert rows[0]["accuracy_mean"] == pytest.approx(summary["accuracy"]["mean"])
    assert rows[0]["f1_macro_mean"] == pytest.approx(summary["f1_macro"]["mean"])
    # test photos through cached (float16) features vs. the model: the same probabilities to 1e-3
    assert rows[0]["ece_all_photos"] == pytest.approx(summary["ece_all_photos"], abs=1e-3)


def test_a_rerun_skips_finished_cells_and_runs_only_the_new_ones(image_folder, tiny_convnext, tmp_path, monkeypatch):
    out = tmp_path / "study"
    _study(image_folder, tiny_convnext, out, "--imbalance", "none")
    scored = []
    original = HeadCrossValidation.score
    monkeypatch.setattr(HeadCrossValidation, "score", lambda self, cfg=None, folds=None, args=None:
                        scored.append(cfg) or original(self, cfg, folds, args))

    rows = _study(image_folder, tiny_convnext, out, "--imbalance", "none", "oversample")

    assert [cfg.oversample for cfg in scored] == [True]  # the finished 'none' cell was not run again
    assert [r["imbalance"] for r in rows] == ["none", "oversample"] and len(_rows(out)) == 2


def test_a_folder_holding_a_study_of_other_folds_is_refused(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "study"
    _study(image_folder, tiny_convnext, out, "--imbalance", "none")

    with pytest.raises(SystemExit, match="holds a study of other photos, folds"):
        study.main(["--data_dir", str(image_folder), "--backbones", tiny_convnext, "--output_dir", str(out),
                    "--folds", "3", "--imbalance", "none"])


def test_a_fine_tuning_cell_trains_a_whole_run_per_fold(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "study"
    rows = _study(image_folder, tiny_convnext, out, "--imbalance", "none", "--unfreeze_top_blocks", "1",
                  "--num_train_epochs", "1", "--head", "sgd", "--head_epochs", "2")

    assert len(rows) == 1 and rows[0]["unfreeze_top_blocks"] == 1
    cell = out / "cells" / Cell(tiny_convnext, 32, "none", "sgd", 1).slug()
    assert all(json.loads((cell / f"fold-{i}" / "test_results.json").read_text())["test_samples"] == 12
               for i in range(2))
    assert rows[0]["photos"] == 24


def test_the_grid_flags_train_py_would_take_are_refused_with_the_study_s_own(image_folder, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        study.main(["--data_dir", str(image_folder), "--output_dir", str(tmp_path), "--cv_folds", "3"])
    assert exit_.value.code == 2


def test_native_sizes_resolve_to_each_backbone_s_own_and_duplicates_go():
    cfg, _ = parse_args(["--data_dir", "photos", "--output_dir", "out"])
    cells = plan_cells(cfg, ["efficientnet-lite0", "efficientnet-lite2"], ["native", "224"], ["none"], ["logistic"],
                       [0])

    assert [(c.backbone, c.image_size) for c in cells] == [
        ("efficientnet-lite0", 224), ("efficientnet-lite2", 260), ("efficientnet-lite2", 224)]
    with pytest.raises(ValueError, match="'native' or a size in pixels"):
        plan_cells(cfg, ["efficientnet-lite0"], ["big"], ["none"], ["logistic"], [0])


# ---------------------------------------------------------------- learning curve

def test_subsets_are_nested_keep_every_class_and_leave_the_test_photos_alone(image_folder):
    cfg, args = parse_args(["--data_dir", str(image_folder), "--output_dir", "out"])
    data = load_folds(cfg, args.seed, 2)[0]
    small, large = subsample(data, 0.2, seed=1), subsample(data, 0.6, seed=1)

    for split in ("train", "validation"):
        small_files = {im["path"] for im in small[split].cast_column("image", _raw())["image"]}
        large_files = {im["path"] for im in large[split].cast_column("image", _raw())["image"]}
        assert small_files < large_files or small_files == large_files
        assert set(small[split]["label"]) == set(data[split]["label"])  # at least one photo of every class
    assert small["test"]["label"] == data["test"]["label"]
    assert len(small["train"]) < len(large["train"]) <= len(data["train"])


def _raw():
    from datasets import Image

    return Image(decode=False)


def test_the_power_law_recovers_a_known_curve_and_extrapolates_it():
    photos = np.array([30.0, 60, 120, 240, 480])
    truth = 1 - (3.0 * photos ** -0.7 + 0.1)
    noise = np.random.default_rng(0).normal(0, 0.005, (5, 5))
    fit = fit_power_law(photos, truth[:, None] + noise)

    expected_2x = 1 - (3.0 * 960 ** -0.7 + 0.1)
    accuracy, low, high = fit.extrapolated[2]
    assert accuracy == pytest.approx(expected_2x, abs=0.02)
    assert low <= accuracy <= high
    assert fit_power_law(photos[:2], truth[:2, None]) is None  # two points fit no three-parameter curve


def test_the_learning_curve_command_writes_its_table_plot_and_answer(image_folder, tiny_convnext, tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "curve"
    scored = []
    original = HeadCrossValidation.score
    monkeypatch.setattr(HeadCrossValidation, "score", lambda self, cfg=None, folds=None, args=None:
                        scored.append(folds) or original(self, cfg, folds, args))
    rows = study.main(["--data_dir", str(image_folder), "--backbones", tiny_convnext, "--output_dir", str(out),
                       "--folds", "2", "--learning_curve", "--fractions", "0.4", "0.7", "1.0", "--repeats", "2"])

    assert [r["fraction"] for r in rows] == [0.4, 0.7, 1.0]
    assert rows[0]["photos"] < rows[1]["photos"] < rows[2]["photos"] == 12
    assert len(scored) == 5  # two draws of each share below 100%, one of 100% (every draw is the same photos)
    assert len(list(csv.DictReader((out / "learning_curve.csv").open()))) == 3
    assert json.loads((out / "learning_curve.json").read_text())["repeats"] == 2
    assert (out / "learning_curve.png").is_file()
    assert "labeled photos, accuracy is" in capsys.readouterr().out


def test_train_py_s_head_flag_is_not_taken_for_the_study_s_heads(image_folder, tiny_convnext, tmp_path, monkeypatch):
    heads = []
    original = HeadCrossValidation.score
    monkeypatch.setattr(HeadCrossValidation, "score", lambda self, cfg=None, folds=None, args=None:
                        heads.append(cfg.head) or original(self, cfg, folds, args))

    study.main(["--data_dir", str(image_folder), "--backbones", tiny_convnext, "--output_dir", str(tmp_path / "c"),
                "--folds", "2", "--learning_curve", "--fractions", "0.5", "1.0", "--repeats", "1", "--head", "ncm"])

    assert heads == ["ncm", "ncm"]  # argparse abbreviations would have read --head as --heads, and fitted logistic


def test_a_study_that_failed_to_start_does_not_claim_its_folder(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(SystemExit, match="does not exist"):
        _study(tmp_path / "no-such-photos", tiny_convnext, out, "--imbalance", "none")

    rows = _study(image_folder, tiny_convnext, out, "--imbalance", "none")  # the corrected command runs there
    assert len(rows) == 1


def test_the_same_study_spelled_differently_resumes_instead_of_being_refused(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "study"
    _study(image_folder, tiny_convnext, out, "--imbalance", "none")

    rows = study.main(["--seed", "42", "--data_dir", f"{image_folder}/", "--backbones", tiny_convnext, "--output_dir",
                       str(out), "--folds", "2", "--imbalance", "none"])  # the default seed given, a trailing slash
    assert len(rows) == 1


def test_top5_on_two_classes_is_refused_before_any_cell_runs(image_folder, tiny_convnext, tmp_path):
    with pytest.raises(SystemExit, match="top5_accuracy needs more than 5 classes"):
        _study(image_folder, tiny_convnext, tmp_path / "study", "--imbalance", "none", "--metric", "top5_accuracy")
    assert not (tmp_path / "study" / "study.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["--output_dir", "FILE"], "is a file: give a folder"),
    (["--learning_curve", "--imbalance", "oversample"], "instead of --imbalance"),
    (["--backbones", "nosuch/model"],
     "error: --backbones: nosuch/model is neither a model folder nor a Hub id (and the Hub is offline"),
])
def test_misused_study_flags_are_usage_errors(extra, message, image_folder, tmp_path, capsys):
    (tmp_path / "FILE").write_text("not a folder")
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    argv = ["--data_dir", str(image_folder), *(["--output_dir", str(tmp_path / "s")] if "--output_dir" not in extra
                                               else []), *extra]
    with pytest.raises(SystemExit) as exit_:
        study.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
