"""Idle customers are compacted (live runs) without changing any decision."""

from __future__ import annotations

import pickle
import time
import zlib

from bytewax.testing import run_main

from cdp_triggers.events import Event
from cdp_triggers.records import Decision, Send
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from flows.app import build_run
from operators.keyed import CustomerLogic, EngineRuntime
from state.customer import CustomerState
from tests.engine_helpers import cart, engine, order, reachable


def slowly(gen: SyntheticRetail):
    """The generator's events spread over a few seconds of wall time, so idle customers
    have time to fall asleep while others are still read."""
    def events():
        for i, raw in enumerate(gen.events()):
            if i % 100 == 0:
                time.sleep(0.04)
            yield raw
    return events


def live_run(gen: SyntheticRetail, ttl: int | None) -> tuple[set, set]:
    s = Settings(clock="live", idle_ttl_ms=ttl, kafka_batch_size=100)
    run = build_run(s, "generator", generator=slowly(gen), profiles="memory",
                    generated=gen.profiles(), outputs="memory")
    run_main(run.flow)
    records = run.captured or []
    return ({r.send_id for r in records if isinstance(r, Send)},
            {r.decision_id for r in records if isinstance(r, Decision)})


def test_dormant_customers_decide_exactly_like_resident_ones(monkeypatch):
    """A backlog read by the live flow: with every customer put to sleep as soon as it is
    idle (1 ms), the sends and decisions are those of a run that keeps everyone resident."""
    gen = SyntheticRetail(SyntheticConfig(customers=300, days=3, seed=41))
    resident = live_run(gen, None)
    slept = []
    hibernate = CustomerLogic._hibernate

    def counted(self, out):
        slept.append(self.state.customer_id)
        return hibernate(self, out)

    monkeypatch.setattr(CustomerLogic, "_hibernate", counted)
    dormant = live_run(gen, 1)
    assert len(set(slept)) > 100  # most customers really went to sleep (some several times)
    assert resident[0] and dormant == resident


class _Wall:
    def __init__(self) -> None:
        self.t = 1_000

    def now_ms(self) -> int:
        return self.t


def test_a_dormant_customer_is_compressed_woken_by_its_timer_and_evicted_when_empty():
    wall = _Wall()
    eng = engine()
    rt = EngineRuntime(eng, lambda: (lambda cid: None), mode="live", clock=wall,
                       idle_ttl_ms=10)
    logic = CustomerLogic(rt, None)
    logic.on_batch([cart(0, customer="c1")])
    st = logic.state
    assert st is not None and st.instances
    size = len(pickle.dumps(st))
    wall.t += 10
    logic.on_notify()  # idle: goes dormant, its cart timer still pending
    assert logic.state is None and logic.dormant is not None
    wake, blob = logic.dormant
    assert wake == eng.next_wakeup(pickle.loads(zlib.decompress(blob)))
    assert len(blob) < size
    snap = logic.snapshot()
    assert snap == logic.dormant and rt.builder(snap).dormant == snap  # survives recovery
    logic.on_batch([order(30, customer="c1")])  # an event wakes it
    assert logic.state is not None and logic.dormant is None


def test_a_customer_keeps_no_profile_of_its_own_between_activations():
    """The profile read in an activation serves that activation (its events and timers);
    afterwards only the state's own copy remains (its last profile, for zones and while
    Redis is down), and a dormant customer holds none."""
    wall = _Wall()
    reads: list[str] = []

    def lookup(cid: str):
        reads.append(cid)
        return reachable(cid)

    rt = EngineRuntime(engine(), lambda: lookup, mode="live", clock=wall, idle_ttl_ms=10)
    logic = CustomerLogic(rt, None)
    logic.on_batch([cart(0, customer="c1")])
    assert reads and logic._read is None
    wall.t += 10
    logic.on_notify()  # idle: goes dormant
    assert logic.dormant is not None and logic._read is None


def test_customers_read_from_one_partition_share_its_name():
    """A live customer remembers where its latest event was read (for going dormant at a
    safe time); the customers of a partition hold one string for it, not a copy each."""
    rt = EngineRuntime(engine(), lambda: (lambda cid: None), mode="live", clock=_Wall(),
                       idle_ttl_ms=10)
    held = []
    for i, cid in enumerate(("c1", "c2")):
        e = cart(0, customer=cid)
        logic = CustomerLogic(rt, None)
        logic.on_batch([Event(e.event_id, e.type, e.customer_id, e.ts, e.props,
                              "clickstream:1:" + str(40 + i))])
        held.append(logic.partition)
    assert held[0] == "clickstream:1" and held[0] is held[1]


def test_an_empty_state_is_discarded():
    rt = EngineRuntime(engine(), lambda: (lambda cid: None), mode="live", clock=_Wall(),
                       idle_ttl_ms=0)
    logic = CustomerLogic(rt, CustomerState("c9"))
    _, discard = logic.on_notify()
    assert discard is True
