"""The sweep that chose the embedded default (issue #10): candidate models x schedules, each run
through the real pipeline functions on Fashion-MNIST with 2 threads.

Per candidate: dense pretrain, IMP and imp_channel chains to round 4 (0.8^4 = 41% density, the
first round past 50% sparsity at rate 0.2), refill and regroup tickets of IMP round 4, and the
bench stage's verified timing of those tickets at batch 64. The projected `make repro` time
scales the measured per-epoch training time to the full default pipeline (every ticket at every
round) and adds the measured bench time. Needs Debian's dataset-fashion-mnist (offline).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from structlth.config import parse_params
from structlth.data import normalize
from structlth.pipeline import Context, imp_round, load_round, make_ticket, pretrain, prepare, seed_chain
from structlth.speedup.bench import bench_ticket

ROUNDS = 4
BASE = {
    "data": {"dataset": "fashion_mnist", "root": "data/raw", "download": False, "val_size": 1000, "train_subset": 12000,
             "test_subset": 2000, "split_seed": 0, "batch_size": 64, "eval_batch_size": 1000,
             "augment": {"crop_padding": 0, "hflip": True}},
    "model": {"arch": "vgg16", "width": 0.25, "small_input_stem": True},
    "train": {"epochs": 5, "retrain": "rest", "lr": 0.05, "schedule": "cosine", "milestones": [], "gamma": 0.1,
              "warmup_epochs": 0, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "rewind_epoch": 2, "seed": 0},
    "prune": {"rate": 0.2, "rounds": {f"round{k}": {"prev": f"round{k - 1}"} for k in range(1, ROUNDS + 1)}},
    "imp_channel": {"rate": 0.2},
    "tickets": {
        "refill": {"kind": "refill", "criterion": "magnitude", "refill_rate": 0.0, "count": "ceil"},
        "regroup": {"kind": "regroup", "granularity": "channel", "rows_per_part": 16, "min_rows": 8, "column_rule": "budget"},
    },
    "bench": {"batch_sizes": [64], "repeats": 9, "warmup": 2, "threads": 2},
    "runtime": {"device": "cpu", "threads": 2, "progress": "never"},
}
CANDIDATES = {  # name -> (model section changes, train section changes)
    "vgg16_w0.25_e5": ({"arch": "vgg16", "width": 0.25}, {"epochs": 5}),
    "vgg16_w0.375_e5": ({"arch": "vgg16", "width": 0.375}, {"epochs": 5}),
    "resnet20_w0.5_e5": ({"arch": "resnet20", "width": 0.5}, {"epochs": 5}),
    "resnet20_w1.0_e4": ({"arch": "resnet20", "width": 1.0}, {"epochs": 4}),
}


def _params(model: dict, train: dict):
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    raw["train"].update(train)
    return parse_params(raw, "sweep")


def _candidate(name: str, params, data_dir: Path, work: Path) -> dict:
    torch.set_num_threads(2)
    from structlth.data import load_dataset

    ctx = Context(params, load_dataset(data_dir), torch.device("cpu"))
    out, t = {"candidate": name}, {}
    t0 = time.perf_counter()
    dense = pretrain(ctx, work / "pretrain")
    t["pretrain"] = time.perf_counter() - t0
    out["dense_acc"] = dense["test_acc"]
    for chain in ("imp", "imp_channel"):
        seed_chain(ctx, work / "pretrain", work / chain / "round0")
        for k in range(1, ROUNDS + 1):
            t0 = time.perf_counter()
            m = imp_round(ctx, chain, work / chain / f"round{k - 1}", work / "pretrain", work / chain / f"round{k}")
            t.setdefault("retrain", []).append(time.perf_counter() - t0)
        out[f"{chain}_acc"], out[f"{chain}_sparsity"] = m["test_acc"], m["sparsity"]
    x = normalize(ctx.data.test.images[:64], ctx.data.mean, ctx.data.std)
    t_bench = 0.0
    for ticket in params.tickets:
        t0 = time.perf_counter()
        m = make_ticket(ctx, ticket, work / "imp" / f"round{ROUNDS}", work / "pretrain", work / ticket / f"round{ROUNDS}")
        t["retrain"].append(time.perf_counter() - t0)
        out[f"{ticket}_acc"], out[f"{ticket}_sparsity"] = m["test_acc"], m["sparsity"]
    for method, kind in (("refill", "refill"), ("regroup", "regroup"), ("imp_channel", "imp_channel")):
        d = work / method / f"round{ROUNDS}"
        model = ctx.model()
        state, masks = load_round(ctx, d, model)
        model.load_state_dict(state)
        from structlth.artifacts import read_json

        t0 = time.perf_counter()
        rows, _ = bench_ticket(method, kind, model, masks, read_json(d / "metrics.json"), x, params.bench, layers=False)
        t_bench += time.perf_counter() - t0
        out[f"{method}_time_saving"], out[f"{method}_flops_saving"] = rows[0]["time_saving"], rows[0]["flops_saving"]
    per_retrain = sum(t["retrain"]) / len(t["retrain"])
    n_retrains = 2 * ROUNDS + len(params.tickets) * ROUNDS  # imp + imp_channel chains, every ticket at every round
    full_bench = t_bench * (ROUNDS * (2 + len(params.tickets))) / 3  # every method x round, measured on 3
    out["train_img_per_s"] = params.train.epochs * len(ctx.data.train) / t["pretrain"]
    out["projected_repro_s"] = t["pretrain"] + n_retrains * per_retrain + full_bench
    return out


def run() -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = _params(*next(iter(CANDIDATES.values())))
        prepare(first, tmp / "data")  # the same data for every candidate
        for name, (model, train) in CANDIDATES.items():
            row = _candidate(name, _params(model, train), tmp / "data", tmp / name)
            print(row, flush=True)
            rows.append(row)
    return {"rounds": ROUNDS, "base": BASE, "rows": rows, "summary": {r["candidate"]: {k: round(v, 4) for k, v in r.items() if k in ("dense_acc", "refill_acc", "regroup_acc", "imp_channel_acc", "refill_time_saving", "regroup_time_saving", "projected_repro_s")} for r in rows}}
