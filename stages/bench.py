"""DVC stage: verified inference timing of one method x round against the dense net
-> reports/bench/<method>/<round>/{timing.csv, layers.csv} (the report stage gathers them)."""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from structlth.artifacts import read_json
from structlth.config import load_params
from structlth.data import load_dataset, normalize
from structlth.errors import user_errors
from structlth.pipeline import Context, load_round
from structlth.speedup.bench import BENCH_COLUMNS, bench_ticket, dense_baseline, ticket_kind
from structlth.speedup.timing import machine_lock

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--method", required=True, help="imp, imp_channel or a ticket of params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--out", required=True, help="folder for timing.csv and layers.csv")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        if args.method not in params.methods:
            params.ticket_spec(args.method)  # names the tickets and baselines there are
        torch.set_num_threads(params.bench.threads)
        ds = load_dataset(args.data)
        ctx = Context(params, ds, torch.device("cpu"))
        x = normalize(ds.test.head(max(params.bench.batch_sizes)), ds.mean, ds.std)
        d = Path(args.artifacts) / args.method / args.round
        metrics = read_json(d / "metrics.json")
        model = ctx.model()
        state, masks = load_round(ctx, d, model)
        model.load_state_dict(state)
        dense = ctx.model()
        dense.load_state_dict(load_round(ctx, Path(args.artifacts) / "imp" / "round0", dense)[0])
        with machine_lock("bench", lambda: print("waiting for another bench on this machine to finish", flush=True)):
            began = time.perf_counter()
            baseline = dense_baseline(dense, x, params.bench)
            phases = {"dense baseline": time.perf_counter() - began}
            rows, layers = bench_ticket(args.method, ticket_kind(args.method, params), model, masks, metrics, x, params.bench, layers=True, baseline=baseline, phases=phases)
        print("bench phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"round": args.round, **r} for r in rows])[BENCH_COLUMNS].to_csv(out / "timing.csv", index=False, float_format="%.6g")
        pd.DataFrame([{"round": args.round, **r} for r in layers]).to_csv(out / "layers.csv", index=False, float_format="%.6g")
        for r in rows:
            if r["batch"] == max(params.bench.batch_sizes):
                print(f"{args.method}/{args.round} {r['runtime']} {r['engine']}: time saving {r['time_saving']:.1%} (FLOPs {r['flops_saving']:.1%})", flush=True)
