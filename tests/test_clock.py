"""The clock module: time helpers and the live watermark clock."""

from __future__ import annotations

from cdp_triggers.clock import (
    BEAT_MS,
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


def test_the_watermark_clock_remembers_what_was_released_when():
    """``released_before(p, as_of)``: what the process's shards had released at a past
    moment (an event released since may still be on its way to the engine). Remembered
    once every shard read here has published, for ``history_ms``, never newer than the
    moment asked."""
    wall = ManualClock(1_000_000)
    clock = WatermarkClock(wall, history_ms=10_000)
    clock.claim("a", ["clicks:0"])
    clock.claim("b", ["orders:0"])
    clock.publish("a", 900_000)
    assert clock.released_before("clicks:0", as_of=1_000_000) is None  # b not heard yet
    clock.publish("b", 800_000)
    for _ in range(300):  # 30 s, both shards 200 s behind the wall
        wall.advance(100)
        clock.publish("a", wall.now_ms() - 100_000)
        clock.publish("b", wall.now_ms() - 200_000)
    now = wall.now_ms()
    assert clock.released_before("clicks:0") == now - 200_000  # the slowest shard, now
    # noted as a published: b still at its value of 100 ms before (never newer than then)
    assert clock.released_before("clicks:0", as_of=now - 5_000) == now - 205_100
    assert clock.released_before("clicks:0", as_of=now - 5_050) == now - 205_200  # earlier
    assert clock.released_before("elsewhere:3", as_of=now) is None  # not read here
    assert clock.released_before("clicks:0", as_of=now - 25_000) is None  # forgotten
    assert len(clock._history) <= 2 * 10_000 // 100 + 2
    clock.publish("b", None)  # b ended: a alone from now on
    wall.advance(100)
    clock.publish("a", wall.now_ms() - 100_000)
    assert clock.released_before("clicks:0", as_of=wall.now_ms()) == wall.now_ms() - 100_000


def test_bundles_tell_other_processes_what_their_input_had_released():
    """``mark``: what a bundle cut in this process carries (its partitions, what they have
    released); ``heard``: the process it reaches remembers it by arrival time, and answers
    ``released_before`` for those partitions with ``as_of`` only (what had reached it by
    then). Its own bundles' marks say nothing new."""
    wall = ManualClock(1_000_000)
    there, here = WatermarkClock(wall), WatermarkClock(wall)
    there.claim("s1", ["clicks:1", "orders:1"])
    here.claim("s0", ["clicks:0"])
    there.publish("s1", 700_000)
    assert there.mark() is None  # not a cluster (no `run -a`): nobody to tell
    for clock in (there, here):
        clock.expect(["s0", "s1"])
    said = there.mark()
    assert said == (frozenset({"clicks:1", "orders:1"}), frozenset({"s1"}), 700_000)
    here.heard(said)
    wall.advance(1_000)
    there.publish("s1", 701_000)
    here.heard(there.mark())
    assert here.released_before("orders:1") is None  # not without as_of
    assert here.released_before("orders:1", as_of=999_999) is None  # nothing heard yet then
    assert here.released_before("orders:1", as_of=1_000_500) == 700_000
    assert here.released_before("clicks:1", as_of=wall.now_ms()) == 701_000
    assert here.released_before("clicks:7", as_of=wall.now_ms()) is None  # never heard of
    here.publish("s0", 650_000)
    here.heard(here.mark())  # a bundle of its own
    assert here._theirs.keys() == {frozenset({"clicks:1", "orders:1"})}


def test_a_cluster_clock_waits_for_every_shard_then_follows_what_their_processes_said():
    """In a live cluster a process holds its clock (no timer fires) until every shard of
    the run has been heard of, its own published and the others' told by their
    processes' marks (bundles and beats), then follows the slowest of them. A process
    beats every BEAT_MS, only in a cluster."""
    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall)
    clock.claim("s0", ["clicks:0"])
    assert clock.now_ms() == HELD  # its own shard has not published yet (a restart)
    clock.publish("s0", 9_000_000)
    assert clock.now_ms() == 9_000_000  # alone: as before
    assert not clock.beat_due()  # not a cluster
    clock.claim("s4", ["clicks:4"])  # a second worker's shard, not published yet
    clock.expect(["s0", "s1", "s2", "s4"])
    assert clock.mark() is None and clock.now_ms() == HELD  # s4: nothing to tell yet
    clock.publish("s4", 9_200_000)
    assert clock.mark() == (frozenset({"clicks:0", "clicks:4"}), frozenset({"s0", "s4"}),
                            9_000_000)
    assert clock.now_ms() == HELD  # s1 and s2 are read elsewhere and unheard
    assert clock.beat_due() and not clock.beat_due()  # once per BEAT_MS
    wall.advance(BEAT_MS)
    assert clock.beat_due()
    clock.heard((frozenset({"clicks:1"}), frozenset({"s1"}), 8_000_000))
    assert clock.now_ms() == HELD  # s2 still unheard
    clock.heard((frozenset({"clicks:2"}), frozenset({"s2"}), ENDED))  # its input ended
    assert clock.now_ms() == 8_000_000  # the slowest: s1's process, behind in a backlog
    clock.heard((frozenset({"clicks:1"}), frozenset({"s1"}), 9_500_000))
    assert clock.now_ms() == 9_000_000
    clock.heard(clock.mark())  # its own mark (a bundle between its own workers)
    assert clock.now_ms() == 9_000_000
    # a process of two workers: its first marks name the one shard claimed by then
    clock.expect(["s0", "s1", "s2", "s3", "s4"])
    clock.heard((frozenset({"clicks:3"}), frozenset({"s3"}), 7_000_000))
    assert clock.now_ms() == 7_000_000
    clock.heard((frozenset({"clicks:1", "clicks:3"}), frozenset({"s1", "s3"}), 9_900_000))
    assert clock.now_ms() == 9_000_000  # its early mark does not hold the clock for good


def test_timers_follow_the_marks_that_reached_their_worker():
    """Marks followed: a worker's timers fire by the lowest mark of every shard of the run
    that reached *its* keyed step (held until each shard has said something), never later
    than the published clock; another worker's marks do not count for it. A shard says
    where it is with every batch of events, when idle only every TICK_MS and when it has
    moved, and that it has ended at once."""
    import threading

    wall = ManualClock(10_000_000)
    clock = WatermarkClock(wall)
    clock.claim("s0", ["a:0"])
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
