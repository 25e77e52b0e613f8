"""SNIP (Lee et al., ICLR 2019) as a ticket's mask source: at initialisation, the global top-k
of the connection sensitivity |w * dL/dw| summed over a few training batches."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from structlth.masks import Masks
from structlth.pruning.sources.topk import keep_top


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


def source_masks(spec, dense: Mapping[str, torch.Tensor], density: float, inputs) -> Masks:
    """The registry's entry point: SNIP of the initialisation on spec.source_batches batches, for
    the prunable weights named by `dense`'s keys."""
    model = inputs.model().to(inputs.device)
    return keep_top(snip_scores(model, list(dense), inputs.batches(spec.source_batches)), density)
