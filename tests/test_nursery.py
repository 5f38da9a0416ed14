"""The daemon's task owner: orders outlive their requester, shutdown cancels them first."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.errors import OrderInterrupted, SupervisorError
from supervisor.nursery import Nursery


async def test_an_order_returns_its_result_and_raises_its_error() -> None:
    nursery = Nursery()
    async with asyncio.TaskGroup() as group:
        nursery.open(group)

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        async def refuse() -> None:
            raise SupervisorError("no")

        assert await nursery.order(answer(), "answer") == 42
        with pytest.raises(SupervisorError, match="no"):
            await nursery.order(refuse(), "refuse")
    # The order's error went to its requester, not into the group (which closed cleanly).


async def test_an_order_outlives_a_requester_that_gives_up() -> None:
    nursery, done = Nursery(), asyncio.Event()
    async with asyncio.TaskGroup() as group:
        nursery.open(group)

        async def roll() -> None:
            await asyncio.sleep(0.05)
            done.set()

        requester = asyncio.create_task(nursery.order(roll(), "roll"))
        await asyncio.sleep(0)
        requester.cancel()  # `corral restart` was Ctrl-C'ed
        with pytest.raises(asyncio.CancelledError):
            await requester
        await asyncio.wait_for(done.wait(), 5)


async def test_stopping_orders_cancels_them_and_refuses_new_ones() -> None:
    nursery, started, unwound = Nursery(), asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as group:
        nursery.open(group)

        async def endless_roll() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                unwound.set()

        requester = asyncio.create_task(nursery.order(endless_roll(), "restart web"))
        await started.wait()
        # One more, cancelled before its task ever ran: its requester must not hang.
        early = asyncio.create_task(nursery.order(asyncio.sleep(10), "scale"))
        await asyncio.sleep(0)
        await nursery.stop_orders()
        assert unwound.is_set()
        with pytest.raises(OrderInterrupted, match="restart web interrupted"):
            await requester
        with pytest.raises(OrderInterrupted, match="scale interrupted"):
            await asyncio.wait_for(early, 5)
        with pytest.raises(SupervisorError, match="shutting down"):
            await nursery.order(asyncio.sleep(0), "late")
        nursery.cancel_all()


async def test_attached_work_ends_with_its_requester() -> None:
    nursery, ended = Nursery(), asyncio.Event()
    async with asyncio.TaskGroup() as group:
        nursery.open(group)

        async def stream() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

        handler = asyncio.create_task(nursery.attach(stream(), "logs -f"))
        await asyncio.sleep(0)
        handler.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await handler
        await asyncio.wait_for(ended.wait(), 5)


async def test_a_bug_in_a_long_lived_task_stops_the_group() -> None:
    nursery = Nursery()

    async def broken() -> None:
        raise RuntimeError("bug")

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as group:
            nursery.open(group)
            nursery.spawn(broken(), "broken")
            await asyncio.Event().wait()  # cancelled by the group when `broken` fails
    assert info.group_contains(RuntimeError, match="bug")


async def test_spawning_before_the_daemon_runs_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        Nursery().spawn(asyncio.sleep(0), "early")
