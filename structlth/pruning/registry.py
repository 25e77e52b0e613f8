"""The methods params.yaml can name, each in its own module, loaded by name.

A ticket's `kind` (refill, regroup, torch_pruning), its mask `source` (omp, random, snip,
synflow; imp is the IMP round's own mask) and a baseline's `importance` each name a module
here. Stages load only the modules their own method names, so a stage's code closure
(structlth.codedeps) holds its method and no other: an edit to one method reruns only the
stages that run it.

Every method module has one entry point, called with the method's params section and `Inputs`:

- a ticket kind: `ticket_masks(spec, weights, masks, inputs) -> Masks`, the structured masks of
  one round's masks (weights: that round's trained state);
- a mask source: `source_masks(spec, dense, density, inputs) -> Masks`, an unstructured mask of
  the prunable weights at `density` (dense: the trained dense state);
- a baseline: `baseline_masks(spec, dense_model, prunable, target, flops_of, inputs) -> (Masks,
  ratio)`, channel masks of the trained dense model at no more than `target` FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

import torch
from torch import nn

KINDS = {
    "refill": "structlth.pruning.kinds.refill",
    "regroup": "structlth.pruning.kinds.regroup",
    "torch_pruning": "structlth.pruning.kinds.torch_pruning",
}
SOURCES = {  # "imp": the IMP round's own mask, no module
    "omp": "structlth.pruning.sources.omp",
    "random": "structlth.pruning.sources.random",
    "snip": "structlth.pruning.sources.snip",
    "synflow": "structlth.pruning.sources.synflow",
}
IMPORTANCES = {  # a torch_pruning baseline's channel ranking: Torch-Pruning's importances
    "l1": "structlth.pruning.kinds.torch_pruning",
    "filter_l1": "structlth.pruning.kinds.torch_pruning",
    "bn_scale": "structlth.pruning.kinds.torch_pruning",
    "taylor": "structlth.pruning.kinds.torch_pruning",
}


@dataclass(frozen=True)
class Inputs:
    """What a method may read besides masks and weights, built on demand by its stage.

    model(): a fresh model of params.model, initialised by train.seed (CPU, train mode);
    batches(n): n batches of a seeded random sample of the training split (x [B, C, H, W]
    normalised, y [B], unaugmented; structlth.data.scoring_batches);
    input_shape: (1, C, H, W) of one image; seed: train.seed."""

    model: Callable[[], nn.Module]
    batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    device: torch.device
    input_shape: tuple[int, ...]
    in_channels: int
    seed: int


def modules(spec) -> list[str]:
    """The modules a tickets or baselines entry runs, in order: its kind's, then its mask
    source's or its importance's (each once)."""
    names = [KINDS[spec.kind]]
    if getattr(spec, "source", "imp") != "imp":
        names.append(SOURCES[spec.source])
    if hasattr(spec, "importance"):
        names.append(IMPORTANCES[spec.importance])
    return list(dict.fromkeys(names))


def kind(spec) -> ModuleType:
    """The module of spec.kind (its `ticket_masks` or `baseline_masks`)."""
    return import_module(KINDS[spec.kind])


def source(spec) -> ModuleType:
    """The module of spec.source (its `source_masks`); spec.source must not be imp."""
    return import_module(SOURCES[spec.source])
