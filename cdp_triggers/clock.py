"""The one clock of the system: every `now` the engine sees comes from here.

Time is carried as integer epoch milliseconds (UTC) everywhere inside the engine:
cheap to compare, exact to add, and pickles small in Bytewax snapshots.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MS = 1
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
ENDED = 2**62  # what a shard that has ended has released: everything
TICK_MS = 20  # a live shard with nothing to release says how far it has got this often
HELD = 0  # the live clock while part of the input has said nothing yet: no timer fires


class Released:
    """What a live shard adds at the end of a batch: it has released every event before
    ``before`` (event time; :data:`ENDED` once it has ended). It travels behind the
    batch's events to every worker (:class:`Ticks`), so a worker that has it has every
    event the shard released for it before that time (``WatermarkClock.tick``)."""

    __slots__ = ("before", "shard")

    def __init__(self, shard: str, before: int) -> None:
        self.shard, self.before = shard, before

    def __eq__(self, other: object) -> bool:
        return (type(other) is Released and other.shard == self.shard
                and other.before == self.before)

    def __repr__(self) -> str:
        return f"Released({self.shard!r}, {self.before})"


class Ticks:
    """The :class:`Released` marks that reached a worker, handed to its keyed step behind
    the events that came with them (``(shard, before)`` pairs, as a key of their own that
    routes to that worker: see ``flows.pipeline``); ``worker``: its index (for metrics)."""

    __slots__ = ("marks", "worker")

    def __init__(self, marks: tuple[tuple[str, int], ...], worker: int = 0) -> None:
        self.marks, self.worker = marks, worker

    def __reduce__(self) -> tuple:
        return Ticks, (self.marks, self.worker)


class _View:
    """One worker's in-band view: each shard's latest mark that reached its keyed step."""

    __slots__ = ("before", "shards")

    def __init__(self) -> None:
        self.shards: dict[str, int] = {}
        self.before: int | None = None  # the lowest, once every shard of the run has said


class Clock(Protocol):
    """Something that says what time it is, in epoch milliseconds."""

    def now_ms(self) -> int: ...


class WallClock:
    """Live runs: the machine's UTC wall-clock time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """Tests and simulations: time moves only when told to."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def set(self, ms: int) -> None:
        self._now = ms

    def advance(self, ms: int) -> None:
        self._now += ms


def to_datetime(ms: int) -> datetime:
    """Epoch ms → aware UTC datetime (what Bytewax `notify_at` wants)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def from_datetime(dt: datetime) -> int:
    """Aware datetime → epoch ms; naive datetimes are taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def ch_time(ms: int) -> float:
    """Epoch ms → the JSON number a ClickHouse DateTime64(3) column reads exactly: seconds
    with the milliseconds as fraction (``1764500000.123``; the shortest float text of
    ms/1000 is those digits). Rows are written this way: formatting ISO text was 4 % of a
    flow's time."""
    return ms / 1000


