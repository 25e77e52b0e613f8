"""The error types users see. Stage scripts and the CLI print them as one message, exit 2."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


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


class Interrupted(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwinds like Ctrl-C, so atomic writes in flight clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _what() -> str:
    """This process as a user knows it: the stage script and its output, e.g.
    'stages/imp_round.py (artifacts/imp/round3)'."""
    argv = sys.argv
    out = argv[argv.index("--out") + 1] if "--out" in argv[:-1] else None
    return f"{argv[0]}" + (f" ({out})" if out else "")


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
    """Turn StructlthError into one message on stderr and exit status 2 (no traceback), and an
    interrupt (Ctrl-C, SIGTERM) into one line that says how to resume (exit 128 + signal).

    Interrupts unwind the stack, so atomic writes in flight clean up their temporary files; the
    process gets SIGTERM when its parent dies.
    """
    signal.signal(signal.SIGTERM, _terminate)
    _die_with_parent()
    try:
        yield
    except StructlthError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, Interrupted) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        print(f"interrupted: {_what()} stopped; finished epochs are checkpointed: rerun `dvc repro` to resume", file=sys.stderr)
        raise SystemExit(128 + signum) from None
