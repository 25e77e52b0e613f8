"""The DVC pipeline end to end on a tiny config, in a temporary git + DVC repo.

Checks what users rely on: every stage runs and writes its outputs, masks have the promised
structure, and each kind of params edit invalidates exactly the stages that read it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from helpers import ObjectStore, is_block_mask, new_dvc_repo, run_tool, seaweedfs, stages_changed, stages_ran, tiny_raw, tool_env
from structlth.artifacts import load_tensors
from structlth.export import is_channel_wise
from structlth.repro import planned_stages

pytestmark = pytest.mark.slow


def pipeline_raw() -> dict:
    """The suite's params cut to what the DVC paths need: both chains over two rounds, one
    ticket of each kind and the baseline at the last round (every kind's code runs in the unit
    tests; here every stage kind runs once under DVC)."""
    raw = tiny_raw()
    raw["prune"]["ticket_rounds"] = ["round2"]
    raw["tickets"] = {k: raw["tickets"][k] for k in ("refill", "regroup")}
    return raw


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    d = new_dvc_repo(tmp_path_factory.mktemp("repo"), pipeline_raw())
    run_tool(["dvc", "repro", "-q"], d)
    return d


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
    assert all(m in bench for m in methods) and "slim" in bench and "csr" in bench and "onnxruntime" in bench
    tp, refill = (json.loads((repo / "artifacts" / m / "round2" / "metrics.json").read_text()) for m in ("tp_l1", "refill"))
    assert tp["flops"] <= tp["matched_flops"] == refill["flops"]  # Torch-Pruning at the refill ticket's FLOPs
    report = (repo / "reports" / "report.md").read_text()
    assert report.startswith("# structlth report") and "## Accuracy evidence" in report and "| tp_l1 |" in report
    assert (repo / "reports" / "accuracy_vs_time_saving.png").is_file()


def test_speed_is_a_dvc_metric_and_runs_compare_as_dvc_plots(repo):
    speed = json.loads((repo / "reports/bench/refill/round2/speed.json").read_text())
    assert set(speed) == {"test_acc", "sparsity", "flops_saving", "saving", "saving_ci95"}
    assert set(speed["saving_ci95"]) == set(speed["saving"])  # each saving with its own noise
    assert set(speed["saving"]) == {"torch_b2", "ort_b2"}  # per runtime x batch size
    shown = run_tool(["dvc", "metrics", "show"], repo)
    assert "reports/bench/refill/round2/speed.json" in shown and "metrics.json" not in shown
    assert max(map(len, shown.splitlines())) <= 200, shown
    plots = json.loads(run_tool(["dvc", "plots", "show", "--json", "--split"], repo))
    ids = list(plots.get("data", plots))
    assert ids[:2] == ["accuracy_vs_sparsity", "accuracy_vs_time_saving"], ids
    assert '"method"' in json.dumps(plots["data"]["accuracy_vs_sparsity"] if "data" in plots else plots["accuracy_vs_sparsity"])


TRAINING = {
    "pretrain",
    *(f"{chain}@round{r}" for chain in ("imp", "imp_channel") for r in (1, 2)),
    "ticket@refill-round2",
    "ticket@regroup-round2",
    "baseline_dense@tp_l1",  # a copy of the shared dense net, by training's code
    "baseline@tp_l1-round2",
}
BENCH = {"bench_chain@imp-round2", "bench_chain@imp_channel-round2", "bench_ticket@refill-round2", "bench_ticket@regroup-round2"}
BENCH |= {"bench_baseline@tp_l1-round2"}
CODE_EDITS = [  # a comment appended to one library file, and the stages it must rerun
    ("structlth/pruning/sources/snip.py", set()),  # a method the pipeline does not run
    ("structlth/pruning/kinds/refill.py", {"ticket@refill-round2"}),
    ("structlth/pruning/kinds/regroup.py", {"ticket@regroup-round2"}),
    ("structlth/pruning/kinds/torch_pruning.py", {"baseline@tp_l1-round2"}),
    ("structlth/report/markdown.py", {"report"}),
    ("structlth/speedup/slim.py", BENCH | {"report"}),  # the slim net: no training stage
    ("structlth/train.py", TRAINING),  # every training stage, nothing upstream of them
]


@pytest.fixture(scope="module")
def code_repo(repo, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("code") / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


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

    _edit(pristine, append)
    changed = stages_changed(pristine)
    assert {s for s in changed if "round1" in s or "round2" in s} == set()
    assert {"imp@round3", "imp_channel@round3", "ticket@refill-round3"} <= changed


def test_editing_the_rate_invalidates_the_imp_chain(pristine):
    _edit(pristine, lambda r: r["prune"].update(rate=0.3))
    assert stages_changed(pristine) == {"check_params", "imp@round1", "imp@round2"}  # the rest follows from their outs


def test_runtime_section_invalidates_nothing_but_the_params_check(pristine):
    _edit(pristine, lambda r: r["runtime"].update(threads=2, device="cpu"))
    assert stages_changed(pristine) == {"check_params"}  # seconds; its unchanged output reruns nothing else


def test_rerun_of_a_round_gives_byte_identical_masks(repo):
    mask = repo / "artifacts" / "imp" / "round1" / "mask.safetensors"
    before = mask.read_bytes()
    run_tool(["dvc", "repro", "-f", "-s", "-q", "imp@round1"], repo)
    assert mask.read_bytes() == before
    w = load_tensors(repo / "artifacts" / "imp" / "round1" / "weights.safetensors")[0]
    assert all(t.dtype in (torch.float32, torch.int64) for t in w.values())


def _git(repo: Path, *args: str) -> str:
    return run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], repo)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[ObjectStore]:
    """The team's object store: SeaweedFS's S3 gateway on loopback, one bucket."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as s:
        yield s


