"""The error types users see. Stage scripts and the CLI print them as one message, exit 2."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator


class StructlthError(Exception):
    """A problem the user can fix (bad params, missing data, broken artifact)."""


class ParamsError(StructlthError):
    """params.yaml failed validation."""


class ArtifactError(StructlthError):
    """An artifact is missing, corrupt, or does not match what reads it."""


class DataError(StructlthError):
    """A dataset cannot be found, read or fetched."""


class VerificationError(StructlthError):
    """A fast inference path disagrees with the masked reference."""


def _terminate(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """On Linux, ask the kernel for SIGTERM when the parent (dvc, or the shell it started)
    dies, so a killed `dvc repro` leaves no stage training on as an orphan. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn StructlthError into one message on stderr and exit status 2 (no traceback).

    SIGTERM becomes SystemExit, so atomic writes in flight clean up their temporary files; the
    process gets SIGTERM when its parent dies.
    """
    signal.signal(signal.SIGTERM, _terminate)
    _die_with_parent()
    try:
        yield
    except StructlthError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
