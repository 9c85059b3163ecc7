"""The run config: presets, validation where it is built, and the run record that loads back into it."""

from __future__ import annotations

import json

import pytest

from hf_model.config import PRESETS, RunRecord, TrainConfig, load_run_config, parse_args


def test_preset_sets_defaults_and_flags_win():
    cfg, args = parse_args(["--preset", "birds", "--data_dir", "x", "--output_dir", "o", "--learning_rate", "0.01"])
    assert cfg.split_fractions == PRESETS["birds"]["split_fractions"]
    assert args.per_device_train_batch_size == PRESETS["birds"]["per_device_train_batch_size"]
    assert args.learning_rate == 0.01
    assert args.remove_unused_columns is False and args.load_best_model_at_end


def test_preset_file_values_reach_the_config_after_the_preset_and_flags_win(tmp_path):
    preset = tmp_path / "best_preset.json"
    preset.write_text(json.dumps({"head": "sgd", "head_dropout": 0.35, "weight_decay": 0.002, "refit": False,
                                  "split_fractions": [0.7, 0.2, 0.1], "lr_scheduler_type": "linear"}))
    cfg, args = parse_args(["--preset", "bedrooms", "--preset_file", str(preset), "--data_dir", "x",
                            "--output_dir", "o", "--head_dropout", "0.1"])
    assert cfg.head == "sgd" and cfg.refit is False and cfg.split_fractions == [0.7, 0.2, 0.1]
    assert args.weight_decay == 0.002 and args.lr_scheduler_type == "linear"
    assert cfg.head_dropout == 0.1  # the command line wins over the file
    assert cfg.backbone == PRESETS["bedrooms"]["backbone"]  # the named preset still applies under the file
    assert cfg.preset_file == str(preset)  # kept in the run record


@pytest.mark.parametrize(("content", "message"), [
    ('{"heads": "sgd"}', "unknown key 'heads'"),
    ('{"head": "svm"}', "'head'"),
    ('{"head_epochs": "ten"}', "'head_epochs'"),
    ('{"head_epochs": null}', "'head_epochs'"),
    ('{"preset": "birds"}', "unknown key 'preset'"),
    ('{"head": "sgd",}', "not valid JSON"),
    ('["head", "sgd"]', "JSON object"),
])
def test_a_bad_preset_file_is_a_usage_error_naming_the_file_and_key(content, message, tmp_path, capsys):
    preset = tmp_path / "preset.json"
    preset.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--preset_file", str(preset), "--data_dir", "x", "--output_dir", "o"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and str(preset) in err and message in err


def test_a_missing_preset_file_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--preset_file", str(tmp_path / "nowhere.json"), "--data_dir", "x", "--output_dir", "o"])
    assert exit_info.value.code == 2 and "nowhere.json" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--class_weights", "balanced"], "--class_weights"),
    (["--stages", "3"], "--stages"),
    (["--split_fractions", "0.8", "0.3", "0.1"], "--split_fractions"),
    (["--pseudo_label_threshold", "1.5"], "--pseudo_label_threshold"),
    (["--cv_folds", "1"], "--cv_folds"),
    (["--feature_views", "0"], "--feature_views"),
    (["--zoom", "0"], "--zoom"),
    (["--unfreeze_top_blocks", "-2"], "--unfreeze_top_blocks"),
    (["--split_fractions", "0.9", "0", "0.1"], "--split_fractions"),  # no validation photos: no best epoch
    (["--rotation", "-5"], "--rotation"),
    (["--shift", "2"], "--shift"),
    (["--head_epochs", "0"], "--head_epochs"),
    (["--shear", "nan"], "--shear"),
    (["--head_learning_rate", "inf"], "--head_learning_rate"),
    (["--split_fractions", "nan", "0.5", "0.5"], "--split_fractions"),
    # TrainingArguments that transformers lets through, each of which would fail deep in training or train nothing
    (["--learning_rate", "0"], "--learning_rate"),
    (["--learning_rate", "-0.001"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"),
    (["--num_train_epochs", "0"], "--num_train_epochs"),
    (["--num_train_epochs", "inf"], "--num_train_epochs"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["--warmup_steps", "2.5"], "--warmup_steps"),
    (["--warmup_steps", "-1"], "warmup_steps"),  # transformers' own check
    (["--label_smoothing_factor", "1"], "--label_smoothing_factor"),
    (["--label_smoothing_factor", "-0.1"], "--label_smoothing_factor"),
    (["--weight_decay", "-0.01"], "--weight_decay"),
    (["--seed", "-1"], "--seed"),
    (["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
    (["--remove_unused_columns", "true"], "--remove_unused_columns"),  # would drop the image column
])
def test_a_bad_option_is_a_usage_error_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data_dir", "x", "--output_dir", "o", *flags])
    assert exit_info.value.code == 2  # argparse's usage error, not a traceback
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags", [
    ["--num_train_epochs", "0", "--max_steps", "5"],  # max_steps decides the length
    ["--warmup_steps", "0.1"], ["--warmup_steps", "20"], ["--label_smoothing_factor", "0.1"], ["--weight_decay", "0"],
])
def test_usable_training_numbers_pass(flags):
    parse_args(["--data_dir", "x", "--output_dir", "o", *flags])


