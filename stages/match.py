"""DVC stage: the FLOPs a Torch-Pruning baseline matches -> artifacts/<baseline>/matched.json,
per ticket round the matched ticket's name and FLOPs (read from its metrics.json). Each
baseline round declares its own round's entry as a DVC param, so it reruns only when the FLOPs
it is pruned to change, never for another ticket's edit."""

import argparse
from pathlib import Path

from structlth.artifacts import write_json
from structlth.config import load_params
from structlth.errors import ParamsError, user_errors
from structlth.rounds import matched_flops

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of baselines")
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        if args.name not in params.baselines:
            raise ParamsError(f"baselines: {args.name!r} is not one of {sorted(params.baselines)}")
        write_json(Path(args.out), matched_flops(params, args.name, Path(args.artifacts)))
