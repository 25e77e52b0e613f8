"""Shared fixtures: a tiny, fast params set and synthetic data on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from structlth.config import parse_params
from structlth.data import Dataset, Split, save_dataset

ROOT = Path(__file__).resolve().parents[1]


def tiny_raw() -> dict:
    """The suite's own params (tests/fixture_params.yaml): seconds of CPU work."""
    return yaml.safe_load((ROOT / "tests" / "fixture_params.yaml").read_text())


@pytest.fixture
def raw_params() -> dict:
    return copy.deepcopy(tiny_raw())


@pytest.fixture
def params(raw_params):
    return parse_params(raw_params)


def synthetic_dataset(n_train=256, n_val=64, n_test=128, channels=1, size=28, classes=4, seed=0) -> Dataset:
    """Learnable toy images: each class lights up its own quadrant."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=g)
        img = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.int64)
        h = size // 2
        for c in range(classes):
            sel = labels == c
            y0, x0 = (c // 2) * h, (c % 2) * h
            img[sel, :, y0 : y0 + h, x0 : x0 + h] += 150
        return Split(img.clamp(0, 255).to(torch.uint8), labels)

    return Dataset(split(n_train), split(n_val), split(n_test), [f"c{i}" for i in range(classes)], [0.3] * channels, [0.3] * channels)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    save_dataset(synthetic_dataset(), d, {"dataset": "synthetic"})
    return d
