"""Run every benchmark and write reports/benchmarks/<name>.json."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import regroup_time, train_throughput
from structlth.artifacts import write_json

OUT = Path("reports/benchmarks")

if __name__ == "__main__":
    torch.set_num_threads(2)
    for name, fn in (("train_throughput", train_throughput.run), ("regroup_time", regroup_time.run)):
        result = fn()
        write_json(OUT / f"{name}.json", result)
        print(name, result.get("summary", result))
