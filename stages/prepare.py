"""DVC stage: raw dataset -> artifacts/data/{train,val,test}.safetensors (uint8 + labels)."""

import argparse

from structlth.config import load_params
from structlth.errors import user_errors
from structlth.pipeline import prepare

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        ds = prepare(load_params(args.params), args.out)
        print(f"prepared {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test images")
