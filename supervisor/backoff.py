"""Pure restart decisions: policy, exponential backoff, crash-loop detection."""

from __future__ import annotations

import collections
import enum
import signal
from dataclasses import dataclass, field

from config.model import RestartPolicy


class Verdict(enum.Enum):
    RESTART = "restart"  # after `delay`
    COMPLETED = "completed"  # oneshot finished well
    STOPPED = "stopped"  # exited 0 and the policy does not restart it
    FAILED = "failed"  # exited badly and will not be retried until asked


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    reason: str = ""


def describe_exit(code: int | None) -> str:
    """Human wording of a return code: negative codes are signals."""
    if code is None:
        return "could not start"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@dataclass(slots=True)
class CrashHistory:
    """Crash times inside a sliding window; too many means a crash loop."""

    limit: int
    window: float
    times: collections.deque[float] = field(default_factory=collections.deque)

    def record(self, now: float) -> int:
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times)

    def reset(self) -> None:
        self.times.clear()


def decide(
    *,
    code: int | None,
    policy: RestartPolicy,
    oneshot: bool,
    history: CrashHistory,
    now: float,
    backoff_initial: float,
    backoff_max: float,
) -> Decision:
    """What to do after a process ended on its own (not because we stopped it)."""
    how = describe_exit(code)
    if code == 0:
        if oneshot:
            return Decision(Verdict.COMPLETED, reason=how)
        if policy is not RestartPolicy.ALWAYS:
            return Decision(Verdict.STOPPED, reason=how)
    elif policy is RestartPolicy.NO:
        return Decision(Verdict.FAILED, reason=how)
    crashes = history.record(now) if code != 0 else 0
    if code != 0 and crashes >= history.limit:
        return Decision(
            Verdict.FAILED,
            reason=f"{how}; crashed {crashes} times in {history.window:g}s (crash_limit {history.limit})",
        )
    delay = min(backoff_max, backoff_initial * (2 ** max(0, crashes - 1))) if crashes else 0.0
    return Decision(Verdict.RESTART, delay=delay, reason=how)
