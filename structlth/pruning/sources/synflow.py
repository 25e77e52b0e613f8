"""SynFlow (Tanaka et al., NeurIPS 2020) as a ticket's mask source: data-free; the global top-k
of |w * dR/dw| where R = 1^T (prod_l |W_l|) 1 is the net's output on an all-ones input with every
weight replaced by its absolute value, pruned to the density over `iterations` rounds on an
exponential schedule, rescoring each round."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from structlth.masks import Masks
from structlth.pruning.sources.topk import keep_top


def synflow_scores(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| for the masked weights of `model` (left unchanged), R the sum of the output of
    the net with every parameter replaced by its absolute value (masked weights zero), in eval
    mode and float64, on an all-ones input of input_shape (1, C, H, W). The scores stay float64:
    R grows with depth (about 1e72 on a ResNet-50), past float32's range, where every score of
    the deeper layers would tie at inf and the mask would keep the earliest layers."""
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.abs_()
            if n in masks:
                p.mul_(masks[n].to(p.dtype))
    net.zero_grad(set_to_none=True)
    r = net(torch.ones(input_shape, dtype=torch.float64)).sum()
    r.backward()
    scores = {n: (params[n] * params[n].grad).detach().abs() for n in masks}
    if not all(torch.isfinite(s).all() for s in scores.values()):
        raise ValueError(f"SynFlow scores overflow float64 on this net (R = {float(r):.3g}): too deep to score in one product")
    return scores


def synflow_masks(model: nn.Module, names: Iterable[str], density: float, input_shape: tuple[int, ...], iterations: int) -> Masks:
    """SynFlow's mask of the named weights at `density`: `iterations` rounds, round i keeping
    density ** (i / iterations) of the weights by synflow_scores under the previous mask."""
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    for i in range(1, iterations + 1):
        masks = keep_top(synflow_scores(model, masks, input_shape), density ** (i / iterations), masks)
    return masks


def source_masks(spec, dense: Mapping[str, torch.Tensor], density: float, inputs) -> Masks:
    """The registry's entry point: SynFlow of the initialisation over spec.source_iterations
    rounds, for the prunable weights named by `dense`'s keys."""
    return synflow_masks(inputs.model(), list(dense), density, inputs.input_shape, spec.source_iterations)
