"""Engine semantics users found wrong (issue 8), each on an event timeline in the pure
engine: channel caps move the cascade on, grace never changes who wins a cap slot, consent
follows event time whatever its source, the default time zone, receipts imply each other,
and a late success receipt for a channel the cascade moved on from still ends the step."""

from __future__ import annotations

from cdp_triggers.clock import DAY, HOUR, MINUTE
from cdp_triggers.events import Event
from cdp_triggers.records import (
    CAPPED,
    CONTACT_INVALID,
    DEFERRED,
    NO_CONSENT,
    QUIET_HOURS_DEFERRED,
    SENT,
    SUPPRESSED,
    Lifecycle,
    Outcome,
    ProfileUpdate,
)
from state.customer import CustomerState
from state.profiles import DictProfileStore, Profile
from tests.engine_helpers import T0, decisions, live, replay, sends
from tests.test_engine_policy import at_utc, e, engine_from, receipt, trig

# ---- 1. a channel cap moves the cascade on, whatever on_cap says --------------------------

SMS_CAP = """
late_event_grace: 0s
caps:
  - {id: sms_weekly, scope: channel, channels: [sms], max: 1, window: 7d}
"""


def test_channel_cap_moves_on_to_the_next_channel_even_with_on_cap_defer(tmp_path):
    t = {"a": trig("a", "x_a", "[sms, email]", extra="on_cap: defer")}
    out = replay(engine_from(tmp_path, t, SMS_CAP), [e("x_a", 0), e("x_a", 60)], T0 + 8 * DAY)
    assert [(d.channel, d.status, d.reason, d.ts) for d in decisions(out)] == [
        ("sms", SENT, "", T0),
        ("sms", SUPPRESSED, CAPPED, T0 + HOUR),  # not deferred for a week:
        ("email", SENT, "", T0 + HOUR)]          # the e-mail goes at once


def test_a_global_cap_still_honours_on_cap_defer(tmp_path):
    policy = SMS_CAP + "  - {id: one, scope: global, max: 1, window: 24h}\n"
    t = {"a": trig("a", "x_a", "[email]", extra="on_cap: defer")}
    out = replay(engine_from(tmp_path, t, policy), [e("x_a", 0), e("x_a", 60)], T0 + 2 * DAY)
    assert [(d.status, d.reason, d.ts) for d in decisions(out)] == [
        (SENT, "", T0), (DEFERRED, CAPPED, T0 + HOUR), (SENT, "", T0 + DAY)]


# ---- 2. grace delays a decision, never changes who wins -----------------------------------

ONE_SLOT = """
late_event_grace: 0s
caps:
  - {id: one, scope: global, max: 1, window: 24h}
"""


def slot_race(tmp_path, lo_extra: str = ""):
    t = {"hi": trig("hi", "both", priority=90, extra="grace: 10m"),
         "lo": trig("lo", "both", priority=10, extra="grace: 0s\n" + lo_extra)}
    return engine_from(tmp_path, t, ONE_SLOT)


def test_the_higher_priority_wins_the_last_slot_whatever_the_graces(tmp_path):
    for run in (replay, live):  # live: lo's timer may fire at once, hi's only 10m later
        out = run(slot_race(tmp_path / run.__name__), [e("both", 0)], T0 + DAY)
        assert [(d.trigger_id, d.status, d.reason, d.ts) for d in decisions(out)] == [
            ("hi", SENT, "", T0), ("lo", SUPPRESSED, CAPPED, T0)], run.__name__


def test_a_cancel_in_the_higher_ones_grace_hands_the_slot_down(tmp_path):
    eng = engine_from(tmp_path, {
        "hi": trig("hi", "both", priority=90, extra="grace: 10m\ncancel_on: [{event: stop}]"),
        "lo": trig("lo", "both", priority=10, extra="grace: 0s")}, ONE_SLOT)
    out = replay(eng, [e("both", 0), e("stop", 5)], T0 + DAY)
    assert [(d.trigger_id, d.status) for d in decisions(out)] == [("hi", "cancelled"),
                                                                  ("lo", SENT)]


