"""DVC stage: what a Torch-Pruning baseline is pruned to -> artifacts/<baseline>/matched.json: per
ticket round the matched ticket's name, its FLOPs (read from its metrics.json) and the channel
multiple the baseline keeps. Each baseline round declares its own round's entry as a DVC param,
so it reruns only when its target changes, never for another ticket's edit."""

import argparse
from pathlib import Path

from structlth.artifacts import write_json
from structlth.config import load_params
from structlth.errors import ParamsError, user_errors
from structlth.rounds import matched

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
        write_json(Path(args.out), matched(params, args.name, Path(args.artifacts)))
