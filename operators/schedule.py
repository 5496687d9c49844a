"""Scheduled and date starts, per customer on their keyed state. Pure: no I/O.

A trigger whose ``start`` is a ``schedule`` (a campaign: once ``at``, or a ``cron``) or a
``date`` of the customer (birthday, registration, first order: yearly) has, for each
customer with keyed state who may get it, one *planned occurrence* in
``CustomerState.sched``: ``(due, key)``, a timer like a step's (``Engine.next_wakeup``).
At it the engine starts an instance keyed by the occurrence (so re-entry and cooldowns
apply as to any start) when the customer passes ``where``, then plans the next one.

* The plan is made in the customer's zone (the last profile read; the engine reads the
  profile for a first plan when a start is local; else the policy's default zone) and
  made again whenever what it was made from changes: zone, dates, segments, config version
  (``sched_basis``). The last occurrence fired (``sched_done``) is never planned again.
* ``segment``: only members are planned (joining or leaving re-plans).
* ``spread``: each customer's occurrence is moved later by a stable fraction of the
  window (a hash of trigger and customer), so a campaign does not flood the flow.
* Occurrences are planned from the customer's latest event time: a customer first seen
  after an occurrence (plus their spread offset) does not get it.

Dates reach the state from a profile read or from ``signed_up`` (``registered_at`` = its
own time unless props say otherwise; props ``birthday``) and ``profile_updated`` events
(props ``birthday``, ``registered_at``): the event path replays deterministically. They are
kept only when a trigger reads them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from cdp_triggers import calendar
from cdp_triggers.events import Event
from cdp_triggers.ids import stable_fraction
from config.schema import Trigger
from state.customer import CustomerState

DATE_EVENTS = ("signed_up", "profile_updated")
NONE = (0, "")  # nothing planned (no date, not a member, a one-off passed)


class Timed:
    """The enabled triggers with a schedule or date start, and what they need."""

    def __init__(self, triggers: Iterable[Trigger], default_zone: str, version: str) -> None:
        self.triggers = tuple(sorted((t for t in triggers if t.enabled and t.start.timed),
                                     key=lambda t: t.id))
        self.default_zone = default_zone
        self.version = version
        # a basis starts with the config's tag: a plan made under another config is stale
        self.tag = f"{zlib.crc32(version.encode()) & 0xFFFF:04x}:"
        dates = {t.start.date for t in self.triggers}
        self.birthday = "profile.birthday" in dates
        self.registered = "profile.registered_at" in dates
        # a first plan reads the profile: the zone of a local start, or a profile date
        self.needs_profile = self.birthday or self.registered or any(
            t.start.schedule is not None and t.start.schedule.local for t in self.triggers)

    def __bool__(self) -> bool:
        return bool(self.triggers)

    def remember(self, state: CustomerState, ev: Event) -> None:
        """Dates a ``signed_up``/``profile_updated`` event carries (values that are not
        dates are ignored: the event's other facts still count)."""
        p = ev.props
        if self.birthday:
            bday = calendar.birthday(p.get("birthday"))
            if bday:
                state.birthday = bday
        if self.registered:
            at = calendar.date_ms(p.get("registered_at"))
            if at is None and ev.type == "signed_up":
                at = ev.ts
            if at is not None:
                state.registered_at = at

    def adopt(self, state: CustomerState, profile: Any) -> None:
        """Dates a profile read carries (the store's values win when present)."""
        if self.birthday and getattr(profile, "birthday", ""):
            state.birthday = profile.birthday
        if self.registered and getattr(profile, "registered_at", 0):
            state.registered_at = profile.registered_at

    def basis(self, state: CustomerState, zone: str) -> str:
        """What a plan is made from, as a short checksum (kept per customer), behind the
        config's :attr:`tag`."""
        text = (f"{self.version}|{zone}|{state.birthday}|{state.registered_at}|"
                f"{state.first_order_at}|{','.join(state.segments)}")
        return f"{self.tag}{zlib.crc32(text.encode()):08x}"

    def zone(self, trig: Trigger, customer_zone: str) -> str:
        sched = trig.start.schedule
        return self.default_zone if sched is not None and not sched.local else customer_zone

    def occurrence(self, trig: Trigger, state: CustomerState, after: int,
                   customer_zone: str) -> tuple[int, str]:
        """``(due, key)`` of the customer's next occurrence at or after ``after`` (event
        time) that was not fired yet, or :data:`NONE`."""
        start = trig.start
        if start.segment is not None and start.segment not in state.segments:
            return NONE
        zone = self.zone(trig, customer_zone)
        done = state.sched_done.get(trig.id, "")
        if start.schedule is not None:
            s = start.schedule
            shift = spread_offset(trig, state.customer_id)
            found = (calendar.next_at(s.at, after - shift, zone, done) if s.at is not None
                     else calendar.next_cron(_cron(s.cron or ""),
                                             after - shift, zone, done))
        else:
            origin = self.origin(trig, state, zone)
            if origin is None:  # (most customers lack a date: no spread to draw)
                return NONE
            shift = spread_offset(trig, state.customer_id)
            month, day, year = origin
            found = calendar.next_anniversary(month, day, year, start.at_time,
                                              start.offset_days, after - shift, zone, done)
        return NONE if found is None else (found[0] + shift, found[1])

    def origin(self, trig: Trigger, state: CustomerState,
               zone: str) -> tuple[int, int, int | None] | None:
        """(month, day, year or None) of the date a date start recurs on."""
        match trig.start.date:
            case "profile.birthday":
                if not state.birthday:
                    return None
                return int(state.birthday[:2]), int(state.birthday[3:]), None
            case "profile.registered_at":
                ms = state.registered_at
            case _:
                ms = state.first_order_at
        if not ms:
            return None
        d = calendar.local_date(ms, zone)
        return d.month, d.day, d.year

    def props(self, trig: Trigger, state: CustomerState, key: str,
              customer_zone: str) -> dict[str, Any]:
        """What the instance's start "event" carries (template vars ``event.props.*``):
        the occurrence, and for a date start the date it is for and the years since."""
        start = trig.start
        if start.schedule is not None:
            return {"occurrence": key, **({"segment": start.segment} if start.segment else {})}
        out: dict[str, Any] = {"occurrence": key, "date": start.date}
        origin = self.origin(trig, state, self.zone(trig, customer_zone))
        if origin is not None and origin[2] is not None:
            out["years"] = int(key[:4]) - origin[2]
        return out


def spread_offset(trig: Trigger, customer_id: str) -> int:
    """The customer's stable place within the trigger's ``spread`` window (ms)."""
    spread = trig.start.spread
    return int(stable_fraction("spread", trig.id, customer_id) * spread) if spread else 0


@lru_cache(maxsize=64)
def _cron(text: str) -> calendar.Cron:
    return calendar.Cron.parse(text)
