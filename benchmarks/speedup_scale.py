"""The speedup engines at the paper's scale: VGG-16 and ResNet-18 on 32x32 inputs, 2 threads.

The embedded default (ResNet-20 at half width on 28x28 Fashion-MNIST: 8/16/32 channels) is too
narrow for CPU kernels to turn FLOP savings into time. Here the same code path as the bench stage
(`bench_ticket`: build, verify against the masked model, time alternately) runs on wider
networks with masks made by the library from a freshly initialised model: global magnitude
masks (IMP-like) post-processed into refill (channel-wise) and budget regroup (channel
granularity) tickets.
Weights are untrained, so this measures speed, not accuracy.
"""

from __future__ import annotations

import pandas as pd
import torch

from structlth.config import BenchParams
from structlth.masks import mask_stats, ones_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune, regroup_layers
from structlth.pruning.refill import refill_masks, weight_scores
from structlth.report import targets
from structlth.speedup.bench import bench_ticket
from structlth.train import state_of

BATCH = 64
CASES = [("vgg16", 0.2), ("vgg16", 0.4), ("resnet18", 0.2), ("resnet18", 0.4)]  # (arch, density)


def _tickets(model: torch.nn.Module, density: float) -> dict[str, tuple[str, dict]]:
    weights = dict(model.named_parameters())
    imp = magnitude_prune(weights, ones_masks(model), 1 - density)
    return {  # imp's engines (masked dense, CSR) are left out: CSR runs 20-30x slower than dense here
        "refill": ("refill", refill_masks(imp, weight_scores("magnitude", weights, imp), 0.0)),
        "regroup_channel": ("regroup", regroup_layers(imp, rows_per_part=32, min_rows=8, column_rule="budget", granularity="channel")),
    }


def run() -> dict:
    bench = BenchParams(batch_sizes=[BATCH], repeats=7, warmup=2, threads=2)
    x = torch.randn(BATCH, 3, 32, 32)
    rows = []
    for arch, density in CASES:
        torch.manual_seed(0)
        model = build_model(arch, 10, 3, 1.0).eval()
        for method, (kind, masks) in _tickets(model, density).items():
            m = build_model(arch, 10, 3, 1.0)
            m.load_state_dict({k: (v * masks[k] if k in masks else v) for k, v in state_of(model).items()})
            metrics = {**mask_stats(m, masks, (1, 3, 32, 32)), "test_acc": float("nan")}
            out, _ = bench_ticket(method, kind, m, masks, metrics, x, bench, layers=False)
            rows += [{"arch": arch, "source_density": density, **{k: r[k] for k in ("method", "engine", "t_dense_ms", "t_ticket_ms", "time_saving", "flops_saving", "sparsity", "max_abs_err")}} for r in out]
    return {"batch": BATCH, "threads": 2, "rows": rows, "summary": summary(rows)}


def summary(rows: list[dict]) -> dict:
    """The report's speedup targets (structlth.report.targets) over these rows."""
    frame = pd.DataFrame(rows).assign(batch=BATCH, round=lambda d: d["arch"] + "@" + d["source_density"].astype(str))
    goals = targets(frame, BATCH)
    return {k: goals[k] for k in ("channel_time_per_flop_saving", "best_group_time_saving")}
