"""DVC stage: the library files each stage script runs -> <out>/<script>.json ({file: digest}).
Every other stage depends on its own file, so it reruns exactly when code it imports changes."""

import argparse
from pathlib import Path

from structlth.artifacts import write_json
from structlth.codedeps import code_manifest

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    for script in sorted(here.glob("*.py")):
        write_json(Path(args.out) / f"{script.stem}.json", code_manifest(script, here.parent))
