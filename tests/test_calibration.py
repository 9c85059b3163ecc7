"""Calibration rebuilds a run's own splits from its run record, whatever the data source was."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from datasets import ClassLabel, Dataset, Features, Image
from photo_kinds import PHOTO_KINDS, READABLE_KINDS, UNREADABLE_KINDS, eight_bit_copy, sixteen_bit_png

from hf_model.calibration import (
    calibrate,
    out_of_domain_photos,
    photo_probabilities,
    required_photos,
    wilson_interval,
)
from hf_model.calibration import main as calibration_main
from hf_model.config import load_run_config
from hf_model.data import DataError
from hf_model.serving import CALIBRATION_FILE, Calibration, UnreadablePhotoError
from hf_model.training import main

FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--image_size", "32", "--stages", "1",
        "--dataloader_pin_memory", "false"]


def test_a_model_trained_on_a_dataset_is_calibrated_on_its_own_splits(tiny_convnext, tmp_path):
    # a local dataset in the Hub's layout, read by load_dataset() like a Hub id: Parquet with embedded images
    files = [make_photo(tmp_path / "photos" / f"{i}.png", (200, 40, 40) if i % 2 else (40, 40, 200), seed=i)
             for i in range(24)]
    features = Features({"img": Image(), "kind": ClassLabel(names=["blue", "red"])})
    rows = Dataset.from_dict({"img": [str(f) for f in files], "kind": [i % 2 for i in range(24)]}, features=features)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    rows.to_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    for i in range(4):
        make_photo(tmp_path / "other" / f"{i}.jpg", (20 * i, 200, 20), seed=100 + i)
    out = tmp_path / "run"
    main(["--dataset", str(tmp_path / "hub"), "--image_column", "img", "--label_column", "kind", "--backbone",
          tiny_convnext, "--output_dir", str(out), "--split_fractions", "0.5", "0.25", "0.25", "--seed", "3", *FAST])

    record = load_run_config(out)
    assert record.config.dataset == str(tmp_path / "hub") and record.training_args.seed == 3
    report = calibrate(out, [tmp_path / "other"], allow_small_samples=True)  # 6 validation photos, 4 others

    # the splits calibration scored are the run's own: same sizes as recorded at training time
    photos = {name: counts["photos"] for name, counts in report["rejected"].items()}
    assert {name: photos[name] for name in ("validation", "test")} == {
        "validation": record.split_sizes["validation"], "test": record.split_sizes["test"]}
    assert photos["validation"] + photos["test"] + record.split_sizes["train"] == 24
    calibration = Calibration.load(out)
    assert calibration is not None and len(calibration.profile) == 1000
    assert np.isclose(sum(calibration.profile), 1.0, atol=1e-3)


# ---------------------------------------------------------------- bad photos and bad flags (issue 12)


@pytest.mark.parametrize("kind", sorted(PHOTO_KINDS))
def test_an_out_of_domain_folder_keeps_readable_photos_and_names_each_bad_file_in_a_warning(tmp_path, caplog, kind):
    good = make_photo(tmp_path / "other" / "0_good.jpg", (20, 200, 20))
    odd = PHOTO_KINDS[kind](tmp_path / "other")
    with caplog.at_level(logging.WARNING, logger="hf_model.calibration"):
        photos = out_of_domain_photos([tmp_path / "other"])
    if kind in READABLE_KINDS:
        assert photos == [good, odd] and not caplog.records
    else:
        assert photos == [good]
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage().startswith(f"skipping {odd}: This ")


def test_files_that_are_not_photos_in_an_out_of_domain_folder_are_named_in_a_warning(tmp_path, caplog):
    good = make_photo(tmp_path / "other" / "a.jfif", (20, 200, 20))
    (tmp_path / "other" / "notes.txt").write_text("not a photo")
    (tmp_path / "other" / ".DS_Store").write_bytes(b"\x00")
    with caplog.at_level(logging.WARNING, logger="hf_model.calibration"):
        assert out_of_domain_photos([tmp_path / "other"]) == [good]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {tmp_path / 'other' / 'notes.txt'}: '.txt' is not an image type Pillow opens"]


@pytest.mark.parametrize("kind", sorted(UNREADABLE_KINDS))
def test_an_unreadable_training_photo_stops_calibration_naming_the_file(tmp_path, kind):
    bad = PHOTO_KINDS[kind](tmp_path)
    with pytest.raises(UnreadablePhotoError, match=f"^{re.escape(str(bad))}: This .*Fix or remove it"):
        photo_probabilities(lambda images: np.zeros((len(images), 2)), [str(bad)], 8)


def test_photo_probabilities_reads_sixteen_bit_photos_like_their_eight_bit_copy(tmp_path):
    means = photo_probabilities(lambda images: np.array([[np.asarray(i).mean()] for i in images]),
                                [sixteen_bit_png(tmp_path), eight_bit_copy(tmp_path)], 1)
    assert means[0, 0] == pytest.approx(means[1, 0], abs=1) and means[0, 0] < 200  # not a white square


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--max_in_domain_rejection", "1", "must be a number at least 0 and less than 1"),
    ("--max_in_domain_rejection", "-0.1", "must be a number at least 0 and less than 1"),
    ("--max_in_domain_rejection", "nan", "must be a number at least 0 and less than 1"),
    ("--unsure_below", "1.5", "must be a number from 0 to 1"),
    ("--unsure_below", "high", "must be a number from 0 to 1"),
    ("--limit", "0", "must be a whole number of at least 1"),
    ("--batch_size", "-4", "must be a whole number of at least 1"),
])
def test_numeric_flags_out_of_range_stop_at_parse_time(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as stop:
        calibration_main([str(tmp_path / "run"), str(tmp_path / "other"), flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: {expected}, got '{value}'" in capsys.readouterr().err


def test_a_folder_that_is_not_a_trained_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^hf-model calibrate: error: .*hf_model_config.json does not exist"):
        calibration_main([str(tmp_path / "nope"), str(tmp_path)])


# ---------------------------------------------------------------- sample sizes and intervals (issue 18, part 7)


def small_run(root: Path, out_of_domain: int, model: str | None = None) -> Path:
    """A run folder whose validation split holds 3 photos (12 photos, split 0.5 / 0.25 / 0.25), and
    ``out_of_domain`` photos in ``root / "other"``; ``model`` is a model folder copied in (calibrate needs one
    only once the sample sizes pass)."""
    for i in range(12):
        make_photo(root / "photos" / ("a" if i % 2 else "b") / f"{i}.png", (200, 40, 40) if i % 2 else (40, 40, 200),
                   seed=i)
    for i in range(out_of_domain):
        make_photo(root / "other" / f"{i}.jpg", (20, 200, 20), seed=50 + i)
    run = root / "run"
    if model:
        shutil.copytree(model, run)
    run.mkdir(exist_ok=True)
    record = {"config": {"data_dir": str(root / "photos"), "split_fractions": [0.5, 0.25, 0.25]}}
    (run / "hf_model_config.json").write_text(json.dumps(record))
    return run


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> list[float]:
    """The Wilson score interval from its closed form (Wilson 1927), z the 97.5% normal quantile."""
    centre = (successes + z * z / 2) / (trials + z * z)
    half = z / (trials + z * z) * math.sqrt(successes * (trials - successes) / trials + z * z / 4)
    return [round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)]


def test_three_validation_photos_against_two_out_of_domain_photos_are_refused_saying_what_to_do(tmp_path):
    run = small_run(tmp_path, out_of_domain=2)
    with pytest.raises(DataError) as refused:
        calibrate(run, [tmp_path / "other"])
    assert str(refused.value) == (
        f"too few photos to choose a threshold on: 3 validation photos in the run {run} (need 30: train on more "
        "photos or with a larger validation share, --split_fractions); 2 readable out-of-domain photos in "
        f"{tmp_path / 'other'} (need 60, half to choose the threshold and half to check it: add photos the model "
        "should turn away). Pass --allow_small_samples to calibrate anyway")
    assert not (run / CALIBRATION_FILE).exists()


def test_the_command_refuses_small_samples_in_one_line_naming_the_limit_that_caused_it(tmp_path):
    run = small_run(tmp_path, out_of_domain=2)
    with pytest.raises(SystemExit, match=r"^hf-model calibrate: error: too few photos to choose a threshold on: "
                       r"3 validation photos .*; --limit 10 caps each set\. "
                       r"Pass --allow_small_samples to calibrate anyway$"):
        calibration_main([str(run), str(tmp_path / "other"), "--limit", "10"])
    assert not (run / CALIBRATION_FILE).exists()


def test_allow_small_samples_still_needs_an_out_of_domain_photo_for_each_half(tmp_path):
    run = small_run(tmp_path, out_of_domain=1)
    with pytest.raises(DataError, match=r"^too few photos to choose a threshold on: 1 readable out-of-domain photos "
                       r".*\(need 2, half to choose the threshold and half to check it: add photos the model should "
                       r"turn away\)$"):
        calibrate(run, [tmp_path / "other"], allow_small_samples=True)


def test_allow_small_samples_warns_loudly_and_records_sizes_and_intervals(tiny_convnext, tmp_path, caplog):
    run = small_run(tmp_path, out_of_domain=2, model=tiny_convnext)
    with caplog.at_level(logging.WARNING, logger="hf_model.calibration"):
        report = calibrate(run, [tmp_path / "other"], allow_small_samples=True)

    assert [r.getMessage() for r in caplog.records if r.name == "hf_model.calibration"] == [
        f"CALIBRATING ON TOO FEW PHOTOS (--allow_small_samples): 3 validation photos in the run {run} (need 30: train "
        "on more photos or with a larger validation share, --split_fractions); 2 readable out-of-domain photos in "
        f"{tmp_path / 'other'} (need 60, half to choose the threshold and half to check it: add photos the model "
        "should turn away). The rates in calibration.json come with wide intervals (its *_ci95 entries); calibrate "
        "again on more photos before relying on them"]
    assert report["sample_sizes"] == {"validation": 3, "out_of_domain": 2, "below_required": True,
                                      "required": {"validation": 30, "out_of_domain": 60}}
    for name, entry in report["rejected"].items():  # each rate with the Wilson interval of its own count
        rejected = round(entry["rejected"] * entry["photos"])
        assert entry["rejected_ci95"] == wilson(rejected, entry["photos"]), name
    assert report["rejected"]["validation"]["photos"] == 3
    assert report["rejected"]["other_held_out"] == {"photos": 1, "rejected": 0.0, "rejected_ci95": [0.0, 0.7935]}
    unsure = report["unsure"]
    assert unsure["photos"] == 3 and unsure["photos_sure"] + unsure["photos_unsure"] == 3
    assert unsure["unsure_share_ci95"] == wilson(unsure["photos_unsure"], 3)
    assert Calibration.load(run).report == report  # all of it in calibration.json


def test_wilson_intervals_match_the_closed_form_for_a_known_sample_size():
    assert wilson_interval(2, 30) == wilson(2, 30) == [0.0185, 0.2132]
    assert wilson_interval(0, 30) == [0.0, 0.1135]  # none of 30 turned away: still up to 11%
    assert wilson_interval(30, 30) == [0.8865, 1.0]
    assert wilson_interval(65, 75) == wilson(65, 75) == [0.7717, 0.9259]  # 86.7% of 75


@pytest.mark.parametrize(("cap", "validation"), [(0.05, 30), (0.1, 30), (0.0, 30), (0.02, 50), (0.01, 100)])
def test_a_smaller_in_domain_cap_needs_more_validation_photos(cap, validation):
    assert required_photos(cap) == {"validation": validation, "out_of_domain": 60}


# ---------------------------------------------------------------- where the gate and the model run (issue 17, part 8)


def all_keys(entry) -> set[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(entry, dict):
        return set(entry) | {key for value in entry.values() for key in all_keys(value)}
    return {key for value in entry for key in all_keys(value)} if isinstance(entry, list) else set()


def test_calibrate_with_device_cpu_writes_a_calibration_json_that_records_no_device(tiny_convnext, tmp_path, capsys):
    run = small_run(tmp_path, out_of_domain=2, model=tiny_convnext)
    calibration_main([str(run), str(tmp_path / "other"), "--allow_small_samples", "--device", "cpu"])
    saved = json.loads((run / CALIBRATION_FILE).read_text())
    assert set(saved) == {"gate_backbone", "profile", "domain_threshold", "unsure_below", "report"}
    assert not {key for key in all_keys(saved) if "device" in key}  # it serves the same on any machine
    assert capsys.readouterr().out.startswith(f"calibration.json written to {run}.")


def test_a_device_this_machine_lacks_exits_1_in_one_line_before_the_run_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)  # no GPU
    with pytest.raises(SystemExit) as stop:
        calibration_main([str(tmp_path / "run"), str(tmp_path / "other"), "--device", "cuda"])
    assert stop.value.code == ("hf-model calibrate: error: --device cuda: this machine has no such device (present "
                               "here: cpu); give one of those or auto")


def test_calibrate_help_says_the_device_defaults_to_the_gpu_when_present(capsys):
    with pytest.raises(SystemExit):
        calibration_main(["--help"])
    assert "auto (the default: a CUDA GPU when present" in " ".join(capsys.readouterr().out.split())
