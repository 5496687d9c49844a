"""Each catalogue trigger fires, cancels and re-enters as specified (pure engine)."""

from __future__ import annotations

from cdp_triggers.clock import DAY, HOUR, MINUTE
from cdp_triggers.records import (
    CANCELLED,
    CONDITION_NOT_MET,
    NO_CONSENT,
    REENTRY_COOLDOWN,
    REENTRY_ONCE,
    SENT,
    SUPPRESSED,
    StartMiss,
)
from state.profiles import DictProfileStore, Profile
from tests.engine_helpers import T0, at, cart, decisions, engine, ev, order, replay, sends


def view(at_min: float, product: str = "p1", customer: str = "c1"):
    return ev("product_viewed", at_min, customer, product_id=product, price=20.0)


def run(trigger, events, horizon, store=None):
    """The trigger's records (start misses aside: tests/test_start_misses.py)."""
    return [r for r in at(replay(engine(), events, horizon, store), trigger)
            if not isinstance(r, StartMiss)]


# ---- browse_abandonment -------------------------------------------------------------

def test_browse_two_views_within_an_hour_then_quiet_sends_once():
    out = run("browse_abandonment", [view(0), view(20)], T0 + DAY)
    [s] = sends(out)
    assert (s.channel, s.ts, s.variables["product_id"]) == ("push", T0 + 80 * MINUTE, "p1")


def test_browse_needs_two_views_of_the_same_product_within_the_hour():
    assert run("browse_abandonment", [view(0)], T0 + DAY) == []
    assert run("browse_abandonment", [view(0), view(90)], T0 + DAY) == []
    assert run("browse_abandonment", [view(0, "p1"), view(10, "p2")], T0 + DAY) == []


def test_browse_cancelled_by_carting_that_product_not_another():
    out = run("browse_abandonment", [view(0), view(10), cart(30, "p1")], T0 + DAY)
    assert sends(out) == [] and [d.status for d in decisions(out)] == [CANCELLED]
    out = run("browse_abandonment", [view(0), view(10), cart(30, "p9")], T0 + DAY)
    assert len(sends(out)) == 1


def test_browse_reentry_cooldown_is_seven_days():
    events = [view(0), view(10), view(3 * 60), view(3 * 60 + 5), view(8 * 24 * 60),
              view(8 * 24 * 60 + 5)]
    out = run("browse_abandonment", events, T0 + 10 * DAY)
    assert [(d.status, d.reason) for d in decisions(out)] == [
        (SENT, ""), (SUPPRESSED, REENTRY_COOLDOWN), (SENT, "")]


# ---- welcome_series -----------------------------------------------------------------

def test_welcome_series_three_messages_over_seven_days():
    out = run("welcome_series", [ev("signed_up", 0)], T0 + 8 * DAY)
    assert [(s.template, s.ts) for s in sends(out)] == [
        ("welcome_1", T0), ("welcome_2", T0 + 3 * DAY), ("welcome_3", T0 + 7 * DAY)]


def test_welcome_steps_two_and_three_skipped_once_the_customer_ordered():
    out = run("welcome_series", [ev("signed_up", 0), order(24 * 60)], T0 + 8 * DAY)
    assert [(d.template, d.status, d.reason) for d in decisions(out)] == [
        ("welcome_1", SENT, ""), ("welcome_2", SUPPRESSED, CONDITION_NOT_MET),
        ("welcome_3", SUPPRESSED, CONDITION_NOT_MET)]


def test_welcome_series_runs_once_per_customer():
    out = run("welcome_series", [ev("signed_up", 0), ev("signed_up", 10 * 24 * 60)],
              T0 + 12 * DAY)
    assert [d.reason for d in decisions(out) if d.step == 0] == ["", REENTRY_ONCE]


# ---- win_back -----------------------------------------------------------------------

