"""How the daemon's own log lines look: for the journal, for a file or terminal, or as JSON.

- stderr is the journal (systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the stream it gave
  us; it must match stderr, or a child of a unit that redirected its stderr would claim it):
  each line starts with a `<N>` syslog priority, which journald turns into the entry's
  PRIORITY (so `journalctl -p warning` works), and carries no timestamp (the journal has one);
- anywhere else (`corral daemon` on a terminal, `.corral/daemon.log` of `up -d`): a
  timestamp first; `corral up` in the foreground leaves it out, as its instance lines do;
- `--log-format json`: one JSON object per line (`ts`, `level`, `logger`, `message`, the
  instance's `service` / `instance` / `stream` for child output, `exc` for a traceback), for
  log shippers; under the journal still behind a `<N>` prefix, which journald strips.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

FORMATS = ("text", "json")
# logging levels → syslog priorities (sd-daemon(3)): what journald files each line under.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
# Attributes LogSink gives child output records (logs.py): copied into the JSON object.
CHILD_FIELDS = ("service", "instance", "stream")


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels in between round towards DEBUG)."""
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= threshold:
            return _PRIORITY[threshold]
    return _PRIORITY[logging.DEBUG]


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Is `stream` the journal stream systemd connected us to?"""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class TextFormatter(logging.Formatter):
    """`2026-05-04T18:00:02.120+0200 corral: INFO name: message`, or `<6>INFO name: message`
    for the journal."""

    def __init__(self, *, journal: bool, timestamps: bool = True) -> None:
        super().__init__()
        self.journal = journal
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:
            # One entry per line for the journal: a traceback's lines each get the priority.
            prefix = f"<{priority(record.levelno)}>"
            return "\n".join(prefix + line for line in text.split("\n"))
        if self.timestamps:
            return f"{_timestamp(record.created)} corral: {text}"
        return f"corral: {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in CHILD_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        text = json.dumps(data, ensure_ascii=False)
        return f"<{priority(record.levelno)}>{text}" if self.journal else text


def formatter(log_format: str, *, journal: bool, timestamps: bool = True) -> logging.Formatter:
    """The formatter for `log_format` ("text" or "json")."""
    if log_format == "json":
        return JsonFormatter(journal=journal)
    return TextFormatter(journal=journal, timestamps=timestamps)


def configure(
    level: int, log_format: str = "text", *, timestamps: bool = True, stream: TextIO | None = None
) -> bool:
    """Log to `stream` (stderr) in `log_format`; True if it is the journal. Like basicConfig,
    a no-op for a root logger that already has handlers (a test's capture)."""
    stream = sys.stderr if stream is None else stream
    journal = is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format, journal=journal, timestamps=timestamps))
    logging.basicConfig(level=level, handlers=[handler])
    return journal


def _timestamp(created: float) -> str:
    """ISO 8601 with milliseconds and the UTC offset: 2026-05-04T18:00:02.120+0200."""
    local = time.localtime(created)
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}" + time.strftime("%z", local)
