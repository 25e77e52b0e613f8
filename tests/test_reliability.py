"""The reliability table: bad params files and broken artifacts, each rejected with one line
that names the key or the file, before anything is written or lost.

`make reliability` runs this table and prints the counts (cases tried, rejected with a named
key or file, nothing lost); `make test` runs it as ordinary tests.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from helpers import synthetic_dataset, tiny_raw
from structlth.artifacts import load_tensors, save_tensors
from structlth.checks import check_runnable
from structlth.config import load_params, parse_params
from structlth.errors import StructlthError
from structlth.masks import ones_masks
from structlth.pruning import magnitude_prune
from structlth.rounds import Context, load_round, read_metrics, save_round
from structlth.train import state_of


def _params_case(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        raw = copy.deepcopy(tiny_raw())
        edit(raw)
        (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        check_runnable(load_params(d / "params.yaml"))

    return run


def _raw_file(content: bytes) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        (d / "params.yaml").write_bytes(content)
        load_params(d / "params.yaml")

    return run


PARAMS_CASES = {  # name -> (case, text the one-line error must contain)
    "epochs as a string": (_params_case(lambda r: r["train"].update(epochs="4")), "train.epochs"),
    "rewind_epoch true": (_params_case(lambda r: r["train"].update(rewind_epoch=True)), "train.rewind_epoch"),
    "rate as a string": (_params_case(lambda r: r["prune"].update(rate=".5")), "prune.rate"),
    "hflip 'no'": (_params_case(lambda r: r["data"]["augment"].update(hflip="no")), "data.augment.hflip"),
    "inf lr": (_params_case(lambda r: r["train"].update(lr=float("inf"))), "train.lr"),
    "inf weight_decay": (_params_case(lambda r: r["train"].update(weight_decay=float("inf"))), "train.weight_decay"),
    "inf atol": (_params_case(lambda r: r["bench"].update(atol=float("inf"))), "bench.atol"),
    "duplicate milestones": (
        _params_case(lambda r: r["train"].update(schedule="multistep", milestones=[1, 1])),
        "milestones must be strictly increasing",
    ),
    "subset beyond the dataset": (_params_case(lambda r: r["data"].update(test_subset=10**6)), "test_subset=1000000"),
    "batch beyond the dataset": (_params_case(lambda r: r["data"].update(batch_size=10**6, train_subset=None)), "batch_size=1000000"),
    "seed 2^63": (_params_case(lambda r: r["train"].update(seed=2**63)), "train.seed"),
    "empty bench batch sizes": (_params_case(lambda r: r["bench"].update(batch_sizes=[])), "bench.batch_sizes"),
    "unknown mask_layer": (_params_case(lambda r: r["report"].update(mask_layer="nope.weight")), "report.mask_layer"),
    "round id with a newline": (
        _params_case(
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round0"}, "round2\n": {"prev": "round1"}}, ticket_rounds=["round1"])
        ),
        "round id 'round2\\n'",
    ),
    "self-loop": (
        _params_case(lambda r: r["prune"]["rounds"].update(round2={"prev": "round2"})),
        "round2.prev = 'round2': a round cannot follow itself",
    ),
    "ticket named data": (_params_case(lambda r: r["tickets"].update(data=r["tickets"]["refill"])), "tickets: name 'data'"),
    "ticket named pretrain": (_params_case(lambda r: r["tickets"].update(pretrain=r["tickets"]["refill"])), "tickets: name 'pretrain'"),
    "300-character ticket name": (
        _params_case(lambda r: r["tickets"].update({"t" * 300: r["tickets"]["refill"]})),
        "at most 64 characters",
    ),
    "data.root is a file": (_params_case(lambda r: r["data"].update(root=str(Path(__file__)))), "data.root"),
    "cuda without cuda": (_params_case(lambda r: r["runtime"].update(device="cuda")), "runtime.device"),
    "cuda:auto without cuda": (_params_case(lambda r: r["runtime"].update(device="cuda:auto")), "runtime.device: cuda:auto"),
    "duplicate YAML key": (_raw_file(b"data: {}\ndata: {}\n"), "duplicate key 'data'"),
    "non-UTF-8 file": (_raw_file(b"data: caf\xe9\n"), "not UTF-8 text"),
}


def _round_dir(d: Path) -> tuple[Context, Path]:
    ctx = Context(parse_params(tiny_raw()), synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    masks = magnitude_prune({k: v.detach() for k, v in model.named_parameters()}, ones_masks(model), 0.5)
    state = {k: (v * masks[k] if k in masks else v) for k, v in state_of(model).items()}
    save_round(ctx, d / "imp" / "round1", state, masks, {"sparsity": 0.5, "test_acc": 0.9}, kind="imp", test_pred=ctx.data.test.labels)
    save_round(ctx, d / "imp" / "round2", state, masks, {"sparsity": 0.5, "test_acc": 0.9}, kind="imp", test_pred=ctx.data.test.labels)
    return ctx, d / "imp" / "round2"


def _rewrite(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        ctx, r = _round_dir(d)
        tensors, meta = load_tensors(r / name)
        change(tensors)
        save_tensors(r / name, tensors, meta)
        load_round(ctx, r, ctx.model())

    return run


def _first(t: dict) -> str:
    """The first floating-point tensor's name (masks are bool: their first tensor)."""
    return next((k for k, v in t.items() if v.is_floating_point()), next(iter(t)))


