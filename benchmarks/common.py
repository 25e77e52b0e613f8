"""Helpers the speed benchmarks share: untrained models whose timing and verification mean
something, and tickets of them."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from structlth.masks import mask_stats
from structlth.train import state_of


def randomise_bn(model: nn.Module) -> None:
    """Seeded random BN statistics and affine parameters, so outputs depend on the input (a fresh
    VGG-16's are constant) and verification against the masked model can fail."""
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 2 - 1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) - 0.5)


def ticket_of(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...]) -> tuple[nn.Module, dict]:
    """A copy of `model` with `masks` applied to its weights, and the metrics bench_ticket reads
    (sparsity and FLOPs of the masks for one input [1, C, H, W]; no accuracy: NaN)."""
    ticket = copy.deepcopy(model)
    ticket.load_state_dict({k: (v * masks[k] if k in masks else v) for k, v in state_of(model).items()})
    return ticket, {**mask_stats(ticket, masks, input_shape), "test_acc": float("nan")}