def test_the_dataclass_itself_refuses_bad_values():
    with pytest.raises(ValueError, match="--class_weights"):
        TrainConfig(class_weights="Auto")
    assert TrainConfig(class_weights="auto").class_weights == "auto"


def test_missing_data_source_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "o"])
    assert "--data_dir" in capsys.readouterr().err


def test_push_to_hub_with_cross_validation_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data_dir", "x", "--output_dir", "o", "--cv_folds", "5", "--push_to_hub"])
    assert "--cv_folds" in capsys.readouterr().err


def test_run_record_round_trips_into_the_same_config(tmp_path):
    cfg, args = parse_args(["--preset", "birds", "--dataset", "user/birds", "--label_column", "species",
                            "--labels_file", str(tmp_path / "l.csv"), "--output_dir", str(tmp_path), "--seed", "7",
                            "--class_weights", "auto", "--hub_token", "hf_secret"])
    RunRecord(cfg, args, "python train.py ...", (2, 5), 224, "Hub dataset user/birds", {"train": 10}).save(tmp_path)

    record = load_run_config(tmp_path)
    assert record.config == cfg
    assert record.training_args.seed == 7 and record.training_args.learning_rate == args.learning_rate
    assert record.training_args.lr_scheduler_type == args.lr_scheduler_type
    assert record.cv_fold == (2, 5) and record.image_size == 224 and record.split_sizes == {"train": 10}
    assert "hf_secret" not in (tmp_path / "hf_model_config.json").read_text()  # no token on disk


def test_run_record_keeps_the_class_names_and_whether_the_run_finished(tmp_path):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path)])
    RunRecord(cfg, args, label_names=["bedroom", "kitchen"], finished=False).save(tmp_path / "new")
    record = load_run_config(tmp_path / "new")
    assert record.label_names == ["bedroom", "kitchen"] and record.finished is False


def test_an_older_record_loads_with_its_seed(tmp_path):
    (tmp_path / "hf_model_config.json").write_text(json.dumps(
        {"config": {"data_dir": "photos", "split_fractions": [0.5, 0.25, 0.25], "cv_fold": [1, 3]}, "seed": 3}))
    record = load_run_config(tmp_path)
    assert record.config.data_dir == "photos" and record.training_args.seed == 3 and record.cv_fold == (1, 3)
    assert record.finished is True and record.label_names == []  # older records were written at the end of a run


def test_a_folder_without_a_record_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf_model_config.json"):
        load_run_config(tmp_path)


def test_record_paths_are_absolute_so_other_folders_can_use_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "labels.csv").write_text("file,label\n")
    cfg, args = parse_args(["--data_dir", "photos", "--labels_file", "photos/labels.csv", "--output_dir", "run"])
    (tmp_path / "run").mkdir()
    RunRecord(cfg, args).save("run")
    monkeypatch.chdir("/")
    record = load_run_config(tmp_path / "run")
    assert record.config.data_dir == str(tmp_path / "photos")
    assert record.config.labels_file == str(tmp_path / "photos" / "labels.csv")
    assert record.config.backbone == cfg.backbone  # a registry name, not a path


def test_a_record_written_on_a_gpu_with_bf16_loads_on_this_machine(tmp_path):
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path), "--seed", "5"])
    RunRecord(cfg, args).save(tmp_path)
    raw = json.loads((tmp_path / "hf_model_config.json").read_text())
    raw["training_args"].update(bf16=True, tf32=True)  # what a run with --bf16 --tf32 on an A100 records
    (tmp_path / "hf_model_config.json").write_text(json.dumps(raw))
    record = load_run_config(tmp_path)
    assert record.training_args.seed == 5 and record.config == cfg


