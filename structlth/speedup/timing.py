"""Timing and verification: how every speed figure is measured and every fast path checked.

`time_pair` times a dense callable against a fast one in this process, interleaved in random
order (seeded) so background load hits both alike; `verify` refuses a fast path whose output
differs from the masked reference.
"""

from __future__ import annotations

import fcntl
import os
import platform
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from structlth.errors import VerificationError
from structlth.stats import sign_test, t_half_width


def machine_name() -> str:
    """The CPU that times: model, the instruction set torch's kernels use, core count,
    torch, oneDNN and ONNX Runtime versions; e.g. 'AMD EPYC (AVX2, 2 cores), torch 2.13.0,
    oneDNN 3.12.0, ONNX Runtime 1.32.0'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    onednn = re.search(r"MKL-DNN v([0-9.]+)", torch.__config__.show())
    dnn = f", oneDNN {onednn.group(1)}" if onednn else ""
    try:
        ort = f", ONNX Runtime {metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        ort = ""
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores), torch {torch.__version__.split('+')[0]}{dnn}{ort}"


@contextmanager
def machine_lock(name: str, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold an exclusive lock shared by every process of this user on this machine, so two
    benches (e.g. under `dvc queue start -j 2`) never time on the same cores at once; on_wait
    runs once when another process holds it. Released when the process dies."""
    path = os.path.join(tempfile.gettempdir(), f"structlth-{name}-{os.getuid()}.lock")
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Timing:
    """Medians (ms) of the dense and the fast callable over all timed pairs, and the saving of
    each consecutive block of pairs (empty when timed as one block)."""

    t_dense_ms: float
    t_ticket_ms: float
    block_savings: tuple[float, ...] = ()

    @property
    def saving(self) -> float:
        return 1 - self.t_ticket_ms / self.t_dense_ms

    @property
    def ci95(self) -> float | None:
        """95% half-width of the saving from the spread of its blocks' savings (the t interval of
        their mean: blocks are consecutive in time, so a drift of the machine's speed that lasts
        longer than one pair shows up between blocks); None with fewer than two blocks."""
        return t_half_width(self.block_savings) if len(self.block_savings) > 1 else None


def median(v) -> float:
    v = sorted(v)
    return v[len(v) // 2]


def _synced_clock() -> float:
    """perf_counter once the CUDA kernels queued so far have finished."""
    torch.cuda.synchronize()
    return time.perf_counter()


def settled_side(bar: float, alpha: float) -> Callable[[Sequence[float], Sequence[float]], bool]:
    """A stopping rule for `time_pair`: whether the pairs so far (dense ms, fast ms) fall on one
    side of fast = bar x dense by a two-sided sign test at level alpha (7 of 7 pairs at 0.02)."""

    def settled(td: Sequence[float], tf: Sequence[float]) -> bool:
        below = sum(f < bar * d for d, f in zip(td, tf))
        return sign_test(below, len(td) - below) < alpha

    return settled


@torch.inference_mode()
def time_pair(
    dense: Callable,
    fast: Callable,
    x: torch.Tensor,
    repeats: int,
    warmup: int,
    x_fast: torch.Tensor | None = None,
    seed: int = 0,
    blocks: int = 1,
    settled: Callable[[Sequence[float], Sequence[float]], bool] | None = None,
    every: int = 1,
) -> Timing:
    """Median ms of dense(x) and fast(x_fast or x) over `blocks` consecutive blocks of `repeats`
    pairs, each pair in random order (on CUDA each call is timed to the end of its kernels);
    with blocks > 1 the Timing also carries each block's saving (its ci95). With `settled`
    (e.g. `settled_side`), it is asked after every `every` pairs, on the times so far, and
    timing stops once it answers True."""
    xf = x if x_fast is None else x_fast
    clock = _synced_clock if x.is_cuda else time.perf_counter
    for _ in range(warmup):
        dense(x)
        fast(xf)
    order = random.Random(seed)
    td, tf = [], []
    for i in range(repeats * blocks):
        if settled is not None and i and i % every == 0 and settled(td, tf):
            break
        pair = [(dense, td, x), (fast, tf, xf)]
        order.shuffle(pair)
        for fn, acc, inp in pair:
            t0 = clock()
            fn(inp)
            acc.append((clock() - t0) * 1e3)
    per_block = [Timing(median(td[i : i + repeats]), median(tf[i : i + repeats])).saving for i in range(0, len(td), repeats)]
    return Timing(median(td), median(tf), tuple(per_block) if blocks > 1 else ())


@torch.inference_mode()
def verify(reference: nn.Module, fast: nn.Module, x: torch.Tensor, atol: float, what: str) -> float:
    """Max |fast(x) - reference(x)|; VerificationError above atol x max |reference(x)|."""
    ref, out = reference(x), fast(x)
    if out.shape != ref.shape:
        raise VerificationError(f"{what}: output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    err, scale = float((out - ref).abs().max()), float(ref.abs().max().clamp_min(1e-12))
    if not err <= atol * scale:
        raise VerificationError(
            f"{what}: fast path differs from the masked model by {err:.3g} (> bench.atol {atol} x output scale {scale:.3g})"
        )
    return err


@torch.inference_mode()
def conv_inputs(model: nn.Module, x: torch.Tensor, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Input tensor of every module named in `names` (default: every Conv2d) for input x."""
    wanted = {n: m for n, m in model.named_modules() if (n in names if names is not None else isinstance(m, nn.Conv2d))}
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_mod, inp, _out) -> None:  # must return None, or it replaces the output
            seen.setdefault(name, inp[0])

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in wanted.items()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen
