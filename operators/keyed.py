"""Bytewax glue: the pure engine as one ``stateful_batch`` step keyed by customer_id.

Two clock modes, same engine code:

* ``live``: ``now`` is the injected clock (in production the wall time held back to the
  input's low watermark, ``cdp_triggers.clock.WatermarkClock``); timers fire by what of
  it reached this worker in band (the shards' marks, behind their events: a
  :class:`~cdp_triggers.clock.Ticks` item under the route key of their bundle); keys
  without new events are woken by Bytewax ``notify_at`` at their next deadline (+ grace).
* ``replay``: ``now`` is the events' own time per key (never going back); at end of input
  every key fires what is due up to ``horizon_ms``. Deterministic for the same input.
"""

from __future__ import annotations

import bisect
import logging
import math
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bytewax.operators import StatefulBatchLogic

from cdp_triggers.clock import HELD, Clock, Ticks, WallClock, to_datetime
from cdp_triggers.events import Event, Rejected, processing_error
from cdp_triggers.metrics import observe_timer_lateness_ms, timer_clock_lag
from cdp_triggers.records import (
    Conversion,
    Decision,
    Duplicate,
    InputSeen,
    Lifecycle,
    Outcome,
    Output,
    Profile,
    ProfileUpdate,
    SegmentChange,
    Send,
)
from cdp_triggers.shutdown import STOP
from operators.engine import Engine, ProfileLookup
from operators.routing import Topology
from state.customer import CustomerState

log = logging.getLogger(__name__)

RETRY_MS = 250  # a deadline the held-back clock has not reached yet is retried this often
LIVE_RETRY_MS = 10  # ... or this soon when the clock is held back less than RETRY_MS (live)
EXPIRY_SLACK_MS = 1_000  # a wake to discard what expired comes this much after it can

Mode = Literal["live", "replay"]


@dataclass
class EngineRuntime:
    """What each worker needs to run the engine; profile lookups are built per process."""

    engine: Engine
    profiles_factory: Callable[[], ProfileLookup]
    mode: Mode = "live"
    clock: Clock = field(default_factory=WallClock)
    horizon_ms: int | None = None
    loopback: Callable[[Send], list[Event]] | None = None  # simulated gateway (demo, tests)
    # read these customers' profiles in one round trip ahead of the keyed step (the store's
    # ``warm``: the batch's customers, and those of them sure to be asked, whose timers
    # the batch fires); None: each activation that needs a profile reads it alone
    prefetch: Callable[[list[str], list[str]], None] | None = None
    # Bytewax asks for snapshots at every epoch even without recovery; only a run WITH
    # recovery needs them to be independent copies (they are serialised later).
    copy_snapshots: bool = True
    # a customer idle this long (wall time) is compacted: pruned at a time no later event
    # can precede, then pickled (or discarded when nothing remains). Decision-neutral.
    idle_ttl_ms: int | None = 60_000
    # the run's worker count, for moving events to their customers' workers in bundles
    topology: Topology = field(default_factory=Topology)
    # with ``prefetch``: the next timer of each of this process's customers that has one
    # (dormant ones included), so that reads can be made ahead for the timers that fire
    timers: dict[str, int] = field(default_factory=dict)
    _ahead: tuple[int, list[str], int] | None = None  # (until, due ids sorted, next unread)
    clock_lag: dict[int, Any] = field(default_factory=dict)  # worker → its lag gauge
    _unplanned: int = 0  # customers about to decide that no read ahead covered, since a scan
    _profiles: ProfileLookup | None = None

    @property
    def wall(self) -> Clock:
        """The unheld wall clock behind ``clock`` (for scheduling Bytewax notifications)."""
        return getattr(self.clock, "wall", self.clock)

    def timer_now(self) -> int:
        """The time this worker's timers fire by (live): the clock's, and where the run
        follows in-band marks, no later than the marks that reached this worker
        (``WatermarkClock.timer_now``)."""
        clock = self.clock
        timer_now = getattr(clock, "timer_now", None)
        return timer_now() if timer_now is not None else clock.now_ms()

    def profiles(self) -> ProfileLookup:
        if self._profiles is None:
            self._profiles = self.profiles_factory()
        return self._profiles

    def sure_reads(self, keyed: list[tuple[str, Event]]) -> list[str]:
        """The customers of a batch whose timers their events will fire (they decide, and
        read their profiles, unless nothing is due to send)."""
        timers = self.timers
        return [cid for cid, e in keyed if timers.get(cid, _NO_TIMER) <= e.ts]

    def read_ahead(self, customer_id: str, until: int) -> None:
        """A customer whose timer is due by ``until`` is about to decide (a notification, or
        the end of input). Bytewax wakes the customers due at once in key order, so their
        profiles are read ahead in that order, ``READ_AHEAD`` per round trip, instead of
        one each: a date campaign due for many customers at 10:00, or a replay's end.
        Which customers are due is found by a scan of ``timers``, made only once the round
        trips it would have saved since the last scan outweigh its cost (a lone timer
        never pays for a scan of a large registry; a burst soon does)."""
        if self.prefetch is None:
            return
        at = self.timers.get(customer_id)
        if at is None or at > until:
            return  # nothing due (the end of input wakes every customer): it reads nothing
        ahead = self._ahead
        # a list made earlier covers the customer for the timer it was due with then, not
        # for a later one (a campaign that comes round again)
        if ahead is None or at > ahead[0] or not _holds(ahead[1], customer_id):
            self._unplanned += 1
            if self._unplanned * READ_COST < len(self.timers) * SCAN_COST:
                return
            self._unplanned = 0
            # the worker threads of a process share ``timers``: list() copies it in one
            # step (no Python code runs in between), a generator over it could see it change
            timers = list(self.timers.items())
            ahead = self._ahead = (until, sorted(c for c, t in timers if t <= until), 0)
        _, due, warmed = ahead
        i = bisect.bisect_left(due, customer_id)
        if i < warmed or i >= len(due) or due[i] != customer_id:
            return  # read ahead already, or no timer due
        chunk = due[i:i + READ_AHEAD]
        self._ahead = (until, due, i + len(chunk))
        self.prefetch(chunk, chunk)

    def note_timer(self, customer_id: str, at: int | None) -> None:
        if self.prefetch is None:
            return
        if at is None:
            self.timers.pop(customer_id, None)
        else:
            self.timers[customer_id] = at

    def builder(self, resume: CustomerState | Dormant | bytes | None) -> CustomerLogic:
        if isinstance(resume, bytes):  # a snapshot: the stored state (see snapshot)
            resume = CustomerState.from_bytes(resume)
        if isinstance(resume, CustomerState) and not resume.customer_id:
            resume = None  # an empty snapshot (older versions wrote these)
        return CustomerLogic(self, resume)


