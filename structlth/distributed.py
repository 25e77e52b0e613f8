"""torchrun support: process group from the environment torchrun sets, DDP wrapping, rank 0.

Without torchrun (no WORLD_SIZE in the environment) everything is a single process and
these helpers are no-ops, so stage commands are the same in both cases.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td
from torch import nn


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU."""
    if launched_by_torchrun() and not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def world_size() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module) -> nn.Module:
    """DDP around `model` when a process group is up; the model itself otherwise."""
    if not td.is_initialized():
        return model
    dev = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def local_device(kind: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> the device this process trains on."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
