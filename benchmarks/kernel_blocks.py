"""What oneDNN's output-block padding costs the default run's channel-wise tickets, in PyTorch.

oneDNN computes a conv's outputs in blocks and pads the last one (structlth.speedup.onednn). For
each channel-wise ticket this times two nets against the dense net, in the dense net's faster
memory format, at the largest bench batch, like a bench row:

- `as kept`: the ticket's slim net (alignment 8);
- `block multiples`: a net of the same model whose every conv keeps its count rounded to the
  nearest multiple of the output block oneDNN picked for that conv in the slim net (at least one
  block, at most the dense width). It is not a ticket (no one trained it), only the same shapes
  with no padding for oneDNN to add: its time saving over its own FLOP saving is what the
  ticket's would be if its counts fitted the kernel.

Each row carries the output channels oneDNN computed per channel the net carries; the summary
counts the tickets whose `block multiples` net turns more of its FLOP saving into time, with a
sign test over them. Reads the workspace's params.yaml and artifacts (run `make repro` or
`dvc pull` first).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from benchmarks.common import workspace
from structlth.masks import effective_flops
from structlth.rounds import load_ticket
from structlth.speedup.layout import fold_bn
from structlth.speedup.onednn import conv_calls, dim_block
from structlth.speedup.slim import kept_channels, slim_model
from structlth.speedup.timing import conv_inputs, median, time_pair
from structlth.stats import sign_test


def _blocks(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int, int]]:
    """Per conv of `net` that oneDNN runs, in execution order: (channels it carries, channels
    oneDNN computes, oneDNN's output block)."""
    mods = dict(net.named_modules())
    out = {}
    for name, inp in conv_inputs(net, x).items():
        calls = conv_calls(mods[name], inp)
        if calls:
            out[name] = (mods[name].out_channels, calls[0].kernel_channels, dim_block(calls[0].weights, "a"))
    return out


def _block_multiples(masks: dict[str, torch.Tensor], kept: dict[str, list[int]], blocks: dict) -> dict[str, torch.Tensor]:
    """Row masks keeping each conv's first k channels, k its kept count rounded to the nearest
    multiple of its oneDNN block (at least one block, at most all); other masks as they are."""
    out = dict(masks)
    for name, mask in masks.items():
        conv = name.removesuffix(".weight")
        if conv not in blocks:
            continue
        block, c_out = blocks[conv][2], mask.shape[0]
        k = min(c_out, max(block, round(len(kept[conv]) / block) * block))
        rows = torch.arange(c_out) < k
        out[name] = rows.view(-1, *([1] * (mask.ndim - 1))).expand(mask.shape).clone()
    return out


def run(smoke: bool = False) -> dict:
    ws = workspace()  # a smoke run's workspace is tiny already
    params, x, fmt = ws.params, ws.x.contiguous(memory_format=ws.fmt), ws.fmt
    dense = ws.dense.to(memory_format=fmt)
    shape = (1, *ws.x.shape[1:])
    bench = params.bench
    rows = []
    for method in [m for m in params.methods if m != "imp" and params.structure_of(m) == "channel"]:
        for rnd in params.prune.ticket_rounds:
            model, masks = load_ticket(ws.ctx, Path("artifacts") / method / rnd)
            model = model.eval()
            slim = fold_bn(slim_model(model, masks, ws.ds.in_channels, 8)).eval().to(memory_format=fmt)
            blocks = _blocks(slim, x)
            kept = kept_channels(model, masks, ws.ds.in_channels)
            rounded = _block_multiples(masks, kept, blocks)
            whole = fold_bn(slim_model(model, rounded, ws.ds.in_channels, 8)).eval().to(memory_format=fmt)
            for net, net_masks, fast in (("as kept", masks, slim), ("block multiples", rounded, whole)):
                used = blocks if fast is slim else _blocks(fast, x)
                dense_flops, flops = effective_flops(model, net_masks, shape)
                flops_saving = 1 - flops / dense_flops
                t = time_pair(dense, fast, x, bench.repeats, bench.warmup, blocks=bench.blocks)
                rows.append(
                    {
                        "method": method,
                        "round": rnd,
                        "net": net,
                        "widths": [c for c, _, _ in used.values()],
                        "flops_saving": flops_saving,
                        "time_saving": t.saving,
                        "ci95": t.ci95,
                        "time_per_flop_saving": t.saving / flops_saving if flops_saving > 0 else None,  # no FLOP saving: none
                        "kernel_channels_per_channel": sum(c for _, c, _ in used.values()) / sum(c for c, _, _ in used.values()),
                    }
                )
            print(method, rnd, flush=True)
    pairs = [(a["time_per_flop_saving"], b["time_per_flop_saving"]) for a, b in zip(rows[::2], rows[1::2])]  # as kept, block multiples
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    higher = sum(b > a for a, b in pairs)
    summary = {
        "tickets where block multiples turn more of their FLOP saving into time": f"{higher} of {len(pairs)}",
        "sign test p": sign_test(higher, len(pairs) - higher),
    } | {
        net: {
            "median time/FLOP saving": median(v)
            if (v := [r["time_per_flop_saving"] for r in rows if r["net"] == net and r["time_per_flop_saving"] is not None])
            else None,
            "median kernel channels per channel": median([r["kernel_channels_per_channel"] for r in rows if r["net"] == net]),
        }
        for net in ("as kept", "block multiples")
    }
    return {"batch": len(x), "channels_last": fmt == torch.channels_last, "rows": rows, "summary": summary}
