"""The speedup engines on a CUDA GPU: speedup_scale's models and tickets, bf16, channels_last.

Per case the engines are chosen by timings on the GPU (structlth.speedup.choice.fast_models on a
bf16 channels_last batch), each fast model is verified in fp32 (TF32 off) on the GPU against the
masked model, then dense (BN folded) and ticket are timed in bf16, interleaved, beside an A/A pair
of the dense net for the run's noise. Kernel launches are not hidden (no CUDA graphs): at 32x32 a
small batch measures launch overhead, so the larger batch is the one to read.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.common import randomise_bn, ticket_of
from benchmarks.speedup_scale import CASES, METHODS, SMOKE, tickets
from structlth.config import BenchParams
from structlth.masks import layer_effective_flops
from structlth.models import build_model
from structlth.speedup.choice import Probe, fast_models
from structlth.speedup.engines import masked_reference
from structlth.speedup.layout import fold_bn
from structlth.speedup.measure import layer_rows
from structlth.speedup.timing import time_pair, verify

BATCHES = [64, 512]
REPEATS, WARMUP, ATOL = 30, 5, 1e-3


def _on(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return copy.deepcopy(model).to(device, dtype).to(memory_format=torch.channels_last).eval()


def run(
    smoke: bool = False, device: str = "cuda", cases: list[tuple[str, float]] = CASES, batches: list[int] = BATCHES, image: int = 32
) -> dict:
    """Rows per (case, ticket, batch) and per-layer rows at the largest batch; image: input side.
    smoke: a small ResNet on the CPU in fp32, two of its tickets, a few pairs (does the path run?)."""
    if smoke:
        device, cases, batches, image = "cpu", [("resnet20", 0.4)], [2], 16
    repeats, warmup = (2, 1) if smoke else (REPEATS, WARMUP)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("speedup_gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows, layers = [], []
    per_layer = BenchParams(repeats=repeats, warmup=warmup, threads=torch.get_num_threads())
    for arch, density in cases:
        torch.manual_seed(0)
        model = build_model(arch, 10, 3, 1.0).eval()
        randomise_bn(model)
        dense = _on(fold_bn(model), dev, dtype)
        for method, (structure, masks) in tickets(model, density, SMOKE["methods"] if smoke else METHODS).items():
            ticket, metrics = ticket_of(model, masks, (1, 3, image, image))
            ref = _on(masked_reference(ticket, masks, 3), dev, torch.float32)  # verification runs in fp32
            for b in batches:
                x = (
                    torch.randn(b, 3, image, image, generator=torch.Generator().manual_seed(b))
                    .to(dev)
                    .contiguous(memory_format=torch.channels_last)
                )
                xt = x.to(dtype)
                for engine, fast in fast_models(structure, ticket, masks, 3, Probe(xt, torch.channels_last, 9, 2)).items():
                    torch.backends.cudnn.allow_tf32 = False
                    try:
                        err = verify(ref, _on(fast, dev, torch.float32), x, ATOL, f"{arch} {method} {engine}")
                    finally:
                        torch.backends.cudnn.allow_tf32 = True
                    f = _on(fast, dev, dtype)
                    t = time_pair(dense, f, xt, repeats, warmup)
                    aa = time_pair(dense, dense, xt, repeats, warmup, seed=1)
                    rows.append(
                        {
                            "arch": arch,
                            "image": image,
                            "source_density": density,
                            "method": method,
                            "engine": engine,
                            "batch": b,
                            "dtype": str(dtype).removeprefix("torch."),
                            "t_dense_ms": t.t_dense_ms,
                            "t_ticket_ms": t.t_ticket_ms,
                            "time_saving": t.saving,
                            "aa_noise": abs(aa.saving),
                            "flops_saving": 1 - metrics["flops"] / metrics["flops_dense"],
                            "max_abs_err_fp32": err,
                        }
                    )
                    print(
                        arch,
                        image,
                        density,
                        method,
                        engine,
                        b,
                        f"{t.saving:+.1%} of {rows[-1]['flops_saving']:.1%} (A/A {aa.saving:+.1%})",
                        flush=True,
                    )
                    if b == max(batches):
                        flops = layer_effective_flops(ticket, masks, (1, 3, image, image))
                        layers += [
                            {"arch": arch, "image": image, "source_density": density, "method": method, "batch": b, **r}
                            for r in layer_rows(dense, f, xt, per_layer, flops)
                        ]
    best = max((r for r in rows if r["method"].startswith("regroup") and r["batch"] == max(batches)), key=lambda r: r["time_saving"])
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": rows,
        "layers": layers,
        "summary": {
            "best_group_time_saving": best["time_saving"],
            "best_group": f"{best['arch']}@{best['source_density']} {best['method']}",
            "batch": max(batches),
            "noise": max(r["aa_noise"] for r in rows),
        },
    }
