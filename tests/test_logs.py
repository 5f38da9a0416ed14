"""LogHub: rotation, tail, followers (live and slow) and pumping a real child's output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.logs import MAX_LINE, LogHub, LogRecord


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LogHub]:
    hub = LogHub(tmp_path / "logs", max_bytes=1_000_000, keep=3, tail_lines=100)
    yield hub
    hub.close()


def record(service: str, index: int, line: str, ts: float) -> LogRecord:
    return LogRecord(ts, service, index, "stdout", line)


def test_rotation_keeps_n_files_under_the_size_bound(tmp_path: Path) -> None:
    hub = LogHub(tmp_path / "logs", max_bytes=2000, keep=3, tail_lines=10)
    sink = hub.sink("web", 1)
    for i in range(1000):
        sink.write("stdout", f"line {i:04d} " + "x" * 40)
    hub.close()

    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["web.1.log", "web.1.log.1", "web.1.log.2", "web.1.log.3"]
    for path in (tmp_path / "logs").iterdir():
        assert 0 < path.stat().st_size <= 2000
    newest = (tmp_path / "logs" / "web.1.log").read_text().splitlines()
    assert newest[-1].endswith("stdout line 0999 " + "x" * 40)
    # .1 holds the lines just before the current file's first line.
    previous = (tmp_path / "logs" / "web.1.log.1").read_text().splitlines()
    first_current = int(newest[0].split()[3])
    assert int(previous[-1].split()[3]) == first_current - 1


def test_reopening_with_smaller_keep_removes_extra_rotations(tmp_path: Path) -> None:
    hub = LogHub(tmp_path, max_bytes=100, keep=4, tail_lines=10)
    for i in range(50):
        hub.sink("a", 1).write("stdout", f"{i} " + "y" * 30)
    hub.close()
    assert (tmp_path / "a.1.log.4").exists()

    hub = LogHub(tmp_path, max_bytes=100, keep=1, tail_lines=10)
    hub.sink("a", 1).write("stdout", "again")
    hub.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.1.log", "a.1.log.1"]


def test_unwritable_log_dir_does_not_stop_the_show(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log dir should be")
    hub = LogHub(blocker, max_bytes=1000, keep=1, tail_lines=10)
    for i in range(3):
        hub.sink("web", 1).write("stdout", f"still here {i}")
    assert [r.line for r in hub.tail(None, 10)] == [f"still here {i}" for i in range(3)]
    hub.close()


def test_tail_merges_by_time_with_filters_and_n(hub: LogHub) -> None:
    hub.emit(record("web", 1, "w1-a", 1.0))
    hub.emit(record("web", 2, "w2-a", 2.0))
    hub.emit(record("db", 1, "d1-a", 3.0))
    hub.emit(record("web", 1, "w1-b", 4.0))
    hub.emit(record("web", 2, "w2-b", 5.0))

    def lines(records: list[LogRecord]) -> list[str]:
        return [r.line for r in records]

    assert lines(hub.tail(None, 10)) == ["w1-a", "w2-a", "d1-a", "w1-b", "w2-b"]
    assert lines(hub.tail(None, 2)) == ["w1-b", "w2-b"]
    assert lines(hub.tail([("web", None)], 3)) == ["w2-a", "w1-b", "w2-b"]
    assert lines(hub.tail([("web", 1), ("db", None)], 10)) == ["w1-a", "d1-a", "w1-b"]
    assert hub.tail([("nope", None)], 10) == []
    assert hub.tail(None, 0) == []


def test_tail_is_bounded_per_instance(tmp_path: Path) -> None:
    hub = LogHub(tmp_path, max_bytes=1_000_000, keep=1, tail_lines=5)
    for i in range(20):
        hub.sink("web", 1).write("stdout", str(i))
    assert [r.line for r in hub.tail(None, 100)] == ["15", "16", "17", "18", "19"]
    hub.close()


def test_record_json() -> None:
    rec = LogRecord(1.5, "web", 2, "stderr", "boom")
    assert rec.to_json() == {
        "ts": 1.5,
        "service": "web",
        "index": 2,
        "stream": "stderr",
        "line": "boom",
    }


async def test_follower_gets_live_lines_for_its_targets(hub: LogHub) -> None:
    hub.sink("web", 1).write("stdout", "before")  # not replayed: follow is live only
    async with asyncio.timeout(5):
        async with hub.follow([("web", None)]) as follower:
            received: list[str] = []

            async def read() -> None:
                async for rec in follower:
                    received.append(rec.line)
                    if len(received) == 2:
                        return

            reader = asyncio.create_task(read())
            await asyncio.sleep(0)  # the reader is parked, waiting: lines must wake it
            hub.sink("db", 1).write("stdout", "other service")
            hub.sink("web", 2).write("stderr", "live 1")
            hub.sink("web", 1).write("stdout", "live 2")
            await reader
        assert received == ["live 1", "live 2"]


async def test_close_ends_iteration(hub: LogHub) -> None:
    follower = hub.follow()
    hub.sink("web", 1).write("stdout", "last")
    follower.close()
    async with asyncio.timeout(5):
        assert [r.line async for r in follower] == ["last"]
    hub.sink("web", 1).write("stdout", "after close")  # nobody to deliver to, no error


async def test_slow_follower_drops_instead_of_blocking(hub: LogHub) -> None:
    follower = hub.follow(maxsize=10)
    sink = hub.sink("web", 1)
    for i in range(1000):  # emit() never awaits, so a full follower can't block it
        sink.write("stdout", str(i))

    async with asyncio.timeout(5):
        got = [await anext(follower) for _ in range(11)]
    assert [r.line for r in got[:10]] == [str(i) for i in range(10)]
    assert got[10].stream == "corral"
    assert got[10].line == "[990 lines dropped: this log reader was too slow]"

    sink.write("stdout", "caught up")
    async with asyncio.timeout(5):
        assert (await anext(follower)).line == "caught up"
    follower.close()
    # The file and the tail still have everything.
    assert len(hub.tail(None, 2000)) == 100  # tail_lines
    hub.flush()
    assert len((hub.log_dir / "web.1.log").read_text().splitlines()) == 1001


async def test_drop_marker_sits_at_the_gap(hub: LogHub) -> None:
    follower = hub.follow(maxsize=3)
    sink = hub.sink("web", 1)
    for line in ("a", "b", "c", "d", "e"):
        sink.write("stdout", line)
    async with asyncio.timeout(5):
        assert (await anext(follower)).line == "a"
        assert (await anext(follower)).line == "b"
        sink.write("stdout", "f")  # room again: marker for d, e, then f
        rest = [(await anext(follower)).line for _ in range(3)]
    assert rest[0] == "c"
    assert rest[1].startswith("[2 lines dropped")
    assert rest[2] == "f"
    follower.close()


CHILD = f"""
import sys
w = sys.stdout.buffer.write
w(b"hello\\n")
w(b"crlf line\\r\\n")
w(b"bad utf8 \\xff here\\n")
w(b"L" * {200 * 1024} + b"\\n")
w("é".encode() * {MAX_LINE} + b"\\n")
w(b"after long\\n")
sys.stdout.flush()
sys.stderr.write("to stderr\\n")
sys.stderr.flush()
w(b"no newline at the end")
"""


async def test_pump_real_child_output(hub: LogHub) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    sink = hub.sink("job", 1)
    async with asyncio.timeout(20):
        await asyncio.gather(sink.pump("stdout", proc.stdout), sink.pump("stderr", proc.stderr))
        assert await proc.wait() == 0

    records = hub.tail(None, 100)
    out = [r.line for r in records if r.stream == "stdout"]
    assert [r.line for r in records if r.stream == "stderr"] == ["to stderr"]
    assert out[:3] == ["hello", "crlf line", "bad utf8 \ufffd here"]
    long_pieces = [line for line in out if line and set(line) == {"L"}]
    assert [len(p) for p in long_pieces] == [MAX_LINE, MAX_LINE, MAX_LINE, 8 * 1024]
    accents = [line for line in out if line and set(line) == {"é"}]
    assert sum(len(p) for p in accents) == MAX_LINE  # split on character boundaries only
    assert out[-2:] == ["after long", "no newline at the end"]
