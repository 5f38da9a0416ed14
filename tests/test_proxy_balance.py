"""Balancing strategies, tested as pure functions on plain candidates."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from config.model import Balance
from proxy.balance import HashStrategy, LeastConn, RoundRobin, Strategy, strategy_for


@dataclass(eq=False)
class Cand:
    key: str
    weight: int = 1
    in_flight: int = 0


def picks(
    strategy: Strategy, cands: tuple[Cand, ...], n: int, key: str | None = None
) -> Counter[str]:
    strategy.reset(cands)
    return Counter(strategy.pick(cands, key).key for _ in range(n))


def test_round_robin_cycles_evenly() -> None:
    cands = (Cand("a"), Cand("b"), Cand("c"))
    rr = RoundRobin()
    rr.reset(cands)
    assert [rr.pick(cands).key for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_smooth_weighted_round_robin_interleaves() -> None:
    # nginx's example: weights 5, 1, 1 → a a b a c a a (not five a's in a row).
    cands = (Cand("a", 5), Cand("b", 1), Cand("c", 1))
    rr = RoundRobin()
    rr.reset(cands)
    assert "".join(rr.pick(cands).key for _ in range(7)) == "aabacaa"
    assert picks(RoundRobin(), cands, 700) == {"a": 500, "b": 100, "c": 100}


def test_round_robin_restarts_on_membership_change() -> None:
    rr = RoundRobin()
    two = (Cand("a"), Cand("b"))
    rr.reset(two)
    rr.pick(two)
    three = (*two, Cand("c"))
    rr.reset(three)
    assert [rr.pick(three).key for _ in range(3)] == ["a", "b", "c"]


@pytest.mark.parametrize("balance", [Balance.RANDOM, Balance.P2C])
def test_random_and_p2c_follow_weights(balance: Balance) -> None:
    cands = (Cand("a", 3), Cand("b", 1))
    got = picks(strategy_for(balance, random.Random(7)), cands, 8000)
    assert 0.70 < got["a"] / 8000 < 0.80  # 3:1 → 75 %


@pytest.mark.parametrize("balance", [Balance.RANDOM, Balance.P2C, Balance.LEAST_CONN])
def test_uniform_strategies_spread_evenly(balance: Balance) -> None:
    cands = (Cand("a"), Cand("b"), Cand("c"), Cand("d"))
    got = picks(strategy_for(balance, random.Random(3)), cands, 8000)
    assert set(got) == {"a", "b", "c", "d"}
    assert all(1700 < n < 2300 for n in got.values()), got


def test_least_conn_prefers_idle_weighted() -> None:
    a, b, c = Cand("a", in_flight=4), Cand("b", in_flight=1), Cand("c", weight=4, in_flight=3)
    lc = LeastConn()
    lc.reset((a, b, c))
    # loads: a 4/1, b 1/1, c 3/4 → c
    assert lc.pick((a, b, c)) is c


def test_least_conn_balances_concurrent_load() -> None:
    cands = (Cand("a"), Cand("b"), Cand("c"))
    lc = LeastConn()
    lc.reset(cands)
    for _ in range(30):  # requests that never finish: in-flight counts must even out
        lc.pick(cands).in_flight += 1
    assert [c.in_flight for c in cands] == [10, 10, 10]


def test_p2c_avoids_the_loaded_backend() -> None:
    cands = (Cand("a", in_flight=50), Cand("b"), Cand("c"))
    got = picks(strategy_for(Balance.P2C, random.Random(1)), cands, 3000)
    # "a" only wins when drawn twice (1/9), and then p2c redraws once.
    assert got["a"] < 3000 * 0.05


def test_hash_is_stable_and_spreads() -> None:
    cands = tuple(Cand(f"web.{i}") for i in range(4))
    h = HashStrategy()
    h.reset(cands)
    first = {f"10.0.0.{i}": h.pick(cands, f"10.0.0.{i}").key for i in range(400)}
    again = {k: h.pick(cands, k).key for k in first}
    assert first == again
    assert HashStrategy().pick(cands, "10.0.0.7").key == first["10.0.0.7"]  # no hidden state
    spread = Counter(first.values())
    assert all(60 < n < 140 for n in spread.values()), spread


def test_hash_remaps_only_the_removed_backends_keys() -> None:
    cands = tuple(Cand(f"web.{i}") for i in range(5))
    h = HashStrategy()
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: h.pick(cands, k).key for k in keys}
    fewer = tuple(c for c in cands if c.key != "web.2")
    after = {k: h.pick(fewer, k).key for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "web.2" for k in moved)  # only the removed backend's keys moved
    assert len(moved) == sum(1 for v in before.values() if v == "web.2")
    # Adding a backend takes about its share (1/6) and nothing else moves.
    more = (*cands, Cand("web.5"))
    grown = {k: h.pick(more, k).key for k in keys}
    changed = [k for k in keys if grown[k] != before[k]]
    assert all(grown[k] == "web.5" for k in changed)
    assert 2000 / 6 * 0.7 < len(changed) < 2000 / 6 * 1.3


def test_hash_respects_weights() -> None:
    cands = (Cand("a", 3), Cand("b", 1))
    got = Counter(HashStrategy().pick(cands, f"k{i}").key for i in range(8000))
    assert 0.70 < got["a"] / 8000 < 0.80


def test_hash_without_key_falls_back_to_weighted_random() -> None:
    cands = (Cand("a"), Cand("b"))
    got = picks(HashStrategy(random.Random(5)), cands, 2000, key=None)
    assert set(got) == {"a", "b"}


@pytest.mark.parametrize("balance", list(Balance))
def test_pick_other_chooses_only_from_the_filtered_tuple(balance: Balance) -> None:
    cands = (Cand("a"), Cand("b"), Cand("c"))
    s = strategy_for(balance, random.Random(2))
    s.reset(cands)
    rest = cands[1:]
    assert {s.pick_other(rest, "k").key for _ in range(200)} <= {"b", "c"}
