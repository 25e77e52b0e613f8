"""Artifact I/O: safetensors for tensors, JSON for metrics. Nothing else is ever loaded.

Writes are atomic (temporary file in the same folder, then rename; a stage's whole output
folder is staged beside it and renamed into place at the end) and deterministic (keys in sorted
order, metadata without timestamps), so an interrupted stage leaves no half file or half folder
and a rerun with the same inputs writes the same bytes, letting DVC skip everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from structlth.errors import ArtifactError

META_KEY = "structlth"
State = dict[str, torch.Tensor]  # a model's parameters and buffers by name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file renamed into place; the file gets the mode an ordinary write
    would (0666 less the umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(out_dir: str | Path) -> Iterator[Path]:
    """A folder to write `out_dir`'s files into; it replaces `out_dir` in one rename on success.

    A run killed before the rename leaves `out_dir` untouched (DVC has already removed a stage's
    outs before it runs, so: absent) and a hidden `.<name>.staging` folder that the next run of
    the same stage clears first.
    """
    out_dir = Path(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(stage, out_dir)


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write `tensors` (any shapes) and JSON-able `meta` to a safetensors file, atomically."""
    ordered = {k: tensors[k].detach().to("cpu").contiguous() for k in sorted(tensors)}
    header = {META_KEY: json.dumps(meta, sort_keys=True)}
    write_bytes(Path(path), save(ordered, metadata=header))


def load_tensors(
    path: str | Path,
    *,
    expect: Mapping[str, tuple[int, ...]] | None = None,
    expect_meta: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors artifact; check names/shapes against `expect`, meta against `expect_meta`.

    Returns (tensors, meta). Every failure is an ArtifactError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (run the stage that makes it: dvc repro)")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        meta = json.loads(header.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        raise ArtifactError(f"{path}: corrupt structlth metadata in the header") from None
    for key, want in (expect_meta or {}).items():
        if meta.get(key) != want:
            raise ArtifactError(f"{path}: made for {key}={meta.get(key)!r}, but {key}={want!r} is expected")
    if expect is not None:
        check_shapes(path, tensors, expect)
    return tensors, meta


def check_shapes(path: str | Path, tensors: Mapping[str, torch.Tensor], expect: Mapping[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expect) - set(tensors))
    extra = sorted(set(tensors) - set(expect))
    if missing or extra:
        raise ArtifactError(
            f"{path}: tensor names do not match the model (missing {missing[:3]},"
            f" unexpected {extra[:3]}): an artifact of another architecture?"
        )
    for name, shape in expect.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ArtifactError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, the model needs {tuple(shape)}")


def check_state(path: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    """Weights must be finite float32 (BN's step counters stay int64): ArtifactError naming the file."""
    for name, v in state.items():
        if v.is_floating_point() and (v.dtype != torch.float32 or not bool(torch.isfinite(v).all())):
            raise ArtifactError(f"{path}: {name} is not finite float32 ({v.dtype}{', has nan/inf' if v.dtype == torch.float32 else ''})")


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Content digest of named tensors (names, dtypes, shapes and bytes), independent of order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (run the stage that makes it: dvc repro)") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
