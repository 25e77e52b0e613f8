"""DVC stage: one round of a pruning chain (imp | imp_channel): prune, rewind, retrain."""

import argparse
from pathlib import Path

from structlth import distributed as dist
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.rounds import setup
from structlth.training import imp_round

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--chain", required=True, choices=["imp", "imp_channel"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--prev", required=True, help="the previous round's directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        dist.relaunch_under_torchrun(params.runtime)
        ctx = setup(params, args.data)
        m = imp_round(
            ctx, args.chain, Path(args.prev), Path(args.pretrain), Path(args.out), Path(args.checkpoint) if args.checkpoint else None
        )
        print(f"{args.out}: sparsity {m['sparsity']:.4f} test_acc {m['test_acc']:.4f}")
