"""Physically smaller dense networks from channel-wise tickets.

Dead channels (structlth.liveness) are removed: a conv keeps its live output channels and reads
only the live channels its input tensor still carries; BN and the classifier shrink with
them. The slim network equals the masked one up to float summation order.

A residual add of tensors carrying different channel sets (`StreamAdd`) is slices and one
concat, never a scatter: the sum carries the stream's channels in the stream's order, then the
other operand's new ones. Each residual stream's channel order is planned (`channel_orders`)
so that every conv writing into it emits, in a few contiguous stretches, the channels it shares
with the stream: a conv's output rows may come in any order, since its readers' weights are
sliced in that order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from structlth.liveness import ADD_OPS, liveness
from structlth.masks import apply_masks, training_masks
from structlth.speedup.engines import is_channels_last, round_up

Segment = tuple[int | None, int | None, int]  # (start in b or None, start in a or None, length)


def _runs(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(i, j) pairs, sorted by i, as maximal runs (i0, j0, n) where both advance by one."""
    runs: list[tuple[int, int, int]] = []
    for i, j in pairs:
        if runs and runs[-1][0] + runs[-1][2] == i and runs[-1][1] + runs[-1][2] == j:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((i, j, 1))
    return runs


def add_segments(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[Segment]]:
    """The channel order of a + b for tensors carrying channels `a` and `b` (in those orders):
    b's channels in b's order, then a's other channels in a's order; and that sum as stretches
    of the output, in order: (b start, a start, length), None where the stretch lacks that operand."""
    pos_b = {c: i for i, c in enumerate(b)}
    segments: list[Segment] = []
    cursor = 0
    for i, j, n in _runs(sorted((pos_b[c], j) for j, c in enumerate(a) if c in pos_b)):
        if i > cursor:
            segments.append((cursor, None, i - cursor))
        segments.append((i, j, n))
        cursor = i + n
    if cursor < len(b):
        segments.append((cursor, None, len(b) - cursor))
    tail = [j for j, c in enumerate(a) if c not in pos_b]
    segments += [(None, j, n) for _, j, n in _runs([(j, j) for j in tail])]
    return list(b) + [a[j] for j in tail], segments