def iso(ms: int) -> str:
    """Epoch ms → ClickHouse DateTime64(3) text, UTC (``2026-11-23 16:00:00.000``)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


@lru_cache(maxsize=512)
def local_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; an empty or unknown name reads as UTC."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_hour(ms: int, tz: str) -> int:
    """The hour of day (0–23) at epoch ``ms`` in zone ``tz`` (unknown zone: UTC)."""
    return datetime.fromtimestamp(ms / 1000, local_zone(tz)).hour


def next_local_hour(ms: int, tz: str, hour: int, within: int) -> int | None:
    """The first instant at or after ``ms`` in local ``hour`` of ``tz``: ``ms`` itself when
    it is already in that hour, else the start of the hour's next occurrence (a day whose
    DST change skips the hour is passed over); None when that is more than ``within`` away."""
    zone = local_zone(tz)
    local = datetime.fromtimestamp(ms / 1000, zone)
    if local.hour == hour:
        return ms
    for days in range(3):
        day = local.date() + timedelta(days=days)
        at = int(datetime(day.year, day.month, day.day, hour, tzinfo=zone).timestamp() * 1000)
        if at > ms and local_hour(at, tz) == hour:
            return at if at - ms <= within else None
    return None


class WatermarkClock:
    """Live runs: wall-clock time, held back to the event time the input has released.

    While the flow catches up on a backlog, wall time runs hours ahead of the events being
    read; firing timers by wall time alone would send reminders before the cancelling
    events (already in the backlog) are read. So ``now`` is the wall time, but at most the
    watermark each input shard read in this process *publishes* (the event time before
    which it has released everything; a live shard with nothing unread publishes the wall
    time, so an idle or sparse partition never holds the clock back).

    Timers go further (:meth:`follow_marks`, every live run): the sources publish as they
    release, before the released events reach their customers' keyed steps, maybe in
    another process. Each worker therefore fires timers, and prunes customers going
    dormant, only by the shards' in-band marks that reached *its* keyed step behind the
    events they cover (:meth:`tick`, :meth:`timer_now`), from every shard of the run, here
    or elsewhere: nothing fires before each has said something.

    One per process, shared by its workers: sources publish and say, each worker's keyed
    step ticks and reads its own view.
    """

    def __init__(self, wall: Clock | None = None, tick_ms: int = TICK_MS) -> None:
        self.wall = wall or WallClock()
        self.tick_ms = tick_ms
        self._published: dict[str, int] = {}  # shard read here → its watermark
        self._shards: set[str] = set()  # the shards read here that have not ended
        # marks followed: every shard of the run; each worker thread's view of what
        # reached its keyed step; when each local shard last said where it was
        self._run_shards: frozenset[str] | None = None
        self._views: dict[int, _View] = {}
        self._told: dict[str, tuple[int, int]] = {}  # shard → (wall, before) of its last mark

    def claim(self, shard: str) -> None:
        """A source in this process reads ``shard`` (it holds the clock until published)."""
        self._shards.add(shard)

    def publish(self, shard: str, watermark: int | None) -> None:
        """A local shard's watermark; None when it has ended (it holds nothing back)."""
        if watermark is None:
            self._published.pop(shard, None)
            self._shards.discard(shard)  # ended: it holds nothing back any more
        else:
            self._published[shard] = watermark

    def now_ms(self) -> int:
        w = self.wall.now_ms()
        if not self._shards <= self._published.keys():
            return HELD  # a shard read here has not published yet (a start, a restart)
        return min(w, *self._published.values()) if self._published else w

    def follow_marks(self, shards: list[str]) -> None:
        """Fire timers by the marks that reached each worker (:meth:`tick`), not by what the
        sources published: ``shards`` are all the run's shards, here or in other processes.
        A source publishes its watermark as it releases a batch, before the batch's events
        reach their customers' keyed steps (a parse, a hand-over to another worker, maybe
        another process). A timer fired by that word alone could fire before a cancel
        already released reached its customer: with ``grace: 0s``, a reminder a sorted
        replay cancels. A mark travels behind the events it covers instead, on the same
        path, like a watermark in Flink or Timely."""
        self._run_shards = frozenset(shards)

    @property
    def in_band(self) -> bool:
        return self._run_shards is not None

    def say(self, shard: str, released: int | None, with_events: bool) -> Released | None:
        """The mark a local shard adds at the end of a batch (``released``: before what it
        has released everything; None: it has ended), or None: with events, always; else
        when it has moved on and ``tick_ms`` has passed since the last (an idle live shard
        moves with the wall clock: a mark a poll would flood the flow; the wait is what a
        timer may wait for a mark from an idle shard)."""
        if self._run_shards is None:
            return None
        before = ENDED if released is None else released
        wall = self.wall.now_ms()
        last = self._told.get(shard)
        if not with_events and last is not None and (
                last[1] == before or (wall - last[0] < self.tick_ms and before != ENDED)):
            return None
        self._told[shard] = (wall, before)
        return Released(shard, before)

    def tick(self, marks: tuple[tuple[str, int], ...]) -> None:
        """Marks that reached the keyed step of the calling worker thread, behind every event
        they cover: its timers may now fire up to the lowest mark of all the run's shards."""
        ident = threading.get_ident()
        view = self._views.get(ident)
        if view is None:
            view = self._views[ident] = _View()
        shards = view.shards
        for shard, before in marks:
            if before > shards.get(shard, -ENDED):
                shards[shard] = before
        run = self._run_shards
        if run is not None and (view.before is not None or run <= shards.keys()):
            view.before = min(shards[s] for s in run)

    def timer_now(self) -> int:
        """The time a worker's timers fire by: :meth:`now_ms`, and, marks followed, at most
        the lowest mark that reached this worker from each shard of the run (:data:`HELD`
        until each has said something)."""
        now = self.now_ms()
        if self._run_shards is None:
            return now
        view = self._views.get(threading.get_ident())
        if view is None or view.before is None:
            return HELD
        return min(now, view.before)

    def reached_here(self) -> int | None:
        """Marks followed: :meth:`timer_now` of the calling worker, the time before which
        every event its customers will get from any shard has reached its keyed step (a
        late one aside); None when marks are not followed or a shard has said nothing yet.
        A customer going dormant is pruned at it (``CustomerLogic._hibernate``)."""
        if self._run_shards is None:
            return None
        now = self.timer_now()
        return None if now == HELD else now
