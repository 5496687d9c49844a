"""Evaluate config conditions (``props.total gte 50``) against an event."""

from __future__ import annotations

from typing import Any

from cdp_triggers.events import Event
from config.schema import Condition, EventMatch

_MISSING = object()


def field_value(event: Event, path: str) -> Any:
    """Dotted path into an event: ``type``, ``customer_id``, ``props.cart_id``, ``props.a.b``."""
    head, _, rest = path.partition(".")
    if head != "props":
        return getattr(event, head, _MISSING) if not rest else _MISSING
    value: Any = event.props
    for part in rest.split(".") if rest else ():
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def holds(cond: Condition, event: Event) -> bool:
    v = field_value(event, cond.field)
    if cond.op == "exists":
        return (v is not _MISSING) == (cond.value is not False)
    if v is _MISSING:
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


def matches(match: EventMatch, event: Event) -> bool:
    return event.type == match.event and all(holds(c, event) for c in match.where)


def key_of(path: str | None, event: Event) -> str | None:
    """The instance key an event names, '' for unkeyed triggers, None if the event lacks it."""
    if path is None:
        return ""
    v = field_value(event, path)
    return None if v is _MISSING or v is None else str(v)
