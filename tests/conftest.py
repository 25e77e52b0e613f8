"""Shared fixtures: a tiny, fast params set and synthetic data on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from helpers import synthetic_dataset, tiny_raw
from structlth.config import parse_params
from structlth.data import save_dataset

FIRST = ("test_dvc_pipeline.py", "test_benchmarks.py", "test_interrupt.py", "test_replicate.py", "test_distributed.py")  # the longest files


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest test files first: under `-n 2 --dist loadfile` they start at once, and the short
    files fill the other worker, so the suite takes about as long as its longest file."""
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
