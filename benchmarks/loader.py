"""Streaming ImageFolder loader: throughput per worker count beside the training step's, and
peak memory against dataset size (ImageNet's recipe: RandomResizedCrop(224) + flip, batch 32).

The tree is generated (JPEGs of 256-383 px a side, about ImageNet's typical size). Larger
datasets are simulated by an index that lists the same files many times: what grows is the
index, which is all a streamed dataset holds in memory. Each memory measurement runs in its own
process, so its peak RSS (and its largest worker's) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from structlth.config import Augment
from structlth.data import INDEX, load_dataset, train_batches
from structlth.imagefolder import write_tree

BATCH = 32
SIDE = 224
AUG = Augment(crop_padding=0, hflip=True, random_resized_crop=True)
WORKERS = (0, 1, 2, 4)
SCALES = (1, 32, 1024)  # dataset size = scale x the generated tree's train images (up to 409,600)


SMOKE = {"classes": 2, "per_class": 4, "batches": 2, "batch": 2, "workers": (0, 1), "scales": (1,), "train": ("resnet18", 2, 64)}


def _index(tree: Path, out: Path, scale: int) -> Path:
    """A prepared dataset over `tree` whose train split lists every file `scale` times."""
    files = sorted(p.relative_to(tree).as_posix() for p in (tree / "train").rglob("*.JPEG"))
    labels = [int(p.split("/")[1][5:]) for p in files]
    split = {"paths": files * scale, "labels": labels * scale}
    index = {
        "format": "structlth.index/1",
        "dataset": "imagefolder",
        "root": str(tree),
        "image_size": SIDE,
        "classes": sorted({p.split("/")[1] for p in files}),
        "listing_digest": "",
        "dropped": {"ignored": [], "unreadable": []},
        "splits": {"train": split, "val": split, "test": split},
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "augment": AUG.model_dump(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).write_text(json.dumps(index))
    return out


def _loader_rate(data: Path, workers: int, batches: int, batch: int = BATCH) -> float:
    """Images per second over `batches` batches of `batch` after the first (workers started)."""
    ds = load_dataset(data, workers)
    it = train_batches(ds.train, ds, batch, AUG, seed=0)
    next(it)
    began = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - began)
    it.close()
    return rate


def _train_rate(arch: str = "resnet50", batch: int = BATCH, side: int = SIDE, steps: int = 2) -> float:
    """Training steps of `arch` (ResNet-50: the ImageNet preset) at batch x 3 x side x side, images/s."""
    from structlth.models import build_model

    model = build_model(arch, 1000, 3, 1.0, small_input_stem=False).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 1):
        began = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - began)
    return batch / sorted(times[1:])[len(times[1:]) // 2]


def _peak_rss_mb(data: Path, workers: int, batches: int, batch: int) -> dict:
    """Stream `batches` batches in a fresh process: its peak RSS (VmHWM, which exec resets,
    unlike ru_maxrss) and its largest worker's (forked, so counting the pages it shares)."""
    code = (
        "import resource, torch; torch.set_num_threads(2)\n"
        "from benchmarks.loader import _loader_rate\n"
        f"_loader_rate({str(data)!r}, {workers}, {batches}, {batch})\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"main_mb": int(out[-2]) / 1024, "largest_worker_mb": int(out[-1]) / 1024}


def run(smoke: bool = False) -> dict:
    classes, per_class, batches, batch, workers, scales = (
        (SMOKE[k] for k in ("classes", "per_class", "batches", "batch", "workers", "scales"))
        if smoke
        else (10, 40, 8, BATCH, WORKERS, SCALES)
    )
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_tree(Path(tmp) / "tree", classes=classes, per_class=per_class, val_per_class=1, side=256)
        jpeg_kb = sum(f.stat().st_size for f in (tree / "train").rglob("*.JPEG")) / (classes * per_class) / 1024
        base = _index(tree, Path(tmp) / "x1", 1)
        memory = {}
        for scale in scales:
            n = classes * per_class * scale
            memory[n] = {
                **_peak_rss_mb(_index(tree, Path(tmp) / f"x{scale}", scale), 2, batches, batch),
                "in_memory_pixels_mb": n * 3 * SIDE * SIDE / 2**20,
            }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*worker processes in total")  # 4 workers on 2 cores: measured on purpose
            loader = {w: _loader_rate(base, w, batches, batch) for w in workers}
        train = _train_rate(*SMOKE["train"]) if smoke else _train_rate()
    best = max(loader, key=loader.get)
    sizes = sorted(memory)
    growth = memory[sizes[-1]]["main_mb"] - memory[sizes[0]]["main_mb"]
    return {
        "setup": (
            f"ImageNet recipe (RandomResizedCrop {SIDE} + flip), batch {batch}, {torch.get_num_threads()} threads,"
            f" JPEGs of {jpeg_kb:.0f} KB"
        ),
        "loader_img_per_s": {str(w): round(r, 1) for w, r in loader.items()},
        "train_step_img_per_s": round(train, 1),
        "peak_memory": {str(n): {k: round(v, 1) for k, v in m.items()} for n, m in memory.items()},
        "summary": (
            f"loader {loader[best]:.0f} img/s with {best} workers against {train:.1f} img/s of ResNet-50 training"
            f" ({loader[best] / train:.0f}x); peak RSS grows {growth:.0f} MB from {sizes[0]} to {sizes[-1]} images"
            f" (decoded in memory they would take {memory[sizes[-1]]['in_memory_pixels_mb']:.0f} MB)"
        ),
    }
