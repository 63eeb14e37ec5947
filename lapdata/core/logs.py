"""Logging for both packages: plain lines a file can hold, progress bars only on a terminal, each warning once.

    log = get_logger("train")            # logger "lap.train"
    log.info("step 20/500 loss 0.41")    # -> stderr, and every file attached with log_to_file
    with log_to_file("runs/u3d/train.log"):
        ...                              # the run's own plain log

Lines are ``2026-12-01 17:02:22 INFO train: message`` when stderr is not a terminal (a log file, a cluster job) and
just ``message`` on a terminal. ``warn_once`` (and Python warnings, which are captured) print a given message once per
process. ``setup_logging`` is called by the command-line entry points; a library user gets Python's defaults
(nothing below WARNING) unless they call it.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = "lap"
FILE_FORMAT = "%(asctime)s %(levelname)s %(short)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_LINE = 300  # longer messages are cut (a log line a person reads, never a dump)


class _Plain(logging.Formatter):
    """One line per record: newlines folded, at most MAX_LINE characters, ``short`` = the name without ``lap.``."""

    def format(self, record: logging.LogRecord) -> str:
        record.short = record.name.removeprefix(ROOT + ".") if record.name != ROOT else ROOT
        text = " | ".join(part for part in super().format(record).splitlines() if part.strip())
        return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


class OnceFilter(logging.Filter):
    """Passes each distinct WARNING (or worse) message once; INFO lines always pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


_WARNED: set[tuple[str, str]] = set()  # warn_once's memory


def get_logger(name: str) -> logging.Logger:
    """The logger ``lap.<name>`` (one per module or tool)."""
    return logging.getLogger(f"{ROOT}.{name}")


def setup_logging(level: int = logging.INFO, stream=None) -> logging.Logger:
    """Send ``lap.*`` records to stderr (plain lines off a terminal) and capture Python warnings, once each.

    Idempotent: a second call replaces the stream handler."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    root.propagate = False
    for h in [h for h in root.handlers if getattr(h, "_lap_stream", False)]:
        root.removeHandler(h)
    h = logging.StreamHandler(stream) if stream is not None else _Stderr()
    tty = hasattr(h.stream, "isatty") and h.stream.isatty()
    h.setFormatter(_Plain("%(message)s" if tty else FILE_FORMAT, DATE_FORMAT))
    h.addFilter(OnceFilter())
    h._lap_stream = True  # type: ignore[attr-defined]
    root.addHandler(h)
    logging.captureWarnings(False)  # re-patch warnings.showwarning even if someone replaced it since
    logging.captureWarnings(True)
    pw = logging.getLogger("py.warnings")
    pw.propagate = False
    for x in [x for x in pw.handlers if getattr(x, "_lap_stream", False)]:
        pw.removeHandler(x)
    pw.addHandler(h)
    return root


@contextmanager
def log_to_file(path: str | Path, level: int = logging.INFO) -> Iterator[Path]:
    """Also write every ``lap.*`` record (plain lines with time and level) to ``path`` while the block runs."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger(ROOT)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    h = logging.FileHandler(p, encoding="utf-8")
    h.setLevel(level)
    h.setFormatter(_Plain(FILE_FORMAT, DATE_FORMAT))
    h.addFilter(OnceFilter())
    root.addHandler(h)
    try:
        yield p
    finally:
        root.removeHandler(h)
        h.close()


def warn_once(logger: logging.Logger, message: str) -> None:
    """``logger.warning(message)`` unless this exact message was already warned in this process."""
    key = (logger.name, message)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)
