"""DVC stage: the dense net a Torch-Pruning baseline prunes: its own, trained with network
slimming's L1 penalty on BN scales (sparsity_reg > 0), or a copy of the shared one."""

import argparse
from pathlib import Path

from structlth import distributed as dist
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.rounds import setup
from structlth.training import baseline_dense

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="an entry of params.yaml's baselines section")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", help="resumable state, outside the DVC outs")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        dist.relaunch_under_torchrun(params.runtime)
        params.ticket_spec(args.name)
        ctx = setup(params, args.data)
        m = baseline_dense(ctx, args.name, Path(args.pretrain), Path(args.out), Path(args.checkpoint) if args.checkpoint else None)
        print(f"{args.out}: dense test_acc {m['test_acc']:.4f}")
