"""The speedup engines at the paper's scale: VGG-16 and ResNet-18 on 32x32 inputs, 2 threads.

The same code path as the bench stage (`bench_ticket`: build the production engine, verify it
against the masked model, time it against the dense net, BN folded in both) on wide networks
with masks made by the library from a freshly initialised model whose BN statistics are
randomised (so outputs depend on the input and verification can fail): global magnitude masks
(IMP-like) post-processed into refill (channel-wise) and regroup (group-wise, whole input
channels: overlapping blocks by the budget and density column rules, and disjoint blocks)
tickets. Weights are untrained: speed, not accuracy.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from benchmarks.common import randomise_bn, ticket_of
from structlth.config import BenchParams
from structlth.masks import ones_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune, regroup_layers
from structlth.pruning.kinds.refill import refill_masks, weight_scores
from structlth.report.claims import targets
from structlth.speedup.measure import bench_ticket, dense_baseline, timing_noise

BATCHES = [1, 64]
CASES = [("vgg16", 0.2), ("vgg16", 0.4), ("resnet18", 0.2), ("resnet18", 0.4)]  # (arch, density)
SMOKE = {
    "cases": [("resnet20", 0.4)],
    "width": 0.5,
    "methods": ("refill", "regroup_disjoint"),
    "batches": [4],
    "repeats": 2,
    "blocks": 2,
}
REGROUP = {"rows_per_part": 32, "min_rows": 8, "granularity": "channel"}


METHODS = ("refill", "regroup_budget", "regroup_density", "regroup_disjoint")


def tickets(model: nn.Module, density: float, methods: tuple[str, ...] = METHODS) -> dict[str, tuple[str, dict]]:
    """{method: (structure, masks)} for each of `methods`, made from the global magnitude masks
    of model at `density` (imp's engines, masked dense and CSR, are left out: CSR runs 10-30x
    slower than dense here)."""
    weights = dict(model.named_parameters())
    imp = magnitude_prune(weights, ones_masks(model), 1 - density)
    make = {
        "refill": lambda: ("channel", refill_masks(imp, weight_scores("magnitude", weights, imp), 0.0)),
        "regroup_budget": lambda: ("group", regroup_layers(imp, column_rule="budget", **REGROUP)),
        "regroup_density": lambda: ("group", regroup_layers(imp, column_rule="density", t2=0.5, b2=2, **REGROUP)),
        "regroup_disjoint": lambda: ("group", regroup_layers(imp, inputs="disjoint", **REGROUP)),
    }
    return {m: make[m]() for m in methods}


def run(smoke: bool = False) -> dict:
    cases, batches, repeats, blocks = (SMOKE[k] for k in ("cases", "batches", "repeats", "blocks")) if smoke else (CASES, BATCHES, 4, 3)
    width = SMOKE["width"] if smoke else 1.0
    bench = BenchParams(batch_sizes=batches, repeats=repeats, blocks=blocks, warmup=2, threads=2)  # 12 pairs a row
    bench = bench.model_copy(update={"choice_repeats": 1}) if smoke else bench  # a smoke run's choices: one pair each
    x = torch.randn(max(batches), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows, layers = [], []
    for arch, density in cases:
        torch.manual_seed(0)
        model = build_model(arch, 10, 3, width).eval()
        randomise_bn(model)
        baseline = dense_baseline(model, x, bench)
        for method, (structure, masks) in tickets(model, density, SMOKE["methods"] if smoke else METHODS).items():
            m, metrics = ticket_of(model, masks, (1, 3, 32, 32))
            out, lay = bench_ticket(method, structure, m, masks, metrics, x, bench, layers=True, baseline=baseline)
            case = {"arch": arch, "source_density": density}
            rows += [
                {
                    **case,
                    **{
                        k: r[k]
                        for k in (
                            "method",
                            "engine",
                            "runtime",
                            "batch",
                            "channels_last",
                            "ticket_channels_last",
                            "retimed",
                            "t_dense_ms",
                            "t_ticket_ms",
                            "time_saving",
                            "ci95",
                            "aa_noise",
                            "flops_saving",
                            "sparsity",
                            "max_abs_err",
                        )
                    },
                }
                for r in out
            ]
            layers += [{**case, **r} for r in lay]
            print(
                arch,
                density,
                method,
                [f"{r['runtime']} b{r['batch']}: {r['time_saving']:.1%} of {r['flops_saving']:.1%}" for r in out],
                flush=True,
            )
    return {"rows": rows, "layers": layers, "summary": summary(rows, batches)}


def summary(rows: list[dict], batches: list[int] = BATCHES) -> dict:
    """The report's speedup measurements (structlth.report.claims.targets) over these rows, per batch
    (the largest unsuffixed); the timing noise per architecture (each has its own dense net),
    the largest reported."""
    frame = pd.DataFrame(rows).assign(round=lambda d: d["arch"] + "@" + d["source_density"].astype(str))
    out = {}
    for b in batches:
        suffix = "" if b == max(batches) else f"@b{b}"
        goals = targets(frame, b)
        for prefix, runtime in (("", "torch"), ("ort_", "onnxruntime")):
            keys = ("channel_time_per_flop_saving", "best_group_time_saving", "group_time_per_flop_saving")
            out.update({f"{prefix}{k}{suffix}": goals[prefix + k] for k in keys})
            noise = [timing_noise(g, b, runtime) for _, g in frame.groupby("arch")]
            if None in noise:
                raise ValueError(f"{runtime} batch {b}: rows without an A/A or interval, so no timing noise")
            out[f"{prefix}timing_noise{suffix}"] = max(noise)
            worst = frame[(frame["batch"] == b) & (frame["runtime"] == runtime)]["time_saving"]
            out[f"{prefix}worst_time_saving{suffix}"] = float(worst.min())  # the slowest structured ticket against dense
    return out
