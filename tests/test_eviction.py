"""Idle customers are compacted (live runs) without changing any decision."""

from __future__ import annotations

import pickle
import threading
import time
import zlib

from bytewax.testing import cluster_main, run_main

from cdp_triggers.clock import DAY, ManualClock, WatermarkClock
from cdp_triggers.events import Event
from cdp_triggers.records import Decision, InputSeen, Lifecycle, Send
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from flows.app import build_run
from operators.keyed import EXPIRY_SLACK_MS, CustomerLogic, EngineRuntime
from state.customer import CustomerState
from tests.engine_helpers import T0, cart, engine, ev, order, reachable
from tests.services import free_port


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


def cluster_run(gen: SyntheticRetail, ttl: int | None, processes: int = 2) -> tuple[set, set]:
    """``live_run`` as a cluster of ``processes`` (one worker each, in threads of this
    one): the generator is one partition, read by one of them; the others' customers are
    read elsewhere and their events come in bundles."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    s = Settings(clock="live", idle_ttl_ms=ttl, kafka_batch_size=100)
    runs = [build_run(s, "generator", generator=slowly(gen), profiles="memory",
                      generated=gen.profiles(), outputs="memory")
            for _ in range(processes)]
    threads = [threading.Thread(target=cluster_main, args=(r.flow, addresses, i),
                                kwargs={"worker_count_per_proc": 1})
               for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    records = [r for run in runs for r in run.captured or []]
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


class _Reached(_Wall):
    """A live clock whose marks (every shard's) have reached this worker up to now."""

    def reached_here(self) -> int:
        return self.t


def _read_from(e: Event, partition: str = "clickstream:0") -> Event:
    return Event(e.event_id, e.type, e.customer_id, e.ts, e.props, f"{partition}:7")


def test_a_customer_seen_once_is_woken_when_time_alone_empties_it_and_discarded():
    """A browse and nothing more: no timer, so the customer was kept dormant for good. It
    is now woken once all it holds has expired (the dedupe window, its count slot, its day
    of start misses) and discarded. A customer who holds something for good (a consent)
    gets no such wake."""
    clock = _Reached()
    clock.t = T0
    rt = EngineRuntime(engine(), lambda: (lambda cid: None), mode="live", clock=clock,
                       idle_ttl_ms=10, prefetch=lambda _ids, _sure: None)
    once = CustomerLogic(rt, None)
    once.on_batch([_read_from(ev("product_viewed", 0, "c1", product_id="p1", price=10.0))])
    kept = CustomerLogic(rt, None)
    kept.on_batch([_read_from(ev("consent_changed", 0, "c2", channel="sms",
                                 category="marketing", granted=False))])
    clock.t += 10
    once.on_notify()  # idle: dormant
    kept.on_notify()
    assert kept.dormant is not None and kept.dormant[0] is None  # kept until its next event
    wake = once.dormant[0]
    assert wake is not None and wake > T0 + 3 * DAY  # the dedupe window (3 days) first
    assert "c1" not in rt.timers  # no profile is read ahead for it: it decides nothing
    clock.t = wake - 1
    assert once.on_notify() == ([], False) and once.dormant is not None
    clock.t = wake
    _, discard = once.on_notify()
    assert discard is True and once.state is None and "c1" not in rt.timers


def test_an_empty_state_is_discarded():
    rt = EngineRuntime(engine(), lambda: (lambda cid: None), mode="live", clock=_Wall(),
                       idle_ttl_ms=0)
    logic = CustomerLogic(rt, CustomerState("c9"))
    _, discard = logic.on_notify()
    assert discard is True


def test_marks_followed_a_dormant_customer_is_pruned_at_what_reached_its_worker():
    """Marks followed (every live run), a customer going dormant is pruned one idle time
    before the time its worker's timers fire by (the lowest mark of every shard that
    reached it, behind the events it covers), not by the source's published watermark,
    which runs ahead past an event still on its way (the second view, 1 h - 50 ms after
    the first, needs the first's count slot). A one-off browser is woken an idle time and
    a second after all it holds expires, once the marks have passed that, and discarded;
    one that went dormant before any mark reached its worker gets no wake."""
    hour, idle = 3_600_000, 60_000
    first = _read_from(ev("product_viewed", 0, "c1", product_id="p1", price=10.0))
    late_view = ev("product_viewed", 0, "c1", product_id="p1", price=10.0)
    second = _read_from(Event(late_view.event_id, late_view.type, "c1",
                              T0 + hour - 50, late_view.props))

    def clocked(shipped: bool = True) -> tuple[ManualClock, WatermarkClock, EngineRuntime]:
        wall = ManualClock(T0)
        clock = WatermarkClock(wall)
        clock.claim("s0")
        clock.follow_marks(["s0"])
        rt = EngineRuntime(engine(shipped_policy=shipped),
                           (lambda: reachable) if shipped else (lambda: lambda cid: None),
                           mode="live", clock=clock, idle_ttl_ms=idle)
        return wall, clock, rt

    pruned_at: list[int] = []

    def run(ttl: int | None) -> list:
        wall, clock, rt = clocked()
        rt.idle_ttl_ms = ttl
        prune = rt.engine.prune
        rt.engine.prune = lambda st, safe, **kw: pruned_at.append(safe) or prune(st, safe, **kw)
        logic = CustomerLogic(rt, None)
        clock.tick((("s0", T0 - 1),))
        out, _ = logic.on_batch([first])
        wall.set(T0 + hour + 500)
        clock.publish("s0", T0 + hour + 400)  # released ``second``: on its way ...
        clock.tick((("s0", T0 + hour - 2_000),))  # ... behind this worker's last mark
        out += logic.on_notify()[0]  # idle for an hour: goes dormant (when it may)
        assert (logic.dormant is not None) == (ttl is not None)
        out += logic.on_batch([second])[0]  # ``second`` reaches its customer
        return [r for r in out if not isinstance(r, InputSeen)]

    resident, dormant = run(None), run(idle)
    assert any(isinstance(r, Lifecycle) and r.action == "started" for r in resident)
    assert dormant == resident
    assert T0 + hour - 2_000 - idle in pruned_at  # one idle time before the mark

    wall, clock, rt = clocked(shipped=False)
    clock.publish("s0", T0 + 10 * DAY)  # (the source ran far ahead: the marks decide)
    early = CustomerLogic(rt, None)
    early.on_batch([first])
    wall.advance(idle)
    early.on_notify()  # no mark has reached this worker yet: nothing known, no wake
    assert early.dormant is not None and early.dormant[0] is None
    clock.tick((("s0", T0 - 1),))
    browser = CustomerLogic(rt, None)
    browser.on_batch([first])
    wall.advance(idle)
    clock.tick((("s0", wall.now_ms() - 2_000),))
    browser.on_notify()
    wake = browser.dormant[0]
    expiry = T0 + 3 * DAY  # the dedupe window outlasts the rest
    assert wake is not None and expiry + idle < wake <= expiry + idle + 2 * EXPIRY_SLACK_MS
    clock.tick((("s0", wake - 1),))
    wall.set(wake + 2_000)
    assert browser.on_notify() == ([], False) and browser.dormant is not None  # not yet
    clock.tick((("s0", wake),))
    assert browser.on_notify()[1] is True and browser.dormant is None  # discarded


def test_dormant_customers_read_in_another_process_decide_like_resident_ones(monkeypatch):
    """Two processes, the input read by one: the other's customers go dormant pruned at
    the marks that reached them from there, and the sends and decisions are those of the
    same cluster keeping everyone resident, which are those of one process (the second
    one's timers follow the marks the first one sends)."""
    gen = SyntheticRetail(SyntheticConfig(customers=300, days=3, seed=43))
    resident = cluster_run(gen, None)
    assert resident == live_run(gen, None)
    told = []
    hibernate = CustomerLogic._hibernate

    def counted(self, out):
        reached = self.rt.clock.reached_here()
        told.append(reached is not None
                    and reached - self.rt.idle_ttl_ms > self.state.high_water)
        return hibernate(self, out)

    monkeypatch.setattr(CustomerLogic, "_hibernate", counted)
    dormant = cluster_run(gen, 1)
    assert sum(told) > 20  # pruned past their own last event, at the marks that came
    assert resident[0] and dormant == resident


def test_a_cluster_process_fires_no_timer_of_a_customer_read_elsewhere_before_hearing_from_there():
    """A cluster restarts after an outage: this process has caught up on its own input,
    the one reading the customer's input has not. The customer's reminder, due an hour
    ago by the wall, waits until marks from that shard past it have reached this worker
    (its cancel could be in the backlog)."""
    wall = ManualClock(T0)
    clock = WatermarkClock(wall)
    clock.claim("s0")
    clock.follow_marks(["s0", "s1"])
    eng = engine()
    st = CustomerState("c1")
    eng.handle(st, cart(0, customer="c1"), T0, reachable)
    rt = EngineRuntime(eng, lambda: reachable, mode="live", clock=clock, idle_ttl_ms=None)
    logic = rt.builder(st.to_bytes())  # resumed from its snapshot
    due = eng.next_wakeup(logic.state)
    wall.advance(due - T0 + 3_600_000)
    clock.publish("s0", wall.now_ms() - 1_000)  # this process has caught up
    clock.tick((("s0", wall.now_ms() - 1_000),))

    def sent() -> list[Send]:
        return [r for r in logic.on_notify()[0] if isinstance(r, Send)]

    assert not sent()  # s1's process has said nothing yet
    clock.tick((("s1", due - 60_000),))
    assert not sent()  # it is still reading its backlog, before the reminder's time
    clock.tick((("s1", wall.now_ms() - 1_000),))
    assert sent()