class StreamAdd(nn.Module):
    """a + b where a and b carry different channel sets: each output stretch (`add_segments`)
    is a slice of b, of a, or the sum of one of each. Eager inference writes the stretches into
    one output allocated in the inputs' memory format (no temporaries, one pass over the data);
    autograd, ONNX export and torch.compile get the same as slices, adds and one concat."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        super().__init__()
        self.segments = [tuple(s) for s in segments]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        differentiable = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        if differentiable or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return torch.cat([self._stretch(a, b, sb, sa, n) for sb, sa, n in self.segments], 1)
        fmt = torch.channels_last if is_channels_last(a) or is_channels_last(b) else torch.contiguous_format
        shape = (b.shape[0], sum(n for *_, n in self.segments), *b.shape[2:])
        out = torch.empty(shape, dtype=torch.result_type(a, b), device=b.device, memory_format=fmt)
        start = 0
        for sb, sa, n in self.segments:
            self._stretch(a, b, sb, sa, n, out=out.narrow(1, start, n))
            start += n
        return out

    @staticmethod
    def _stretch(a: torch.Tensor, b: torch.Tensor, sb: int | None, sa: int | None, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """One stretch, (N, n, H, W): b[:, sb:sb+n] + a[:, sa:sa+n], or the one slice whose start is
        not None; written into `out` when given (a view of the output), else returned."""
        if sb is not None and sa is not None:
            return torch.add(b.narrow(1, sb, n), a.narrow(1, sa, n), out=out)
        part = a.narrow(1, sa, n) if sb is None else b.narrow(1, sb, n)
        return part if out is None else out.copy_(part)

    def extra_repr(self) -> str:
        return f"segments={self.segments}"


class Gather(nn.Module):
    """x[:, idx]: picks channels (used before a depthwise conv that keeps fewer)."""

    def __init__(self, idx: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("idx", idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.idx)


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1


def _slim_conv(conv: nn.Conv2d, keep_in: list[int], keep_out: list[int]) -> nn.Module:
    """conv reading channels keep_in (in that order) and computing keep_out (in that order); a
    depthwise conv's keep_out follows its input's order (`slim_model`)."""
    depthwise = _is_depthwise(conv)
    if conv.groups > 1 and not depthwise:
        raise NotImplementedError("slimming grouped (non-depthwise) convs is not supported")
    new = nn.Conv2d(
        len(keep_in) if not depthwise else len(keep_out),
        len(keep_out),
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=len(keep_out) if depthwise else 1,
        bias=conv.bias is not None,
    )
    w = conv.weight.detach()[keep_out]
    new.weight.data.copy_(w if depthwise else w[:, keep_in])
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[keep_out])
    if depthwise and keep_in != keep_out:
        pos = {c: i for i, c in enumerate(keep_in)}
        return nn.Sequential(Gather(torch.tensor([pos.get(c, 0) for c in keep_out])), new)
    return new


def _slim_bn(bn: nn.BatchNorm2d, keep: list[int]) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    sd = {k: (v[keep] if v.ndim == 1 else v) for k, v in bn.state_dict().items()}
    new.load_state_dict(sd)
    return new


def _slim_linear(lin: nn.Linear, keep_in: list[int]) -> nn.Linear:
    new = nn.Linear(len(keep_in), lin.out_features, bias=lin.bias is not None)
    new.weight.data.copy_(lin.weight.detach()[:, keep_in])
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach())
    return new


def kept_channels(
    model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, align: int | Mapping[str, int] = 1
) -> dict[str, list[int]]:
    """Output channels each conv keeps (sorted): its live ones (one dead channel where none is
    live), for plain convs padded with the lowest dead channels up to a multiple of `align` (at
    most C_out): one for every conv, or per conv name (1 where a conv is not named).

    Dead channels are exactly zero, so padding changes no output; it keeps channel counts on
    the CPU kernels' blocks (oneDNN computes 8/16 channels at a time: measured here, a 64 -> 61
    channel 3x3 conv ran 3.6x slower than 64 -> 64).
    """
    live = liveness(model, masks, in_channels)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    out = {}
    for n, a in live.module_out.items():
        if n not in convs:
            continue
        keep = torch.nonzero(a).flatten().tolist() or [0]
        multiple = align.get(n, 1) if isinstance(align, Mapping) else align
        if multiple > 1 and convs[n].groups == 1:
            short = min(len(a), round_up(len(keep), multiple)) - len(keep)
            keep = sorted(keep + [int(i) for i in torch.nonzero(~a).flatten() if int(i) not in keep][:short])
        out[n] = keep
    return out


def _is_add(node: fx.Node) -> bool:
    """A sum of two tensors (slim_model joins their channel sets)."""
    return node.op == "call_function" and node.target in ADD_OPS and sum(isinstance(a, fx.Node) for a in node.args) == 2


def _origin(node: fx.Node, modules: Mapping[str, nn.Module]) -> fx.Node:
    """The node whose channel order `node` carries: back through channel-wise nodes to a conv,
    a linear layer, a sum of two tensors or the input."""
    while (
        node.op in ("call_function", "call_method")
        and not _is_add(node)
        or node.op == "call_module"
        and not isinstance(modules[node.target], (nn.Conv2d, nn.Linear))
    ):
        srcs = [a for a in node.args if isinstance(a, fx.Node)]
        if not srcs:
            break
        node = srcs[0]
    return node


def _gray_sorted(channels: Sequence[int], later: Sequence[set[int]]) -> list[int]:
    """`channels` by the reflected Gray code of their membership in the sets `later` (the first
    most significant), then by index: the first set's members come last and the second's form
    one stretch; set i's form at most 2^(i-1) stretches (i >= 1, 0-based)."""

    def rank(c: int) -> int:
        r = bit = 0
        for s in later:
            bit ^= c in s
            r = 2 * r + bit
        return r

    return sorted(channels, key=lambda c: (rank(c), c))


