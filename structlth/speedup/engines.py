"""Per-layer inference engines for masked convs, and whole-model builders.

A masked conv [C_out, C_in, kh, kw] can run as:
- `dense`   : the ordinary conv with zeros in its weight (no saving; the reference);
- `subconv` : rows grouped by identical mask pattern (regroup blocks); each group is one
              dense conv over just the input channels its columns touch (oneDNN / cuDNN do
              the work), outputs placed back by one index_select;
- `gemm`    : im2col (F.unfold) + one dense GEMM per group over its own columns;
- `csr`     : im2col + a torch sparse CSR matmul of the whole masked weight.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from structlth.masks import apply_masks, training_masks

MAX_GROUPS = 64  # beyond this a layer is effectively unstructured: subconv/gemm are not tried


def row_groups(mask: torch.Tensor) -> list[torch.Tensor]:
    """Rows [C_out] grouped by identical mask pattern, empty rows left out; sorted, deterministic."""
    flat = mask.flatten(1).bool()
    live = torch.nonzero(flat.any(1)).flatten()
    if len(live) == 0:
        return []
    _, inverse = torch.unique(flat[live], dim=0, return_inverse=True)
    groups = [live[inverse == g] for g in range(int(inverse.max()) + 1)]
    return sorted(groups, key=lambda g: int(g[0]))


class _Grouped(nn.Module):
    """Shared plumbing: groups of output rows, and placing their outputs in channel order."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.bias is not None:
            raise NotImplementedError("group engines take plain bias-free convs")
        self.c_out = conv.out_channels
        self.groups = row_groups(mask)
        order = torch.full((self.c_out,), -1, dtype=torch.long)
        pos = 0
        for g in self.groups:
            order[g] = torch.arange(pos, pos + len(g))
            pos += len(g)
        order[order < 0] = pos  # dead rows read an appended zero channel
        self.register_buffer("order", order)
        self.n_live = pos

    def place(self, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        b, _, h, w = parts[0].shape if parts else like.shape
        if self.n_live == self.c_out:
            out = torch.cat(parts, 1)
            return out if bool((self.order == torch.arange(self.c_out)).all()) else out.index_select(1, self.order)
        zero = like.new_zeros(b, 1, h, w)
        return torch.cat([*parts, zero], 1).index_select(1, self.order)


class SubConv(_Grouped):
    """One dense sub-conv per row group over the input channels the group's columns touch."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__(conv, mask)
        w = conv.weight.detach() * mask
        self.convs = nn.ModuleList()
        chans = []
        for g in self.groups:
            ch = torch.nonzero(mask[g[0]].flatten(1).any(1)).flatten()
            sub = nn.Conv2d(len(ch), len(g), conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)
            sub.weight.data.copy_(w[g][:, ch])
            self.convs.append(sub)
            chans.append(ch)
        for i, c in enumerate(chans):
            self.register_buffer(f"ch{i}", c)
        self.spec = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [conv(x.index_select(1, getattr(self, f"ch{i}"))) for i, conv in enumerate(self.convs)]
        if not parts:
            k, s, p, d = self.spec
            h = (x.shape[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
            w = (x.shape[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            return x.new_zeros(x.shape[0], self.c_out, h, w)
        return self.place(parts, x)


def _im2col(x: torch.Tensor, k, s, p, d) -> tuple[torch.Tensor, int, int]:
    """Columns [B, C_in*kh*kw, H_out*W_out] of x [B, C_in, H, W] for a conv, and H_out, W_out."""
    h = (x.shape[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    w = (x.shape[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return F.unfold(x, k, d, p, s), h, w


class GemmConv(_Grouped):
    """im2col once, then one dense GEMM per row group over its own columns."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__(conv, mask)
        w = (conv.weight.detach() * mask).flatten(1)
        self.weights = nn.ParameterList()
        for i, g in enumerate(self.groups):
            cols = torch.nonzero(mask[g[0]].flatten()).flatten()
            self.register_buffer(f"cols{i}", cols)
            self.weights.append(nn.Parameter(w[g][:, cols].contiguous(), requires_grad=False))
        self.k, self.s, self.p, self.d = conv.kernel_size, conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cols, h, w = _im2col(x, self.k, self.s, self.p, self.d)
        parts = [
            torch.matmul(wt, cols.index_select(1, getattr(self, f"cols{i}"))).view(b, -1, h, w)
            for i, wt in enumerate(self.weights)
        ]
        if not parts:
            return x.new_zeros(b, self.c_out, h, w)
        return self.place(parts, x)


class CsrConv(nn.Module):
    """im2col + sparse CSR matmul of the masked weight [C_out, n]."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.bias is not None:
            raise NotImplementedError("csr engine takes plain bias-free convs")
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = (conv.weight.detach() * mask).flatten(1).to_sparse_csr()
        self.c_out = conv.out_channels
        self.k, self.s, self.p, self.d = conv.kernel_size, conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cols, h, w = _im2col(x, self.k, self.s, self.p, self.d)
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [n, B*L]
        out = torch.sparse.mm(self.weight, flat)  # [C_out, B*L]
        return out.view(self.c_out, b, h * w).transpose(0, 1).reshape(b, self.c_out, h, w)


ENGINES = {"subconv": SubConv, "gemm": GemmConv, "csr": CsrConv}


def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> nn.Module:
    """The masked dense model in eval mode: what every fast path must equal."""
    ref = copy.deepcopy(model).cpu().eval()
    apply_masks(ref, training_masks(ref, masks, in_channels))
    return ref


def swap_convs(reference: nn.Module, masks: Mapping[str, torch.Tensor], choice: Mapping[str, str]) -> nn.Module:
    """Copy of `reference` with conv `name` replaced by engine choice[name] (others stay dense)."""
    model = copy.deepcopy(reference)
    for name, engine in choice.items():
        if engine == "dense":
            continue
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        conv = getattr(holder, leaf)
        setattr(holder, leaf, ENGINES[engine](conv, masks[f"{name}.weight"].bool()))
    return model.eval()


def engine_candidates(mask: torch.Tensor) -> list[str]:
    """Engines worth timing for one layer's mask."""
    if mask.ndim != 4:
        return ["dense"]
    n_groups = len(row_groups(mask))
    return ["dense", "csr"] + (["subconv", "gemm"] if n_groups <= MAX_GROUPS else [])
