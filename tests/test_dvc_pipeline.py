"""The DVC pipeline end to end on a tiny config, in a temporary git + DVC repo.

Checks what users rely on: every stage runs and writes its outputs, masks have the promised
structure, and each kind of params or code edit invalidates exactly the stages that read it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (
    BENCH_STAGES,
    TRAINING_STAGES,
    copy_repo,
    edit_params,
    is_block_mask,
    pipeline_raw,
    run_tool,
    stages_changed,
    stages_ran,
    tiny_raw,
    tool_env,
)
from structlth.artifacts import load_tensors
from structlth.export import is_channel_wise

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(finished_pipeline, tmp_path_factory) -> Path:
    return copy_repo(finished_pipeline, tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture
def pristine(repo):
    before = (repo / "params.yaml").read_text()
    yield repo
    (repo / "params.yaml").write_text(before)


def test_repro_writes_every_round_and_ticket_with_its_structure(repo):
    assert stages_changed(repo) == set()
    raw = pipeline_raw()
    methods = ("imp", "imp_channel", "refill", "regroup", "tp_l1")
    for method in methods:
        for rnd in ("round1", "round2") if method.startswith("imp") else raw["prune"]["ticket_rounds"]:
            d = repo / "artifacts" / method / rnd
            metrics = json.loads((d / "metrics.json").read_text())
            assert 0 <= metrics["test_acc"] <= 1 and "layers" not in metrics
            preds, meta = load_tensors(d / "predictions.safetensors")  # one class per test image, at the reported epoch
            assert preds["pred"].shape == (tiny_raw()["data"]["test_subset"],) and meta["round"] == f"{method}/{rnd}"
            assert float((preds["pred"] == preds["target"]).float().mean()) == pytest.approx(metrics["test_acc"])
            layers = json.loads((d / "layers.json").read_text())
            assert layers and all(0 <= r["density"] <= 1 for r in layers)
            masks, _ = load_tensors(d / "mask.safetensors")
            if method in ("imp_channel", "refill", "tp_l1"):
                assert all(is_channel_wise(m) for m in masks.values()), f"{method} not channel-wise"
            if method.startswith("regroup"):
                min_rows = raw["tickets"][method]["min_rows"]
                assert all(is_block_mask(m.bool(), min_rows) for m in masks.values()), f"{method} not blocks"
    imp = {r: json.loads((repo / "artifacts/imp" / r / "metrics.json").read_text())["sparsity"] for r in ("round1", "round2")}
    assert abs((1 - imp["round1"]) - 0.8) < 0.01 and abs((1 - imp["round2"]) - 0.64) < 0.01
    bench = (repo / "reports" / "bench.csv").read_text()
    assert (
        all(m in bench for m in methods) and "slim" in bench and "csr" in bench and "onnxruntime" not in bench
    )  # bench.onnxruntime: false
    tp, refill = (json.loads((repo / "artifacts" / m / "round2" / "metrics.json").read_text()) for m in ("tp_l1", "refill"))
    assert tp["flops"] <= tp["matched_flops"] == refill["flops"]  # Torch-Pruning at the refill ticket's FLOPs
    report = (repo / "reports" / "report.md").read_text()
    assert report.startswith("# structlth report") and "## Accuracy evidence" in report and "| tp_l1 |" in report
    assert (repo / "reports" / "accuracy_vs_time_saving.png").is_file()


def test_speed_is_a_dvc_metric_and_runs_compare_as_dvc_plots(repo):
    speed = json.loads((repo / "reports/bench/refill/round2/speed.json").read_text())
    assert set(speed) == {"test_acc", "sparsity", "flops_saving", "saving", "saving_ci95"}
    assert set(speed["saving_ci95"]) == set(speed["saving"])  # each saving with its own noise
    assert set(speed["saving"]) == {"torch_b2"}  # per runtime x batch size: PyTorch alone, as the params ask
    shown = run_tool(["dvc", "metrics", "show"], repo)
    assert "reports/bench/refill/round2/speed.json" in shown and "metrics.json" not in shown
    assert max(map(len, shown.splitlines())) <= 200, shown
    plots = json.loads(run_tool(["dvc", "plots", "show", "--json", "--split"], repo))
    ids = list(plots.get("data", plots))
    assert ids[:2] == ["accuracy_vs_sparsity", "accuracy_vs_time_saving"], ids
    assert '"method"' in json.dumps(plots["data"]["accuracy_vs_sparsity"] if "data" in plots else plots["accuracy_vs_sparsity"])


CODE_EDITS = [  # a comment appended to one library file, and the stages it must rerun
    ("structlth/pruning/sources/snip.py", set()),  # a method the pipeline does not run
    ("structlth/pruning/kinds/refill.py", {"ticket@refill-round2"}),
    ("structlth/pruning/kinds/regroup.py", {"ticket@regroup-round2"}),
    ("structlth/pruning/kinds/torch_pruning.py", {"baseline@tp_l1-round2"}),
    ("structlth/report/markdown.py", {"report"}),
    ("structlth/speedup/slim.py", BENCH_STAGES | {"report"}),  # the slim net: no training stage
    ("structlth/train.py", TRAINING_STAGES),  # every training stage, nothing upstream of them
]


@pytest.fixture(scope="module")
def code_repo(finished_pipeline, tmp_path_factory) -> Path:
    return copy_repo(finished_pipeline, tmp_path_factory.mktemp("code") / "repo")


@pytest.mark.parametrize("path, rerun", CODE_EDITS, ids=[Path(f).stem for f, _ in CODE_EDITS])
def test_a_code_edit_reruns_exactly_the_stages_that_run_it(code_repo, path, rerun):
    """Measured as a user would: edit, `dvc repro -s code` (the digests), `dvc status`."""
    f, lock, digests = code_repo / path, code_repo / "dvc.lock", code_repo / "codedeps"
    before, lock_before = f.read_text(), lock.read_text()
    shutil.copytree(digests, code_repo.parent / "codedeps", dirs_exist_ok=True)
    try:
        f.write_text(before + "\n# an edit\n")
        run_tool(["dvc", "repro", "-q", "-s", "code"], code_repo)
        assert stages_changed(code_repo) == rerun
    finally:  # the repo as it was, for the next edit
        f.write_text(before)
        lock.write_text(lock_before)
        shutil.rmtree(digests)
        shutil.copytree(code_repo.parent / "codedeps", digests)


def test_importing_the_library_with_bytecode_on_leaves_dvc_status_clean(repo):
    env = {k: v for k, v in tool_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import structlth.tickets, structlth.speedup.measure, structlth.models, structlth.report"
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True)  # cwd first on sys.path: the repo's copy
    assert any((repo / "structlth" / "speedup" / "__pycache__").iterdir())
    assert stages_changed(repo) == set()


def test_appending_a_round_adds_stages_and_recomputes_nothing_earlier(pristine):
    def append(r):
        r["prune"]["rounds"].update(round3={"prev": "round2"})
        r["prune"]["ticket_rounds"].append("round3")

    edit_params(pristine, append)
    changed = stages_changed(pristine)
    assert {s for s in changed if "round1" in s or "round2" in s} == set()
    assert {"imp@round3", "imp_channel@round3", "ticket@refill-round3"} <= changed


def test_editing_the_rate_invalidates_the_imp_chain(pristine):
    edit_params(pristine, lambda r: r["prune"].update(rate=0.3))
    assert stages_changed(pristine) == {"check_params", "imp@round1", "imp@round2"}  # the rest follows from their outs


def test_runtime_section_invalidates_nothing_but_the_params_check(pristine):
    edit_params(pristine, lambda r: r["runtime"].update(threads=2, device="cpu"))
    assert stages_changed(pristine) == {"check_params"}  # seconds; its unchanged output reruns nothing else


def test_rerun_of_a_round_gives_byte_identical_masks(repo):
    mask = repo / "artifacts" / "imp" / "round1" / "mask.safetensors"
    before = mask.read_bytes()
    run_tool(["dvc", "repro", "-f", "-s", "-q", "imp@round1"], repo)
    assert mask.read_bytes() == before
    w = load_tensors(repo / "artifacts" / "imp" / "round1" / "weights.safetensors")[0]
    assert all(t.dtype in (torch.float32, torch.int64) for t in w.values())


def test_a_rejected_params_edit_deletes_no_output(repo, tmp_path):
    copy = copy_repo(repo, tmp_path / "repo")
    kept = ["artifacts/pretrain/metrics.json", "artifacts/pretrain/curve.json", "reports/headline.json", "reports/masks.png"]
    before = {f: (copy / f).read_bytes() for f in kept}
    for edit, message in [
        (lambda r: r["train"].update(epochs=0), "train.epochs"),
        (lambda r: r["report"].update(mask_layer="features.99.weight"), "report.mask_layer: 'features.99.weight' is not a prunable layer"),
    ]:
        pristine = (copy / "params.yaml").read_text()
        edit_params(copy, edit)
        proc = subprocess.run(["dvc", "repro"], cwd=copy, capture_output=True, text=True, env=tool_env())
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert {f: (copy / f).read_bytes() for f in kept} == before
        (copy / "params.yaml").write_text(pristine)
    # a good params file again: at most the check reruns (DVC may restore it from its run cache)
    assert stages_ran(run_tool(["dvc", "repro"], copy)) <= {"check_params"} and stages_changed(copy) == set()
