"""The pure engine on abandoned_cart (and the engine's general guarantees): no dataflow."""

from __future__ import annotations

from cdp_triggers.clock import HOUR, MINUTE
from cdp_triggers.records import (
    CANCELLED,
    CONDITION_NOT_MET,
    NO_CONSENT,
    NO_CONTACT,
    REENTRY_COOLDOWN,
    SENT,
    SUPPRESSED,
    Conversion,
    Duplicate,
)
from state.profiles import DictProfileStore, Profile
from tests.engine_helpers import (
    T0,
    at,
    cart,
    decisions,
    engine,
    ev,
    firsts,
    lifecycle,
    live,
    order,
    replay,
    sends,
)

DAY = 24 * HOUR
AC = "abandoned_cart"


def run(events, horizon, store=None):
    return at(replay(engine(), events, horizon, store), AC)


def test_reminder_one_hour_after_the_last_cart_event_then_a_last_call_a_day_later():
    """The reminder not opened (no receipts here): the branch goes to the last call."""
    out = run([cart(0)], T0 + 2 * DAY)
    first, second = firsts(out)
    assert (first.template, first.channel, first.ts) == ("abandoned_cart_reminder", "push",
                                                          T0 + HOUR)
    assert first.variables["items"] == [{"product_id": "p1", "quantity": 1, "price": 10.0}]
    assert first.variables["cart_total"] == 10.0 and first.variables["key"] == "k1"
    assert (second.template, second.step, second.channel, second.ts) == (
        "abandoned_cart_last_call", 2, "push", T0 + HOUR + DAY)
    # no receipts here: the reminder cascades push → e-mail (15 min) → SMS (4 h later)
    assert [(s.channel, s.ts) for s in sends(out) if s.step == 0] == [
        ("push", T0 + HOUR), ("email", T0 + HOUR + 15 * MINUTE),
        ("sms", T0 + 5 * HOUR + 15 * MINUTE)]
    [branched] = lifecycle(out, "branched")
    assert (branched.reason, branched.ts) == ("reminder→last_call", T0 + HOUR + DAY)
    assert len(lifecycle(out, "started")) == 1 and len(lifecycle(out, "completed")) == 1


def test_an_opened_reminder_branches_to_the_discount_a_day_later():
    added = cart(0)
    [email] = [s for s in sends(run([added], T0 + 2 * HOUR)) if s.channel == "email"]
    read = ev("message_opened", 3 * 60, send_id=email.send_id, channel="email")
    out = run([added, read], T0 + 3 * DAY)
    assert [(s.step, s.template, s.channel, s.ts) for s in firsts(out)] == [
        (0, "abandoned_cart_reminder", "push", T0 + HOUR),
        (1, "abandoned_cart_discount", "email", T0 + HOUR + DAY)]
    assert [b.reason for b in lifecycle(out, "branched")] == ["reminder→discount",
                                                            "discount→end"]
    assert len(lifecycle(out, "completed")) == 1  # the discount ends the chain


def test_nothing_fires_before_the_deadline_plus_grace():
    assert sends(run([cart(0)], T0 + 64 * MINUTE)) == []  # due 60m, grace 5m
    assert len(sends(run([cart(0)], T0 + 65 * MINUTE))) == 1


def test_order_cancels_the_series_at_once_even_between_steps():
    out = run([cart(0)], T0 + 2 * DAY)
    assert len(firsts(out)) == 2
    out = run([cart(0), order(10)], T0 + 2 * DAY)
    assert sends(out) == [] and [d.status for d in decisions(out)] == [CANCELLED]
    assert decisions(out)[0].reason == "cancel_event:order_placed"
    out = run([cart(0), order(6 * 60)], T0 + 2 * DAY)  # after the reminder, before the discount
    assert {s.template for s in sends(out)} == {"abandoned_cart_reminder"}
    # the branch was not decided yet: no next message to cancel, the chain ends
    assert [(d.step, d.status) for d in decisions(out)] == [(0, SENT)] * 3
    assert [lc.reason for lc in lifecycle(out, "cancelled")] == ["order_placed"]


def test_further_events_on_the_cart_reset_the_inactivity_window():
    out = run([cart(0), cart(20, "p2"), ev("removed_from_cart", 40, product_id="p1",
                                         cart_id="k1")], T0 + 2 * HOUR)
    [s] = firsts(out)
    assert s.ts == T0 + 100 * MINUTE  # an hour after the last cart event at 40
    assert [i["product_id"] for i in s.variables["items"]] == ["p2"]
    assert len(lifecycle(out, "started")) == 1


def test_one_instance_per_cart_key():
    out = run([cart(0, cart_id="a"), cart(10, "p2", cart_id="b")], T0 + 3 * HOUR)
    assert {lc.instance_key for lc in lifecycle(out, "started")} == {"a", "b"}


def test_the_second_message_is_skipped_when_the_cart_was_emptied():
    out = run([cart(0), ev("removed_from_cart", 6 * 60, product_id="p1", cart_id="other")],
              T0 + 2 * DAY)
    assert [(d.step, d.status, d.reason) for d in decisions(out)][-1] == (
        2, SUPPRESSED, CONDITION_NOT_MET)  # (the last call: the reminder was not opened)


