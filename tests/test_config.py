"""params.yaml validation: every bad input stops with one message naming the key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, tool_env
from structlth.config import load_params, parse_params
from structlth.errors import ParamsError


def test_fixture_params_validate():
    p = parse_params(yaml.safe_load((ROOT / "tests" / "fixture_params.yaml").read_text()))
    assert p.round_ids() == ["round1", "round2"]
    assert set(p.tickets) >= {"refill", "refill_plus", "regroup"}


def _bad(raw, edit):
    edit(raw)
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    return str(exc.value)


@pytest.mark.parametrize(
    "edit, key, hint",
    [
        (lambda r: r["train"].update(lr_typo=0.1), "train.lr_typo", "unknown key"),
        (lambda r: r["train"].update(epoch=3), "train.epoch", "unknown key (did you mean 'epochs'?)"),
        (lambda r: r["tickets"]["refill"].update(criteria="l1"), "tickets.refill.criteria", "unknown key (did you mean 'criterion'?)"),
        (lambda r: r.update(baseline={}), "baseline", "unknown key (did you mean 'baselines'?)"),
        (lambda r: r["train"].update(epochs="many"), "train.epochs", "integer"),
        (lambda r: r["prune"].update(rate=1.5), "prune.rate", "less than 1"),
        (lambda r: r["prune"].update(rate=0), "prune.rate", "greater than 0"),
        (lambda r: r["model"].update(arch="resnet21"), "model.arch", "'resnet20'"),
        (lambda r: r["data"].update(dataset="mnist"), "data.dataset", "'fashion_mnist'"),
        (lambda r: r["data"].update(batch_size=0), "data.batch_size", "greater than or equal to 1"),
        (lambda r: r["train"].update(rewind_epoch=2, epochs=2), "train", "rewind_epoch (2) must be smaller than epochs (2)"),
        (lambda r: r["tickets"]["refill"].update(criterion="l3"), "tickets.refill.criterion", "'saliency'"),
        (lambda r: r["tickets"]["regroup"].update(column_rule="greedy"), "tickets.regroup.column_rule", "'density'"),
        (lambda r: r["tickets"]["regroup"].update(kind="reshuffle"), "tickets.regroup", "kind must be one of"),
        (
            lambda r: r["tickets"]["regroup"].update(channel_align=8),
            "tickets.regroup.channel_align",
            "unknown key (did you mean 'input_align'?)",
        ),
        (
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round0"}, "round3": {"prev": "round2"}}),
            "prune.rounds",
            "neither round0 nor another round",
        ),
        (
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round2"}, "round2": {"prev": "round1"}}),
            "prune.rounds",
            "not reachable from round0",
        ),
        (
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round0"}, "round2": {"prev": "round0"}}),
            "prune.rounds",
            "both follow round0",
        ),
        (lambda r: r["prune"].update(rounds={"r1": {"prev": "round0"}}), "prune.rounds", "must look like round1"),
        (lambda r: r["prune"].update(ticket_rounds=["round1", "round7"]), "prune", "ticket_rounds must name distinct rounds"),
        (lambda r: r["prune"].update(ticket_rounds=["round1", "round1"]), "prune", "ticket_rounds must name distinct rounds"),
        (lambda r: r["bench"].update(batch_sizes=[0]), "bench.batch_sizes.0", "greater than or equal to 1"),
        (lambda r: r["train"].update(epochs="4"), "train.epochs", "valid integer"),  # no lax coercion
        (lambda r: r["train"].update(rewind_epoch=True), "train.rewind_epoch", "valid integer"),
        (lambda r: r["prune"].update(rate=".5"), "prune.rate", "valid number"),
        (lambda r: r["data"]["augment"].update(hflip="no"), "data.augment.hflip", "valid boolean"),
        (lambda r: r["train"].update(lr=float("inf")), "train.lr", "finite number"),
        (lambda r: r["bench"].update(atol=float("inf")), "bench.atol", "finite number"),
        (lambda r: r.update(extra_section={}), "extra_section", "unknown key"),
        (lambda r: r["train"].update(schedule="multistep", milestones=[1, 1]), "train", "strictly increasing"),
        (lambda r: r["train"].update(seed=2**63), "train.seed", "less than 9223372036854775808"),
        (lambda r: r["tickets"]["regroup"].update(seed=-1), "tickets.regroup.seed", "greater than or equal to 0"),
        (lambda r: r["data"].update(batch_size=10**6, train_subset=None), "data", "batch_size=1000000 is larger than the dataset"),
        (lambda r: r["bench"].update(batch_sizes=[]), "bench.batch_sizes", "at least 1 item"),
        (lambda r: r["bench"].update(batch_sizes=[1, 512]), "bench.batch_sizes", "512 is larger than the 128 test images"),
        (
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round0"}, "round2\n": {"prev": "round1"}}, ticket_rounds=["round1"]),
            "prune.rounds",
            "must look like round1",
        ),
        (
            lambda r: r["prune"].update(rounds={"round1": {"prev": "round0"}, "round2": {"prev": "round2"}}),
            "prune.rounds",
            "round2.prev = 'round2': a round cannot follow itself",
        ),
        (lambda r: r["tickets"].update(data=r["tickets"]["refill"]), "tickets", "none of imp, imp_channel, data, pretrain, bench"),
        (lambda r: r["tickets"].update(pretrain=r["tickets"]["refill"]), "tickets", "none of imp, imp_channel, data, pretrain, bench"),
        (lambda r: r["tickets"].update({"t" * 300: r["tickets"]["refill"]}), "tickets", "at most 64 characters"),
        (lambda r: r["runtime"].update(device="tpu"), "runtime.device", "'cuda'"),
        (lambda r: r["model"].update(arch="resnet18", width=0.5), "model", "width must be 1.0 for resnet18"),
        (
            lambda r: r["baselines"]["tp_l1"].update(match="refil"),
            "baselines.tp_l1.match",
            "'refil' is not a ticket of the tickets section (refill, refill_plus",
        ),
        (lambda r: r["baselines"]["tp_l1"].update(importance="hessian"), "baselines.tp_l1.importance", "'taylor'"),
        (lambda r: r["baselines"]["tp_l1"].update(start="scratch"), "baselines.tp_l1.start", "'finetune'"),
        (lambda r: r["baselines"].update(refill=r["baselines"]["tp_l1"]), "baselines", "no ticket's name"),
        (
            lambda r: (r["tickets"]["refill"].update(init="random"), r.update(group_chains={"imp_refill": {"ticket": "refill"}})),
            "group_chains.imp_refill.ticket",
            "retrains from init: random, but a group-aware chain rewinds every round",
        ),
    ],
)
def test_bad_params_name_key_and_allowed_values(raw_params, edit, key, hint):
    msg = _bad(raw_params, edit)
    assert f"  {key}:" in msg or f"{key}:" in msg.splitlines()[1], msg
    assert hint in msg, msg


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["prune"].update(rate=2), "prune.rate"),
        (
            lambda r: r["report"].update(mask_layer="no.such.layer"),
            "report.mask_layer: 'no.such.layer' is not a prunable layer",
        ),  # the machine-side checks too
    ],
)
def test_cli_validate_exits_2_without_traceback_and_writes_nothing(tmp_path, raw_params, edit, key):
    edit(raw_params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "structlth.cli", "validate", "params.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _prepare_fails_cleanly(tmp_path, raw: dict, hint: str) -> None:
    """The prepare stage run on `raw` exits 2 with `hint`, no traceback, nothing written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "prepare.py"), "--out", "artifacts/data", "--metrics", "artifacts/data_metrics.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "artifacts").exists()


