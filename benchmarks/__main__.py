"""Run the benchmarks (all, or those named: python -m benchmarks regroup_time) and write
<out>/<name>.json (default reports/benchmarks/), each stamped with the machine that ran it.

--smoke runs each end to end at a tiny size, in seconds, and writes to a temporary folder unless
--out names one: a check that every benchmark still runs (the test suite runs them all so), not
a measurement. Benchmarks of the workspace's run read params.yaml and artifacts/ of the current
folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import (
    alignment,
    channel_align,
    choice_repeats,
    compiled,
    default_sweep,
    kernel_blocks,
    loader,
    onnx_profile,
    regroup_parts,
    regroup_time,
    sparse_runtime,
    speedup_gpu,
    speedup_scale,
    train_throughput,
)
from structlth.artifacts import write_json
from structlth.speedup.timing import machine_name

OUT = Path("reports/benchmarks")
ALL = {
    "train_throughput": train_throughput.run,
    "regroup_time": regroup_time.run,
    "speedup_scale": speedup_scale.run,
    "channel_align": channel_align.run,
    "alignment": alignment.run,
    "kernel_blocks": kernel_blocks.run,
    "choice_repeats": choice_repeats.run,
    "compiled": compiled.run,
    "default_sweep": default_sweep.run,
    "regroup_parts": regroup_parts.run,
    "onnx_profile": onnx_profile.run,
    "loader": loader.run,
    "speedup_gpu": speedup_gpu.run,
    "sparse_runtime": sparse_runtime.run,
}
NEEDS_CUDA = {"speedup_gpu"}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(ALL)}")
    ap.add_argument("--smoke", action="store_true", help="each benchmark at a tiny size (CUDA ones on the CPU): does it run?")
    ap.add_argument("--out", type=Path, help="folder for <name>.json (default: reports/benchmarks; a temporary one with --smoke)")
    args = ap.parse_args()
    torch.set_num_threads(1 if args.smoke else 2)  # a smoke run checks a path; the test suite's other workers share the cores
    wanted = args.names or [n for n in ALL if n not in NEEDS_CUDA or torch.cuda.is_available() or args.smoke]
    unknown = sorted(set(wanted) - set(ALL))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; have {sorted(ALL)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="benchmarks-smoke-")) if args.smoke else OUT)
    for i, name in enumerate(wanted, 1):
        print(f"[{i}/{len(wanted)}] {name} ...", flush=True)
        began = time.perf_counter()
        run = ALL[name]
        result = {"machine": machine_name(), "threads": torch.get_num_threads(), **(run(smoke=True) if args.smoke else run())}
        write_json(out / f"{name}.json", result)
        print(
            f"[{i}/{len(wanted)}] {name} done in {time.perf_counter() - began:.0f} s -> {out / name}.json:",
            result.get("summary", result),
            flush=True,
        )
