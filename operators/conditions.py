"""Evaluate config conditions against an event, the customer's metrics and an instance.

Field paths (validated by the schema): ``type``, ``customer_id``, ``props.a.b`` (the event),
``customer.<metric>`` and ``customer.events.<type>`` (from CustomerState, through
:mod:`operators.metrics`), ``instance.<field>`` (a running instance).
A list field is tested item by item with ``any``/``all`` (item conditions, paths inside
the item). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from cdp_triggers.clock import HOUR
from cdp_triggers.events import Event
from config.schema import Condition, EventMatch, ItemCondition
from operators import metrics
from operators.metrics import MISSING, Tracking
from state.customer import CustomerState, Instance

__all__ = ["MISSING", "Scope", "all_hold", "cart_items", "cart_total", "customer_metric",
           "holds", "key_of", "matches", "value_of"]

_DEFAULT = Tracking()


@dataclass(slots=True)
class Scope:
    """What a condition can see. Any part may be absent. ``metrics``: what the config
    tracks (RFM boundaries; the defaults when absent)."""

    event: Event | None = None
    state: CustomerState | None = None
    instance: Instance | None = None
    now: int = 0
    metrics: Tracking | None = None
    memo: dict[str, Any] | None = None  # values shared by the conditions of one evaluation


def _props_path(props: dict[str, Any], rest: str) -> Any:
    value: Any = props
    for part in rest.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def customer_metric(state: CustomerState, name: str, now: int,
                    tracking: Tracking | None = None, memo: dict[str, Any] | None = None) -> Any:
    match name:
        case "cart_items":
            return sum(int(line["quantity"]) for line in state.cart.values())
        case "cart_total":
            return cart_total(state)
    return metrics.metric(tracking or _DEFAULT, state, name, now, memo)


def cart_total(state: CustomerState) -> float:
    lines = state.cart.values()
    return round(sum((line.get("price") or 0) * line["quantity"] for line in lines), 2)


def cart_items(state: CustomerState) -> list[dict[str, Any]]:
    return [{"product_id": pid, **line} for pid, line in sorted(state.cart.items())]


def value_of(path: str, scope: Scope) -> Any:
    head, _, rest = path.partition(".")
    if head == "props":
        return _props_path(scope.event.props, rest) if scope.event else MISSING
    if head in ("type", "customer_id") and not rest:
        return getattr(scope.event, head) if scope.event else MISSING
    if head == "customer" and scope.state is not None:
        return customer_metric(scope.state, rest, scope.now, scope.metrics, scope.memo)
    if head == "instance" and scope.instance is not None:
        inst = scope.instance
        if rest == "ordered":
            return bool(scope.state and scope.state.last_order_at >= inst.started_at)
        if rest == "key":
            return inst.key
        if rest == "age_hours":
            return (scope.now - inst.started_at) / HOUR
        if rest == "repurchased" and scope.state is not None:
            return metrics.repurchased(scope.state, inst)
        if rest == "previous_outcome":  # best receipt of its latest message so far
            return inst.sent_outcome or "none"
        if rest == "previous_channel":
            return inst.sent_channel or MISSING
    if head == "event" and scope.instance is not None:  # template vars: the instance's event
        if rest == "type":
            return scope.instance.event_type or MISSING
        if rest.startswith("props."):
            return _props_path(scope.instance.context, rest[6:])
    return MISSING


def holds(cond: Condition, scope: Scope) -> bool:
    if cond.counted is not None and scope.state is not None:
        return _test(cond, metrics.event_count(scope.state, cond, scope.instance, scope.now))
    return _test(cond, value_of(cond.field, scope))


def _item_value(path: str | None, item: Any) -> Any:
    if path is None:
        return item
    return _props_path(item, path) if isinstance(item, dict) else MISSING


def _test(cond: Condition | ItemCondition, v: Any) -> bool:
    quantifier = cond.quantifier
    if quantifier is not None:  # any: some item meets every item condition; all: each does
        if not isinstance(v, list):
            return False
        fits = (all(_test(sub, _item_value(sub.field, item)) for sub in quantifier[1])
                for item in v)
        return any(fits) if quantifier[0] == "any" else all(fits)
    if cond.op == "exists":
        return (v is not MISSING) == (cond.value is not False)
    if v is MISSING:
        return False
    match cond.op:
        case "eq":
            return v == cond.value
        case "ne":
            return v != cond.value
        case "in":
            return v in cond.value
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    match cond.op:
        case "gt":
            return v > cond.value
        case "gte":
            return v >= cond.value
        case "lt":
            return v < cond.value
        case _:
            return v <= cond.value


def all_hold(conds: Iterable[Condition], scope: Scope) -> bool:
    return all(holds(c, scope) for c in conds)


def matches(match: EventMatch, event: Event, state: CustomerState | None = None,
            now: int = 0, tracking: Tracking | None = None) -> bool:
    if event.type not in match.types:
        return False
    return not match.where or all_hold(match.where, Scope(event, state, None, now, tracking))


def key_of(path: str | None, event: Event) -> str | None:
    """The instance key an event names, '' for unkeyed triggers, None if the event lacks it."""
    if path is None:
        return ""
    name = _top_prop(path)
    v = event.props.get(name, MISSING) if name else value_of(path, Scope(event))
    return None if v is MISSING or v is None else str(v)


@cache
def _top_prop(path: str) -> str:
    """``name`` for a key path ``props.name`` (most keys: read straight from the props),
    else ''."""
    head, _, rest = path.partition(".")
    return rest if head == "props" and rest and "." not in rest else ""
