"""The clock module: time helpers and the live watermark clock."""

from __future__ import annotations

from cdp_triggers.clock import ManualClock, WatermarkClock, from_datetime, iso, to_datetime
from cdp_triggers.durations import format_duration, parse_duration


def test_watermark_clock_is_held_back_to_the_input_then_released_when_idle():
    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall, idle_ms=5_000)
    assert clock.now_ms() == 10_000_000  # nothing read yet: wall time
    clock.observe(1_000_000)  # reading a backlog hours behind
    assert clock.now_ms() == 1_000_000
    clock.observe(900_000)  # an older event does not move it back
    assert clock.now_ms() == 1_000_000
    wall.advance(4_999)
    assert clock.now_ms() == 1_000_000
    wall.advance(1)  # input quiet for idle_ms: timers of quiet keys follow the wall again
    assert clock.now_ms() == wall.now_ms()
    clock.observe(wall.now_ms() + 60_000)  # clock skew: never ahead of the wall
    assert clock.now_ms() == wall.now_ms()


def test_watermark_is_the_slowest_active_partition():
    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall, idle_ms=5_000)
    clock.observe(2_000_000, "clickstream:0")
    clock.observe(1_000_000, "orders:1")  # orders lag behind the clicks
    assert clock.now_ms() == 1_000_000
    wall.advance(3_000)
    clock.observe(2_500_000, "clickstream:0")  # clicks keep coming, orders go quiet
    wall.advance(2_000)
    assert clock.now_ms() == 2_500_000  # the quiet partition no longer holds it back


def test_time_conversions_round_trip():
    ms = 1_795_428_000_123
    assert from_datetime(to_datetime(ms)) == ms
    assert iso(ms) == "2026-11-23 10:00:00.123"


def test_durations():
    assert parse_duration("30m") == 1_800_000 and parse_duration("7d") == 604_800_000
    assert parse_duration(250) == 250
    assert format_duration(parse_duration("4h")) == "4h" and format_duration(1500) == "1500ms"
    for bad in ("3 hours", "-1m", "", True, -5, 1.5):
        try:
            parse_duration(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
