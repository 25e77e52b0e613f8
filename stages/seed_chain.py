"""DVC stage: round0 of a pruning chain = the dense net with an all-ones mask."""

import argparse
from pathlib import Path

from structlth.config import load_params
from structlth.errors import user_errors
from structlth.rounds import seed_chain, setup

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        seed_chain(setup(load_params(args.params), args.data), Path(args.pretrain), Path(args.out))
