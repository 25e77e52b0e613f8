"""DVC stage, first of all: validate params.yaml (and what it names) before any stage runs.

Every stage depends on its constant output, so a rejected edit stops here, before DVC deletes
any stage's outputs, and an accepted edit invalidates nothing by itself.
"""

import argparse
from pathlib import Path

from structlth.artifacts import write_bytes
from structlth.checks import check_runnable
from structlth.config import load_params
from structlth.errors import user_errors

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        check_runnable(params)
        if params.data.download:  # torchvision downloads into it; DVC hashes it as prepare's dependency
            Path(params.data.root).mkdir(parents=True, exist_ok=True)
        write_bytes(Path(args.out), b"params.yaml: ok\n")
