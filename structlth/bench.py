"""The bench stage as one call: a method x round timed against the dense net, in one process.

Writes to its out folder:
- timing.csv: every runtime x engine x batch size (the report gathers them into bench.csv);
- layers.csv: per-layer times at the largest batch;
- speed.json: the headline a DVC metric carries, so `dvc metrics diff` / `dvc exp diff` show
  speed beside accuracy: test_acc, sparsity, flops_saving, and per runtime x batch size the
  time saving of the ticket's production engine (the fastest engine timed where the structure
  has none: imp) with that row's own 95% half-width.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from structlth.artifacts import read_json, write_json
from structlth.config import Params
from structlth.data import load_dataset, normalize
from structlth.rounds import Context, load_ticket
from structlth.speedup.measure import BENCH_COLUMNS, PRODUCTION_ENGINES, bench_ticket, dense_baseline
from structlth.speedup.timing import machine_lock

RUNTIME_KEYS = {"torch": "torch", "onnxruntime": "ort"}  # short, so `dvc metrics show` fits a terminal


def speed_metrics(rows: pd.DataFrame) -> dict:
    """speed.json of one bench stage from its timing rows (BENCH_COLUMNS): per runtime x batch
    size, `saving` (the production engine's time saving, or the fastest engine's where the
    structure has none) and `saving_ci95`, that same row's own 95% half-width: the noise that
    applies to that saving. The run's noise, over every stage, is the report's."""
    saving, ci95 = {}, {}
    for (runtime, batch), g in rows.groupby(["runtime", "batch"], sort=False):
        prod = g[g["engine"].isin(PRODUCTION_ENGINES)]
        row = (prod if len(prod) else g).sort_values("time_saving", ascending=False).iloc[0]
        key = f"{RUNTIME_KEYS[runtime]}_b{batch}"
        saving[key] = round(float(row["time_saving"]), 4)
        ci95[key] = None if pd.isna(row["ci95"]) else round(float(row["ci95"]), 4)
    first = rows.iloc[0]
    return {
        "test_acc": float(first["test_acc"]),
        "sparsity": round(float(first["sparsity"]), 4),
        "flops_saving": round(float(first["flops_saving"]), 4),
        "saving": saving,
        "saving_ci95": ci95,
    }


def bench_round(p: Params, data_dir: Path, artifacts: Path, method: str, rnd: str, out: Path) -> list[dict]:
    """Time artifacts/<method>/<rnd> against artifacts/imp/round0 (the dense net) under p.bench and
    write out/{timing.csv, layers.csv, speed.json}. Returns the timing rows. Bench processes on
    one machine take turns (a lock), so two never share the cores."""
    if method not in p.methods:
        p.ticket_spec(method)  # names the tickets and baselines there are
    torch.set_num_threads(p.bench.threads)
    ds = load_dataset(data_dir)
    ctx = Context(p, ds, torch.device("cpu"))
    x = normalize(ds.test.head(max(p.bench.batch_sizes)), ds.mean, ds.std)
    d = artifacts / method / rnd
    metrics = read_json(d / "metrics.json")
    model, masks = load_ticket(ctx, d)
    dense, _ = load_ticket(ctx, artifacts / "imp" / "round0")
    with machine_lock("bench", lambda: print("waiting for another bench on this machine to finish", flush=True)):
        began = time.perf_counter()
        baseline = dense_baseline(dense, x, p.bench)
        phases = {"dense baseline": time.perf_counter() - began}
        rows, layers = bench_ticket(
            method,
            p.structure_of(method),
            model,
            masks,
            metrics,
            x,
            p.bench,
            layers=True,
            baseline=baseline,
            phases=phases,
            dead_bn=p.dead_bn(method),
        )
    print("bench phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    timing = pd.DataFrame([{"round": rnd, **r} for r in rows])[BENCH_COLUMNS]
    timing.to_csv(out / "timing.csv", index=False, float_format="%.6g")
    pd.DataFrame([{"round": rnd, **r} for r in layers]).to_csv(out / "layers.csv", index=False, float_format="%.6g")
    write_json(out / "speed.json", speed_metrics(timing))
    for r in rows:
        if r["batch"] == max(p.bench.batch_sizes):
            print(
                f"{method}/{rnd} {r['runtime']} {r['engine']}: time saving {r['time_saving']:.1%} (FLOPs {r['flops_saving']:.1%})",
                flush=True,
            )
    return rows
