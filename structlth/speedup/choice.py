"""Which engine runs each layer, and the fast model of each ticket structure.

A ticket declares the structure of its masks (structlth.config.STRUCTURES); each structure has
one production engine, chosen before any end-to-end timing:
- channel-wise tickets (refill, imp_channel, Torch-Pruning): `slim`, the physically smaller net, each conv's
  kept channels padded with zero channels to a multiple of 8, 16 or 32, per layer, whichever
  runs fastest on this machine (`choose_alignment`: CPU kernels compute channels in blocks
  whose size depends on the instruction set), unless one multiple for every conv runs the
  whole net faster (`net_alignment`);
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from structlth.config import CHOICE_REPEATS
from structlth.speedup.engines import (
    ALIGN,
    GroupedConv,
    engine_candidates,
    masked_reference,
    round_up,
    swap_convs,
    take_channels,
)
from structlth.speedup.layout import absorb, feeders, fold_bn, fold_layouts, moves_gather, to_layout
from structlth.speedup.onnxrt import in_runtime
from structlth.speedup.slim import kept_channels, slim_model
from structlth.speedup.timing import conv_inputs, settled_side, time_pair

STRUCTURED = ("channel", "group")  # the structures with a fast model of their own; "unstructured" runs masked
ALIGNS = (8, 16, 32)  # channel multiples tried per slim conv (oneDNN's fp32 blocks: 8 channels on AVX2, 16 on AVX-512)
ALIGN_MARGIN = 0.03  # a wider count (or net) is kept only this much faster: its zero channels cost its readers work
ENGINE_MARGIN = 0.03  # an engine replaces the one chosen before it only this much faster: noise would decide its readers' gathers
FORMATS = (torch.contiguous_format, torch.channels_last)  # the memory formats a ticket's fast model is built and raced in
CHOICE_LOOKS = 3  # a choice's pairs are looked at this many times, evenly spaced; it stops at the first that settles it
CHOICE_ALPHA = 0.02  # ... by a sign test at this level (7 of 7 pairs on one side of the bar; 12 of 14)


@dataclass(frozen=True)
class Probe:
    """How choices are timed: on x [B, C, H, W] (its device and dtype), models in
    `memory_format` (stated, not read off x: a one-channel batch is contiguous in both formats),
    in `runtime` (ONNX Runtime with `threads` intra-op threads), up to `repeats` pairs after
    `warmup`. A choice against a bar stops early once a sign test at level `alpha` (None: never)
    puts its pairs on one side of the bar, looked at CHOICE_LOOKS times: a clear choice needs
    few pairs, a close one gets all of them."""

    x: torch.Tensor
    memory_format: torch.memory_format = torch.contiguous_format
    repeats: int = CHOICE_REPEATS
    warmup: int = 1
    runtime: str = "torch"
    threads: int = 1
    alpha: float | None = CHOICE_ALPHA

    def like(self, module: nn.Module) -> nn.Module:
        """module (in place) on x's device and dtype, its weights in the probe's memory format."""
        return module.to(self.x.device, self.x.dtype).to(memory_format=self.memory_format)

    def runner(self, module: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """module (in place, `like`) as a callable of the probe's runtime, traced on x for ONNX."""
        return in_runtime(self.runtime, self.like(module), x, self.threads)

    def ratio(
        self, base: Callable, other: Callable, x: torch.Tensor, x_other: torch.Tensor | None = None, bar: float | None = None
    ) -> float:
        """Median time of other(x_other, default x) over that of base(x); with `bar` (the ratio
        a choice compares it with), timed only until the pairs settle which side of it they fall on."""
        settled = None if bar is None or self.alpha is None else settled_side(bar, self.alpha)
        t = time_pair(base, other, x, self.repeats, self.warmup, x_other, settled=settled, every=-(-self.repeats // CHOICE_LOOKS))
        return t.t_ticket_ms / t.t_dense_ms


def format_race(plain: nn.Module, cl: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> torch.memory_format:
    """contiguous or channels_last: whichever of `plain` (a net in the contiguous format) and
    `cl` (the same net in channels_last) runs x faster, each on x in its own format."""
    t = time_pair(plain, cl, x.contiguous(), repeats, warmup, x.contiguous(memory_format=torch.channels_last))
    return torch.channels_last if t.t_ticket_ms < t.t_dense_ms else torch.contiguous_format


def fastest_format(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> torch.memory_format:
    """channels_last or contiguous, whichever runs `model` (a dense net) faster on x (model
    itself is left as it is)."""
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    return format_race(plain, copy.deepcopy(model).to(memory_format=torch.channels_last), x, repeats, warmup)


def choose_engines(reference: fx.GraphModule, masks: Mapping[str, torch.Tensor], probe: Probe) -> dict[str, str]:
    """Per masked conv, in the model's module order, the fastest engine on its real input (the
    activations of probe.x) in the probe's runtime. Engines are tried in engine_candidates'
    order (dense, grouped, sub-convs), and each replaces the one chosen so far only where it is
    ENGINE_MARGIN faster: a tie within the noise goes to the simpler engine, so that two
    processes choose alike (a conv that drops no input channel gains nothing from blocks; a
    grouped conv is one kernel and hands its block order on). Each conv is timed as it will run
    after structlth.speedup.layout.fold_layouts:
    - a grouped conv whose feeder (structlth.speedup.layout.feeders) runs dense is timed without
      its gather when the feeder will emit its input gathered (moves_gather);
    - a dense conv whose feeder runs grouped reads the feeder's padded block order (`absorb`),
      with more input channels than its own input has: the margin applies to that cost."""
    inputs = conv_inputs(probe.like(copy.deepcopy(reference)), probe.x)
    modules = dict(reference.named_modules())
    feed = feeders(reference)
    order = {n: i for i, n in enumerate(modules)}
    choice: dict[str, str] = {}
    block_layouts: dict[str, torch.Tensor] = {}  # conv run grouped -> the order its output is handed on in
    for pname, mask in sorted(masks.items(), key=lambda kv: order[kv[0].removesuffix(".weight")]):
        name = pname.removesuffix(".weight")
        conv = copy.deepcopy(modules[name]).to("cpu", torch.float32)
        dense = probe.runner(copy.deepcopy(conv), inputs[name])
        best, bar, best_layer = "dense", 1 - ENGINE_MARGIN, None  # bar: the ratio to dense the next engine must beat
        candidates = [e for e in engine_candidates(mask) if e != "dense"]
        if candidates and feed.get(name) in block_layouts:  # with no candidate, dense stays: nothing to weigh
            lay, as_run = block_layouts[feed[name]], copy.deepcopy(conv)
            absorb(as_run, lay)
            x_lay = to_layout(inputs[name], lay)
            bar *= probe.ratio(dense, probe.runner(as_run, x_lay), inputs[name], x_lay)
        for engine in candidates:
            layer = probe.like(swap_convs(nn.Sequential(copy.deepcopy(conv)), {"0.weight": mask.cpu()}, {"0": engine}))
            x_fast = inputs[name]
            if (
                engine == "grouped"
                and name in feed
                and choice.get(feed[name], "dense") == "dense"
                and moves_gather(layer[0], inputs[name].shape[1])
            ):
                x_fast = take_channels(inputs[name], layer[0].gather)
                layer[0].skip_gather = True
            r = probe.ratio(dense, probe.runner(layer, x_fast), inputs[name], x_fast, bar)
            if r < bar:
                best, bar, best_layer = engine, r * (1 - ENGINE_MARGIN), layer[0]
        choice[name] = best
        if isinstance(best_layer, GroupedConv):
            block_layouts[name] = best_layer.layout
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


def choose_alignment(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, probe: Probe) -> dict[str, int]:
    """Per plain conv (module name -> one of ALIGNS) the multiple its kept channels are padded
    to in the slim net on this machine. Each conv of the slim net at ALIGN is timed on its real
    input (the activations of probe.x) in the probe's runtime against itself with more zero
    rows: the distinct counts round_up(live channels, a) for a in ALIGNS, at most C_out. A wider
    count is chosen where it is ALIGN_MARGIN faster than ALIGN's."""
    live = kept_channels(model, masks, in_channels)
    c_out = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    base = fold_bn(slim_model(model, masks, in_channels, ALIGN))
    modules = dict(base.named_modules())
    inputs = conv_inputs(probe.like(copy.deepcopy(base)), probe.x, set(c_out) & set(modules))
    choice = {}
    for name, inp in inputs.items():
        choice[name] = ALIGN
        conv = modules[name]
        counts: dict[int, int] = {}
        for a in ALIGNS:
            counts.setdefault(min(c_out[name], round_up(len(live[name]), a)), a)
        wider = {rows: a for rows, a in counts.items() if rows > conv.out_channels}
        if not wider:
            continue
        own, best = probe.runner(copy.deepcopy(conv), inp), 1 - ALIGN_MARGIN
        for rows, a in wider.items():
            r = probe.ratio(own, probe.runner(padded_rows(conv, rows), inp), inp, bar=best)
            if r < best:
                choice[name], best = a, r
    return choice


def conv_widths(model: nn.Module) -> tuple[int, ...]:
    """The output channel counts of a model's convs, in module order."""
    return tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def alignment_candidates(
    model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, per_layer: Mapping[str, int]
) -> list[tuple[dict[str, int], nn.Module]]:
    """The distinct slim nets (BN folded) `net_alignment` races, with their alignments, narrowest
    first (total conv width): the per-layer choice, then one multiple of ALIGNS for every conv."""
    nets: dict[tuple[int, ...], tuple[dict[str, int], nn.Module]] = {}
    for align in (dict(per_layer), *({n: a for n in per_layer} for a in ALIGNS)):
        slim = fold_bn(slim_model(model, masks, in_channels, align))
        nets.setdefault(conv_widths(slim), (align, slim))
    return [nets[w] for w in sorted(nets, key=sum)]


def net_alignment(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, probe: Probe) -> dict[str, int]:
    """The alignment (plain conv -> one of ALIGNS) the slim net is built with: choose_alignment's
    per-layer choice, or one multiple for every conv, whichever slim net runs probe.x fastest
    end to end in the probe's runtime. Per-layer timings do not see what passes between layers:
    in ONNX Runtime a count that is not a multiple of its blocked layout's channel block leaves
    that layout, and the convs around it pay the reorders. The candidates are raced narrowest
    first; a wider one replaces the one chosen so far only where it is ALIGN_MARGIN faster."""
    per_layer = choose_alignment(model, masks, in_channels, probe)
    (best, slim), *wider = alignment_candidates(model, masks, in_channels, per_layer)
    best_run = probe.runner(slim, probe.x)
    for align, slim in wider:
        run = probe.runner(slim, probe.x)
        if probe.ratio(best_run, run, probe.x, bar=1 - ALIGN_MARGIN) < 1 - ALIGN_MARGIN:
            best, best_run = align, run
    return best


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


def _faster(model: nn.Module, than: nn.Module, probe: Probe) -> bool:
    """Whether `model` runs probe.x faster than `than` end to end (per-layer choices do not see
    the gathers and reorders between layers, which dominate at small batches)."""
    x = probe.x
    return probe.ratio(probe.runner(copy.deepcopy(than), x), probe.runner(copy.deepcopy(model), x), x, bar=1) < 1


def fast_models(
    structure: str, model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, probe: Probe, dead_bn: bool = True
) -> dict[str, nn.Module]:
    """engine name -> fast model (on the CPU, fp32) for a ticket of this structure (channel,
    group or unstructured; model: on the CPU, with its trained weights; dead_bn: as it trained,
    engines.masked_reference); alignment and engines are chosen by timings on probe.x (a batch on
    the device, in the dtype the models will run in) in the probe's memory format and runtime."""
    if structure in STRUCTURED:
        if not dead_bn:
            raise ValueError(f"a {structure}-wise ticket is slimmed, so the BN of its dead channels must be masked (dead_bn)")
        align = net_alignment(model, masks, in_channels, probe)
        slim = fold_bn(slim_model(model, masks, in_channels, align))
        if structure == "channel":
            return {"slim": slim}
        plain = slim_masks(model, masks, in_channels, align)
        blocks = fold_layouts(swap_convs(slim, plain, choose_engines(slim, plain, probe)))
        return {"slim+blocks": blocks if _faster(blocks, slim, probe) else slim}
    ref = fold_bn(masked_reference(model, masks, in_channels, dead_bn))
    plain = {n: m for n, m in masks.items() if getattr(ref.get_submodule(n.removesuffix(".weight")), "groups", 0) == 1}
    return {"masked_dense": ref, "csr": swap_convs(ref, plain, {n.removesuffix(".weight"): "csr" for n in plain})}


def fast_models_and_formats(
    structure: str, model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, probe: Probe, dead_bn: bool = True
) -> dict[str, tuple[nn.Module, torch.memory_format]]:
    """engine name -> (fast model, the memory format it runs fastest in). In PyTorch a channel- or
    group-wise ticket's models are built (`fast_models`: alignment and engines chosen) in each
    memory format, and each engine keeps the one whose model runs probe.x faster end to end: its
    convs are narrower or grouped, so the dense net's format (probe.memory_format) need not suit
    it. Elsewhere (ONNX Runtime takes NCHW; imp's masked_dense is the A/A and does the dense
    net's work) the probe's format alone."""
    if probe.runtime != "torch" or structure not in STRUCTURED:
        return {e: (m, probe.memory_format) for e, m in fast_models(structure, model, masks, in_channels, probe, dead_bn).items()}
    built = {}
    for fmt in FORMATS:
        p = replace(probe, x=probe.x.contiguous(memory_format=fmt), memory_format=fmt)
        built[fmt] = {e: p.like(m) for e, m in fast_models(structure, model, masks, in_channels, p).items()}
    out = {}
    for engine, plain in built[torch.contiguous_format].items():
        fmt = format_race(plain, built[torch.channels_last][engine], probe.x, probe.repeats, probe.warmup)
        out[engine] = (built[fmt][engine], fmt)
    return out
