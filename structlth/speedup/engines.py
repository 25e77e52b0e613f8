"""Per-layer inference engines for block-structured masked convs, and model builders.

A masked conv [C_out, C_in, kh, kw] (bias allowed: BN folded in) can run as:
- `dense`   : the ordinary conv with zeros in its weight (no saving; the reference);
- `grouped` : rows grouped by identical mask pattern (regroup blocks); one input gather plus
              one grouped conv runs every block at once (blocks padded to equal, aligned sizes);
- `subconv` : one dense conv per block over just the input channels its columns touch;
- `csr`     : im2col + a torch sparse CSR matmul of the whole masked weight (the unstructured
              baseline).
Outputs come back in channel order, except where `structlth.speedup.layout` lets a grouped
conv hand its block order on to the next layer.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from structlth.masks import apply_masks, training_masks

MAX_GROUPS = 64  # beyond this a layer is effectively unstructured: block engines are not tried
ALIGN = 8  # grouped engine: block rows and input channels padded to a multiple (oneDNN's fp32 channel block is 8 or 16)


def row_groups(mask: torch.Tensor) -> list[torch.Tensor]:
    """Rows [C_out] grouped by identical mask pattern, empty rows left out; sorted, deterministic."""
    flat = mask.flatten(1).bool()
    live = torch.nonzero(flat.any(1)).flatten()
    if len(live) == 0:
        return []
    _, inverse = torch.unique(flat[live], dim=0, return_inverse=True)
    groups = [live[inverse == g] for g in range(int(inverse.max()) + 1)]
    return sorted(groups, key=lambda g: int(g[0]))


def is_channels_last(x: torch.Tensor) -> bool:
    """x [B, C, H, W] is laid out channels_last (and not also contiguous, as when C or H*W is 1)."""
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def take_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[:, index] for x [B, C, H, W]: advanced indexing on channels_last tensors (3-4x faster
    there than index_select, measured at 64-256 channels, batch 64), index_select otherwise."""
    if is_channels_last(x):
        return x[:, index]
    return x.index_select(1, index)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def _check_plain(conv: nn.Conv2d, engine: str) -> None:
    if conv.groups != 1:
        raise NotImplementedError(f"{engine} engine takes plain convs (groups=1), not grouped or depthwise ones")


