"""A training stage killed mid-way leaves no outputs and resumes to the uninterrupted result."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, synthetic_dataset, tiny_raw
from structlth.data import save_dataset


def _cmd(data_dir: Path, out: str, checkpoint: str | None) -> list[str]:
    cmd = [sys.executable, str(ROOT / "stages" / "pretrain.py"), "--data", str(data_dir), "--out", out]
    return cmd + (["--checkpoint", checkpoint] if checkpoint else [])


def _checkpoints(folder: Path) -> list[Path]:
    """The run's checkpoint files: pretrain.<identity>.safetensors (one per run identity)."""
    return sorted(folder.glob("pretrain.*.safetensors")) if folder.is_dir() else []


def _default_sigint() -> None:
    """Ctrl-C reaches a foreground stage; a shell's background job inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: restore the default as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_after_first_checkpoint(cmd: list[str], cwd: Path, folder: Path, sig: int) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not _checkpoints(folder):
        assert proc.poll() is None, f"stage ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    assert proc.poll() is None, "stage finished before it could be killed"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A folder with the synthetic data (data/), params.yaml (six epochs, rewound to epoch 1) and
    the pretrain's outputs from one uninterrupted run of them (pretrain/)."""
    d = tmp_path_factory.mktemp("reference")
    save_dataset(synthetic_dataset(), d / "data", {"dataset": "synthetic"})
    raw = tiny_raw()
    raw["train"].update(epochs=6, rewind_epoch=1)
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    clean = subprocess.run(_cmd(d / "data", "pretrain", None), cwd=d, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    return d


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_stage_leaves_no_outputs_and_resumes_to_identical_weights(tmp_path, reference, sig):
    shutil.copy(reference / "params.yaml", tmp_path)  # the reference run's params and data
    data_dir = reference / "data"
    folder = tmp_path / "checkpoints"
    cmd = _cmd(data_dir, "artifacts/pretrain", "checkpoints/pretrain.safetensors")

    code, err = _kill_after_first_checkpoint(cmd, tmp_path, folder, sig)
    assert code != 0
    if sig != signal.SIGKILL:  # Ctrl-C or SIGTERM: one line naming the stage and how to resume, no traceback
        assert code == 128 + sig and "Traceback" not in err
        assert (
            "interrupted: " + str(ROOT / "stages" / "pretrain.py") + " (artifacts/pretrain) stopped" in err
            and "rerun `dvc repro` to resume" in err
        )
    leftovers = sorted(p.relative_to(tmp_path) for p in (tmp_path / "artifacts").rglob("*")) if (tmp_path / "artifacts").exists() else []
    assert leftovers == [], f"partial outputs after {sig!r}: {leftovers}"
    assert len(_checkpoints(folder)) == 1, "the epoch checkpoint must survive the kill"
    if sig == signal.SIGTERM:
        return  # SIGTERM takes SIGINT's path (errors.Interrupted); resuming after it adds nothing

    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not _checkpoints(folder), "a finished stage removes its checkpoint"
    for name in ("weights.safetensors", "rewind.safetensors", "mask.safetensors", "metrics.json"):
        assert (tmp_path / "artifacts" / "pretrain" / name).read_bytes() == (reference / "pretrain" / name).read_bytes(), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_stage_process_dies_with_its_parent():
    """Killing dvc (here: a parent process) with SIGKILL must not leave the stage training on."""
    stage = "from structlth.errors import user_errors\nimport time\nwith user_errors():\n    time.sleep(120)\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\np = subprocess.Popen([sys.executable, '-c', {stage!r}])\n"
            "print(p.pid, flush=True)\ntime.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(3)  # the child is inside user_errors
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.2)
    assert not _running(child), "the stage process outlived its parent"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody has reaped yet)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False
    return "Z" not in state.split()[1]


def test_a_kill_inside_the_staging_folder_is_cleaned_by_the_next_run(tmp_path):
    """SIGKILL while outputs are half written: nothing at the output path, and the next run
    clears the staging folder and writes whole outputs."""
    out = tmp_path / "artifacts" / "round1"
    killed = (
        "import os, signal\nfrom structlth.artifacts import staged_dir, write_json\n"
        f"with staged_dir({str(out)!r}) as d:\n"
        "    write_json(d / 'metrics.json', {'half': True})\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", killed], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    staging = out.parent / ".round1.staging"
    assert not out.exists() and (staging / "metrics.json").is_file()  # killed mid-write

    from structlth.artifacts import read_json, staged_dir, write_json

    with staged_dir(out) as d:
        write_json(d / "metrics.json", {"whole": True})
        write_json(d / "layers.json", [])
    assert not staging.exists()
    assert read_json(out / "metrics.json") == {"whole": True} and sorted(p.name for p in out.iterdir()) == ["layers.json", "metrics.json"]
