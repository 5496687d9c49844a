"""The event registry: every event type a trigger may name, with the props it carries.

Built in: the event contract (:data:`cdp_triggers.events.PROPS_MODELS`) and the events the
engine derives (``price_dropped``, ``back_in_stock`` from the product step;
``segment_entered``, ``segment_left`` from ``config/segments``). ``config/events.yaml`` adds
custom events (no code) and extra props of built-in ones::

    events:
      review_submitted:
        description: the customer reviewed a product of an order
        props: {order_id: string, product_id: string, rating: integer}
      order_placed:                 # built in: adds props (here to each item)
        props:
          items: [{category: string}]

A prop type is ``string``, ``number``, ``integer``, ``boolean``, ``any`` (not checked
further), a mapping (an object: name → type) or a one-item list (a list of that type).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cdp_triggers.events import PROPS_MODELS
from config.documents import ConfigIssue, Document
from config.schema import Ident

EVENTS_FILE = "events.yaml"
SCALARS = ("string", "number", "integer", "boolean", "any")

# A prop type: a scalar name, {name: type} (an object) or [type] (a list of that type).
PropType = str | dict[str, Any] | list[Any]

# Events the engine makes: the product step (operators/interest.py), one per interested
# customer; segment membership changes (operators/segments.py, config/segments/*.yaml).
DERIVED: dict[str, dict[str, PropType]] = {
    # interest: "wishlist" (wished for within the window) or "browse" (viewed or carted)
    "price_dropped": {"product_id": "string", "price": "number", "old_price": "number",
                      "interest": "string"},
    "back_in_stock": {"product_id": "string", "interest": "string"},
    "segment_entered": {"segment": "string"},
    "segment_left": {"segment": "string"},
}


def _spec_errors(spec: Any, where: str) -> list[str]:
    if isinstance(spec, str):
        return [] if spec in SCALARS else [
            f"{where}: unknown type '{spec}' (write {', '.join(SCALARS)}, a mapping of props "
            "or a one-item list such as [string])"]
    if isinstance(spec, dict):
        return [e for k, v in spec.items() for e in _spec_errors(v, f"{where}.{k}")]
    if isinstance(spec, list) and len(spec) == 1:
        return _spec_errors(spec[0], f"{where}[]")
    return [f"{where}: a list type has exactly one item, the type of its elements, "
            "e.g. [string] or [{category: string}]"]


class EventDecl(BaseModel):
    """One event type of ``events.yaml``: custom, or extra props for a built-in one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    props: dict[str, Any] = Field(default_factory=dict, description=(
        "prop name → string | number | integer | boolean | any | {name: type} | [type]"))

    @field_validator("props")
    @classmethod
    def _types(cls, v: dict[str, Any]) -> dict[str, Any]:
        errors = _spec_errors(v, "props")
        if errors:
            raise ValueError("; ".join(errors))
        return v


class EventsFile(BaseModel):
    """The whole ``events.yaml``: ``events: {type: EventDecl}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: dict[Ident, EventDecl] = Field(default_factory=dict)


def _from_json_schema(s: dict[str, Any], defs: dict[str, Any]) -> PropType:
    if "$ref" in s:
        s = defs[s["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in s:
        kinds = [x for x in s["anyOf"] if x.get("type") != "null"]
        return _from_json_schema(kinds[0], defs) if len(kinds) == 1 else "any"
    kind = s.get("type")
    if kind == "object":
        props = s.get("properties")
        return {k: _from_json_schema(v, defs) for k, v in props.items()} if props else "any"
    if kind == "array":
        return [_from_json_schema(s.get("items", {}), defs)]
    return kind if kind in SCALARS else ("string" if "enum" in s or "const" in s else "any")


def builtin_props(model: type[BaseModel]) -> dict[str, PropType]:
    """The props an event model of :mod:`cdp_triggers.events` declares, as prop types."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    return {k: _from_json_schema(v, defs) for k, v in schema.get("properties", {}).items()}


@dataclass(frozen=True)
class EventType:
    name: str
    props: dict[str, PropType]
    origin: str  # "built in", "derived" or "events.yaml"


@dataclass(frozen=True)
class Lookup:
    """Where a props path leads in an event type: ``kind`` is "ok" (``type`` is what is
    there), "missing" (``depth``: the first part that is not there; ``known``: what is),
    or "list" (``depth``: parts up to here name a list, which the rest reaches into)."""

    kind: str
    type: PropType | None = None
    depth: int = 0
    known: tuple[str, ...] = ()


def lookup(props: PropType, parts: list[str]) -> Lookup:
    t = props
    for i, part in enumerate(parts):
        if t == "any":
            return Lookup("ok", "any")
        if isinstance(t, list):
            return Lookup("list", t, i)
        if not isinstance(t, dict) or part not in t:
            return Lookup("missing", None, i, tuple(t) if isinstance(t, dict) else ())
        t = t[part]
    return Lookup("ok", t)


def _merge(base: PropType, extra: PropType, where: str) -> tuple[PropType, list[str]]:
    if isinstance(base, dict) and isinstance(extra, dict):
        out, errors = dict(base), []
        for k, v in extra.items():
            if k in out:
                out[k], more = _merge(out[k], v, f"{where}.{k}")
                errors += more
            else:
                out[k] = v
        return out, errors
    if isinstance(base, list) and isinstance(extra, list):
        item, errors = _merge(base[0], extra[0], f"{where}[]")
        return [item], errors
    if base == extra or base == "any":
        return extra, []
    return base, [f"{where} built in as {describe(base)}: events.yaml may add props, "
                  "not change their type"]


def describe(t: PropType) -> str:
    if isinstance(t, list):
        return "a list"
    return "an object" if isinstance(t, dict) else t


class EventRegistry:
    """Known event types by name."""

    def __init__(self, types: dict[str, EventType]) -> None:
        self.types = types

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def get(self, name: str) -> EventType | None:
        return self.types.get(name)

    def unknown(self, name: str) -> str:
        near = difflib.get_close_matches(name, list(self.types), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return (f"unknown event type '{name}'{hint} (declare custom events in "
                f"{EVENTS_FILE})")


def builtin_types() -> dict[str, EventType]:
    types = {name: EventType(name, builtin_props(model), "built in")
             for name, model in PROPS_MODELS.items()}
    types |= {name: EventType(name, dict(props), "derived") for name, props in DERIVED.items()}
    return types


def build_registry(decls: EventsFile, doc: Document) -> tuple[EventRegistry, list[ConfigIssue]]:
    """Built-in types plus ``events.yaml``: new types, and props added to built-in ones."""
    types = builtin_types()
    issues = []
    for name, decl in decls.events.items():
        have = types.get(name)
        if have is None:
            types[name] = EventType(name, dict(decl.props), EVENTS_FILE)
            continue
        merged, errors = _merge(have.props, decl.props, "props")
        issues += [doc.issue(("events", name, "props"), f"events.{name}.{e.split(' ', 1)[0]}",
                             e.split(" ", 1)[1]) for e in errors]
        types[name] = EventType(name, merged, have.origin)
    return EventRegistry(types), issues
