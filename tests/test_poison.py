"""Poison pills: no accepted event may crash the engine, its snapshot or a sink later.

The parser refuses what a sink or a snapshot cannot hold (tests/test_events.py); here the
events at the very limits go all the way: engine, snapshot pickle, ClickHouse rows.
"""

from __future__ import annotations

import math
import pickle

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp_triggers import events as E
from cdp_triggers.clock import DAY, MINUTE
from cdp_triggers.events import Event, Rejected, parse_event, processing_error
from cdp_triggers.records import Conversion, Send
from operators.engine import Engine
from sinks.clickhouse import ensure_schema, open_backend
from sinks.clickhouse_schema import rows_for
from state.customer import CustomerState
from state.profiles import DictProfileStore
from tests.engine_helpers import T0, engine, reachable


def wire(type_: str, props: dict, at_min: float = 0, event_id: str = "") -> bytes:
    return orjson.dumps({"event_id": event_id or f"{type_}-{at_min}", "type": type_,
                         "customer_id": "c1", "ts": T0 + int(at_min * MINUTE),
                         "props": props})


def accepted(raw: bytes) -> Event:
    e = parse_event(raw, "poison")
    assert isinstance(e, Event), e
    return e


def run(eng: Engine, events: list[Event], horizon: int) -> tuple[CustomerState, list]:
    state, store, out = CustomerState("c1"), DictProfileStore([reachable()]), []
    for e in events:
        out += eng.handle(state, e, max(state.high_water, e.ts), store.get)
        state = pickle.loads(pickle.dumps(state, pickle.HIGHEST_PROTOCOL))  # as on a restart
    out += eng.handle(state, None, horizon, store.get)
    return state, out


def test_the_reported_poison_pills_are_dead_letters_now():
    deep = (b'{"event_id":"d","type":"custom","customer_id":"c1","ts":1795428000000,"props":'
            + b'{"a":' * 600 + b"1" + b"}" * 601)
    cases = {
        "revenue over Decimal(18, 4)": (wire("order_placed", {
            "order_id": "o", "total": 1e15, "currency": "EUR"}), E.VALUE_OUT_OF_RANGE),
        "snapshot pickle recursion": (deep, E.TOO_DEEP),
        "cart quantities past 2^64": (wire("added_to_cart", {
            "product_id": "p", "quantity": 2**64 - 1}), E.VALUE_OUT_OF_RANGE),
        "cart_total null": (wire("added_to_cart", {"product_id": "p", "price": 1e308}),
                            E.VALUE_OUT_OF_RANGE),
    }
    for name, (raw, reason) in cases.items():
        r = parse_event(raw, "poison")
        assert isinstance(r, Rejected) and r.reason == reason, name


def test_values_at_the_limits_go_through_engine_snapshot_and_clickhouse(chdb_url):
    lines = [accepted(wire("added_to_cart", {"product_id": f"p{i}", "cart_id": "k",
                                             "price": E.MAX_MONEY, "quantity": E.MAX_QUANTITY},
                           at_min=i / 100)) for i in range(3)]
    deep: dict = {"x": "y" * E.MAX_STRING_CHARS}  # props.meta.n….x: MAX_DEPTH levels
    for _ in range(E.MAX_DEPTH - 2):
        deep = {"n": deep}
    extra = accepted(wire("added_to_cart", {"product_id": "p0", "cart_id": "k", "quantity": 1,
                                            "meta": deep, "tags": ["t"] * E.MAX_LIST_ITEMS},
                          at_min=0.5))
    _, out = run(engine(), [*lines, extra], T0 + 2 * DAY)
    sends = [o for o in out if isinstance(o, Send) and "cart_total" in o.variables]
    assert sends and all(math.isfinite(s.variables["cart_total"]) for s in sends)
    order = accepted(wire("order_placed", {
        "order_id": "o1", "total": E.MAX_MONEY, "currency": "EUR",
        "items": [{"product_id": "p0", "quantity": E.MAX_QUANTITY, "price": E.MAX_MONEY}]},
        at_min=2 * 24 * 60 + 1))
    state, out2 = run(engine(), [*lines, extra, order], T0 + 3 * DAY)
    assert state.total_spent == E.MAX_MONEY
    [conv] = [o for o in out2 if isinstance(o, Conversion)]
    assert conv.revenue == E.MAX_MONEY
    failed = processing_error(extra, ZeroDivisionError("division by zero"))

    db = open_backend(chdb_url)
    try:
        ensure_schema(db, "poison")
        for record in (conv, failed, *sends):
            table, row = rows_for(record)
            db.insert_json_rows(f"poison.{table}", [row])
        assert db.query_rows("SELECT toString(revenue) FROM poison.conversions") == [
            ("1000000000000",)]
        assert db.query_rows("SELECT reason, event_id FROM poison.rejected_events") == [
            (E.PROCESSING_ERROR, extra.event_id)]
    finally:
        db.close()


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=5),
                           max_leaves=30)
numbers = st.integers(-5, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | (
    st.sampled_from([0, 1, E.MAX_MONEY, E.MAX_QUANTITY, E.MAX_QUANTITY + 1, 1e300]))
product = st.fixed_dictionaries(
    {"product_id": st.sampled_from(["p1", "p2", "p3"])},
    optional={"cart_id": st.sampled_from(["k1", "k2"]), "price": numbers,
              "quantity": numbers, "extra": json_values})
shaped = st.one_of(
    st.tuples(st.sampled_from(["product_viewed", "added_to_cart", "removed_from_cart",
                               "product_updated"]), product),
    st.tuples(st.just("order_placed"), st.fixed_dictionaries(
        {"order_id": st.sampled_from(["o1", "o2"]), "total": numbers,
         "currency": st.just("EUR"), "items": st.lists(product, max_size=3)})),
    st.tuples(st.sampled_from(["checkout_started", "segment_entered", "signed_up"]),
              st.dictionaries(st.text(max_size=6), json_values, max_size=5)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(shaped, min_size=1, max_size=12))
def test_property_no_accepted_event_breaks_the_engine_or_its_snapshot(cases):
    events = []
    for i, (type_, props) in enumerate(cases):
        r = parse_event(wire(type_, props, at_min=i * 7, event_id=f"e{i}"), "fuzz")
        assert isinstance(r, Event | Rejected)
        if isinstance(r, Event):
            events.append(r)
    if not events:
        return
    state, out = run(engine(), events, T0 + 3 * DAY)
    for o in out:
        if isinstance(o, Send):
            orjson.dumps(o.variables)  # the sends topic and the sends table hold it
            total = o.variables.get("cart_total")
            assert total is None or math.isfinite(total)
        if isinstance(o, Conversion):
            assert 0 <= o.revenue <= E.MAX_MONEY
    assert pickle.loads(pickle.dumps(state, pickle.HIGHEST_PROTOCOL)).customer_id == "c1"
