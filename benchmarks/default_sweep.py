"""The sweep that chose the embedded default's model: candidate models x schedules on
Fashion-MNIST, 2 threads, through the real pipeline functions.

Per candidate: dense pretrain (test accuracy, training img/s); then one-shot global magnitude
masks of the trained net at IMP round 4's density (0.8^4 = 41%, the first round past 50%
sparsity at rate 0.2), made into refill and regroup tickets, and the bench stage's verified
timing of them at batch 64 (speed needs the structure, not retraining). The projected
`make repro` time scales the measured pretrain time to the default pipeline's retrainings
(IMP and imp_channel chains of 4 rounds, every ticket at its ticket rounds, `retrain: rest`)
and adds bench. The winner's ticket accuracies come from its own `make repro` (reports/).
Needs Debian's dataset-fashion-mnist (offline).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ticket_of
from structlth.config import parse_params
from structlth.data import load_dataset, normalize, prepare_data
from structlth.masks import drop_untrainable, ones_masks
from structlth.pruning import magnitude_prune
from structlth.rounds import Context, load_state
from structlth.speedup.measure import bench_ticket
from structlth.tickets import ticket_masks
from structlth.train import state_of
from structlth.training import pretrain

ROUNDS = 4
BASE = {
    "data": {
        "dataset": "fashion_mnist",
        "root": "/usr/share/datasets/fashion-mnist",
        "download": False,
        "val_size": 1000,
        "train_subset": 12000,
        "test_subset": 2000,
        "split_seed": 0,
        "batch_size": 64,
        "eval_batch_size": 1000,
        "augment": {"crop_padding": 0, "hflip": True},
    },
    "model": {"arch": "vgg16", "width": 0.25, "small_input_stem": True},
    "train": {
        "epochs": 5,
        "retrain": "rest",
        "lr": 0.05,
        "schedule": "cosine",
        "milestones": [],
        "gamma": 0.1,
        "warmup_epochs": 0,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "rewind_epoch": 3,
        "seed": 0,
    },
    "prune": {
        "rate": 0.2,
        "rounds": {f"round{k}": {"prev": f"round{k - 1}"} for k in range(1, ROUNDS + 1)},
        "ticket_rounds": ["round2", "round4"],
    },
    "imp_channel": {"rate": 0.1},
    "tickets": {
        "refill": {"kind": "refill", "criterion": "magnitude", "refill_rate": 0.0, "count": "ceil"},
        "refill_aligned": {"kind": "refill", "criterion": "magnitude", "refill_rate": 0.0, "count": "ceil", "channel_align": 8},
        "regroup": {"kind": "regroup", "granularity": "channel", "rows_per_part": 16, "min_rows": 8, "column_rule": "budget"},
        "regroup_aligned": {
            "kind": "regroup",
            "granularity": "channel",
            "rows_per_part": 16,
            "min_rows": 8,
            "column_rule": "budget",
            "input_align": 8,
        },
    },
    "bench": {"batch_sizes": [64], "repeats": 9, "warmup": 2, "threads": 2},
    "runtime": {"device": "cpu", "threads": 2, "progress": "never"},
}
CANDIDATES = {  # name -> (model section changes, train section changes)
    "vgg16_w0.25_e5": ({"arch": "vgg16", "width": 0.25}, {"epochs": 5}),
    "vgg16_w0.25_e6": ({"arch": "vgg16", "width": 0.25}, {"epochs": 6, "rewind_epoch": 4}),
    "vgg16_w0.375_e5": ({"arch": "vgg16", "width": 0.375}, {"epochs": 5}),
    "resnet20_w0.5_e5": ({"arch": "resnet20", "width": 0.5}, {"epochs": 5}),
    "resnet20_w1.0_e4": ({"arch": "resnet20", "width": 1.0}, {"epochs": 4, "rewind_epoch": 2}),
}


def _params(model: dict, train: dict, data: dict | None = None, bench: dict | None = None, tickets: tuple[str, ...] | None = None):
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    raw["train"].update(train)
    raw["data"].update(data or {})
    raw["bench"].update(bench or {})
    if tickets is not None:
        raw["tickets"] = {t: raw["tickets"][t] for t in tickets}
    return parse_params(raw, "sweep")


def _candidate(name: str, params, data_dir: Path, work: Path) -> dict:
    torch.set_num_threads(2)
    ctx = Context(params, load_dataset(data_dir), torch.device("cpu"))
    t0 = time.perf_counter()
    dense = pretrain(ctx, work / "pretrain")
    t_pretrain = time.perf_counter() - t0
    out = {"candidate": name, "dense_acc": dense["test_acc"], "train_img_per_s": params.train.epochs * len(ctx.data.train) / t_pretrain}
    model = ctx.model()
    model.load_state_dict(load_state(ctx, work / "pretrain" / "weights.safetensors", model)[0])
    weights = dict(model.named_parameters())
    imp = magnitude_prune(weights, ones_masks(model), 1 - (1 - params.prune.rate) ** ROUNDS)
    x = normalize(ctx.data.test.head(max(params.bench.batch_sizes)), ctx.data.mean, ctx.data.std)
    t0 = time.perf_counter()
    for name_, spec in params.tickets.items():
        masks = drop_untrainable(model, ticket_masks(ctx, spec, state_of(model), imp), ctx.data.in_channels)
        m, metrics = ticket_of(model, masks, ctx.input_shape)
        rows, _ = bench_ticket(name_, spec.structure, m, masks, metrics, x, params.bench, layers=False)
        out[f"{name_}_sparsity"], out[f"{name_}_time_saving"], out[f"{name_}_flops_saving"] = (
            metrics["sparsity"],
            rows[0]["time_saving"],
            rows[0]["flops_saving"],
        )
    t_bench = (time.perf_counter() - t0) / len(params.tickets)
    p = params.train
    retrains = 2 * ROUNDS + len(params.tickets) * len(params.prune.ticket_rounds)
    epochs = p.epochs + retrains * (p.epochs - p.rewind_epoch if p.retrain == "rest" else p.epochs)
    out["projected_repro_s"] = t_pretrain * epochs / p.epochs + t_bench * (2 * ROUNDS + retrains)
    return out


SMOKE = {  # --smoke: one tiny candidate on a few hundred images
    "candidates": {"resnet20_w0.25_e1": ({"arch": "resnet20", "width": 0.25}, {"epochs": 1, "rewind_epoch": 0})},
    "data": {"val_size": 64, "train_subset": 128, "test_subset": 128, "eval_batch_size": 128},
    "bench": {"batch_sizes": [4], "repeats": 2, "choice_repeats": 1, "onnxruntime": False},
    "tickets": ("refill", "regroup"),
}


def run(smoke: bool = False) -> dict:
    rows = []
    candidates = SMOKE["candidates"] if smoke else CANDIDATES
    edit = {k: SMOKE[k] for k in ("data", "bench", "tickets")} if smoke else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = _params(*next(iter(candidates.values())), **edit)
        prepare_data(first.data, tmp / "data")  # the same data for every candidate
        for name, (model, train) in candidates.items():
            row = _candidate(name, _params(model, train, **edit), tmp / "data", tmp / name)
            print(row, flush=True)
            rows.append(row)
    return {
        "rounds": ROUNDS,
        "base": BASE,
        "rows": rows,
        "summary": {
            r["candidate"]: {k: round(v, 4) for k, v in r.items() if k != "candidate" and not k.endswith("_sparsity")} for r in rows
        },
    }
