"""Pure restart decisions: policy, exponential backoff, crash loops and their cool-down."""

from __future__ import annotations

import collections
import enum
import signal
from dataclasses import dataclass, field

from config.model import CrashLoop, RestartPolicy


class Verdict(enum.Enum):
    RESTART = "restart"  # after `delay`
    COMPLETED = "completed"  # oneshot finished well
    STOPPED = "stopped"  # exited 0 and the policy does not restart it
    FAILED = "failed"  # exited badly; retried after `retry_in` if set, else not until asked


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    reason: str = ""
    retry_in: float | None = None  # FAILED: the cool-down before the next try (None: never)


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
    """Exit times inside a sliding window: all of them set the backoff, crashes the limit.

    `cooldowns` counts the crash-loop cool-downs in a row; each one doubles the next.
    """

    limit: int
    window: float
    times: collections.deque[float] = field(default_factory=collections.deque)
    crash_times: collections.deque[float] = field(default_factory=collections.deque)
    cooldowns: int = 0

    def record(self, now: float, *, crash: bool = True) -> int:
        """Record an exit; returns how many exits the window holds."""
        self.times.append(now)
        if crash:
            self.crash_times.append(now)
        for times in (self.times, self.crash_times):
            while times and now - times[0] > self.window:
                times.popleft()
        return len(self.times)

    def crashes(self) -> int:
        return len(self.crash_times)

    def reset(self) -> None:
        self.times.clear()
        self.crash_times.clear()
        self.cooldowns = 0


def decide(
    *,
    code: int | None,
    cause: str = "",
    policy: RestartPolicy,
    oneshot: bool,
    history: CrashHistory,
    now: float,
    backoff_initial: float,
    backoff_max: float,
    transient: bool = False,
    start_failed: bool = False,
    crash_loop: CrashLoop = CrashLoop.RETRY,
    cooldown_initial: float = 10.0,
    cooldown_max: float = 300.0,
    uptime: float = 0.0,
) -> Decision:
    """What to do after a process ended on its own (not because we stopped it).

    `transient`: it could not start for a reason of the daemon's (out of fds, memory): retry
    with backoff, without counting a crash (the program did nothing wrong).
    `start_failed`: it was stopped because it was not ready within its start timeout: failed
    (`cause` says what it waited for).
    A crash loop (or a failed start) is retried, as Kubernetes' CrashLoopBackOff does, after a
    cool-down of `cooldown_initial`, doubling each time up to `cooldown_max`, unless
    `crash_loop` is STOP. A process that ran for a whole `crash_window` (`uptime`) ends the
    doubling.
    """
    how = cause or describe_exit(code)
    if uptime >= history.window:
        history.cooldowns = 0
    if start_failed:
        history.record(now)
        return _failed(how, history, crash_loop, cooldown_initial, cooldown_max)
    if transient:
        recent = history.record(now, crash=False)
        return Decision(
            Verdict.RESTART, delay=_delay(recent, backoff_initial, backoff_max), reason=how
        )
    if code == 0:
        if oneshot:
            return Decision(Verdict.COMPLETED, reason=how)
        if policy is not RestartPolicy.ALWAYS:
            return Decision(Verdict.STOPPED, reason=how)
    elif policy is RestartPolicy.NO:
        return Decision(Verdict.FAILED, reason=how)
    # Clean exits under "always" are recorded too: they back off like crashes (a program that
    # exits 0 at once must not respawn in a tight loop), but never mark the instance failed.
    recent = history.record(now, crash=code != 0)
    if code != 0:
        crashes = history.crashes()
        if crashes >= history.limit:
            why = f"{how}; crashed {crashes} times in {history.window:g}s (crash_limit {history.limit})"
            return _failed(why, history, crash_loop, cooldown_initial, cooldown_max)
    # The first exit in the window restarts at once (a one-off crash should cost only the
    # program's start-up); repeated ones back off: initial, 2x, 4x ... up to backoff_max.
    return Decision(Verdict.RESTART, delay=_delay(recent, backoff_initial, backoff_max), reason=how)


def _failed(
    reason: str, history: CrashHistory, crash_loop: CrashLoop, initial: float, maximum: float
) -> Decision:
    if crash_loop is CrashLoop.STOP:
        return Decision(Verdict.FAILED, reason=reason)
    cooldown = min(maximum, initial * 2 ** min(history.cooldowns, 64))
    history.cooldowns += 1
    return Decision(Verdict.FAILED, reason=reason, retry_in=cooldown)


def _delay(recent: int, initial: float, maximum: float) -> float:
    return 0.0 if recent <= 1 else min(maximum, initial * 2 ** min(recent - 2, 64))
