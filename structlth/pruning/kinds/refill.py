"""Refill: turn an unstructured mask into whole channels (Chen et al. 2022, Alg. 2).

Per layer, with the mask viewed as [C_out, n] (n = C_in * kh * kw) and nnz its surviving
weights: K = ceil (or floor) of nnz / n + (C_out - nnz / n) * refill_rate, at least 1. The paper's
Table A3 (80.29% remaining after refilling IMP's 80%) implies ceil, and its reference code keeps
int(x) + 1, which is ceil except where x is whole; floor keeps at most the source's density. The
K channels with the highest scores become all ones, every other channel all zeros (strict top-K, ties by
channel index).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from structlth.masks import Masks


def refill_count(mask: torch.Tensor, refill_rate: float = 0.0, count: str = "ceil", align: int = 1) -> int:
    """K, the number of channels a refilled layer keeps (count: ceil | floor), rounded up to a
    multiple of `align` (never above C_out): rounding up only gives weights back."""
    c_out, n = mask.shape[0], mask[0].numel()
    full_rows = int(mask.count_nonzero()) / n
    k = full_rows + (c_out - full_rows) * refill_rate
    if count == "ceil":
        k = math.ceil(k - 1e-9)
    elif count == "floor":
        k = math.floor(k + 1e-9)
    else:
        raise ValueError(f"count must be floor or ceil, got {count!r}")
    return min(c_out, -(-max(1, k) // align) * align)


def refill(mask: torch.Tensor, scores: torch.Tensor, refill_rate: float = 0.0, count: str = "ceil", align: int = 1) -> torch.Tensor:
    """Channel-wise mask of `mask`'s shape: the top-K rows by `scores` ([C_out]) all ones."""
    if scores.shape != (mask.shape[0],):
        raise ValueError(f"scores must have shape [{mask.shape[0]}], got {tuple(scores.shape)}")
    k = refill_count(mask, refill_rate, count, align)
    top = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    rows = torch.zeros(mask.shape[0], dtype=torch.bool)
    rows[top] = True
    return rows.view(-1, *([1] * (mask.ndim - 1))).expand(mask.shape).clone()


def weight_scores(criterion: str, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`magnitude`: L1 of the surviving weights per channel; `remain`: their count. [C_out] each."""
    out = {}
    for n, m in masks.items():
        w = (weights[n].detach().float().cpu() * m).flatten(1)
        out[n] = w.abs().sum(1) if criterion == "magnitude" else m.flatten(1).sum(1).float()
    return out


def activation_scores(
    criterion: str, model: nn.Module, names: Iterable[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Scores from each pruned layer's own output activation a [B, C_out, H, W].

    `l1`: sum |a|; `l2`: sqrt(sum a^2); `saliency`: sum |a * dL/da| (first-order Taylor).
    The model must carry the round's trained, masked weights; it runs in eval mode.
    """
    modules = dict(model.named_modules())
    layers = [n.removesuffix(".weight") for n in names]
    acc = {n: torch.zeros(modules[n].out_channels) for n in layers}
    saved: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_mod, _inp, out):
            if criterion == "saliency":
                out.retain_grad()
                saved[name] = out
            elif criterion == "l1":
                acc[name] += out.detach().abs().sum((0, 2, 3)).cpu()
            else:
                acc[name] += out.detach().pow(2).sum((0, 2, 3)).cpu()

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    was = model.training
    model.eval()
    try:
        for x, y in batches:
            with torch.set_grad_enabled(criterion == "saliency"):
                out = model(x)
                if criterion == "saliency":
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(out, y).backward()
                    for n, a in saved.items():
                        acc[n] += (a * a.grad).detach().abs().sum((0, 2, 3)).cpu()
                    saved.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if criterion == "l2":
        acc = {n: v.sqrt() for n, v in acc.items()}
    return {f"{n}.weight": v for n, v in acc.items()}


def refill_masks(
    masks: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor], refill_rate: float, count: str = "ceil", align: int = 1
) -> Masks:
    return {n: refill(m, scores[n], refill_rate, count, align) for n, m in masks.items()}


def ticket_masks(spec, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], inputs) -> Masks:
    """The registry's entry point: the refill ticket of one round's masks under `spec`
    (RefillParams), channels scored by `spec.criterion` on that round's trained `weights`."""
    if spec.criterion in ("magnitude", "remain"):
        scores = weight_scores(spec.criterion, weights, masks)
    else:
        model = inputs.model()
        model.load_state_dict(weights)
        model.to(inputs.device)
        scores = activation_scores(spec.criterion, model, masks, inputs.batches(spec.score_batches))
    return refill_masks(masks, scores, spec.refill_rate, spec.count, spec.channel_align)
