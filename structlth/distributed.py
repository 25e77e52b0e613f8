"""torchrun support: process group from the environment torchrun sets, DDP wrapping, rank 0.

Without torchrun (no WORLD_SIZE in the environment) everything is a single process and
these helpers are no-ops, so stage commands are the same in both cases. A training stage
started plainly with runtime.nproc_per_node > 1 re-executes itself under torchrun.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import TYPE_CHECKING

import torch
import torch.distributed as td
from torch import nn

from structlth import devices
from structlth.errors import ParamsError

if TYPE_CHECKING:
    from structlth.config import RuntimeParams


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


def relaunch_under_torchrun(runtime: RuntimeParams) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node N <same argv>` when
    runtime.nproc_per_node N > 1 and torchrun has not started us already; return otherwise.
    With runtime.device cuda:auto, N free devices are claimed first (structlth.devices) and made
    the only ones torchrun's processes see; torchrun holds their locks until it exits."""
    n = runtime.nproc_per_node
    if n <= 1 or launched_by_torchrun():
        return
    if runtime.device == "cuda:auto":
        check_device(runtime.device)
        names = devices.device_names(torch.cuda.device_count())
        ids = devices.claim(names, n, devices.lock_dir(runtime.device_locks), lambda: _waiting(n))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names[i] for i in ids)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _waiting(n: int) -> None:
    print(f"waiting for {n} GPU{'s' if n > 1 else ''} no other stage holds (runtime.device: cuda:auto)", flush=True)


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


def check_device(kind: str) -> None:
    """ParamsError when runtime.device names CUDA (cuda, cuda:auto) and torch sees no CUDA device."""
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"runtime.device: {kind}, but torch sees no CUDA device on this machine; use auto or cpu")


def local_device(kind: str, locks: str | None = None) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:auto' -> the device this process trains on. cuda: the
    LOCAL_RANK'th; cuda:auto: one no other process holds, claimed for this process's life
    (structlth.devices, locks in `locks`), or under torchrun the LOCAL_RANK'th of those its
    launcher claimed (relaunch_under_torchrun)."""
    check_device(kind)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda:auto" and not launched_by_torchrun():
        [i] = devices.claim(devices.device_names(torch.cuda.device_count()), 1, devices.lock_dir(locks), lambda: _waiting(1))
        return torch.device("cuda", i)
    if kind.startswith("cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
