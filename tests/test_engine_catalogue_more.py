"""The list-condition catalogue triggers on event timelines (config/catalogue): replenishment
(a consumable ordered → N days → reminder, cancelled by a re-purchase of that product) and
review request (delivered → N days → e-mail, skipped or cancelled by a review of that
order)."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import T0, at, custom_engine, decisions, ev, lifecycle, live, replay, sends

from cdp_triggers.clock import DAY
from cdp_triggers.records import StartMiss
from operators.engine import Engine

D = 24 * 60  # a day in minutes
HORIZON = T0 + 60 * DAY


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return custom_engine(tmp_path_factory.mktemp("catalogue"))


def buy(day: float, *items: tuple[str, str], order: str = "", customer: str = "c1") -> object:
    """An order of (product, category) items."""
    return ev("order_placed", day * D, customer, order_id=order or f"o{day}", total=12.0,
              currency="EUR", items=[{"product_id": p, "quantity": 1, "price": 6.0,
                                      "category": c} for p, c in items])


def review(day: float, order: str, customer: str = "c1") -> object:
    return ev("review_submitted", day * D, customer, order_id=order, product_id="p1", rating=5)


# ---- replenishment ------------------------------------------------------------------------

def test_consumable_order_gets_a_reminder_after_30_days(eng: Engine) -> None:
    out = at(replay(eng, [buy(0, ("coffee", "grocery"), ("mug", "home"))], HORIZON),
             "replenishment")
    (send,) = sends(out)
    assert (send.ts, send.channel, send.template) == (T0 + 30 * DAY, "email",
                                                      "replenishment_reminder")


def test_no_consumable_no_reminder(eng: Engine) -> None:
    out = at(replay(eng, [buy(0, ("mug", "home"))], HORIZON), "replenishment")
    assert not sends(out) and not lifecycle(out, "started")
    assert [m.reason for m in out if isinstance(m, StartMiss)] == ["start_condition_not_met"]


def test_repurchase_of_that_product_cancels(eng: Engine) -> None:
    events = [buy(0, ("coffee", "grocery"), ("mug", "home")), buy(12, ("coffee", "grocery"))]
    out = at(replay(eng, events, HORIZON), "replenishment")
    first = [r for r in lifecycle(out, "cancelled") if r.instance_key == "o0"]
    assert first and first[0].reason == "order_placed" and first[0].ts == T0 + 12 * DAY
    # the second order (a consumable too) has its own reminder, 30 days after it
    assert [(s.ts, s.variables["key"]) for s in sends(out)] == [(T0 + 42 * DAY, "o12")]


def test_other_products_do_not_cancel(eng: Engine) -> None:
    events = [buy(0, ("coffee", "grocery")), buy(12, ("mug", "home"), ("lamp", "home"))]
    out = at(replay(eng, events, HORIZON), "replenishment")
    assert not lifecycle(out, "cancelled")
    assert [s.ts for s in sends(out)] == [T0 + 30 * DAY]


# ---- review request -----------------------------------------------------------------------

def delivered(day: float, order: str, customer: str = "c1") -> object:
    return ev("order_delivered", day * D, customer, order_id=order)


def test_delivered_order_gets_a_review_request(eng: Engine) -> None:
    out = at(replay(eng, [delivered(0, "o1")], HORIZON), "review_request")
    (send,) = sends(out)
    assert (send.ts, send.channel, send.variables) == (T0 + 5 * DAY, "email",
                                                       {"key": "o1", "order_id": "o1"})


def test_a_review_of_that_order_cancels_it(eng: Engine) -> None:
    out = at(replay(eng, [delivered(0, "o1"), review(2, "o1")], HORIZON), "review_request")
    assert not sends(out)
    (cancelled,) = lifecycle(out, "cancelled")
    assert cancelled.reason == "review_submitted"


def test_a_review_of_another_order_does_not(eng: Engine) -> None:
    out = at(replay(eng, [delivered(0, "o1"), review(2, "o7")], HORIZON), "review_request")
    assert [s.variables["order_id"] for s in sends(out)] == ["o1"]


def test_reviewed_before_delivery_is_skipped(eng: Engine) -> None:
    """A review read before the delivery (the start) is no exit; the step's `when` counts
    the customer's reviews of that order (customer.events.review_submitted by key)."""
    out = at(replay(eng, [review(-1, "o1"), delivered(0, "o1"), delivered(0.5, "o2")],
                    HORIZON), "review_request")
    by_key = {d.instance_id: (d.status, d.reason) for d in decisions(out)}
    assert sorted(by_key.values()) == [("sent", ""), ("suppressed", "condition_not_met")]
    assert [s.variables["order_id"] for s in sends(out)] == ["o2"]


def test_catalogue_replays_and_runs_live_alike(tmp_path: Path) -> None:
    events = sorted([buy(0, ("coffee", "grocery"), customer="a"),
                     buy(3, ("coffee", "grocery"), customer="a"),
                     buy(1, ("soap", "beauty"), customer="b"), buy(9, ("x", "toys"), customer="b"),
                     delivered(2, "o1", "a"), review(4, "o1", "a"), delivered(2, "o2", "b")],
                    key=lambda e: e.ts)
    a = replay(custom_engine(tmp_path / "a"), events, HORIZON)
    b = live(custom_engine(tmp_path / "b"), events, HORIZON)
    assert sorted(s.send_id for s in sends(a)) == sorted(s.send_id for s in sends(b))
    assert {s.trigger_id for s in sends(a)} >= {"replenishment", "review_request"}
