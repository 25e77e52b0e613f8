"""Shared fixtures: a tiny, fast params set and synthetic data on disk."""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import new_dvc_repo, pipeline_raw, run_tool, synthetic_dataset, tiny_raw
from structlth.config import parse_params
from structlth.data import save_dataset

# One compute thread per test process and per process a test starts: the xdist workers already
# share the cores, and a second thread spins while it waits for the busy cores (test_speedup's
# ResNet-50 cases: 84 CPU-s with two threads, 61 with one; the method probe of test_codedeps, in
# a subprocess, 10.2 CPU-s with two threads beside two busy cores, 5.5 with one). Stages and
# benchmarks set their own from params.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

# the longest files (the two DVC ones share one pipeline run)
FIRST = ("test_dvc_remote.py", "test_dvc_pipeline.py", "test_benchmarks.py", "test_distributed.py", "test_speedup.py", "test_dvc_checks.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first (pyproject's addopts keep xdist from reordering them): under
    `--dist loadfile` they start at once and the short files fill the workers behind them."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))


@pytest.fixture
def raw_params() -> dict:
    return copy.deepcopy(tiny_raw())


@pytest.fixture
def params(raw_params):
    return parse_params(raw_params)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    save_dataset(synthetic_dataset(), d, {"dataset": "synthetic"})
    return d


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory) -> Path:
    """A git + DVC repo with helpers.pipeline_raw's pipeline run to the end by `dvc repro`,
    made once per session: under xdist the first worker to ask runs it in the folder all the
    session's workers share, and the others wait on its lock. Tests work on copies (copy_repo)."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared  # (-n 0 and -p no:xdist: one process)
    repo, done = shared / "pipeline" / "repo", shared / "pipeline" / "done"
    with open(shared / "pipeline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(repo.parent, ignore_errors=True)
            repo.mkdir(parents=True)
            run_tool(["dvc", "repro", "-q"], new_dvc_repo(repo, pipeline_raw()))
            done.touch()
    return repo
