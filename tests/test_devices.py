"""runtime.device: cuda:auto on a shared node: concurrent training processes take distinct GPUs,
a killed holder's GPU is free again, and a torchrun launch claims its N devices first. No GPU
is needed: torch's device count is faked in each process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from structlth import distributed as dist

STAGE = textwrap.dedent(
    """
    import sys, time, torch
    torch.cuda.is_available = lambda: True   # a node with 3 GPUs, faked
    torch.cuda.device_count = lambda: 3
    from structlth import distributed as dist
    print(dist.local_device("cuda:auto", sys.argv[1]), flush=True)   # what a training stage's setup() does
    time.sleep(600)
    """
)


def _start(locks):
    return subprocess.Popen([sys.executable, "-c", STAGE, str(locks)], stdout=subprocess.PIPE, text=True)


def _device(proc) -> str:
    """The device a stage process got (after any 'waiting' line)."""
    while (line := proc.stdout.readline()) and not line.startswith("cuda"):
        pass
    return line.strip()


def test_concurrent_stages_take_distinct_gpus_and_a_killed_one_frees_its_gpu(tmp_path):
    procs = [_start(tmp_path) for _ in range(3)]
    try:
        got = [_device(p) for p in procs]
        assert sorted(got) == ["cuda:0", "cuda:1", "cuda:2"]
        waiting = _start(tmp_path)  # a fourth finds all three held
        procs.append(waiting)
        assert waiting.stdout.readline().startswith("waiting for 1 GPU")
        holder = procs[got.index("cuda:1")]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert _device(waiting) == "cuda:1"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_torchrun_launch_claims_free_gpus_for_its_processes(monkeypatch, tmp_path):
    from structlth import devices
    from structlth.config import RuntimeParams

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert devices.claim(devices.device_names(4), 1, tmp_path) == [0]  # another stage holds GPU 0

    class Exec(Exception):
        pass

    def execv(path, argv):
        raise Exec(argv)

    monkeypatch.setattr(dist.os, "execv", execv)
    with pytest.raises(Exec) as launched:
        dist.relaunch_under_torchrun(RuntimeParams(device="cuda:auto", nproc_per_node=2, device_locks=str(tmp_path)))
    assert "--nproc-per-node=2" in launched.value.args[0]
    assert dist.os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"  # torchrun's ranks see only the two it claimed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")  # a process that sees a subset locks by physical name
    started = time.monotonic()
    assert devices.device_names(2) == ["3", "1"]
    assert devices.claim(devices.device_names(2), 1, tmp_path) == [0]  # device 3 is free; 1 is held
    assert time.monotonic() - started < 1
