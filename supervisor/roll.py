"""Rolling restarts: replace a service's instances one batch at a time, traffic kept flowing.

The Roller owns the two lists a roll adds to a service, the replacements still starting
(`incoming`) and the old incarnations draining (`retiring`); the service owns its current
instances and is asked, through RollTarget, to spawn a replacement or make one current.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from config.model import ServiceSpec

from .errors import RollFailed
from .instance import UP, Instance, State


class RollTarget(Protocol):
    """What a roll needs from its service."""

    @property
    def spec(self) -> ServiceSpec: ...

    def spawn_replacement(self, index: int) -> Instance:
        """A new incarnation for slot `index`, on a fresh port; not current yet."""
        ...

    def promote(self, new: Instance) -> None:
        """Make `new` the current instance of its slot."""
        ...

    def respawn(self, index: int) -> Instance:
        """A new current incarnation for slot `index`, on its configured port."""
        ...

    async def stop_instances(self, insts: list[Instance]) -> None:
        """Stop them and release their ports."""
        ...


class Roller:
    """The roll of one service: at most one at a time (the service's lock)."""

    def __init__(self) -> None:
        self.incoming: list[Instance] = []
        self.retiring: list[Instance] = []

    async def surge(self, target: RollTarget, olds: list[Instance]) -> None:
        """Start replacements (`max_surge` at a time) on fresh ports, wait until they are
        ready, then drain and stop the old ones. A replacement that never gets ready stops
        the roll, with the old instances still serving (RollFailed)."""
        surge = max(1, target.spec.max_surge)
        for start in range(0, len(olds), surge):
            batch = olds[start : start + surge]
            fresh = [target.spawn_replacement(old.index) for old in batch]
            self.incoming.extend(fresh)
            try:
                states = await asyncio.gather(*(_ready(new) for new in fresh))
            finally:
                # Interrupted or not, they are no longer "starting"; until stopped or made
                # current they are the roll's to stop (and a shutdown finds them here).
                for new in fresh:
                    self.incoming.remove(new)
                    self.retiring.append(new)
            if any(state not in UP for state in states):
                bad = next(n for n, s in zip(fresh, states, strict=True) if s not in UP)
                why = f"{bad.state.value}: {bad.detail or 'no detail'}"  # before stop()
                await self._retire(target, fresh)
                raise RollFailed(
                    f"{bad.name}: replacement never became ready ({why}); "
                    "roll stopped, old instances still serving"
                )
            for new in fresh:
                self.retiring.remove(new)
                target.promote(new)
            self.retiring.extend(batch)
            await self._retire(target, batch)

    async def in_place(self, target: RollTarget, olds: list[Instance]) -> None:
        """Stop one old instance, start its replacement on the same port, wait until it is
        ready; then the next. Ports stay what they are (an external balancer pointing at
        them sees N-1 up meanwhile). A replacement that never gets ready stops the roll; it
        stays in its slot (its own crash-loop policy applies) and the others keep the old
        version."""
        for done, old in enumerate(olds):
            # Still the slot's current instance while it stops: `ps` shows it "stopping".
            await target.stop_instances([old])
            new = target.respawn(old.index)
            state = await _ready(new)
            if state not in UP:
                why = f"{state.value}: {new.detail or 'no detail'}"
                untouched = len(olds) - done - 1
                raise RollFailed(
                    f"{new.name}: replacement never became ready ({why}); roll stopped, "
                    f"{untouched} instance(s) not rolled yet still run the old version"
                )

    async def _retire(self, target: RollTarget, insts: list[Instance]) -> None:
        await target.stop_instances(insts)
        for inst in insts:
            self.retiring.remove(inst)


async def _ready(inst: Instance) -> State:
    """Wait until a replacement is up, or shows it will not be: unhealthy, failed (a crash
    loop, or not ready within its start_timeout), or stopped."""
    return await inst.wait_for(UP | {State.UNHEALTHY})
