"""How the control API, /metrics and later views (corral top, the dashboard) see the daemon.

They get these narrow interfaces, never the Daemon's attributes: what they may read is listed
here, and every write goes through an order the daemon runs and owns.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from config.model import Plan

from .events import EventBus
from .logs import LogHub
from .sampler import StatsSnapshot
from .status import DaemonStatus, InstanceRow

T = TypeVar("T")


class DaemonView(Protocol):
    """Read-only: what the daemon runs, and how it is doing."""

    @property
    def plan(self) -> Plan:
        """The plan in force (immutable)."""
        ...

    @property
    def logs(self) -> LogHub: ...

    @property
    def events(self) -> EventBus: ...

    def status(self) -> DaemonStatus: ...

    def ps(self) -> list[InstanceRow]: ...

    def service_names(self) -> Sequence[str]: ...

    def desired_counts(self) -> Mapping[str, int]: ...

    def stats(self) -> StatsSnapshot:
        """The latest CPU/RSS samples (every 10 s; every 2 s while someone follows them)."""
        ...

    async def next_stats(self, seq: int) -> StatsSnapshot:
        """The first stats snapshot after `seq`: a periodic feed for live views (following it
        switches the daemon to the 2 s schedule)."""
        ...

    def stats_followed(self) -> AbstractAsyncContextManager[None]:
        """Held by a live view for as long as it shows stats: the 2 s schedule meanwhile."""
        ...

    def proxy_metrics(self) -> str:
        """The proxy's Prometheus text ("" without a proxy)."""
        ...

    def autoscaler_metrics(self) -> str:
        """Cold starts and scale decisions in Prometheus text ("" with nothing autoscaled)."""
        ...


class DaemonControl(DaemonView, Protocol):
    """What the control API may ask of the daemon: reads, plus orders."""

    async def start(self, targets: list[str]) -> None: ...

    async def stop(self, targets: list[str]) -> None: ...

    async def restart(self, targets: list[str], *, rolling: bool = True) -> None: ...

    async def scale(self, counts: dict[str, int]) -> None: ...

    async def save_counts(self, counts: dict[str, int]) -> None: ...

    async def reload(self) -> dict[str, list[str]]: ...

    async def wait_settled(self, timeout: float) -> list[InstanceRow]: ...

    def request_shutdown(self) -> None: ...

    async def stream(self, work: Coroutine[Any, Any, T], name: str) -> T:
        """Run a long-lived stream (logs -f, events -f, stats) under the daemon's task group."""
        ...
