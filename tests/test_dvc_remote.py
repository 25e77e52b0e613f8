"""The team's store: a real S3 bucket (SeaweedFS on loopback) as the DVC remote and a bare git
repository as the git remote, shared by workers and an analyst, on the tiny pipeline's run.

Checks what a team relies on: credentials stay out of the committed config, a fresh clone pulls
every output verified, a corrupt object never reaches a workspace, the run cache spares another
worker every training stage, a worker's slice of a grid runs through the queue two experiments at
a time, and experiments from several workers meet in one `dvc exp show`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import (
    BENCH_STAGES,
    TRAINING_STAGES,
    ObjectStore,
    copy_repo,
    edit_params,
    git,
    run_tool,
    seaweedfs,
    stages_changed,
    stages_ran,
    tool_env,
)
from structlth.repro import planned_stages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[ObjectStore]:
    """The team's object store: SeaweedFS's S3 gateway on loopback, one bucket."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as s:
        yield s


@pytest.fixture(scope="module")
def published(finished_pipeline, store, tmp_path_factory) -> tuple[Path, ObjectStore]:
    """Worker A: the tiny pipeline's run set up as the docs say (the bucket's URL and endpoint
    in the committed .dvc/config, credentials in the git-ignored config.local), its results
    committed and pushed with the run cache."""
    repo = copy_repo(finished_pipeline, tmp_path_factory.mktemp("worker_a") / "repo")
    run_tool(["dvc", "remote", "add", "-d", "team", f"s3://{store.bucket}/cache"], repo)
    run_tool(["dvc", "remote", "modify", "team", "endpointurl", store.endpoint], repo)
    run_tool(["dvc", "remote", "modify", "--local", "team", "access_key_id", store.key], repo)
    run_tool(["dvc", "remote", "modify", "--local", "team", "secret_access_key", store.secret], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    run_tool(["dvc", "push", "-q", "--run-cache"], repo)
    return repo, store


def _clone(repo: Path, into: Path, rev: str | None = None) -> Path:
    run_tool(["git", "clone", "-q", str(repo), str(into)], into.parent)
    if rev:
        git(into, "checkout", "-q", rev)
    return into


def _dvc(clone: Path, store: ObjectStore, *args: str) -> subprocess.CompletedProcess:
    """A DVC command on a worker whose credentials are in its environment."""
    return subprocess.run(["dvc", *args], cwd=clone, capture_output=True, text=True, env=store.env())


def test_the_committed_config_names_the_bucket_and_never_the_credentials(published, tmp_path):
    repo, store = published
    committed = git(repo, "show", "HEAD:.dvc/config")
    assert f"s3://{store.bucket}/cache" in committed and store.endpoint in committed
    assert store.key not in committed and store.secret not in committed
    assert store.secret in (repo / ".dvc" / "config.local").read_text()
    assert ".dvc/config.local" not in git(repo, "ls-files", ".dvc")
    clone = _clone(repo, tmp_path / "clone")  # a clone holds no credentials: with wrong ones the bucket refuses
    wrong = {**tool_env(), "AWS_ACCESS_KEY_ID": store.key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = subprocess.run(["dvc", "pull"], cwd=clone, capture_output=True, text=True, env=wrong)
    assert proc.returncode != 0 and "failed to pull" in proc.stderr and not (clone / "artifacts/pretrain/weights.safetensors").exists()


# The longest test comes second: xdist hands a worker its next test file once two tests of its
# current one are left, and the file after this one should not wait behind the longest.


def _run_queue(repo: Path, store: ObjectStore, grid: dict[str, str], workers: int) -> None:
    """The grid (experiment name -> one `-S` override) queued and run by `workers` queue workers at once."""
    for name, override in grid.items():
        assert _dvc(repo, store, "exp", "run", "--queue", "-q", "-n", name, "-S", override).returncode == 0
    assert _dvc(repo, store, "queue", "start", "-j", str(workers)).returncode == 0
    deadline = time.monotonic() + 600
    while re.search("Queued|Running", status := _dvc(repo, store, "queue", "status").stdout):  # one call per poll
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status.count("Success") == len(grid), status + "".join(_dvc(repo, store, "queue", "logs", n).stdout for n in grid)


def test_workers_share_runs_and_experiments_through_the_bucket_and_a_git_remote(published, tmp_path):
    """A bare git repository is the team's git remote, the bucket its DVC remote.
    - Worker A (the repo that ran everything) runs its slice of a grid through the queue, two
      experiments side by side, each rerunning only what its params change, and pushes them.
    - Worker B has the params but not A's dvc.lock (the commit before A's results): the run cache
      alone restores every stage that trains or prunes. Its experiment, one ticket edit, reruns
      only that ticket, its bench and the report; it pushes it.
    - An analyst pulls every experiment and compares them."""
    repo, store = published
    origin = tmp_path / "origin.git"
    run_tool(["git", "clone", "-q", "--bare", str(repo), str(origin)], tmp_path)
    git(repo, "remote", "add", "origin", str(origin))
    grid = {"tol02": "report.tolerance=0.02", "tol5": "report.tolerance=0.5"}
    _run_queue(repo, store, grid, workers=2)
    for name in grid:  # the report reads the tolerance; the params check reads params.yaml
        assert stages_ran(_dvc(repo, store, "queue", "logs", name).stdout) == {"check_params", "report"}
    assert _dvc(repo, store, "exp", "push", "origin", *grid).returncode == 0

    b = _clone(origin, tmp_path / "b", "HEAD~1")
    assert not (b / "dvc.lock").exists()
    (b / ".dvc" / "config").write_text((repo / ".dvc" / "config").read_text())  # the team's remote
    out = _dvc(b, store, "repro", "--pull")  # no dvc.lock to pull by: the run cache, and each stage's outputs from it
    assert out.returncode == 0, out.stderr
    # nothing trains; the code stage (its output persists), the benches (their speed.json is a
    # metric kept in git, which the run cache does not carry) and the report (in git too) run
    assert stages_ran(out.stdout) == {"code", "report"} | BENCH_STAGES, out.stdout
    restored = {line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Stage '") and "is cached" in line}
    assert TRAINING_STAGES | {"check_params", "prepare", "round0@imp", "round0@imp_channel", "match@tp_l1"} == restored
    assert stages_changed(b) == set()
    edit_params(b, lambda r: r["tickets"]["regroup"].update(rows_per_part=2))
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
    pulled = _dvc(analyst, store, "exp", "pull", "origin", *grid, "narrow")
    assert pulled.returncode == 0, pulled.stderr
    shown = _dvc(analyst, store, "exp", "show", "--all-commits", "--json").stdout
    assert all(f'"{name}"' in shown for name in (*grid, "narrow")) and "speed.json" in shown
    diff = _dvc(analyst, store, "metrics", "diff", "tol5", "narrow", "--json")
    assert diff.returncode == 0 and "reports/bench/regroup/round2/speed.json" in diff.stdout, diff.stdout + diff.stderr


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
