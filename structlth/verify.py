"""Re-hash the workspace's pipeline outputs against dvc.lock.

DVC trusts a cache or remote object whose file mode is read-only and does not re-hash it on
`dvc pull` unless the remote has `verify = true`, so a corrupted remote object can reach the
workspace while `dvc status` stays clean. `structlth verify` checks every output file
dvc.lock records (its MD5, the hash DVC 3 records for a file) against the bytes on disk, and
every file of a folder output against the folder's listing in the DVC cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from structlth.errors import ArtifactError


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_files(lock: Path, rel: str, md5: str) -> dict[str, str]:
    """A folder output's files (relative to the lock's folder) -> MD5, from DVC's listing of it
    (`.dvc/cache/files/md5/<2>/<rest>.dir`); an error when the listing is not in the cache."""
    listing = lock.parent / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    try:
        return {f"{rel}/{e['relpath']}": e["md5"] for e in json.loads(listing.read_text())}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{rel}: its listing {listing} is not readable ({e}); dvc pull or dvc checkout first") from None


def locked_outputs(lock: Path) -> dict[str, str]:
    """Output path (relative to the lock's folder) -> MD5, for every file dvc.lock records as an
    output or as part of a folder output."""
    try:
        data = yaml.safe_load(lock.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{lock}: not a readable dvc.lock ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ArtifactError(f"{lock}: not a dvc.lock (no stages)")
    outs = [o for stage in data["stages"].values() for o in stage.get("outs", []) if "md5" in o]
    files = {o["path"]: o["md5"] for o in outs if not str(o["md5"]).endswith(".dir")}
    for o in outs:
        if str(o["md5"]).endswith(".dir"):
            files.update(_folder_files(lock, o["path"], o["md5"]))
    return files


def verify_outputs(lock: Path) -> tuple[int, list[str]]:
    """(files checked, one line per missing or altered file)."""
    outs = locked_outputs(lock)
    bad = []
    for rel, md5 in sorted(outs.items()):
        path = lock.parent / rel
        if not path.is_file():
            bad.append(f"{rel}: missing (dvc checkout or dvc pull)")
        elif _md5(path) != md5:
            bad.append(
                f"{rel}: content differs from dvc.lock (md5 {md5}); corrupt or edited: dvc checkout --force {rel}, or rerun its stage"
            )
    return len(outs), bad
