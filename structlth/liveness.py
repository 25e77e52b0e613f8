"""Which channels of every tensor in a masked network can be non-zero (channel liveness).

A conv output channel is *dead* when none of its surviving weights reads a live input channel:
its pre-BN value is exactly 0. structlth's masked semantics also zero the BN scale and shift of
dead channels, so a dead channel stays exactly 0 through BN, ReLU, pooling and residual adds.
This is what lets `speedup.slim` drop dead channels and still equal the masked model bit for
bit (up to float summation order). The same analysis gives the BN masks used in training.

Works on torch.fx traces of the registry's models: convs (dense, depthwise), BN, elementwise
ops, residual `add`, pooling, flatten and the final linear layer.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

ADD_OPS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True)
class Liveness:
    """Per module name: live input and output channels as bool vectors."""

    graph: fx.GraphModule
    node_alive: dict[str, torch.Tensor]  # fx node name -> bool [C] of that tensor
    module_in: dict[str, torch.Tensor]  # module name -> bool [C_in] of its input
    module_out: dict[str, torch.Tensor]  # module name -> bool [C_out] of its output


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.symbolic_trace(model)


def conv_alive_out(conv: nn.Conv2d, weight_mask: torch.Tensor | None, alive_in: torch.Tensor) -> torch.Tensor:
    """bool [C_out]: output channels with a surviving weight on a live input channel.

    weight_mask: [C_out, C_in/groups, kh, kw] (None: all weights kept); alive_in: bool [C_in].
    """
    if conv.bias is not None:
        return torch.ones(conv.out_channels, dtype=torch.bool)
    w = conv.weight if weight_mask is None else weight_mask
    reads = w.detach().flatten(2).ne(0).any(2)  # [C_out, C_in/g]
    g = conv.groups
    per_group_in = alive_in.view(g, -1)  # [g, C_in/g]
    group_of_out = torch.arange(conv.out_channels) // (conv.out_channels // g)
    return (reads & per_group_in[group_of_out]).any(1)


def liveness(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> Liveness:
    """Propagate live channels through the traced model; masks: param name -> weight mask."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    alive: dict[str, torch.Tensor] = {}
    m_in: dict[str, torch.Tensor] = {}
    m_out: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node) and a.name in alive]
        if node.op == "placeholder":
            alive[node.name] = torch.ones(in_channels, dtype=torch.bool)
        elif node.op == "call_module":
            mod = modules[node.target]
            a_in = alive[args[0].name]
            m_in[node.target] = a_in
            if isinstance(mod, nn.Conv2d):
                out = conv_alive_out(mod, masks.get(f"{node.target}.weight"), a_in)
            elif isinstance(mod, nn.Linear):
                out = torch.ones(mod.out_features, dtype=torch.bool)
            else:  # BN, ReLU, pooling, Identity, Sequential-free leaves: channel-wise ops
                out = a_in
            m_out[node.target] = out
            alive[node.name] = out
        elif node.op in ("call_function", "call_method"):
            if node.target in ADD_OPS and len(args) == 2:
                alive[node.name] = alive[args[0].name] | alive[args[1].name]
            elif args:
                alive[node.name] = alive[args[0].name]
        elif node.op == "output":
            pass
    return Liveness(gm, alive, m_in, m_out)


def bn_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Masks for BN weight and bias of dead channels: bool [C] per BN param, only where needed."""
    live = liveness(model, masks, in_channels)
    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d) and name in live.module_in:
            a = live.module_in[name]
            if not bool(a.all()):
                out[f"{name}.weight"] = a.clone()
                out[f"{name}.bias"] = a.clone()
    return out
