"""How many blocks per layer the default's regroup ticket gets: time saving against rows_per_part.

The default model (VGG-16 at width 0.25, 1x28x28, batch 64, 2 threads; BN randomised so
outputs depend on the input) with one-shot global magnitude masks at IMP round 4's density
(0.8^4), regrouped at channel granularity by the budget rule with rows_per_part 16..128 and
input_align 1 / 8, then the bench stage's verified timing. A refill ticket of the same mask
is the reference. Speed only (untrained weights).
"""

from __future__ import annotations

import torch

from benchmarks.common import randomise_bn, ticket_of
from structlth.config import BenchParams
from structlth.masks import drop_untrainable, ones_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune, regroup_layers
from structlth.pruning.kinds.refill import refill_masks, weight_scores
from structlth.speedup.measure import bench_ticket, dense_baseline


def run(smoke: bool = False) -> dict:
    arch, width, density = ("resnet20", 0.25, 0.8**4) if smoke else ("vgg16", 0.25, 0.8**4)
    batch, repeats, parts, aligns = (4, 2, (16,), (1,)) if smoke else (64, 25, (16, 32, 64, 128), (1, 8))
    torch.manual_seed(0)
    model = build_model(arch, 10, 1, width).eval()
    randomise_bn(model)
    w = dict(model.named_parameters())
    imp = magnitude_prune(w, ones_masks(model), 1 - density)
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bench = BenchParams(batch_sizes=[batch], repeats=repeats, blocks=1, warmup=3)
    bench = bench.model_copy(update={"choice_repeats": 1, "onnxruntime": False}) if smoke else bench  # smoke: the PyTorch row it reads
    baseline = dense_baseline(model, x, bench)
    variants = {("refill", 0, 8): ("channel", refill_masks(imp, weight_scores("magnitude", w, imp), 0.0, "ceil", 8))}
    for rpp in parts:
        for align in aligns:
            variants["regroup", rpp, align] = (
                "group",
                regroup_layers(imp, rows_per_part=rpp, min_rows=8, column_rule="budget", granularity="channel", input_align=align),
            )
    rows = []
    for (name, rpp, align), (structure, masks) in variants.items():
        masks = drop_untrainable(model, masks, 1)
        m, metrics = ticket_of(model, masks, (1, 1, 28, 28))
        r = bench_ticket(name, structure, m, masks, metrics, x, bench, layers=False, baseline=baseline)[0][0]
        rows.append(
            {
                "ticket": name,
                "rows_per_part": rpp,
                "input_align": align,
                "sparsity": metrics["sparsity"],
                "time_saving": r["time_saving"],
                "flops_saving": r["flops_saving"],
                "t_dense_ms": r["t_dense_ms"],
                "retimed": r["retimed"],
            }
        )
        print(rows[-1], flush=True)
    best = max((r for r in rows if r["ticket"] == "regroup"), key=lambda r: r["time_saving"])
    return {
        "arch": arch,
        "width": width,
        "density": density,
        "batch": batch,
        "rows": rows,
        "summary": {
            "best_rows_per_part": best["rows_per_part"],
            "best_input_align": best["input_align"],
            "best_regroup_time_saving": best["time_saving"],
        },
    }
