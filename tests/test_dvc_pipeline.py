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
from pathlib import Path

import pytest
import torch
import yaml

from structlth.artifacts import load_tensors

from conftest import ROOT, tiny_raw

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    for item in ("dvc.yaml", "stages", "structlth", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    raw = tiny_raw()
    raw["data"]["root"] = str(ROOT / "data" / "raw")
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run(["git", "init", "-q"], d)
    _run(["dvc", "init", "-q"], d)
    _run(["dvc", "config", "core.analytics", "false"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], d)
    _run(["dvc", "repro", "-q"], d)
    return d


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
            assert 0 <= metrics["test_acc"] <= 1 and "layers" in metrics
            masks, _ = load_tensors(d / "mask.safetensors")
            rows = [m.flatten(1) for m in masks.values()]
            if method in ("imp_channel", "refill", "refill_plus"):
                assert all(bool(((r.all(1)) | (~r.any(1))).all()) for r in rows), f"{method} not channel-wise"
    imp = {r: json.loads((repo / "artifacts/imp" / r / "metrics.json").read_text())["sparsity"] for r in ("round1", "round2")}
    assert abs((1 - imp["round1"]) - 0.8) < 0.01 and abs((1 - imp["round2"]) - 0.64) < 0.01
    bench = (repo / "reports" / "bench.csv").read_text()
    assert "regroup_channel" in bench and "slim" in bench and "csr" in bench
    assert (repo / "reports" / "report.md").read_text().startswith("# structlth report")


def test_editing_one_ticket_section_invalidates_only_its_tickets(pristine):
    _edit(pristine, lambda r: r["tickets"]["regroup"].update(t2=0.6))
    assert _changed(pristine) == {"ticket@regroup-round1", "ticket@regroup-round2", "bench", "report"}


def test_appending_a_round_adds_stages_and_recomputes_nothing_earlier(pristine):
    _edit(pristine, lambda r: r["prune"]["rounds"].update(round3={"prev": "round2"}))
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