def test_win_back_sixty_days_after_the_last_order_rearmed_by_each_order():
    assert sends(run("win_back", [order(0)], T0 + 59 * DAY)) == []
    [s] = sends(run("win_back", [order(0)], T0 + 61 * DAY))
    assert s.ts == T0 + 60 * DAY and s.variables["orders_count"] == 1
    [s] = sends(run("win_back", [order(0), order(30 * 24 * 60)], T0 + 100 * DAY))
    assert s.ts == T0 + 90 * DAY and s.variables["orders_count"] == 2


def test_win_back_starts_again_after_the_next_order():
    out = run("win_back", [order(0), order(70 * 24 * 60)], T0 + 140 * DAY)
    assert [s.ts for s in sends(out)] == [T0 + 60 * DAY, T0 + 130 * DAY]


# ---- order_status (transactional) -----------------------------------------------------

def status(type_: str, at_min: float, order_id: str = "o1", customer: str = "c1"):
    return ev(type_, at_min, customer, order_id=order_id)


def test_order_status_sends_at_once_for_each_status():
    events = [status("order_shipped", 0), status("order_delivered", 2 * 24 * 60),
              status("order_cancelled", 0, "o2")]
    out = run("order_status", events, T0 + 3 * DAY)
    got = sorted((s.variables["order_id"], s.variables["status"], s.ts) for s in sends(out))
    assert got == [("o1", "order_delivered", T0 + 2 * DAY), ("o1", "order_shipped", T0),
                   ("o2", "order_cancelled", T0)]


def test_order_status_is_sent_in_the_same_step_as_the_event():
    eng = engine()
    from state.customer import CustomerState
    st = CustomerState("c1")
    e = status("order_shipped", 0)
    store = DictProfileStore([Profile("c1", contacts=frozenset({"email"}))])
    out = at(eng.handle(st, e, e.ts, store.get), "order_status")
    assert [s.template for s in sends(out)] == ["order_status"]


def test_transactional_needs_no_marketing_consent_but_respects_a_refusal():
    store = DictProfileStore([
        Profile("c1", contacts=frozenset({"email", "sms"}), consents={"email:marketing": False}),
        Profile("c2", contacts=frozenset({"email", "sms"}),
                consents={"email:transactional": False}),
    ])
    out = run("order_status", [status("order_shipped", 0, "o1", "c1"),
                               status("order_shipped", 0, "o2", "c2")], T0 + HOUR, store)
    assert {(s.customer_id, s.channel) for s in sends(out)} == {("c1", "email"), ("c2", "sms")}
    assert [(d.customer_id, d.reason) for d in decisions(out) if d.status == SUPPRESSED] == [
        ("c2", NO_CONSENT)]


# ---- custom event: vip_welcome ----------------------------------------------------------

def test_custom_event_trigger_defined_only_in_yaml():
    seg = "segment_entered"
    out = run("vip_welcome", [ev(seg, 0, segment="vip"), ev(seg, 0, "c2", segment="gold")],
              T0 + DAY)
    [s] = sends(out)
    assert (s.customer_id, s.template, s.ts) == ("c1", "vip_welcome", T0 + HOUR)
    out = run("vip_welcome", [ev(seg, 0, segment="vip"), ev("segment_left", 30, segment="vip")],
              T0 + DAY)
    assert sends(out) == [] and decisions(out)[0].status == CANCELLED


# ---- price_drop / back_in_stock (derived events, see test_interest.py) ---------------------

def test_price_drop_and_back_in_stock_triggers_consume_derived_events():
    events = [ev("price_dropped", 0, product_id="p1", price=15.0, old_price=20.0,
                 interest="browse"),
              ev("back_in_stock", 0, "c2", product_id="p2", interest="browse")]
    out = replay(engine(), events, T0 + HOUR)
    pd, bis = sends(at(out, "price_drop")), sends(at(out, "back_in_stock"))
    assert [(s.customer_id, s.variables) for s in pd] == [
        ("c1", {"key": "p1", "product_id": "p1", "price": 15.0, "old_price": 20.0})]
    assert [(s.customer_id, s.channel) for s in bis] == [("c2", "push")]
