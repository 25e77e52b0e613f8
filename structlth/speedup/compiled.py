"""torch.compile (inductor) as an engine in PyTorch: a fast model and its dense baseline compiled alike.

Inductor with freezing (weights become constants, convs are prepacked for the CPU's kernels)
fuses the slices, concats, gathers and ReLUs that the slim and blocks nets run between their
convs. Models come BN-folded (structlth.speedup.layout.fold_bn). Each model is specialised to
one input shape (dynamic=False), so it is compiled once per batch size, and the compile time
is measured and reported. Off by default (bench.compile): compiling takes tens of seconds per
model and batch size on a small CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

SUFFIX = "+compile"  # engine name of a compiled fast model: e.g. slim+compile


def compile_model(model: nn.Module, x: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """model (eval mode) compiled by inductor with freezing for inputs shaped like x [B, C, H, W]
    in x's memory format, and the seconds its first call (the compilation) took."""
    fn = torch.compile(model.eval(), backend="inductor", dynamic=False, options={"freezing": True})
    began = time.perf_counter()
    with torch.inference_mode():  # the grad mode every later call runs in (time_pair, verify)
        fn(x)
    return fn, time.perf_counter() - began
