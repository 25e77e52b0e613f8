"""`dvc repro` that says how far it is: "stage k of N" and an estimate for the whole run.

The plan is what DVC will run: every stage `dvc status` reports changed, and every stage
downstream of one. Each stage's estimate is its duration in the last run that recorded it
(reports/stage_times.json, written as stages finish and committed with the run), else the
median of its stage group (`imp@round3` -> `imp`), else the median of all; as stages finish, the
remaining estimate is scaled by how fast this machine ran the finished ones against theirs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import yaml

TIMES = Path("reports/stage_times.json")
STARTED = re.compile(r"^Running stage '(.+)':")
SKIPPED = re.compile(r"^Stage '(.+)' (?:is cached - skipping|didn't change, skipping)")  # restored from DVC's run cache


GATES = ("check_params", "code")  # stages whose outputs change only as computed below: they do not pass a change on


def _stale_code(root: Path) -> set[str]:
    """codedeps/<name>.json files the code stage would rewrite (their closure changed)."""
    from structlth.config import load_params
    from structlth.stage_code import stage_manifests

    stale = set()
    for name, manifest in stage_manifests(load_params(root / "params.yaml"), root / "stages", root).items():
        f = root / "codedeps" / f"{name}.json"
        if not f.is_file() or json.loads(f.read_text()) != manifest:
            stale.add(f"codedeps/{name}.json")
    return stale


def planned_stages(root: Path = Path(".")) -> list[str]:
    """Stages `dvc repro` in root will run, in a topological order: those `dvc status` reports
    changed, and every stage downstream of one, except downstream of check_params (its output
    holds for every valid params file) and of code (only the stages whose code digest changes)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = {name.rsplit(":", 1)[-1] for name in repo.status()}  # 'dvc.yaml:x' or 'x' -> 'x', as `dvc repro` prints it
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        stale = _stale_code(root) if "code" in changed else set()
        planned = set()
        for stage in graph.nodes:
            if stage.name in GATES and stage.name in changed:
                planned.add(stage)
            elif stage.name in changed or stale & {d.def_path for d in stage.deps}:
                planned |= {stage} | nx.ancestors(graph, stage)
        return [s.name for s in reversed(list(nx.topological_sort(graph))) if s in planned]


def estimates(stages: list[str], recorded: dict[str, float]) -> dict[str, float]:
    """Seconds expected per stage from recorded durations (see the module docstring); 60 s each
    when nothing is recorded."""
    groups: dict[str, list[float]] = {}
    for name, t in recorded.items():
        groups.setdefault(name.split("@")[0], []).append(t)
    fallback = median(recorded.values()) if recorded else 60.0
    return {s: recorded.get(s) or (median(groups[g]) if (g := s.split("@")[0]) in groups else fallback) for s in stages}


def clock(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """Stage k of N and the time left, from the stages started so far."""

    def __init__(self, plan: list[str], expected: dict[str, float], say: Callable[[str], None]) -> None:
        self.plan, self.expected, self.say = plan, expected, say
        self.done: dict[str, float] = {}
        self.skips: set[str] = set()
        self.current: tuple[str, float] | None = None

    def remaining(self) -> float:
        """Estimated seconds for the stages not finished, scaled by the pace of finished ones."""
        exp_done = sum(self.expected.get(s, 0.0) for s in self.done)
        pace = sum(self.done.values()) / exp_done if exp_done > 0 else 1.0
        return pace * sum(t for s, t in self.expected.items() if s not in self.done)

    def started(self, stage: str, now: float) -> None:
        self.finish(now)
        self.current = (stage, now)
        k = len(self.done) + len(self.skips) + 1
        n = max(len(self.plan), k)
        self.say(f"── stage {k} of {n}: {stage} (about {clock(self.remaining())} left)")

    def skipped(self, stage: str, now: float) -> None:
        """A stage DVC restored from its run cache or skipped: a planned one is counted, not timed
        (DVC also names every unchanged stage it passes: those were never in the plan)."""
        self.finish(now)
        if stage in self.plan:
            self.skips.add(stage)
            self.expected.pop(stage, None)

    def finish(self, now: float) -> None:
        if self.current is not None:
            stage, began = self.current
            self.done[stage] = now - began
            self.current = None


def run(targets: list[str], root: Path = Path("."), say: Callable[[str], None] = print) -> int:
    """Run `dvc repro targets` in root, printing DVC's output and the progress lines; record
    finished stages' durations in root/TIMES. Returns DVC's exit status."""
    plan = planned_stages(root)
    if targets:
        plan = [s for s in plan if any(s == t or s.startswith(f"{t}@") for t in targets)] or plan
    times_path = root / TIMES
    recorded = json.loads(times_path.read_text()).get("seconds", {}) if times_path.is_file() else {}
    expected = estimates(plan, recorded)
    source = (
        f"as {TIMES} recorded them on {json.loads(times_path.read_text()).get('machine')}"
        if recorded
        else "guessing a minute a stage (no recorded times yet)"
    )
    say(f"dvc repro: {len(plan)} stages to run, about {clock(sum(expected.values()))} ({source})" if plan else "dvc repro: nothing to run")
    progress = Progress(plan, expected, say)
    proc = subprocess.Popen(["dvc", "repro", *targets], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            if m := STARTED.match(line):
                progress.started(m.group(1), time.monotonic())
            elif m := SKIPPED.match(line):
                progress.skipped(m.group(1), time.monotonic())
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait()
    except KeyboardInterrupt:
        rc = proc.wait()
        stage = progress.current[0] if progress.current else "dvc repro"
        progress.current = None  # an interrupted stage's time is not its duration
        say(f"interrupted: {stage} stopped; rerun `make repro` (or `dvc repro`) to resume; finished stages are kept")
        rc = rc or 130
    if rc == 0:
        progress.finish(time.monotonic())
    if progress.done:
        from structlth.speedup.timing import machine_name

        times_path.parent.mkdir(parents=True, exist_ok=True)
        times_path.write_text(
            json.dumps(
                {"machine": machine_name(), "seconds": {**recorded, **{s: round(t, 1) for s, t in progress.done.items()}}},
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
    return rc


SCRATCH_ITEMS = ("dvc.yaml", "stages", "structlth", ".dvcignore", ".dvc/plots")


def scratch_repo(dest: Path, params: str, project: Path = Path(".")) -> Path:
    """A DVC repo in dest (no git) holding the project's pipeline and code, with `params` (the
    text of a complete params file) as its params.yaml: a run there leaves the project's
    workspace untouched. Reused when it exists (only what changed reruns); its code is refreshed
    from the project each time."""
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / ".dvc" / "config").is_file():
        subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=dest, check=True)
        subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dest, check=True)
    for item in SCRATCH_ITEMS:
        src, dst = project / item, dest / item
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    (dest / "params.yaml").write_text(params)
    link_data_root(dest, params, project)
    return dest


def link_data_root(dest: Path, params: str, project: Path) -> None:
    """A relative data.root of `params` (the default's `data/fashion-mnist`) made to resolve in
    dest the way it does in the project: a link there to the project's folder (its target)."""
    root = (yaml.safe_load(params) or {}).get("data", {}).get("root")
    if not root or Path(root).is_absolute() or not (project / root).exists():
        return  # absolute, or missing: the params check says what data.root must hold
    link = dest / root
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to((project / root).resolve(), target_is_directory=True)
