"""Bytewax glue: the pure engine as one ``stateful_batch`` step keyed by customer_id.

Two clock modes, same engine code:

* ``live``: ``now`` is the injected clock (in production the wall time held back to the
  input's low watermark, ``cdp_triggers.clock.WatermarkClock``); keys without new events
  are woken by Bytewax ``notify_at`` at their next deadline (+ grace).
* ``replay``: ``now`` is the events' own time per key (never going back); at end of input
  every key fires what is due up to ``horizon_ms``. Deterministic for the same input.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from bytewax.operators import StatefulBatchLogic

from cdp_triggers.clock import Clock, WallClock, to_datetime
from cdp_triggers.events import Event
from cdp_triggers.records import Output, Send
from operators.engine import Engine, ProfileLookup
from operators.interest import DEFAULT_WINDOW, ProductState, on_product_event, product_of
from state.customer import CustomerState

RETRY_MS = 250  # a deadline the held-back clock has not reached yet is retried this often

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
    # Bytewax asks for snapshots at every epoch even without recovery; only a run WITH
    # recovery needs them to be independent copies (they are serialised later).
    copy_snapshots: bool = True
    _profiles: ProfileLookup | None = None

    @property
    def wall(self) -> Clock:
        """The unheld wall clock behind ``clock`` (for scheduling Bytewax notifications)."""
        return getattr(self.clock, "wall", self.clock)

    def observe(self, event: Event) -> None:
        """Tell a watermark clock how far each input partition has got (source
        ``topic:partition:offset`` → partition ``topic:partition``)."""
        observe = getattr(self.clock, "observe", None)
        if observe is not None:
            observe(event.ts, event.source.rpartition(":")[0])

    def profiles(self) -> ProfileLookup:
        if self._profiles is None:
            self._profiles = self.profiles_factory()
        return self._profiles

    def builder(self, resume: CustomerState | None) -> CustomerLogic:
        return CustomerLogic(self, resume if resume is not None and resume.customer_id else None)


class CustomerLogic(StatefulBatchLogic[Event, Output, CustomerState]):
    """One customer's engine state inside Bytewax."""

    def __init__(self, rt: EngineRuntime, state: CustomerState | None) -> None:
        self.rt = rt
        self.state = state

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        """Events in event-time order; before an event at T only timers (and loopback
        receipts) due by T fire (live: and by the clock), so a batch read from a backlog
        replays like replay mode."""
        rt = self.rt
        if self.state is None:
            self.state = CustomerState(values[0].customer_id)
        st, out = self.state, []
        live = rt.mode == "live"
        clock_now = rt.clock.now_ms() if live else 0
        for e in sorted(values, key=lambda v: v.ts):
            now = max(st.high_water, e.ts)
            if live:
                now = min(now, clock_now)
            out += self._advance(now)
            out += self._handle(e, now)
        if live:
            out += self._advance(clock_now)
            out += self._handle(None, clock_now)
        return out, self._keep_or_discard()

    def on_notify(self) -> tuple[list[Output], bool]:
        if self.state is None or self.rt.mode != "live":
            return [], self.RETAIN
        now = self.rt.clock.now_ms()
        out = self._advance(now) + self._handle(None, now)
        return out, self._keep_or_discard()

    def on_eof(self) -> tuple[list[Output], bool]:
        """Input ended (a finite run): replay fires what is due up to the horizon; live
        fires what is due by the wall clock (no more input can hold it back)."""
        if self.state is None:
            return [], self.RETAIN
        if self.rt.mode == "live":
            until = self.rt.wall.now_ms()
        elif self.rt.horizon_ms is not None:
            until = self.rt.horizon_ms
        else:
            return [], self.RETAIN
        out = self._advance(until) + self._handle(None, until)
        return out, self._keep_or_discard()

    def notify_at(self) -> datetime | None:
        """The next deadline (or loopback receipt). One already past by the wall clock (the
        live clock is held back by the input's event time) is retried shortly, not spun on."""
        if self.state is None or self.rt.mode != "live":
            return None
        at = self.rt.engine.next_wakeup(self.state)
        if self.state.pending:
            first = self.state.pending[0].ts
            at = first if at is None else min(at, first)
        if at is None:
            return None
        wall = self.rt.wall.now_ms()
        return to_datetime(at if at > wall else wall + RETRY_MS)

    def _handle(self, event: Event | None, now: int) -> list[Output]:
        out = self.rt.engine.handle(self.state, event, now, self.rt.profiles())
        if self.rt.loopback is not None:
            receipts = [e for r in out if isinstance(r, Send) for e in self.rt.loopback(r)]
            if receipts:
                self.state.pending = sorted(self.state.pending + receipts,
                                            key=lambda e: (e.ts, e.event_id))
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
                st.pending.pop(0)
                out += self._handle(receipt, max(st.high_water, receipt.ts))
            elif wake is not None and wake <= until:
                out += self._handle(None, wake)
            else:
                return out

    def snapshot(self) -> CustomerState:
        if self.state is None:
            return CustomerState("")
        return self.state.snapshot() if self.rt.copy_snapshots else self.state

    def _keep_or_discard(self) -> bool:
        return self.DISCARD if self.state is None or self.state.is_empty() else self.RETAIN


class ProductLogic(StatefulBatchLogic[Event, Event, ProductState]):
    """One product's interested customers inside Bytewax; emits derived customer events."""

    def __init__(self, state: ProductState | None, window: int) -> None:
        self.state = state
        self.window = window

    def on_batch(self, values: list[Event]) -> tuple[list[Event], bool]:
        if self.state is None:
            self.state = ProductState(product_of(values[0]))
        out: list[Event] = []
        for e in sorted(values, key=lambda v: v.ts):
            out += on_product_event(self.state, e, self.window)
        return out, self.RETAIN

    def snapshot(self) -> ProductState:
        return pickle.loads(pickle.dumps(self.state, pickle.HIGHEST_PROTOCOL))


def product_builder(window: int = DEFAULT_WINDOW) -> Callable[[ProductState | None], ProductLogic]:
    return lambda resume: ProductLogic(resume, window)
