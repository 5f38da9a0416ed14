"""The one exception promotion raises: the plan cannot be carried to the target as asked."""

from __future__ import annotations

from supervisor.errors import SupervisorError


class PromoteError(SupervisorError):
    """A service or option that promotion cannot turn into artifacts (the message says why)."""
