"""Verified speed measurements of tickets against the dense network.

For each ticket the production engine's fast model (structlth.speedup.choice) is built, checked
against the masked dense reference on real test images (relative max error <= atol, else
VerificationError), then timed against the dense net of the same architecture (BN folded alike),
interleaved in random order, median of `repeats` x `blocks` pairs after `warmup` (a row's ci95:
the 95% half-width of its saving from the spread between its blocks), at each batch size, each
net in the memory format (channels_last or contiguous) in which it runs faster. With
bench.onnxruntime the same dense net and fast model are also exported to ONNX and timed in
ONNX Runtime the same way (structlth.speedup.onnxrt): rows carry their `runtime`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from structlth.masks import layer_effective_flops
from structlth.speedup.choice import Probe, fast_models_and_formats, fastest_format
from structlth.speedup.compiled import SUFFIX, compile_model
from structlth.speedup.engines import masked_reference
from structlth.speedup.layout import fold_bn
from structlth.speedup.onednn import kernel_channels
from structlth.speedup.onnxrt import RUNTIMES, in_runtime, runtime_format
from structlth.speedup.timing import Timing, conv_inputs, machine_name, time_pair, verify


def layer_rows(
    dense: nn.Module,
    fast: nn.Module,
    x: torch.Tensor,
    bench,
    flops: Mapping[str, tuple[int, int]],
    runtime: str = "torch",
    x_fast: torch.Tensor | None = None,
) -> list[dict]:
    """Per conv layer (BN folded, ReLU excluded): dense conv on its dense input (of x) vs the fast
    model's module of the same name on the fast model's input (of x_fast: x in the fast model's
    memory format; default x), each in `runtime` (in ONNX Runtime: each layer exported on its
    own), with both output channel counts (a slim conv's includes the zero channels its
    alignment added) and, in PyTorch on the CPU, the output channels oneDNN computes for the
    fast layer (its block padding included; structlth.speedup.onednn); flops: the layer's
    (dense, effective) FLOPs (structlth.masks.layer_effective_flops), its physical limit."""
    d_in = conv_inputs(dense, x)
    f_in = conv_inputs(fast, x if x_fast is None else x_fast, set(d_in))
    d_mods, f_mods = dict(dense.named_modules()), dict(fast.named_modules())
    rows = []
    for name, inp in d_in.items():
        if name not in f_in:
            continue
        d = in_runtime(runtime, d_mods[name], inp, bench.threads)
        f = in_runtime(runtime, f_mods[name], f_in[name], bench.threads)
        t = time_pair(d, f, inp, bench.repeats, bench.warmup, f_in[name])
        dn, k = flops.get(name, (1, 1))
        rows.append(
            {
                "layer": name,
                "t_dense_ms": t.t_dense_ms,
                "t_ticket_ms": t.t_ticket_ms,
                "time_saving": t.saving,
                "flops_saving": 1 - k / dn,
                "engine": type(f_mods[name]).__name__,
                "dense_channels": d_mods[name].out_channels,
                "channels": getattr(f_mods[name], "out_channels", None),  # a slim conv's, zero channels included
                "kernel_channels": kernel_channels(f_mods[name], f_in[name]) if runtime == "torch" and inp.device.type == "cpu" else None,
            }
        )
    return rows


BENCH_COLUMNS = [
    "method",
    "round",
    "machine",
    "runtime",
    "batch",
    "threads",
    "channels_last",
    "ticket_channels_last",
    "retimed",
    "engine",
    "t_dense_ms",
    "t_ticket_ms",
    "time_saving",
    "ci95",
    "aa_noise",
    "flops_saving",
    "params_saving",
    "max_abs_err",
    "compile_s",
    "sparsity",
    "test_acc",
]
PRODUCTION_ENGINES = ("slim", "slim+blocks")  # chosen per ticket structure before any timing (speedup.choice)
ORT_ENGINES = ("slim", "slim+blocks", "masked_dense")  # exportable to ONNX (torch's sparse CSR is not)


def runtimes(bench) -> tuple[str, ...]:
    """The runtimes a bench times in: PyTorch, plus ONNX Runtime when bench.onnxruntime."""
    return RUNTIMES if bench.onnxruntime else RUNTIMES[:1]


@dataclass(frozen=True)
class DenseBaseline:
    """Per batch size: the memory format the dense net runs fastest in (PyTorch), and per
    runtime and batch size its median time (ms). Measured once per bench stage
    (`dense_baseline`) so every row times the dense net in the same format (each ticket's fast
    model runs in its own: choice.fast_models_and_formats), and a row whose dense timing strays
    from it (another job on the cores) is re-timed."""

    formats: dict[int, bool]  # batch -> channels_last
    t_dense_ms: dict[str, dict[int, float]]  # runtime -> batch -> ms
    aa_noise: dict[str, dict[int, float]]  # runtime -> batch -> |saving| of dense timed against itself (A/A)


STRAY = 0.25  # a dense timing this far from the baseline's is re-timed (up to RETRIES times)
RETRIES = 2


def dense_baseline(model: nn.Module, test_x: torch.Tensor, bench) -> DenseBaseline:
    dense = fold_bn(model.cpu().eval())
    formats, times, aa = {}, {r: {} for r in runtimes(bench)}, {r: {} for r in runtimes(bench)}
    for b in bench.batch_sizes:
        fmt = fastest_format(dense, test_x[:b], bench.repeats, bench.warmup)
        formats[b] = fmt == torch.channels_last
        dense = dense.to(memory_format=fmt)
        for runtime in times:
            x = test_x[:b].contiguous(memory_format=runtime_format(runtime, fmt))
            d = in_runtime(runtime, dense, x, bench.threads)
            t = time_pair(d, d, x, bench.repeats, bench.warmup, blocks=bench.blocks)
            times[runtime][b], aa[runtime][b] = t.t_dense_ms, abs(t.saving)
    return DenseBaseline(formats, times, aa)


def _timed(dense, fast, x: torch.Tensor, x_fast: torch.Tensor, bench, expected_ms: float) -> tuple[Timing, int]:
    """time_pair (dense on x, fast on x_fast), re-run while the dense median strays from
    `expected_ms` by more than STRAY; the run whose dense time is closest to it is kept.
    Returns it and the number of re-runs."""
    best = time_pair(dense, fast, x, bench.repeats, bench.warmup, x_fast, blocks=bench.blocks)
    tries = 0
    while abs(best.t_dense_ms / expected_ms - 1) > STRAY and tries < RETRIES:
        tries += 1
        t = time_pair(dense, fast, x, bench.repeats, bench.warmup, x_fast, seed=tries, blocks=bench.blocks)
        if abs(t.t_dense_ms / expected_ms - 1) < abs(best.t_dense_ms / expected_ms - 1):
            best = t
    return best, tries


def _compiled(ref: nn.Module, dense: nn.Module, fast: nn.Module, x: torch.Tensor, x_fast: torch.Tensor, bench, engine: str, method: str):
    """The row of a compiled engine: dense compiled for x, fast alike for x_fast (x in its own
    memory format); the fast one verified against the masked model on x_fast, then timed against
    the compiled dense net. Returns (engine, Timing, re-runs, max error, compile seconds of the
    fast model)."""
    d, _ = compile_model(dense, x)
    f, seconds = compile_model(fast, x_fast)
    err = verify(ref, f, x_fast, bench.atol, f"{method} {engine} (torch)")
    return engine, time_pair(d, f, x, bench.repeats, bench.warmup, x_fast, blocks=bench.blocks), 0, err, seconds


@contextmanager
def _phase(phases: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall time of the block to phases[name] (where the bench's time goes)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0


def bench_ticket(
    method: str,
    structure: str,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    metrics: dict,
    test_x: torch.Tensor,
    bench,
    *,
    layers: bool,
    baseline: DenseBaseline | None = None,
    phases: dict[str, float] | None = None,
    dead_bn: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Rows for bench.csv (every runtime x engine x batch size; with bench.compile also each
    production engine compiled, against the dense net compiled alike) and bench_layers.csv
    (largest batch, production engines and csr).

    structure: the ticket's (structlth.config.STRUCTURES); model: the ticket's architecture with
    its trained weights; test_x: normalised test images
    [N, C, H, W], N >= max(batch sizes); bench: BenchParams; baseline: the stage's dense
    baseline (measured here when None). Every fast path, in every runtime, is verified against
    the masked model on test_x[:max batch] first (masked as it trained: dead_bn,
    engines.masked_reference). phases: seconds spent per phase are added to it.
    """
    in_ch = test_x.shape[1]
    model = model.cpu().eval()
    ref = masked_reference(model, masks, in_ch, dead_bn)
    baseline = baseline or dense_baseline(model, test_x, bench)
    dense = fold_bn(model)
    rows, layer_out = [], []
    machine = machine_name()  # reads /proc/cpuinfo and torch's build config: once per ticket, not per row
    dense_params = sum(p.numel() for p in model.parameters())
    check_x = test_x[: max(bench.batch_sizes)]
    flops = layer_effective_flops(model, masks, (1, *test_x.shape[1:]), dead_bn) if layers else {}
    for b in bench.batch_sizes:
        fmt = torch.channels_last if baseline.formats[b] else torch.contiguous_format
        dense = dense.to(memory_format=fmt)
        for runtime in runtimes(bench):
            run_fmt = runtime_format(runtime, fmt)
            x = test_x[:b].contiguous(memory_format=run_fmt)
            with _phase(phases, f"{runtime}: engine choice"):
                probe = Probe(x, run_fmt, bench.choice_repeats, runtime=runtime, threads=bench.threads)
                candidates = fast_models_and_formats(structure, model, masks, in_ch, probe, dead_bn)
            for engine, (fast, fast_fmt) in candidates.items():
                if runtime != "torch" and engine not in ORT_ENGINES:
                    continue
                fast, x_fast = fast.to(memory_format=fast_fmt), x.contiguous(memory_format=fast_fmt)
                with _phase(phases, f"{runtime}: export and verify"):
                    d, f = in_runtime(runtime, dense, x, bench.threads), in_runtime(runtime, fast, x_fast, bench.threads)
                    err = verify(ref, f, check_x.contiguous(memory_format=fast_fmt), bench.atol, f"{method} {engine} ({runtime})")
                with _phase(phases, f"{runtime}: timing"):
                    t, retimed = _timed(d, f, x, x_fast, bench, baseline.t_dense_ms[runtime][b])
                physical = sum(p.numel() for p in fast.parameters()) if engine == "slim" else metrics["params_kept"]
                timed = [(engine, t, retimed, err, None)]
                if bench.compile and runtime == "torch" and engine in PRODUCTION_ENGINES:
                    with _phase(phases, "torch: compile, verify and time"):
                        timed.append(_compiled(ref, dense, fast, x, x_fast, bench, engine + SUFFIX, method))
                for engine_name, t, retimed, err, compile_s in timed:
                    rows.append(
                        {
                            "method": method,
                            "runtime": runtime,
                            "engine": engine_name,
                            "batch": b,
                            "machine": machine,
                            "threads": torch.get_num_threads(),
                            "channels_last": baseline.formats[b] and runtime == "torch",  # the dense net's
                            "ticket_channels_last": fast_fmt == torch.channels_last,
                            "retimed": retimed,
                            "t_dense_ms": t.t_dense_ms,
                            "t_ticket_ms": t.t_ticket_ms,
                            "time_saving": t.saving,
                            "ci95": t.ci95,
                            "aa_noise": baseline.aa_noise[runtime][b],
                            "flops_saving": 1 - metrics["flops"] / metrics["flops_dense"],
                            "params_saving": 1 - physical / dense_params,
                            "max_abs_err": err,
                            "compile_s": compile_s,
                            "sparsity": metrics["sparsity"],
                            "test_acc": metrics["test_acc"],
                        }
                    )
                if layers and b == max(bench.batch_sizes) and engine in ("slim", "slim+blocks", "csr"):
                    with _phase(phases, f"{runtime}: per-layer rows"):
                        for r in layer_rows(dense, fast, x, bench, flops, runtime, x_fast):
                            layer_out.append({"method": method, "runtime": runtime, "batch": b, **r})
    return rows, layer_out


