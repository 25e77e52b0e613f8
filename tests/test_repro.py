"""`structlth repro`'s progress: the estimate per stage and "stage k of N" as DVC reports stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from structlth.repro import SKIPPED, STARTED, Progress, clock, estimates

ROOT = Path(__file__).resolve().parents[1]


def test_estimates_come_from_the_stage_then_its_group_then_every_stage():
    recorded = {"pretrain": 130.0, "imp@round1": 40.0, "imp@round2": 60.0, "report": 10.0}
    got = estimates(["pretrain", "imp@round3", "bench_ticket@refill-round4"], recorded)
    assert got == {"pretrain": 130.0, "imp@round3": 50.0, "bench_ticket@refill-round4": 50.0}  # own; imp's median; all stages' median
    assert estimates(["a"], {}) == {"a": 60.0}


def test_progress_counts_stages_and_scales_the_rest_by_this_machines_pace():
    lines = []
    plan = ["a", "b", "c", "d"]
    p = Progress(plan, {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}, lines.append)
    p.started("a", 0.0)
    p.started("b", 20.0)  # a took 20 s against 10 expected: this machine runs at half the pace
    p.skipped("c", 25.0)  # b ends; c is restored from DVC's run cache: counted, not timed
    p.skipped("unchanged", 26.0)  # DVC names every unchanged stage too: not in the plan, not counted
    p.started("d", 40.0)
    assert lines == [
        "── stage 1 of 4: a (about 40 s left)",
        "── stage 2 of 4: b (about 60 s left)",  # 3 stages x 10 s x pace 2
        "── stage 4 of 4: d (about 12 s left)",  # pace (20 + 5) / 20 on d's 10 s
    ]
    assert p.done == {"a": 20.0, "b": 5.0} and p.skips == {"c"}


def test_dvc_output_lines_are_recognised():
    assert STARTED.match("Running stage 'imp@round3':").group(1) == "imp@round3"
    assert SKIPPED.match("Stage 'check_params' is cached - skipping run, checking out outputs").group(1) == "check_params"
    assert SKIPPED.match("Stage 'code' didn't change, skipping").group(1) == "code"
    assert STARTED.match("Stage 'x' didn't change, skipping") is None


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (89.4, "89 s"), (90, "2 min"), (2100, "35 min")])
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_an_interrupt_names_the_stage_and_how_to_resume_where_it_ran(monkeypatch):
    from structlth.errors import _what, resume_advice

    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert "rerun `dvc repro`" in resume_advice()
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")  # what DVC sets for a stage of an experiment
    assert "run the same `dvc exp run` again" in resume_advice() and "dvc repro" not in resume_advice()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", [str(ROOT / "stages" / "pretrain.py"), "--out", "artifacts/pretrain"])
    assert _what() == "stages/pretrain.py (artifacts/pretrain)"  # relative to the repo, however it was started


def test_a_scratch_repo_finds_a_relative_data_root_where_the_project_does(tmp_path, monkeypatch):
    """`make quick` runs in .quick/: the default's data.root (data/fashion-mnist, a link in the
    project) must resolve there to the same folder; an absolute root is left as it is."""
    from helpers import tool_env
    from structlth.repro import scratch_repo

    monkeypatch.setenv("PATH", tool_env()["PATH"])  # dvc
    project, raw = tmp_path / "project", tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (project / "data").mkdir(parents=True)
    (project / "data" / "images").symlink_to(raw)
    (project / "dvc.yaml").write_text("stages: {}\n")
    dest = scratch_repo(tmp_path / "quick", "data:\n  root: data/images\n", project)
    assert (dest / "data" / "images" / "train").is_dir() and (dest / "data" / "images").resolve() == raw.resolve()
    scratch_repo(tmp_path / "quick", "data:\n  root: data/images\n", project)  # reused: the link stays
    other = scratch_repo(tmp_path / "other", f"data:\n  root: {raw}\n", project)
    assert not (other / "data").exists()
