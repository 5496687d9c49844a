"""The gateway simulator's reading habit: opens land in the customer's local reading hour,
and a message delivered in that hour is opened more often (what smart send time gains)."""

from __future__ import annotations

from cdp_triggers.clock import HOUR, local_hour
from cdp_triggers.gateway_sim import reading_hour, simulate
from cdp_triggers.records import Send
from tests.test_sendtime import at


def _send(i: int, ts: int, tz: str, customer: str) -> Send:
    return Send(f"s{i}", customer, "t", "marketing", "v", "i", 0, "email", "tpl", "", {}, ts,
                ts, tz)


def test_opens_follow_the_reading_hour_in_local_time() -> None:
    tz = "America/New_York"
    customers = [f"c{i}" for i in range(400)]
    morning = at("2026-05-04T03:00", tz)
    opens = in_habit = 0
    for i, c in enumerate(customers):
        for e in simulate(_send(i, morning + (i % 24) * HOUR, tz, c)):
            if e.type == "message_opened":
                opens += 1
                in_habit += local_hour(e.ts, tz) == reading_hour(c)
    assert opens > 40 and in_habit / opens > 0.9


def test_sending_in_the_reading_hour_is_opened_more() -> None:
    tz = "Europe/Berlin"
    customers = [f"k{i}" for i in range(3000)]

    def open_rate(sent_at) -> float:
        n = opened = 0
        for i, c in enumerate(customers):
            n += 1
            opened += any(e.type == "message_opened" for e in simulate(_send(i, sent_at(c), tz, c)))
        return opened / n

    base = at("2026-05-04T00:00", tz)
    in_habit = open_rate(lambda c: base + reading_hour(c) * HOUR)
    at_three = open_rate(lambda c: base + 3 * HOUR)  # nobody reads at 03:00 here
    assert in_habit > 1.8 * at_three
    assert simulate(_send(1, base, tz, "c1")) == simulate(_send(1, base, tz, "c1"))  # seeded
