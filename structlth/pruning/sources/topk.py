"""The global top-k of per-weight scores: the mask a scoring pruner (SNIP, SynFlow) keeps."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from structlth.masks import Masks, split_flat


def keep_top(scores: Mapping[str, torch.Tensor], density: float, alive: Mapping[str, torch.Tensor] | None = None) -> Masks:
    """Bool masks keeping the round(density * total) highest scores across all layers (only
    among `alive` entries when given; ties break by layer order, then flat index).

    scores: name -> tensor (any shape); alive: name -> bool tensor of the same shapes."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])
    if alive is not None:
        flat[~torch.cat([alive[n].flatten().bool().cpu() for n in names])] = -1.0
    k = round(density * flat.numel())
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return split_flat(keep, scores)
