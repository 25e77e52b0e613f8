"""DVC stage: the whole run again under another training seed -> artifacts/seeds/seed<S>/
(pretrain, both chains, every ticket and baseline; the report folds the seeds together)."""

import argparse
from pathlib import Path

from structlth.config import load_params
from structlth.errors import ParamsError, user_errors
from structlth.replicate import run_replicate

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seed", type=int, required=True, help="one of replicates.seeds")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True, help="finished units and resumable state, outside the DVC outs")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        if args.seed not in params.replicates.seeds:
            raise ParamsError(f"replicates.seeds: {args.seed} is not one of {params.replicates.seeds}")
        s = run_replicate(params, args.seed, Path(args.data), Path(args.out), Path(args.cache))
        print(f"{args.out}: {s['units']} units, {s['trained']} trained; dense test_acc {s['test_acc']['pretrain']:.4f}")
