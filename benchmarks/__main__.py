"""Run the benchmarks (all, or those named: python -m benchmarks regroup_time) and write
reports/benchmarks/<name>.json, each stamped with the machine that ran it."""

from __future__ import annotations

import sys
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
}
NEEDS_CUDA = {"speedup_gpu"}

if __name__ == "__main__":
    torch.set_num_threads(2)
    wanted = sys.argv[1:] or [n for n in ALL if n not in NEEDS_CUDA or torch.cuda.is_available()]
    unknown = sorted(set(wanted) - set(ALL))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; have {sorted(ALL)}")
    for i, name in enumerate(wanted, 1):
        print(f"[{i}/{len(wanted)}] {name} ...", flush=True)
        began = time.perf_counter()
        result = {"machine": machine_name(), "threads": torch.get_num_threads(), **ALL[name]()}
        write_json(OUT / f"{name}.json", result)
        print(
            f"[{i}/{len(wanted)}] {name} done in {time.perf_counter() - began:.0f} s -> {OUT / name}.json:",
            result.get("summary", result),
            flush=True,
        )
