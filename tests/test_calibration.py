"""Calibration rebuilds a run's own splits from its run record, whatever the data source was."""

from __future__ import annotations

import numpy as np
from conftest import make_photo
from datasets import ClassLabel, Dataset, Features, Image

from hf_model.calibration import calibrate
from hf_model.config import load_run_config
from hf_model.serving import Calibration
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
    report = calibrate(out, [tmp_path / "other"])

    # the splits calibration scored are the run's own: same sizes as recorded at training time
    photos = {name: counts["photos"] for name, counts in report["rejected"].items()}
    assert {name: photos[name] for name in ("validation", "test")} == {
        "validation": record.split_sizes["validation"], "test": record.split_sizes["test"]}
    assert photos["validation"] + photos["test"] + record.split_sizes["train"] == 24
    calibration = Calibration.load(out)
    assert calibration is not None and len(calibration.profile) == 1000
    assert np.isclose(sum(calibration.profile), 1.0, atol=1e-3)
