"""The exchange's pure decisions, without sockets: framing (framing.py) and retries (retry.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import framing
from proxy.errors import BadRequest
from proxy.framing import CHUNK, NO_BODY, PASS, UNTIL_CLOSE
from proxy.memory import Trimmer
from proxy.retry import Attempt, Decision, Retry, decide

# --- request framing ------------------------------------------------------------------------------


def test_request_body_kinds() -> None:
    assert framing.request_body(None, None, 0) == framing.NONE
    assert framing.request_body(b"12", None, 0) == framing.LENGTH
    assert framing.request_body(None, b"chunked", 0) == framing.CHUNKED
    assert framing.request_body(None, b" Chunked ", 0) == framing.CHUNKED


def test_request_body_limits_and_codings() -> None:
    with pytest.raises(BadRequest) as too_big:
        framing.request_body(b"11", None, 10)
    assert too_big.value.status == 413
    assert framing.request_body(b"10", None, 10) == framing.LENGTH
    with pytest.raises(BadRequest) as coding:
        framing.request_body(None, b"gzip, chunked", 0)
    assert coding.value.status == 501 and "gzip, chunked" in coding.value.detail


def test_has_content() -> None:
    assert not framing.has_content(framing.NONE, None)
    assert not framing.has_content(framing.LENGTH, b"0")
    assert framing.has_content(framing.LENGTH, b"1")
    assert framing.has_content(framing.CHUNKED, None)


def test_request_framing_lines() -> None:
    assert framing.request_framing(framing.NONE, None, False, None) == b""
    assert framing.request_framing(framing.LENGTH, b" 5 ", False, None) == b"Content-Length: 5\r\n"
    assert (
        framing.request_framing(framing.CHUNKED, None, True, b"websocket")
        == b"Transfer-Encoding: chunked\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    )


# --- response framing -----------------------------------------------------------------------------


def plan(status: int = 200, **kw: Any) -> framing.ResponseFraming:
    args: dict[str, Any] = {
        "head_request": False,
        "http10": False,
        "has_length": False,
        "transfer_encoding": None,
        "chunked": False,
        "upgrade_requested": False,
        "upgrade_value": None,
        "must_close": False,
    }
    args.update(kw)
    return framing.response_framing(status, **args)


def test_a_length_passes_through() -> None:
    assert plan(has_length=True) == (PASS, b"", False)
    assert plan(has_length=True, must_close=True) == (PASS, b"Connection: close\r\n", True)


def test_unknown_length_is_rechunked_for_http11_and_close_delimited_for_http10() -> None:
    assert plan() == (CHUNK, b"Transfer-Encoding: chunked\r\n", False)
    assert plan(transfer_encoding=b"chunked", chunked=True).lines == (
        b"Transfer-Encoding: chunked\r\n"
    )
    # Another coding alone (delimited by close upstream) gets chunked on top.
    assert plan(transfer_encoding=b"gzip").lines == b"Transfer-Encoding: gzip, chunked\r\n"
    assert plan(http10=True) == (UNTIL_CLOSE, b"", True)


def test_http10_keep_alive_needs_a_length() -> None:
    assert plan(http10=True, has_length=True) == (PASS, b"Connection: keep-alive\r\n", False)
    assert plan(http10=True, has_length=True, must_close=True) == (PASS, b"", True)


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(status: int) -> None:
    assert plan(status, has_length=True).mode == NO_BODY
    assert plan(status).mode == NO_BODY


def test_head_keeps_the_transfer_coding_it_would_have_had() -> None:
    f = plan(head_request=True, transfer_encoding=b"chunked", chunked=True)
    assert f == (NO_BODY, b"Transfer-Encoding: chunked\r\n", False)
    # HTTP/1.0 has no chunked coding to announce.
    f10 = plan(head_request=True, http10=True, transfer_encoding=b"chunked")
    assert f10 == (NO_BODY, b"Connection: keep-alive\r\n", False)


def test_switching_protocols() -> None:
    f = plan(101, upgrade_requested=True, upgrade_value=b"websocket", must_close=True)
    assert f == (NO_BODY, b"Connection: Upgrade\r\nUpgrade: websocket\r\n", False)


def test_a_refused_upgrade_closes_the_client_connection() -> None:
    assert plan(has_length=True, upgrade_requested=True) == (PASS, b"Connection: close\r\n", True)


def test_reuse_after_a_bodiless_head() -> None:
    assert framing.reusable_after_head(False, False, None)
    assert framing.reusable_after_head(True, True, None)
    assert framing.reusable_after_head(True, False, b"chunked")
    assert not framing.reusable_after_head(True, False, None)


def test_close_ends_only_close_delimited_bodies() -> None:
    assert framing.closed_body_complete(CHUNK, chunked_upstream=False)
    assert framing.closed_body_complete(UNTIL_CLOSE, chunked_upstream=False)
    assert not framing.closed_body_complete(CHUNK, chunked_upstream=True)
    assert not framing.closed_body_complete(UNTIL_CLOSE, chunked_upstream=True)
    assert not framing.closed_body_complete(PASS, chunked_upstream=False)
    assert not framing.closed_body_complete(NO_BODY, chunked_upstream=False)


# --- retries ---------------------------------------------------------------------------------------


def attempt(**kw: bool) -> Attempt:
    fields = {
        "sent": True,
        "reused": False,
        "got_response_bytes": False,
        "response_started": False,
        "retryable": True,
    }
    fields.update(kw)
    return Attempt(**fields)


def decided(a: Attempt, **kw: Any) -> Decision:
    args: dict[str, Any] = {
        "replayable": True,
        "retry_on_error": True,
        "attempts": 1,
        "max_attempts": 3,
        "stale_retries": 0,
    }
    args.update(kw)
    return decide(a, **args)


def test_nothing_sent_is_retried_whatever_the_method() -> None:
    assert decided(attempt(sent=False), replayable=False) == (Retry.ANOTHER, True)


def test_sent_requests_are_retried_only_when_replayable_and_allowed() -> None:
    assert decided(attempt()) == (Retry.ANOTHER, True)
    assert decided(attempt(), replayable=False) == (Retry.NO, True)
    assert decided(attempt(), retry_on_error=False) == (Retry.NO, True)
    assert decided(attempt(got_response_bytes=True)) == (Retry.NO, True)


def test_attempts_are_bounded() -> None:
    assert decided(attempt(sent=False), attempts=3) == (Retry.NO, True)


def test_a_stale_pooled_connection_is_retried_fresh_and_not_charged() -> None:
    stale = attempt(reused=True)
    assert decided(stale) == (Retry.FRESH, False)
    assert decided(stale, stale_retries=2) == (Retry.ANOTHER, False)
    assert decided(stale, stale_retries=2, attempts=3) == (Retry.NO, False)
    # Not replayable (a POST): cannot be resent, still not the backend's fault.
    assert decided(stale, replayable=False) == (Retry.NO, False)


def test_no_retry_once_the_client_has_bytes_or_the_response_was_malformed() -> None:
    assert decided(attempt(sent=False, response_started=True)) == (Retry.NO, True)
    assert decided(attempt(sent=False, retryable=False)) == (Retry.NO, True)
    assert decided(attempt(reused=True, retryable=False)) == (Retry.NO, False)


# --- giving memory back ----------------------------------------------------------------------------


def test_the_heap_is_trimmed_once_a_burst_of_connections_is_over() -> None:
    calls: list[int] = []
    trimmer = Trimmer(lambda: calls.append(1))
    for n in (10, 150, 300, 200, 151):
        assert not trimmer.observe(n)  # still more than half of the peak
    assert trimmer.observe(149) and calls == [1]
    assert not trimmer.observe(100)  # the peak restarted from 149
    assert trimmer.observe(10) and calls == [1, 1]


def test_small_peaks_are_not_worth_a_trim() -> None:
    calls: list[int] = []
    trimmer = Trimmer(lambda: calls.append(1))
    trimmer.observe(99)
    assert not trimmer.observe(0) and calls == []