def test_stage_with_bad_params_exits_2_and_writes_nothing(tmp_path, raw_params):
    raw_params["model"]["arch"] = "resnet21"
    _prepare_fails_cleanly(tmp_path, raw_params, "model.arch")


@pytest.mark.parametrize(
    "edit, hint",
    [
        (lambda r: r["data"].update(dataset="tiny_imagenet", root="no/such/dir"), "data.root='no/such/dir' needs train/"),
        (lambda r: r["data"].update(train_subset=10**6), "data: train_subset=1000000 is larger than the dataset"),
        (lambda r: r["data"].update(test_subset=10**6), "data: test_subset=1000000 is larger than the dataset"),
    ],
)
def test_prepare_with_unusable_data_params_exits_2_and_writes_nothing(tmp_path, raw_params, edit, hint):
    raw_params["data"]["root"] = str(tmp_path / "raw")
    edit(raw_params)
    _prepare_fails_cleanly(tmp_path, raw_params, hint)


def test_fashion_mnist_without_a_local_copy_does_not_download_when_download_is_false(tmp_path, monkeypatch, raw_params):
    """No Debian package, no files under data.root, download: false -> a clear error, no network."""
    from structlth import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    calls = []
    monkeypatch.setattr("torchvision.datasets.FashionMNIST.download", lambda self: calls.append(1))
    raw_params["data"].update(root=str(tmp_path / "raw"), download=False)
    with pytest.raises(data.DataError, match="data.download is false"):
        data.build_dataset(parse_params(raw_params).data)
    assert calls == []


