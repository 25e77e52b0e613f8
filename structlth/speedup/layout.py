"""Inference-time graph rewrites shared by the dense baseline and every ticket.

- `fold_bn`: BatchNorm folded into the conv before it (torch.fx's conv-BN fusion), applied to
  the dense net and the ticket alike so the comparison stays fair.
- `feeders` / `fold_layouts`: a grouped conv (engines.GroupedConv) that is the only reader of a
  plain conv's output (through channel-wise modules) has that conv emit its rows in the grouped
  conv's gather order, so the gather disappears (disjoint blocks: a permutation). A grouped conv
  computes its output channels in block order. Where the graph allows, the block order is
  handed on instead of restored: through channel-wise modules (ReLU, pooling, dropout) into the
  next conv, whose input gather (grouped) or weight columns (dense) absorb the permutation. Anything else (a residual add of tensors in
  different orders, flatten, the classifier, the output) gets an explicit `Reorder` first.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.nn import functional as F

from structlth.speedup.engines import GroupedConv, Reorder, is_channels_last

ORDER_FREE_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
ORDER_FREE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
ADDS = {operator.add, operator.iadd, torch.add}


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """An eval-mode copy of `model` with every conv -> BN pair folded into one conv with bias."""
    return fuse(model.eval(), no_trace=isinstance(model, fx.GraphModule)).eval()


def _positions(layout: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor | None:
    """Positions in a tensor laid out as `layout` of the channels `wanted`; a channel the layout
    lacks (a dead row, exactly 0) maps to a padding position; None when there is none."""
    where = torch.full((int(max(layout.max(), wanted.max())) + 1,), -1, dtype=torch.long)
    live = layout >= 0
    where[layout[live]] = torch.nonzero(live).flatten()
    pos = where[wanted]
    if bool((pos < 0).any()):
        pad = torch.nonzero(~live).flatten()
        if not len(pad):
            return None
        pos[pos < 0] = pad[0]
    return pos


def absorb(mod: nn.Module, layout: torch.Tensor) -> bool:
    """Let conv `mod` (in place) read a tensor laid out as `layout` [P] (the channel at each
    position, -1: an exact zero) instead of one in channel order; False when it cannot. A plain
    conv gets P input channels: zero weight columns at the padding (`to_layout`)."""
    if isinstance(mod, GroupedConv):
        pos = _positions(layout, mod.gather)
        if pos is None:
            return False
        mod.gather, mod.skip_gather = pos, False
        return True
    if isinstance(mod, nn.Conv2d) and mod.groups == 1:
        live = layout >= 0
        w = mod.weight.detach()
        new = w.new_zeros(w.shape[0], len(layout), *w.shape[2:])
        new[:, live] = w[:, layout[live]]
        mod.weight = nn.Parameter(new, requires_grad=False)
        mod.in_channels = len(layout)
        return True
    return False


def to_layout(x: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] in channel order as the tensor a grouped conv's block order hands on:
    [B, P, H, W], position p holding channel layout[p], zero where layout[p] is -1, in x's
    memory format."""
    live = layout >= 0
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = torch.empty(x.shape[0], len(layout), *x.shape[2:], dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
    out[:, live] = x[:, layout[live]]
    return out


def _order_free(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], ORDER_FREE_MODULES)
    return node.op == "call_function" and node.target in ORDER_FREE_FUNCTIONS


def feeders(gm: fx.GraphModule) -> dict[str, str]:
    """conv module name -> the plain conv (groups=1) whose output only it reads, through
    channel-wise modules and functions that nothing else reads: that conv's output rows can be
    put in any order the reader wants."""
    modules = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.Conv2d, GroupedConv)):
            continue
        src = node.args[0]
        while isinstance(src, fx.Node) and len(src.users) == 1 and _order_free(src, modules):
            src = src.args[0]
        if isinstance(src, fx.Node) and len(src.users) == 1 and src.op == "call_module":
            feeder = modules[src.target]
            if type(feeder) is nn.Conv2d and feeder.groups == 1:
                out[node.target] = src.target
    return out


FEEDER_GROWTH = 1.25  # a feeder computes a gather (repeats included) of at most this many times its rows


def moves_gather(grouped: GroupedConv, channels: int) -> bool:
    """Whether a feeder of `channels` rows should compute `grouped`'s gather: it is no longer than
    FEEDER_GROWTH x channels (disjoint blocks: a permutation plus padding; overlapping blocks
    repeat channels, and recomputing those rows costs more than the copy it saves)."""
    return not grouped.skip_gather and len(grouped.gather) <= FEEDER_GROWTH * channels


def _gather_in_feeders(gm: fx.GraphModule) -> None:
    """Each grouped conv with a feeder (`feeders`) whose gather it `moves_gather` reads its input
    already gathered: the feeder computes the rows gather[j] in order j ([k*c] rows)."""
    modules = dict(gm.named_modules())
    for name, src in feeders(gm).items():
        grouped, conv = modules[name], modules[src]
        if not isinstance(grouped, GroupedConv) or not moves_gather(grouped, conv.out_channels):
            continue
        idx = grouped.gather
        conv.weight = nn.Parameter(conv.weight.detach()[idx], requires_grad=False)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[idx], requires_grad=False)
        conv.out_channels = len(idx)
        grouped.gather, grouped.skip_gather = torch.arange(len(idx)), True


def fold_layouts(gm: fx.GraphModule) -> fx.GraphModule:
    """Gathers moved into feeders, and grouped convs' block order handed on wherever the next
    consumer can absorb it (in place)."""
    _gather_in_feeders(gm)
    modules = dict(gm.named_modules())
    layout: dict[fx.Node, tuple[torch.Tensor, int]] = {}  # node -> (layout, channels) when not in order
    restored: dict[fx.Node, fx.Node] = {}

    def in_order(src: fx.Node, user: fx.Node) -> fx.Node:
        if src not in restored:
            lay, channels = layout[src]
            name = f"reorder_{src.name}"
            gm.add_submodule(name, Reorder(lay, channels))
            with gm.graph.inserting_after(src):
                restored[src] = gm.graph.call_module(name, (src,))
        user.replace_input_with(src, restored[src])
        return restored[src]

    for node in list(gm.graph.nodes):
        srcs = [a for a in node.all_input_nodes if a in layout]
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, GroupedConv):
                if srcs and not absorb(mod, layout[srcs[0]][0]):
                    in_order(srcs[0], node)
                mod.restore = False
                layout[node] = (mod.layout, mod.reorder.index.numel())
                continue
            if srcs and isinstance(mod, ORDER_FREE_MODULES):
                layout[node] = layout[srcs[0]]
                continue
            if srcs and isinstance(mod, nn.Conv2d) and absorb(mod, layout[srcs[0]][0]):
                continue
        elif node.op == "call_function" and srcs:
            if node.target in ORDER_FREE_FUNCTIONS and node.args[0] in layout:
                layout[node] = layout[node.args[0]]
                continue
            ins = [a for a in node.args if isinstance(a, fx.Node)]
            if (
                node.target in ADDS
                and len(ins) == 2
                and all(a in layout for a in ins)
                and torch.equal(layout[ins[0]][0], layout[ins[1]][0])
            ):
                layout[node] = layout[ins[0]]
                continue
        for s in srcs:
            in_order(s, node)
    gm.graph.lint()
    gm.recompile()
    return gm
