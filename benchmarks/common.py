"""Helpers the speed benchmarks share: untrained models whose timing and verification mean
something, and tickets of them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from structlth.config import Params, load_params
from structlth.data import Dataset, load_dataset, normalize
from structlth.masks import mask_stats
from structlth.rounds import Context, load_ticket
from structlth.speedup.choice import fastest_format
from structlth.speedup.layout import fold_bn
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


@dataclass(frozen=True)
class Workspace:
    """The workspace's run as a benchmark of its tickets reads it (params.yaml, artifacts/)."""

    params: Params
    ds: Dataset
    ctx: Context  # on the CPU
    x: torch.Tensor  # normalised test images [largest bench batch, C, H, W]
    dense: nn.Module  # the trained dense net (imp round 0), BN folded, eval mode
    fmt: torch.memory_format  # the one the dense net runs x faster in


def workspace() -> Workspace:
    """The workspace's run, with bench.threads set (run `make repro` or `dvc pull` first)."""
    params = load_params("params.yaml")
    torch.set_num_threads(params.bench.threads)
    ds = load_dataset(Path("artifacts/data"))
    ctx = Context(params, ds, torch.device("cpu"))
    x = normalize(ds.test.head(max(params.bench.batch_sizes)), ds.mean, ds.std)
    dense = fold_bn(load_ticket(ctx, Path("artifacts/imp/round0"))[0].eval())
    return Workspace(params, ds, ctx, x, dense, fastest_format(dense, x, 9, 2))
