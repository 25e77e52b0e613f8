"""IMP's unstructured tickets in a sparse CPU runtime, when one is importable.

"IMP's sparsity does not run faster" holds for dense kernels (PyTorch, ONNX Runtime). A sparse
runtime can run it faster: this times each IMP ticket round of the workspace's run against the
dense net inside DeepSparse (a sparse CPU engine, end-of-life since June 2025, so never a
dependency: `pip install deepsparse` where a wheel installs), each exported to ONNX with BN
folded, verified against the masked model, timed in alternating pairs at every bench batch size
beside the same ticket's saving in ONNX Runtime, with an A/A reading (dense against dense) per
runtime and batch. A runtime whose outputs differ from the masked model gets an `error` row instead of a time.
Without DeepSparse it records that and times the rows in ONNX Runtime alone (the dense-kernel
reference; a smoke run exercises the whole path so). Reads the workspace's params.yaml and
artifacts (run `make repro` or `dvc pull` first).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import workspace
from structlth.errors import VerificationError
from structlth.rounds import load_ticket
from structlth.speedup.engines import masked_reference
from structlth.speedup.layout import fold_bn
from structlth.speedup.onnxrt import OrtModel, to_onnx
from structlth.speedup.timing import time_pair, verify


def _deepsparse(data: bytes, batch: int, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX model compiled by DeepSparse for `batch`, as a torch-in, torch-out callable."""
    from deepsparse import compile_model

    path = Path(tempfile.mkdtemp(prefix="sparse-runtime-")) / "model.onnx"
    path.write_bytes(data)
    engine = compile_model(str(path), batch_size=batch, num_cores=threads)
    return lambda x: torch.from_numpy(engine.run([x.contiguous().numpy()])[0])


def runtimes() -> dict[str, Callable[[bytes, int, int], Callable]]:
    """The runtimes this machine can time in: ONNX Runtime, and DeepSparse where it imports."""
    out = {"onnxruntime": lambda data, batch, threads: OrtModel(data, threads)}
    try:
        import deepsparse  # noqa: F401

        out["deepsparse"] = _deepsparse
    except ImportError:
        pass
    return out


@torch.no_grad()
def run(smoke: bool = False) -> dict:
    ws = workspace()  # a smoke run's workspace is tiny already
    params, bench = ws.params, ws.params.bench
    threads, rows = torch.get_num_threads(), []
    have = runtimes()
    dense_onnx = to_onnx(ws.dense, ws.x)
    tickets = {}  # round -> (masked model, its ONNX export)
    for rnd in params.prune.ticket_rounds:
        model, masks = load_ticket(ws.ctx, Path("artifacts") / "imp" / rnd)
        ticket = fold_bn(masked_reference(model.eval(), masks, ws.ds.in_channels))
        tickets[rnd] = (ticket, to_onnx(ticket, ws.x))
    for b in bench.batch_sizes:
        x = ws.x[:b].contiguous()
        for name, load in have.items():
            dense = load(dense_onnx, b, threads)  # compiled once per runtime and batch, its A/A beside it
            aa = time_pair(dense, load(dense_onnx, b, threads), x, bench.repeats, bench.warmup, blocks=bench.blocks).saving
            for rnd, (ticket, ticket_onnx) in tickets.items():
                fast = load(ticket_onnx, b, threads)
                try:
                    verify(ticket, fast, x, bench.atol, f"imp {rnd} in {name}")
                except VerificationError as err:  # a runtime that computes something else is never timed
                    rows.append({"round": rnd, "batch": b, "runtime": name, "error": str(err)})
                    continue
                t = time_pair(dense, fast, x, bench.repeats, bench.warmup, blocks=bench.blocks)
                rows.append({"round": rnd, "batch": b, "runtime": name, "time_saving": t.saving, "ci95": t.ci95, "aa": aa})
        print(f"batch {b} done", flush=True)
    timed = [r for r in rows if r["runtime"] == "deepsparse" and "error" not in r]
    if timed:
        summary = {"best IMP saving in DeepSparse": max(timed, key=lambda r: r["time_saving"])}
    elif "deepsparse" in have:
        summary = "DeepSparse imports here but its outputs differ from the masked model: nothing timed in it (rows: error)"
    else:
        summary = "DeepSparse is not importable here: IMP tickets timed in ONNX Runtime (dense kernels) only"
    return {"runtimes": list(have), "rows": rows, "summary": summary}
