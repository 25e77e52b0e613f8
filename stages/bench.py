"""DVC stage: verified inference timing of one method x round against the dense net
-> reports/bench/<method>/<round>/{timing.csv, layers.csv, speed.json} (the report gathers them)."""

import argparse
from pathlib import Path

from structlth.bench import bench_round
from structlth.config import load_params
from structlth.errors import user_errors

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--method", required=True, help="imp, imp_channel or a ticket of params.yaml")
    ap.add_argument("--round", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--out", required=True, help="folder for timing.csv, layers.csv and speed.json")
    args = ap.parse_args()
    with user_errors():
        bench_round(load_params(args.params), Path(args.data), Path(args.artifacts), args.method, args.round, Path(args.out))
