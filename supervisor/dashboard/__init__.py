"""The web dashboard: a page served by the daemon, live over SSE, a client of the control API."""

from .server import Dashboard

__all__ = ["Dashboard"]