@pytest.fixture(scope="module")
def published(repo, store) -> tuple[Path, ObjectStore]:
    """The tiny repo set up as the docs say (the bucket's URL and endpoint in the committed
    .dvc/config, credentials in the git-ignored config.local), its results committed and
    pushed with the run cache."""
    run_tool(["dvc", "remote", "add", "-d", "team", f"s3://{store.bucket}/cache"], repo)
    run_tool(["dvc", "remote", "modify", "team", "endpointurl", store.endpoint], repo)
    run_tool(["dvc", "remote", "modify", "--local", "team", "access_key_id", store.key], repo)
    run_tool(["dvc", "remote", "modify", "--local", "team", "secret_access_key", store.secret], repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "results")
    run_tool(["dvc", "push", "-q", "--run-cache"], repo)
    return repo, store


def _clone(repo: Path, into: Path, rev: str | None = None) -> Path:
    run_tool(["git", "clone", "-q", str(repo), str(into)], into.parent)
    if rev:
        _git(into, "checkout", "-q", rev)
    return into


def _dvc(clone: Path, store: ObjectStore, *args: str) -> subprocess.CompletedProcess:
    """A DVC command on a worker whose credentials are in its environment."""
    return subprocess.run(["dvc", *args], cwd=clone, capture_output=True, text=True, env=store.env())