def test_a_timer_waiting_behind_anothers_grace_is_decided_as_of_its_due_time(tmp_path):
    """lo (grace 0) is due at 0 but waits behind hi (grace 10m): a cancel for lo read at 5m
    comes after lo's own grace, so lo is decided as if it had fired at 0."""
    t = {"hi": trig("hi", "both", priority=90, extra="grace: 10m"),
         "lo": trig("lo", "both", priority=10, extra="grace: 0s\ncancel_on: [{event: stop}]")}
    eng = engine_from(tmp_path, t, "late_event_grace: 0s\n")
    for run in (replay, live):
        out = run(eng, [e("both", 0), e("stop", 5)], T0 + DAY)
        assert [(d.trigger_id, d.status, d.ts) for d in decisions(out)] == [
            ("hi", SENT, T0), ("lo", SENT, T0)], run.__name__


# ---- 3. consent follows event time whatever its source ------------------------------------

def no_consent_profile() -> DictProfileStore:
    return DictProfileStore([Profile("c1", "Europe/Berlin", "de", frozenset({"email"}), {})])


def consent(at_min: float, granted: bool, channel: str = "email") -> Event:
    return e("consent_changed", at_min, channel=channel, category="marketing", granted=granted)


def run_events(tmp_path, events: list[Event]):
    eng = engine_from(tmp_path, {"a": trig("a", "x_a", "[email]")})
    st, store, out = CustomerState("c1"), no_consent_profile(), []
    for ev in events:
        out += eng.handle(st, ev, max(st.high_water, ev.ts), store.get)
    return out, st


def test_a_late_unsubscribe_older_than_an_opt_in_does_not_revoke_it(tmp_path):
    out, st = run_events(tmp_path, [consent(10, True),
                                    receipt("unsubscribed", 5, "old-send", "email"),  # late
                                    e("x_a", 20)])
    assert st.consents["email:marketing"][0] is True
    assert not [u for u in out if isinstance(u, ProfileUpdate)]  # the store keeps the opt-in
    assert [(d.status, d.reason) for d in decisions(out)] == [(SENT, "")]


def test_a_newer_unsubscribe_revokes_and_is_written_back(tmp_path):
    out, _ = run_events(tmp_path, [consent(5, True),
                                   receipt("unsubscribed", 10, "s1", "email"), e("x_a", 20)])
    assert [(u.field, u.value) for u in out if isinstance(u, ProfileUpdate)] == [
        ("consent:email:marketing", "0")]
    assert [(d.status, d.reason) for d in decisions(out)] == [(SUPPRESSED, NO_CONSENT)]


def test_a_late_opt_in_older_than_an_unsubscribe_does_not_restore_consent(tmp_path):
    out, _ = run_events(tmp_path, [receipt("unsubscribed", 10, "s1", "email"),
                                   consent(5, True), e("x_a", 20)])
    assert [(d.status, d.reason) for d in decisions(out)] == [(SUPPRESSED, NO_CONSENT)]


def test_at_the_same_instant_a_revoke_wins_whatever_the_read_order(tmp_path):
    for events in ([consent(5, True), consent(5, False)], [consent(5, False), consent(5, True)],
                   [consent(5, True), receipt("unsubscribed", 5, "s1", "email")]):
        out, st = run_events(tmp_path, [*events, e("x_a", 20)])
        assert st.consents["email:marketing"] == (False, T0 + 5 * MINUTE)
        assert [d.reason for d in decisions(out)] == [NO_CONSENT]


def test_a_late_hard_bounce_older_than_an_opt_in_does_not_invalidate_the_contact(tmp_path):
    out, st = run_events(tmp_path, [consent(10, True),
                                    receipt("bounced", 5, "old-send", "email"),  # read late
                                    e("x_a", 20)])
    assert "email" not in st.invalid
    assert not [u for u in out if isinstance(u, ProfileUpdate)]
    assert [(d.status, d.reason) for d in decisions(out)] == [(SENT, "")]


