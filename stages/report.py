"""DVC stage: metrics, predictions and the bench stages' tables -> reports/{bench.csv,
bench_layers.csv, summary.csv, matched.csv, report.md, headline.json, *.png}."""

import argparse
from pathlib import Path

from structlth.config import load_params
from structlth.errors import user_errors
from structlth.report import write_reports

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        text = write_reports(load_params(args.params), Path(args.artifacts), Path(args.bench), Path(args.out))
        print(text.split("\n## imp\n")[0])
