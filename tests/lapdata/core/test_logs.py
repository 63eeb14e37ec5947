"""lapdata.core.logs: plain one-line records, each warning once, a file per run."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

from lapdata.core.logs import MAX_LINE, get_logger, log_to_file, setup_logging, warn_once


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_plain_lines_off_a_terminal_and_bare_on_one():
    s = _Stream(tty=False)
    setup_logging(stream=s)
    get_logger("unit").info("step 20/100 loss 0.5")
    line = s.getvalue().strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO unit: step 20/100 loss 0.5", line), line
    t = _Stream(tty=True)
    setup_logging(stream=t)
    get_logger("unit").info("hello")
    assert t.getvalue() == "hello\n" and "hello" not in s.getvalue()  # the handler was replaced, not added


def test_long_and_multiline_messages_stay_one_short_line():
    s = _Stream(tty=False)
    setup_logging(stream=s)
    get_logger("unit").info("a\nb\n" + "x" * 1000)
    lines = s.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) == MAX_LINE and lines[0].endswith("...") and " a | b | " in lines[0]


def test_each_warning_once_including_python_warnings():
    s = _Stream(tty=False)
    setup_logging(stream=s)
    log = get_logger("unit")
    for _ in range(3):
        warn_once(log, "skipped a sample")
        log.warning("the same warning")
        log.info("info repeats")
    out = s.getvalue()
    assert out.count("skipped a sample") == 1 and out.count("the same warning") == 1
    assert out.count("info repeats") == 3
    # Python warnings (in a fresh process: pytest captures warnings itself), even with the "always" filter
    code = ("import warnings; from lapdata.core.logs import setup_logging; setup_logging(); "
            "warnings.simplefilter('always'); [warnings.warn('a python warning') for _ in range(3)]")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.count("a python warning") == 1 and "WARNING py.warnings" in err, err

def test_log_to_file_collects_records_while_open(tmp_path):
    setup_logging(stream=_Stream(tty=False))
    log = get_logger("unit")
    with log_to_file(tmp_path / "run" / "train.log") as p:
        log.info("inside")
    log.info("outside")
    text = p.read_text()
    assert "INFO unit: inside" in text and "outside" not in text
    assert not [h for h in logging.getLogger("lap").handlers if isinstance(h, logging.FileHandler)]
