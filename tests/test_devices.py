"""``--device``: torch's own names, ``auto`` for the accelerator present, and a device that is not there refused."""

from __future__ import annotations

import argparse

import pytest
import torch

from hf_model.devices import (
    DeviceError,
    add_device_argument,
    input_device_and_dtype,
    present_devices,
    resolve_device,
)
from hf_model.exit_status import UserInputError


@pytest.fixture
def one_cuda_gpu(monkeypatch):
    """torch reports one CUDA GPU (whatever this machine has, and whichever build of torch)."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("value", ["auto", None])
def test_auto_is_the_cpu_when_torch_finds_no_gpu(no_accelerator, value):
    assert resolve_device(value) == torch.device("cpu")
    assert present_devices() == ["cpu"]


def test_auto_picks_the_gpu_when_one_is_present(one_cuda_gpu):
    assert resolve_device("auto") == torch.device("cuda")
    assert present_devices() == ["cuda:0", "cpu"]


@pytest.mark.parametrize(("value", "expected"), [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"),
                                                 (torch.device("cuda", 0), "cuda:0")])
def test_a_device_that_is_present_is_returned_as_torchs_device(one_cuda_gpu, value, expected):
    assert resolve_device(value) == torch.device(expected)


@pytest.mark.parametrize(("machine", "value", "present"), [
    ("no_accelerator", "cuda", "cpu"),
    ("no_accelerator", "cuda:0", "cpu"),
    ("no_accelerator", "mps", "cpu"),
    ("one_cuda_gpu", "cuda:3", "cuda:0, cpu"),
    ("one_cuda_gpu", "mps", "cuda:0, cpu"),
    ("one_cuda_gpu", "meta", "cuda:0, cpu"),  # torch parses it, but no model runs there
])
def test_a_device_this_machine_lacks_is_one_line_naming_the_flag_and_what_it_has(request, machine, value, present):
    request.getfixturevalue(machine)
    with pytest.raises(DeviceError) as refused:
        resolve_device(value)
    assert str(refused.value) == (f"--device {value}: this machine has no such device (present here: {present}); "
                                  "give one of those or auto")
    assert isinstance(refused.value, UserInputError)  # commands print it as "prog: error: ..." and exit 1


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:x", "cuda:-1"])
def test_a_name_torch_does_not_parse_is_refused_naming_the_choices(no_accelerator, value):
    with pytest.raises(DeviceError) as refused:
        resolve_device(value)
    assert str(refused.value) == (f"--device {value} is not a device: give auto, cpu, cuda, cuda:N or mps "
                                  "(present here: cpu)")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmd")
    add_device_argument(parser)
    return parser


def test_the_flag_defaults_to_auto_and_its_help_says_so():
    assert parser().parse_args([]).device == "auto"
    assert parser().parse_args(["--device", "cuda:1"]).device == "cuda:1"  # whether it is there: checked on loading
    assert "auto (the default: a CUDA GPU when present" in " ".join(parser().format_help().split())


@pytest.mark.parametrize("value", ["gpu", "cuda:x"])
def test_a_malformed_device_is_a_usage_error_at_parse_time(capsys, value):
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(["--device", value])
    assert stop.value.code == 2
    assert f"argument --device: must be auto, cpu, cuda, cuda:N or mps, got {value!r}" in capsys.readouterr().err


def test_inputs_go_to_the_device_and_dtype_of_the_first_floating_point_weights():
    model = torch.nn.Module()
    model.steps = torch.nn.Parameter(torch.zeros(1, dtype=torch.long), requires_grad=False)  # not a weight
    model.linear = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert input_device_and_dtype(model) == (torch.device("cpu"), torch.bfloat16)
