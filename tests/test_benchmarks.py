"""Every benchmark runs end to end: `python -m benchmarks --smoke` at a tiny size, in a tiny
finished workspace (params.yaml + artifacts/, trained through the library as the pipeline trains
it). A smoke run checks that a benchmark still runs, not what it measures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.__main__ import ALL
from helpers import ROOT, tiny_raw, tool_env
from structlth.config import parse_params
from structlth.data import prepare_data
from structlth.replicate import run_replicate

pytestmark = pytest.mark.slow


def workspace_raw() -> dict:
    """The suite's params cut to one round: both chains, a refill and a regroup ticket, the baseline."""
    raw = tiny_raw()
    raw["prune"].update(rounds={"round1": {"prev": "round0"}}, ticket_rounds=["round1"])
    raw["tickets"] = {"refill": raw["tickets"]["refill"], "regroup": raw["tickets"]["regroup_channel"]}
    raw["bench"].update(batch_sizes=[4], repeats=2, blocks=2)
    return raw


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("workspace")
    raw = workspace_raw()
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    prepare_data(params.data, d / "data")
    run_replicate(params, params.train.seed, d / "data", d / "artifacts", d / "cache", log=lambda s: None)
    shutil.move(d / "data", d / "artifacts" / "data")
    return d


def test_every_benchmark_runs_at_a_tiny_size(workspace, tmp_path):
    env = {**tool_env(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)], cwd=workspace, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = {f.stem: json.loads(f.read_text()) for f in tmp_path.glob("*.json")}
    assert set(written) == set(ALL)  # the CUDA one too, on the CPU
    for name, result in written.items():
        assert result["machine"] and "summary" in result, name
    assert not (workspace / "reports").exists()  # a smoke run never writes the recorded results
