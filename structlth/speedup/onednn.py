"""What oneDNN ran for a PyTorch call: its verbose log, read for each conv's kernel and the
output channels that kernel computes.

oneDNN stores a conv's weights with output channels in blocks (8, 16, 32 or 64, by ISA and
shape; the layout tag says which, e.g. `Acdb32a`: blocks of 32 on dim a, the outputs) and pads
the last block with zeros, so a conv keeping 40 outputs in blocks of 32 computes 64. That is
where a slim conv's time goes when its count is not a multiple of the block.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from structlth.speedup.engines import round_up


@dataclass(frozen=True)
class ConvCall:
    """One executed oneDNN convolution."""

    kernel: str  # oneDNN's implementation, e.g. 'brg_conv_fwd:avx512_core'
    weights: str  # the weights' layout tag, e.g. 'Acdb32a'
    groups: int
    out_channels: int
    kernel_channels: int  # output channels computed: out_channels with each block padded


def dim_block(tag: str, dim: str) -> int:
    """The block size of dimension `dim` ('a', 'b', ...) in a oneDNN layout tag: the product of
    its inner blocks ('ABcd16b16a', 'a' -> 16; 'aBdec32b', 'b' -> 32; 'abcd' -> 1)."""
    size = 1
    for n, d in re.findall(r"(\d+)([a-z])", tag):
        if d == dim:
            size *= int(n)
    return size


_CONV = re.compile(r"exec,cpu,convolution,([^,]+),[^,]*,(?:[^,]*\s)?wei:[^:]*:[^:]*:[^:]*:([A-Za-z0-9]+)")
_PROBLEM = re.compile(r"(?:^|,)(?:g(\d+))?mb\d+_ic\d+oc(\d+)_")


def parse_convs(log: str) -> list[ConvCall]:
    """The convolutions a oneDNN verbose log (v1 lines) executed, in order. Weights are [O, I, kh,
    kw] (dims a, b, ...) or, grouped, [G, O/G, I/G, kh, kw]: the computed outputs are the groups
    and each group's outputs, each rounded up to its block."""
    calls = []
    for line in log.splitlines():
        conv, problem = _CONV.search(line), _PROBLEM.search(line)
        if not (conv and problem):
            continue
        groups, out = int(problem.group(1) or 1), int(problem.group(2))
        tag = conv.group(2)
        if groups > 1:
            computed = round_up(groups, dim_block(tag, "a")) * round_up(out // groups, dim_block(tag, "b"))
        else:
            computed = round_up(out, dim_block(tag, "a"))
        calls.append(ConvCall(conv.group(1), tag, groups, out, computed))
    return calls


def verbose_log(fn: Callable[[], object]) -> str:
    """oneDNN's verbose log of one call of fn (empty where PyTorch runs no oneDNN). oneDNN writes
    it to the process's stdout, so file descriptor 1 is pointed at a temporary file meanwhile."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return f.read()


def conv_calls(module: nn.Module, x: torch.Tensor) -> list[ConvCall]:
    """The oneDNN convolutions one inference call module(x) runs (after one call unlogged, so
    that lazily built kernels are the ones timed); none where PyTorch was built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return []
    with torch.no_grad():
        module(x)
        return parse_convs(verbose_log(lambda: module(x)))


def kernel_channels(module: nn.Module, x: torch.Tensor) -> int | None:
    """The output channels oneDNN computes for module(x), summed over its convs (block padding
    included); None where it runs no conv."""
    return sum(c.kernel_channels for c in conv_calls(module, x)) or None
