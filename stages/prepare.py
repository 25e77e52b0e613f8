"""DVC stage: raw dataset -> artifacts/data (uint8 tensors, or an index of an ImageFolder tree)
and its summary (split sizes, classes, files left out) as DVC metrics."""

import argparse

from structlth.artifacts import write_json
from structlth.config import load_params
from structlth.data import prepare_data
from structlth.errors import user_errors

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    with user_errors():
        params = load_params(args.params)
        summary = prepare_data(params.data, args.out, params.runtime.loader_workers)
        write_json(args.metrics, summary)
        print(f"prepared {summary['train_images']} train / {summary['val_images']} val / {summary['test_images']} test images")
