"""End-to-end: ``train.py`` main() with patched argv, like transformers' example tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, make_photo
from transformers import pipeline

from hf_model.config import load_run_config
from hf_model.data import oversampled
from hf_model.features import HeadModel
from hf_model.training import balanced_class_weights, cross_entropy_loss, improves, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--image_size", "32",
        "--split_fractions", "0.5", "0.25", "0.25", "--dataloader_pin_memory", "false", "--head_epochs", "3",
        "--feature_views", "2"]


def test_train_writes_a_folder_pipeline_loads(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "run"
    metrics = main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
                    "--learning_rate", "0.01", "--cache_dir", str(tmp_path / "cache"), "--tta", *FAST])
    results = json.loads((out / "all_results.json").read_text())
    assert results["test_accuracy"] == metrics["test_accuracy"]
    assert set(results["test_per_class"]) == {"blue", "red"}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "blue", "1": "red"}
    assert (out / "preprocessor_config.json").is_file()  # HF-native: processor saved for pipeline()
    run = load_run_config(out)
    assert run.config.backbone == tiny_convnext and "--data_dir" in run.command
    answer = pipeline("image-classification", model=str(out))(str(next((image_folder / "red").iterdir())))
    assert {p["label"] for p in answer} == {"blue", "red"}
    assert "test_accuracy_without_tta" in results


def test_two_stages_log_both_and_write_plots_and_card(image_folder, tiny_convnext, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
          "--cache_dir", str(tmp_path / "cache"), "--head", "sgd", "--unfreeze_top_blocks", "2", *FAST])
    history = json.loads((out / "log_history.json").read_text())
    stage1 = [e for e in history if e.get("stage") == 1 and "eval_loss" in e]
    stage2 = [e for e in history if e.get("stage") == 2 and "eval_loss" in e]
    assert stage1 and stage2 and stage2[0]["epoch"] > stage1[-1]["epoch"]  # one continuous epoch axis
    assert list((tmp_path / "cache" / "features").rglob("*.npy"))  # stage 1 ran on cached features
    for png in ("learning_curves.png", "confusion_matrix.png", "top_losses.png"):
        assert (out / png).stat().st_size > 1000
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert "python train.py" in card.text and "learning_curves.png" in card.text


def test_stage2_that_does_worse_than_stage1_is_not_kept(image_folder, tiny_convnext, tmp_path, caplog, monkeypatch):
    from safetensors.torch import load_file

    import hf_model.training as training

    monkeypatch.setattr(training, "improves", lambda *args: False)  # stage 2 loses on validation
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="hf_model")
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--cache_dir",
          str(tmp_path / "cache"), "--learning_rate", "0.01", "--unfreeze_top_blocks", "2", *FAST])
    assert "keeping the stage 1 model" in caplog.text
    pretrained = load_file(Path(tiny_convnext) / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    backbone = [k for k in pretrained if not k.startswith("classifier")]
    assert all((saved[k] == pretrained[k]).all() for k in backbone)  # stage 1 trains the head only


@pytest.mark.parametrize(("value", "reference", "greater", "expected"), [
    (0.4, 0.5, False, True), (0.6, 0.5, False, False), (0.5, 0.5, False, False), (float("nan"), 0.5, False, False),
    (None, 0.5, False, False), (0.9, 0.8, True, True), (0.7, None, False, True)])
def test_a_stage_improves_only_on_a_strictly_better_number(value, reference, greater, expected):
    assert improves(value, reference, greater) is expected


def test_plain_stage1_path_trains_the_head_on_images(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "run"
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
          "--no_feature_cache", "--head", "sgd", "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert (out / "stage1").is_dir() and not (tmp_path / "cache" / "features").exists()
    sizes = json.loads((out / "hf_model_config.json").read_text())["split_sizes"]
    assert json.loads((out / "all_results.json").read_text())["test_samples"] == sizes["test"] > 0


def test_cross_validation_tests_every_photo_once(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "cv"
    summary = main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
                    "--cv_folds", "3", "--stages", "1", "--unfreeze_top_blocks", "0",
                    "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert summary["photos"] == 24
    saved = json.loads((out / "cv_results.json").read_text())
    assert len(saved["accuracy"]["folds"]) == 3
    assert saved["accuracy"]["mean"] == pytest.approx(sum(saved["accuracy"]["folds"]) / 3)
    assert len(saved["f1_red"]["folds"]) == 3 and 0 <= saved["f1_blue"]["mean"] <= 1


def test_rerun_of_an_unfinished_run_resumes_from_its_last_checkpoint(image_folder, tiny_convnext, tmp_path, caplog):
    out = tmp_path / "run"
    args = ["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--unfreeze_top_blocks", "2", *FAST]
    main(args)
    last = max(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    record = json.loads((out / "hf_model_config.json").read_text())
    (out / "hf_model_config.json").write_text(json.dumps({**record, "finished": False}))  # killed while testing
    caplog.set_level("INFO", logger="hf_model")
    main(args)
    assert f"resuming from {last}" in caplog.text
    assert json.loads((out / "hf_model_config.json").read_text())["finished"] is True


def test_rerunning_a_finished_run_reports_it_without_training(image_folder, tiny_convnext, tmp_path, capsys,
                                                              monkeypatch):
    import hf_model.hub as hub
    import hf_model.training as training

    out = tmp_path / "run"
    args = ["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--stages", "1", *FAST]
    first = main(args)
    weights = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(training, "fine_tune", lambda *a, **kw: pytest.fail("a finished run was trained again"))
    capsys.readouterr()
    assert main(args) == first
    printed = capsys.readouterr().out
    assert f"{out} already holds this run, finished: test accuracy" in printed and "--no_resume" in printed
    assert (out / "model.safetensors").read_bytes() == weights  # stage 1's rollback, if any, is kept

    uploads = []  # the same command with --push_to_hub (say, after a failed upload) uploads the finished model
    monkeypatch.setattr(hub, "resolve_token", lambda token=None: "hf_test")
    monkeypatch.setattr(hub, "publish_model", lambda folder, repo_id, **kw: uploads.append((str(folder), repo_id))
                        or hub.Published(folder, f"https://huggingface.co/{repo_id}/commit/1"))
    main([*args, "--push_to_hub", "--hub_model_id", "someone/colours"])
    assert uploads == [(str(out), "someone/colours")]


@pytest.mark.parametrize("classes", [["green", "yellow"], ["green", "white", "yellow"]])
def test_reusing_a_folder_for_other_photos_stops_before_training(image_folder, tiny_convnext, tmp_path, classes):
    out = tmp_path / "run"
    common = ["--backbone", tiny_convnext, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
              "--stages", "1", *FAST]
    main(["--data_dir", str(image_folder), *common])
    weights = (out / "model.safetensors").read_bytes()
    other = tmp_path / "other"
    for name, colour in zip(classes, [(30, 200, 30), (250, 250, 250), (230, 230, 30)]):
        for i in range(8):
            make_photo(other / name / f"{i}.jpg", colour, seed=i)
    with pytest.raises(SystemExit) as stopped:
        main(["--data_dir", str(other), *common])
    message = str(stopped.value.code)  # a message, so the exit status is 1, and no traceback
    assert f"holds a finished run on {image_folder} with classes blue, red" in message
    assert f"this run is on {other} with classes {', '.join(classes)}" in message
    assert "Pass --no_resume to start over" in message and "another --output_dir" in message
    assert (out / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "blue", "1": "red"}


def test_fresh_run_in_a_used_folder_drops_old_results(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "all_results.json").write_text(json.dumps({"test_loss": 123.0}))
    (out / "checkpoint-999").mkdir()
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--no_resume",
          "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert json.loads((out / "all_results.json").read_text())["test_loss"] != 123.0
    assert not (out / "checkpoint-999").exists()


def test_push_to_hub_publishes_once_at_the_end(image_folder, tiny_convnext, tmp_path, monkeypatch):
    import hf_model.hub as hub

    calls = []
    monkeypatch.setattr(hub, "resolve_token", lambda token=None: "hf_test")
    monkeypatch.setattr(hub, "publish_model", lambda folder, repo_id, **kw: calls.append((folder, repo_id, kw))
                        or hub.Published(folder, f"https://huggingface.co/{repo_id}/commit/1"))
    out = tmp_path / "run"
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
          "--push_to_hub", "--hub_model_id", "someone/colours", "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert [(str(folder), repo) for folder, repo, _ in calls] == [(str(out), "someone/colours")]
    assert "someone/colours" in (out / "README.md").read_text()  # the card's usage snippet names the repo


def test_failed_push_keeps_the_model_and_says_how_to_upload_it(image_folder, tiny_convnext, tmp_path, monkeypatch):
    import hf_model.hub as hub

    def refuse(folder, repo_id, **kw):
        raise hub.PublishError("the token was refused (401)")

    monkeypatch.setattr(hub, "resolve_token", lambda token=None: "hf_test")
    monkeypatch.setattr(hub, "publish_model", refuse)
    out = tmp_path / "run"
    advice = f"(?s)refused.*safe in {out}.*hf-model publish model {out} --repo_id someone/c"
    with pytest.raises(SystemExit, match=advice):
        main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out),
              "--push_to_hub", "--hub_model_id", "someone/c", "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert (out / "model.safetensors").is_file()


def test_data_parallel_with_two_cpu_processes(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           str(ROOT / "train.py"), "--data_dir", str(image_folder), "--backbone", tiny_convnext,
           "--output_dir", str(out), "--disable_tqdm", "true", "--stages", "1",  # as the README says: no --ddp_backend
           "--unfreeze_top_blocks", "2", *FAST]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    # 12 training photos, batch 8 as on one device: 4 per process, so two steps per epoch as on one process
    assert state["max_steps"] == 4
    record = json.loads((out / "hf_model_config.json").read_text())
    assert (record["devices"], record["global_batch_size"]) == (2, 8)
    assert "2 devices (2 processes): 4 photos per device, so the global batch stays 8" in done.stderr
    assert (out / "all_results.json").is_file()
    assert done.stdout.count("Done in") == 1  # only the main process prints the summary


@pytest.mark.real_data
def test_short_real_fine_tune_answers_modern_or_old(tmp_path):
    out = tmp_path / "bedrooms"
    main(["--preset", "bedrooms", "--data_dir", str(SHARED_DATA / "bedrooms"), "--output_dir", str(out),
          "--max_steps", "3", "--image_size", "128", "--dataloader_pin_memory", "false", "--stages", "1"])
    classifier = pipeline("image-classification", model=str(out))
    answer = classifier(str(SHARED_DATA / "bedrooms" / "bed_1.jpg"))
    assert {p["label"] for p in answer} == {"Modern", "Old"}
    assert sum(p["score"] for p in answer) == pytest.approx(1.0, abs=1e-5)
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 128, 128]


def test_broken_bedroom_photo_stops_training_naming_the_file(tmp_path):
    root = tmp_path / "bedrooms"
    for i in range(1, 9):
        make_photo(root / f"bed_{i}.jpg", (200, 200, 200), seed=i)
    (root / "bed_5.jpg").write_bytes(b"\x89PNG truncated")
    (root / "labels.csv").write_text("file,label\n" + "".join(f"bed_{i}.jpg,{'MO'[i % 2]}\n" for i in range(1, 9)))
    with pytest.raises(SystemExit, match=r"^python train.py: error: .*bed_5.jpg: not a readable image"):
        main(["--data_dir", str(root), "--output_dir", str(tmp_path / "o")])


def test_class_weights_balance_the_classes():
    weights = balanced_class_weights([0, 0, 0, 1], 3)  # class 2 has no photo
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])
    assert (weights[:2] * torch.tensor([3, 1])).tolist() == pytest.approx([2.0, 2.0])


def test_weighted_loss_is_the_weighted_cross_entropy_over_the_batch_labels():
    head = HeadModel(torch.nn.Linear(3, 2), dropout=0.0)
    weights = torch.tensor([0.25, 4.0])
    features, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 1])
    logits = head(features)["logits"]
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = cross_entropy_loss(weights)
    # Trainer passes the label count of the whole (accumulated, all-process) batch: a sum over it
    assert loss({"logits": logits}, labels, num_items_in_batch=6).item() == pytest.approx(
        (per_example * weights[labels]).sum().item() / 6, rel=1e-5)
    # without it, PyTorch's weighted mean
    assert loss({"logits": logits}, labels).item() == pytest.approx(
        ((per_example * weights[labels]).sum() / weights[labels].sum()).item(), rel=1e-5)
    assert cross_entropy_loss(None)({"logits": logits}, labels).item() == pytest.approx(per_example.mean().item())


def test_oversampling_makes_classes_equal(image_folder):
    from hf_model.data import build_dataset

    data = build_dataset(str(image_folder), split_fractions=[0.5, 0.25, 0.25])
    uneven = data["train"].select([i for i, label in enumerate(data["train"]["label"]) if label == 0 or i % 3 == 0])
    counts = np.bincount(uneven["label"])
    assert counts[0] != counts[1]
    assert np.bincount(oversampled(uneven, seed=0)["label"]).tolist() == [counts.max()] * 2


@pytest.fixture
def uneven_folder(tmp_path: Path) -> Path:
    """16 red photos, 6 blue: an imbalanced two-class folder."""
    for name, colour, count in [("red", (220, 30, 30), 16), ("blue", (30, 30, 220), 6)]:
        for i in range(count):
            make_photo(tmp_path / "uneven" / name / f"{i}.jpg", colour, seed=i)
    return tmp_path / "uneven"


def test_class_weights_auto_weights_the_loss_end_to_end(uneven_folder, tiny_convnext, tmp_path, monkeypatch):
    import hf_model.training as training

    seen = []
    monkeypatch.setattr(training, "cross_entropy_loss",
                        lambda weights, smoothing=0.0: seen.append(weights) or cross_entropy_loss(weights, smoothing))
    out = tmp_path / "run"
    main(["--data_dir", str(uneven_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--class_weights",
          "auto", "--cache_dir", str(tmp_path / "cache"), "--refit", "false", *FAST])
    from hf_model.data import load_data

    record = load_run_config(out)
    train_labels = load_data(record.config, record.training_args.seed)["train"]["label"]
    (weights,) = seen
    assert weights[0] > weights[1]  # blue, the smaller class (id 0: classes sort by name), weighs more
    assert weights.tolist() == pytest.approx(balanced_class_weights(train_labels, 2).tolist())


def test_oversample_trains_on_balanced_classes_end_to_end(uneven_folder, tiny_convnext, tmp_path):
    out = tmp_path / "run"
    main(["--data_dir", str(uneven_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--oversample",
          "--stages", "1", "--unfreeze_top_blocks", "2", "--cache_dir", str(tmp_path / "cache"), *FAST])
    from hf_model.data import load_data

    record = load_run_config(out)
    train = load_data(record.config, record.training_args.seed)["train"]
    rows = 2 * np.bincount(train["label"]).max()  # both classes repeated up to the larger one
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["max_steps"] == 2 * -(-rows // 8)  # 2 epochs of batches of 8


def test_label_smoothing_is_applied_by_our_loss_in_both_stages(image_folder, tiny_convnext, tmp_path):
    out = tmp_path / "run"
    main(["--data_dir", str(image_folder), "--backbone", tiny_convnext, "--output_dir", str(out), "--cache_dir",
          str(tmp_path / "cache"), "--label_smoothing_factor", "0.1", *FAST])  # stage 1 trains a HeadModel
    assert load_run_config(out).training_args.label_smoothing_factor == 0.1  # the record keeps the user's value
    smoothed = cross_entropy_loss(None, 0.1)({"logits": torch.tensor([[10.0, -10.0]])}, torch.tensor([0]))
    assert smoothed.item() > 0.5  # a sure right answer still costs something under smoothing


def test_a_folder_too_small_for_a_test_split_trains_and_says_it_is_untested(tiny_convnext, tmp_path, capsys):
    photos = tmp_path / "photos"
    for name, colour in [("red", (220, 30, 30)), ("blue", (30, 30, 220))]:
        for i in range(2):  # one photo for train, one for validation, none left to test
            make_photo(photos / name / f"{i}.jpg", colour, seed=i)
    out = tmp_path / "run"
    metrics = main(["--data_dir", str(photos), "--backbone", tiny_convnext, "--output_dir", str(out),
                    "--cache_dir", str(tmp_path / "cache"), *FAST])
    assert metrics == {"test_samples": 0}
    assert "not tested (too few photos for a test split)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "blue", "1": "red"}
    assert load_run_config(out).finished and not (out / "confusion_matrix.png").exists()
    assert "No test results were recorded" in (out / "README.md").read_text()


def test_photos_that_cannot_be_trained_on_stop_with_one_line_not_a_traceback(tmp_path):
    make_photo(tmp_path / "photos" / "stray.jpg", (200, 0, 0))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data_dir", str(tmp_path / "photos"),
                             "--output_dir", str(tmp_path / "run")], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("python train.py: error: ") and "stray.jpg" in result.stderr
