"""The DVC pipeline end to end on a tiny config, in a temporary git + DVC repo.

Checks what users rely on: every stage runs and writes its outputs, masks have the promised
structure, and each kind of params edit invalidates exactly the stages that read it.
"""

from __future__ import annotations

import json
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
from structlth.imagefolder import write_tree

from helpers import ROOT, is_block_mask, tiny_raw, tool_env

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = tool_env()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _new_repo(d: Path, raw: dict) -> Path:
    """A git + DVC repo with the project's pipeline and `raw` as params.yaml, committed."""
    for item in ("dvc.yaml", "stages", "structlth", ".gitignore", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
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
        (lambda r: r["data"].update(train_subset=10**6), "data: train_subset=1000000 is larger than the dataset"),
    ],
)
def test_bad_params_under_dvc_repro_fail_with_one_message(tmp_path, edit, key):
    raw = tiny_raw()
    edit(raw)
    d = _new_repo(tmp_path, raw)
    env = tool_env()
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
    for method in ("imp", "imp_channel", "refill", "refill_plus", "regroup", "regroup_channel", "tp_l1"):
        for rnd in ("round1", "round2"):
            d = repo / "artifacts" / method / rnd
            metrics = json.loads((d / "metrics.json").read_text())
            assert 0 <= metrics["test_acc"] <= 1 and "layers" not in metrics
            preds, meta = load_tensors(d / "predictions.safetensors")  # one class per test image, at the reported epoch
            assert preds["pred"].shape == (tiny_raw()["data"]["test_subset"],) and meta["round"] == f"{method}/{rnd}"
            assert float((preds["pred"] == preds["target"]).float().mean()) == pytest.approx(metrics["test_acc"])
            layers = json.loads((d / "layers.json").read_text())
            assert layers and all(0 <= r["density"] <= 1 for r in layers)
            masks, _ = load_tensors(d / "mask.safetensors")
            if method in ("imp_channel", "refill", "refill_plus", "tp_l1"):
                assert all(is_channel_wise(m) for m in masks.values()), f"{method} not channel-wise"
            if method.startswith("regroup"):
                min_rows = tiny_raw()["tickets"][method]["min_rows"]
                assert all(is_block_mask(m.bool(), min_rows) for m in masks.values()), f"{method} not blocks"
    imp = {r: json.loads((repo / "artifacts/imp" / r / "metrics.json").read_text())["sparsity"] for r in ("round1", "round2")}
    assert abs((1 - imp["round1"]) - 0.8) < 0.01 and abs((1 - imp["round2"]) - 0.64) < 0.01
    bench = (repo / "reports" / "bench.csv").read_text()
    assert "regroup_channel" in bench and "slim" in bench and "csr" in bench and "onnxruntime" in bench
    tp, refill = (json.loads((repo / "artifacts" / m / "round2" / "metrics.json").read_text()) for m in ("tp_l1", "refill"))
    assert tp["flops"] <= tp["matched_flops"] == refill["flops"]  # Torch-Pruning at the refill ticket's FLOPs
    report = (repo / "reports" / "report.md").read_text()
    assert report.startswith("# structlth report") and "## Accuracy evidence" in report and "| tp_l1 |" in report
    assert (repo / "reports" / "accuracy_vs_time_saving.png").is_file()


