"""One-shot global magnitude pruning (OMP) of the trained dense net, as a ticket's mask source."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from structlth.masks import Masks
from structlth.pruning.magnitude import magnitude_prune


def omp_masks(weights: Mapping[str, torch.Tensor], density: float) -> Masks:
    """One-shot global magnitude pruning of `weights` (name -> tensor) to `density`."""
    ones = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return magnitude_prune(weights, ones, 1 - density) if density < 1 else ones


def source_masks(spec, dense: Mapping[str, torch.Tensor], density: float, inputs) -> Masks:
    """The registry's entry point: OMP of the trained dense prunable weights `dense`."""
    return omp_masks(dense, density)
