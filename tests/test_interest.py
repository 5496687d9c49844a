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