def test_the_committed_config_names_the_bucket_and_never_the_credentials(published, tmp_path):
    repo, store = published
    committed = _git(repo, "show", "HEAD:.dvc/config")
    assert f"s3://{store.bucket}/cache" in committed and store.endpoint in committed
    assert store.key not in committed and store.secret not in committed
    assert store.secret in (repo / ".dvc" / "config.local").read_text()
    assert ".dvc/config.local" not in _git(repo, "ls-files", ".dvc")
    clone = _clone(repo, tmp_path / "clone")  # a clone holds no credentials: with wrong ones the bucket refuses
    wrong = {**tool_env(), "AWS_ACCESS_KEY_ID": store.key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = subprocess.run(["dvc", "pull"], cwd=clone, capture_output=True, text=True, env=wrong)
    assert proc.returncode != 0 and "failed to pull" in proc.stderr and not (clone / "artifacts/pretrain/weights.safetensors").exists()


def test_pull_into_a_fresh_clone_verifies_every_output_and_recomputes_nothing(published, tmp_path):
    repo, store = published
    clone = _clone(repo, tmp_path / "clone")
    metrics = json.loads(run_tool(["dvc", "metrics", "show", "--json"], clone))  # from git alone
    assert "reports/bench/refill/round2/speed.json" in json.dumps(metrics)
    run_tool(["dvc", "remote", "modify", "--local", "team", "verify", "true"], clone)
    proc = _dvc(clone, store, "pull", "-q")
    assert proc.returncode == 0, proc.stderr
    assert stages_changed(clone) == set()
    verified = subprocess.run(["structlth", "verify"], cwd=clone, capture_output=True, text=True, env=tool_env())
    checked = re.fullmatch(r"dvc.lock: (\d+) of (\d+) outputs match\n", verified.stdout)
    assert verified.returncode == 0 and checked and checked[1] == checked[2], verified.stdout + verified.stderr


def test_an_object_corrupted_in_the_bucket_is_refused_on_pull_and_named(published, tmp_path):
    repo, store = published
    target = "artifacts/imp/round1/mask.safetensors"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(o["md5"] for st in lock["stages"].values() for o in st.get("outs", []) if o["path"] == target)
    key = f"{store.bucket}/cache/files/md5/{md5[:2]}/{md5[2:]}"
    fs = store.fs()
    good = fs.cat(key)
    fs.pipe(key, good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit, through the S3 API
    try:
        clone = _clone(repo, tmp_path / "clone")  # as the docs set a remote up: verify = true
        run_tool(["dvc", "remote", "modify", "--local", "team", "verify", "true"], clone)
        proc = _dvc(clone, store, "pull")
        assert proc.returncode != 0
        assert md5[2:] in proc.stdout + proc.stderr or target in proc.stdout + proc.stderr, proc.stderr
        assert not (clone / target).exists(), "the corrupt object reached the workspace"
        assert (clone / "artifacts/imp/round2/mask.safetensors").exists()  # the intact rest arrived

        trusting = _clone(repo, tmp_path / "trusting")  # without verify DVC places it; structlth verify names it
        _dvc(trusting, store, "pull", "-q")
        proc = subprocess.run(["structlth", "verify"], cwd=trusting, capture_output=True, text=True, env=tool_env())
        assert proc.returncode == 1 and f"{target}: content differs from dvc.lock" in proc.stderr, proc.stderr + proc.stdout
        assert proc.stderr.count("\n") == 1  # only the corrupt file
    finally:
        fs.pipe(key, good)


def test_workers_share_runs_and_experiments_through_the_bucket_and_a_git_remote(published, tmp_path):
    """A bare git repository is the team's git remote, the bucket its DVC remote.
    - Worker A (the repo that ran everything) runs two queued experiments in parallel and pushes them.
    - Worker B has the params but not A's dvc.lock (the commit before A's results): the run cache
      alone restores every stage that trains or prunes. Its experiment, one ticket edit, reruns
      only that ticket, its bench and the report; it pushes it.
    - An analyst pulls all three experiments and compares them."""
    repo, store = published
    origin = tmp_path / "origin.git"
    run_tool(["git", "clone", "-q", "--bare", str(repo), str(origin)], tmp_path)
    _git(repo, "remote", "add", "origin", str(origin))
    for tol in ("0.02", "0.5"):
        run_tool(["dvc", "exp", "run", "--queue", "-q", "-n", f"tol{tol[2:]}", "-S", f"report.tolerance={tol}"], repo)
    run_tool(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while any(s in run_tool(["dvc", "queue", "status"], repo) for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, run_tool(["dvc", "queue", "status"], repo)
        time.sleep(2)
    assert "Failed" not in run_tool(["dvc", "queue", "status"], repo), run_tool(["dvc", "queue", "logs", "tol02"], repo)
    assert _dvc(repo, store, "exp", "push", "origin", "tol02", "tol5").returncode == 0

    b = _clone(origin, tmp_path / "b", "HEAD~1")
    assert not (b / "dvc.lock").exists()
    (b / ".dvc" / "config").write_text((repo / ".dvc" / "config").read_text())  # the team's remote
    out = _dvc(b, store, "repro", "--pull")  # no dvc.lock to pull by: the run cache, and each stage's outputs from it
    assert out.returncode == 0, out.stderr
    # nothing trains; the code stage (its output persists), the benches (their speed.json is a
    # metric kept in git, which the run cache does not carry) and the report (in git too) run
    assert stages_ran(out.stdout) == {"code", "report"} | BENCH, out.stdout
    restored = {line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Stage '") and "is cached" in line}
    assert TRAINING | {"check_params", "prepare", "round0@imp", "round0@imp_channel", "match@tp_l1"} == restored
    assert stages_changed(b) == set()
    _edit(b, lambda r: r["tickets"]["regroup"].update(rows_per_part=2))
    # the code and match stages read the ticket entries (in a second, to the same files); no
    # baseline reruns: tp_l1 depends on the FLOPs of refill, the ticket it matches, alone
    assert stages_changed(b) == {"code", "check_params", "match@tp_l1", "ticket@regroup-round2", "report"}
    plan = planned_stages(b)  # what `structlth repro` counts as "stage k of N"
    ran = _dvc(b, store, "exp", "run", "-n", "narrow")
    assert ran.returncode == 0, ran.stderr
    assert stages_ran(ran.stdout) <= set(plan)
    assert stages_ran(ran.stdout) == {
        "code",
        "check_params",
        "match@tp_l1",
        "ticket@regroup-round2",
        "bench_ticket@regroup-round2",
        "report",
    }
    assert _dvc(b, store, "exp", "push", "origin", "narrow").returncode == 0

    analyst = _clone(origin, tmp_path / "analyst")
    pulled = _dvc(analyst, store, "exp", "pull", "origin", "tol02", "tol5", "narrow")
    assert pulled.returncode == 0, pulled.stderr
    shown = _dvc(analyst, store, "exp", "show", "--all-commits", "--json").stdout
    assert all(f'"{name}"' in shown for name in ("tol02", "tol5", "narrow")) and "speed.json" in shown
    diff = _dvc(analyst, store, "metrics", "diff", "tol02", "narrow", "--json")
    assert diff.returncode == 0 and "reports/bench/regroup/round2/speed.json" in diff.stdout, diff.stdout + diff.stderr


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
    assert stages_ran(run_tool(["dvc", "repro"], copy)) <= {"check_params"} and stages_changed(copy) == set()
