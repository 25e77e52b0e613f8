"""DVC stage: verified inference timing of every ticket -> reports/bench.csv, bench_layers.csv."""

import argparse
from pathlib import Path

import pandas as pd
import torch

from structlth.artifacts import read_json
from structlth.config import load_params
from structlth.data import load_dataset, normalize
from structlth.errors import user_errors
from structlth.pipeline import Context, load_round
from structlth.speedup.bench import bench_ticket, dense_baseline, ticket_kind

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        torch.set_num_threads(params.bench.threads)
        ds = load_dataset(args.data)
        ctx = Context(params, ds, torch.device("cpu"))
        x = normalize(ds.test.images[: max(params.bench.batch_sizes)], ds.mean, ds.std)
        rows, layers = [], []
        model = ctx.model()
        model.load_state_dict(load_round(ctx, Path(args.artifacts) / "imp" / "round0", model)[0])
        baseline = dense_baseline(model, x, params.bench)  # one format and reference time for every ticket
        for method in ["imp", "imp_channel", *params.tickets]:
            for rnd in params.rounds_of(method):
                d = Path(args.artifacts) / method / rnd
                model = ctx.model()
                state, masks = load_round(ctx, d, model)
                model.load_state_dict(state)
                r, lr = bench_ticket(method, ticket_kind(method, params), model, masks, read_json(d / "metrics.json"), x, params.bench, layers=True, baseline=baseline)
                rows += [{"round": rnd, **row} for row in r]
                layers += [{"round": rnd, **row} for row in lr]
                best = max(row["time_saving"] for row in r if row["batch"] == max(params.bench.batch_sizes))
                print(f"{method}/{rnd}: best time saving {best:.1%}", flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cols = ["method", "round", "batch", "threads", "channels_last", "retimed", "engine", "t_dense_ms", "t_ticket_ms", "time_saving", "flops_saving", "params_saving", "max_abs_err", "sparsity", "test_acc"]
        pd.DataFrame(rows)[cols].to_csv(out / "bench.csv", index=False, float_format="%.6g")
        pd.DataFrame(layers).to_csv(out / "bench_layers.csv", index=False, float_format="%.6g")
