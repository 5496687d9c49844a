"""The strict parser: every kind of bad input becomes a dead letter with a reason, never a crash."""

from __future__ import annotations

import math
import pickle
from datetime import datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp_triggers import events as E
from cdp_triggers.events import Event, Rejected, parse_event


def raw(**over) -> bytes:
    base = {"event_id": "e1", "type": "added_to_cart", "customer_id": "c1",
            "ts": "2026-11-23T10:00:00Z", "props": {"product_id": "p1", "price": 9.5}}
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_event_with_rfc3339_and_epoch_ms_times():
    a = parse_event(raw(), "t:0:1")
    b = parse_event(raw(ts=1795428000000))
    assert isinstance(a, Event) and a.ts == 1795428000000 == b.ts
    assert a.source == "t:0:1" and a.props["product_id"] == "p1"


def test_offsets_are_normalised_to_utc():
    e = parse_event(raw(ts="2026-11-23T11:00:00+01:00"))
    assert e.ts == 1795428000000


@pytest.mark.parametrize("text", ["2026-11-23t10:00:00Z", "2026-11-23T10:00:00z",
                                  "2026-11-23t10:00:00z", "2026-11-23t05:30:00-04:30"])
def test_lowercase_t_and_z_are_rfc3339_too(text):
    e = parse_event(raw(ts=text))
    assert isinstance(e, Event) and e.ts == 1795428000000


def test_fractional_seconds_never_round_up_a_millisecond():
    assert E.parse_ts("2026-11-23T10:00:00.1239999Z") == 1795428000123
    assert E.parse_ts("2026-11-23T10:00:00.001Z") == 1795428000001


_EPOCH = datetime(1970, 1, 1)  # naive: the expected values do not go through parse_ts's code


@settings(max_examples=500, deadline=None)
@given(micros=st.integers(E.MIN_TS_MS * 1000, E.MAX_TS_MS * 1000 - 1),
       extra_ns=st.integers(0, 999), digits=st.sampled_from([0, 1, 2, 3, 4, 6, 7, 9]),
       sep=st.sampled_from("Tt"), offset_min=st.integers(-23 * 60 - 59, 23 * 60 + 59),
       zulu=st.sampled_from(["Z", "z", ""]))
def test_property_rfc3339_variants_round_trip_to_epoch_ms(micros, extra_ns, digits, sep,
                                                          offset_min, zulu):
    """A random instant written in RFC 3339 (T/t, Z/z or ±hh:mm, 0–9 fraction digits)
    parses to its epoch ms, the fraction truncated (never rounded) to the millisecond."""
    nanos = micros * 1000 + extra_ns
    unit = 10 ** (9 - digits)
    nanos -= nanos % unit  # what the written fraction holds
    if zulu:
        offset_min = 0
    local = _EPOCH + timedelta(microseconds=nanos // 1000 + offset_min * 60_000_000)
    frac = f".{nanos % 10**9:09d}"[:digits + 1] if digits else ""
    if zulu:
        tail = zulu
    else:
        sign, mag = ("-" if offset_min < 0 else "+"), abs(offset_min)
        tail = f"{sign}{mag // 60:02d}:{mag % 60:02d}"
    text = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}{frac}{tail}"
    assert E.parse_ts(text) == nanos // 1_000_000, text


@pytest.mark.parametrize(("payload", "reason", "fragment"), [
    (b"{not json", E.INVALID_JSON, "not JSON"),
    (b"\xff\xfe", E.INVALID_JSON, "not JSON"),
    (b"[1, 2]", E.NOT_AN_OBJECT, "got list"),
    (b'"text"', E.NOT_AN_OBJECT, "got str"),
    (raw(customer_id=...), E.MISSING_FIELD, "customer_id"),
    (raw(customer_id="   "), E.INVALID_FIELD, "customer_id"),
    (raw(customer_id=42), E.INVALID_FIELD, "customer_id"),
    (raw(event_id=...), E.MISSING_FIELD, "event_id"),
    (raw(props=[1]), E.INVALID_FIELD, "props"),
    (raw(ts="yesterday"), E.INVALID_TIMESTAMP, "not RFC 3339"),
    (raw(ts="2026-11-23T10:00:00"), E.INVALID_TIMESTAMP, "no UTC offset"),
    (raw(ts=1.5), E.INVALID_FIELD, "ts"),
    (raw(ts=True), E.INVALID_FIELD, "ts"),
    (raw(ts=1795428000), E.TIMESTAMP_OUT_OF_RANGE, "epoch seconds"),
    (raw(ts="3026-01-01T00:00:00Z"), E.TIMESTAMP_OUT_OF_RANGE, "outside"),
    (raw(props={"price": 3}), E.INVALID_PROPS, "props.product_id"),
    (raw(type="order_placed", props={"order_id": "o", "total": "12", "currency": "EUR"}),
     E.INVALID_PROPS, "props.total"),
    (raw(type="consent_changed", props={"channel": "email", "category": "x", "granted": True}),
     E.INVALID_PROPS, "props.category"),
])
def test_bad_input_is_rejected_with_reason(payload, reason, fragment):
    r = parse_event(payload, "clickstream:3:99")
    assert isinstance(r, Rejected)
    assert r.reason == reason and fragment in r.detail
    assert r.source == "clickstream:3:99" and r.raw == payload[: E.RAW_KEEP_BYTES]


