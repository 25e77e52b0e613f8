"""How many timed pairs a choice needs for two processes to choose alike, and what its early
stop saves: the default run's regroup tickets of the middle ticket round (engines chosen per
conv, the choices most open to noise), built `BUILDS` times per runtime for each (pairs, early
stop) in `CHOICES` (structlth.speedup.choice.Probe.repeats and .alpha; the bench uses
CHOICE_REPEATS and CHOICE_ALPHA), each build's engines, its choice seconds and its end-to-end
time saving against the dense net (4 blocks of 15 pairs, batch 64). Fewer distinct engine
choices over the builds means choices that repeat. The `audit` builds each ticket `AUDITS` more
times per runtime with every choice timed on all its pairs while the early stop only watches:
how many choices it would have stopped, after how many pairs, and whether the decision there
(ratio of medians against the bar) is the one all the pairs give.

Reads the workspace's params.yaml and artifacts (run `make repro` or `dvc pull` first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pandas as pd

from benchmarks.common import workspace
from structlth.rounds import load_ticket
from structlth.speedup import choice
from structlth.speedup.onnxrt import RUNTIMES, in_runtime, runtime_format
from structlth.speedup.timing import median, settled_side, time_pair

CHOICES = ((7, None), (21, None), (choice.CHOICE_REPEATS, choice.CHOICE_ALPHA))  # 7: the bench's before (half of bench.repeats)
BUILDS = 4
AUDITS = 2
LETTERS = {"Conv2d": "d", "GroupedConv": "g", "SubConv": "s"}  # the engine each masked conv runs in the build


def audited(build: Callable[[], object]) -> list[dict]:
    """Per choice against a bar that build() makes (with CHOICE_REPEATS pairs and CHOICE_ALPHA),
    timed on all its pairs: the pairs after which the early stop would have ended it (None:
    never) and whether its decision there equals the decision on all the pairs."""
    watched = []

    def watching(bar: float, alpha: float):
        rule, entry = settled_side(bar, alpha), {"bar": bar, "stop": None}
        watched.append(entry)

        def settled(td, tf) -> bool:
            entry["td"], entry["tf"] = td, tf  # the lists time_pair goes on filling
            if entry["stop"] is None and rule(td, tf):
                entry["stop"] = len(td)
            return False

        return settled

    with mock.patch.object(choice, "settled_side", watching):
        build()

    def below(e: dict, n: int) -> bool:
        return median(e["tf"][:n]) / median(e["td"][:n]) < e["bar"]

    return [
        {"stopped_at": e["stop"], "agrees": e["stop"] is None or below(e, e["stop"]) == below(e, len(e["td"]))}
        for e in watched
        if "td" in e  # a choice of one look (fewer pairs than CHOICE_LOOKS) never asks
    ]


def run(smoke: bool = False) -> dict:
    builds, audits = (1, 1) if smoke else (BUILDS, AUDITS)
    choices = CHOICES[-1:] if smoke else CHOICES  # smoke: the bench's own choice rule
    ws = workspace()
    params, ds, x, dense, fmt = ws.params, ws.ds, ws.x, ws.dense, ws.fmt
    rnd = params.prune.ticket_rounds[len(params.prune.ticket_rounds) // 2]
    regroups = [m for m in params.methods if m != "imp" and params.structure_of(m) == "group"]
    rows, audit = [], []
    for method in regroups:
        model, masks = load_ticket(ws.ctx, Path("artifacts") / method / rnd)
        for runtime in RUNTIMES:
            run_fmt = runtime_format(runtime, fmt)
            xr = x.contiguous(memory_format=run_fmt)
            d = in_runtime(runtime, dense.to(memory_format=run_fmt), xr, params.bench.threads)
            for _ in range(builds):
                for repeats, alpha in choices:  # interleaved, so a drift in the machine's speed meets all alike
                    probe = choice.Probe(xr, run_fmt, repeats, 1, runtime, params.bench.threads, alpha)
                    t0 = time.perf_counter()
                    fast = choice.fast_models(params.structure_of(method), model.eval(), masks, ds.in_channels, probe)["slim+blocks"]
                    choice_s = time.perf_counter() - t0
                    f = in_runtime(runtime, fast.to(memory_format=run_fmt), xr, params.bench.threads)
                    t = time_pair(d, f, xr, params.bench.repeats, params.bench.warmup, blocks=params.bench.blocks)
                    modules = dict(fast.named_modules())
                    engines = "".join(LETTERS.get(type(modules.get(n.removesuffix(".weight"))).__name__, "-") for n in masks)
                    rows.append(
                        {"method": method, "round": rnd, "runtime": runtime, "repeats": repeats, "early_stop": alpha is not None}
                        | {"engines": engines, "choice_s": choice_s, "time_saving": t.saving, "ci95": t.ci95}
                    )
            for _ in range(audits):
                probe = choice.Probe(xr, run_fmt, runtime=runtime, threads=params.bench.threads)
                for a in audited(lambda: choice.fast_models(params.structure_of(method), model.eval(), masks, ds.in_channels, probe)):
                    audit.append({"method": method, "runtime": runtime} | a)
            print(method, runtime, flush=True)
    frame = pd.DataFrame(rows)
    by = frame.groupby(["runtime", "repeats", "early_stop", "method"])
    per_ticket = pd.DataFrame(
        {
            "distinct": by["engines"].nunique(),
            "spread": by["time_saving"].agg(lambda s: s.max() - s.min()),
            "choice_s": by["choice_s"].mean(),
        }
    )
    summary = {
        f"{runtime} {repeats} pairs{', early stop' if early else ''}": {
            "distinct engine choices per ticket (mean)": round(float(g["distinct"].mean()), 2),
            "saving spread per ticket (mean)": round(float(g["spread"].mean()), 4),
            "choice seconds per build (mean)": round(float(g["choice_s"].mean()), 1),
        }
        for (runtime, repeats, early), g in per_ticket.groupby(level=["runtime", "repeats", "early_stop"])
    }
    checked = pd.DataFrame(audit)
    summary["audit"] = {
        runtime: {
            "choices": len(g),
            "stopped early, by pairs timed": {int(k): int(n) for k, n in g["stopped_at"].dropna().value_counts().sort_index().items()},
            "early decision differs from all pairs'": int((~g["agrees"]).sum()),
        }
        for runtime, g in checked.groupby("runtime")
    }
    return {"batch": len(x), "builds": builds, "audits": audits, "rows": rows, "audit": audit, "summary": summary}
