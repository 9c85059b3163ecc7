"""Training on several devices: the recipe kept equivalent, and work done once and shared between processes.

Under ``torchrun`` / ``accelerate launch`` each GPU gets a process (a rank); plain ``python train.py`` on a
machine with several GPUs runs one process that splits every batch across them (``nn.DataParallel``, which
``Trainer`` chooses by itself). Either way ``--per_device_train_batch_size B`` on N devices is a global batch
of ``B x N`` (times ``--gradient_accumulation_steps``): N times fewer updates at the same learning rate, a
different recipe from the one tuned on one device. :func:`for_devices` keeps it equivalent.

Work that every rank would repeat (decoding and hashing every photo to build the splits, a teacher labelling
the unlabeled photos) runs on the main process only, and :func:`main_process_result` sends its result to the
others, so every rank trains on the same splits and the same pseudo-labels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
from collections.abc import Callable
from typing import TypeVar

import torch
from transformers import TrainingArguments

from hf_model.config import MULTI_DEVICE_BATCH, TrainConfig

logger = logging.getLogger("hf_model")
T = TypeVar("T")

KEEP_GLOBAL, SCALE_LR = MULTI_DEVICE_BATCH


def devices_in_step(args: TrainingArguments) -> int:
    """Devices one optimizer step spreads a batch over: processes x GPUs per process (DataParallel), at least 1."""
    return max(1, args.world_size) * max(1, args.n_gpu)


def global_batch_size(args: TrainingArguments) -> int:
    """Photos per optimizer step: per-device batch x gradient accumulation x :func:`devices_in_step`."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * devices_in_step(args)


def per_device_share(batch: int, devices: int, rule: str) -> int:
    """The per-device batch that keeps ``batch`` global under ``keep_global`` (rounded up); ``batch`` otherwise."""
    return math.ceil(batch / devices) if rule == KEEP_GLOBAL else batch


def for_devices(cfg: TrainConfig, args: TrainingArguments) -> tuple[TrainConfig, TrainingArguments]:
    """``(cfg, args)`` for the devices present, with the one-device recipe kept (``cfg.multi_device_batch``).

    ``keep_global`` (default): ``--per_device_train_batch_size`` is divided by the number of devices (rounded up),
    so the global batch, the updates per epoch and the learning rate stay those of one device. ``scale_lr``: the
    per-device batch is kept and both learning rates are multiplied by the number of devices, the linear scaling
    rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): faster, but fewer updates, so not the same recipe
    on a small dataset. On one device both return ``cfg`` and ``args`` unchanged. The log says what changed.
    """
    devices = devices_in_step(args)
    if devices == 1:
        return cfg, args
    given = args.per_device_train_batch_size
    how = "DataParallel over the GPUs of one process" if args.n_gpu > 1 else f"{args.world_size} processes"
    if cfg.multi_device_batch == SCALE_LR:
        logger.info("%d devices (%s): the global batch is %d x %d = %d; learning rates x %d (linear scaling rule, "
                    "--multi_device_batch scale_lr): %g -> %g, head %g -> %g", devices, how, given, devices,
                    given * devices, devices, args.learning_rate, args.learning_rate * devices,
                    cfg.head_learning_rate, cfg.head_learning_rate * devices)
        return (dataclasses.replace(cfg, head_learning_rate=cfg.head_learning_rate * devices),
                dataclasses.replace(args, learning_rate=args.learning_rate * devices))
    share = per_device_share(given, devices, KEEP_GLOBAL)
    if share * devices == given:
        logger.info("%d devices (%s): %d photos per device, so the global batch stays %d as on one device "
                    "(--multi_device_batch keep_global; scale_lr keeps %d per device and scales the learning rate)",
                    devices, how, share, given, given)
    else:
        logger.warning("%d devices (%s): --per_device_train_batch_size %d does not divide over %d devices: the global "
                       "batch is %d, not %d (%d per device; give a multiple of %d to keep the recipe of one "
                       "device)", devices, how, given, devices, share * devices, given, share, devices)
    return cfg, dataclasses.replace(args, per_device_train_batch_size=share)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def main_process_result(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 only, its result (or the error it raised) given to every rank.

    Outside ``torch.distributed`` (or with one process) it is simply ``compute()``. The result travels with
    ``torch.distributed.broadcast_object_list``, so it must pickle; an error is raised again on every rank, so
    all of them stop with the same message instead of the others waiting for ever.
    """
    rank, world = rank_and_world()
    if world == 1:
        return compute()
    box: list = [None]
    error: Exception | None = None
    if rank == 0:
        try:
            box[0] = ("result", compute())
        except Exception as err:  # the other ranks are waiting at the broadcast: tell them
            error = err
            box[0] = ("error", err if _pickles(err) else RuntimeError(f"rank 0: {type(err).__name__}: {err}"))
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == "error":
        raise value
    return value


def _pickles(value: object) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # any failure to pickle means it cannot travel to the other ranks
        return False


def barrier() -> None:
    """Wait for every rank (nothing outside ``torch.distributed``)."""
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()
