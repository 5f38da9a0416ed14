"""Restart decisions are pure: policy, backoff growth and crash-loop detection, with a fake clock."""

from __future__ import annotations

from config.model import RestartPolicy
from supervisor.backoff import CrashHistory, Decision, Verdict, decide, describe_exit


def _decide(code: int | None, history: CrashHistory, now: float, **kw: object) -> Decision:
    args: dict[str, object] = {
        "policy": RestartPolicy.ALWAYS,
        "oneshot": False,
        "backoff_initial": 0.1,
        "backoff_max": 1.0,
    }
    args.update(kw)
    return decide(code=code, history=history, now=now, **args)  # type: ignore[arg-type]


def test_backoff_doubles_and_caps() -> None:
    history = CrashHistory(limit=100, window=60)
    delays = [_decide(1, history, now=float(i)).delay for i in range(6)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]


def test_crash_loop_fails_at_the_limit_inside_the_window() -> None:
    history = CrashHistory(limit=5, window=60)
    verdicts = [_decide(1, history, now=float(i)).verdict for i in range(5)]
    assert verdicts == [Verdict.RESTART] * 4 + [Verdict.FAILED]


def test_crashes_outside_the_window_are_forgotten() -> None:
    history = CrashHistory(limit=3, window=10)
    for t in (0.0, 20.0, 40.0, 60.0, 80.0):
        assert _decide(1, history, now=t).verdict is Verdict.RESTART


def test_policies() -> None:
    h = CrashHistory(limit=5, window=60)
    assert _decide(0, h, 0, policy=RestartPolicy.ON_FAILURE).verdict is Verdict.STOPPED
    assert _decide(2, h, 0, policy=RestartPolicy.ON_FAILURE).verdict is Verdict.RESTART
    assert _decide(2, h, 0, policy=RestartPolicy.NO).verdict is Verdict.FAILED
    assert _decide(0, h, 0, policy=RestartPolicy.NO).verdict is Verdict.STOPPED


def test_clean_exits_under_always_back_off_but_never_fail() -> None:
    history = CrashHistory(limit=3, window=60)
    decisions = [_decide(0, history, now=float(i)) for i in range(8)]
    assert all(d.verdict is Verdict.RESTART for d in decisions)
    assert [d.delay for d in decisions[:6]] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    # ... and they do not count toward the crash limit.
    assert _decide(1, history, now=9.0).verdict is Verdict.RESTART


def test_liveness_cause_is_the_reason() -> None:
    history = CrashHistory(limit=5, window=60)
    d = _decide(1, history, now=0.0, cause="liveness check failed", policy=RestartPolicy.NO)
    assert d.verdict is Verdict.FAILED and d.reason == "liveness check failed"


def test_oneshot_outcomes() -> None:
    h = CrashHistory(limit=5, window=60)
    done = _decide(0, h, 0, oneshot=True, policy=RestartPolicy.NO)
    assert done.verdict is Verdict.COMPLETED
    failed = _decide(1, h, 0, oneshot=True, policy=RestartPolicy.NO)
    assert failed.verdict is Verdict.FAILED and failed.reason == "exit 1"


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit 3"
    assert describe_exit(None) == "could not start"


def test_a_crash_loop_is_retried_after_a_doubling_capped_cool_down() -> None:
    history = CrashHistory(limit=2, window=60)
    failed = []
    for i in range(16):
        d = _decide(1, history, now=float(i), cooldown_initial=10.0, cooldown_max=300.0)
        if d.verdict is Verdict.FAILED:
            failed.append(d.retry_in)
    # Every crash from the limit on fails (the window still holds them), each cool-down twice
    # the last, up to the cap: Kubernetes' CrashLoopBackOff.
    assert failed[:7] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]


def test_a_process_that_ran_a_whole_window_ends_the_doubling() -> None:
    history = CrashHistory(limit=1, window=60)
    assert _decide(1, history, 0.0).retry_in == 10.0
    assert _decide(1, history, 10.0).retry_in == 20.0
    assert _decide(1, history, 100.0, uptime=75.0).retry_in == 10.0


def test_crash_loop_stop_fails_for_good_and_restart_no_is_never_retried() -> None:
    from config.model import CrashLoop

    history = CrashHistory(limit=1, window=60)
    stop = _decide(1, history, 0.0, crash_loop=CrashLoop.STOP)
    assert stop.verdict is Verdict.FAILED and stop.retry_in is None
    no = _decide(1, CrashHistory(limit=5, window=60), 0.0, policy=RestartPolicy.NO)
    assert no.verdict is Verdict.FAILED and no.retry_in is None


def test_a_failed_start_is_failed_and_retried_like_a_crash_loop() -> None:
    history = CrashHistory(limit=5, window=60)
    d = _decide(None, history, 0.0, start_failed=True, cause="not ready after 1m: port 8001")
    assert (d.verdict, d.reason, d.retry_in) == (
        Verdict.FAILED,
        "not ready after 1m: port 8001",
        10.0,
    )
    assert history.crashes() == 1


def test_spawn_failures_of_the_daemon_back_off_but_never_count() -> None:
    history = CrashHistory(limit=2, window=60)
    decisions = [_decide(None, history, float(i), transient=True) for i in range(6)]
    assert all(d.verdict is Verdict.RESTART for d in decisions)
    assert [d.delay for d in decisions[:3]] == [0.0, 0.1, 0.2]
    assert history.crashes() == 0
