"""Prunable-layer selection, mask algebra and sparsity / FLOP statistics.

A mask set is a dict {param name: bool tensor of that param's shape} over the prunable
weights: every Conv2d weight except the stem (first conv), 1x1 shortcut convs included; the
classifier only when opted in. Sparsity figures are over prunable weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structlth.config import Prunable
from structlth.errors import ArtifactError
from structlth.liveness import bn_masks, liveness

Masks = dict[str, torch.Tensor]


def prunable_names(model: nn.Module, prunable: Prunable = Prunable()) -> list[str]:
    """Param names of prunable weights, in module order."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    names = convs if prunable.stem else convs[1:]
    if prunable.classifier:
        names += [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return [f"{n}.weight" for n in names]


def ones_masks(model: nn.Module, prunable: Prunable = Prunable()) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in prunable_names(model, prunable)}


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ArtifactError unless `masks` names weights of `model` with matching shapes."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params:
            raise ArtifactError(f"{source}: mask for {name!r}, which this model does not have (another architecture?)")
        if tuple(m.shape) != tuple(params[name].shape):
            raise ArtifactError(
                f"{source}: mask {name} has shape {tuple(m.shape)}, the model's weight is"
                f" {tuple(params[name].shape)} (another architecture or width?)"
            )


def drop_untrainable(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> Masks:
    """`masks` without the conv weights that can never train: those reading a dead input
    channel or feeding a dead output channel (structlth.liveness). Their gradient is exactly zero,
    so they would keep their rewind values and count as kept weights and FLOPs."""
    live = liveness(model, masks, in_channels)
    modules = dict(model.named_modules())
    out = {}
    for name, m in masks.items():
        layer = name.removesuffix(".weight")
        if isinstance(modules[layer], nn.Conv2d) and modules[layer].groups == 1:
            m = m.bool() & live.module_in[layer][None, :, None, None] & live.module_out[layer][:, None, None, None]
        out[name] = m.bool()
    return out


def training_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, dead_bn: bool = True) -> Masks:
    """Weight masks plus, with dead_bn, the BN masks of dead channels (see structlth.liveness);
    without, a channel with no weight still emits its BN bias (structlth.config.RefillParams.readers)."""
    return {**masks, **(bn_masks(model, masks, in_channels) if dead_bn else {})}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked parameter entry in place."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].mul_(m.to(params[name].device, params[name].dtype))


def split_flat(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Masks:
    """flat [sum of numels], the tensors of `like` concatenated flat in its order, back as
    name -> tensor of like[name]'s shape (copies)."""
    out, start = {}, 0
    for n, t in like.items():
        out[n] = flat[start : start + t.numel()].view(t.shape).clone()
        start += t.numel()
    return out


def density(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.count_nonzero()) for m in masks.values()) / max(total, 1)


def row_alive(mask: torch.Tensor) -> torch.Tensor:
    """bool [C_out]: output channels with at least one surviving weight."""
    return mask.flatten(1).any(1)


def row_density(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of the weights in output rows that keep any weight: remaining weights counted the
    paper's way for refill (whole refilled rows, before the inputs of dropped channels go)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(row_alive(m).sum()) * m[0].numel() for m in masks.values() if m.shape[0]) / max(total, 1)


def channel_density(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of prunable output channels with any surviving weight."""
    total = sum(m.shape[0] for m in masks.values())
    return sum(int(row_alive(m).sum()) for m in masks.values()) / max(total, 1)


def layer_stats(masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    return {
        n: {
            "density": int(m.count_nonzero()) / m.numel(),
            "channel_density": float(row_alive(m).float().mean()),
        }
        for n, m in masks.items()
    }


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Exact dense FLOPs of every Conv2d / Linear for one input [1, C, H, W] (torch's counter)."""
    counter = FlopCounterMode(display=False)
    model_was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape[1:]))
    model.train(model_was_training)
    per_module = counter.get_flop_counts()
    wanted = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    prefix = type(model).__name__
    out = {}
    for key, ops in per_module.items():
        name = key[len(prefix) + 1 :] if key.startswith(prefix + ".") else key
        if name in wanted:
            out[name] = int(sum(ops.values()))
    return out


def layer_effective_flops(
    model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...], dead_bn: bool = True
) -> dict[str, tuple[int, int]]:
    """Per Conv2d / Linear: (dense FLOPs, FLOPs of the weights that can be non-zero on live
    inputs), one sample [1, C, H, W].

    A conv's FLOPs scale with the share of its weights that survive and read a live input
    channel from a live output channel: the physical limit of any engine for this mask. Without
    dead_bn (training_masks) a channel with no weight still emits its BN bias, so every kept
    weight counts.
    """
    flops = layer_flops(model, input_shape)
    live = liveness(model, masks, input_shape[1]) if dead_bn else None
    modules = dict(model.named_modules())
    out = {}
    for name, f in flops.items():
        mod = modules[name]
        w = masks.get(f"{name}.weight")
        w = torch.ones_like(mod.weight, dtype=torch.bool) if w is None else w.bool()
        if dead_bn and isinstance(mod, nn.Conv2d):
            a_in = live.module_in[name].view(mod.groups, -1)
            group_of_out = torch.arange(mod.out_channels) // (mod.out_channels // mod.groups)
            w = w & a_in[group_of_out][:, :, None, None] & live.module_out[name][:, None, None, None]
        elif dead_bn:
            w = w & live.module_in[name][None, :]
        out[name] = (f, f * int(w.count_nonzero()) // w.numel())
    return out


def effective_flops(
    model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...], dead_bn: bool = True
) -> tuple[int, int]:
    """(dense FLOPs, effective FLOPs) of the whole model, one sample: see layer_effective_flops."""
    per_layer = layer_effective_flops(model, masks, input_shape, dead_bn).values()
    return sum(d for d, _ in per_layer), sum(k for _, k in per_layer)


def mask_stats(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: tuple[int, ...], dead_bn: bool = True) -> dict:
    """The sparsity block every round's metrics.json carries (dead_bn: effective_flops's)."""
    dense_flops, flops = effective_flops(model, masks, input_shape, dead_bn)
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    total_params = sum(p.numel() for p in model.parameters())
    pruned = sum(m.numel() for m in masks.values()) - kept
    return {
        "sparsity": 1 - density(masks),
        "channel_sparsity": 1 - channel_density(masks),
        "flops": flops,
        "flops_dense": dense_flops,
        "params_kept": total_params - pruned,
        "params_total": total_params,
    }
