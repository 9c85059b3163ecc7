"""Where inference runs: the ``--device`` of ``hf-model predict``, ``hf-model calibrate`` and the Space.

``auto`` (the default) is the accelerator torch finds (a CUDA GPU, or Apple's ``mps``), else the CPU, as
``torch.accelerator.current_accelerator(check_available=True)`` decides; ``cpu``, ``cuda``, ``cuda:1``, ``mps``
name one, in ``torch.device``'s own syntax. A device that this machine does not have is refused in one line
naming what it has. Training does not come through here: ``Trainer`` and ``accelerate`` place it.
"""

from __future__ import annotations

import argparse

import torch

from hf_model.exit_status import UserInputError

AUTO = "auto"
FLAG = "--device"
DEVICE_HELP = (f"where the model runs: {AUTO} (the default: a CUDA GPU when present, else Apple's mps, else the CPU), "
               "cpu, cuda, cuda:N (the N-th GPU) or mps")

Device = str | torch.device | None  # None means AUTO


class DeviceError(UserInputError, ValueError):
    """A ``--device`` this machine does not have; the message names what it has."""


def resolve_device(value: Device = AUTO, flag: str = FLAG) -> torch.device:
    """The ``torch.device`` that ``value`` names on this machine; ``None`` or ``"auto"``: :func:`auto_device`.

    Raises :class:`DeviceError` (one line naming ``flag``, the value and the devices present) when ``value`` is
    not a device name or names one this machine does not have (``cuda`` without a GPU, ``cuda:3`` with one).
    """
    if value is None or value == AUTO:
        return auto_device()
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):  # torch's message lists every device type it was built for
        raise DeviceError(f"{flag} {value} is not a device: give {AUTO}, cpu, cuda, cuda:N or mps "
                          f"(present here: {', '.join(present_devices())})") from None
    if not is_present(device):
        raise DeviceError(f"{flag} {value}: this machine has no such device (present here: "
                          f"{', '.join(present_devices())}); give one of those or {AUTO}")
    return device


def auto_device() -> torch.device:
    """The accelerator torch finds (CUDA, mps, ...; its current device), else the CPU."""
    return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")


def present_devices() -> list[str]:
    """The devices this process can run a model on, accelerators first: e.g. ``["cuda:0", "cuda:1", "cpu"]``."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    count = torch.get_device_module(accelerator).device_count() if accelerator else 0
    return [f"{accelerator.type}:{index}" for index in range(count)] + ["cpu"]


def is_present(device: torch.device) -> bool:
    """Whether this machine has ``device`` (an unindexed accelerator means its first one)."""
    return device.type == "cpu" or f"{device.type}:{device.index or 0}" in present_devices()


def device_name(text: str) -> str:
    """An argparse ``type=`` for ``--device``: ``auto`` or a name ``torch.device`` parses (a usage error, status 2,
    otherwise). Whether this machine has it is :func:`resolve_device`'s check, made when the model loads.
    """
    if text != AUTO:
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"must be {AUTO}, cpu, cuda, cuda:N or mps, got {text!r}") from None
    return text


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option, the same in every command that runs a model."""
    parser.add_argument(FLAG, type=device_name, default=AUTO, help=DEVICE_HELP)


def input_device_and_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs must go: the device and dtype of its first floating-point weights
    (how ``transformers.PreTrainedModel.dtype`` reads a model's dtype)."""
    weights = next(p for p in model.parameters() if p.is_floating_point())
    return weights.device, weights.dtype
