"""Replicates: the whole run again under another training seed.

One replicate (one DVC stage per seed) trains what the per-round stages train for train.seed:
the dense net, the pruning chains (group-aware ones too), every ticket and baseline at the ticket rounds, with the same
data split and test images, and writes them in the same layout under its own folder
(artifacts/seeds/seed<S>/<method>/<round>/). The report pairs each round with the dense net of
its own seed and folds the spread over seeds into its intervals. Replicates are not benched:
speed does not depend on the training seed.

A replicate keeps every finished unit (pretrain, a round, a ticket) in a cache folder outside
the DVC outputs, stamped with the identity of what made it (the params sections it reads, the
units it reads, the library's code). A rerun after a params edit, or after an interrupt, copies
the units whose identity still holds and trains only the rest.

A group-aware chain (params' group_chains, the paper's Alg. 4) runs the same way, one DVC stage
per chain: its rounds are units cached by identity, read from the pipeline's own pretrain.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from structlth.artifacts import read_json, staged_dir
from structlth.codedeps import code_manifest, manifest_digest
from structlth.config import Params, params_hash
from structlth.pruning import registry
from structlth.rounds import file_digest, matched, seed_chain, setup
from structlth.tickets import group_round, make_ticket
from structlth.training import baseline_dense, imp_round, pretrain

STAMP = "identity.txt"


def training_code_digest(*modules: str) -> str:
    """Digest of the library files a replicate runs (this module's import closure) and of the
    method `modules` (dotted names) a unit loads by name: a change there, and only there,
    retrains the cached units that run it."""
    return manifest_digest(code_manifest(Path(__file__), Path(__file__).resolve().parents[1], modules))


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def units(p: Params) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """The replicate's units in training order: (method, round, identity, reads), where reads
    names the units ('method/round', 'pretrain') it is made from. Identities chain: a changed
    unit changes every unit made from it; a method's code changes only the units that run it."""
    ident = {"pretrain": _digest(params_hash(p.data, p.model, p.train), training_code_digest())}
    out = []

    def add(method: str, rnd: str, reads: tuple[str, ...], code: str, *sections) -> None:
        ident[f"{method}/{rnd}"] = _digest(*(ident[r] for r in reads), code, params_hash(*sections) if sections else "")
        out.append((method, rnd, ident[f"{method}/{rnd}"], reads))

    def code(spec) -> str:
        return training_code_digest(*registry.modules(spec))

    group = [(name, p.tickets[g.ticket]) for name, g in p.group_chains.items()]
    for chain, section in (("imp", p.prune), ("imp_channel", p.imp_channel), *group):
        add(chain, "round0", ("pretrain",), "", p.prune.prunable)
        for rnd in p.round_ids():
            add(
                chain,
                rnd,
                (f"{chain}/{p.prune.rounds[rnd].prev}", "pretrain"),
                code(section) if chain in p.group_chains else "",
                p.prune,
                section,
            )
    for name, spec in p.tickets.items():
        for rnd in p.prune.ticket_rounds:
            add(name, rnd, (f"imp/{rnd}", "pretrain"), code(spec), spec)
    for name, spec in p.baselines.items():
        add(name, "dense", ("pretrain",), training_code_digest(), spec)  # the dense net it prunes (training.baseline_dense)
        for rnd in p.prune.ticket_rounds:
            add(name, rnd, (f"imp/{rnd}", f"{name}/dense", f"{spec.match}/{rnd}"), code(spec), spec)
    return [("pretrain", "", ident["pretrain"], ())] + out


def _cached(d: Path, identity: str) -> bool:
    stamp = d / STAMP
    return stamp.is_file() and stamp.read_text() == identity


def run_chain(
    params: Params, chain: str, data_dir: Path, pretrain_dir: Path, out_dir: Path, cache: Path, log: Callable[[str], None] = print
) -> dict:
    """Every round of group-aware chain `chain` (a key of params.group_chains) from pretrain_dir,
    each taken from cache/<chain>/<round> when its identity holds, else trained; written to
    out_dir/<round>/.
    Returns {'units', 'trained', 'test_acc': {round: acc}}."""
    p = params
    ctx = setup(p, data_dir)
    spec = p.tickets[p.group_chains[chain].ticket]
    code = training_code_digest(*registry.modules(spec))
    prev_id = _digest(file_digest(pretrain_dir / "weights.safetensors", pretrain_dir / "rewind.safetensors"), code)
    trained, rounds = 0, ["round0", *p.round_ids()]
    for rnd in rounds:
        identity = _digest(
            prev_id, params_hash(p.data, p.model, p.train, p.prune.prunable) if rnd == "round0" else params_hash(p.prune, spec)
        )
        prev_id, d = identity, cache / chain / rnd  # <chain>/<round>: the round id the files record
        if _cached(d, identity):
            continue
        shutil.rmtree(d, ignore_errors=True)
        log(f"{chain}: training {rnd}")
        if rnd == "round0":
            seed_chain(ctx, pretrain_dir, d)
        else:
            group_round(
                ctx, chain, cache / chain / p.prune.rounds[rnd].prev, pretrain_dir, d, cache / "_checkpoints" / f"{chain}_{rnd}.safetensors"
            )
        (d / STAMP).write_text(identity)
        trained += 1
    with staged_dir(out_dir) as staged:
        for rnd in rounds:
            shutil.copytree(cache / chain / rnd, staged / rnd, ignore=shutil.ignore_patterns(STAMP, "curve.json"))
    return {
        "units": len(rounds),
        "trained": trained,
        "test_acc": {r: read_json(cache / chain / r / "metrics.json")["test_acc"] for r in rounds},
    }


def run_replicate(params: Params, seed: int, data_dir: Path, out_dir: Path, cache: Path, log: Callable[[str], None] = print) -> dict:
    """Train (or take from `cache`) every unit of `params` under training seed `seed`; write them
    to out_dir/<method>/<round>/ (pretrain: out_dir/pretrain/). Returns {'seed', 'units',
    'trained', 'test_acc': {'method/round': acc}}."""
    p = params.with_seed(seed)
    ctx = setup(p, data_dir)
    trained, plan = 0, units(p)
    for method, rnd, identity, _ in plan:
        d = cache / method / rnd if rnd else cache / "pretrain"
        if _cached(d, identity):
            continue
        shutil.rmtree(d, ignore_errors=True)
        ckpt = cache / "_checkpoints" / f"{method}_{rnd or 'dense'}.safetensors"
        log(f"seed {seed}: training {method} {rnd}".rstrip())
        if method == "pretrain":
            pretrain(ctx, d, ckpt)
        elif rnd == "round0":
            seed_chain(ctx, cache / "pretrain", d)
        elif method in p.chains:
            chain_round = group_round if method in p.group_chains else imp_round
            chain_round(ctx, method, cache / method / p.prune.rounds[rnd].prev, cache / "pretrain", d, ckpt)
        elif method in p.baselines and rnd == "dense":
            baseline_dense(ctx, method, cache / "pretrain", d, ckpt)
        elif method in p.baselines:
            make_ticket(ctx, method, cache / "imp" / rnd, cache / method / "dense", d, ckpt, matched(p, method, cache)[rnd])
        else:
            make_ticket(ctx, method, cache / "imp" / rnd, cache / "pretrain", d, ckpt)
        (d / STAMP).write_text(identity)
        trained += 1
    accs = {}
    with staged_dir(out_dir) as staged:
        for method, rnd, _, _ in plan:
            src = cache / method / rnd if rnd else cache / "pretrain"
            dst = staged / method / rnd if rnd else staged / "pretrain"
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(STAMP, "curve.json"))
            accs[f"{method}/{rnd}".rstrip("/")] = read_json(src / "metrics.json")["test_acc"]
    return {"seed": seed, "units": len(accs), "trained": trained, "test_acc": accs}