def test_oversize_payload_is_rejected_before_parsing():
    big = raw(props={"product_id": "p", "blob": "x" * 70_000})
    r = parse_event(big)
    assert isinstance(r, Rejected) and r.reason == E.OVERSIZE
    assert len(r.raw) == E.RAW_KEEP_BYTES


def test_unknown_fields_and_unknown_types_are_allowed():
    e = parse_event(raw(extra=1, props={"product_id": "p", "colour": "red"}))
    assert isinstance(e, Event) and e.props["colour"] == "red"
    custom = parse_event(raw(type="segment_entered", props={"segment": "vip"}))
    assert isinstance(custom, Event) and custom.type == "segment_entered"


def test_rejected_keeps_what_identifies_the_event():
    r = parse_event(raw(ts="nope"))
    assert (r.customer_id, r.event_id, r.event_type) == ("c1", "e1", "added_to_cart")


def test_live_mode_refuses_events_from_the_far_future():
    now = 1795428000000 - 3 * 86_400_000
    r = parse_event(raw(), now_ms=now)
    assert isinstance(r, Rejected) and r.reason == E.TIMESTAMP_OUT_OF_RANGE


def test_round_trip_through_the_wire_form():
    e = parse_event(raw())
    assert parse_event(e.to_json()) == Event(e.event_id, e.type, e.customer_id, e.ts, e.props)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda kids: (st.lists(kids, max_size=4)
                  | st.dictionaries(st.text(max_size=10), kids, max_size=4)),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values | st.text(max_size=8),
        "type": st.sampled_from(sorted(E.KNOWN_TYPES)) | json_values,
        "customer_id": json_values | st.text(max_size=8),
        "ts": json_values | st.integers(0, 5_000_000_000_000) | st.datetimes().map(str),
        "props": json_values | st.dictionaries(st.sampled_from(
            ["product_id", "order_id", "total", "currency", "items", "send_id", "channel",
             "category", "granted", "price", "quantity"]), json_values, max_size=6),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_never_crash(data):
    r = parse_event(data, "fuzz")
    assert isinstance(r, Event | Rejected)
    if isinstance(r, Rejected):
        assert r.reason and r.detail and r.source == "fuzz"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text_never_crashes(text):
    assert isinstance(parse_event(text, "fuzz"), Event | Rejected)


@settings(max_examples=600, deadline=None)
@given(event_like)
def test_fuzz_event_shaped_json_is_either_valid_or_dead_lettered(obj):
    r = parse_event(orjson.dumps(obj), "fuzz")
    assert isinstance(r, Event | Rejected)
    if isinstance(r, Event):
        assert r.customer_id.strip() and E.MIN_TS_MS <= r.ts < E.MAX_TS_MS
    else:
        assert r.reason in {E.INVALID_JSON, E.NOT_AN_OBJECT, E.MISSING_FIELD, E.INVALID_FIELD,
                            E.INVALID_TIMESTAMP, E.TIMESTAMP_OUT_OF_RANGE, E.INVALID_PROPS,
                            E.VALUE_OUT_OF_RANGE}


# ---- poison pills: values a sink or a snapshot cannot hold ---------------------------------

def order_raw(total=20.0, **item) -> bytes:
    items = [{"product_id": "p1", **item}] if item else []
    return raw(type="order_placed", props={"order_id": "o1", "total": total, "currency": "EUR",
                                           "items": items})


def nested(depth: int, leaf=1) -> bytes:
    """props nested ``depth`` levels (props itself is level 1), written by hand: orjson's
    encoder would refuse the deep ones."""
    inner = b'{"a":' * depth + orjson.dumps(leaf) + b"}" * depth
    return (b'{"event_id":"e1","type":"segment_entered","customer_id":"c1",'
            b'"ts":1795428000000,"props":' + inner + b"}")


