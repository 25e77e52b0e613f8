"""Helpers the test modules share (fixtures stay in conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from torch import nn

from structlth.data import Dataset, Split
from structlth.models import build_model

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = {"refill": "channel", "imp_channel": "channel", "torch_pruning": "channel", "regroup": "group", "imp": "unstructured"}


def tiny_raw() -> dict:
    """The suite's own params (tests/fixture_params.yaml): seconds of CPU work."""
    return yaml.safe_load((ROOT / "tests" / "fixture_params.yaml").read_text())


def tool_env() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's scripts (dvc, structlth) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


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


def randomised_model(arch: str, width: float, in_ch: int = 3) -> nn.Module:
    """A model in eval mode with non-trivial BN statistics, so dead-channel handling matters."""
    torch.manual_seed(0)
    m = build_model(arch, 10, in_ch, width).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def is_block_mask(out: torch.Tensor, min_rows: int) -> bool:
    """True when `out` keeps at least one row and its live rows fall into groups of identical
    pattern (dense blocks), each of at least `min_rows` rows."""
    rows = out.flatten(1).bool()
    live = rows[rows.any(1)]
    if len(live) == 0:
        return False
    _, counts = torch.unique(live, dim=0, return_counts=True)
    return bool((counts >= min_rows).all())


def run_tool(cmd: list[str], cwd: Path) -> str:
    env = tool_env()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def new_dvc_repo(d: Path, raw: dict) -> Path:
    """A git + DVC repo with the project's pipeline and `raw` as params.yaml, committed."""
    for item in ("dvc.yaml", "stages", "structlth", ".gitignore", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_tool(["git", "init", "-q"], d)
    run_tool(["dvc", "init", "-q"], d)
    run_tool(["dvc", "config", "core.analytics", "false"], d)
    shutil.copytree(ROOT / ".dvc" / "plots", d / ".dvc" / "plots")  # the plot templates dvc.yaml names
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], d)
    return d


def stages_changed(repo: Path) -> set[str]:
    out = run_tool(["dvc", "status", "--json"], repo)
    return set(json.loads(out or "{}"))


def stages_ran(out: str) -> set[str]:
    """Stages `dvc repro` ran, from its output."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
