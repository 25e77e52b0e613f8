"""Which engine runs each layer, and the fast model of each ticket kind.

Every ticket kind has one production engine, chosen before any end-to-end timing:
- channel-wise tickets (refill, imp_channel): `slim`, the physically smaller net, each conv's
  channel count padded with zero channels to a multiple of ALIGN (CPU kernels' block);
- group-wise tickets (regroup): `slim+blocks`, the slim net with each remaining conv run by the
  fastest of dense / grouped / subconv on its real input, block orders handed on where the
  graph allows (structlth.speedup.layout);
- unstructured tickets (imp): `masked_dense` (the same work as dense: the A/A baseline) and `csr`.
BatchNorm is folded into the convs of every model here and of the dense baseline alike.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx, nn

from structlth.speedup.engines import ALIGN, engine_candidates, masked_reference, swap_convs, take_channels
from structlth.speedup.layout import feeders, fold_bn, fold_layouts, moves_gather
from structlth.speedup.slim import slim_model
from structlth.speedup.timing import conv_inputs, time_pair

CHANNEL_KINDS = ("refill", "imp_channel", "torch_pruning")
GROUP_KINDS = ("regroup",)


def fastest_format(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> torch.memory_format:
    """channels_last or contiguous, whichever runs `model` (a dense net) faster on x: each
    format's copy of the model on x in the same format (model itself is left as it is)."""
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    t = time_pair(plain, cl, x.contiguous(), repeats, warmup, x.contiguous(memory_format=torch.channels_last))
    return torch.channels_last if t.t_ticket_ms < t.t_dense_ms else torch.contiguous_format


def choose_engines(
    reference: fx.GraphModule, masks: Mapping[str, torch.Tensor], x: torch.Tensor, repeats: int, warmup: int
) -> dict[str, str]:
    """Per masked conv, in the model's module order, the fastest engine on its real input (the
    dense conv when nothing wins). A grouped conv whose feeder (structlth.speedup.layout.feeders)
    runs dense is timed without its gather when the feeder will emit its input gathered
    (structlth.speedup.layout.moves_gather)."""
    inputs = conv_inputs(reference, x)
    modules = dict(reference.named_modules())
    feed = feeders(reference)
    order = {n: i for i, n in enumerate(modules)}
    choice = {}
    for pname, mask in sorted(masks.items(), key=lambda kv: order[kv[0].removesuffix(".weight")]):
        name = pname.removesuffix(".weight")
        conv = modules[name]
        best, best_t = "dense", None
        for engine in engine_candidates(mask):
            if engine == "dense":
                continue
            layer = swap_convs(nn.Sequential(copy.deepcopy(conv).to("cpu", torch.float32)), {"0.weight": mask.cpu()}, {"0": engine}).to(
                x.device, x.dtype
            )
            x_fast = None
            if (
                engine == "grouped"
                and name in feed
                and choice.get(feed[name], "dense") == "dense"
                and moves_gather(layer[0], inputs[name].shape[1])
            ):
                x_fast = take_channels(inputs[name], layer[0].gather)
                layer[0].skip_gather = True
            t = time_pair(conv, layer, inputs[name], repeats, warmup, x_fast)
            if t.t_ticket_ms < t.t_dense_ms and (best_t is None or t.t_ticket_ms < best_t):
                best, best_t = engine, t.t_ticket_ms
        choice[name] = best
    return choice


def slim_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The masks of the slim model's plain convs: slim a copy whose weights are the masks themselves."""
    carrier = copy.deepcopy(model).cpu()
    params = dict(carrier.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].copy_(m.float())
    slim = dict(slim_model(carrier, masks, in_channels, ALIGN).named_modules())
    out = {}
    for n in masks:
        conv = slim.get(n.removesuffix(".weight"))
        if isinstance(conv, nn.Conv2d) and conv.groups == 1:
            out[n] = conv.weight.detach() != 0
    return out


def fast_models(
    kind: str, model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, x: torch.Tensor, repeats: int, warmup: int
) -> dict[str, nn.Module]:
    """engine name -> fast model (on the CPU, fp32) for a ticket of this kind (model: on the CPU,
    with its trained weights); x: a batch on the device, in the dtype and memory format the models
    will run in (engines are chosen by timings on it)."""
    if kind in CHANNEL_KINDS:
        return {"slim": fold_bn(slim_model(model, masks, in_channels, ALIGN))}
    if kind in GROUP_KINDS:
        slim = fold_bn(slim_model(model, masks, in_channels, ALIGN))
        plain = slim_masks(model, masks, in_channels)
        choice = choose_engines(copy.deepcopy(slim).to(x.device, x.dtype), plain, x, repeats, warmup)
        return {"slim+blocks": fold_layouts(swap_convs(slim, plain, choice))}
    ref = fold_bn(masked_reference(model, masks, in_channels))
    plain = {n: m for n, m in masks.items() if getattr(ref.get_submodule(n.removesuffix(".weight")), "groups", 0) == 1}
    return {"masked_dense": ref, "csr": swap_convs(ref, plain, {n.removesuffix(".weight"): "csr" for n in plain})}
