"""Per-layer channel alignment on this machine: the multiple (8, 16 or 32) each slim conv of the
default run's channel-wise and group-wise tickets is padded to, in PyTorch and in ONNX Runtime,
chosen as the bench chooses it (structlth.speedup.choice.net_alignment at the largest bench
batch, in the dense net's faster memory format: per layer, unless one multiple for every conv
runs the whole net faster), beside the conv's live and dense channel counts.

Reads the workspace's params.yaml and artifacts (run `make repro` or `dvc pull` first).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from structlth.config import load_params
from structlth.data import load_dataset, normalize
from structlth.pipeline import Context, load_ticket
from structlth.speedup.bench import ticket_kind
from structlth.speedup.choice import CHANNEL_KINDS, GROUP_KINDS, Probe, fastest_format, net_alignment
from structlth.speedup.engines import round_up
from structlth.speedup.layout import fold_bn
from structlth.speedup.onnxrt import RUNTIMES, runtime_format
from structlth.speedup.slim import kept_channels


def run() -> dict:
    params = load_params("params.yaml")
    torch.set_num_threads(params.bench.threads)
    ds = load_dataset(Path("artifacts/data"))
    ctx = Context(params, ds, torch.device("cpu"))
    x = normalize(ds.test.head(max(params.bench.batch_sizes)), ds.mean, ds.std)
    dense = load_ticket(ctx, Path("artifacts/imp/round0"))[0]
    fmt = fastest_format(fold_bn(dense.eval()), x, 9, 2)
    structured = [m for m in params.methods if m != "imp" and ticket_kind(m, params) in CHANNEL_KINDS + GROUP_KINDS]
    rows = []
    for method in structured:
        for rnd in params.prune.ticket_rounds:
            model, masks = load_ticket(ctx, Path("artifacts") / method / rnd)
            live = kept_channels(model, masks, ds.in_channels)
            c_out = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
            for runtime in RUNTIMES:
                run_fmt = runtime_format(runtime, fmt)
                probe = Probe(x.contiguous(memory_format=run_fmt), run_fmt, 9, 2, runtime, params.bench.threads)
                choice = net_alignment(model.eval(), masks, ds.in_channels, probe)
                rows += [
                    {
                        "method": method,
                        "round": rnd,
                        "runtime": runtime,
                        "layer": n,
                        "live": len(live[n]),
                        "dense": c_out[n],
                        "align": a,
                        "channels": min(c_out[n], round_up(len(live[n]), a)),
                    }
                    for n, a in choice.items()
                ]
            print(method, rnd, flush=True)
    summary = {
        runtime: {f"align {a}": n for a, n in sorted(Counter(r["align"] for r in rows if r["runtime"] == runtime).items())}
        for runtime in RUNTIMES
    }
    return {"batch": len(x), "channels_last": fmt == torch.channels_last, "rows": rows, "summary": summary}
