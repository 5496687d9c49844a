"""The strict parser: every kind of bad input becomes a dead letter with a reason, never a crash."""

from __future__ import annotations

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
                            E.INVALID_TIMESTAMP, E.TIMESTAMP_OUT_OF_RANGE, E.INVALID_PROPS}
