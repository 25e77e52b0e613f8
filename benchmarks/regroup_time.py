"""Time of regroup (Mt-KaHyPar partition + block choice) per layer: default model, ResNet-18.

Uses the regroup tickets of params.yaml (every `kind: regroup` entry) and, with the same settings,
every other regroup kind (granularity x hypergraph: column x column is the paper's) on masks from
one global magnitude pruning step of a freshly initialised model to the given density.
"""

from __future__ import annotations

import time

import torch

from structlth.config import RegroupParams, load_params
from structlth.masks import ones_masks
from structlth.models import build_model
from structlth.pruning.kinds.regroup import options, regroup_layers
from structlth.pruning.magnitude import magnitude_prune


def _time_model(arch: str, width: float, density: float, name: str, spec: RegroupParams) -> dict:
    torch.manual_seed(0)
    m = build_model(arch, 10, 1, width)
    masks = magnitude_prune(dict(m.named_parameters()), ones_masks(m), 1 - density)
    per_layer = {}
    t_all = time.perf_counter()
    for n, v in masks.items():
        t0 = time.perf_counter()
        regroup_layers({n: v}, **options(spec))
        per_layer[n] = time.perf_counter() - t0
    return {
        "ticket": name,
        "arch": arch,
        "width": width,
        "density": density,
        "total_s": time.perf_counter() - t_all,
        "slowest_layer_s": max(per_layer.values()),
        "per_layer_s": per_layer,
    }


KINDS = [("column", "column"), ("channel", "column"), ("channel", "channel")]  # (granularity, hypergraph)
TARGET_S = 15.0  # a ResNet-18 round, every kind, 2 cores


def specs(p) -> dict[str, RegroupParams]:
    """params.yaml's regroup tickets, and each of them at every other kind it allows."""
    out = {}
    for name, t in p.tickets.items():
        if isinstance(t, RegroupParams):
            out[name] = t
            for g, h in KINDS:
                if (t.granularity, t.hypergraph) != (g, h) and (
                    t.inputs == "overlap" or g == "channel"
                ):  # disjoint blocks own whole channels
                    out[f"{name}[{g}x{h}]"] = t.model_copy(update={"granularity": g, "hypergraph": h})
    return out


def run(smoke: bool = False) -> dict:
    p = load_params("params.yaml")
    cases = [(p.model.arch, p.model.width, 0.8**3)] + ([] if smoke else [("resnet18", 1.0, 0.5), ("resnet18", 1.0, 0.2)])
    results = [_time_model(arch, width, density, name, spec) for name, spec in specs(p).items() for arch, width, density in cases]
    return {"results": results, **summarise(results, p.model.arch, set(p.tickets))}


def summarise(results: list[dict], default_arch: str, tickets: set[str]) -> dict:
    """The default model's slowest round over params.yaml's own tickets (target 2 s) and a
    ResNet-18 round's time per ticket and kind, the slowest against TARGET_S."""
    default = max(r["total_s"] for r in results if r["arch"] == default_arch and r["ticket"] in tickets)
    r18 = {f"{r['ticket']}@{r['density']}": round(r["total_s"], 2) for r in results if r["arch"] == "resnet18"}
    worst = max(r18.values(), default=float("nan"))
    return {
        "resnet18_round_s": r18,
        "resnet18_worst_round_s": worst,
        "summary": (
            f"default model, params.yaml's tickets: all layers <= {default:.3f}s (target <= 2s);"
            f" resnet18 round, every kind <= {worst:.2f}s (target <= {TARGET_S:.0f}s)"
        ),
    }
