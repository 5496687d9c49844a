"""Product fan-out: interested customers get derived price_dropped / back_in_stock events."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, cluster_main

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event
from cdp_triggers.records import Send
from flows.pipeline import engine_streams
from flows.sources import list_source
from operators.interest import ProductState, on_product_event
from operators.keyed import EngineRuntime
from state.profiles import DictProfileStore
from tests.engine_helpers import T0, cart, engine, ev, reachable


def update(at_min: float, product: str = "p1", **props) -> Event:
    return ev("product_updated", at_min, "catalogue", product_id=product, **props)


def view(at_min: float, customer: str, product: str = "p1") -> Event:
    return ev("product_viewed", at_min, customer, product_id=product, price=20.0)


def test_price_drop_reaches_customers_who_viewed_or_carted_in_the_last_14_days():
    st = ProductState("p1")
    assert on_product_event(st, update(0, price=20.0)) == []
    on_product_event(st, view(10, "c1"))
    on_product_event(st, cart(20, "p1", "c2"))
    on_product_event(st, view(-20 * 24 * 60, "c3"))  # three weeks earlier: too old
    out = on_product_event(st, update(60, price=15.0))
    assert [(e.type, e.customer_id, e.props) for e in out] == [
        ("price_dropped", "c1", {"product_id": "p1", "price": 15.0, "old_price": 20.0,
                                 "interest": "browse"}),
        ("price_dropped", "c2", {"product_id": "p1", "price": 15.0, "old_price": 20.0,
                                 "interest": "browse"})]
    assert on_product_event(st, update(70, price=18.0)) == []  # a rise tells nobody
    assert on_product_event(st, update(80, price=18.0)) == []  # an unchanged price neither


def test_a_wishlisted_product_says_so_within_the_window():
    st = ProductState("p1")
    on_product_event(st, update(0, price=20.0, in_stock=False))
    on_product_event(st, view(1, "c1"))
    on_product_event(st, Event("w1", "wishlist_added", "c2", T0 + 2 * 60_000,
                               {"product_id": "p1"}))
    on_product_event(st, Event("w0", "wishlist_added", "c3", T0 - 20 * 24 * 3_600_000,
                               {"product_id": "p1"}))  # wished three weeks ago: too old
    on_product_event(st, view(3, "c3"))
    drops = on_product_event(st, update(60, price=15.0, in_stock=True))
    kinds = {(e.type, e.customer_id): e.props["interest"] for e in drops}
    assert kinds == {("price_dropped", "c1"): "browse", ("price_dropped", "c2"): "wishlist",
                     ("price_dropped", "c3"): "browse", ("back_in_stock", "c1"): "browse",
                     ("back_in_stock", "c2"): "wishlist", ("back_in_stock", "c3"): "browse"}


def test_product_state_from_before_wishlists_restores() -> None:
    import pickle

    st = ProductState("p1", 10.0, True, {"c1": 5})
    old = pickle.dumps((ProductState, (), (None, {"product_id": "p1", "price": 10.0,
                                                   "in_stock": True, "interested": {"c1": 5},
                                                   "seen_price": {}, "updated_at": 0,
                                                   "stale": 0, "pruned_at": 0})))
    cls, _, state = pickle.loads(old)
    restored = cls.__new__(cls)
    restored.__setstate__(state)
    assert restored.wished == {} and restored.interested == st.interested


def test_back_in_stock_only_after_being_out_of_stock():
    st = ProductState("p1")
    on_product_event(st, view(0, "c1"))
    assert on_product_event(st, update(5, in_stock=True)) == []  # never out: no news
    assert on_product_event(st, update(10, in_stock=False)) == []
    [e] = on_product_event(st, update(20, in_stock=True))
    assert (e.type, e.customer_id, e.ts) == ("back_in_stock", "c1", T0 + 20 * 60_000)


def test_derived_event_ids_are_deterministic():
    v, u = view(0, "c1"), update(10, price=10.0)

    def run():
        st = ProductState("p1", price=20.0)
        on_product_event(st, v)
        return on_product_event(st, u)
    assert [e.event_id for e in run()] == [e.event_id for e in run()]
    assert run()[0].event_id != u.event_id


def test_interest_window_forgets_old_customers():
    st = ProductState("p1")
    on_product_event(st, view(0, "c1"))
    on_product_event(st, view(15 * 24 * 60, "c2"), window=14 * DAY)
    assert set(st.interested) == {"c2"}


def test_fan_out_across_two_bytewax_workers_reaches_the_customer_step():
    """The aligned source fans catalogue updates out to customers in event-time order;
    the customer step on two workers gets them."""
    customers = [f"c{i}" for i in range(12)]
    events = [update(0, "p1", price=50.0, in_stock=False), update(0, "p2", price=9.0)]
    events += [view(5 + i, c, "p1" if i % 3 else "p2") for i, c in enumerate(customers)]
    events += [update(60, "p1", price=40.0), update(61, "p1", in_stock=True),
               update(62, "p2", price=12.0)]
    store = DictProfileStore([reachable(c) for c in customers])
    runtime = EngineRuntime(engine(), lambda: store.get, mode="replay", horizon_ms=T0 + DAY)
    flow = Dataflow("fanout")
    records, _ = engine_streams(flow, list_source(events), runtime)
    got: list = []
    op.output("out", op.filter("only_sends", records, lambda r: isinstance(r, Send)),
              TestingSink(got))
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=2)
    p1_fans = {c for i, c in enumerate(customers) if i % 3}
    assert {s.customer_id for s in got if s.trigger_id == "price_drop"} == p1_fans
    assert {s.customer_id for s in got if s.trigger_id == "back_in_stock"} == p1_fans
    assert all(s.variables["product_id"] == "p1" for s in got)


def test_without_a_catalogue_price_the_price_the_customer_saw_is_the_reference():
    st = ProductState("p1")
    on_product_event(st, view(0, "c1"))  # saw 20.0
    on_product_event(st, ev("product_viewed", 1, "c2", product_id="p1", price=12.0))
    out = on_product_event(st, update(10, price=15.0))
    assert [(e.customer_id, e.props["old_price"]) for e in out] == [("c1", 20.0)]
    out = on_product_event(st, update(20, price=14.0))  # now the catalogue price counts
    assert [(e.customer_id, e.props["old_price"]) for e in out] == [("c1", 15.0),
                                                                   ("c2", 15.0)]


def test_a_stale_catalogue_record_read_late_makes_no_false_drop():
    st = ProductState("p1")
    on_product_event(st, view(0, "c1"))
    on_product_event(st, update(10, price=20.0))
    on_product_event(st, update(30, price=25.0))
    assert on_product_event(st, update(20, price=21.0)) == []  # older than the 25.0 record
    assert st.price == 25.0 and st.stale == 1


def _without_derived_triggers(tmp_path):
    """The shipped config less the four triggers started by derived events."""
    import shutil

    from config.loader import DEFAULT_CONFIG_DIR, load_config

    root = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for name in ("price_drop", "wishlist_price_drop", "back_in_stock", "wishlist_back_in_stock"):
        (root / "triggers" / f"{name}.yaml").unlink()
    return load_config(root)


def _timeless(reprs: list[str]) -> list[str]:
    """Records without decided_at, start misses as their last row per miss_id (a day's
    count is re-emitted as it grows: ClickHouse keeps the row with the highest count)."""
    import re

    out, misses = [], {}
    for r in reprs:
        r = re.sub(r"decided_at=\d+", "", r)
        if r.startswith("StartMiss("):
            m = re.match(r"StartMiss\(miss_id='(\w+)'.*count=(\d+)", r)
            misses[m[1]] = max(misses.get(m[1], (0, "")), (int(m[2]), r))
        else:
            out.append(r)
    return sorted(out + [r for _, r in misses.values()])


def test_the_config_says_whether_it_reads_the_derived_events(tmp_path):
    from config.loader import load_config
    from operators.interest import derives_events

    assert derives_events(load_config())
    cfg = _without_derived_triggers(tmp_path)
    assert not derives_events(cfg)
    assert cfg.names_event("added_to_cart") and not cfg.names_event("price_dropped")


def test_interest_is_not_tracked_when_nothing_reads_the_derived_events(tmp_path):
    """Without a trigger, segment or condition naming price_dropped/back_in_stock, the source
    skips the product interest state: every record is the same as when it tracks it (the
    derived events then reach customers and change nothing), the catalogue state holds no
    customer, and a run that tracks it does make derived events from the same input."""
    from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
    from flows.sources import AlignOptions, IteratorSource
    from operators.engine import Engine

    cfg = _without_derived_triggers(tmp_path)
    gen = SyntheticRetail(SyntheticConfig(customers=300, days=4, seed=11,
                                          price_change_rate=0.5, stockout_rate=0.3))
    store = DictProfileStore(gen.profiles())
    aligners = []

    def run(interest: bool) -> list[str]:
        src = IteratorSource(gen.events, opts=AlignOptions(interest=interest))
        build = src.build_part

        def spy(*a):
            part = build(*a)
            aligners.append(part.aligner)
            return part

        src.build_part = spy
        runtime = EngineRuntime(Engine(cfg), lambda: store.get, mode="replay",
                                horizon_ms=gen.end_ms)
        flow = Dataflow("interest")
        records, rejected = engine_streams(flow, src, runtime)
        got: list = []
        op.output("out", op.merge("all", records, rejected), TestingSink(got))
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=1)
        return sorted(repr(r) for r in got)

    tracked, skipped = run(True), run(False)
    assert len(tracked) > 1000 and any("Send(" in r for r in tracked)
    # the same records but for decided_at: in replay "now" is the time of the event that
    # woke the customer, and a derived event wakes it earlier (to decide the same)
    assert _timeless(skipped) == _timeless(tracked)
    assert sum(r.startswith("Send(") for r in skipped) > 20
    on, off = aligners
    assert on.stats.derived > 0 and off.stats.derived == 0
    assert any(p.interested for p in on.products.values())
    assert off.products and not any(p.interested for p in off.products.values())
