"""Whether a failed attempt is retried, as a pure function of what happened to it.

The exchange reports the facts of one failed attempt (was the request sent, on a pooled
connection, did any response byte arrive) and acts on the decision: try again on a fresh
connection, try another backend, or give up (502, or cut the client if it already got bytes).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

# A stale pooled connection is retried at most this often per request (not counted as attempts).
STALE_RETRIES = 2


class Retry(enum.Enum):
    FRESH = "fresh"  # a pooled keep-alive connection had just been closed: again, on a new one
    ANOTHER = "another"  # a new attempt, on another backend when there is one
    NO = "no"  # answer the failure (or cut the client if part of a response reached it)


class Attempt(NamedTuple):
    """What is known about one failed attempt."""

    sent: bool  # request bytes went to the backend
    reused: bool  # on a pooled keep-alive connection
    got_response_bytes: bool  # the backend had started answering
    response_started: bool  # response bytes already reached the client
    retryable: bool  # the failure allows a retry at all (a malformed response does not)


class Decision(NamedTuple):
    retry: Retry
    charge: bool  # count it against the backend (passive ejection)


def decide(
    attempt: Attempt,
    *,
    replayable: bool,
    retry_on_error: bool,
    attempts: int,
    max_attempts: int,
    stale_retries: int,
) -> Decision:
    """What to do after `attempt` failed.

    `replayable`: the request is idempotent and small enough that every byte sent was kept.
    A pooled connection that failed after the request went out but before any response byte
    was most likely closed by the backend's keep-alive timeout just then: not the backend's
    fault, and safe to resend when replayable.
    """
    stale = attempt.reused and attempt.sent and not attempt.got_response_bytes
    charge = not stale
    if attempt.response_started or not attempt.retryable:
        return Decision(Retry.NO, charge)
    if stale and replayable and stale_retries < STALE_RETRIES:
        return Decision(Retry.FRESH, charge)
    resend_ok = replayable and retry_on_error and not attempt.got_response_bytes
    if attempts < max_attempts and (not attempt.sent or resend_ok):
        return Decision(Retry.ANOTHER, charge)
    return Decision(Retry.NO, charge)
