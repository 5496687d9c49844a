"""Bounded work per customer: one customer's flood (5,000 carts in an hour) keeps its state and
the work per event bounded by policy limits, and changes nothing for anyone else."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from cdp_triggers.clock import DAY, HOUR, MINUTE
from cdp_triggers.events import MAX_QUANTITY, Event
from cdp_triggers.records import INSTANCE_LIMIT, SENT, Lifecycle, Output
from config.loader import load_config
from operators import engine as engine_module
from operators.conditions import cart_total, customer_metric
from operators.engine import NOT_STARTED, Engine
from state.compact import EMPTY
from state.customer import CustomerState, Instance
from state.profiles import DictProfileStore
from tests.engine_helpers import (
    T0,
    cart,
    decisions,
    engine,
    ev,
    lifecycle,
    order,
    reachable,
    replay,
    trigger_semantics_dir,
)


def _flood(n: int, customer: str = "heavy") -> list[Event]:
    """``n`` carts (each a new cart and product, viewed first) within one hour."""
    out = []
    for i in range(n):
        at = i * 60 / n
        out += [ev("product_viewed", at, customer, product_id=f"f{i}", price=5.0),
                cart(at, product=f"f{i}", customer=customer, cart_id=f"k{i}")]
    return out


def _drive(eng: Engine, events: list[Event], monkeypatch: pytest.MonkeyPatch
           ) -> tuple[CustomerState, int, list[Output]]:
    """Replay one customer; also the most condition checks (``matches``) one event cost."""
    calls = [0]
    real = engine_module.matches

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "matches", counting)
    st, store, out, worst = CustomerState(events[0].customer_id), DictProfileStore(
        [reachable(events[0].customer_id)]), [], 0
    for e in events:
        before = calls[0]
        out += eng.handle(st, e, max(st.high_water, e.ts), store.get)
        worst = max(worst, calls[0] - before)
    return st, worst, out


def test_5000_carts_in_an_hour_keep_state_and_per_event_work_bounded(monkeypatch):
    eng = engine()
    policy = eng.config.policy
    small, small_worst, _ = _drive(eng, _flood(200, "small"), monkeypatch)
    st, worst, out = _drive(eng, _flood(5000), monkeypatch)
    live = [i.trigger_id for i in st.instances.values()]
    assert live.count("abandoned_cart") == policy.max_instances_per_trigger == 50
    assert len(st.cart) == policy.max_cart_lines == 500
    assert len(st.counts) <= policy.max_count_slots
    assert len(st.seen) <= policy.dedup_max_ids and len(st.exits) <= policy.max_exits
    # the work one event costs does not grow with the flood (unbounded, it was ~5,000)
    assert worst == small_worst < 64
    assert len(pickle.dumps(st, pickle.HIGHEST_PROTOCOL)) < 100_000  # was 1.1 MB
    # each refused cart is recorded once, whatever more happens to it
    refused = lifecycle(out, NOT_STARTED)
    assert len(refused) == 5000 - 50 == len({r.instance_key for r in refused})
    assert {(r.trigger_id, r.reason, r.instance_id) for r in refused} == {
        ("abandoned_cart", INSTANCE_LIMIT, "")}
    assert len(small.instances) <= len(st.instances)


def test_a_flood_changes_no_decision_for_other_customers():
    quiet = [e for c in ("c1", "c2", "c3") for e in (
        cart(5, customer=c, cart_id=f"{c}k"), cart(10, product="p2", customer=c,
                                                   cart_id=f"{c}k"))]
    quiet.append(order(30, customer="c2"))
    flood = _flood(5000)
    mixed = sorted(quiet + flood, key=lambda e: e.ts)
    store = DictProfileStore([reachable(c) for c in ("c1", "c2", "c3", "heavy")])
    alone = replay(engine(), quiet, T0 + 3 * DAY, store)
    together = [o for o in replay(engine(), mixed, T0 + 3 * DAY, store)
                if getattr(o, "customer_id", "") != "heavy"]

    def by_customer(out):  # each customer's records in order (the two inputs interleave
        return {c: [o for o in out if o.customer_id == c] for c in ("c1", "c2", "c3")}

    assert by_customer(together) == by_customer(alone)
    assert any(d.status == SENT for d in decisions(alone))


def _config(tmp_path: Path, policy: str) -> Path:
    """The shipped triggers under a neutral policy plus ``policy``."""
    import shutil

    root = tmp_path / "config"
    shutil.copytree(trigger_semantics_dir(), root)
    (root / "policy.yaml").write_text("late_event_grace: 0s\n" + textwrap.dedent(policy))
    return root


def test_a_refused_key_is_recorded_once_and_starts_once_there_is_room(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "max_instances_per_trigger: 2\n")))
    events = [cart(0, cart_id="k1"), cart(1, cart_id="k2"), cart(2, cart_id="k3"),
              cart(3, product="p2", cart_id="k3"), order(4)]
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    out = []
    for e in events:
        out += eng.handle(st, e, e.ts, store.get)
    assert [(r.instance_key, r.reason) for r in lifecycle(out, NOT_STARTED)] == [
        ("k3", INSTANCE_LIMIT)]  # once, though k3 had two events
    carts = [r for r in lifecycle(out, "started") if r.trigger_id == "abandoned_cart"]
    assert [r.instance_key for r in carts] == ["k1", "k2"]
    out = eng.handle(st, cart(5, cart_id="k3"), T0 + 5 * MINUTE, store.get)  # the order
    assert [r.instance_key for r in lifecycle(out, "started")] == ["k3"]  # freed two slots
    assert st.refused == {}


def test_cart_lines_past_the_limit_are_ignored_and_quantities_saturate(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "max_cart_lines: 2\n")))
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    for i, e in enumerate([cart(0, "p1", quantity=MAX_QUANTITY), cart(1, "p2"), cart(2, "p3"),
                           cart(3, "p1", quantity=MAX_QUANTITY)]):
        eng.handle(st, e, e.ts, store.get)
        assert len(st.cart) == min(i + 1, 2)
    assert sorted(st.cart) == ["p1", "p2"]
    assert st.cart["p1"]["quantity"] == MAX_QUANTITY
    assert customer_metric(st, "cart_items", T0) == MAX_QUANTITY + 1
    assert cart_total(st) == 10.0 * (MAX_QUANTITY + 1)


def test_count_slots_past_the_limit_forget_the_least_recently_counted(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "max_count_slots: 2\n")))
    st, store = CustomerState("c1"), DictProfileStore([reachable()])

    def view(at: float, product: str) -> list[Output]:
        e = ev("product_viewed", at, product_id=product)
        return eng.handle(st, e, e.ts, store.get)

    for at, product in [(0, "a"), (1, "b"), (2, "c")]:
        assert not lifecycle(view(at, product), "started")
    assert [k.split("\x1f")[1] for k in st.counts] == ["b", "c"]  # "a" was the oldest
    assert [r.instance_key for r in lifecycle(view(3, "c"), "started")] == ["c"]
    assert not lifecycle(view(4, "a"), "started")  # "a" was forgotten: counting anew
    assert [r.instance_key for r in lifecycle(view(5, "b"), "started")] == ["b"]
    assert [k.split("\x1f")[1] for k in st.counts] == ["a"]


def test_exits_remembered_are_capped(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "max_exits: 3\n")))
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    for i in range(10):
        e = order(i)
        eng.handle(st, e, e.ts, store.get)
    assert len(st.exits) == 3 and st.exits[-1].ts == T0 + 9 * MINUTE


def test_a_snapshot_from_before_the_new_fields_restores_with_their_defaults():
    st = CustomerState("c1", instances={"t\x1fk": Instance("t", "k", "i", "e", T0, T0,
                                                             T0 + HOUR)})
    del st.instances["t\x1fk"].held  # what a snapshot written before the field looks like
    del st.refused
    restored = pickle.loads(pickle.dumps(st, pickle.HIGHEST_PROTOCOL))
    assert restored.instances["t\x1fk"].held == "" and restored.refused == {}
    with pytest.raises(AttributeError):
        _ = restored.not_a_field


def test_refusals_are_lifecycle_records_with_a_stable_id(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "max_instances_per_trigger: 1\n")))
    events = [cart(0, cart_id="k1"), cart(1, cart_id="k2")]
    first = [o for o in replay(eng, events, T0 + HOUR) if isinstance(o, Lifecycle)]
    again = [o for o in replay(eng, events, T0 + HOUR) if isinstance(o, Lifecycle)]
    [r] = [o for o in first if o.action == NOT_STARTED]
    assert r in again and r.instance_key == "k2"


def test_a_lone_start_is_kept_as_an_int_and_an_older_one_tuple_counts_the_same(tmp_path):
    """Count slots hold one start as the int itself (half the memory of a 1-tuple); a
    snapshot from before, with 1-tuples, goes on counting the same."""
    eng = Engine(load_config(_config(tmp_path, "")))
    store = DictProfileStore([reachable()])
    first, second = (ev("product_viewed", at, product_id="a") for at in (0, 1))
    runs = []
    for older in (False, True):
        st = CustomerState("c1")
        eng.handle(st, first, first.ts, store.get)
        (slot, start), = st.counts.items()
        assert type(start) is int
        if older:
            st.counts[slot] = (start,)
        runs.append([repr(r) for r in eng.handle(st, second, second.ts, store.get)])
    assert runs[0] == runs[1] and any("started" in r for r in runs[0])


def test_count_slots_out_of_every_window_go_at_the_hourly_sweep_and_decide_the_same(tmp_path):
    """A slot whose latest start is older than every count's window can count nothing
    again: the hourly sweep forgets it (about half of a customer's slots in a replay), and
    the same views decide the same as with the slot kept."""
    eng = Engine(load_config(_config(tmp_path, "")))
    store = DictProfileStore([reachable()])
    views = [ev("product_viewed", at, product_id=p)
             for at, p in [(0, "a"), (10, "b"), (130, "c"), (131, "a"), (132, "a")]]
    runs = []
    for keep in (False, True):
        st, out = CustomerState("c1"), []
        for e in views:
            if keep:  # the same state, the sweep kept from running: "pruned" at this event
                st.pruned_at = e.ts
            out += [repr(r) for r in eng.handle(st, e, e.ts, store.get)]
        runs.append(out)
        slots = sorted(k.split("\x1f")[1] for k in st.counts)
        assert slots == (["b", "c"] if keep else ["c"])  # "a" started: not a slot now
    assert runs[0] == runs[1] and any("started" in r for r in runs[0])


def test_maps_and_lists_emptied_again_go_back_to_the_shared_defaults(tmp_path):
    """Instances, start misses, count slots, touches and the cap log a customer no longer
    holds are the shared empty defaults again (``EMPTY`` / ``()``), not an empty dict or
    list of their own (~180 B a customer in a replay), and read and restore as empty."""
    eng = Engine(load_config(_config(tmp_path, "")))
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    fresh = CustomerState("c2")
    assert all(getattr(fresh, f) is EMPTY for f in ("instances", "counts", "misses",
                                                     "last_entry", "sched"))
    assert fresh.touches == () and fresh.sent_log == ()
    events = [ev("product_viewed", 0, product_id="a"), cart(1),
              ev("app_opened", 3 * DAY / MINUTE)]  # (no trigger reads it: a later event)
    for e in events:
        eng.handle(st, e, e.ts, store.get)
    assert st.counts is EMPTY  # out of every count's window at the hourly sweep
    assert st.instances is EMPTY  # the cart's reminders were done by then
    assert st.misses is EMPTY  # the view's miss: its day is over
    back = CustomerState.from_bytes(st.to_bytes())
    assert back.instances is EMPTY and back.misses is EMPTY and back.counts is EMPTY


def test_a_remembered_exit_keeps_what_a_cancel_reads_and_not_where_it_was_read(tmp_path):
    eng = Engine(load_config(_config(tmp_path, "")))
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    o = order(0)
    read = Event(o.event_id, o.type, "".join(["c", "1"]), o.ts, o.props, "orders:3:1234")
    eng.handle(st, read, read.ts, store.get)
    [x] = st.exits
    assert (x.event_id, x.type, x.ts, x.props, x.source) == (o.event_id, o.type, o.ts,
                                                             o.props, "")
    assert x.customer_id is st.customer_id  # one string per customer, not one per exit
