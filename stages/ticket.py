"""DVC stage: a structured ticket (refill | regroup kind) from one IMP round, or a Torch-Pruning
baseline at the FLOPs of one, retrained."""

import argparse
from pathlib import Path

from structlth import distributed as dist
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.rounds import read_matched, setup
from structlth.tickets import make_ticket

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="an entry of params.yaml's tickets or baselines section")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--imp", required=True, help="the IMP round's directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint")
    ap.add_argument("--matched", help="a baseline's matched.json: the FLOPs and channel multiple it is pruned to per round")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        dist.relaunch_under_torchrun(params.runtime)
        params.ticket_spec(args.name)
        matched = read_matched(Path(args.matched), Path(args.imp).name) if args.matched else None
        ctx = setup(params, args.data)
        m = make_ticket(
            ctx, args.name, Path(args.imp), Path(args.pretrain), Path(args.out), Path(args.checkpoint) if args.checkpoint else None, matched
        )
        print(f"{args.out}: sparsity {m['sparsity']:.4f} (IMP {m['source_sparsity']:.4f}) test_acc {m['test_acc']:.4f}")