def channel_orders(gm: fx.GraphModule, keep: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """An output channel order for plain convs that write into residual streams (the others
    keep `keep`'s sorted order), so that each sum joins its operands in few stretches
    (`add_segments`).

    gm: the model's fx trace; keep: conv name -> kept channels (`kept_channels`). Sums are
    followed along their stream: the operand that is an earlier sum (through channel-wise
    nodes), the second operand at a chain's first sum. The conv the stream starts from orders
    its channels by `_gray_sorted` over the convs writing into the chain; each writer emits
    the channels it shares with the stream in the stream's order, then its new ones Gray-sorted
    over the writers after it.
    """
    modules = dict(gm.named_modules())

    def plain(node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d) and modules[node.target].groups == 1

    roles: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}  # sum -> (stream origin, writer origin)
    nxt: dict[fx.Node, fx.Node] = {}  # sum -> the next sum on its stream
    starts = []
    for node in gm.graph.nodes:
        if not _is_add(node):
            continue
        oa, ob = (_origin(a, modules) for a in node.args if isinstance(a, fx.Node))
        going_on = [o for o in (ob, oa) if o in roles and o not in nxt]
        stream = going_on[0] if going_on else ob
        roles[node] = (stream, oa if stream is ob else ob)
        if going_on:
            nxt[stream] = node
        else:
            starts.append(node)

    order: dict[str, list[int]] = {}
    sums: dict[fx.Node, list[int]] = {}

    def emitted(node: fx.Node) -> list[int] | None:
        if plain(node):
            return order.get(node.target, keep[node.target])
        return sums.get(node)

    for first in starts:
        chain = [first]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        writers = [set(keep[w.target]) if plain(w) else set() for w in (roles[n][1] for n in chain)]
        stream = roles[first][0]
        if plain(stream) and stream.target not in order:
            order[stream.target] = _gray_sorted(keep[stream.target], writers)
        u = emitted(stream)
        for i, node in enumerate(chain):
            writer = roles[node][1]
            if u is not None and plain(writer) and writer.target not in order:
                pos = {c: j for j, c in enumerate(u)}
                shared = sorted((c for c in keep[writer.target] if c in pos), key=pos.__getitem__)
                order[writer.target] = shared + _gray_sorted([c for c in keep[writer.target] if c not in pos], writers[i + 1 :])
            a = emitted(writer)
            if u is None or a is None:
                break
            u = sums[node] = add_segments(a, u)[0]
    return order


def layer_widths(net: nn.Module) -> str:
    """What a slim net kept: one line per conv and linear, `name: in -> out` channels (features)."""
    rows = [
        f"  {name}: {m.in_channels} -> {m.out_channels}" + (f" (groups {m.groups})" if m.groups > 1 else "")
        if isinstance(m, nn.Conv2d)
        else f"  {name}: {m.in_features} -> {m.out_features}"
        for name, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return "\n".join(["slim net, input -> output channels per layer:", *rows])


@torch.no_grad()
def slim_model(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, align: int | Mapping[str, int] = 1) -> fx.GraphModule:
    """A physically slimmed copy of `model` with `masks` (and dead-channel BN masks) applied.

    model: any registry network; masks: param name -> bool weight mask; align: the channel
    multiple of plain convs, one or per conv (`kept_channels`). Returns an fx
    GraphModule in eval mode with the same input/output shapes; print() shows its layer widths
    (layer_widths), not its generated code. Inside it a tensor carries its
    kept channels in the order `channel_orders` plans (a function of the kept channel sets and
    the graph alone, so `structlth.export.load_slim` rebuilds the same net).
    """
    model = copy.deepcopy(model).cpu().eval()
    apply_masks(model, training_masks(model, masks, in_channels))
    gm = liveness(model, masks, in_channels).graph
    gm_modules = dict(gm.named_modules())
    keep = kept_channels(model, masks, in_channels, align)
    orders = channel_orders(gm, keep)
    present: dict[str, list[int]] = {}  # fx node -> the channels the slim tensor carries, in order
    for node in list(gm.graph.nodes):
        args = [a for a in node.args if isinstance(a, fx.Node) and a.name in present]
        if node.op == "placeholder":
            present[node.name] = list(range(in_channels))
        elif node.op == "call_module":
            mod, src = gm_modules[node.target], present[args[0].name]
            if isinstance(mod, nn.Conv2d):
                out = orders.get(node.target, keep[node.target])
                if _is_depthwise(mod):
                    kept = set(out)
                    out = [c for c in src if c in kept] + sorted(kept.difference(src))
                _set(gm, node.target, _slim_conv(mod, src, out))
                present[node.name] = out
            elif isinstance(mod, nn.BatchNorm2d):
                _set(gm, node.target, _slim_bn(mod, src))
                present[node.name] = src
            elif isinstance(mod, nn.Linear):
                _set(gm, node.target, _slim_linear(mod, src))
                present[node.name] = list(range(mod.out_features))
            else:
                present[node.name] = src
        elif node.op in ("call_function", "call_method") and args:
            if node.target in ADD_OPS and len(args) == 2:
                a, b = present[args[0].name], present[args[1].name]
                if a == b:
                    present[node.name] = a
                    continue
                union, segments = add_segments(a, b)
                name = f"stream_add_{node.name}"
                gm.add_submodule(name, StreamAdd(segments))
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_module(name, (args[0], args[1]))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                present[new.name] = union
            else:
                present[node.name] = present[args[0].name]
    gm.graph.lint()
    gm.recompile()
    type(gm).__str__ = layer_widths  # every GraphModule has a class of its own: this net's print() alone
    return gm.eval()
