"""Instance output: rotated files, an in-memory tail, and live followers.

Memory stays bounded whatever the children print: the tail keeps `tail_lines` records per
instance, a line is at most 64 KiB (longer ones are split), and a follower that can't keep up
loses lines (and is told how many) instead of queueing them or slowing the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from .privatedir import private_file

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # bytes; a longer line is split into pieces of this size
_READ_SIZE = 64 * 1024
_FILE_BUFFER = 64 * 1024

Target = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of output (or a line corral wrote about the instance)."""

    ts: float  # time.time()
    service: str
    index: int
    stream: str  # "stdout" | "stderr" | "corral"
    line: str

    def to_json(self) -> dict[str, object]:
        return {
            "ts": self.ts,
            "service": self.service,
            "index": self.index,
            "stream": self.stream,
            "line": self.line,
        }


class LogHub:
    """Every instance's output, for the whole daemon."""

    def __init__(self, log_dir: Path, max_bytes: int, keep: int, tail_lines: int) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.keep = keep
        self.tail_lines = tail_lines
        self._files: dict[tuple[str, int], _LogFile] = {}
        self._sinks: dict[tuple[str, int], LogSink] = {}
        self._tails: dict[tuple[str, int], deque[LogRecord]] = {}
        self._followers: set[Follower] = set()
        self._owners: dict[str, tuple[int, int]] = {}  # service → (uid, gid) of its files
        self._dirty: set[_LogFile] = set()
        self._flush_scheduled = False
        self._closed = False

    def sink(self, service: str, index: int) -> LogSink:
        """The writer for one instance (the same object on every call)."""
        key = (service, index)
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = LogSink(self, service, index)
        return sink

    def emit(self, record: LogRecord) -> None:
        """Append to the instance's file and tail, and hand to matching followers."""
        if self._closed:
            return
        key = (record.service, record.index)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = deque(maxlen=self.tail_lines)
        tail.append(record)
        file = self._files.get(key)
        if file is None:
            file = self._files[key] = _LogFile(
                self.log_dir / f"{record.service}.{record.index}.log", self.max_bytes, self.keep
            )
            file.owner = self._owners.get(record.service)
        file.write(record)
        self._mark_dirty(file)
        for follower in self._followers:
            if follower.wants(record):
                follower.offer(record)

    def own(self, service: str, owner: tuple[int, int] | None) -> None:
        """The files of `service` belong to (uid, gid) (a service with `user`), or to the
        daemon again (None): the open ones now, the next ones (rotation) as they are made."""
        if owner is None:
            self._owners.pop(service, None)
        else:
            self._owners[service] = owner
        for (name, _), file in self._files.items():
            if name == service:
                file.chown(owner)

    def tail(self, targets: Sequence[Target] | None, n: int) -> list[LogRecord]:
        """The last `n` records of the targets, oldest first; (svc, None) means all instances."""
        if n <= 0:
            return []
        match = _Matcher(targets)
        recent = [
            itertools.islice(reversed(tail), n) for key, tail in self._tails.items() if match(*key)
        ]
        # Each source yields newest first; merge on -ts and keep the n newest overall.
        newest = itertools.islice(heapq.merge(*recent, key=lambda r: -r.ts), n)
        return list(newest)[::-1]

    def follow(self, targets: Sequence[Target] | None = None, *, maxsize: int = 10000) -> Follower:
        """Live records from now on. Call tail() first, without awaiting between, for no gap."""
        follower = Follower(self, _Matcher(targets), maxsize)
        if self._closed:
            follower.close()
        else:
            self._followers.add(follower)
        return follower

    def close(self) -> None:
        """Flush and close every file and end every follower."""
        self._closed = True
        for follower in list(self._followers):
            follower.close()
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._dirty.clear()

    def _unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)

    def _mark_dirty(self, file: _LogFile) -> None:
        self._dirty.add(file)
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # called outside the loop (start-up, tests): no batching to be had
            return
        # One flush per loop iteration: a child printing 10,000 lines in a burst costs one
        # write(2) per file, not 10,000, and nothing waits more than an iteration for disk.
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for file in dirty:
            file.flush()


class LogSink:
    """Writes one instance's lines into the hub."""

    def __init__(self, hub: LogHub, service: str, index: int) -> None:
        self.hub = hub
        self.service = service
        self.index = index
        # Child output also reaches logging (the journal under systemd), when enabled there.
        self._child_log = logging.getLogger(f"supervisor.child.{service}.{index}")

    def write(self, stream: str, line: str) -> None:
        self.hub.emit(LogRecord(time.time(), self.service, self.index, stream, line))
        # "corral" lines are the supervisor's own words, already logged by whoever wrote them.
        if stream != "corral" and self._child_log.isEnabledFor(logging.INFO):
            # The fields are for `--log-format json` (logformat.CHILD_FIELDS).
            fields = {"service": self.service, "instance": self.index, "stream": stream}
            self._child_log.info("%s %s", stream, line, extra=fields)

    async def pump(self, stream_name: str, reader: asyncio.StreamReader) -> None:
        """Copy `reader` line by line until EOF; lines over 64 KiB are split, not fatal."""
        # Not readline(): it raises (and drops the buffer) on lines over the reader's limit,
        # which the caller chose and we can't see. Splitting ourselves works for any limit.
        pending = bytearray()
        while data := await reader.read(_READ_SIZE):
            pending += data
            start = 0
            while (end := pending.find(b"\n", start)) != -1:
                self._write_bytes(stream_name, pending[start:end])
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_LINE:  # no newline in sight: don't buffer without bound
                cut = _utf8_boundary(pending, len(pending) - len(pending) % MAX_LINE)
                self._write_bytes(stream_name, pending[:cut])
                del pending[:cut]
        if pending:
            self._write_bytes(stream_name, pending)  # last line had no trailing newline

    def _write_bytes(self, stream: str, raw: bytearray) -> None:
        if raw.endswith(b"\r"):
            del raw[-1:]
        while len(raw) > MAX_LINE:
            cut = _utf8_boundary(raw, MAX_LINE)
            self.write(stream, raw[:cut].decode("utf-8", errors="replace"))
            del raw[:cut]
        self.write(stream, raw.decode("utf-8", errors="replace"))


