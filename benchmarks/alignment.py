"""Channel alignment on this machine, for the default run's channel-wise and group-wise tickets,
in PyTorch and in ONNX Runtime, at the largest bench batch, in the dense net's faster memory
format:

- rows: the multiple (8, 16 or 32) each slim conv is padded to, chosen as the bench chooses it
  (structlth.speedup.choice.net_alignment: per layer, unless one multiple for every conv runs
  the whole net faster), beside the conv's live and dense channel counts;
- nets (channel-wise tickets, whose slim net is the fast model): each net net_alignment races
  (the per-layer choice, and one multiple for every conv), timed end to end against the dense
  net like a bench row (time saving, its 95% half-width, time saving / FLOP saving), and
  whether net_alignment, run afresh, picked it.

Reads the workspace's params.yaml and artifacts (run `make repro` or `dvc pull` first).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from benchmarks.common import workspace
from structlth.artifacts import read_json
from structlth.rounds import load_ticket
from structlth.speedup.choice import (
    ALIGNS,
    Probe,
    alignment_candidates,
    choose_alignment,
    conv_widths,
    net_alignment,
)
from structlth.speedup.engines import round_up
from structlth.speedup.onnxrt import RUNTIMES, in_runtime, runtime_format
from structlth.speedup.slim import kept_channels, slim_model
from structlth.speedup.timing import time_pair


def _nets(model, masks, in_channels: int, dense, probe: Probe, bench, flops_saving: float, picked: dict) -> list[dict]:
    """The end-to-end rows of the nets net_alignment races (see the module docstring)."""
    per_layer = choose_alignment(model, masks, in_channels, probe)
    d = in_runtime(probe.runtime, dense, probe.x, bench.threads)
    picked_widths = conv_widths(slim_model(model, masks, in_channels, picked))
    rows = []

    def names(align: dict) -> list[str]:
        return ["per layer"] * (align == per_layer) + [f"all {a}" for a in ALIGNS if align == dict.fromkeys(per_layer, a)]

    for align, slim in alignment_candidates(model, masks, in_channels, per_layer):
        widths = conv_widths(slim)
        t = time_pair(d, probe.runner(slim, probe.x), probe.x, bench.repeats, bench.warmup, blocks=bench.blocks)
        rows.append(
            {
                "net": " = ".join(names(align)),  # e.g. "per layer = all 8" where the per-layer choice is 8 everywhere
                "aligns": sorted(set(align.values())),
                "width": sum(widths),
                "time_saving": t.saving,
                "ci95": t.ci95,
                "time_per_flop_saving": t.saving / flops_saving,
                "picked": widths == picked_widths,  # the same net
            }
        )
    return rows


def run(smoke: bool = False) -> dict:
    ws = workspace()  # a smoke run's workspace is tiny already
    params, ds, x, dense, fmt = ws.params, ws.ds, ws.x, ws.dense, ws.fmt
    structured = [m for m in params.methods if m != "imp" and params.structure_of(m) != "unstructured"]
    if smoke:  # the first method of each structure
        structured = [m for i, m in enumerate(structured) if params.structure_of(m) not in map(params.structure_of, structured[:i])]
    rows, nets = [], []
    for method in structured:
        for rnd in params.prune.ticket_rounds:
            d = Path("artifacts") / method / rnd
            model, masks = load_ticket(ws.ctx, d)
            model = model.eval()
            live = kept_channels(model, masks, ds.in_channels)
            c_out = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
            for runtime in RUNTIMES:
                run_fmt = runtime_format(runtime, fmt)
                probe = Probe(x.contiguous(memory_format=run_fmt), run_fmt, runtime=runtime, threads=params.bench.threads)
                choice = net_alignment(model, masks, ds.in_channels, probe)
                case = {"method": method, "round": rnd, "runtime": runtime}
                rows += [
                    {
                        **case,
                        "layer": n,
                        "live": len(live[n]),
                        "dense": c_out[n],
                        "align": a,
                        "channels": min(c_out[n], round_up(len(live[n]), a)),
                    }
                    for n, a in choice.items()
                ]
                if params.structure_of(method) == "channel":
                    metrics = read_json(d / "metrics.json")
                    flops_saving = 1 - metrics["flops"] / metrics["flops_dense"]
                    raced = _nets(model, masks, ds.in_channels, dense.to(memory_format=run_fmt), probe, params.bench, flops_saving, choice)
                    nets += [{**case, **r} for r in raced]
            print(method, rnd, flush=True)
    summary = {}
    for runtime in RUNTIMES:
        summary[runtime] = {f"align {a}": n for a, n in sorted(Counter(r["align"] for r in rows if r["runtime"] == runtime).items())}
        raced = pd.DataFrame([r for r in nets if r["runtime"] == runtime])
        if len(raced):  # median time/FLOP saving of each raced net, and of the nets picked
            medians = raced.assign(net=raced["net"].str.split(" = ")).explode("net").groupby("net")["time_per_flop_saving"].median()
            summary[runtime] |= {f"median time/FLOP saving, {net}": round(float(v), 3) for net, v in medians.items()}
            summary[runtime]["median time/FLOP saving, picked"] = round(float(raced[raced["picked"]]["time_per_flop_saving"].median()), 3)
    return {"batch": len(x), "channels_last": fmt == torch.channels_last, "rows": rows, "nets": nets, "summary": summary}
