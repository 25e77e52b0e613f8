"""Time of regroup (Mt-KaHyPar partition + block choice) per layer: default model, ResNet-18."""

from __future__ import annotations

import time

import torch

from structlth.masks import ones_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune, parts_for, regroup


def _time_model(arch: str, width: float, density: float) -> dict:
    torch.manual_seed(0)
    m = build_model(arch, 10, 1, width)
    masks = ones_masks(m)
    w = dict(m.named_parameters())
    while sum(int(v.sum()) for v in masks.values()) / sum(v.numel() for v in masks.values()) > density + 1e-3:
        masks = magnitude_prune(w, masks, 0.2)
    per_layer = {}
    t_all = time.perf_counter()
    for n, v in masks.items():
        t0 = time.perf_counter()
        regroup(v, parts=parts_for(int(v.flatten(1).any(1).sum()), 32), min_rows=8, t2=0.3, b2=4)
        per_layer[n] = time.perf_counter() - t0
    return {"arch": arch, "width": width, "density": density, "total_s": time.perf_counter() - t_all, "slowest_layer_s": max(per_layer.values()), "per_layer_s": per_layer}


def run() -> dict:
    results = [_time_model("resnet20", 0.5, 0.8 ** 3), _time_model("resnet18", 1.0, 0.5), _time_model("resnet18", 1.0, 0.2)]
    r20 = results[0]["total_s"]
    return {"results": results, "summary": f"resnet20 (default) all layers {r20:.2f}s (target <= 2s); resnet18 50%: {results[1]['total_s']:.1f}s, 80%: {results[2]['total_s']:.1f}s"}
