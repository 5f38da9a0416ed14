"""Durations, sizes, interpolation and dependency ordering as pure functions."""

from __future__ import annotations

import pytest

from config import ConfigError, parse_duration, parse_size
from config.graph import find_cycle, toposort
from config.interpolate import expand, interpolate
from config.units import format_duration, format_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        (" 3s ", 3.0),
        ("10", 10.0),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "", "s", "1x", "-1s", "1 s", "inf", "nan", -1, True])
def test_parse_duration_rejects(bad: str | float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MB", 10 * 1024 * 1024),
        ("512k", 512 * 1024),
        ("64KiB", 64 * 1024),
        ("1g", 1024**3),
        ("100 mb", 100 * 1024 * 1024),
        ("0", 0),
        ("12B", 12),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["big", "10XB", "-1", -1, True, "MB"])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)


@pytest.mark.parametrize("seconds", [0, 0.1, 0.5, 1, 1.5, 60, 90, 3600, 3605, 7260, 60.5])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_spelling() -> None:
    assert [format_duration(s) for s in (0.5, 2, 90, 3600)] == ["500ms", "2s", "1m30s", "1h"]


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1000, 65536, 10 * 1024**2)] == [
        "0B",
        "1000B",
        "64KB",
        "10MB",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "x"),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("$${A}", "${A}"),
        ("$$", "$"),
        ("a$A", "a$A"),
        ("${A}-${A}", "x-x"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "x", "EMPTY": ""}, None, "k") == expected


def test_expand_required_variable_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        expand("${EMPTY:?}", {"EMPTY": ""}, None, "services.a.env.X")

    assert str(info.value) == "services.a.env.X: ${EMPTY} is required: empty"


def test_interpolate_leaves_keys_and_non_strings() -> None:
    data = {"${A}": {"n": 1, "b": True, "list": ["${A}", 2]}}

    assert interpolate(data, {"A": "x"}, None) == {"${A}": {"n": 1, "b": True, "list": ["x", 2]}}


def test_toposort_is_stable() -> None:
    deps = {"web": ["api"], "api": ["db", "cache"], "db": [], "cache": [], "solo": []}

    assert toposort(deps) == ["db", "cache", "api", "web", "solo"]


def test_toposort_rejects_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        toposort({"a": ["b"], "b": ["a"]})


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": []}) is None
    assert find_cycle({"x": [], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
