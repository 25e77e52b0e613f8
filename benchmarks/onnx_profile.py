"""Where ONNX Runtime spends the time of the default run's tickets: its own profiler, per
operator type and per conv node, for the dense net and each ticket of the last ticket round
(batch 64, bench.threads intra-op threads, the same exported graphs the bench times), for the
dense net, the last imp_channel round and every ticket.

Reads the workspace's params.yaml and artifacts (run `make repro` or `dvc pull` first).
Per-layer ONNX Runtime rows in bench_layers.csv export each conv on its own, so they include
the layout conversions (NCHW <-> ONNX Runtime's blocked NCHWc) that a whole graph does once;
this profile sees every node inside the whole graph instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from structlth.config import load_params
from structlth.data import load_dataset, normalize
from structlth.rounds import Context, load_ticket
from structlth.speedup.choice import Probe, fast_models
from structlth.speedup.layout import fold_bn
from structlth.speedup.onnxrt import to_onnx


def profile(data: bytes, x: torch.Tensor, threads: int, runs: int) -> dict:
    """ms per run: in total, per operator type, per node (mean over `runs` after 3 warm-up runs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OrtModel
        opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(d, "p")
        s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feed = {"input": x.contiguous().numpy()}
        for _ in range(3 + runs):
            s.run(None, feed)
        events = json.loads(Path(s.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][3:]
    start = runs_seen[0]["ts"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    by_op, by_node = defaultdict(float), defaultdict(float)
    for e in nodes:
        by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
        by_node[e["name"].removesuffix("_kernel_time")] += e["dur"] / 1e3 / runs
    total = sum(e["dur"] for e in runs_seen) / 1e3 / runs
    return {"total_ms": total, "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])), "by_node_ms": dict(by_node)}


def run(smoke: bool = False) -> dict:
    runs = 2 if smoke else 30
    params = load_params("params.yaml")
    torch.set_num_threads(params.bench.threads)
    ds = load_dataset("artifacts/data")
    ctx = Context(params, ds, torch.device("cpu"))
    x = normalize(ds.test.head(max(params.bench.batch_sizes)), ds.mean, ds.std)
    dense = load_ticket(ctx, Path("artifacts/imp/round0"))[0]
    out = {
        "batch": len(x),
        "threads": params.bench.threads,
        "models": {"dense": profile(to_onnx(fold_bn(dense.eval()), x), x, params.bench.threads, runs)},
    }
    runs_of = [("imp_channel", params.round_ids()[-1])] + [(m, r) for m in params.tickets for r in params.rounds_of(m)]
    for method, rnd in runs_of:
        model, masks = load_ticket(ctx, Path("artifacts") / method / rnd)
        structure = params.structure_of(method)
        [(engine, fast)] = fast_models(
            structure, model.eval(), masks, ds.in_channels, Probe(x, runtime="onnxruntime", threads=params.bench.threads)
        ).items()
        out["models"][f"{method}/{rnd} ({engine})"] = profile(to_onnx(fast, x), x, params.bench.threads, runs)
    d = out["models"]["dense"]["total_ms"]
    out["summary"] = {
        name: {
            "total_ms": round(m["total_ms"], 2),
            "saving": round(1 - m["total_ms"] / d, 3),
            "top_ops_ms": {k: round(v, 2) for k, v in list(m["by_op_ms"].items())[:5]},
        }
        for name, m in out["models"].items()
    }
    return out