def test_an_opt_in_after_a_hard_bounce_validates_the_contact_again(tmp_path):
    out, st = run_events(tmp_path, [receipt("bounced", 5, "s0", "email"),
                                    consent(10, True), e("x_a", 20)])
    assert "email" not in st.invalid
    assert [(u.field, u.value) for u in out if isinstance(u, ProfileUpdate)] == [
        ("invalid:email", "1"), ("invalid:email", "0")]
    assert [(d.status, d.reason) for d in decisions(out)] == [(SENT, "")]


def test_a_hard_bounce_after_the_opt_in_invalidates_the_contact(tmp_path):
    out, st = run_events(tmp_path, [consent(5, True), receipt("bounced", 10, "s0", "email"),
                                    e("x_a", 20)])
    assert "email" in st.invalid
    assert [d.reason for d in decisions(out)] == [CONTACT_INVALID]


# ---- 4. the policy's default time zone for profiles without one ---------------------------

def test_quiet_hours_use_the_default_time_zone_when_the_profile_has_none(tmp_path):
    policy = """
    late_event_grace: 0s
    default_timezone: America/New_York
    quiet_hours: {start: "21:00", end: "08:00", channels: [sms]}
    """
    eng = engine_from(tmp_path, {"a": trig("a", "x_a", "[sms]")}, policy)
    store = DictProfileStore([Profile("c1", contacts=frozenset({"sms"}),
                                      consents={"sms:marketing": True})])
    assert store.get("c1").timezone == ""  # unknown, not UTC
    late_utc = at_utc("2026-06-10T23:00:00+00:00")  # 23:00 UTC (quiet), 19:00 in New York
    early_utc = at_utc("2026-06-11T03:00:00+00:00")  # 03:00 UTC, 23:00 in New York (quiet)
    out = replay(eng, [Event("z1", "x_a", "c1", late_utc, {})], late_utc + DAY, store)
    assert [(d.status, d.ts) for d in decisions(out)] == [(SENT, late_utc)]
    out = replay(eng, [Event("z2", "x_a", "c2", early_utc, {})], early_utc + DAY,
                 DictProfileStore([Profile("c2", contacts=frozenset({"sms"}),
                                           consents={"sms:marketing": True})]))
    assert [(d.status, d.reason, d.ts) for d in decisions(out)] == [
        (DEFERRED, QUIET_HOURS_DEFERRED, early_utc),
        (SENT, "", at_utc("2026-06-11T12:00:00+00:00"))]  # 08:00 in New York


def test_a_profile_without_a_zone_round_trips_through_redis_as_unknown():
    p = Profile("c1", contacts=frozenset({"sms"}))
    assert Profile.from_redis("c1", p.to_redis()).timezone == ""
    assert Profile.from_redis("c1", {b"contacts": b"sms"}).timezone == ""
    assert Profile.from_redis("c1", {b"tz": b"Asia/Tokyo"}).timezone == "Asia/Tokyo"


# ---- 5. receipts imply each other: clicked ⇒ opened ⇒ delivered ----------------------------

IMPLY = """
cascade:
  push: {wait: 15m, until: [delivered]}
  email: {wait: 4h, until: [opened]}
"""


def cascade_run(tmp_path, step: str, receipts, channels: str = "[push, email, sms]",
                policy: str = "", profiles: DictProfileStore | None = None, start: int = T0):
    """Drive a cascade; ``receipts(sent)`` gives the receipt for the sends made so far."""
    eng = engine_from(tmp_path, {"c": trig("c", "x", channels, step=step)}, policy)
    st = CustomerState("c1")
    store = profiles or DictProfileStore([Profile(
        "c1", "Europe/Berlin", "de", frozenset({"email", "push", "sms"}),
        {"email:marketing": True, "push:marketing": True, "sms:marketing": True})])
    out = eng.handle(st, Event("start", "x", "c1", start, {}), start, store.get)
    for make in receipts:
        ev = make(sends(out))
        out += eng.handle(st, ev, max(st.high_water, ev.ts), store.get)
    out += eng.handle(st, None, start + 2 * DAY, store.get)
    return out


