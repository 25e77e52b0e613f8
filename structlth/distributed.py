"""torchrun support: process group from the environment torchrun sets, DDP wrapping, rank 0.

Without torchrun (no WORLD_SIZE in the environment) everything is a single process and
these helpers are no-ops, so stage commands are the same in both cases. A training stage
started plainly with runtime.nproc_per_node > 1 re-executes itself under torchrun.
"""

from __future__ import annotations

import hashlib
import os
import sys

import torch
import torch.distributed as td
from torch import nn

from structlth.errors import ParamsError


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


def relaunch_under_torchrun(nproc_per_node: int) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node N <same argv>` when
    N > 1 and torchrun has not started us already; return otherwise."""
    if nproc_per_node <= 1 or launched_by_torchrun():
        return
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}", *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def wrap(model: nn.Module) -> nn.Module:
    """DDP around `model` when a process group is up; the model itself otherwise.

    On CUDA, BatchNorm becomes SyncBatchNorm so statistics cover the global batch as in one
    process; PyTorch has no CPU SyncBatchNorm, so gloo runs normalise per rank.
    """
    if not td.is_initialized():
        return model
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index])
    return nn.parallel.DistributedDataParallel(model)


def check_same_on_all_ranks(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise unless every rank holds bitwise the same `tensors` (e.g. the pruning masks)."""
    if not td.is_initialized():
        return
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    digests: list[str | None] = [None] * world_size()
    td.all_gather_object(digests, h.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"{what} differ between ranks: {digests}")


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def local_device(kind: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> the device this process trains on."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError("runtime.device: cuda, but torch sees no CUDA device on this machine; use auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
