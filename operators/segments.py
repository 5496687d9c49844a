"""Dynamic segments (``config/segments/*.yaml``): who is a member at a given time, and when
to look again. Pure: no I/O.

Membership is evaluated by the engine after each of a customer's events that can move it
(orders, cart events, counted event types: only the segments that event can move) and, only
when a segment reads a metric that changes as time passes (``days_since_*``, ``recency_days``,
``frequency``/``monetary``/``rfm_*`` over the RFM window, event counts ``within``), at the
next 00:00 UTC in event time, daily, while the customer has such data and the longest
horizon any segment looks at has not passed since their last event (after it nothing can
change by time alone). So customers with nothing that time can change get no timer.
"""

from __future__ import annotations

from collections.abc import Iterable

from cdp_triggers.clock import DAY
from config.schema import TIME_METRICS, Condition, Segment
from operators.conditions import Scope, all_hold
from operators.metrics import Tracking, has_time_data
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


def horizon(segments: Iterable[Segment], tracking: Tracking) -> int:
    """How long after a customer's last event a timed condition may still change (ms)."""
    rfm = tracking.rfm
    longest = max(rfm.window, int(rfm.recency_days[-1] * DAY))
    for seg in segments:
        for c in seg.conditions:
            if c.within is not None:
                longest = max(longest, c.within)
            elif c.field.startswith("customer.days_since") or c.field == "customer.recency_days":
                values = c.value if isinstance(c.value, list) else [c.value]
                longest = max([longest, *(int(v * DAY) for v in values
                                          if isinstance(v, int | float))])
    return longest + 2 * DAY


class Segments:
    """The configured segments, evaluated against one customer's state."""

    def __init__(self, segments: Iterable[Segment], tracking: Tracking) -> None:
        self.segments = tuple(sorted(segments, key=lambda s: s.id))
        self.tracking = tracking
        self.timed = any(timed(c) for s in self.segments for c in s.conditions)
        self.horizon = horizon(self.segments, tracking)
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
        """When to re-evaluate by time alone after an evaluation at ``t`` (0: never)."""
        if not self.timed or not has_time_data(state) or t >= state.high_water + self.horizon:
            return 0
        return (t // DAY + 1) * DAY
