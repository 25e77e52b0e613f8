"""Magnitude pruning: global unstructured (IMP) and per-layer channel L1 (imp_channel)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from structlth.masks import Masks, row_alive, split_flat


def magnitude_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float) -> Masks:
    """Remove the `rate` share of surviving weights with the smallest |w|, across all layers.

    weights/masks: name -> tensor of equal shapes. Exactly round(rate * alive) more weights
    are zeroed; ties in |w| break by layer order, then flat index, so the result is
    deterministic. Returns new bool masks.
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    names = list(masks)
    alive = torch.cat([masks[n].flatten().bool() for n in names])
    scores = torch.cat([weights[n].detach().flatten().abs().float().cpu() for n in names])
    scores[~alive] = -1.0  # already pruned: sorted first, stay pruned
    n_dead, n_alive = int((~alive).sum()), int(alive.sum())
    n_prune = round(rate * n_alive)
    order = torch.sort(scores, stable=True).indices
    keep = torch.ones_like(alive)
    keep[order[: n_dead + n_prune]] = False
    return split_flat(keep, masks)


def channel_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], rate: float) -> Masks:
    """Per layer, zero whole output channels: the `rate` share of alive ones with least L1.

    L1 is over the channel's masked weights; at least one channel per layer stays alive;
    ties break by channel index. Returns new bool masks (rows all-ones or all-zeros).
    """
    out = {}
    for n, m in masks.items():
        m = m.bool()
        w = (weights[n].detach().float().cpu() * m).flatten(1)
        alive = row_alive(m)
        n_alive = int(alive.sum())
        n_prune = min(round(rate * n_alive), n_alive - 1)
        score = w.abs().sum(1)
        score[~alive] = -1.0
        order = torch.sort(score, stable=True).indices
        rows = alive.clone()
        rows[order[: int((~alive).sum()) + n_prune]] = False
        out[n] = rows.view(-1, *([1] * (m.ndim - 1))).expand_as(m).clone()
    return out
