"""Which engine runs each layer, and the fast model of each ticket kind.

Every ticket kind has one production engine, chosen before any end-to-end timing:
- channel-wise tickets (refill, imp_channel): `slim`, the physically smaller net, each conv's
  kept channels padded with zero channels to a multiple of 8, 16 or 32, per layer, whichever
  runs fastest on this machine (`choose_alignment`: CPU kernels compute channels in blocks
  whose size depends on the instruction set);
- group-wise tickets (regroup): `slim+blocks`, the slim net with each remaining conv run by the
  fastest of dense / grouped / subconv on its real input, block orders handed on where the
  graph allows (structlth.speedup.layout); the slim net alone where that runs faster end to end;
- unstructured tickets (imp): `masked_dense` (the same work as dense: the A/A baseline) and `csr`.
Choices are timed in the runtime the model will run in (PyTorch or ONNX Runtime), so each
runtime gets its own fast model. BatchNorm is folded into the convs of every model here and of
the dense baseline alike. Padding and engine choices change no output: every fast model is
verified against the masked one by the bench.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx, nn

from structlth.speedup.engines import (
    ALIGN,
    engine_candidates,
    is_channels_last,
    masked_reference,
    round_up,
    swap_convs,
    take_channels,
)
from structlth.speedup.layout import feeders, fold_bn, fold_layouts, moves_gather
from structlth.speedup.onnxrt import in_runtime
from structlth.speedup.slim import kept_channels, slim_model
from structlth.speedup.timing import conv_inputs, time_pair

CHANNEL_KINDS = ("refill", "imp_channel", "torch_pruning")
GROUP_KINDS = ("regroup",)
ALIGNS = (8, 16, 32)  # channel multiples tried per slim conv (oneDNN's fp32 blocks: 8 channels on AVX2, 16 on AVX-512)
ALIGN_MARGIN = 0.03  # a wider count is kept only this much faster than ALIGN's: its zero channels cost its readers work


def _like(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """module on x's device and dtype, its weights in x's memory format (as the fast model runs)."""
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return module.to(x.device, x.dtype).to(memory_format=fmt)


def fastest_format(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> torch.memory_format:
    """channels_last or contiguous, whichever runs `model` (a dense net) faster on x: each
    format's copy of the model on x in the same format (model itself is left as it is)."""
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    t = time_pair(plain, cl, x.contiguous(), repeats, warmup, x.contiguous(memory_format=torch.channels_last))
    return torch.channels_last if t.t_ticket_ms < t.t_dense_ms else torch.contiguous_format


def choose_engines(
    reference: fx.GraphModule,
    masks: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    repeats: int,
    warmup: int,
    runtime: str = "torch",
    threads: int = 1,
) -> dict[str, str]:
    """Per masked conv, in the model's module order, the fastest engine on its real input in
    `runtime` (the dense conv when nothing wins). A grouped conv whose feeder
    (structlth.speedup.layout.feeders) runs dense is timed without its gather when the feeder
    will emit its input gathered (structlth.speedup.layout.moves_gather)."""
    inputs = conv_inputs(reference, x)
    modules = dict(reference.named_modules())
    feed = feeders(reference)
    order = {n: i for i, n in enumerate(modules)}
    choice = {}
    for pname, mask in sorted(masks.items(), key=lambda kv: order[kv[0].removesuffix(".weight")]):
        name = pname.removesuffix(".weight")
        conv = _like(copy.deepcopy(modules[name]), x)
        dense = in_runtime(runtime, conv, inputs[name], threads)
        best, best_t = "dense", None
        for engine in engine_candidates(mask):
            if engine == "dense":
                continue
            one = nn.Sequential(copy.deepcopy(conv).to("cpu", torch.float32))
            layer = _like(swap_convs(one, {"0.weight": mask.cpu()}, {"0": engine}), x)
            x_fast = inputs[name]
            if (
                engine == "grouped"
                and name in feed
                and choice.get(feed[name], "dense") == "dense"
                and moves_gather(layer[0], inputs[name].shape[1])
            ):
                x_fast = take_channels(inputs[name], layer[0].gather)
                layer[0].skip_gather = True
            t = time_pair(dense, in_runtime(runtime, layer, x_fast, threads), inputs[name], repeats, warmup, x_fast)
            if t.t_ticket_ms < t.t_dense_ms and (best_t is None or t.t_ticket_ms < best_t):
                best, best_t = engine, t.t_ticket_ms
        choice[name] = best
    return choice


def padded_rows(conv: nn.Conv2d, rows: int) -> nn.Conv2d:
    """A copy of a plain conv with `rows` >= C_out output channels: its own first, then zero
    rows with zero bias (their outputs are exactly 0)."""
    new = nn.Conv2d(conv.in_channels, rows, conv.kernel_size, conv.stride, conv.padding, conv.dilation).eval()
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.weight[: conv.out_channels] = conv.weight
        if conv.bias is not None:
            new.bias[: conv.out_channels] = conv.bias
    return new.to(conv.weight.device, conv.weight.dtype)


