"""Shared fixtures: a tiny, fast params set and synthetic data on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from structlth.config import parse_params
from structlth.data import save_dataset

from helpers import synthetic_dataset, tiny_raw

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
