"""The one clock of the system: every `now` the engine sees comes from here.

Time is carried as integer epoch milliseconds (UTC) everywhere inside the engine:
cheap to compare, exact to add, and pickles small in Bytewax snapshots.
"""

from __future__ import annotations

import bisect
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
HISTORY_STEP_MS = 100  # how finely WatermarkClock remembers what was released
_LAST = 2**63  # sorts after every watermark: bisect to the last entry at a wall time
ENDED = 2**62  # what a process whose every shard has ended has released: everything
BEAT_MS = 500  # a process with peers tells them what it has released at least this often
TICK_MS = 20  # a live shard with nothing to release says how far it has got this often
HELD = 0  # the live clock while part of the input has said nothing yet: no timer fires


class Beat:
    """The item a source adds to a batch when its process is due to tell the others what
    it has released (:meth:`WatermarkClock.beat_due`): the engine's input step turns it
    into a mark for every worker (``flows.pipeline``). Carries nothing itself."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "BEAT"


BEAT = Beat()


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
    routes to that worker: see ``flows.pipeline``)."""

    __slots__ = ("marks",)

    def __init__(self, marks: tuple[tuple[str, int], ...]) -> None:
        self.marks = marks

    def __reduce__(self) -> tuple:
        return Ticks, (self.marks,)


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


Mark = tuple[frozenset[str], frozenset[str], int]  # (partitions, shards, released before)


