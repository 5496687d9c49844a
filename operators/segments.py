"""Dynamic segments (``config/segments/*.yaml``): who is a member at a given time, and when
to look again. Pure: no I/O.

Membership is evaluated by the engine after each of a customer's events that can move it
(orders, cart events, counted event types: only the segments that event can move) and, when
a segment reads a metric that changes as time passes (``days_since_*``, ``recency_days``,
``frequency``/``monetary``/``rfm_*`` over the RFM window, event counts ``within``), at 00:00
UTC in event time after each moment such a value can change (a threshold of days reached, an
order or a counted event leaving its window): the memberships a check every midnight would
give, without waking the customer on the other days. Customers with nothing time can change
get no timer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from cdp_triggers.clock import DAY
from config.schema import TIME_METRICS, Condition, Segment
from operators.conditions import Scope, all_hold
from operators.metrics import Tracking
from state.customer import CustomerState


def timed(cond: Condition) -> bool:
    """Whether time passing alone can change the condition's value."""
    if cond.counted is not None:
        return cond.within is not None
    return cond.field.removeprefix("customer.") in TIME_METRICS


_CART = ("added_to_cart", "removed_from_cart", "order_placed")


def moved_by(cond: Condition) -> tuple[str, ...]:
    """The event types whose facts can change the condition's value (time aside)."""
    if cond.counted is not None:
        return (cond.counted,)
    if cond.field in ("customer.cart_items", "customer.cart_total"):
        return _CART
    return ("order_placed",)  # every other metric is made of orders


Source = tuple[Any, ...]  # what a timed condition's value moves with (see _sources)


def _numbers(cond: Condition) -> list[float]:
    values = cond.value if isinstance(cond.value, list) else [cond.value]
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _sources(cond: Condition) -> list[Source]:
    """The moments a timed condition can change, as sources :func:`change_times` reads:
    a threshold of days since an order, the RFM window and recency boundaries, a count's
    window."""
    if cond.counted is not None:
        return [("within", cond.counted, cond.within)] if cond.within is not None else []
    name = cond.field.removeprefix("customer.")
    if name in ("days_since_last_order", "days_since_first_order", "recency_days"):
        base = "first" if name == "days_since_first_order" else "last"
        days = [int(v * DAY) for v in _numbers(cond)] if name != "recency_days" else [
            k * DAY for v in _numbers(cond) for k in (math.floor(v), math.floor(v) + 1)]
        return [("since", base, d) for d in days]
    if name in ("frequency", "monetary"):
        return [("window",)]
    if name.startswith("rfm_"):
        return [("window",), ("recency",)]
    return []


def change_times(source: Source, state: CustomerState, tracking: Tracking) -> Iterator[int]:
    """Event times at which a source's value may change (exactly, or within 1 ms after)."""
    match source:
        case ("within", typ, within):
            yield from (ts + within for ts, _ in state.ev_recent.get(typ, ()))
        case ("since", base, ms):
            at = state.first_order_at if base == "first" else state.last_order_at
            if at:
                yield at + ms
        case ("window",):
            yield from (ts + tracking.rfm.window for ts, _ in state.orders)
        case ("recency",):
            if state.last_order_at:
                yield from (state.last_order_at + int(b * DAY)
                            for b in tracking.rfm.recency_days)


class Segments:
    """The configured segments, evaluated against one customer's state."""

    def __init__(self, segments: Iterable[Segment], tracking: Tracking) -> None:
        self.segments = tuple(sorted(segments, key=lambda s: s.id))
        self.tracking = tracking
        self.timed = any(timed(c) for s in self.segments for c in s.conditions)
        #: what the timed conditions move with (shared ones once: 11 RFM segments, 1 window)
        self.sources = tuple(dict.fromkeys(src for s in self.segments for c in s.conditions
                                           for src in _sources(c)))
        by_type: dict[str, list[Segment]] = {}
        for seg in self.segments:
            for typ in dict.fromkeys(t for c in seg.conditions for t in moved_by(c)):
                by_type.setdefault(typ, []).append(seg)
        #: event type → the segments its facts can move (evaluated on such an event)
        self.by_type = {typ: tuple(segs) for typ, segs in by_type.items()}

    def __bool__(self) -> bool:
        return bool(self.segments)

    def members(self, state: CustomerState, t: int,
                event_type: str | None = None) -> tuple[str, ...]:
        """The ids of the segments the customer is in at ``t``, sorted: all evaluated, or
        after an event of ``event_type`` only those its facts can move (the others keep
        their membership until they are evaluated: by such an event, or the daily check)."""
        scope = Scope(None, state, None, t, self.tracking, {})
        if event_type is None:
            return tuple(s.id for s in self.segments if all_hold(s.conditions, scope))
        moved = self.by_type.get(event_type, ())
        ids = {s.id for s in moved}
        kept = [m for m in state.segments if m not in ids]
        return tuple(sorted([*kept, *(s.id for s in moved if all_hold(s.conditions, scope))]))

    def next_check(self, state: CustomerState, t: int) -> int:
        """When to re-evaluate by time alone after an evaluation at ``t`` (0: never): the
        first 00:00 UTC after ``t`` at or after which a timed condition may have changed
        (e.g. 30 days after the last order, an order leaving the RFM window). Evaluating
        then gives the memberships a check every midnight would, without the other days."""
        best = 0
        for source in self.sources:
            for at in change_times(source, state, self.tracking):
                for x in (at, at + 1):  # a strict threshold changes just after it
                    m = -(-x // DAY) * DAY  # the first midnight at or after x
                    if m > t and (not best or m < best):
                        best = m
        return best
