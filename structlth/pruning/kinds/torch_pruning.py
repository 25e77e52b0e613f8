"""The field's structured baseline: Torch-Pruning (DepGraph) channel pruning, as masks.

Torch-Pruning finds the coupled channels of a network (a conv's outputs, its BN, the next
conv's inputs, residual streams) and removes whole channels by a global importance ranking.
Here its choice is read back as masks on the unpruned architecture: rows of the dropped output
channels are zero, and `structlth.masks.drop_untrainable` removes what they fed. The ticket then
trains, benches, exports and is compared exactly like every other ticket.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch_pruning as tp
from torch import nn

Masks = dict[str, torch.Tensor]

IMPORTANCE: dict[str, tuple[Callable[[], object], bool]] = {  # name -> (Torch-Pruning importance, ranked across layers)
    # Torch-Pruning's group L1: the L1 norms of a channel in every coupled layer, averaged and
    # divided by the group's mean, ranked net-wide (FLOPs follow the ratio in fine steps)
    "l1": (lambda: tp.importance.MagnitudeImportance(p=1), True),
    # Li et al. 2017: each filter's own L1 norm (the group's first layer, not normalised), the same
    # ratio in every layer (unnormalised norms differ by layer, so a global ranking empties some);
    # FLOPs follow the ratio in steps of round_to channels per layer
    "filter_l1": (lambda: tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"), False),
    "bn_scale": (tp.importance.BNScaleImportance, True),  # |gamma| of the following BN, ranked net-wide (network slimming)
    "taylor": (tp.importance.TaylorImportance, True),  # |weight x gradient| (Molchanov et al. 2019)
}
OUT_CHANNEL_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)


def channel_masks(
    model: nn.Module,
    prunable: Mapping[str, torch.Tensor],
    example: torch.Tensor,
    importance: str,
    ratio: float,
    round_to: int,
    gradients: Callable[[nn.Module], None] | None = None,
) -> Masks:
    """Masks of `prunable`'s keys (conv weight names; shapes of the model's weights): all ones
    except the output-channel rows Torch-Pruning removes at `ratio` (its pruning_ratio: of the
    whole net, or of each layer where IMPORTANCE ranks per layer) with `importance`. Convs outside `prunable` (the stem) and the
    classifier keep their output channels. gradients(net): runs a backward pass on the copy
    Torch-Pruning scores (the taylor importance needs one). `model` is left unchanged."""
    net = copy.deepcopy(model)
    names = {mod: name for name, mod in net.named_modules()}
    keep_whole = [m for m, n in names.items() if isinstance(m, nn.Conv2d) and f"{n}.weight" not in prunable]
    keep_whole += [m for m in net.modules() if isinstance(m, nn.Linear)][-1:]
    if gradients is not None:
        gradients(net)
    make, ranked_globally = IMPORTANCE[importance]
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=make(),
        global_pruning=ranked_globally,
        pruning_ratio=ratio,
        ignored_layers=keep_whole,
        round_to=round_to,
    )
    out = {k: torch.ones_like(v, dtype=torch.bool) for k, v in prunable.items()}
    for group in pruner.step(interactive=True):  # choose only: the groups are read, never pruned
        for dep, idxs in group:
            key = f"{names.get(dep.target.module)}.weight"
            if dep.handler in OUT_CHANNEL_HANDLERS and key in out:
                out[key][torch.as_tensor(list(idxs), dtype=torch.long)] = False
    return out


def match_flops(
    model: nn.Module,
    prunable: Mapping[str, torch.Tensor],
    example: torch.Tensor,
    importance: str,
    round_to: int,
    target: float,
    flops_of: Callable[[Masks], float],
    gradients: Callable[[nn.Module], None] | None = None,
    steps: int = 16,
) -> tuple[Masks, float]:
    """The masks of the smallest ratio (bisection over [0, 0.95], `steps` halvings)
    whose FLOPs (flops_of(masks)) do not exceed `target`, and that ratio. FLOPs fall as the
    ratio grows; where even 0.95 stays above the target, 0.95's masks are returned."""
    lo, hi = 0.0, 0.95
    for _ in range(steps):
        mid = (lo + hi) / 2
        if flops_of(channel_masks(model, prunable, example, importance, mid, round_to, gradients)) > target:
            lo = mid
        else:
            hi = mid
    return channel_masks(model, prunable, example, importance, hi, round_to, gradients), hi


def baseline_masks(
    spec, model: nn.Module, prunable: Mapping[str, torch.Tensor], target: float, flops_of: Callable[[Masks], float], inputs
) -> tuple[Masks, float]:
    """The registry's entry point: `match_flops` of the trained dense `model` under `spec`
    (TorchPruningParams) at `target` FLOPs, a taylor importance's gradients taken on
    spec.score_batches training batches; returns the masks and Torch-Pruning's ratio."""
    gradients = None
    if spec.importance == "taylor":
        batches = inputs.batches(spec.score_batches)

        def gradients(net: nn.Module) -> None:
            net.zero_grad()
            for x, y in batches:
                nn.functional.cross_entropy(net(x.cpu()), y.cpu()).backward()

    example = torch.zeros(inputs.input_shape)
    return match_flops(model, prunable, example, spec.importance, spec.round_to, target, flops_of, gradients)
