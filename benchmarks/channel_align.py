"""Why `channel_align`: time of one 3x3 conv against its channel count on this CPU.

A conv c -> c (batch 64, 14x14, the default model's middle layers; BN folded, so bias on),
c = 8..64, in the faster memory format per c. oneDNN computes channels in blocks (8 or 16 for
fp32): a step at the block size means c channels cost what the next multiple costs, and the
smallest align at which the time per channel flattens is the default `channel_align`.
"""

from __future__ import annotations

import torch
from torch import nn

from structlth.speedup.timing import median, time_pair


def run(batch: int = 64, side: int = 14, channels=tuple(range(8, 65, 4))) -> dict:
    rows = []
    for c in channels:
        conv = nn.Conv2d(c, c, 3, padding=1).eval()
        x = torch.randn(batch, c, side, side)
        cl = nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
        t = time_pair(conv, cl, x, 15, 3, x.contiguous(memory_format=torch.channels_last))
        rows.append(
            {"channels": c, "contiguous_ms": t.t_dense_ms, "channels_last_ms": t.t_ticket_ms, "best_ms": min(t.t_dense_ms, t.t_ticket_ms)}
        )
    by_c = {r["channels"]: r["best_ms"] for r in rows}
    # cost of the odd counts relative to the next multiple of 8 and 16: ~1 means they cost the same
    ratio = lambda a: median([by_c[c] / by_c[-(-c // a) * a] for c in by_c if c % a and -(-c // a) * a in by_c])  # noqa: E731
    return {
        "batch": batch,
        "side": side,
        "rows": rows,
        "summary": {"odd_over_next_multiple_of_8": ratio(8), "odd_over_next_multiple_of_16": ratio(16)},
    }
