"""GPUs shared by several processes on one node: `runtime.device: cuda:auto` claims devices no
other process holds, one exclusive lock file per device in a folder every process of this user
on the machine shares (runtime.device_locks; default: under the temp folder). The kernel drops a
lock when its holder exits or dies, so a killed stage frees its GPU; under `dvc queue start -j N`
on N GPUs the N experiments' training stages never share one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_held: list[IO[str]] = []  # this process's lock files: open until it exits (and through an exec)


def lock_dir(configured: str | None = None) -> Path:
    """Where the per-device locks live: `configured`, else a folder of this user's under the temp folder."""
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"structlth-devices-{os.getuid()}"


def device_names(count: int) -> list[str]:
    """The physical names of the `count` devices this process sees: CUDA_VISIBLE_DEVICES's
    entries when set (so processes that see different subsets lock the same files), else 0..count-1."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


def claim(
    names: list[str], n: int = 1, where: Path | None = None, on_wait: Callable[[], None] = lambda: None, poll_s: float = 1.0
) -> list[int]:
    """Indices into `names` (the devices this process sees, device_names) of `n` devices no other
    process holds, held until this process exits; a process it execs (torchrun) inherits them.
    Waits, calling on_wait once, while fewer than n are free; takes all n at once or none, so two
    processes that each want several never hold part of each other's."""
    if not 1 <= n <= len(names):
        raise ValueError(f"cannot claim {n} of {len(names)} devices")
    where = where or lock_dir()
    where.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        got: list[tuple[int, IO[str]]] = []
        for i, name in enumerate(names):
            f = open(where / f"cuda-{name}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            got.append((i, f))
            if len(got) == n:
                break
        if len(got) == n:
            for _, f in got:
                os.set_inheritable(f.fileno(), True)
                f.truncate(0)
                f.write(f"{os.getpid()}\n")  # who holds it, for a person looking
                f.flush()
            _held.extend(f for _, f in got)
            return [i for i, _ in got]
        for _, f in got:
            f.close()
        if not waited:
            on_wait()
            waited = True
        time.sleep(poll_s)