def test_reentry_cooldown_suppresses_a_new_series_within_24h():
    events = [cart(0, cart_id="a"), cart(2 * 60, "p2", cart_id="b"),
              cart(26 * 60, "p3", cart_id="c")]
    out = run(events, T0 + 3 * DAY)
    step0 = [(d.instance_id, d.channel, d.status, d.reason) for d in decisions(out)
             if d.step == 0 and d.channel == "push"]
    assert [f[2:] for f in step0] == [(SENT, ""), (SUPPRESSED, REENTRY_COOLDOWN), (SENT, "")]


def test_late_order_within_grace_still_cancels():
    # due at 60m; the order happened at 59m but reaches us after an event at 63m:
    # still inside the 5-minute grace, so it cancels.
    out = run([cart(0), ev("product_viewed", 63, product_id="p9"), order(59)], T0 + 2 * DAY)
    assert sends(out) == [] and [d.status for d in decisions(out)] == [CANCELLED]


def test_order_after_the_grace_is_too_late_to_cancel_the_reminder():
    out = run([cart(0), ev("product_viewed", 66, product_id="p9"), order(59)], T0 + 2 * DAY)
    assert [s.template for s in firsts(out)] == ["abandoned_cart_reminder"]


def test_order_before_the_cart_does_not_cancel_it():
    assert len(firsts(run([cart(10), order(5)], T0 + 3 * HOUR))) == 1


def test_next_channel_when_the_first_has_no_contact_or_consent():
    store = DictProfileStore([
        Profile("c1", contacts=frozenset({"email"}), consents={"email:marketing": True}),
        Profile("c2", contacts=frozenset({"email", "push"}), consents={"email:marketing": True}),
        Profile("c3", contacts=frozenset({"sms"}), consents={"sms:marketing": False}),
    ])
    out = run([cart(0, customer=c) for c in ("c1", "c2", "c3")], T0 + 2 * HOUR, store)
    got = {(d.customer_id, d.channel, d.status, d.reason) for d in decisions(out)}
    assert got == {("c1", "push", SUPPRESSED, NO_CONTACT), ("c1", "email", SENT, ""),
                   ("c2", "push", SUPPRESSED, NO_CONSENT), ("c2", "email", SENT, ""),
                   ("c3", "push", SUPPRESSED, NO_CONTACT), ("c3", "email", SUPPRESSED, NO_CONTACT),
                   ("c3", "sms", SUPPRESSED, NO_CONSENT)}


def test_consent_revoked_by_event_blocks_the_send():
    events = [cart(0)] + [ev("consent_changed", 5, channel=ch, category="marketing",
                             granted=False) for ch in ("push", "email", "sms")]
    out = run(events, T0 + 2 * HOUR)
    assert sends(out) == [] and {d.reason for d in decisions(out)} == {NO_CONSENT}


def test_duplicate_event_ids_are_dropped_and_reported():
    c = cart(0)
    out = replay(engine(), [c, c], T0 + 2 * HOUR)
    assert sum(isinstance(o, Duplicate) for o in out) == 1
    assert len(firsts(at(out, AC))) == 1


def test_order_after_a_send_is_a_conversion_with_revenue():
    out = replay(engine(), [cart(0), order(3 * 60, total=42.5)], T0 + DAY)
    [conv] = [o for o in out if isinstance(o, Conversion)]
    s = sends(at(out, AC))[-1]  # last touch: the newest send before the order
    assert (conv.send_id, conv.revenue, conv.trigger_id) == (s.send_id, 42.5, AC)


def test_send_ids_are_deterministic_across_runs():
    events = [cart(0), cart(0, customer="c2")]
    a = sorted(s.send_id for s in sends(run(events, T0 + 2 * DAY)))
    b = sorted(s.send_id for s in sends(run(events, T0 + 2 * DAY)))
    assert a == b and len(set(a)) == 8  # 2 customers × (push, e-mail, SMS, discount)


def test_live_and_replay_make_identical_decisions():
    events = []
    for i in range(40):
        c = f"c{i % 7}"
        base = i * 37
        events += [cart(base, f"p{i}", c, cart_id=f"k{i}"),
                   ev("product_viewed", base + 3, c, product_id="x")]
        if i % 3 == 0:
            events.append(order(base + (12 if i % 2 else 61), c))
    events.sort(key=lambda e: e.ts)
    horizon = T0 + 3 * DAY

    def key(out):
        return sorted((d.customer_id, d.trigger_id, d.instance_id, d.step, d.channel, d.status,
                       d.reason, d.send_id, d.ts) for d in decisions(out))

    replayed, lived = key(replay(engine(), events, horizon)), key(live(engine(), events, horizon))
    assert replayed == lived
    assert {r[5] for r in replayed} >= {SENT, CANCELLED}


def test_an_order_read_before_its_earlier_cart_event_still_cancels():
    """Out-of-order input (another topic, another partition): the order (ts 10m) is read
    first, the cart (ts 0) after it. The order is later in event time: it cancels."""
    out = run([order(10), cart(0)], T0 + 2 * DAY)
    assert sends(out) == [] and [d.status for d in decisions(out)] == [CANCELLED]
    out = run([order(-10), cart(0)], T0 + 2 * DAY)  # an older order does not
    assert len(firsts(out)) == 2


def test_cart_activity_after_the_reminder_went_does_not_restart_the_wait():
    out = run([cart(0), cart(65, "p2")], T0 + 2 * DAY)  # the push went at 60m
    assert [(s.channel, s.ts) for s in sends(out) if s.step == 0][:2] == [
        ("push", T0 + HOUR), ("email", T0 + HOUR + 15 * MINUTE)]
