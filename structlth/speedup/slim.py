"""Physically smaller dense networks from channel-wise tickets.

Dead channels (structlth.graph) are removed: a conv keeps its live output channels and reads
only the live channels its input tensor still carries; BN and the classifier shrink with
them; a residual add of tensors with different live sets becomes an index_add into their
union. The slim network equals the masked one up to float summation order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx, nn

from structlth.graph import ADD_OPS, liveness
from structlth.masks import training_masks, apply_masks


class AlignedAdd(nn.Module):
    """a + b where a carries channels idx_a and b idx_b of an n-channel union (index buffers)."""

    def __init__(self, idx_a: torch.Tensor, idx_b: torch.Tensor, n: int) -> None:
        super().__init__()
        self.register_buffer("idx_a", idx_a)
        self.register_buffer("idx_b", idx_b)
        self.n = n

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """In a's memory format: a channels_last stream stays channels_last for the convs that
        read it (a contiguous sum made every one of them convert its input)."""
        fmt = torch.channels_last if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous() else torch.contiguous_format
        out = torch.empty(a.shape[0], self.n, *a.shape[2:], dtype=a.dtype, device=a.device, memory_format=fmt).zero_()
        out.index_add_(1, self.idx_a, a)
        return out.index_add_(1, self.idx_b, b)


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


def _slim_conv(conv: nn.Conv2d, keep_in: torch.Tensor, keep_out: torch.Tensor) -> nn.Module:
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    if conv.groups > 1 and not depthwise:
        raise NotImplementedError("slimming grouped (non-depthwise) convs is not supported")
    new = nn.Conv2d(
        len(keep_in) if not depthwise else len(keep_out), len(keep_out), conv.kernel_size, conv.stride,
        conv.padding, conv.dilation, groups=len(keep_out) if depthwise else 1, bias=conv.bias is not None,
    )
    w = conv.weight.detach()[keep_out]
    new.weight.data.copy_(w if depthwise else w[:, keep_in])
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[keep_out])
    if depthwise and not torch.equal(keep_in, keep_out):
        pos = torch.searchsorted(keep_in, keep_out)
        return nn.Sequential(Gather(pos), new)
    return new


def _slim_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    sd = {k: (v[keep] if v.ndim == 1 else v) for k, v in bn.state_dict().items()}
    new.load_state_dict(sd)
    return new


def _slim_linear(lin: nn.Linear, keep_in: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep_in), lin.out_features, bias=lin.bias is not None)
    new.weight.data.copy_(lin.weight.detach()[:, keep_in])
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach())
    return new


def kept_channels(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, align: int = 1) -> dict[str, list[int]]:
    """Output channels each conv keeps: its live ones (one dead channel where none is live), for
    plain convs padded with the lowest dead channels up to a multiple of `align` (at most C_out).

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
        if align > 1 and convs[n].groups == 1:
            short = min(len(a), -(-len(keep) // align) * align) - len(keep)
            keep = sorted(keep + [int(i) for i in torch.nonzero(~a).flatten() if int(i) not in keep][:short])
        out[n] = keep
    return out


@torch.no_grad()
def slim_model(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, align: int = 1) -> fx.GraphModule:
    """A physically slimmed copy of `model` with `masks` (and dead-channel BN masks) applied.

    model: any registry network; masks: param name -> bool weight mask. Returns an fx
    GraphModule in eval mode with the same input/output shapes.
    """
    model = copy.deepcopy(model).cpu().eval()
    apply_masks(model, training_masks(model, masks, in_channels))
    live = liveness(model, masks, in_channels)
    gm = live.graph
    gm_modules = dict(gm.named_modules())
    keep_out = {n: torch.tensor(v) for n, v in kept_channels(model, masks, in_channels, align).items()}
    present: dict[str, torch.Tensor] = {}  # fx node -> channel indices the slim tensor carries
    for node in list(gm.graph.nodes):
        args = [a for a in node.args if isinstance(a, fx.Node) and a.name in present]
        if node.op == "placeholder":
            present[node.name] = torch.arange(in_channels)
        elif node.op == "call_module":
            mod, src = gm_modules[node.target], present[args[0].name]
            if isinstance(mod, nn.Conv2d):
                _set(gm, node.target, _slim_conv(mod, src, keep_out[node.target]))
                present[node.name] = keep_out[node.target]
            elif isinstance(mod, nn.BatchNorm2d):
                _set(gm, node.target, _slim_bn(mod, src))
                present[node.name] = src
            elif isinstance(mod, nn.Linear):
                _set(gm, node.target, _slim_linear(mod, src))
                present[node.name] = torch.arange(mod.out_features)
            else:
                present[node.name] = src
        elif node.op in ("call_function", "call_method") and args:
            if node.target in ADD_OPS and len(args) == 2:
                a, b = present[args[0].name], present[args[1].name]
                if torch.equal(a, b):
                    present[node.name] = a
                    continue
                union = torch.unique(torch.cat([a, b]))
                name = f"aligned_add_{node.name}"
                gm.add_submodule(name, AlignedAdd(torch.searchsorted(union, a), torch.searchsorted(union, b), len(union)))
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_module(name, (args[0], args[1]))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
                present[new.name] = union
            else:
                present[node.name] = present[args[0].name]
    gm.graph.lint()
    gm.recompile()
    return gm.eval()
