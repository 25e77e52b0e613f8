"""DVC stage: dense training -> rewind point, final weights, metrics, per-epoch curve."""

import argparse
from pathlib import Path

from structlth import distributed as dist
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.rounds import setup
from structlth.training import pretrain

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", help="resumable state, outside the DVC outs")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        dist.relaunch_under_torchrun(params.runtime)
        ctx = setup(params, args.data)
        m = pretrain(ctx, Path(args.out), Path(args.checkpoint) if args.checkpoint else None)
        print(f"dense test_acc {m['test_acc']:.4f}")