def test_a_mistyped_fashion_mnist_root_is_an_error_naming_it_not_debians_folder(tmp_path, raw_params):
    from structlth.checks import check_runnable
    from structlth.data import DEBIAN_FASHION_MNIST

    assert (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()  # the set-up installs it: what a typo used to fall back on
    typo = str(DEBIAN_FASHION_MNIST).replace("fashion-mnist", "fashion-mnst")
    raw_params["data"].update(root=typo, download=False)
    with pytest.raises(ParamsError, match=re.escape(f"data.root: no fashion_mnist under {typo!r}")):
        check_runnable(parse_params(raw_params))


@pytest.mark.parametrize(
    "dataset, expected",
    [
        (
            "cifar10",
            "cifar-10-batches-py/ with data_batch_1, data_batch_5, test_batch, batches.meta, ...; offline: copy cifar-10-python.tar.gz",
        ),
        ("cifar100", "cifar-100-python/ with train, test, meta, ...; offline: copy cifar-100-python.tar.gz"),
        ("fashion_mnist", "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"),
    ],
)
def test_a_missing_dataset_names_what_data_root_must_hold(tmp_path, monkeypatch, raw_params, dataset, expected):
    from structlth import data
    from structlth.checks import check_runnable

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    raw_params["data"].update(dataset=dataset, root=str(tmp_path), download=False)
    with pytest.raises(ParamsError, match=re.escape(f"data.root: no {dataset} under {str(tmp_path)!r}. It must hold")) as err:
        check_runnable(parse_params(raw_params))
    assert expected in str(err.value) and "data.download: true" in str(err.value)


@pytest.mark.parametrize(
    "content, hint",
    [
        (b"data:\n  dataset: cifar10\ndata:\n  dataset: fashion_mnist\n", "duplicate key 'data'"),
        (b"data: \xff\xfe caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_unreadable_params_files_get_one_line(tmp_path, content, hint):
    (tmp_path / "params.yaml").write_bytes(content)
    with pytest.raises(ParamsError, match=hint):
        load_params(tmp_path / "params.yaml")


def test_a_params_folder_gets_one_line(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(ParamsError, match="is a folder"):
        load_params(tmp_path / "params.yaml")


def test_params_hash_is_stable_across_processes_and_ignores_runtime_and_data_location(raw_params):
    from structlth.config import params_hash

    p = parse_params(raw_params)
    here = params_hash(p.data, p.model, p.train)
    code = (
        "import sys, yaml; from structlth.config import parse_params, params_hash;"
        " p = parse_params(yaml.safe_load(sys.stdin.read())); print(params_hash(p.data, p.model, p.train))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        input=yaml.safe_dump(raw_params),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout.strip()
    assert other == here
    raw_params["runtime"].update(threads=7, device="cpu", progress="always")
    raw_params["data"].update(root="/elsewhere/the-same-images", download=True)  # where the data is found: no identity
    q = parse_params(raw_params)
    assert params_hash(q.data, q.model, q.train) == here
    raw_params["data"]["val_size"] += 1
    assert params_hash(parse_params(raw_params).data) != params_hash(p.data)
    raw_params["train"]["lr"] = 0.07
    assert params_hash(parse_params(raw_params).train) != params_hash(p.train)


def test_a_variant_composes_on_its_base(tmp_path, raw_params):
    """base: + what differs: mappings merge key by key, other values (null too) replace, drop:
    removes keys of the base first; bases chain."""
    raw_params["tickets"]["regroup"]["max_pins"] = 60_000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.yaml").write_text(
        "base: ../params.yaml\ndrop: [prune.rounds.round2, tickets.refill_plus]\n"
        "prune: {ticket_rounds: [round1]}\ntickets: {regroup: {max_pins: null}}\n"
    )
    (tmp_path / "v" / "b.yaml").write_text("base: a.yaml\ntrain: {epochs: 3}\n")
    p = load_params(tmp_path / "v" / "b.yaml")
    assert list(p.prune.rounds) == ["round1"] and p.prune.ticket_rounds == ["round1"] and "refill_plus" not in p.tickets
    assert p.tickets["regroup"].max_pins is None and p.tickets["regroup"].rows_per_part == 4  # merged, not replaced
    assert p.train.epochs == 3 and p.train.lr == raw_params["train"]["lr"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: missing.yaml\n", "missing.yaml: no such file"),
        ("base: params.yaml\ndrop: [train.nope]\n", "drop: 'train.nope' is not a key of its base params.yaml"),
        ("base: v.yaml\n", "leads back to"),
        ("base: [params.yaml]\n", "base must be a params file's path"),
    ],
)
def test_a_broken_variant_is_one_clear_error(tmp_path, raw_params, text, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    (tmp_path / "v.yaml").write_text(text)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(tmp_path / "v.yaml")


def test_cli_compose_writes_the_complete_params_a_variant_describes(tmp_path, raw_params):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    (tmp_path / "v.yaml").write_text("base: params.yaml\nreplicates: {seeds: [1, 2]}\n")
    out = tmp_path / "composed.yaml"
    proc = subprocess.run(
        ["structlth", "compose", str(tmp_path / "v.yaml"), "--out", str(out)], capture_output=True, text=True, env=tool_env()
    )
    assert proc.returncode == 0, proc.stderr
    composed = yaml.safe_load(out.read_text())
    assert "base" not in composed and composed["replicates"]["seeds"] == [1, 2] and composed["tickets"] == raw_params["tickets"]


def test_a_baselines_channel_multiple_follows_the_ticket_it_matches_unless_set(raw_params):
    """round_to: null keeps the matched refill's channel_align (a regroup ticket has none: 1), so
    a baseline and its ticket keep channels in the same multiples without a second setting."""
    raw_params["tickets"]["refill"]["channel_align"] = 8
    raw_params["baselines"] = {
        "follows": {"kind": "torch_pruning", "match": "refill"},
        "of_regroup": {"kind": "torch_pruning", "match": "regroup"},
        "set": {"kind": "torch_pruning", "match": "refill", "round_to": 4},
    }
    p = parse_params(raw_params)
    assert [p.round_to(b) for b in ("follows", "of_regroup", "set")] == [8, 1, 4]