class Reorder(nn.Module):
    """Channels back in order: out[:, c] = x[:, index[c]] ([B, P, H, W] -> [B, C, H, W]).

    index[c] = P points at an appended zero channel (a row no block holds).
    """

    def __init__(self, layout: torch.Tensor, channels: int) -> None:
        super().__init__()
        pad = torch.nonzero(layout < 0).flatten()
        index = torch.full((channels,), int(pad[0]) if len(pad) else len(layout), dtype=torch.long)
        live = layout >= 0
        index[layout[live]] = torch.nonzero(live).flatten()
        self.register_buffer("index", index)
        self.append_zero = bool((index == len(layout)).any())
        self.identity = len(layout) == channels and torch.equal(index, torch.arange(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.append_zero:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)
        return take_channels(x, self.index)


def round_up(n: int, align: int) -> int:
    """The smallest multiple of align that is >= n."""
    return -(-n // align) * align


class GroupedConv(nn.Module):
    """Every block of a block mask as one input gather + one grouped conv.

    Block g has rows R_g (identical mask pattern) and reads the input channels I_g that pattern
    touches. Blocks are padded to r = round_up(max |R_g|, align) rows and c = round_up(max |I_g|,
    align) input channels (capped at C_in): padded rows have zero weight and bias, so their output
    is exactly 0; padded inputs repeat a real channel under zero weights. Output position g*r + i
    holds channel R_g[i]: `layout` [k*r] names the channel at each position (-1: padding).
    forward: [B, C_in, H, W] -> [B, C_out, H', W'] in channel order, or [B, k*r, H', W'] in
    block order once `restore` is switched off by the layout pass.
    """

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor, align: int = ALIGN) -> None:
        super().__init__()
        _check_plain(conv, "grouped")
        groups = row_groups(mask)
        if not groups:
            raise ValueError("grouped engine: the layer has no live row")
        chans = [torch.nonzero(mask[g[0]].flatten(1).any(1)).flatten() for g in groups]
        k = len(groups)
        r = round_up(max(len(g) for g in groups), align)
        c = min(round_up(max(len(ch) for ch in chans), align), conv.in_channels)
        w, b = conv.weight.detach() * mask, _bias(conv)
        self.conv = nn.Conv2d(k * c, k * r, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=k)
        weight, bias = torch.zeros_like(self.conv.weight), torch.zeros(k * r)
        gather = torch.empty(k * c, dtype=torch.long)
        layout = torch.full((k * r,), -1, dtype=torch.long)
        for i, (g, ch) in enumerate(zip(groups, chans)):
            weight[i * r : i * r + len(g), : len(ch)] = w[g][:, ch]
            bias[i * r : i * r + len(g)] = b[g]
            gather[i * c : (i + 1) * c] = torch.cat([ch, ch[:1].expand(c - len(ch))])
            layout[i * r : i * r + len(g)] = g
        self.conv.weight.data.copy_(weight)
        self.conv.bias.data.copy_(bias)
        self.register_buffer("gather", gather)
        self.register_buffer("layout", layout)
        self.reorder = Reorder(layout, conv.out_channels)
        self.restore = True
        self.skip_gather = torch.equal(gather, torch.arange(conv.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x if self.skip_gather else take_channels(x, self.gather))
        return self.reorder(y) if self.restore else y


class _Grouped(nn.Module):
    """Shared plumbing: groups of output rows, and placing their outputs in channel order."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        _check_plain(conv, type(self).__name__)
        self.c_out = conv.out_channels
        self.groups = row_groups(mask)
        layout = torch.cat(self.groups) if self.groups else torch.zeros(0, dtype=torch.long)
        self.reorder = Reorder(layout, self.c_out)


class SubConv(_Grouped):
    """One dense sub-conv per row group over the input channels the group's columns touch."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__(conv, mask)
        w = conv.weight.detach() * mask
        self.convs = nn.ModuleList()
        chans = []
        for g in self.groups:
            ch = torch.nonzero(mask[g[0]].flatten(1).any(1)).flatten()
            sub = nn.Conv2d(len(ch), len(g), conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            sub.weight.data.copy_(w[g][:, ch])
            sub.bias.data.copy_(_bias(conv)[g])
            self.convs.append(sub)
            chans.append(ch)
        for i, c in enumerate(chans):
            self.register_buffer(f"ch{i}", c)
        self.spec = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [conv(take_channels(x, getattr(self, f"ch{i}"))) for i, conv in enumerate(self.convs)]
        if not parts:
            k, s, p, d = self.spec
            h = (x.shape[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
            w = (x.shape[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            return x.new_zeros(x.shape[0], self.c_out, h, w)
        return self.reorder(torch.cat(parts, 1))


def _im2col(x: torch.Tensor, k, s, p, d) -> tuple[torch.Tensor, int, int]:
    """Columns [B, C_in*kh*kw, H_out*W_out] of x [B, C_in, H, W] for a conv, and H_out, W_out."""
    h = (x.shape[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    w = (x.shape[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return F.unfold(x, k, d, p, s), h, w


class CsrConv(nn.Module):
    """im2col + sparse CSR matmul of the masked weight [C_out, n]."""

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        _check_plain(conv, "csr")
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = (conv.weight.detach() * mask).flatten(1).to_sparse_csr()
        self.register_buffer("bias", _bias(conv).view(1, -1, 1, 1))
        self.c_out = conv.out_channels
        self.k, self.s, self.p, self.d = conv.kernel_size, conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cols, h, w = _im2col(x, self.k, self.s, self.p, self.d)
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [n, B*L]
        out = torch.sparse.mm(self.weight, flat)  # [C_out, B*L]
        return out.view(self.c_out, b, h * w).transpose(0, 1).reshape(b, self.c_out, h, w) + self.bias


ENGINES = {"grouped": GroupedConv, "subconv": SubConv, "csr": CsrConv}


def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, dead_bn: bool = True) -> nn.Module:
    """The masked dense model in eval mode, masked as it trained (dead_bn: structlth.masks.training_masks):
    what every fast path must equal."""
    ref = copy.deepcopy(model).cpu().eval()
    apply_masks(ref, training_masks(ref, masks, in_channels, dead_bn))
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
    return ["dense"] + (["grouped", "subconv"] if 0 < n_groups <= MAX_GROUPS else [])
