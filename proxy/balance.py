"""Balancing strategies: pick one backend from the eligible ones.

Strategies see only `key`, `weight` and `in_flight` of each candidate, so they are unit-tested
with plain objects. The pool passes the same tuple object for as long as membership is unchanged,
which lets a strategy cache per-membership work (cumulative weights, smooth-RR state); a retry
passes a filtered tuple and gets a stateless pick.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from config.model import Balance

_MASK = (1 << 64) - 1


class Candidate(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Strategy:
    """Base: weighted random. `reset` is called with the eligible tuple whenever it changes."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._cum: list[int] = []
        self._uniform = True

    def reset(self, cands: Sequence[Candidate]) -> None:
        """Membership changed: `cands` is what `pick` will be given until the next reset."""
        self._cum = _cumulative(cands)
        self._uniform = len({c.weight for c in cands}) <= 1

    def _weighted(self, cands: Sequence[C]) -> C:
        if self._uniform:
            return cands[self._rng.randrange(len(cands))]
        return cands[bisect.bisect_right(self._cum, self._rng.randrange(self._cum[-1]))]

    def pick(self, cands: Sequence[C], key: str | None = None) -> C:
        """One of `cands`, the tuple last given to `reset`; `key` is the request's hash key."""
        return self._weighted(cands)

    def pick_other(self, cands: Sequence[C], key: str | None = None) -> C:
        """One of a filtered tuple (a retry); must not disturb the state `pick` relies on."""
        cum = _cumulative(cands)
        return cands[bisect.bisect_right(cum, self._rng.randrange(cum[-1]))]


def _cumulative(cands: Sequence[Candidate]) -> list[int]:
    total = 0
    out = []
    for c in cands:
        total += c.weight
        out.append(total)
    return out


class RandomStrategy(Strategy):
    """Weighted random."""


class RoundRobin(Strategy):
    """Smooth weighted round-robin (nginx): weights 5,1,1 give a a b a c a a, not a a a a a b c."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._current: list[int] = []
        self._total = 0
        self._next = 0

    def reset(self, cands: Sequence[Candidate]) -> None:
        super().reset(cands)
        self._current = [0] * len(cands)
        self._total = sum(c.weight for c in cands)
        self._next = 0

    def pick(self, cands: Sequence[C], key: str | None = None) -> C:
        if self._uniform:
            i = self._next % len(cands)
            self._next = i + 1
            return cands[i]
        current = self._current
        best = 0
        for i, c in enumerate(cands):
            current[i] += c.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return cands[best]


class LeastConn(Strategy):
    """Fewest in-flight requests per unit of weight; ties rotate so idle backends share."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._start = 0

    def pick(self, cands: Sequence[C], key: str | None = None) -> C:
        n = len(cands)
        self._start = start = (self._start + 1) % n
        best = cands[start]
        best_load = best.in_flight / best.weight
        for j in range(1, n):
            c = cands[(start + j) % n]
            load = c.in_flight / c.weight
            if load < best_load:
                best, best_load = c, load
        return best

    pick_other = pick


class PowerOfTwo(Strategy):
    """Power of two choices: two weighted-random candidates, the less loaded one wins."""

    def pick(self, cands: Sequence[C], key: str | None = None) -> C:
        if len(cands) == 1:
            return cands[0]
        a = self._weighted(cands)
        b = self._weighted(cands)
        if b is a:
            b = self._weighted(cands)
        return b if b.in_flight / b.weight < a.in_flight / a.weight else a

    def pick_other(self, cands: Sequence[C], key: str | None = None) -> C:
        a = super().pick_other(cands)
        b = super().pick_other(cands)
        return b if b.in_flight / b.weight < a.in_flight / a.weight else a


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    # splitmix64 finaliser: spreads (key hash ^ node hash) over 64 bits.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class HashStrategy(Strategy):
    """Weighted rendezvous (highest random weight) hashing.

    Every backend scores each key; the highest score wins. Removing a backend moves only the
    keys it owned, adding one takes only its weighted share: the consistency a hash ring gives,
    without virtual nodes. A request without a key gets a weighted-random pick.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._node_hash: dict[str, int] = {}

    def pick(self, cands: Sequence[C], key: str | None = None) -> C:
        if key is None or len(cands) == 1:
            return self._weighted(cands)
        return self._rendezvous(cands, key)

    def pick_other(self, cands: Sequence[C], key: str | None = None) -> C:
        if key is None or len(cands) == 1:
            return super().pick_other(cands)
        return self._rendezvous(cands, key)

    def _rendezvous(self, cands: Sequence[C], key: str) -> C:
        kh = _hash64(key)
        best = cands[0]
        best_score = -1.0
        for c in cands:
            nh = self._node_hash.get(c.key)
            if nh is None:
                if len(self._node_hash) > 4096:
                    self._node_hash.clear()
                nh = self._node_hash[c.key] = _hash64(c.key)
            u = (_mix(kh ^ nh) + 1) / (_MASK + 2)  # in (0, 1)
            score = c.weight / -math.log(u)
            if score > best_score:
                best, best_score = c, score
        return best


def strategy_for(balance: Balance, rng: random.Random | None = None) -> Strategy:
    """A fresh strategy object for `balance`."""
    match balance:
        case Balance.ROUND_ROBIN:
            return RoundRobin(rng)
        case Balance.LEAST_CONN:
            return LeastConn(rng)
        case Balance.P2C:
            return PowerOfTwo(rng)
        case Balance.RANDOM:
            return RandomStrategy(rng)
        case Balance.HASH:
            return HashStrategy(rng)
    raise ValueError(f"unknown balance {balance!r}")
