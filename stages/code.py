"""DVC stage: the library files each stage runs -> <out>/<name>.json ({file: digest}), one per
stage script and, for the scripts that load a method by name, one per method entry of the params
(structlth.stage_code). Every other stage depends on its own file, so it reruns exactly when code
it runs changes. A params file that does not validate stops it before it writes anything, and its
output is persistent (DVC does not delete it first): a rejected edit leaves the digests in place."""

import argparse
from pathlib import Path

from structlth.artifacts import staged_dir, write_json
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.stage_code import stage_manifests

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        here = Path(__file__).resolve().parent
        manifests = stage_manifests(load_params(args.params), here, here.parent)
        with staged_dir(args.out) as d:  # the whole folder at once: no file of a removed entry stays
            for name, manifest in manifests.items():
                write_json(d / f"{name}.json", manifest)
