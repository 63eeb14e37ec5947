"""User-facing errors: one clear line naming the file and the fault, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class LapError(Exception):
    """A fault of the user's input (bad path, wrong file, bad config, damaged data), never a bug of ours.

    The CLI prints ``error: <message>`` on one line and exits with status 2 (``cli_guard``). A programming error
    (a tensor of the wrong shape passed between our own functions) raises ``ValueError``/``TypeError`` and keeps its
    traceback. The per-sample faults of a shard (``lapdata.dataset.reader.SampleError``,
    ``lapdata.dataset.sample.CorruptView``) are LapErrors too, so that one reaching the user names the shard and the
    fault on one line; the readers give them to a handler that skips and counts them (``reader.SkipCounter``), and
    the producers record them as data (status/error columns), never as a failed run.
    """


def cli_guard(fn: F) -> F:
    """Decorator for typer commands: turn LapError (and a few obvious user faults) into one line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LapError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


def require(module: str, extra: str = "faces"):
    """Import an optional dependency, or a one-line LapError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LapError(f"{module} is not installed: pip install 'lap-toolkit[{extra}]' "
                       f"(or bash scripts/setup.sh, which installs every extra)") from None
