"""The pure engine on the abandoned_cart trigger: no dataflow, deterministic time."""

from __future__ import annotations

from cdp_triggers.clock import HOUR, MINUTE
from cdp_triggers.records import (
    CANCELLED,
    NO_CONSENT,
    NO_CONTACT,
    REENTRY_COOLDOWN,
    SENT,
    Conversion,
    Duplicate,
)
from state.profiles import DictProfileStore, Profile
from tests.engine_helpers import (
    T0,
    cart,
    decisions,
    engine,
    ev,
    lifecycle,
    live,
    order,
    replay,
    sends,
)

DAY = 24 * HOUR


def test_abandoned_cart_sends_one_email_30_minutes_after_last_cart_event():
    out = replay(engine(), [cart(0)], horizon=T0 + 2 * HOUR)
    [s] = sends(out)
    assert s.channel == "email" and s.template == "abandoned_cart_reminder"
    assert s.ts == T0 + 30 * MINUTE  # event time deadline, not processing time
    assert s.variables["items"] == [{"product_id": "p1", "quantity": 1, "price": 10.0}]
    assert [d.status for d in decisions(out)] == [SENT]
    assert len(lifecycle(out, "started")) == 1 and len(lifecycle(out, "completed")) == 1


def test_nothing_fires_before_the_deadline_plus_grace():
    eng = engine()
    out = replay(eng, [cart(0)], horizon=T0 + 34 * MINUTE)  # due 30m, grace 5m
    assert sends(out) == []
    out = replay(eng, [cart(0)], horizon=T0 + 35 * MINUTE)
    assert len(sends(out)) == 1


def test_order_cancels_the_reminder():
    out = replay(engine(), [cart(0), order(10)], horizon=T0 + DAY)
    assert sends(out) == []
    [d] = decisions(out)
    assert d.status == CANCELLED and d.reason == "cancel_event:order_placed"
    assert len(lifecycle(out, "cancelled")) == 1


def test_further_cart_events_reset_the_inactivity_window():
    out = replay(engine(), [cart(0), cart(20, "p2"), ev("removed_from_cart", 40, product_id="p1")],
                 horizon=T0 + DAY)
    [s] = sends(out)
    assert s.ts == T0 + 70 * MINUTE  # 30 minutes after the last cart event at 40
    assert [i["product_id"] for i in s.variables["items"]] == ["p2"]
    assert len(lifecycle(out, "started")) == 1


def test_reentry_cooldown_suppresses_a_second_series_within_24h():
    events = [cart(0), cart(2 * 60, "p2"), cart(25 * 60, "p3")]
    out = replay(engine(), events, horizon=T0 + 2 * DAY)
    assert [(d.status, d.reason) for d in decisions(out)] == [
        (SENT, ""), ("suppressed", REENTRY_COOLDOWN), (SENT, "")]
    assert len(lifecycle(out, "started")) == 3


def test_late_order_within_grace_still_cancels():
    # deadline at 30m; the order happened at 29m but only reaches us (by event time order)
    # after another event at 33m: still inside the 5-minute grace, so it cancels.
    out = replay(engine(), [cart(0), ev("product_viewed", 33, product_id="p9"), order(29)],
                 horizon=T0 + DAY)
    assert sends(out) == []
    assert [d.status for d in decisions(out)] == [CANCELLED]


def test_order_after_the_grace_is_too_late_to_cancel():
    out = replay(engine(), [cart(0), ev("product_viewed", 40, product_id="p9"), order(29)],
                 horizon=T0 + DAY)
    assert len(sends(out)) == 1


def test_order_before_the_cart_does_not_cancel_it():
    out = replay(engine(), [cart(10), order(5)], horizon=T0 + DAY)
    assert len(sends(out)) == 1


def test_no_contact_and_no_consent_are_recorded_with_reasons():
    store = DictProfileStore([
        Profile("c1", contacts=frozenset({"push"}), consents={"email:marketing": True}),
        Profile("c2", contacts=frozenset({"email"}), consents={"email:marketing": False}),
    ])
    out = replay(engine(), [cart(0, customer="c1"), cart(0, customer="c2")], T0 + DAY, store)
    assert sends(out) == []
    assert sorted(d.reason for d in decisions(out)) == [NO_CONSENT, NO_CONTACT]


def test_consent_revoked_by_event_blocks_the_send():
    events = [cart(0),
              ev("consent_changed", 5, channel="email", category="marketing", granted=False)]
    out = replay(engine(), events, T0 + DAY)
    assert sends(out) == [] and decisions(out)[0].reason == NO_CONSENT


def test_duplicate_event_ids_are_dropped_and_reported():
    c = cart(0)
    out = replay(engine(), [c, c], T0 + DAY)
    assert sum(isinstance(o, Duplicate) for o in out) == 1
    assert len(sends(out)) == 1


def test_order_after_a_send_is_a_conversion_with_revenue():
    out = replay(engine(), [cart(0), order(3 * 60, total=42.5)], T0 + DAY)
    [conv] = [o for o in out if isinstance(o, Conversion)]
    [s] = sends(out)
    assert (conv.send_id == s.send_id and conv.revenue == 42.5
            and conv.trigger_id == "abandoned_cart")


def test_send_ids_are_deterministic_across_runs():
    events = [cart(0), cart(0, customer="c2")]
    a = sorted(s.send_id for s in sends(replay(engine(), events, T0 + DAY)))
    b = sorted(s.send_id for s in sends(replay(engine(), events, T0 + DAY)))
    assert a == b and len(set(a)) == 2


def test_live_and_replay_make_identical_decisions():
    events = []
    for i in range(40):
        c = f"c{i % 7}"
        base = i * 17
        events += [cart(base, f"p{i}", c), ev("product_viewed", base + 3, c, product_id="x")]
        if i % 3 == 0:
            events.append(order(base + (12 if i % 2 else 31), c))
    events.sort(key=lambda e: e.ts)
    horizon = T0 + 3 * DAY

    def key(out):
        return sorted((d.customer_id, d.trigger_id, d.instance_id, d.step, d.channel, d.status,
                       d.reason, d.send_id, d.ts) for d in decisions(out))

    replayed, lived = key(replay(engine(), events, horizon)), key(live(engine(), events, horizon))
    assert replayed == lived
    assert {r[5] for r in replayed} >= {SENT, CANCELLED}
