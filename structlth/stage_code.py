"""The code each DVC stage runs, per stage script and, where a script loads methods by name,
per method: what the `code` stage writes to codedeps/ for every other stage to depend on.

A script's manifest is its import closure (structlth.codedeps). ticket.py and group_chain.py
load the method of one params entry (structlth.pruning.registry): they get one manifest per
entry, <script>-<entry>, holding the script's closure and that entry's method modules, and
dvc.yaml's matrix stages depend on the one of their own entry. So an edit to one method's
module reruns only the stages that run it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from structlth.codedeps import code_manifest
from structlth.config import Params
from structlth.pruning.registry import modules

PER_METHOD: dict[str, Callable[[Params], dict]] = {  # script -> its params entries (name -> spec)
    "ticket": lambda p: {**p.tickets, **p.baselines},
    "group_chain": lambda p: {name: p.tickets[g.ticket] for name, g in p.group_chains.items()},
}
EVERY_METHOD = ("replicate",)  # scripts that run every method the params name: one manifest


def stage_manifests(params: Params, stages: Path, root: Path) -> dict[str, dict[str, str]]:
    """File stem -> manifest ({file: digest}) for every stage script in `stages` (root: the
    folder holding the package): <script>, or <script>-<entry> per params entry for the
    scripts of PER_METHOD; an EVERY_METHOD script's manifest holds every method of the params."""
    every = [m for spec in [*params.tickets.values(), *params.baselines.values()] for m in modules(spec)]
    out = {}
    for script in sorted(stages.glob("*.py")):
        if script.stem in PER_METHOD:
            for name, spec in PER_METHOD[script.stem](params).items():
                out[f"{script.stem}-{name}"] = code_manifest(script, root, modules(spec))
        else:
            out[script.stem] = code_manifest(script, root, dict.fromkeys(every) if script.stem in EVERY_METHOD else ())
    return out
