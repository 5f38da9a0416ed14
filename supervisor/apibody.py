"""Typed reads of control API request bodies and query strings.

Every field of every endpoint is checked for its type and range, and unknown fields are
refused: `{"all_at_once": "no"}` must be a 400, not a truthy string that rolls everything at
once. Errors are SupervisorError, which the control server answers with 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

from aiohttp import web

from config.service import MAX_INSTANCES

from .errors import SupervisorError

MAX_TIMEOUT = 86400.0  # seconds; GET /v1/wait
MAX_LINES = 1_000_000  # ?n= of logs and events; the tails are far shorter anyway
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def read_body(request: web.Request, allowed: Collection[str]) -> dict[str, Any]:
    """The JSON object sent (`{}` for no body), with only the `allowed` fields."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except RecursionError:  # json.loads on [[[[... 100,000 deep
        raise SupervisorError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # includes bytes that are not UTF-8
        raise SupervisorError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SupervisorError("expected a JSON object")
    for name in data:
        if name not in allowed:
            expected = ", ".join(f"'{n}'" for n in allowed) or "none"
            raise SupervisorError(f"unknown field {_show(name)} (fields: {expected})")
    return data


def targets(data: dict[str, Any]) -> list[str]:
    """`targets`: a list of `service` / `service.N` strings; absent or empty means all."""
    value = data.get("targets", [])
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise SupervisorError(f"'targets' must be a list of non-empty strings, got {_show(value)}")
    return value


def flag(data: dict[str, Any], name: str) -> bool:
    """A JSON true/false field (absent is false); "no" or 0 is an error, not a truth value."""
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise SupervisorError(f"'{name}' must be true or false, got {_show(value)}")
    return value


def count(value: object, what: str) -> int:
    """An instance count: an integer from 0 to MAX_INSTANCES (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANCES:
        raise SupervisorError(
            f"{what} must be an integer from 0 to {MAX_INSTANCES}, got {_show(value)}"
        )
    return value


def counts(data: dict[str, Any]) -> dict[str, int]:
    """`counts`: {service: count}, at least one."""
    value = data.get("counts")
    if not isinstance(value, dict) or not value:
        raise SupervisorError(
            f"'counts' must map service names to instance counts, got {_show(value)}"
        )
    return {str(name): count(n, f"'counts.{name}'") for name, n in value.items()}


def check_query(request: web.Request, allowed: Collection[str]) -> None:
    """Refuse unknown query parameters (a typo like `?folow=1` must not be ignored)."""
    for name in request.query:
        if name not in allowed:
            expected = ", ".join(f"'{n}'" for n in allowed) or "none"
            raise SupervisorError(f"unknown query parameter {name!r} (parameters: {expected})")


def query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "0").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SupervisorError(f"query parameter {name!r} must be 1 or 0 (true/false), got {raw!r}")


def query_int(request: web.Request, name: str, default: int, maximum: int = MAX_LINES) -> int:
    raw = request.query.get(name, str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or int(raw) > maximum:
        raise SupervisorError(
            f"query parameter {name!r} must be an integer from 0 to {maximum}, got {raw!r}"
        )
    return int(raw)


def query_seconds(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_TIMEOUT:  # also refuses nan and inf
        raise SupervisorError(
            f"query parameter {name!r} must be a number of seconds from 0 to "
            f"{MAX_TIMEOUT:g}, got {raw!r}"
        )
    return value
