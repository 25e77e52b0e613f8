"""Run the benchmarks (all, or those named: python -m benchmarks regroup_time) and write
reports/benchmarks/<name>.json."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks import channel_align, default_sweep, regroup_parts, regroup_time, speedup_scale, train_throughput
from structlth.artifacts import write_json

OUT = Path("reports/benchmarks")
ALL = {
    "train_throughput": train_throughput.run,
    "regroup_time": regroup_time.run,
    "speedup_scale": speedup_scale.run,
    "channel_align": channel_align.run,
    "default_sweep": default_sweep.run,
    "regroup_parts": regroup_parts.run,
}

if __name__ == "__main__":
    torch.set_num_threads(2)
    wanted = sys.argv[1:] or list(ALL)
    unknown = sorted(set(wanted) - set(ALL))
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; have {sorted(ALL)}")
    for name in wanted:
        result = ALL[name]()
        write_json(OUT / f"{name}.json", result)
        print(name, result.get("summary", result))