def aa_readings(bench: pd.DataFrame, batch: int, runtime: str = "torch") -> pd.Series:
    """The A/A readings at `batch` in `runtime`, one per bench stage (index 'method round'): the
    dense net timed against itself (aa_noise) or, for imp's, the |time saving| of its
    masked-dense engine (the same work as dense) where that is larger. The true value of each is 0."""
    b = bench[(bench["batch"] == batch) & (bench["runtime"] == runtime)]
    stage = b["method"] + " " + b["round"]
    dense = b["engine"] == "masked_dense"
    parts = [b.loc[dense, "time_saving"].abs().groupby(stage[dense]).max()]
    if "aa_noise" in b:
        parts.append(b["aa_noise"].groupby(stage).max())
    return pd.concat(parts).groupby(level=0).max().dropna()


def timing_noise(bench: pd.DataFrame, batch: int, runtime: str = "torch") -> float | None:
    """The run's own timing noise at `batch` in `runtime`: how far a paired saving reads from the
    truth, the larger of
    - the largest A/A reading of any bench stage (`aa_readings`);
    - the typical row's own 95% half-width (median ci95 over rows), from the spread between the
      consecutive blocks of pairs it was timed in.
    The absolute dense time is no part of it: a machine whose speed drifts between bench
    processes moves dense and ticket alike, and the paired saving cancels that.
    None where nothing can be measured."""
    b = bench[(bench["batch"] == batch) & (bench["runtime"] == runtime)]
    aa = aa_readings(bench, batch, runtime)
    parts = [float(aa.max())] if len(aa) else []
    if "ci95" in b and b["ci95"].notna().any():
        parts.append(float(b["ci95"].median()))
    return max(parts) if parts else None