Dormant = tuple[int | None, bytes]  # (when its next timer is due, compressed pickled state)
_NO_TIMER = 2**63
READ_AHEAD = 256  # profiles read ahead per round trip (customers due at once)
READ_COST = 150_000  # ns: a profile read alone (a round trip), as ``read_ahead`` weighs it
SCAN_COST = 50  # ns per customer of ``timers`` scanned for those due


def _holds(ids: list[str], customer_id: str) -> bool:
    i = bisect.bisect_left(ids, customer_id)
    return i < len(ids) and ids[i] == customer_id


class CustomerLogic(StatefulBatchLogic[Event, Output | Rejected, CustomerState | Dormant | bytes]):
    """One customer's engine state inside Bytewax.

    Live runs keep customers idle for ``idle_ttl_ms`` (wall time) *dormant*: their state
    pruned at a time no later event or timer of theirs can precede, pickled and compressed,
    woken by their next event or their next timer; a customer with nothing left is
    discarded. Decision-neutral by construction (tested against runs without it).
    """

    def __init__(self, rt: EngineRuntime, state: CustomerState | Dormant | None) -> None:
        self.rt = rt
        self.state: CustomerState | None = None
        self.dormant: Dormant | None = None
        if isinstance(state, tuple):
            self.dormant = state
        else:
            self.state = state
        self.active_at = rt.wall.now_ms()
        self._read: tuple[str, Profile | None] | None = None  # this activation's profile

    def _profile(self, customer_id: str) -> Profile | None:
        """The profile lookup for one activation (on_batch, on_notify, on_eof): read once,
        however many events and timers of the batch need it. Nothing this flow writes to the
        store lands between two engine calls of one activation, so the answer would be the
        same; a store that does not answer is asked again (as before)."""
        read = self._read
        if read is None or read[0] != customer_id:
            read = self._read = (customer_id, self.rt.profiles()(customer_id))
        return read[1]

    def _wake(self, customer_id: str) -> CustomerState:
        if self.state is None:
            if self.dormant is not None:
                self.state = pickle.loads(zlib.decompress(self.dormant[1]))
                self.dormant = None
            else:
                self.state = CustomerState(customer_id)
        self.active_at = self.rt.wall.now_ms()
        return self.state

    def on_batch(self, values: list[Event]) -> tuple[list[Output | Rejected], bool]:
        """Events in ``(ts, event_id)`` order; before an event at T only timers (and loopback
        receipts) due by T fire, so a batch read from a backlog replays like replay mode.
        Live: an event is applied at its own time (never beyond the wall clock; the aligned
        source released it, so nothing earlier is unread), timers then by the held clock.
        An event the engine raises on becomes a ``processing_error`` dead letter."""
        rt = self.rt
        if type(values[0]) is Ticks:  # marks for this worker's timers, not a customer
            return self._ticks(values)
        self._read = None
        st = self._wake(values[0].customer_id)
        out: list[Output | Rejected] = []
        live = rt.mode == "live"
        wall = 0
        if live:
            wall = rt.wall.now_ms()
        for e in (values if len(values) == 1 else sorted(values, key=_order)):
            now = max(st.high_water, e.ts)
            if live:
                now = min(now, wall)
            try:
                out += self._advance(now)
                out += self._handle(e, now)
            except Exception as exc:  # one bad event never stops the flow
                out.append(self._failed(e, exc))
        if live:
            out += self._timers(rt.timer_now())
        return out, self._settle()

    def _ticks(self, values: list[Ticks]) -> tuple[list[Output | Rejected], bool]:
        """In-band marks for this worker's timers (``WatermarkClock.tick``); how far they
        hold its timers behind the wall goes to ``cdp_timer_clock_lag_seconds``."""
        rt = self.rt
        rt.clock.tick(tuple(m for t in values for m in t.marks))  # type: ignore[attr-defined]
        now = rt.timer_now()
        gauge = rt.clock_lag.get(values[0].worker)
        if gauge is None:
            gauge = rt.clock_lag[values[0].worker] = timer_clock_lag(values[0].worker)
        gauge.set(math.nan if now == HELD else (rt.wall.now_ms() - now) / 1000)
        return [], self.DISCARD

    def on_notify(self) -> tuple[list[Output | Rejected], bool]:
        if self.rt.mode != "live" or (self.state is None and self.dormant is None):
            return [], self._keep_or_discard()
        self._read = None
        now = self.rt.timer_now()
        if self.state is None:  # dormant: only its next timer wakes it
            if self.dormant is None or self.dormant[0] is None or self.dormant[0] > now:
                return [], self.RETAIN
            self._wake("")
            self.active_at -= self.rt.idle_ttl_ms or 0  # woken by a timer: still idle
        self.rt.read_ahead(self.state.customer_id, now)  # (nothing due, gone idle: no read)
        out = self._timers(now)
        if self._idle():
            self._read = None  # (a dormant customer keeps no profile)
            return out, self._hibernate(out)
        return out, self._settle()

    def on_eof(self) -> tuple[list[Output | Rejected], bool]:
        """Input ended (a finite run): replay fires what is due up to the horizon; live
        fires what is due by the wall clock (no more input can hold it back)."""
        if STOP.is_set():  # a graceful stop is not an end of input: keep every timer
            return [], (self.DISCARD if self.state is None and self.dormant is None
                        else self.RETAIN)
        if self.rt.mode == "live":
            until = self.rt.wall.now_ms()
        elif self.rt.horizon_ms is not None:
            until = self.rt.horizon_ms
        else:
            return [], self._keep_or_discard()
        if self.state is None and self.dormant is None:
            return [], self.DISCARD
        self._read = None
        if self.state is None:
            assert self.dormant is not None
            if self.dormant[0] is None or self.dormant[0] > until:
                return [], self.RETAIN  # nothing of it is due
            self._wake("")
        self.rt.read_ahead(self.state.customer_id, until)
        return self._timers(until), self._settle()

    def notify_at(self) -> datetime | None:
        """The next deadline (or loopback receipt); live: for a customer with state, when
        it will count as idle; for a dormant one, its next timer. A deadline already past by
        the wall clock (the live clock is held back by the input's event time) is retried
        shortly, not spun on."""
        if self.rt.mode != "live":
            return None  # replay: timers fire at the customer's next event or the end
        wall = self.rt.wall.now_ms()
        if self.state is None:
            if self.dormant is None or self.dormant[0] is None:
                return None
            return to_datetime(max(self.dormant[0], self._retry_at(wall)))
        at = self.rt.engine.next_wakeup(self.state)
        if self.state.pending:
            first = self.state.pending[0].ts
            at = first if at is None else min(at, first)
        ttl = self.rt.idle_ttl_ms
        if ttl is not None and not self.state.pending:
            idle_at = self.active_at + ttl
            at = idle_at if at is None else min(at, idle_at)
        if at is None:
            return None
        return to_datetime(at if at > wall else self._retry_at(wall))

    def _retry_at(self, wall: int) -> int:
        """When to look again at a deadline the held clock has not reached: soon when it is
        held back only by the input's last poll (a live run that has caught up), else in
        RETRY_MS (catching up on a backlog: no spinning over every due customer)."""
        lag = wall - self.rt.timer_now()
        return wall + (LIVE_RETRY_MS if lag < RETRY_MS else RETRY_MS)

    def _timers(self, now: int) -> list[Output | Rejected]:
        """Fire what is due at ``now``; live: how late (wall clock after due + grace) the
        earliest due timer fires goes to ``cdp_timer_lateness_seconds``."""
        if self.rt.mode == "live" and self.state is not None:
            wake = self.rt.engine.next_wakeup(self.state)
            if wake is not None and wake <= now:
                observe_timer_lateness_ms(self.rt.wall.now_ms() - wake)
        try:
            return self._advance(now) + self._handle(None, now)
        except Exception as exc:
            return [self._failed(None, exc)]

    def _failed(self, event: Event | None, exc: Exception) -> Rejected:
        st = self.state
        cid = st.customer_id if st else ""
        log.error("engine raised on %s of customer %s: %r",
                  event.event_id if event else "a timer", cid, exc)
        if event is None:  # a timer: no event to dead-letter, so a synthetic one names it
            event = Event(f"timer:{cid}:{st.high_water if st else 0}", "timer", cid,
                          st.high_water if st else 0, {}, "timer")
        return processing_error(event, exc)

    def _idle(self) -> bool:
        ttl = self.rt.idle_ttl_ms
        st = self.state
        return (ttl is not None and st is not None and not st.pending
                and self.rt.wall.now_ms() - self.active_at >= ttl)

    def _hibernate(self, out: list[Output | Rejected]) -> bool:
        """Prune at a safe time (what pruning writes goes to ``out``); discard what is
        empty, compress the rest. Decision-neutral:

        * every later event of this customer is at or after ``high_water`` (its events
          reach it in order);
        * at or after one idle time before the time its worker's timers fire by
          (``WatermarkClock.reached_here``: the lowest in-band mark of every shard of the
          run that reached this worker, behind the events it covers): every event
          released before that is here already, so a later one is not earlier unless it
          is late, and then by more than the idle time (a live stream with nothing unread
          lets the watermark pass to the wall clock, so an event still on its way from
          the producer arrives a little late: it finds the customer as it would resident).
          Not the source's published watermark: an event released just before may still
          be on its way to this worker (a customer pruned at it lost a count slot that
          event needed);
        * every timer of it decides at its due time, so nothing is pruned past the
          earliest one."""
        st = self.state
        assert st is not None
        safe = st.high_water
        reached = getattr(self.rt.clock, "reached_here", None)
        here = reached() if reached is not None else None
        if here is not None:
            safe = max(safe, here - (self.rt.idle_ttl_ms or 0))
        if st.instances:
            safe = min(safe, min(i.due for i in st.instances.values()))
        engine = self.rt.engine
        out += engine.prune(st, safe, sweep=True)
        if st.is_empty():
            self.rt.note_timer(st.customer_id, None)
            self.state = None
            return self.DISCARD
        raw = pickle.dumps(st, pickle.HIGHEST_PROTOCOL)
        timer = engine.next_wakeup(st)
        # the registry of timers (profiles read ahead) holds the engine's timer only: a
        # customer woken to be discarded decides nothing and reads no profile
        self.rt.note_timer(st.customer_id, timer)
        wake = timer
        if wake is None and here is not None:
            wake = self._empty_at(raw, engine.empty_by(st))
        self.dormant, self.state = (wake, zlib.compress(raw, 1)), None
        return self.RETAIN

    def _empty_at(self, raw: bytes, at: int) -> int | None:
        """When to wake a customer with no timer, to discard it: pruning at ``at`` leaves
        nothing of the state pickled in ``raw`` (tried on a copy; else None, kept until its
        next event). A customer seen once and never again (a browse, no order) was kept
        dormant for good. Woken (by its worker's timer time, like a timer), it hibernates
        again and is discarded by the usual prune at a safe time, decision-neutral as ever;
        that time is one idle time behind, so the wake is an idle time and a second after
        ``at``. (Only where the clock follows marks and every shard has said something.)"""
        probe = pickle.loads(raw)
        self.rt.engine.prune(probe, at, sweep=True)
        if not probe.is_empty():
            return None
        return at + (self.rt.idle_ttl_ms or 0) + EXPIRY_SLACK_MS

    def _handle(self, event: Event | None, now: int) -> list[Output]:
        st = self.state
        before = ({s: i.activity_at for s, i in st.instances.items()}
                  if event is not None and st.instances else {})
        out, caused = self.rt.engine.handle_split(st, event, now, self._profile)
        if event is not None:
            out += caused
            seen = input_seen(event, caused, before, st)
            if seen is not None:
                out.append(seen)
        if self.rt.loopback is not None:
            receipts = [e for r in out if isinstance(r, Send) for e in self.rt.loopback(r)]
            if receipts:
                self.state.pending = tuple(sorted((*self.state.pending, *receipts),
                                                  key=lambda e: (e.ts, e.event_id)))
        return out

    def _advance(self, until: int) -> list[Output]:
        """Fire timers and feed loopback receipts in time order, up to ``until``: a receipt
        due before a cascade's timeout must reach the engine before the timeout fires."""
        if self.rt.loopback is None:
            return []  # no receipts to interleave: handle() fires due timers in order itself
        st, eng, out = self.state, self.rt.engine, []
        while True:
            wake = eng.next_wakeup(st)
            receipt = st.pending[0] if st.pending else None
            if receipt is not None and receipt.ts <= until and (wake is None
                                                                or receipt.ts <= wake):
                st.pending = st.pending[1:]
                out += self._handle(receipt, max(st.high_water, receipt.ts))
            elif wake is not None and wake <= until:
                out += self._handle(None, wake)
            else:
                return out

    def snapshot(self) -> CustomerState | Dormant | bytes:
        """Recovery on: the state's stored form now (Bytewax serialises snapshots later,
        after the state has moved on; bytes are the independent copy, at half the cost of a
        pickle round trip, and Bytewax pickles bytes for nothing). Off: the object.

        Bytewax 0.21 asks a key once per epoch in which it was awoken (events or a
        notification), and at the end of input, a graceful stop included, every key it
        holds once more (``tests/test_recovery.py``). Nothing is kept between two asks."""
        if self.state is None:
            return self.dormant if self.dormant is not None else CustomerState("")
        if self.rt.copy_snapshots:
            return self.state.to_bytes()
        return self.state

    def _settle(self) -> bool:
        """After an activation: note the customer's next timer (for reads ahead); keep it
        or discard it. The activation's profile is let go (held between activations, it
        cost every customer a tuple, ~60 B)."""
        self._read = None
        st = self.state
        if st is not None and self.rt.prefetch is not None:
            self.rt.note_timer(st.customer_id,
                               None if st.is_empty() else self.rt.engine.next_wakeup(st))
        return self._keep_or_discard()

    def _keep_or_discard(self) -> bool:
        if self.state is None:
            return self.RETAIN if self.dormant is not None else self.DISCARD
        return self.DISCARD if self.state.is_empty() else self.RETAIN


