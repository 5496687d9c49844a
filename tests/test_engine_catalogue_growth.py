"""The catalogue across the retail journey: each further shipped trigger fires, is cancelled
and is skipped as its YAML says (pure engine, shipped triggers, neutral policy)."""

from __future__ import annotations

from cdp_triggers.clock import DAY, HOUR, MINUTE
from cdp_triggers.records import CANCELLED, CONDITION_NOT_MET, SegmentChange, StartMiss
from config.loader import load_config
from tests.engine_helpers import T0, at, cart, decisions, engine, ev, order, replay, sends

SHIPPED = {t.id for t in load_config().triggers}


def run(trigger: str, events, horizon: int):
    return [r for r in at(replay(engine(), events, horizon), trigger)
            if not isinstance(r, StartMiss)]


def sent(trigger: str, events, horizon: int) -> list[tuple[str, int, str]]:
    """(channel, minutes after T0, template) of each send of ``trigger``."""
    return [(s.channel, (s.ts - T0) // MINUTE, s.template)
            for s in sends(run(trigger, events, horizon))]


def test_the_catalogue_has_at_least_twenty_triggers() -> None:
    assert len(SHIPPED) >= 20, sorted(SHIPPED)


def test_post_purchase_cross_sell_three_days_later_unless_a_newer_order() -> None:
    [s] = sends(run("post_purchase_cross_sell", [order(0)], T0 + 5 * DAY))
    assert (s.channel, s.ts, s.template) == ("email", T0 + 3 * DAY, "cross_sell")
    assert s.variables["order_id"]
    out = run("post_purchase_cross_sell", [order(0), order(24 * 60)], T0 + 10 * DAY)
    assert [d.status for d in decisions(out)].count(CANCELLED) == 1
    assert [(s.ts - T0) // DAY for s in sends(out)] == [4]  # the newer order's


def test_second_order_nudge_only_for_first_time_buyers() -> None:
    assert sent("second_order_nudge", [order(0)], T0 + 20 * DAY) == [
        ("email", 14 * 24 * 60, "second_order")]
    assert sent("second_order_nudge", [order(0), order(3 * 24 * 60)], T0 + 20 * DAY) == []


def test_first_order_thanks_after_two_hours_unless_cancelled() -> None:
    first = order(0)
    assert sent("first_order_thanks", [first], T0 + DAY) == [
        ("email", 120, "first_order_thanks")]
    cancel = ev("order_cancelled", 30, order_id=first.props["order_id"])
    assert sent("first_order_thanks", [first, cancel], T0 + DAY) == []


def test_high_value_thanks_from_300() -> None:
    assert sent("high_value_thanks", [order(0, total=350.0)], T0 + 2 * DAY) == [
        ("email", 24 * 60, "high_value_thanks")]
    assert sent("high_value_thanks", [order(0, total=299.0)], T0 + 2 * DAY) == []


def test_payment_reminder_is_transactional_and_cancelled_by_the_payment() -> None:
    o = order(0)
    mail, sms = sends(run("payment_reminder", [o], T0 + DAY))  # e-mail unread 2 h: SMS
    assert (mail.channel, mail.ts, mail.trigger_kind) == ("email", T0 + HOUR, "transactional")
    assert (sms.channel, sms.ts) == ("sms", T0 + 3 * HOUR)
    paid = ev("order_paid", 10, order_id=o.props["order_id"], amount=20.0)
    assert sent("payment_reminder", [o, paid], T0 + DAY) == []
    other = ev("order_paid", 10, order_id="another", amount=20.0)  # another order's payment
    assert len(sent("payment_reminder", [o, other], T0 + DAY)) == 2


def test_delivery_delayed_five_days_after_shipping_unless_delivered() -> None:
    shipped = ev("order_shipped", 0, order_id="o1")
    assert sent("delivery_delayed", [shipped], T0 + 7 * DAY) == [
        ("email", 5 * 24 * 60, "delivery_delayed")]
    delivered = ev("order_delivered", 2 * 24 * 60, order_id="o1")
    assert sent("delivery_delayed", [shipped, delivered], T0 + 7 * DAY) == []


def test_order_cancelled_followup_unless_ordered_again() -> None:
    cancelled = ev("order_cancelled", 0, order_id="o1")
    assert sent("order_cancelled_followup", [cancelled], T0 + 2 * DAY) == [
        ("email", 24 * 60, "order_cancelled_followup")]
    assert sent("order_cancelled_followup", [cancelled, order(60)], T0 + 2 * DAY) == []


def test_cart_free_shipping_between_60_and_100_checked_again_when_due() -> None:
    assert sent("cart_free_shipping", [cart(0, quantity=7)], T0 + DAY) == [
        ("push", 20, "free_shipping_nudge")]
    assert sent("cart_free_shipping", [cart(0, quantity=12)], T0 + DAY) == []
    out = run("cart_free_shipping", [cart(0, quantity=7), cart(10, "p2", quantity=4)],
              T0 + DAY)  # 110 by the time it is due: skipped
    assert sends(out) == [] and [d.reason for d in decisions(out)] == [CONDITION_NOT_MET]


def test_newsletter_welcome_on_an_email_marketing_opt_in() -> None:
    def consent(granted: bool, channel: str = "email"):
        return ev("consent_changed", 0, channel=channel, category="marketing",
                  granted=granted)

    assert sent("newsletter_welcome", [consent(True)], T0 + DAY) == [
        ("email", 10, "newsletter_welcome")]
    assert sent("newsletter_welcome", [consent(False)], T0 + DAY) == []
    assert sent("newsletter_welcome", [consent(True, "sms")], T0 + DAY) == []


def test_loyalty_tier_upgrade_at_once_naming_the_tier() -> None:
    def tier(direction: str):
        return ev("loyalty_tier_changed", 0, tier="gold", previous="silver",
                  direction=direction)

    [s] = sends(run("loyalty_tier_upgrade", [tier("up")], T0 + DAY))
    assert (s.channel, s.ts, s.variables["tier"]) == ("push", T0, "gold")
    assert sent("loyalty_tier_upgrade", [tier("down")], T0 + DAY) == []


def test_wishlist_versions_take_wished_products_from_the_general_ones() -> None:
    def drop(interest: str):
        return ev("price_dropped", 0, product_id="p1", price=15.0, old_price=20.0,
                  interest=interest)

    assert sent("wishlist_price_drop", [drop("wishlist")], T0 + DAY) == [
        ("push", 0, "wishlist_price_drop")]
    assert sent("price_drop", [drop("wishlist")], T0 + DAY) == []
    assert sent("wishlist_price_drop", [drop("browse")], T0 + DAY) == []
    assert len(sent("price_drop", [drop("browse")], T0 + DAY)) == 1
    stock = ev("back_in_stock", 0, product_id="p1", interest="wishlist")
    assert sent("wishlist_back_in_stock", [stock], T0 + DAY) == [
        ("push", 0, "wishlist_back_in_stock")]
    assert sent("back_in_stock", [stock], T0 + DAY) == []


def test_non_openers_enter_their_segment_and_are_tried_on_push() -> None:
    receipts = [ev("message_delivered", i * 24 * 60, send_id=f"s{i}", channel="email")
                for i in range(3)]
    out = replay(engine(), receipts, T0 + 4 * DAY)
    changes = [(c.segment, c.action) for c in out if isinstance(c, SegmentChange)]
    assert ("non_openers", "entered") in changes
    [s] = sends(at(out, "reengage_non_openers"))
    assert (s.channel, s.template) == ("push", "reengage")
    opened = ev("message_opened", 2 * 24 * 60 + 30, send_id="s2", channel="email")
    out = replay(engine(), [*receipts, opened], T0 + 4 * DAY)
    assert sends(at(out, "reengage_non_openers")) == []  # an open: never a non-opener


def test_rfm_at_risk_when_a_frequent_buyer_goes_quiet() -> None:
    orders = [order(i * 20 * 24 * 60, total=150.0) for i in range(4)]  # 4 orders, 60 days
    out = replay(engine(), orders, T0 + 260 * DAY)
    entered = [c for c in out if isinstance(c, SegmentChange) and c.segment == "at_risk"
               and c.action == "entered"]
    assert entered, "four orders then months of silence must reach at_risk"
    [s] = sends(at(out, "rfm_at_risk"))
    assert s.ts == entered[0].ts + 2 * HOUR and s.channel == "email"