class WatermarkClock:
    """Live runs: wall-clock time, held back to the event time the input has released.

    While the flow catches up on a backlog, wall time runs hours ahead of the events being
    read; firing timers by wall time alone would send reminders before the cancelling
    events (already in the backlog) are read. So ``now`` is the wall time, but at most:

    * the watermark each input shard read in this process *publishes* (the event time
      before which it has released everything; a live shard with nothing unread publishes
      the wall time, so an idle or sparse partition never holds the clock back);
    * for shards read in another process of a cluster (:meth:`expect`), what that
      process said last in its bundles of events and beats (:meth:`heard`); nothing fires
      before every shard has been heard of. Where the peers are not known, the newest
      event time *observed* from each partition read elsewhere, for as long as it sent
      something in the last ``idle_ms``.

    One per process, shared by its workers: sources publish, the engine reads. It also
    remembers, for the last ``history_ms``, what had been released at each moment
    (:meth:`released_before` ``as_of``), for decisions that must not count on events
    released but still on their way to the engine: by the shards of this process, and by
    those of other processes as the bundles of events they send say (:meth:`mark`,
    :meth:`heard`).
    """

    def __init__(self, wall: Clock | None = None, idle_ms: int = 5 * SECOND,
                 history_ms: int = 15 * MINUTE, tick_ms: int = TICK_MS) -> None:
        self.wall = wall or WallClock()
        self.idle_ms = idle_ms
        self.tick_ms = tick_ms
        self.history_ms = history_ms
        # (wall time, min published watermark then), oldest first, HISTORY_STEP_MS apart
        self._history: list[tuple[int, int]] = []
        self._lock = threading.Lock()  # the workers' sources publish concurrently
        self._published: dict[str, int] = {}  # shard read here → its watermark
        self._local: set[str] = set()  # partitions read here (observations skip them)
        self._shards: set[str] = set()  # the shards read here that have not ended
        self._mine: frozenset[str] = frozenset()  # _local, as the bundles sent from here say
        self._claimed: set[str] = set()  # every shard read here, ended ones too
        self._mine_shards: frozenset[str] = frozenset()  # _claimed, as a mark says it
        # a cluster: every shard of the run (``expect``); those read elsewhere hold the
        # clock until heard of, then to what their processes' marks said last
        self._expected: frozenset[str] | None = None
        self._said: dict[str, int] = {}  # a shard read elsewhere → what its process said last
        self._beat_at = -BEAT_MS
        # another process's partitions (as its bundles name them) → its history, and
        # each of those partitions → that same history
        self._theirs: dict[frozenset[str], list[tuple[int, int]]] = {}
        self._remote_history: dict[str, list[tuple[int, int]]] = {}
        self._newest: dict[str, int] = {}  # remote partition → newest event time seen
        self._seen_at: dict[str, int] = {}  # remote partition → wall time of its last event
        # in band (``follow_marks``): every shard of the run; each worker thread's view of
        # what reached its keyed step; when each local shard last said where it was
        self._run_shards: frozenset[str] | None = None
        self._views: dict[int, _View] = {}
        self._told: dict[str, tuple[int, int]] = {}  # shard → (wall, before) of its last mark

    def claim(self, shard: str, partitions: list[str]) -> None:
        """A source in this process reads ``partitions`` as ``shard``."""
        self._local.update(partitions)
        self._shards.add(shard)
        self._claimed.add(shard)
        self._mine = frozenset(self._local)
        self._mine_shards = frozenset(self._claimed)

    def expect(self, shards: list[str]) -> None:
        """A cluster of several processes reads these shards (all of them, here or not):
        until each one read elsewhere has been heard of (:meth:`heard`), nothing is known
        of what its input holds, and the clock is held (no timer fires); then it is held
        to what their processes said last, as to a local shard's watermark. Without it a
        process restarting with its peers fired the timers of customers read elsewhere
        by the wall clock, before the peer had read the cancels in its backlog."""
        self._expected = frozenset(shards)

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

    def beat_due(self) -> bool:
        """Whether a source of this process should add a :data:`BEAT` to its batch now: in
        a cluster, every ``BEAT_MS`` (a peer with nothing to send would otherwise say
        nothing, and hold the others' clocks)."""
        if self._expected is None or not self._claimed:
            return False
        wall = self.wall.now_ms()
        with self._lock:
            if wall - self._beat_at < BEAT_MS:
                return False
            self._beat_at = wall
        return True

    def publish(self, shard: str, watermark: int | None) -> None:
        """A local shard's watermark; None when it has ended (it holds nothing back)."""
        if watermark is None:
            self._published.pop(shard, None)
            self._shards.discard(shard)  # ended: it holds nothing back any more
        else:
            self._published[shard] = watermark
        self._remember()

    def _all_published(self) -> bool:
        """Every shard read here (and not ended) has published its watermark."""
        return self._shards <= self._published.keys()

    def _remember(self) -> None:
        """Note the process's released time now, at most once per ``HISTORY_STEP_MS``
        (a skipped value is newer than the one kept for its moment: reading the kept one
        is the cautious side)."""
        if not self._published or not self._all_published():
            return  # a shard that has not published yet may hold anything back
        wall = self.wall.now_ms()
        with self._lock:
            self._note(self._history, wall, min(self._published.values()))

    def _note(self, hist: list[tuple[int, int]], wall: int, released: int) -> None:
        """Append to a history (lock held), trimmed to ``history_ms``."""
        if hist and wall - hist[-1][0] < HISTORY_STEP_MS:
            return
        hist.append((wall, released))
        if len(hist) > 2 * self.history_ms // HISTORY_STEP_MS + 2:
            cut = bisect.bisect_left(hist, (wall - self.history_ms,))
            del hist[:max(cut - 1, 0)]  # (one older entry answers its own moment)

    def mark(self) -> Mark | None:
        """What a bundle of events cut here tells the process it goes to: the partitions
        and shards read here, and the event time before which they have released
        everything (None outside a cluster, before every shard here has published, or
        when none is read here)."""
        published = self._published
        if self._expected is None or not self._claimed or not self._all_published():
            return None
        return (self._mine, self._mine_shards,
                min(published.values()) if published else ENDED)

    def heard(self, mark: Mark) -> None:
        """A bundle from another process arrived with its :meth:`mark`: the events its
        partitions released before that time are here, or on their way to this process's
        keyed steps. (A bundle of this process's own says nothing new.)"""
        partitions, shards, released = mark
        if shards <= self._claimed:
            return
        said = self._said
        for shard in shards:  # (per shard: a process's first marks may name only some)
            said[shard] = released
        wall = self.wall.now_ms()
        with self._lock:
            hist = self._theirs.get(partitions)
            if hist is None:
                hist = self._theirs[partitions] = []
                for p in partitions:
                    self._remote_history[p] = hist
            self._note(hist, wall, released)

    def observe(self, event_ts: int, partition: str = "") -> None:
        """An event the engine got from ``partition``; only partitions read elsewhere count,
        and only where the peers are unknown (a cluster follows what they say instead)."""
        if (self._expected is not None or partition in self._local
                or partition.startswith("derived:")):
            return
        self._seen_at[partition] = self.wall.now_ms()
        if event_ts > self._newest.get(partition, -1):
            self._newest[partition] = event_ts

    def released_before(self, partition: str, as_of: int | None = None) -> int | None:
        """Event time before which ``partition``'s shard has released everything, when that
        shard is read in this process (else None): no event released later from it can be
        earlier (a late one aside).

        ``as_of`` (wall ms): what had been released at that moment instead of now. An event
        released since may still be on its way to its customer's worker (between the
        source and the keyed step, or to another thread); one released after ``as_of``
        cannot be earlier than this. None when the history does not reach back that far.

        A partition read in another process answers only with ``as_of``: what the
        bundles that had reached this process by then said (:meth:`heard`)."""
        if partition not in self._local:
            hist = self._remote_history.get(partition)
            if hist is None or as_of is None:
                return None
        elif not self._published:
            return None
        elif as_of is None:
            return min(self._published.values())
        else:
            hist = self._history
        with self._lock:
            i = bisect.bisect_right(hist, (as_of, _LAST))
            return hist[i - 1][1] if i else None

    def now_ms(self) -> int:
        w = self.wall.now_ms()
        if not self._all_published():
            return HELD  # a shard read here has not published yet (a start, a restart)
        low = min(self._published.values(), default=w)
        if self._expected is not None:  # a cluster: what the other processes said
            said = self._said
            if not self._expected <= self._claimed | said.keys():
                return HELD
            return min(w, low, *tuple(said.values()))
        for p, ts in self._newest.items():
            if ts < low and w - self._seen_at[p] < self.idle_ms:
                low = ts
        return min(w, low)
