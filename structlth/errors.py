"""The error types users see. Stage scripts and the CLI print them as one message, exit 2."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(Path.cwd()):
        script = script.relative_to(Path.cwd())
    out = argv[argv.index("--out") + 1] if "--out" in argv[:-1] else None
    return f"{script}" + (f" ({out})" if out else "")


def resume_advice() -> str:
    """How to go on after an interrupt: inside a DVC experiment (`dvc exp run`, queued or --temp;
    DVC sets DVC_EXP_BASELINE_REV there) run it again, whose finished stages the run cache
    restores; in the workspace `dvc repro`, which also resumes the stage from its checkpoint."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return "run the same `dvc exp run` again: finished stages come back from the run cache"
    return "finished epochs are checkpointed: rerun `dvc repro` to resume"


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
        print(f"interrupted: {_what()} stopped; {resume_advice()}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
