"""The daemon's one TaskGroup, and the three kinds of task that live in it.

- `spawn`: long-lived work of the daemon itself (instance lives, service bring-ups, the stats
  sampler, the watcher, the watchdog, venv builds). An exception escaping one of these is a bug;
  as in a trio nursery it cancels the group, and `Daemon.run` then kills every process and exits
  with the traceback: a daemon that lost track of its state must not carry on half-supervising.
- `order`: an operation someone asked for (restart/roll, scale, stop, start, reload). It runs
  in the group, not in the requester's task: a CLI that goes away (Ctrl-C on `corral restart`)
  does not abort a roll halfway. Its result or error goes back to the requester. Shutdown
  cancels orders first, so a SIGTERM never waits for a roll to finish.
- `attach`: work done on behalf of one requester that ends with it (a `logs -f` stream): it
  runs in the group, so shutdown ends it, and it is cancelled when the requester goes away.

Orders and attached work never raise into the group: their errors are the requester's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import OrderInterrupted, SupervisorError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Nursery:
    """Starts tasks in the daemon's TaskGroup; knows which of them are orders."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._orders: set[asyncio.Task[Any]] = set()
        self._attached: set[asyncio.Task[Any]] = set()
        self._closing = False

    def open(self, group: asyncio.TaskGroup) -> None:
        """Start handing out tasks in `group` (entered by `Daemon.run`)."""
        self._group = group

    @property
    def closing(self) -> bool:
        return self._closing

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` in the group until it ends or the daemon stops."""
        if self._group is None:
            coro.close()
            raise RuntimeError(f"cannot start {name}: the daemon is not running")
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def order(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        """Run an order in the group and return its result; refused once shutdown began."""
        if self._closing:
            coro.close()
            raise SupervisorError("the daemon is shutting down")
        result = _result_future()
        task = self.spawn(_deliver(coro, result, name), f"order:{name}")
        task.add_done_callback(lambda _: _interrupted(result, name, coro))
        self._orders.add(task)
        task.add_done_callback(self._orders.discard)
        # Shielded: the requester giving up does not cancel the order.
        return await asyncio.shield(result)

    async def attach(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        """Run `coro` in the group for the calling task; cancelled if the caller is."""
        result = _result_future()
        task = self.spawn(_deliver(coro, result, name), name)
        task.add_done_callback(lambda _: _interrupted(result, name, coro))
        self._attached.add(task)
        task.add_done_callback(self._attached.discard)
        try:
            return await asyncio.shield(result)
        finally:
            task.cancel()  # a no-op once it finished

    async def stop_orders(self) -> None:
        """Refuse new orders, cancel the running ones and wait until they have unwound."""
        self._closing = True
        orders = list(self._orders)
        for task in orders:
            task.cancel()
        if orders:
            await asyncio.wait(orders)

    async def let_attached_end(self, timeout: float) -> None:
        """Give attached work (streams whose source just closed) up to `timeout` to end by
        itself, so that its requester gets a clean end rather than an interruption."""
        if self._attached:
            await asyncio.wait(list(self._attached), timeout=timeout)

    def cancel_all(self) -> None:
        """Cancel whatever still runs; the group's exit then waits for it."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()


def _result_future() -> asyncio.Future[Any]:
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    # Retrieved here so that an error nobody waits for any more (the requester left) is not
    # reported as "exception was never retrieved".
    result.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    return result


def _interrupted(
    result: asyncio.Future[Any], name: str, coro: Coroutine[Any, Any, Any] | None = None
) -> None:
    # Also when the task was cancelled before it ever ran: _deliver never saw it, and the
    # order's coroutine was never started (closed here, or Python warns it was never awaited).
    if coro is not None:
        coro.close()
    if not result.done():
        result.set_exception(OrderInterrupted(f"{name} interrupted: the daemon is shutting down"))


async def _deliver(coro: Coroutine[Any, Any, T], result: asyncio.Future[T], name: str) -> None:
    try:
        value = await coro
    except asyncio.CancelledError:
        _interrupted(result, name)
        raise
    except Exception as exc:
        if not result.done():
            result.set_exception(exc)
    else:
        if not result.done():
            result.set_result(value)
