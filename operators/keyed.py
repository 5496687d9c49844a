"""Bytewax glue: the pure engine as one ``stateful_batch`` step keyed by customer_id.

Two clock modes, same engine code:

* ``live``: ``now`` is the injected clock (wall time in production); keys without new
  events are woken by Bytewax ``notify_at`` at their next deadline (+ grace).
* ``replay``: ``now`` is the events' own time per key (never going back); at end of input
  every key fires what is due up to ``horizon_ms``. Deterministic for the same input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from bytewax.operators import StatefulBatchLogic

from cdp_triggers.clock import Clock, WallClock, to_datetime
from cdp_triggers.events import Event
from cdp_triggers.records import Output
from operators.engine import Engine, ProfileLookup
from state.customer import CustomerState

log = logging.getLogger(__name__)

Mode = Literal["live", "replay"]


@dataclass
class EngineRuntime:
    """What each worker needs to run the engine; profile lookups are built per process."""

    engine: Engine
    profiles_factory: Callable[[], ProfileLookup]
    mode: Mode = "live"
    clock: Clock = WallClock()
    horizon_ms: int | None = None
    _profiles: ProfileLookup | None = None

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
        rt, eng = self.rt, self.rt.engine
        if self.state is None:
            self.state = CustomerState(values[0].customer_id)
        st, out = self.state, []
        for e in values:
            now = rt.clock.now_ms() if rt.mode == "live" else max(st.high_water, e.ts)
            out += eng.handle(st, e, now, rt.profiles())
        return out, self._keep_or_discard()

    def on_notify(self) -> tuple[list[Output], bool]:
        if self.state is None or self.rt.mode != "live":
            return [], self.RETAIN
        out = self.rt.engine.handle(self.state, None, self.rt.clock.now_ms(), self.rt.profiles())
        return out, self._keep_or_discard()

    def on_eof(self) -> tuple[list[Output], bool]:
        if self.state is None or self.rt.mode != "replay" or self.rt.horizon_ms is None:
            return [], self.RETAIN
        out = self.rt.engine.handle(self.state, None, self.rt.horizon_ms, self.rt.profiles())
        return out, self._keep_or_discard()

    def notify_at(self) -> datetime | None:
        if self.state is None or self.rt.mode != "live":
            return None
        at = self.rt.engine.next_wakeup(self.state)
        return None if at is None else to_datetime(at)

    def snapshot(self) -> CustomerState:
        return self.state.snapshot() if self.state is not None else CustomerState("")

    def _keep_or_discard(self) -> bool:
        return self.DISCARD if self.state is None or self.state.is_empty() else self.RETAIN
