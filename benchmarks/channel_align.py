"""Why `channel_align`: time of one 3x3 conv against its channel count on this CPU.

A conv c -> c (batch 64, 14x14, the default model's middle layers; BN folded, so bias on),
c = 8..64, in the faster memory format per c. oneDNN computes channels in blocks (8 or 16 for
fp32): a step at the block size means c channels cost what the next multiple costs, and the
smallest align at which the time per channel flattens is the default `channel_align`.

`outputs`: the output count alone, as a slim layer drops output channels of a fixed input:
convs 64 -> c on 7x7 maps and 128 -> c on 3x3 maps (the default's deeper layers, batch 64),
c = 8..128 (at most the dense layer's), each in the faster memory format. The summary's
`outputs_cost_over_next_power_of_two` (median over counts that are not a power of two) says
whether c outputs cost what the next power of two costs (about 1) or what their FLOPs say
(`outputs_flops_over_next_power_of_two`). Every row also names the output channels oneDNN
computes for it in each format (`*_kernel_channels`, from its verbose log: the count rounded up
to the weights' output block); `outputs_cost_over_kernel_count` (median over the counts it pads)
says whether c outputs cost what that padded count costs (about 1).
"""

from __future__ import annotations

import torch
from torch import nn

from structlth.speedup.onednn import kernel_channels
from structlth.speedup.timing import median, time_pair


def _both_formats(c_in: int, c_out: int, batch: int, side: int, repeats: int) -> dict:
    """ms of one 3x3 conv c_in -> c_out on [batch, c_in, side, side], contiguous and channels_last
    (median of `repeats` pairs), and the output channels oneDNN computes in each."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    x = torch.randn(batch, c_in, side, side)
    cl = nn.Conv2d(c_in, c_out, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    t = time_pair(conv, cl, x, repeats, 3, x_cl)
    best = "contiguous" if t.t_dense_ms <= t.t_ticket_ms else "channels_last"
    kernel = {"contiguous": kernel_channels(conv, x), "channels_last": kernel_channels(cl, x_cl)}
    return {
        "contiguous_ms": t.t_dense_ms,
        "channels_last_ms": t.t_ticket_ms,
        "best_ms": min(t.t_dense_ms, t.t_ticket_ms),
        "contiguous_kernel_channels": kernel["contiguous"],
        "channels_last_kernel_channels": kernel["channels_last"],
        "best_kernel_channels": kernel[best],
    }


def _next_power_of_two(c: int) -> int:
    return 1 << (c - 1).bit_length()


def run(smoke: bool = False) -> dict:
    batch, side, repeats = (4, 14, 2) if smoke else (64, 14, 15)
    channels = range(8, 25, 4) if smoke else range(8, 65, 4)
    layers = ((32, 7, 32),) if smoke else ((64, 7, 64), (128, 3, 128))  # (c_in, side, dense c_out)
    rows = [{"channels": c, **_both_formats(c, c, batch, side, repeats)} for c in channels]
    outputs = [
        {"c_in": c_in, "side": s, "c_out": c, **_both_formats(c_in, c, batch, s, repeats)}
        for c_in, s, dense in layers
        for c in range(8, dense + 1, 8)
    ]
    out_ms = {(r["c_in"], r["c_out"]): r["best_ms"] for r in outputs}
    # (c_in, c_out, the count oneDNN computes) where it computes more than c_out
    padded = [(r["c_in"], r["c_out"], r["best_kernel_channels"]) for r in outputs if (r["best_kernel_channels"] or 0) > r["c_out"]]
    over_padded = [out_ms[k, c] / out_ms[k, p] for k, c, p in padded if (k, p) in out_ms]
    odd = [(k, c) for k, c in out_ms if c != _next_power_of_two(c)]
    by_c = {r["channels"]: r["best_ms"] for r in rows}
    # cost of the odd counts relative to the next multiple of 8 and 16: ~1 means they cost the same
    ratio = lambda a: median([by_c[c] / by_c[-(-c // a) * a] for c in by_c if c % a and -(-c // a) * a in by_c])  # noqa: E731
    return {
        "batch": batch,
        "side": side,
        "rows": rows,
        "outputs": outputs,
        "summary": {
            "odd_over_next_multiple_of_8": ratio(8),
            "odd_over_next_multiple_of_16": ratio(16),
            "outputs_cost_over_next_power_of_two": median([out_ms[k, c] / out_ms[k, _next_power_of_two(c)] for k, c in odd]),
            "outputs_flops_over_next_power_of_two": median([c / _next_power_of_two(c) for _, c in odd]),
            "outputs_padded_by_onednn": len(padded),
            "outputs_cost_over_kernel_count": median(over_padded) if over_padded else None,
        },
    }