@pytest.mark.parametrize(("payload", "reason", "fragment"), [
    # the conversions insert: revenue Decimal(18, 4) overflowed and killed the flow
    (order_raw(total=1e15), E.VALUE_OUT_OF_RANGE, "props.total"),
    (order_raw(total=-0.01), E.VALUE_OUT_OF_RANGE, "props.total"),
    (order_raw(price=1e13), E.VALUE_OUT_OF_RANGE, "props.items.0.price"),
    (order_raw(quantity=0), E.VALUE_OUT_OF_RANGE, "props.items.0.quantity"),
    (order_raw(quantity=2**63), E.VALUE_OUT_OF_RANGE, "props.items.0.quantity"),
    # cart_total became null: price × quantity overflowed to infinity
    (raw(props={"product_id": "p1", "price": 1e308}), E.VALUE_OUT_OF_RANGE, "props.price"),
    (raw(props={"product_id": "p1", "quantity": 100_001}), E.VALUE_OUT_OF_RANGE,
     "props.quantity"),
    (raw(type="product_updated", props={"product_id": "p1", "price": 1e300}),
     E.VALUE_OUT_OF_RANGE, "props.price"),
    (nested(600), E.TOO_DEEP, "nested deeper than 8"),  # pickling the snapshot recursed
    (nested(9), E.TOO_DEEP, "props.a.a.a.a.a.a.a.a"),
    (raw(type="x", props={"l": [[0] * 1001]}), E.TOO_LARGE, "props.l[0]: a list of 1001"),
    (raw(type="x", props={"s": "x" * 4097}), E.TOO_LARGE, "props.s: a string of 4097"),
    (raw(type="x", props={"k" * 4097: 1}), E.TOO_LARGE, "a key of 4097"),
    (raw(type="x", props={f"k{i}": {f"j{j}": 0 for j in range(40)} for i in range(60)}),
     E.TOO_LARGE, "more than 2048 keys"),
    (b'{"event_id":"e1","type":"x","customer_id":"c1","ts":1795428000000,"props":{"a":1e400}}',
     E.INVALID_JSON, "infinity"),  # NaN and Infinity are not JSON: never reach the engine
])
def test_values_a_sink_or_snapshot_cannot_hold_are_dead_lettered(payload, reason, fragment):
    r = parse_event(payload, "orders:0:7")
    assert isinstance(r, Rejected), r
    assert r.reason == reason and fragment in r.detail, r.detail
    assert r.source == "orders:0:7"


@pytest.mark.parametrize("payload", [
    order_raw(total=1e12, price=1e12, quantity=100_000), order_raw(total=0.0, quantity=1),
    nested(8), raw(type="x", props={"l": list(range(1000)), "s": "x" * 4096}),
])
def test_values_at_the_limits_are_accepted(payload):
    e = parse_event(payload)
    assert isinstance(e, Event), e
    assert pickle.loads(pickle.dumps(e)) == e


def test_limits_apply_to_custom_event_types_too():
    ok = parse_event(raw(type="segment_entered", props={"total": 1e300}))  # not a money field
    assert isinstance(ok, Event)
    r = parse_event(raw(type="segment_entered", props={"tags": ["t"] * 1001}))
    assert isinstance(r, Rejected) and r.reason == E.TOO_LARGE


def test_processing_error_keeps_what_identifies_the_event():
    e = Event("e9", "added_to_cart", "c7", 1795428000000, {"product_id": "p", "x": "y" * 9000},
              "clickstream:1:42")
    r = E.processing_error(e, KeyError("price" * 500))
    assert r.reason == E.PROCESSING_ERROR == "processing_error"
    assert r.detail.startswith("KeyError: ") and len(r.detail) == E.DETAIL_KEEP_CHARS
    assert r.raw == e.to_json()[: E.RAW_KEEP_BYTES]
    assert (r.source, r.customer_id, r.event_id, r.event_type) == (
        "clickstream:1:42", "c7", "e9", "added_to_cart")


