"""Where a ticket's unstructured mask comes from before refill or regroup (the paper's Fig. 6,
left): an IMP round, or one of the one-shot pruners here, each at the density of that round.

- omp: one-shot global magnitude pruning of the trained dense net;
- random: every layer keeps the same share of its weights, drawn uniformly (seeded);
- snip (Lee et al., ICLR 2019): at initialisation, the global top-k of the connection
  sensitivity |w * dL/dw| on a few training batches;
- synflow (Tanaka et al., NeurIPS 2020): data-free; the global top-k of |w * dR/dw| where
  R = 1^T (prod_l |W_l|) 1 is the net's output on an all-ones input with every weight replaced by
  its absolute value, pruned to the density over `iterations` rounds on an exponential schedule,
  rescoring each round.

No maintained package provides SNIP or SynFlow masks for an arbitrary nn.Module (Torch-Pruning
scores channel groups, not single weights), so both are written here to their papers'
definitions; tests check them on nets small enough to score by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from structlth.masks import Masks, split_flat
from structlth.pruning.magnitude import magnitude_prune


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


def omp_masks(weights: Mapping[str, torch.Tensor], density: float) -> Masks:
    """One-shot global magnitude pruning of `weights` (name -> tensor) to `density`."""
    ones = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return magnitude_prune(weights, ones, 1 - density) if density < 1 else ones


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


def snip_scores(model: nn.Module, names: Iterable[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """|w * dL/dw| summed over `batches` (cross-entropy of model(x) against y) for the named
    weights of `model`, which is left unchanged. batches: (x [B, C, H, W], y [B])."""
    net = copy.deepcopy(model).train()
    params = dict(net.named_parameters())
    names = list(names)
    scores = {n: torch.zeros_like(params[n]) for n in names}
    for x, y in batches:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        for n in names:
            scores[n] += (params[n] * params[n].grad).detach().abs()
    return {n: s.cpu() for n, s in scores.items()}


def synflow_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| for the masked weights of `model` (left unchanged), R the sum of the output of
    the net with every parameter replaced by its absolute value (masked weights zero), in eval
    mode and float64, on an all-ones input of input_shape (1, C, H, W)."""
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.abs_()
            if n in masks:
                p.mul_(masks[n].to(p.dtype))
    net.zero_grad(set_to_none=True)
    net(torch.ones(input_shape, dtype=torch.float64)).sum().backward()
    return {n: (params[n] * params[n].grad).detach().abs().float() for n in masks}


def synflow_masks(model: nn.Module, names: Iterable[str], density: float, input_shape: tuple[int, ...], iterations: int) -> Masks:
    """SynFlow's mask of the named weights at `density`: `iterations` rounds, round i keeping
    density ** (i / iterations) of the weights by synflow_scores under the previous mask."""
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    for i in range(1, iterations + 1):
        masks = keep_top(synflow_scores(model, masks, input_shape), density ** (i / iterations), masks)
    return masks