def choose_alignment(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    in_channels: int,
    x: torch.Tensor,
    repeats: int,
    warmup: int,
    runtime: str = "torch",
    threads: int = 1,
) -> dict[str, int]:
    """Per plain conv (module name -> one of ALIGNS) the multiple its kept channels are padded
    to in the slim net on this machine. Each conv of the slim net at ALIGN is timed on its real
    input (x: the batch [B, C, H, W] the engines are chosen on) in `runtime` against itself
    with more zero rows: the distinct counts round_up(live channels, a) for a in ALIGNS, at
    most C_out. A wider count is chosen where it is ALIGN_MARGIN faster than ALIGN's."""
    live = kept_channels(model, masks, in_channels)
    c_out = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    base = fold_bn(slim_model(model, masks, in_channels, ALIGN))
    modules = dict(base.named_modules())
    inputs = conv_inputs(_like(copy.deepcopy(base), x), x, set(c_out) & set(modules))
    choice = {}
    for name, inp in inputs.items():
        choice[name] = ALIGN
        conv = _like(copy.deepcopy(modules[name]), x)
        counts: dict[int, int] = {}
        for a in ALIGNS:
            counts.setdefault(min(c_out[name], round_up(len(live[name]), a)), a)
        wider = {rows: a for rows, a in counts.items() if rows > conv.out_channels}
        if not wider:
            continue
        own, best = in_runtime(runtime, conv, inp, threads), 1 - ALIGN_MARGIN
        for rows, a in wider.items():
            t = time_pair(own, in_runtime(runtime, _like(padded_rows(conv, rows), x), inp, threads), inp, repeats, warmup)
            if t.t_ticket_ms / t.t_dense_ms < best:
                choice[name], best = a, t.t_ticket_ms / t.t_dense_ms
    return choice


def slim_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, align: int | Mapping[str, int] = ALIGN
) -> dict[str, torch.Tensor]:
    """The masks of the slim model's plain convs (kept channels padded to `align`, per conv or
    one for all): slim a copy whose weights are the masks themselves."""
    carrier = copy.deepcopy(model).cpu()
    params = dict(carrier.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].copy_(m.float())
    slim = dict(slim_model(carrier, masks, in_channels, align).named_modules())
    out = {}
    for n in masks:
        conv = slim.get(n.removesuffix(".weight"))
        if isinstance(conv, nn.Conv2d) and conv.groups == 1:
            out[n] = conv.weight.detach() != 0
    return out


def _faster(model: nn.Module, than: nn.Module, x: torch.Tensor, repeats: int, warmup: int, runtime: str, threads: int) -> bool:
    """Whether `model` runs x faster than `than` end to end in `runtime` (per-layer choices do
    not see the gathers and reorders between layers, which dominate at small batches)."""
    a, b = _like(copy.deepcopy(than), x), _like(copy.deepcopy(model), x)
    t = time_pair(in_runtime(runtime, a, x, threads), in_runtime(runtime, b, x, threads), x, repeats, warmup)
    return t.t_ticket_ms < t.t_dense_ms


def fast_models(
    kind: str,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    in_channels: int,
    x: torch.Tensor,
    repeats: int,
    warmup: int,
    runtime: str = "torch",
    threads: int = 1,
) -> dict[str, nn.Module]:
    """engine name -> fast model (on the CPU, fp32) for a ticket of this kind (model: on the CPU,
    with its trained weights); x: a batch on the device, in the dtype and memory format the models
    will run in; alignment and engines are chosen by timings on it in `runtime` (`threads`:
    ONNX Runtime's intra-op threads)."""
    if kind in CHANNEL_KINDS + GROUP_KINDS:
        align = choose_alignment(model, masks, in_channels, x, repeats, warmup, runtime, threads)
        slim = fold_bn(slim_model(model, masks, in_channels, align))
        if kind in CHANNEL_KINDS:
            return {"slim": slim}
        plain = slim_masks(model, masks, in_channels, align)
        choice = choose_engines(copy.deepcopy(slim).to(x.device, x.dtype), plain, x, repeats, warmup, runtime, threads)
        blocks = fold_layouts(swap_convs(slim, plain, choice))
        return {"slim+blocks": blocks if _faster(blocks, slim, x, repeats, warmup, runtime, threads) else slim}
    ref = fold_bn(masked_reference(model, masks, in_channels))
    plain = {n: m for n, m in masks.items() if getattr(ref.get_submodule(n.removesuffix(".weight")), "groups", 0) == 1}
    return {"masked_dense": ref, "csr": swap_convs(ref, plain, {n.removesuffix(".weight"): "csr" for n in plain})}
