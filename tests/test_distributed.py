"""Several devices: the recipe kept equivalent, and work done once per job (4 gloo processes on the CPU)."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import make_photo
from transformers import TrainingArguments

from hf_model.config import RunRecord, parse_args
from hf_model.distributed import for_devices, global_batch_size, main_process_result
from hf_model.reports import card_hyperparameters

WORLD = 4


def on_devices(monkeypatch, processes: int, gpus_per_process: int = 1) -> None:
    """TrainingArguments as under torchrun with ``processes`` ranks, or DataParallel over ``gpus_per_process``."""
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: processes))
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: gpus_per_process))


def test_keep_global_divides_the_batch_so_four_processes_take_the_steps_of_one(monkeypatch, caplog):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "16",
                            "--learning_rate", "3e-4"])
    on_devices(monkeypatch, WORLD)
    with caplog.at_level(logging.INFO, logger="hf_model"):
        run_cfg, run_args = for_devices(cfg, args)
    assert run_args.per_device_train_batch_size == 4 and global_batch_size(run_args) == 16
    assert run_args.learning_rate == 3e-4 and run_cfg.head_learning_rate == cfg.head_learning_rate
    assert "the global batch stays 16 as on one device" in caplog.text


def test_scale_lr_keeps_the_per_device_batch_and_multiplies_both_learning_rates(monkeypatch, caplog):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "16",
                            "--learning_rate", "1e-4", "--multi_device_batch", "scale_lr"])
    on_devices(monkeypatch, WORLD)
    with caplog.at_level(logging.INFO, logger="hf_model"):
        run_cfg, run_args = for_devices(cfg, args)
    assert run_args.per_device_train_batch_size == 16 and global_batch_size(run_args) == 64
    assert run_args.learning_rate == pytest.approx(4e-4) and run_cfg.head_learning_rate == pytest.approx(4e-3)
    assert "linear scaling rule" in caplog.text


def test_data_parallel_over_two_gpus_of_one_process_counts_as_two_devices(monkeypatch):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "16"])
    on_devices(monkeypatch, 1, gpus_per_process=2)
    _, run_args = for_devices(cfg, args)
    assert run_args.per_device_train_batch_size == 8 and global_batch_size(run_args) == 16


def test_a_batch_that_does_not_divide_over_the_devices_is_rounded_up_and_said(monkeypatch, caplog):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "16"])
    on_devices(monkeypatch, 3)
    _, run_args = for_devices(cfg, args)
    assert run_args.per_device_train_batch_size == 6
    assert "does not divide over 3 devices: the global batch is 18, not 16 (6 per device" in caplog.text


def test_a_per_device_batch_smaller_than_the_devices_is_not_said_to_keep_the_global_batch(monkeypatch, caplog):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "1"])
    on_devices(monkeypatch, 2)
    with caplog.at_level(logging.INFO, logger="hf_model"):
        _, run_args = for_devices(cfg, args)
    assert run_args.per_device_train_batch_size == 1 and global_batch_size(run_args) == 2
    assert "as on one device" not in caplog.text  # it said "the global batch stays 2 as on one device"
    assert "the global batch is 2, not 1 (1 per device; give a multiple of 2" in caplog.text


def test_one_device_leaves_the_recipe_as_given():
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "16"])
    assert for_devices(cfg, args) == (cfg, args)


def test_the_card_gives_the_global_batch_and_the_learning_rate_as_trained(monkeypatch):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", "out", "--per_device_train_batch_size", "8",
                            "--learning_rate", "1e-4", "--multi_device_batch", "scale_lr",
                            "--unfreeze_top_blocks", "2"])
    record = RunRecord(cfg, args, devices=8, global_batch_size=64)
    table = card_hyperparameters(record)
    assert table["batch_size"] == 64 and table["devices"] == 8
    assert table["learning_rate"] == pytest.approx(8e-4) and table["head_learning_rate"] == pytest.approx(8e-3)
    one = card_hyperparameters(RunRecord(cfg, args))
    assert one["batch_size"] == 8 and "devices" not in one and "multi_device_batch" not in one


def test_the_run_record_keeps_the_devices_and_the_global_batch(tmp_path):
    from hf_model.config import load_run_config

    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path)])
    RunRecord(cfg, args, devices=4, global_batch_size=16).save(tmp_path)
    saved = json.loads((tmp_path / "hf_model_config.json").read_text())
    assert saved["devices"] == 4 and saved["global_batch_size"] == 16
    again = load_run_config(tmp_path)
    assert (again.devices, again.global_batch_size) == (4, 16)


def test_ddp_does_not_search_for_unused_parameters_by_default():
    _, args = parse_args(["--data_dir", "photos", "--output_dir", "out"])
    assert args.ddp_find_unused_parameters is False  # frozen parameters are not tracked: nothing to search for


def test_outside_torch_distributed_the_main_process_result_is_just_the_result():
    assert main_process_result(lambda: 42) == 42
    with pytest.raises(ValueError, match="no"):
        main_process_result(lambda: (_ for _ in ()).throw(ValueError("no")))


def augmented(processor):
    from hf_model.transforms import build_train_transform

    return build_train_transform(processor, 64, zoom=0.5, rotation=10, shift=0.0, shear=0.0, hflip=True, brightness=0.0)


def _rank(rank: int, world: int, root: str) -> None:
    """One torchrun rank: convert the backbone on the shared fresh cache, build the splits' hashes, extract."""
    from pathlib import Path

    from datasets import ClassLabel, Dataset, Features, Image

    import hf_model.data as data
    from hf_model.adapters import adapter_for
    from hf_model.backbones import load_image_processor, load_model, resolve_backbone
    from hf_model.data import BadImageError, scan_images
    from hf_model.features import extract_features
    from hf_model.transforms import build_eval_transform

    root = Path(root)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank,
                                         world_size=world)
    report = {}
    try:
        torch.set_num_threads(1)
        paths = sorted(str(p) for p in (root / "photos").glob("*.jpg"))
        decoded = []
        hash_one = data._hash_one
        data._hash_one = lambda item: decoded.append(item) or hash_one(item)
        hashes, good = scan_images(paths)
        report["decoded"], report["hashes"] = len(decoded), hashes.tolist()
        try:
            scan_images([*paths, str(root / "broken.jpg")])
        except BadImageError as err:
            report["error"] = str(err)
        source = resolve_backbone("efficientnet-lite0", cache_dir=root / "cache")
        model = load_model(source, ["x", "y"], 64)
        processor = load_image_processor(source, model.config, 64)
        views = [build_eval_transform(processor), augmented(processor)]
        photos = Dataset.from_dict({"image": paths, "label": [0, 1] * (len(paths) // 2)},
                                   features=Features({"image": Image(), "label": ClassLabel(names=["x", "y"])}))
        rows = []
        adapter_for(model).classifier(model).register_forward_hook(lambda _m, inputs, _o: rows.append(len(inputs[0])))
        features = extract_features(model, photos, views, root / "cache" / "features", split_across_ranks=True)
        np.save(root / f"features{rank}.npy", features)
        report["photos_computed"] = sum(rows) // len(views)
        report["shared"] = main_process_result(lambda: f"from rank {rank}")
    finally:
        (root / f"report{rank}.json").write_text(json.dumps(report))
        torch.distributed.destroy_process_group()


def test_four_gloo_processes_on_a_fresh_cache_share_the_work_and_match_one_process(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image

    from hf_model.backbones import load_image_processor, load_model, resolve_backbone
    from hf_model.features import extract_features
    from hf_model.transforms import build_eval_transform

    for i in range(11):
        make_photo(tmp_path / "photos" / f"{i:02d}.jpg", (20 * i, 90, 200 - 15 * i), seed=i)
    shutil.copy(tmp_path / "photos" / "03.jpg", tmp_path / "photos" / "11.jpg")  # a duplicate: computed once
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    torch.multiprocessing.spawn(_rank, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=True)

    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert [r["decoded"] for r in reports] == [12, 0, 0, 0]  # only rank 0 decodes the photos for the splits
    assert all(r["hashes"] == reports[0]["hashes"] for r in reports)
    assert all("broken.jpg: not a readable image" in r["error"] for r in reports)  # every rank stops, same words
    assert all(r["shared"] == "from rank 0" for r in reports)
    computed = [r["photos_computed"] for r in reports]
    assert sum(computed) == 11 and max(computed) < 11  # 11 distinct photos, split across the ranks

    # one process on its own fresh cache computes the same features
    source = resolve_backbone("efficientnet-lite0", cache_dir=tmp_path / "cache")
    model = load_model(source, ["x", "y"], 64)
    processor = load_image_processor(source, model.config, 64)
    views = [build_eval_transform(processor), augmented(processor)]
    paths = sorted(str(p) for p in (tmp_path / "photos").glob("*.jpg"))
    photos = Dataset.from_dict({"image": paths, "label": [0, 1] * 6},
                               features=Features({"image": Image(), "label": ClassLabel(names=["x", "y"])}))
    alone = extract_features(model, photos, views, tmp_path / "alone")
    for r in range(WORLD):
        np.testing.assert_allclose(np.load(tmp_path / f"features{r}.npy"), alone, atol=2e-3)
    assert [p.name for p in (tmp_path / "cache" / "backbones").iterdir() if p.is_dir()] == ["efficientnet-lite0"]


class _Linear(torch.nn.Module):
    """Two weights and a loss: enough to see whether gradients are averaged between processes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def _torchrun_rank(rank: int, world: int, root: str) -> None:
    """One process as torchrun starts it on a machine without a GPU: launcher variables set, then train.py's flags;
    it trains a tiny model with ``Trainer`` and plans its output folder."""
    import os
    from pathlib import Path

    from transformers import Trainer

    import hf_model.training as training
    from hf_model.run_folder import RunPlan

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", init_method=f"file://{Path(root) / 'rendezvous'}", rank=rank,
                                         world_size=world)  # what env:// would do, without a fixed port
    report = {}
    try:
        torch.set_num_threads(1)
        cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(Path(root) / "out"), "--max_steps", "3",
                                "--per_device_train_batch_size", "2", "--save_strategy", "no", "--eval_strategy", "no",
                                "--disable_tqdm", "true"])
        rows = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(i % 2)} for i in range(16)]
        trainer = Trainer(model=_Linear(), args=args, train_dataset=rows)
        trainer.train()
        report["weights"] = trainer.model.linear.weight.detach().flatten().tolist()
        report["wrapped"] = type(trainer.model_wrapped).__name__
        # each rank would see the folder as it is at that moment: another rank's record, written a moment ago
        training.plan_run = lambda *_: RunPlan(resume_from=f"what rank {rank} saw")
        report["plan"] = training.shared_plan(args, True, RunRecord(cfg, args)).resume_from
    finally:
        (Path(root) / f"job{rank}.json").write_text(json.dumps(report))
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def torchrun_on_cpus(tmp_path_factory) -> list[dict]:
    """What each of 2 processes started as by torchrun on this CPU machine (no ``--ddp_backend``) reported."""
    root = tmp_path_factory.mktemp("torchrun")
    torch.multiprocessing.spawn(_torchrun_rank, args=(2, str(root)), nprocs=2, join=True)
    return [json.loads((root / f"job{rank}.json").read_text()) for rank in range(2)]


def test_torchrun_on_cpus_trains_one_model_with_gradients_averaged_between_the_processes(torchrun_on_cpus):
    # without use_cpu, accelerate leaves the model unwrapped on a CPU: each process trained its own copy on its
    # share of the photos, and rank 0 saved a model of half of them
    assert [rank["wrapped"] for rank in torchrun_on_cpus] == ["DistributedDataParallel"] * 2
    assert torchrun_on_cpus[0]["weights"] == torchrun_on_cpus[1]["weights"]


def test_what_a_run_does_with_its_output_folder_is_decided_by_the_main_process_for_every_rank(torchrun_on_cpus):
    assert [rank["plan"] for rank in torchrun_on_cpus] == ["what rank 0 saw"] * 2
