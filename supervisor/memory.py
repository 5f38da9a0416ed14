"""`memory_limit`: when an instance's process tree has used too much memory for too long.

Pure: the sampler's rounds go in (`observe(rss, now)`), a restart reason comes out once the
RSS has stayed above the limit for `memory_grace` (PM2's max_memory_restart, with a grace so
that a short spike — a big request, a GC cycle — does not cost a restart). The process run
then stops the instance gracefully (drained first) and its life restarts it, like a liveness
failure, with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.units import format_duration

# The sampler looks at least this often for services with a memory_limit: three looks per
# grace period, but no more than twice a second (each round scans /proc).
FASTEST = 0.5


def pace(grace: float) -> float:
    """How often to sample an instance whose limit has this grace period."""
    return max(FASTEST, grace / 3)


def megabytes(size: int) -> str:
    return f"{size / (1 << 20):.0f}MB"


@dataclass(slots=True)
class MemoryWatch:
    """The RSS history that matters for one process run: since when it has been over."""

    limit: int  # bytes
    grace: float  # seconds
    over_since: float | None = None

    def observe(self, rss: int, now: float) -> str | None:
        """The restart reason if `rss` is over the limit and has been for `grace`, else None."""
        if rss <= self.limit:
            self.over_since = None
            return None
        if self.over_since is None:
            self.over_since = now
        over = now - self.over_since
        if over < self.grace:
            return None
        return (
            f"memory_limit: RSS {megabytes(rss)} above {megabytes(self.limit)} "
            f"for {format_duration(round(over, 1)) or '0s'}"
        )