class Follower:
    """Async iterator of live records; drops (and reports) what a slow reader can't take."""

    def __init__(self, hub: LogHub, match: _Matcher, maxsize: int) -> None:
        self._hub = hub
        self._match = match
        self._maxsize = max(2, maxsize)  # room for a record and a "dropped" marker
        self._buffer: deque[LogRecord] = deque()
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._closed = False

    @property
    def dropped(self) -> int:
        """Lines lost since the last marker was handed out."""
        return self._dropped

    def wants(self, record: LogRecord) -> bool:
        return self._match(record.service, record.index)

    def offer(self, record: LogRecord) -> None:
        """Queue without blocking: full means the line is counted as dropped instead."""
        if self._closed:
            return
        if self._dropped:
            # The marker goes where the gap is, so it needs a slot as well as the record.
            if len(self._buffer) + 2 > self._maxsize:
                self._dropped += 1
                return
            self._buffer.append(self._marker())
        elif len(self._buffer) >= self._maxsize:
            self._dropped = 1
            return
        self._buffer.append(record)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._hub._unfollow(self)
        self._wakeup.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LogRecord:
        while not self._buffer:
            if self._dropped:
                return self._marker()
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _marker(self) -> LogRecord:
        count, self._dropped = self._dropped, 0
        line = f"[{count} lines dropped: this log reader was too slow]"
        return LogRecord(time.time(), "corral", 0, "corral", line)


class _Matcher:
    """Does (service, index) belong to the targets? None matches everything."""

    def __init__(self, targets: Iterable[Target] | None) -> None:
        self.all = targets is None
        self.services: set[str] = set()
        self.instances: set[tuple[str, int]] = set()
        for service, index in targets or ():
            if index is None:
                self.services.add(service)
            else:
                self.instances.add((service, index))

    def __call__(self, service: str, index: int) -> bool:
        return self.all or service in self.services or (service, index) in self.instances


class _LogFile:
    """One instance's log file, rotated by size to .1 … .keep."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.owner: tuple[int, int] | None = None  # (uid, gid), if not the daemon's
        self._file: BinaryIO | None = None
        self._size = 0
        self._broken = False

    def chown(self, owner: tuple[int, int] | None) -> None:
        self.owner = owner
        if self._file is not None:
            _fchown(self._file.fileno(), owner)

    def write(self, record: LogRecord) -> None:
        line = f"{_stamp(record.ts)} {record.stream} {record.line}\n"
        data = line.encode(errors="replace")
        try:
            file = self._file or self._open()
            if self._size and self._size + len(data) > self.max_bytes:
                file = self._rotate()
            file.write(data)
        except OSError as exc:
            # Disk full or log dir gone: supervision goes on (tail and followers still work);
            # say so once, not once a line.
            if not self._broken:
                log.error("cannot write %s: %s", self.path, exc)
            self._broken = True
            return
        self._broken = False
        self._size += len(data)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                if not self._broken:
                    log.error("cannot write %s: %s", self.path, exc)
                self._broken = True

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # flush() has already said what went wrong
                file.close()

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Rotated files beyond `keep` (left from a run with a larger keep) would never go away.
        for extra in self.path.parent.glob(f"{self.path.name}.*"):
            suffix = extra.name.rsplit(".", 1)[-1]
            if suffix.isdigit() and int(suffix) > self.keep:
                extra.unlink(missing_ok=True)
        # 0600 whatever the umask (and for files an older run left wider): instance output
        # can hold secrets such as tokens and connection URLs.
        fd = private_file(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        _fchown(fd, self.owner)
        self._file = open(fd, "ab", buffering=_FILE_BUFFER)
        self._size = self._file.tell()
        return self._file

    def _rotate(self) -> BinaryIO:
        self.close()
        if self.keep <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        return self._open()


def _fchown(fd: int, owner: tuple[int, int] | None) -> None:
    """Give the file to `owner`, or back to us (None) if a run-as service had it."""
    uid, gid = owner if owner is not None else (os.geteuid(), os.getegid())
    try:
        st = os.fstat(fd)
        if owner is None and st.st_uid == uid:
            return
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
    except OSError as exc:
        log.warning("cannot give log file (fd %d) to uid %d: %s", fd, uid, exc)


def _utf8_boundary(data: bytearray, limit: int) -> int:
    """A cut point near `limit` that doesn't split a UTF-8 character."""
    if limit >= len(data):
        return len(data)
    cut = limit
    # data[cut] starts the next piece; back off while it is a continuation byte (0b10xxxxxx).
    # A character has at most 3 of them: further back means invalid UTF-8, so cut anywhere.
    while cut > limit - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else limit


_stamp_cache: tuple[int, str] = (-1, "")


def _stamp(ts: float) -> str:
    """Local time to the millisecond; strftime runs once a second, not once a line."""
    global _stamp_cache
    second = int(ts)
    if _stamp_cache[0] != second:
        _stamp_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second)))
    return f"{_stamp_cache[1]}.{int((ts - second) * 1000):03d}"