def _copy_from_round1(name: str) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        ctx, r = _round_dir(d)
        (r / name).write_bytes((r.parent / "round1" / name).read_bytes())
        load_round(ctx, r, ctx.model())

    return run


def _metrics_json(content: bytes) -> Callable[[Path], None]:
    def run(d: Path) -> None:
        _, r = _round_dir(d)
        (r / "metrics.json").write_bytes(content)
        read_metrics(r / "metrics.json", ("sparsity", "test_acc"))

    return run


def _truncated_weights(d: Path) -> None:
    ctx, r = _round_dir(d)
    (r / "weights.safetensors").write_bytes((r / "weights.safetensors").read_bytes()[:100])
    load_round(ctx, r, ctx.model())


ARTIFACT_CASES = {
    "round-1 mask in round 2's folder": (_copy_from_round1("mask.safetensors"), "round2/mask.safetensors"),
    "round-1 weights in round 2's folder": (_copy_from_round1("weights.safetensors"), "round2/weights.safetensors"),
    "a 0->1 mask bit": (
        _rewrite("mask.safetensors", lambda t: t[_first(t)].view(-1).__setitem__(torch.nonzero(~t[_first(t)].view(-1))[0], True)),
        "round2/mask.safetensors",
    ),
    "a float mask of 0.5": (
        _rewrite("mask.safetensors", lambda t: t.update({k: v.float() * 0.5 for k, v in t.items()})),
        "round2/mask.safetensors",
    ),
    "NaN weights": (_rewrite("weights.safetensors", lambda t: t[_first(t)].fill_(float("nan"))), "round2/weights.safetensors"),
    "inf weights": (_rewrite("weights.safetensors", lambda t: t[_first(t)].fill_(float("inf"))), "round2/weights.safetensors"),
    "float64 weights": (
        _rewrite("weights.safetensors", lambda t: t.update({_first(t): t[_first(t)].double()})),
        "round2/weights.safetensors",
    ),
    "truncated weights": (_truncated_weights, "round2/weights.safetensors"),
    "metrics.json of {}": (_metrics_json(b"{}"), "round2/metrics.json: no number for sparsity, test_acc"),
    "metrics.json not JSON": (_metrics_json(b"{"), "round2/metrics.json"),
}

CASES = {**PARAMS_CASES, **ARTIFACT_CASES}


def outcome(case: Callable[[Path], None], named: str, d: Path) -> str:
    """'rejected' (one StructlthError line naming the key or file), or what went wrong instead."""
    try:
        case(d)
    except StructlthError as e:
        text = str(e)
        return "rejected" if named in text else f"rejected without naming {named!r}: {text}"
    except Exception as e:  # noqa: BLE001 - the table reports any other failure as a raw traceback
        return f"raw {type(e).__name__}: {e}"
    return "accepted"


@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_input_is_rejected_with_a_named_key_or_file(tmp_path, name):
    case, named = CASES[name]
    assert outcome(case, named, tmp_path) == "rejected"


if __name__ == "__main__":
    import tempfile

    results = {}
    for name, (case, named) in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            results[name] = outcome(case, named, Path(d))
    for name, r in results.items():
        print(f"{'ok ' if r == 'rejected' else 'BAD'} {name}: {r}")
    rejected = sum(r == "rejected" for r in results.values())
    print(f"{len(results)} cases tried, {rejected} rejected with a named key or file, {len(results) - rejected} not")
    sys.exit(0 if rejected == len(results) else 1)
