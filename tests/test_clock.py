"""The clock module: time helpers and the live watermark clock."""

from __future__ import annotations

from cdp_triggers.clock import (
    ENDED,
    HELD,
    TICK_MS,
    ManualClock,
    Released,
    WatermarkClock,
    from_datetime,
    iso,
    to_datetime,
)
from cdp_triggers.durations import format_duration, parse_duration


def test_the_clock_is_held_back_to_what_the_shards_read_here_published():
    """Held (no timer fires) until every shard claimed here has published; then the slowest
    of them, never ahead of the wall; an ended shard holds nothing back."""
    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall)
    assert clock.now_ms() == 10_000_000  # nothing read here: wall time
    clock.claim("s0")
    clock.claim("s1")
    assert clock.now_ms() == HELD  # (a start, a restart)
    clock.publish("s0", 2_000_000)
    assert clock.now_ms() == HELD
    clock.publish("s1", 1_000_000)  # orders lag behind the clicks
    assert clock.now_ms() == 1_000_000
    clock.publish("s1", None)  # ended
    assert clock.now_ms() == 2_000_000
    clock.publish("s0", 20_000_000)  # clock skew: never ahead of the wall
    assert clock.now_ms() == wall.now_ms()


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


def test_timers_follow_the_marks_that_reached_their_worker():
    """Marks followed: a worker's timers fire by the lowest mark of every shard of the run
    that reached *its* keyed step (held until each shard has said something), never later
    than the published clock; another worker's marks do not count for it. A shard says
    where it is with every batch of events, when idle only every TICK_MS and when it has
    moved, and that it has ended at once."""
    import threading

    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall)
    clock.claim("s0")
    clock.publish("s0", 9_000_000)
    clock.follow_marks(["s0", "s1"])
    assert clock.timer_now() == HELD  # nothing reached this worker yet
    clock.tick((("s0", 8_000_000),))
    assert clock.timer_now() == HELD  # s1 (read elsewhere) has said nothing yet
    clock.tick((("s1", 8_500_000), ("s0", 7_000_000)))  # (an older mark does not go back)
    assert clock.timer_now() == 8_000_000
    clock.tick((("s0", ENDED),))
    assert clock.timer_now() == 8_500_000
    clock.tick((("s1", 9_500_000),))
    assert clock.timer_now() == 9_000_000  # never past what the shards here published

    other: list[int] = []
    t = threading.Thread(target=lambda: other.append(clock.timer_now()))
    t.start()
    t.join()
    assert other == [HELD]  # another worker: no mark has reached it

    assert clock.say("s0", 9_000_000, True) == Released("s0", 9_000_000)
    assert clock.say("s0", 9_000_000, True) == Released("s0", 9_000_000)  # events: always
    assert clock.say("s0", 9_000_100, False) is None  # idle: not before TICK_MS
    wall.advance(TICK_MS)
    assert clock.say("s0", 9_000_000, False) is None  # idle and not moved: nothing to say
    assert clock.say("s0", 9_000_100, False) == Released("s0", 9_000_100)
    assert clock.say("s0", None, False) == Released("s0", ENDED)  # ended: at once
    assert clock.say("s0", None, False) is None
    assert WatermarkClock(wall).say("s0", 1, True) is None  # marks not followed: none
