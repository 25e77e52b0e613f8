"""torch.compile (inductor, freezing) as an engine: compile time and what it saves, against the
dense net compiled alike, beside the eager engines (bench_ticket with bench.compile, PyTorch,
batch 64): the default run's last-round tickets of the first refill and regroup entries of
params.yaml, and a ResNet-18 at the paper's scale (32x32 inputs, untrained, randomised BN)
refilled and regrouped at 40% density.

Reads the workspace's params.yaml and artifacts for the default's tickets (run `make repro`
or `dvc pull` first).
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.common import randomise_bn, ticket_of
from benchmarks.speedup_scale import tickets
from structlth.artifacts import read_json
from structlth.config import BenchParams, load_params
from structlth.data import load_dataset, normalize
from structlth.models import build_model
from structlth.rounds import Context, load_ticket
from structlth.speedup.measure import bench_ticket

BATCH = 64
KEEP = ("method", "engine", "t_dense_ms", "t_ticket_ms", "time_saving", "flops_saving", "compile_s", "max_abs_err")


def _default_cases(batch: int):
    params = load_params("params.yaml")
    ds = load_dataset(Path("artifacts/data"))
    ctx = Context(params, ds, torch.device("cpu"))
    x = normalize(ds.test.head(batch), ds.mean, ds.std)
    rnd = params.prune.ticket_rounds[-1]
    firsts = {spec.kind: name for name, spec in reversed(params.tickets.items())}  # the first ticket of each kind
    for method in (firsts[k] for k in ("refill", "regroup") if k in firsts):
        d = Path("artifacts") / method / rnd
        model, masks = load_ticket(ctx, d)
        yield f"default {method} {rnd}", params.structure_of(method), model, masks, read_json(d / "metrics.json"), x


def _scale_cases(arch: str, batch: int):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, 1.0).eval()
    randomise_bn(model)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for method, (structure, masks) in tickets(model, 0.4, ("refill", "regroup_disjoint")).items():
        ticket, metrics = ticket_of(model, masks, (1, 3, 32, 32))
        yield f"{arch} {method} @0.4", structure, ticket, masks, metrics, x


def run(smoke: bool = False) -> dict:
    batch, repeats = (4, 2) if smoke else (BATCH, 15)
    bench = BenchParams(batch_sizes=[batch], repeats=repeats, blocks=1, warmup=3, threads=2, onnxruntime=False, compile=True)
    bench = bench.model_copy(update={"choice_repeats": 1}) if smoke else bench
    rows = []
    default = list(_default_cases(batch))[:1] if smoke else _default_cases(batch)  # smoke: one compiled ticket, the workspace's
    for case, structure, model, masks, metrics, x in [*default, *([] if smoke else _scale_cases("resnet18", batch))]:
        out, _ = bench_ticket(case, structure, model, masks, metrics, x, bench, layers=False)
        rows += [{k: r[k] for k in KEEP} for r in out]
        print(case, [(r["engine"], f"{r['time_saving']:.1%}", r["compile_s"]) for r in out], flush=True)
    eager = {r["method"]: r for r in rows if r["compile_s"] is None}
    summary = {
        r["method"]: {
            "compile_s": round(r["compile_s"], 1),
            "saving_eager": round(eager[r["method"]]["time_saving"], 3),
            "saving_compiled": round(r["time_saving"], 3),
            "compiled_over_eager_ticket": round(r["t_ticket_ms"] / eager[r["method"]]["t_ticket_ms"], 3),
        }
        for r in rows
        if r["compile_s"] is not None
    }
    return {"batch": batch, "rows": rows, "summary": summary}
