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
    """params.yaml's content shrunk to seconds of CPU work."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(val_size=64, train_subset=256, test_subset=128, batch_size=32, eval_batch_size=128)
    raw["model"].update(arch="resnet20", width=0.25)
    raw["train"].update(epochs=2, rewind_epoch=1, retrain="rest")
    raw["prune"]["rounds"] = {"round1": {"prev": "round0"}, "round2": {"prev": "round1"}}
    for t in raw["tickets"].values():
        if t["kind"] == "regroup":
            t.update(min_rows=2, rows_per_part=4, b2=1)
    raw["bench"].update(batch_sizes=[2], repeats=2, warmup=1)
    raw["runtime"].update(progress="never")
    return raw


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
