"""Customer metrics kept in keyed state: orders, RFM, event counts. Pure: no I/O.

:func:`observe` updates a customer's compact metric state from each accepted event (called
from ``Engine._facts``); :func:`metric` and :func:`event_count` answer the names conditions
and template vars use (``customer.<metric>``, ``customer.events.<type>``). Every answer is a
function of the state and the evaluation time ``now`` (event time), so replay and live give
the same values.

Bounded state (see :class:`Tracking`, derived from the config):

* orders within the RFM window, at most ``rfm.max_orders``, as ``(ts, cents)`` pairs;
* for each event type some condition counts: the total ever seen (only if a condition or
  a template var counts it without ``within``/``since``/``key``), and only as many recent
  ``(ts, key)`` entries as the largest count a condition compares with needs (``value + 1``),
  or :data:`MAX_KEYED` when a condition counts by instance key; entries older than the
  longest ``within`` are dropped;
* with ``instance.repurchased`` in use: the last order time of up to :data:`MAX_BOUGHT`
  products.

RFM: three scores 1–5 from ``config/rfm.yaml``'s boundaries (see :class:`config.schema.Rfm`)
and the classic 11 segments by recency score (R) × the mean of frequency and monetary
scores (FM = ⌈(F + M) / 2⌉), table :data:`RFM_TABLE`::

    R/FM  1               2                    3                    4                5
    5     new_customers   potential_loyalists  potential_loyalists  champions        champions
    4     promising       potential_loyalists  potential_loyalists  loyal_customers  loyal_c.
    3     about_to_sleep  about_to_sleep       need_attention       loyal_customers  loyal_c.
    2     hibernating     hibernating          at_risk              at_risk          cant_lose
    1     lost            lost                 at_risk              at_risk          cant_lose

(``loyal_c.`` = loyal_customers, ``cant_lose`` = cant_lose_them.)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event
from config.schema import Condition, Rfm, Segment, Trigger
from state.compact import own
from state.customer import CustomerState, Instance

MISSING = object()  # a value that is not there (a condition on it is false, except exists)
MAX_KEYED = 32  # recent events kept per type when a condition counts them by instance key
MAX_BOUGHT = 64  # products whose last order time is kept (instance.repurchased)
SLACK = DAY  # entries are kept this much past their window (a timer decided within grace)

RFM_SEGMENTS = ("champions", "loyal_customers", "potential_loyalists", "new_customers",
                "promising", "need_attention", "about_to_sleep", "at_risk", "cant_lose_them",
                "hibernating", "lost")
_ROWS = {  # R score → segment for FM = 1..5
    5: ("new_customers", "potential_loyalists", "potential_loyalists", "champions",
        "champions"),
    4: ("promising", "potential_loyalists", "potential_loyalists", "loyal_customers",
        "loyal_customers"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal_customers",
        "loyal_customers"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"),
    1: ("lost", "lost", "at_risk", "at_risk", "cant_lose_them"),
}
RFM_TABLE: dict[tuple[int, int], str] = {(r, fm + 1): name for r, row in _ROWS.items()
                                         for fm, name in enumerate(row)}


@dataclass(frozen=True)
class Tracking:
    """What the config needs remembered per customer (computed once per config)."""

    rfm: Rfm = field(default_factory=Rfm)
    keep: dict[str, int] = field(default_factory=dict)  # counted type → recent entries kept
    retain: dict[str, int | None] = field(default_factory=dict)  # ms; None: by count only
    keys: dict[str, str] = field(default_factory=dict)  # type → props path of its key
    repurchase: bool = False  # instance.repurchased is used
    ever: frozenset[str] = frozenset()  # types counted since ever (a condition or a var)

    @classmethod
    def from_config(cls, triggers: Iterable[Trigger], segments: Iterable[Segment],
                    rfm: Rfm) -> Tracking:
        triggers = list(triggers)
        conds = list(conditions_of(triggers, segments))
        ever = {src[16:] for t in triggers for step in t.steps for src in step.vars.values()
                if src.startswith("customer.events.")}
        keep: dict[str, int] = dict.fromkeys(ever, 0)
        retain: dict[str, int | None] = {}
        keys: dict[str, str] = {}
        for c in conds:
            typ = c.counted
            if typ is None:
                continue
            keep.setdefault(typ, 0)
            if c.within is None and c.since is None and c.key is None:
                ever.add(typ)  # the total is enough
                continue
            values = c.value if isinstance(c.value, list) else [c.value]
            need = MAX_KEYED if c.key is not None else max(values) + 1
            keep[typ] = max(keep[typ], need)
            if c.key is not None:
                keys.setdefault(typ, c.key)
            if c.within is None:
                retain[typ] = None
            elif retain.get(typ, 0) is not None:
                retain[typ] = max(retain.get(typ) or 0, c.within)
        return cls(rfm, keep, retain, keys,
                   any(c.field == "instance.repurchased" for c in conds), frozenset(ever))

    @property
    def counted(self) -> frozenset[str]:
        return frozenset(self.keep)


def conditions_of(triggers: Iterable[Trigger],
                  segments: Iterable[Segment] = ()) -> Iterable[Condition]:
    """Every condition of the config (start, cancel, step when; segments)."""
    for t in triggers:
        yield from t.start.where
        for c in t.cancel_on:
            yield from c.where
        for s in t.steps:
            yield from s.when
    for seg in segments:
        yield from seg.conditions


# ---- updating ---------------------------------------------------------------------------

def observe(tr: Tracking, state: CustomerState, ev: Event) -> None:
    """Update the metric state from one accepted event (after the engine's own facts)."""
    if ev.type == "order_placed":
        _order(tr, state, ev)
    keep = tr.keep.get(ev.type)
    if keep is None:
        return
    if ev.type in tr.ever:  # kept for good: only when a config counts since ever
        total, first = state.ev_total.get(ev.type, (0, ev.ts))
        own(state, "ev_total")[ev.type] = (total + 1, min(first, ev.ts))
    if keep:
        path = tr.keys.get(ev.type)
        key = ""
        if path is not None:
            value = _props(ev.props, path[6:])
            key = "" if value is MISSING or value is None else str(value)
        recent = list(state.ev_recent.get(ev.type, ()))
        bisect.insort(recent, (ev.ts, key))
        own(state, "ev_recent")[ev.type] = tuple(recent[-keep:])


def _order(tr: Tracking, state: CustomerState, ev: Event) -> None:
    ts = ev.ts
    state.first_order_at = min(state.first_order_at or ts, ts)
    orders = list(state.orders)
    bisect.insort(orders, (ts, round(float(ev.props["total"]) * 100)))
    state.orders = tuple(orders[-tr.rfm.max_orders:])
    if tr.repurchase:
        for item in ev.props.get("items") or ():
            pid = str(item["product_id"]) if isinstance(item, dict) else ""
            if pid and state.bought.get(pid, -1) < ts:
                bought = own(state, "bought")
                bought.pop(pid, None)
                bought[pid] = ts  # (re)inserted last: the oldest product goes first
        while len(state.bought) > MAX_BOUGHT:
            del state.bought[next(iter(state.bought))]


def prune(tr: Tracking, state: CustomerState, now: int) -> None:
    """Drop orders and counted events no window can reach at ``now`` any more."""
    if state.orders and state.orders[0][0] < now - tr.rfm.window - SLACK:
        state.orders = tuple(o for o in state.orders if o[0] >= now - tr.rfm.window - SLACK)
    for typ, recent in list(state.ev_recent.items()):
        window = tr.retain.get(typ)
        if typ not in tr.keep:  # no longer counted by the config
            del state.ev_recent[typ]
        elif window is not None and recent and recent[0][0] < now - window - SLACK:
            kept = tuple(e for e in recent if e[0] >= now - window - SLACK)
            if kept:
                state.ev_recent[typ] = kept
            else:
                del state.ev_recent[typ]


# ---- reading ----------------------------------------------------------------------------

def _props(props: Any, path: str) -> Any:
    value = props
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _in_window(state: CustomerState, now: int, window: int) -> list[tuple[int, int]]:
    return [o for o in state.orders if now - window < o[0] <= now]


def rfm_scores(rfm: Rfm, state: CustomerState, now: int) -> tuple[int, int, int] | None:
    """(R, F, M) at ``now``, or None for a customer who never ordered."""
    if not state.orders_count or not state.last_order_at:
        return None
    days = (now - state.last_order_at) / DAY
    orders = _in_window(state, now, rfm.window)
    money = sum(o[1] for o in orders) / 100
    r = 5 - bisect.bisect_left(rfm.recency_days, days)
    f = 1 + bisect.bisect_left(rfm.frequency, len(orders))
    m = 1 + bisect.bisect_left(rfm.monetary, money)
    return r, f, m


def rfm_segment(r: int, f: int, m: int) -> str:
    """The classic segment of scores (R, F, M): :data:`RFM_TABLE` at (R, ⌈(F + M) / 2⌉)."""
    return RFM_TABLE[(r, (f + m + 1) // 2)]


def metric(tr: Tracking, state: CustomerState, name: str, now: int,
           memo: dict[str, Any] | None = None) -> Any:
    """The value of ``customer.<name>`` at ``now`` (MISSING when it has none). ``memo``:
    shared by the conditions read at one time (the RFM scores are computed once)."""
    match name:
        case "orders_count":
            return state.orders_count
        case "total_spent":
            return round(state.total_spent, 2)
        case "aov":
            return round(state.total_spent / state.orders_count, 2) if state.orders_count \
                else MISSING
        case "last_order_at":
            return state.last_order_at or MISSING
        case "first_order_at":
            return state.first_order_at or MISSING
        case "days_since_last_order":
            return (now - state.last_order_at) / DAY if state.last_order_at else MISSING
        case "days_since_first_order":
            return (now - state.first_order_at) / DAY if state.first_order_at else MISSING
        case "recency_days":
            return (now - state.last_order_at) // DAY if state.last_order_at else MISSING
        case "frequency":
            return len(_in_window(state, now, tr.rfm.window))
        case "monetary":
            return round(sum(o[1] for o in _in_window(state, now, tr.rfm.window)) / 100, 2)
        case "segments":
            return list(state.segments)
    if name.startswith("rfm_"):
        if memo is None or "rfm" not in memo:
            scores = rfm_scores(tr.rfm, state, now)
            if memo is not None:
                memo["rfm"] = scores
        else:
            scores = memo["rfm"]
        if scores is None:
            return MISSING
        r, f, m = scores
        return {"rfm_recency": r, "rfm_frequency": f, "rfm_monetary": m,
                "rfm_score": r * 100 + f * 10 + m,
                "rfm_segment": rfm_segment(r, f, m)}.get(name, MISSING)
    if name.startswith("events."):
        return state.ev_total.get(name[7:], (0, 0))[0]
    return MISSING


def event_count(state: CustomerState, cond: Condition, inst: Instance | None,
                now: int) -> Any:
    """How many events of ``cond.counted`` the customer sent (ever, within, since the
    instance started, with the instance's key), at ``now``; MISSING when ``since``/``key``
    have no instance. A count above what is kept reads as the kept number, which is still
    above every value a condition compares with."""
    typ = cond.counted or ""
    if cond.within is None and cond.since is None and cond.key is None:
        return state.ev_total.get(typ, (0, 0))[0]
    if (cond.since is not None or cond.key is not None) and inst is None:
        return MISSING
    lo = now - cond.within if cond.within is not None else -1
    if cond.since is not None and inst is not None:
        lo = max(lo, inst.started_at - 1)
    key = inst.key if cond.key is not None and inst is not None else None
    return sum(1 for ts, k in state.ev_recent.get(typ, ())
               if lo < ts <= now and (key is None or k == key))


def repurchased(state: CustomerState, inst: Instance) -> bool:
    """A product of the instance's event (``items``) was ordered again after it started."""
    items = inst.context.get("items")
    if not isinstance(items, list):
        return False
    return any(state.bought.get(str(item.get("product_id")), 0) > inst.started_at
               for item in items if isinstance(item, dict))


# ---- boundaries from ClickHouse ---------------------------------------------------------

def rfm_boundaries_query(database: str, now_ms: int, window_days: int = 365) -> str:
    """Quintile boundaries (20/40/60/80 %) of days since the last order, orders and revenue
    per customer over the window, from the orders ClickHouse holds: every order as a stored
    input (``inputs``, kept ``CDP_RAW_TTL_DAYS``) and, beyond that, the attributed ones
    (``conversions``, kept); each order counted once."""
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    now = f"fromUnixTimestamp64Milli(toInt64({int(now_ms)}))"
    return f"""
SELECT quantiles(0.2, 0.4, 0.6, 0.8)(dateDiff('day', last, {now})) AS recency,
       quantiles(0.2, 0.4, 0.6, 0.8)(orders) AS frequency,
       quantiles(0.2, 0.4, 0.6, 0.8)(revenue) AS monetary
FROM (SELECT customer_id, max(order_ts) AS last, count() AS orders,
             toFloat64(sum(order_revenue)) AS revenue
      FROM (SELECT customer_id, order_id, any(ts) AS order_ts, any(revenue) AS order_revenue
            FROM (SELECT customer_id, order_id, ts, toFloat64(revenue) AS revenue
                  FROM {database}.conversions
                  UNION ALL
                  SELECT customer_id, JSONExtractString(props, 'order_id'), ts,
                         JSONExtractFloat(props, 'total')
                  FROM {database}.inputs WHERE type = 'order_placed')
            WHERE ts > {now} - INTERVAL {int(window_days)} DAY AND ts <= {now}
            GROUP BY customer_id, order_id)
      GROUP BY customer_id)"""


def boundaries_from_quantiles(row: dict[str, list[float]], base: Rfm | None = None) -> Rfm:
    """An :class:`Rfm` from one row of :func:`rfm_boundaries_query` (ties between quintiles
    are spread so the boundaries stay strictly ascending)."""
    base = base or Rfm()

    def ascending(values: list[float], step: float) -> list[float]:
        out: list[float] = []
        for v in values:
            out.append(round(max(float(v), out[-1] + step) if out else float(v), 2))
        return out

    frequency = ascending(row["frequency"], 1)
    return base.model_copy(update={
        "recency_days": ascending(row["recency"], 1),
        "frequency": frequency,
        "monetary": ascending(row["monetary"], 0.01),
        "max_orders": max(base.max_orders, int(frequency[-1]) + 2),
    })


def rfm_boundaries_from_clickhouse(backend: Any, database: str, now_ms: int,
                                   window_days: int = 365, base: Rfm | None = None) -> Rfm:
    """Quintile RFM boundaries from the orders stored in ClickHouse (``backend``: a
    :class:`sinks.clickhouse.ClickHouseBackend`); run on a schedule and written to
    ``config/rfm.yaml`` (:func:`rfm_yaml`). No orders: ``base`` (the defaults)."""
    names, rows = backend.query(rfm_boundaries_query(database, now_ms, window_days))
    row = dict(zip(names, rows[0], strict=True)) if rows else {}
    values = [v for k in ("recency", "frequency", "monetary") for v in row.get(k) or [None]]
    if not values or any(v is None or v != v for v in values):  # no orders: NULL / NaN
        return base or Rfm()
    return boundaries_from_quantiles(row, base)


def rfm_yaml(rfm: Rfm) -> str:
    """``config/rfm.yaml`` text for these boundaries."""
    from cdp_triggers.durations import format_duration

    def nums(v: list[float]) -> str:
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"

    return (f"window: {format_duration(rfm.window)}\nmax_orders: {rfm.max_orders}\n"
            f"recency_days: {nums(rfm.recency_days)}\nfrequency: {nums(rfm.frequency)}\n"
            f"monetary: {nums(rfm.monetary)}\n")
