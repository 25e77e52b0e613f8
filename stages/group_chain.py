"""DVC stage: one group-aware IMP chain (params' group_chains, the paper's Alg. 4) -> artifacts/<name>/
<round>/ for round0 and every round: each round prunes by magnitude and post-processes the mask as
its ticket before rewinding. Finished rounds are kept under the cache folder by identity."""

import argparse
from pathlib import Path

from structlth.config import load_params
from structlth.errors import ParamsError, user_errors
from structlth.replicate import run_chain

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of group_chains")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True, help="finished rounds and resumable state, outside the DVC outs")
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        if args.name not in params.group_chains:
            raise ParamsError(f"group_chains: {args.name!r} is not one of {sorted(params.group_chains)}")
        s = run_chain(params, args.name, Path(args.data), Path(args.pretrain), Path(args.out), Path(args.cache))
        print(f"{args.out}: {s['units']} rounds, {s['trained']} trained; last test_acc {list(s['test_acc'].values())[-1]:.4f}")
