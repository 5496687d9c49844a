"""The synthetic retail generator: determinism, validity, ordering, funnel shape, counts."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cdp_triggers.clock import DAY, MINUTE
from cdp_triggers.events import Event, Rejected, parse_event
from cdp_triggers.synthetic import (
    BAD_KINDS,
    SyntheticConfig,
    SyntheticRetail,
    generate,
    write_jsonl,
)
from state.profiles import CHANNELS

SMALL = SyntheticConfig(customers=300, days=1.0, seed=11)


@pytest.fixture(scope="module")
def big() -> tuple[SyntheticRetail, list[bytes]]:
    gen = SyntheticRetail(SyntheticConfig(customers=3000, days=3.0, seed=7))
    return gen, list(gen.events())


@pytest.fixture(scope="module")
def parsed(big: tuple[SyntheticRetail, list[bytes]]) -> list[tuple[bytes, Event | Rejected]]:
    _, raws = big
    return [(raw, parse_event(raw, source="synthetic")) for raw in raws]


@pytest.fixture(scope="module")
def accepted(parsed: list[tuple[bytes, Event | Rejected]]) -> list[Event]:
    """Valid events with duplicates dropped, as the flow would see them."""
    seen: set[str] = set()
    out = []
    for _, ev in parsed:
        if isinstance(ev, Event) and ev.event_id not in seen:
            seen.add(ev.event_id)
            out.append(ev)
    return out


def test_same_seed_same_bytes_different_seed_different() -> None:
    a = list(SyntheticRetail(SMALL).events())
    b = list(SyntheticRetail(SMALL).events())
    c = list(SyntheticRetail(SyntheticConfig(customers=300, days=1.0, seed=12)).events())
    assert a == b
    assert a != c
    assert SyntheticRetail(SMALL).profiles() == SyntheticRetail(SMALL).profiles()


def test_noise_does_not_shift_behaviour() -> None:
    clean = SyntheticConfig(customers=300, days=1.0, seed=11, bad_event_rate=0, duplicate_rate=0)
    noisy = SyntheticRetail(SMALL)
    good = [r for r in noisy.events() if isinstance(parse_event(r), Event)]
    assert list(dict.fromkeys(good)) == list(SyntheticRetail(clean).events())


def test_good_events_parse_and_round_trip(
        big: tuple[SyntheticRetail, list[bytes]],
        parsed: list[tuple[bytes, Event | Rejected]]) -> None:
    gen, _ = big
    good = [(raw, ev) for raw, ev in parsed if isinstance(ev, Event)]
    assert len(good) == gen.stats.good + gen.stats.duplicates
    for raw, ev in good:
        assert ev.to_json() == raw
        assert gen.config.start_ms <= ev.ts < gen.end_ms
        assert ev.customer_id.startswith("c")


def test_bad_events_rejected_and_counts_balance(
        big: tuple[SyntheticRetail, list[bytes]],
        parsed: list[tuple[bytes, Event | Rejected]],
        accepted: list[Event]) -> None:
    gen, raws = big
    st = gen.stats
    rejected = [ev for _, ev in parsed if isinstance(ev, Rejected)]
    assert st.read == len(raws) == len(accepted) + len(rejected) + st.duplicates
    assert len(accepted) == st.good and len(rejected) == st.bad
    assert st.bad > 0 and st.duplicates > 0
    assert sum(st.by_type.values()) == st.good


def test_every_bad_kind_is_rejected() -> None:
    gen = SyntheticRetail(SyntheticConfig(customers=200, days=1.0, bad_event_rate=0.2))
    rejected = [r for r in (parse_event(raw) for raw in gen.events()) if isinstance(r, Rejected)]
    assert len(rejected) == gen.stats.bad
    assert set(gen.stats.bad_by_kind) == set(BAD_KINDS)
    reasons = Counter(r.reason for r in rejected)
    for reason in ("invalid_json", "not_an_object", "missing_field", "invalid_timestamp",
                   "timestamp_out_of_range", "oversize", "invalid_props"):
        assert reasons[reason] > 0, reason


def test_duplicates_are_exact_resends(
        big: tuple[SyntheticRetail, list[bytes]],
        parsed: list[tuple[bytes, Event | Rejected]]) -> None:
    gen, raws = big
    resent = sum(1 for prev, raw in pairwise(raws) if raw == prev)
    assert resent == gen.stats.duplicates
    payloads_by_id: dict[str, set[bytes]] = {}
    for raw, ev in parsed:
        if isinstance(ev, Event):
            payloads_by_id.setdefault(ev.event_id, set()).add(raw)
    assert all(len(p) == 1 for p in payloads_by_id.values())  # same id ⇔ same bytes
    assert len(payloads_by_id) == gen.stats.good


def test_event_time_non_decreasing(accepted: list[Event]) -> None:
    ts = [e.ts for e in accepted]
    assert ts == sorted(ts)


def test_funnel_ratios(big: tuple[SyntheticRetail, list[bytes]], accepted: list[Event]) -> None:
    gen, _ = big
    types = Counter(e.type for e in accepted)
    assert 0.015 <= types["added_to_cart"] / types["product_viewed"] <= 0.04
    cart_at: dict[str, int] = {}
    last_cart_at: dict[str, int] = {}
    ordered_at: dict[str, int] = {}
    for e in accepted:
        if e.type in ("added_to_cart", "removed_from_cart"):
            cart_at.setdefault(e.props["cart_id"], e.ts)
            last_cart_at[e.props["cart_id"]] = e.ts
        elif e.type == "order_placed":
            ordered_at[e.props["cart_id"]] = e.ts
            items = e.props["items"]
            assert e.props["currency"] == "EUR" and items
            assert e.props["total"] == pytest.approx(
                sum(i["price"] * i["quantity"] for i in items), abs=0.005)
    assert 0.07 <= len(cart_at) / gen.stats.sessions <= 0.13
    # carts with a full day left to convert
    settled = [c for c, t in cart_at.items() if t < gen.end_ms - DAY]
    abandoned = sum(1 for c in settled if c not in ordered_at)
    assert 0.45 <= abandoned / len(settled) <= 0.70
    # a 30-minute reminder is cancelled in time for some orders, not for others
    delays = [ordered_at[c] - last_cart_at[c] for c in ordered_at]
    assert sum(d < 30 * MINUTE for d in delays) > 0.4 * len(delays)
    assert sum(d > 30 * MINUTE for d in delays) > 0.15 * len(delays)


def test_order_lifecycle_and_other_types(accepted: list[Event]) -> None:
    types = Counter(e.type for e in accepted)
    for t in ("order_paid", "order_shipped", "order_delivered", "order_cancelled",
              "checkout_started", "removed_from_cart", "signed_up", "consent_changed"):
        assert types[t] > 0, t
    placed = {e.props["order_id"]: e.ts for e in accepted if e.type == "order_placed"}
    for e in accepted:
        if e.type in ("order_paid", "order_shipped", "order_delivered", "order_cancelled"):
            assert e.props["order_id"] in placed
            assert e.ts >= placed[e.props["order_id"]]
    for e in accepted:
        if e.type == "consent_changed":
            assert e.props["channel"] in CHANNELS
            assert isinstance(e.props["granted"], bool)


def test_profiles() -> None:
    gen = SyntheticRetail(SyntheticConfig(customers=3000, days=1.0))
    profiles = gen.profiles()
    assert [p.customer_id for p in profiles] == [f"c{i:06d}" for i in range(1, 3001)]
    zones = Counter(p.timezone for p in profiles)
    assert len(zones) >= 8
    for tz in zones:
        ZoneInfo(tz)
    email = [p for p in profiles if p.has_contact("email")]
    assert 0.85 <= len(email) / len(profiles) <= 0.97
    sms = sum(p.has_contact("sms") for p in profiles) / len(profiles)
    push = sum(p.has_contact("push") for p in profiles) / len(profiles)
    assert sms < push < 1
    mkt = sum(p.consent("email", "marketing") is True for p in email) / len(email)
    assert 0.72 <= mkt <= 0.88
    for p in profiles:
        assert p.contacts <= set(CHANNELS)
        assert all(k.split(":")[0] in p.contacts for k in p.consents)


def test_sessions_follow_local_daytime(accepted: list[Event]) -> None:
    zones = {p.customer_id: ZoneInfo(p.timezone)
             for p in SyntheticRetail(SyntheticConfig(customers=3000, days=3.0)).profiles()}
    hours = Counter(datetime.fromtimestamp(e.ts / 1000, zones[e.customer_id]).hour
                    for e in accepted if e.type == "product_viewed")
    night = sum(hours[h] for h in range(2, 6))
    evening = sum(hours[h] for h in range(18, 22))
    assert evening > 5 * night


def test_generate_and_write_jsonl(tmp_path: Path) -> None:
    profiles, events = generate(SMALL)
    raws = list(events)
    assert len(profiles) == SMALL.customers
    path = tmp_path / "events.jsonl"
    stats = write_jsonl(path, SMALL)
    lines = path.read_bytes().splitlines()
    assert lines == raws
    assert stats.read == len(lines)
