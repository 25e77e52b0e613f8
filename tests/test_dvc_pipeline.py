"""The DVC pipeline end to end on a tiny config, in a temporary git + DVC repo.

Checks what users rely on: every stage runs and writes its outputs, masks have the promised
structure, and each kind of params edit invalidates exactly the stages that read it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from structlth.artifacts import load_tensors
from structlth.export import is_channel_wise

from conftest import ROOT, tiny_raw
from test_pruning import _is_union_of_dense_row_groups

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _new_repo(d: Path, raw: dict) -> Path:
    """A git + DVC repo with the project's pipeline and `raw` as params.yaml, committed."""
    for item in ("dvc.yaml", "stages", "structlth", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    raw["data"]["root"] = str(ROOT / "data" / "raw")
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run(["git", "init", "-q"], d)
    _run(["dvc", "init", "-q"], d)
    _run(["dvc", "config", "core.analytics", "false"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], d)
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    d = _new_repo(tmp_path_factory.mktemp("repo"), tiny_raw())
    _run(["dvc", "repro", "-q"], d)
    return d


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["train"].update(rewind_epoch=5), "rewind_epoch (5) must be smaller than epochs (2)"),
        (lambda r: r["tickets"]["refill"].update(criterion="l3"), "tickets.refill.criterion"),
        (lambda r: r["data"].update(train_subset=10**6), "data.train_subset=1000000 is larger than the dataset"),
    ],
)
def test_bad_params_under_dvc_repro_fail_with_one_message(tmp_path, edit, key):
    raw = tiny_raw()
    edit(raw)
    d = _new_repo(tmp_path, raw)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["dvc", "repro"], cwd=d, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert key in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert not (d / "artifacts").exists() and not (d / "dvc.lock").exists()


def _changed(repo: Path) -> set[str]:
    out = _run(["dvc", "status", "--json"], repo)
    return set(json.loads(out or "{}"))


def _edit(repo: Path, fn) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    fn(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def pristine(repo):
    before = (repo / "params.yaml").read_text()
    yield repo
    (repo / "params.yaml").write_text(before)


def test_repro_writes_every_round_and_ticket_with_its_structure(repo):
    assert _changed(repo) == set()
    for method in ("imp", "imp_channel", "refill", "refill_plus", "regroup", "regroup_channel"):
        for rnd in ("round1", "round2"):
            d = repo / "artifacts" / method / rnd
            metrics = json.loads((d / "metrics.json").read_text())
            assert 0 <= metrics["test_acc"] <= 1 and "layers" not in metrics
            layers = json.loads((d / "layers.json").read_text())
            assert layers and all(0 <= r["density"] <= 1 for r in layers)
            masks, _ = load_tensors(d / "mask.safetensors")
            rows = [m.flatten(1) for m in masks.values()]
            if method in ("imp_channel", "refill", "refill_plus"):
                assert all(is_channel_wise(m) for m in masks.values()), f"{method} not channel-wise"
            if method.startswith("regroup"):
                min_rows = tiny_raw()["tickets"][method]["min_rows"]
                assert all(_is_union_of_dense_row_groups(m.bool(), min_rows) for m in masks.values()), f"{method} not blocks"
    imp = {r: json.loads((repo / "artifacts/imp" / r / "metrics.json").read_text())["sparsity"] for r in ("round1", "round2")}
    assert abs((1 - imp["round1"]) - 0.8) < 0.01 and abs((1 - imp["round2"]) - 0.64) < 0.01
    bench = (repo / "reports" / "bench.csv").read_text()
    assert "regroup_channel" in bench and "slim" in bench and "csr" in bench
    assert (repo / "reports" / "report.md").read_text().startswith("# structlth report")


def test_editing_one_ticket_section_invalidates_only_its_tickets(pristine):
    _edit(pristine, lambda r: r["tickets"]["regroup"].update(seed=1))
    assert _changed(pristine) == {"ticket@regroup-round1", "ticket@regroup-round2", "bench", "report"}


def test_appending_a_round_adds_stages_and_recomputes_nothing_earlier(pristine):
    def append(r):
        r["prune"]["rounds"].update(round3={"prev": "round2"})
        r["prune"]["ticket_rounds"].append("round3")

    _edit(pristine, append)
    changed = _changed(pristine)
    assert {s for s in changed if "round1" in s or "round2" in s} == set()
    assert {"imp@round3", "imp_channel@round3", "ticket@refill-round3"} <= changed


def test_editing_the_rate_invalidates_the_imp_chain(pristine):
    _edit(pristine, lambda r: r["prune"].update(rate=0.3))
    assert _changed(pristine) == {"imp@round1", "imp@round2"}  # the rest follows from their outs


def test_runtime_section_invalidates_nothing(pristine):
    _edit(pristine, lambda r: r["runtime"].update(threads=1, device="cpu"))
    assert _changed(pristine) == set()


def test_rerun_of_a_round_gives_byte_identical_masks(repo):
    mask = repo / "artifacts" / "imp" / "round1" / "mask.safetensors"
    before = mask.read_bytes()
    _run(["dvc", "repro", "-f", "-s", "-q", "imp@round1"], repo)
    assert mask.read_bytes() == before
    w = load_tensors(repo / "artifacts" / "imp" / "round1" / "weights.safetensors")[0]
    assert all(t.dtype in (torch.float32, torch.int64) for t in w.values())


def _git(repo: Path, *args: str) -> str:
    return _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], repo)


@pytest.fixture(scope="module")
def published(repo, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny repo with its results committed and pushed to a local-directory remote."""
    remote = tmp_path_factory.mktemp("remote")
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "results")
    _run(["dvc", "push", "-q"], repo)
    return repo, remote


def test_pull_into_a_fresh_clone_recomputes_nothing(published, tmp_path):
    repo, _ = published
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], clone))  # from git alone
    assert "artifacts/imp/round1/metrics.json" in json.dumps(metrics)
    _run(["dvc", "pull", "-q"], clone)
    assert _changed(clone) == set()
    mask = "artifacts/imp/round1/mask.safetensors"
    assert (clone / mask).read_bytes() == (repo / mask).read_bytes()


def test_corrupted_remote_object_is_detected_on_pull(published, tmp_path):
    repo, remote = published
    bad_remote = tmp_path / "remote"
    shutil.copytree(remote, bad_remote)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    target = "artifacts/imp/round1/mask.safetensors"
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == target)
    obj = bad_remote / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")  # one flipped byte, same size

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(bad_remote)], clone)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["dvc", "pull"], cwd=clone, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert md5 in proc.stdout + proc.stderr, proc.stderr  # named as missing: its hash did not match
    assert not (clone / target).exists(), "the corrupt object reached the workspace"
    assert (clone / "artifacts/imp/round2/mask.safetensors").exists()  # the intact rest arrived


def test_queued_experiments_run_in_parallel_and_show_their_metrics(published):
    repo, _ = published
    for tol in ("0.02", "0.5"):
        _run(["dvc", "exp", "run", "--queue", "-q", "-n", f"tol{tol[2:]}", "-S", f"report.tolerance={tol}"], repo)
    _run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while any(s in _run(["dvc", "queue", "status"], repo) for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, _run(["dvc", "queue", "status"], repo)
        time.sleep(2)
    assert "Failed" not in _run(["dvc", "queue", "status"], repo), _run(["dvc", "queue", "logs", "tol02"], repo)
    shown = json.dumps(json.loads(_run(["dvc", "exp", "show", "--json"], repo)))
    for name in ("tol02", "tol5"):
        assert f'"{name}"' in shown
    assert "headline.json" in shown
