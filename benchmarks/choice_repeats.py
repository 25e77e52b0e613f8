"""How many timed pairs a choice needs for two processes to choose alike: the default run's
regroup tickets of the middle ticket round (engines chosen per conv, the choices most open to
noise), built `BUILDS` times per runtime with choices timed on `r` pairs for each r in
`REPEATS` (structlth.speedup.choice.Probe.repeats; the bench uses CHOICE_REPEATS), each build's
engines and its end-to-end time saving against the dense net (4 blocks of 15 pairs, batch 64).
Fewer distinct engine choices over the builds means choices that repeat.

Reads the workspace's params.yaml and artifacts (run `make repro` or `dvc pull` first).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.common import workspace
from structlth.pipeline import load_ticket
from structlth.speedup import choice
from structlth.speedup.bench import ticket_kind
from structlth.speedup.onnxrt import RUNTIMES, in_runtime, runtime_format
from structlth.speedup.timing import time_pair

REPEATS = (7, 21, 35)  # 7: the bench's choices before CHOICE_REPEATS (half of bench.repeats)
BUILDS = 4
LETTERS = {"Conv2d": "d", "GroupedConv": "g", "SubConv": "s"}  # the engine each masked conv runs in the build


def run() -> dict:
    ws = workspace()
    params, ds, x, dense, fmt = ws.params, ws.ds, ws.x, ws.dense, ws.fmt
    rnd = params.prune.ticket_rounds[len(params.prune.ticket_rounds) // 2]
    regroups = [m for m in params.methods if m != "imp" and ticket_kind(m, params) in choice.GROUP_KINDS]
    rows = []
    for method in regroups:
        model, masks = load_ticket(ws.ctx, Path("artifacts") / method / rnd)
        for runtime in RUNTIMES:
            run_fmt = runtime_format(runtime, fmt)
            xr = x.contiguous(memory_format=run_fmt)
            d = in_runtime(runtime, dense.to(memory_format=run_fmt), xr, params.bench.threads)
            for _ in range(BUILDS):
                for repeats in REPEATS:  # interleaved, so a drift in the machine's speed meets both alike
                    probe = choice.Probe(xr, run_fmt, repeats, 1, runtime, params.bench.threads)
                    fast = choice.fast_models(ticket_kind(method, params), model.eval(), masks, ds.in_channels, probe)["slim+blocks"]
                    f = in_runtime(runtime, fast.to(memory_format=run_fmt), xr, params.bench.threads)
                    t = time_pair(d, f, xr, params.bench.repeats, params.bench.warmup, blocks=params.bench.blocks)
                    modules = dict(fast.named_modules())
                    engines = "".join(LETTERS.get(type(modules.get(n.removesuffix(".weight"))).__name__, "-") for n in masks)
                    rows.append(
                        {"method": method, "round": rnd, "runtime": runtime, "repeats": repeats, "engines": engines}
                        | {"time_saving": t.saving, "ci95": t.ci95}
                    )
            print(method, runtime, flush=True)
    frame = pd.DataFrame(rows)
    by = frame.groupby(["runtime", "repeats", "method"])
    per_ticket = pd.DataFrame({"distinct": by["engines"].nunique(), "spread": by["time_saving"].agg(lambda s: s.max() - s.min())})
    summary = {
        f"{runtime} {repeats} pairs": {
            "distinct engine choices per ticket (mean)": round(float(g["distinct"].mean()), 2),
            "saving spread per ticket (mean)": round(float(g["spread"].mean()), 4),
        }
        for (runtime, repeats), g in per_ticket.groupby(level=["runtime", "repeats"])
    }
    return {"batch": len(x), "builds": BUILDS, "rows": rows, "summary": summary}