#: what an event did, by the records it caused (a start miss or a duplicate is not an effect)
_EFFECT = {Conversion: "converted", Outcome: "receipt", Decision: "decided",
           ProfileUpdate: "profile", SegmentChange: "segment"}
_FACT_TYPES = {"order_placed": "order", "consent_changed": "consent"}


def input_seen(event: Event, caused: list[Output], activity: dict[str, int],
               state: CustomerState) -> InputSeen | None:
    """The history record of an input that mattered: it caused records (started,
    cancelled or completed an instance, a decision, a conversion, a receipt) or reset an
    instance's inactivity wait (``activity``: each live instance's activity time before
    it), or is a fact later decisions read (an order, a consent); else None."""
    effects: set[str] = set()
    for r in caused:
        t = type(r)
        if t is Duplicate:
            return None
        effect = r.action if t is Lifecycle else _EFFECT.get(t, "")
        if effect:
            effects.add(effect)
    fact = _FACT_TYPES.get(event.type)
    if fact:
        effects.add(fact)
    if activity and any(activity.get(s, i.activity_at) != i.activity_at
                        for s, i in state.instances.items()):
        effects.add("reset")
    return InputSeen.of(event, effects) if effects else None


def _order(e: Event) -> tuple[int, str]:
    return e.ts, e.event_id
