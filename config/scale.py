"""The `scale` table of a service: request-driven autoscaling, named and bounded as in Knative."""

from __future__ import annotations

from config.model import IdleMode, ScaleSpec
from config.table import Table, show
from config.units import format_duration

_ALLOWED = (
    *("min", "max", "target", "concurrency", "window", "panic_window", "panic_threshold"),
    *("idle_timeout", "cold_start_timeout", "idle", "cold_start_header"),
)
# Knative's bounds where it has them (containerConcurrency <= 1000, target >= 0.01, panic
# threshold 110 % to 1000 %, stable window at most 1 h). Its stable window starts at 6 s; one
# machine reacts faster, so 1 s is allowed here and `corral promote knative` says so.
DEFAULT_MAX = 10
DEFAULT_TARGET = 100.0  # Knative's container-concurrency-target-default
MAX_CONCURRENCY = 1000
MAX_TARGET = 1000.0
MIN_WINDOW = 1.0
MAX_WINDOW = 3600.0
# Knative's panic window is 10 % of the stable window unless set; never shorter than this,
# which is two of the autoscaler's ticks.
PANIC_SHARE = 0.1
MIN_PANIC_WINDOW = 1.0


def read_scale(service: Table, max_instances: int) -> ScaleSpec | None:
    """The service's autoscaling, or None when it has no `scale` table."""
    table = service.table("scale", _ALLOWED)
    if table is None:
        return None
    if service.has("instances"):
        raise service.error(
            "scale",
            "instances and scale are exclusive: an autoscaled service runs from scale.min to "
            "scale.max instances (remove instances, or remove scale for a fixed count)",
        )
    low = table.integer("min", 0, maximum=max_instances)
    high = table.integer("max", max(DEFAULT_MAX, low), minimum=1, maximum=max_instances)
    if high < low:
        raise table.error("max", f"expected an integer >= min ({low}), got {show(high)}")
    concurrency = table.integer("concurrency", 0, maximum=MAX_CONCURRENCY)
    target = table.number("target", float(concurrency or DEFAULT_TARGET), 0.01, MAX_TARGET)
    if concurrency and target > concurrency:
        raise table.error(
            "target",
            f"expected a number <= concurrency ({concurrency}): an instance never holds more "
            f"than that, got {show(table.data['target'])}",
        )
    window = _window(table)
    panic_window = _panic_window(table, window)
    idle = table.choice("idle", IdleMode, IdleMode.STOP)
    if idle is IdleMode.FREEZE and low > 0:
        raise table.error(
            "idle",
            f'"freeze" applies to the last instance once idle, and min = {low} keeps '
            f"{low} running: set min = 0, or remove idle",
        )
    return ScaleSpec(
        min=low,
        max=high,
        target=target,
        concurrency=concurrency,
        window=window,
        panic_window=panic_window,
        panic_threshold=table.number("panic_threshold", 2.0, 1.1, 10.0),
        # Knative removes the last instance once a whole stable window saw no request.
        idle_timeout=table.duration("idle_timeout", window),
        cold_start_timeout=table.duration("cold_start_timeout", 30.0, positive=True),
        idle=idle,
        cold_start_header=table.flag("cold_start_header", False),
    )


def _window(table: Table) -> float:
    window = table.duration("window", 60.0, positive=True)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise table.expected("window", 'a duration from "1s" to "1h"')
    return window


def _panic_window(table: Table, window: float) -> float:
    default = max(MIN_PANIC_WINDOW, window * PANIC_SHARE)
    panic = table.duration("panic_window", default, positive=True)
    if not MIN_PANIC_WINDOW <= panic <= window:
        raise table.expected(
            "panic_window", f'a duration from "1s" to the window ({format_duration(window)})'
        )
    return panic