def _ran(out: str) -> set[str]:
    """Stages `dvc repro` ran, from its output."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def test_editing_one_ticket_reruns_and_rebenches_only_that_ticket(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    _edit(copy, lambda r: r["tickets"]["refill_plus"].update(refill_rate=0.5))
    # baselines read every ticket's params (the one they match cannot be declared alone), and
    # rerun to the same bytes: DVC then skips their bench stages
    baseline = {"baseline@tp_l1-round1", "baseline@tp_l1-round2"}
    assert _changed(copy) == {"check_params", "ticket@refill_plus-round1", "ticket@refill_plus-round2", *baseline, "report"}
    ran = _ran(_run(["dvc", "repro"], copy))
    assert {s for s in ran if s.startswith("bench")} == {"bench_ticket@refill_plus-round1", "bench_ticket@refill_plus-round2"}
    assert ran == {"check_params", "ticket@refill_plus-round1", "ticket@refill_plus-round2", *baseline, "bench_ticket@refill_plus-round1", "bench_ticket@refill_plus-round2", "report"}


def test_importing_the_library_with_bytecode_on_leaves_dvc_status_clean(repo):
    env = {k: v for k, v in tool_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import structlth.pipeline, structlth.speedup.bench, structlth.models, structlth.report"
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True)  # cwd first on sys.path: the repo's copy
    assert any((repo / "structlth" / "speedup" / "__pycache__").iterdir())
    assert _changed(repo) == set()


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
    assert _changed(pristine) == {"check_params", "imp@round1", "imp@round2"}  # the rest follows from their outs


def test_runtime_section_invalidates_nothing_but_the_params_check(pristine):
    _edit(pristine, lambda r: r["runtime"].update(threads=1, device="cpu"))
    assert _changed(pristine) == {"check_params"}  # seconds; its unchanged output reruns nothing else


def test_rerun_of_a_round_gives_byte_identical_masks(repo):
    mask = repo / "artifacts" / "imp" / "round1" / "mask.safetensors"
    before = mask.read_bytes()
    _run(["dvc", "repro", "-f", "-s", "-q", "imp@round1"], repo)
    assert mask.read_bytes() == before
    w = load_tensors(repo / "artifacts" / "imp" / "round1" / "weights.safetensors")[0]
    assert all(t.dtype in (torch.float32, torch.int64) for t in w.values())


def test_imagenet_preset_streams_a_jpeg_tree_and_reruns_prepare_when_an_image_changes(tmp_path):
    tree = write_tree(tmp_path / "imagenet", classes=3, per_class=12, val_per_class=3, side=40)
    raw = yaml.safe_load((ROOT / "configs" / "imagenet_resnet50.yaml").read_text())
    raw["data"].update(root=str(tree), image_size=32, val_size=6, batch_size=8, eval_batch_size=16)  # tiny: CPU seconds
    raw["train"].update(epochs=2, rewind_epoch=1, milestones=[1])
    raw["runtime"].update(device="cpu", loader_workers=2)
    (tmp_path / "repo").mkdir()
    d = _new_repo(tmp_path / "repo", raw)
    assert _ran(_run(["dvc", "repro", "pretrain"], d)) == {"check_params", "prepare", "pretrain"}
    data = d / "artifacts" / "data"
    assert [f.name for f in data.iterdir()] == ["index.json"] and (data / "index.json").stat().st_size < 10_000
    metrics = json.loads((d / "artifacts" / "pretrain" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and len(json.loads((d / "artifacts" / "pretrain" / "curve.json").read_text())) == 2
    assert json.loads((d / "artifacts" / "data_metrics.json").read_text())["train_images"] == 30
    image = next((tree / "train" / "class001").iterdir())
    image.write_bytes((tree / "train" / "class002" / "00000.JPEG").read_bytes())  # one image edited in place
    assert _changed(d) >= {"prepare"} and "check_params" not in _changed(d)
    assert _ran(_run(["dvc", "repro", "pretrain"], d)) == {"prepare", "pretrain"}


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


def _corrupt_remote_object(repo: Path, remote: Path, into: Path, target: str) -> str:
    """A copy of the remote at `into` with target's object corrupted the way it sits in a remote
    (read-only: DVC trusts read-only objects); returns the object's MD5."""
    shutil.copytree(remote, into)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == target)
    obj = into / "files" / "md5" / md5[:2] / md5[2:]
    mode = obj.stat().st_mode
    obj.chmod(mode | 0o200)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")  # one flipped byte, same size
    obj.chmod(mode)
    return md5


def test_corrupted_remote_object_never_passes_unnoticed(published, tmp_path):
    repo, remote = published
    target = "artifacts/imp/round1/mask.safetensors"
    bad_remote = tmp_path / "remote"
    md5 = _corrupt_remote_object(repo, remote, bad_remote, target)
    assert not (bad_remote / "files" / "md5" / md5[:2] / md5[2:]).stat().st_mode & 0o222  # read-only, as pushed

    clone = tmp_path / "clone"  # as the README sets a remote up: verify = true
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(bad_remote)], clone)
    _run(["dvc", "remote", "modify", "--local", "shared", "verify", "true"], clone)
    proc = subprocess.run(["dvc", "pull"], cwd=clone, capture_output=True, text=True, env=tool_env())
    assert proc.returncode != 0
    assert not (clone / target).exists(), "the corrupt object reached the workspace"
    assert (clone / "artifacts/imp/round2/mask.safetensors").exists()  # the intact rest arrived

    trusting = tmp_path / "trusting"  # without verify DVC places it; structlth verify names it
    _run(["git", "clone", "-q", str(repo), str(trusting)], tmp_path)
    _run(["dvc", "remote", "modify", "--local", "shared", "url", str(bad_remote)], trusting)
    subprocess.run(["dvc", "pull", "-q"], cwd=trusting, capture_output=True, env=tool_env())
    proc = subprocess.run(["structlth", "verify"], cwd=trusting, capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 1 and f"{target}: content differs from dvc.lock" in proc.stderr, proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1  # only the corrupt file


def test_a_rejected_params_edit_deletes_no_output(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    kept = ["artifacts/pretrain/metrics.json", "artifacts/pretrain/curve.json", "reports/headline.json", "reports/masks.png"]
    before = {f: (copy / f).read_bytes() for f in kept}
    for edit, message in [
        (lambda r: r["train"].update(epochs=0), "train.epochs"),
        (lambda r: r["report"].update(mask_layer="features.99.weight"), "report.mask_layer: 'features.99.weight' is not a prunable layer"),
    ]:
        pristine = (copy / "params.yaml").read_text()
        _edit(copy, edit)
        proc = subprocess.run(["dvc", "repro"], cwd=copy, capture_output=True, text=True, env=tool_env())
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert {f: (copy / f).read_bytes() for f in kept} == before
        (copy / "params.yaml").write_text(pristine)
    # a good params file again: at most the check reruns (DVC may restore it from its run cache)
    assert _ran(_run(["dvc", "repro"], copy)) <= {"check_params"} and _changed(copy) == set()


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
