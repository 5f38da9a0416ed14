"""Dependency order: a stable topological sort and the cycle that prevents one."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence


def toposort(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Names with dependencies first, ties kept in `deps` order; ValueError on a cycle."""
    position = {name: i for i, name in enumerate(deps)}
    waiting = {name: len(set(needs)) for name, needs in deps.items()}
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    for name, needs in deps.items():
        for need in set(needs):
            dependents[need].append(name)
    # A heap keyed on file position makes the order stable, not just valid.
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(deps)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(deps):
        raise ValueError("dependency cycle")
    return order


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a closed path ["a", "b", "a"], searched in `deps` order; None if acyclic."""
    done: set[str] = set()
    for start in deps:
        stack: list[str] = []
        cycle = _walk(start, deps, stack, done)
        if cycle is not None:
            return cycle
    return None


def _walk(
    name: str, deps: Mapping[str, Sequence[str]], stack: list[str], done: set[str]
) -> list[str] | None:
    if name in stack:
        return [*stack[stack.index(name) :], name]
    if name in done:
        return None
    stack.append(name)
    for need in deps.get(name, ()):
        cycle = _walk(need, deps, stack, done)
        if cycle is not None:
            return cycle
    stack.pop()
    done.add(name)
    return None
