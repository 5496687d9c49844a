"""Smart send time, pure: the read histogram is order-independent and decays; a message is
held to the customer's best local hour within its window, DST included."""

from __future__ import annotations

import doctest
import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import operators.sendtime as sendtime
from cdp_triggers.clock import DAY, HOUR, MINUTE
from operators.sendtime import Reads, hold_until, local_hour, send_time

BERLIN = "Europe/Berlin"
HALF = 30 * DAY


def at(text: str, tz: str = BERLIN) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def test_docstring_examples() -> None:
    assert doctest.testmod(sendtime).failed == 0


def test_opens_at_13_14_and_13_47_hold_the_next_message_to_13_00() -> None:
    reads = Reads()
    for t in (at("2026-03-02T13:14"), at("2026-03-04T13:47")):
        reads = reads.observe(t, BERLIN, HALF)
    assert reads.best() == 13
    due = at("2026-03-05T08:30")
    assert send_time(due, BERLIN, reads, within=DAY) == (at("2026-03-05T13:00"), "preferred_hour")
    inside = at("2026-03-05T13:40")  # due inside the hour: at once
    assert send_time(inside, BERLIN, reads, within=DAY) == (inside, "preferred_hour")


def test_the_histogram_does_not_depend_on_read_order() -> None:
    times = [at("2026-03-01T09:10"), at("2026-03-20T21:05"), at("2026-02-10T21:55"),
             at("2026-03-21T09:30")]
    results = set()
    for order in itertools.permutations(times):
        r = Reads()
        for t in order:
            r = r.observe(t, BERLIN, HALF)
        results.add((tuple((h, round(w, 9)) for h, w in r.weights), r.last, r.best()))
    assert len(results) == 1
    r = Reads()
    for t in times:
        r = r.observe(t, BERLIN, HALF)
    w = dict(r.weights)
    assert w[9] > w[21]  # the older 21h read counts less …
    assert r.best() == 9  # … so 9h wins once decay is applied


def test_too_few_reads_use_the_fallback_hour_or_go_at_once() -> None:
    one = Reads().observe(at("2026-03-02T19:00"), BERLIN, HALF)
    due = at("2026-03-05T08:30")
    assert one.best() is None
    assert send_time(due, BERLIN, one, DAY, fallback_hour=10) == (at("2026-03-05T10:00"),
                                                                  "fallback_hour")
    assert send_time(due, BERLIN, one, DAY) == (due, "at_once")


def test_a_best_hour_beyond_the_window_goes_at_once() -> None:
    reads = Reads()
    for t in (at("2026-03-02T07:05"), at("2026-03-03T07:15")):
        reads = reads.observe(t, BERLIN, HALF)
    due = at("2026-03-05T08:30")  # next 07:00 is 22.5 h away
    assert send_time(due, BERLIN, reads, within=12 * HOUR, fallback_hour=10) == (due, "at_once")
    assert send_time(due, BERLIN, reads, within=DAY)[0] == at("2026-03-06T07:00")


def test_local_time_follows_the_zone_and_dst() -> None:
    # 2026-03-29: Berlin skips 02:00–03:00; the next 02:00 hour is a day later
    due = at("2026-03-28T23:00")
    assert hold_until(due, BERLIN, 2, within=3 * DAY) == at("2026-03-30T02:00")
    assert local_hour(at("2026-07-01T12:00", "UTC"), "America/New_York") == 8
    assert local_hour(at("2026-07-01T12:00", "UTC"), "Nowhere/Unknown") == 12  # unknown: UTC
    assert hold_until(at("2026-07-01T12:59", "UTC"), "UTC", 13, MINUTE) == at(
        "2026-07-01T13:00", "UTC")
