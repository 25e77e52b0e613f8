"""DVC runs that stop at the params check, or run only the data and pretrain stages, each in a
fresh temporary git + DVC repo (the full pipeline's repo is in test_dvc_pipeline.py)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from helpers import ROOT, new_dvc_repo, run_tool, stages_changed, stages_ran, tiny_raw, tool_env
from structlth.imagefolder import write_tree

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["train"].update(rewind_epoch=5), "rewind_epoch (5) must be smaller than epochs (2)"),
        (lambda r: r["tickets"]["refill"].update(criterion="l3"), "tickets.refill.criterion"),
        (lambda r: r["data"].update(train_subset=10**6), "data: train_subset=1000000 is larger than the dataset"),
    ],
)
def test_bad_params_under_dvc_repro_fail_with_one_message(tmp_path, edit, key):
    raw = tiny_raw()
    edit(raw)
    d = new_dvc_repo(tmp_path, raw)
    env = tool_env()
    proc = subprocess.run(["dvc", "repro"], cwd=d, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert key in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    # the first stages (code, check_params) validate the params before writing: no output exists
    assert not (d / "artifacts").exists() and not (d / "dvc.lock").exists()


def test_imagenet_preset_streams_a_jpeg_tree_and_reruns_prepare_when_an_image_changes(tmp_path):
    tree = write_tree(tmp_path / "imagenet", classes=3, per_class=12, val_per_class=3, side=40)
    raw = yaml.safe_load((ROOT / "configs" / "imagenet_resnet50.yaml").read_text())
    raw["data"].update(root=str(tree), image_size=16, val_size=6, batch_size=8, eval_batch_size=16)  # tiny: CPU seconds
    raw["train"].update(epochs=1, rewind_epoch=0, milestones=[])
    raw["model"].update(arch="resnet18")  # the preset's ResNet-50 adds nothing to streaming but minutes of CPU
    raw["runtime"].update(device="cpu", threads=1, loader_workers=2)
    (tmp_path / "repo").mkdir()
    d = new_dvc_repo(tmp_path / "repo", raw)
    assert stages_ran(run_tool(["dvc", "repro", "pretrain"], d)) == {"code", "check_params", "prepare", "pretrain"}
    data = d / "artifacts" / "data"
    assert [f.name for f in data.iterdir()] == ["index.json"] and (data / "index.json").stat().st_size < 10_000
    metrics = json.loads((d / "artifacts" / "pretrain" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and len(json.loads((d / "artifacts" / "pretrain" / "curve.json").read_text())) == 1
    assert json.loads((d / "artifacts" / "data_metrics.json").read_text())["train_images"] == 30
    image = next((tree / "train" / "class001").iterdir())
    image.write_bytes((tree / "train" / "class002" / "00000.JPEG").read_bytes())  # one image edited in place
    changed = stages_changed(d)
    assert changed >= {"prepare"} and "check_params" not in changed
    assert stages_ran(run_tool(["dvc", "repro", "pretrain"], d)) == {"prepare", "pretrain"}