def test_a_click_satisfies_delivered_and_opened(tmp_path):
    out = cascade_run(tmp_path, IMPLY, [lambda s: receipt("clicked", 2, s[0].send_id, "push")])
    assert [x.channel for x in sends(out)] == ["push"]
    out = cascade_run(tmp_path / "b", IMPLY, [
        lambda s: e("noop", 16),  # push timed out: the e-mail went at 15m
        lambda s: receipt("clicked", 30, s[1].send_id, "email")])  # clicked ⇒ opened
    assert [x.channel for x in sends(out)] == ["push", "email"]


def test_an_open_satisfies_delivered(tmp_path):
    out = cascade_run(tmp_path, IMPLY, [lambda s: receipt("opened", 2, s[0].send_id, "push")])
    assert [x.channel for x in sends(out)] == ["push"]


def test_delivered_still_does_not_satisfy_opened(tmp_path):
    out = cascade_run(tmp_path, IMPLY, [
        lambda s: e("noop", 16), lambda s: receipt("delivered", 30, s[1].send_id, "email")])
    assert [x.channel for x in sends(out)] == ["push", "email", "sms"]


# ---- 6. a late success receipt for a channel the cascade moved on from --------------------

EMAIL_THEN_SMS = """
cascade:
  email: {wait: 1h, until: [opened]}
"""
QUIET_SMS = """
late_event_grace: 0s
quiet_hours: {start: "21:00", end: "08:00", channels: [sms]}
"""


def test_an_email_opened_after_the_cascade_moved_on_stops_the_held_sms(tmp_path):
    start = at_utc("2026-06-10T19:30:00+00:00")  # 21:30 in Berlin: the e-mail goes
    opened = at_utc("2026-06-10T20:48:00+00:00")  # 22:48: after the 1h wait ran out

    def open_email(s):
        return Event("o1", "message_opened", "c1", opened,
                     {"send_id": s[0].send_id, "channel": "email"})

    out = cascade_run(tmp_path, EMAIL_THEN_SMS, [open_email], "[email, sms]", QUIET_SMS,
                      start=start)
    assert [x.channel for x in sends(out)] == ["email"]  # no SMS at 08:00
    assert [(d.channel, d.status, d.reason) for d in decisions(out)] == [
        ("email", SENT, ""), ("sms", DEFERRED, QUIET_HOURS_DEFERRED)]
    assert [o.outcome for o in out if isinstance(o, Outcome)] == ["opened"]
    assert [(r.action, r.reason) for r in out if isinstance(r, Lifecycle)][-1] == (
        "completed", "")
    # without the open, the held SMS goes at 08:00 Berlin
    out = cascade_run(tmp_path / "b", EMAIL_THEN_SMS, [], "[email, sms]", QUIET_SMS,
                      start=start)
    assert [(x.channel, x.ts) for x in sends(out)] == [
        ("email", start), ("sms", at_utc("2026-06-11T06:00:00+00:00"))]


def test_a_late_receipt_after_the_later_channel_went_changes_nothing(tmp_path):
    start = at_utc("2026-06-10T10:00:00+00:00")  # daytime: the SMS goes at the 1h timeout

    def open_email(s):
        return Event("o1", "message_opened", "c1", start + 2 * HOUR,
                     {"send_id": s[0].send_id, "channel": "email"})

    out = cascade_run(tmp_path, EMAIL_THEN_SMS, [open_email], "[email, sms]", QUIET_SMS,
                      start=start)
    assert [(x.channel, x.ts) for x in sends(out)] == [("email", start),
                                                       ("sms", start + HOUR)]
