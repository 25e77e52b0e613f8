"""Random pruning (the paper's RP): every layer keeps the same share of its weights, drawn
uniformly by a seeded generator, as a ticket's mask source."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from structlth.masks import Masks


def random_masks(shapes: Mapping[str, torch.Size], density: float, seed: int) -> Masks:
    """Each layer keeps round(density * size) weights drawn uniformly by a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, shape in shapes.items():
        size = int(torch.Size(shape).numel())
        keep = torch.zeros(size, dtype=torch.bool)
        keep[torch.randperm(size, generator=g)[: round(density * size)]] = True
        out[n] = keep.view(shape)
    return out


def source_masks(spec, dense: Mapping[str, torch.Tensor], density: float, inputs) -> Masks:
    """The registry's entry point: random masks of the prunable weights' shapes, seeded by train.seed."""
    return random_masks({n: w.shape for n, w in dense.items()}, density, inputs.seed)