def _usage_error(argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_bad_value_from_a_preset_file_names_the_file(tmp_path, capsys):
    preset = tmp_path / "tuned.json"
    preset.write_text('{"learning_rate": -1}')
    lines = _usage_error(["--preset_file", str(preset), "--data_dir", "x", "--output_dir", "o"], capsys)
    assert lines[-1].endswith(f"error: --learning_rate must be above 0 (--learning_rate set by --preset_file {preset}: "
                              "give it on the command line to change it)")


def test_a_clash_with_a_default_says_which_default_in_one_line(capsys):
    lines = _usage_error(["--eval_strategy", "no", "--data_dir", "x", "--output_dir", "o"], capsys)
    assert lines[-1].startswith("python train.py: error: --load_best_model_at_end requires the save and eval strategy")
    assert lines[-1].endswith("(--load_best_model_at_end set by python train.py's defaults: give it on the command "
                              "line to change it)")


def test_a_usage_error_shows_a_short_usage_line_not_every_flag(capsys):
    lines = _usage_error(["--data_dir", "x", "--output_dir", "o", "--learning_rate", "0"], capsys)
    assert lines == ["usage: python train.py --data_dir DIR | --dataset ID --output_dir DIR [options]   "
                     "(--help lists every option)",
                     "python train.py: error: --learning_rate must be above 0"]


@pytest.mark.parametrize("output_dir", ["photos/run", "photos"])
def test_an_output_dir_inside_the_data_dir_is_refused(tmp_path, capsys, output_dir):
    (tmp_path / "photos").mkdir()
    lines = _usage_error(["--data_dir", str(tmp_path / "photos"), "--output_dir", str(tmp_path / output_dir)], capsys)
    assert lines[-1].endswith(f"--output_dir {tmp_path / output_dir} is inside --data_dir {tmp_path / 'photos'}: the "
                              "run's plots would be read as photos (a class of their own) by the next run; choose a "
                              "folder outside the photos")


def test_on_a_gpu_photos_load_in_persistent_workers_and_on_a_cpu_in_the_training_process(monkeypatch):
    import torch

    from hf_model.config import hardware_defaults

    _, on_cpu = parse_args(["--data_dir", "x", "--output_dir", "o"])
    assert (on_cpu.dataloader_num_workers, on_cpu.dataloader_persistent_workers) == (0, False)
    _, chosen = parse_args(["--data_dir", "x", "--output_dir", "o", "--dataloader_num_workers", "1"])
    assert chosen.dataloader_num_workers == 1  # a flag still wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # TrainingArguments itself needs a real GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert hardware_defaults() == {"dataloader_pin_memory": True, "dataloader_num_workers": 2,
                                   "dataloader_persistent_workers": True}  # 16 CPUs shared by 8 ranks


def test_zero_dataloader_workers_turn_persistent_workers_off_which_torch_refuses_without_workers():
    # a GPU's defaults are 4 persistent workers; --dataloader_num_workers 0 (to debug) kept persistent on
    _, args = parse_args(["--data_dir", "x", "--output_dir", "o", "--dataloader_num_workers", "0",
                          "--dataloader_persistent_workers", "true"])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (0, False)


def test_under_a_launcher_on_a_machine_without_gpu_training_runs_on_the_cpus_so_accelerate_wraps_it_in_ddp(
        monkeypatch, no_accelerator):
    import torch

    from hf_model.config import hardware_defaults

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert "use_cpu" not in hardware_defaults()  # one process: nothing to wrap
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun / accelerate launch
    assert hardware_defaults()["use_cpu"] is True


def test_launcher_variables_left_in_the_environment_are_named_with_what_to_do(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "0")  # e.g. exported by a notebook, then python train.py without torchrun
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else accelerate sets this process's threads
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # remembered as absent, so what accelerate writes there is undone afterwards
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as stop:
        parse_args(["--data_dir", "x", "--output_dir", "o"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("(the environment sets LOCAL_RANK=0, so transformers starts torch.distributed: unset RANK, "
                         "WORLD_SIZE, LOCAL_RANK to train in one process, or start the processes with torchrun "
                         "--nproc_per_node N)")


def test_ddp_backend_in_one_process_says_it_is_for_the_processes_of_a_launcher(monkeypatch, capsys):
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # python train.py, not torchrun
    with pytest.raises(SystemExit) as stop:
        parse_args(["--data_dir", "x", "--output_dir", "o", "--ddp_backend", "gloo"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "(--ddp_backend sets how the processes of torchrun or accelerate launch talk to each other: drop it to "
        "train in one process)")


def test_a_record_written_by_torchrun_with_a_ddp_backend_loads_back_in_one_process(tmp_path, caplog):
    # the README's CPU recipe (torchrun ... --ddp_backend gloo): calibrate, publish and study read the record in one
    # process, where TrainingArguments(ddp_backend="gloo") raises
    cfg, args = parse_args(["--data_dir", "photos", "--output_dir", str(tmp_path),
                            "--per_device_train_batch_size", "8"])
    RunRecord(cfg, args, devices=2, global_batch_size=8).save(tmp_path)
    raw = json.loads((tmp_path / "hf_model_config.json").read_text())
    raw["training_args"].update(ddp_backend="gloo", use_cpu=True)
    (tmp_path / "hf_model_config.json").write_text(json.dumps(raw))
    record = load_run_config(tmp_path)
    assert (record.devices, record.global_batch_size) == (2, 8)
    assert record.training_args.per_device_train_batch_size == 8 and record.training_args.ddp_backend is None
    assert record.training_args.use_cpu and "without its hardware settings" not in caplog.text


def test_a_run_without_output_dir_is_a_usage_error_not_a_model_in_trainer_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = _usage_error(["--preset", "bedrooms", "--data_dir", "x"], capsys)
    assert lines[-1].endswith("error: give --output_dir: the folder the model, its card and reports go to "
                              "(e.g. runs/my_model)")
    assert not (tmp_path / "trainer_output").exists()


def test_output_dir_from_a_preset_file_counts_as_given(tmp_path):
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"output_dir": str(tmp_path / "runs")}))
    _, args = parse_args(["--preset_file", str(preset), "--data_dir", "x"])
    assert args.output_dir == str(tmp_path / "runs")