def test_processing_error_never_raises_on_odd_exceptions_or_props():
    class Odd(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    e = Event("e1", "x", "c1", 1795428000000, {"v": {1, 2}})  # a set: not JSON
    r = E.processing_error(e, Odd())
    assert r.detail == "Odd" and r.raw.startswith(b"{'v'")


def _numbers(value, path=""):
    """Every number inside a parsed JSON value, with its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def _depth(value) -> int:
    if isinstance(value, dict | list):
        kids = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in kids), default=0)
    return 0


extreme_numbers = (st.floats(allow_nan=False, allow_infinity=False)
                   | st.integers(-(2**63), 2**64 - 1)
                   | st.sampled_from([0, 1, 1e12, 1e12 + 1, 1e15, 1e308, 100_000, 100_001, -1]))
item = st.fixed_dictionaries({"product_id": st.just("p1")},
                             optional={"price": extreme_numbers, "quantity": extreme_numbers})
priced = st.tuples(st.sampled_from(["product_viewed", "added_to_cart", "product_updated"]),
                   item) | st.tuples(st.just("order_placed"), st.fixed_dictionaries(
                       {"order_id": st.just("o1"), "total": extreme_numbers,
                        "currency": st.just("EUR"), "items": st.lists(item, max_size=3)}))
deep_json = st.integers(1, 40).flatmap(
    lambda n: st.sampled_from(["dict", "list"]).map(lambda kind: _nest(n, kind)))


def _nest(n: int, kind: str):
    v: object = 1
    for _ in range(n):
        v = {"a": v} if kind == "dict" else [v]
    return v


@settings(max_examples=500, deadline=None)
@given(priced | st.tuples(
    st.sampled_from(sorted(E.KNOWN_TYPES | {"segment_entered"})),
    deep_json.filter(lambda v: isinstance(v, dict)) | st.dictionaries(
        st.text(max_size=5), json_values | deep_json | st.text(min_size=4090, max_size=4100)
        | st.lists(st.integers(0, 9), min_size=995, max_size=1005), max_size=3)))
def test_property_accepted_events_pickle_and_fit_the_limits(case):
    type_, props = case
    r = parse_event(raw(type=type_, props=props), "prop")
    assert isinstance(r, Event | Rejected)
    if isinstance(r, Rejected):
        assert r.reason and r.detail
        return
    assert pickle.loads(pickle.dumps(r, pickle.HIGHEST_PROTOCOL)) == r
    assert _depth(r.props) <= E.MAX_DEPTH
    model = E.PROPS_MODELS.get(type_)
    fields = set(model.model_fields) if model else set()
    for path, x in _numbers(r.props):
        assert math.isfinite(x), path
        name = path.rsplit(".", 1)[-1]
        if (path.startswith(".items[") and type_ == "order_placed") or path[1:] in fields:
            if name in ("total", "price"):  # what conversions and cart totals sum
                assert 0 <= x <= E.MAX_MONEY, path
            if name == "quantity":
                assert isinstance(x, int) and 1 <= x <= E.MAX_QUANTITY, path


def test_profile_dates_are_checked_at_parse_time() -> None:
    """A date trigger reads birthday/registered_at: a bad one is a dead letter with the
    field named, never a birthday silently missing later."""
    import orjson as _orjson

    from cdp_triggers.events import Event as _Event
    from cdp_triggers.events import Rejected as _Rejected
    from cdp_triggers.events import parse_event as _parse

    def parse(typ: str, props: dict):
        return _parse(_orjson.dumps({"event_id": "e1", "type": typ, "customer_id": "c1",
                                     "ts": 1_790_000_000_000, "props": props}), "t:0:1")

    for typ in ("signed_up", "profile_updated"):
        assert isinstance(parse(typ, {"birthday": "1990-05-17"}), _Event)
        assert isinstance(parse(typ, {"birthday": "05-17", "registered_at": "2026-01-01"}),
                          _Event)
        bad = parse(typ, {"birthday": "13-45"})
        assert isinstance(bad, _Rejected) and bad.reason == "invalid_props"
        assert "props.birthday" in bad.detail
        bad = parse(typ, {"registered_at": "yesterday"})
        assert isinstance(bad, _Rejected) and "props.registered_at" in bad.detail


def test_types_and_product_ids_are_one_string_each_across_events():
    """The state keeps events (exits), their types and props (instances): one string
    object per known type and product id, not one per parsed event."""
    def view(i: int) -> Event:
        e = parse_event(orjson.dumps({"event_id": f"e{i}", "type": "product_viewed",
                                      "customer_id": f"c{i}", "ts": 1_790_000_000_000,
                                      "props": {"product_id": "p-7"}}))
        assert isinstance(e, Event)
        return e

    a, b = view(1), view(2)
    assert a.type is b.type and a.props["product_id"] is b.props["product_id"]
    assert a.props == {"product_id": "p-7"}
