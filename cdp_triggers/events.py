"""The event model: the one place that says what a valid event is.

Raw bytes from Kafka, a JSONL file or the generator go through :func:`parse_event`, which
returns either an :class:`Event` (validated, time as epoch ms UTC) or a :class:`Rejected`
(a dead-letter record with a reason code and a human-readable detail). It never raises on
bad input: the flow must not crash on what producers send.

It also refuses, here and not later, every value a sink or a state snapshot could not hold
(the limits below): a poison pill that passed would kill the flow on every restart.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from cdp_triggers import calendar
from state.compact import record

MAX_EVENT_BYTES = 64 * 1024
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
DEFAULT_MAX_FUTURE_MS = 24 * 3600 * 1000  # live mode: at most a day ahead of the clock
RAW_KEEP_BYTES = 4096  # how much of a rejected payload the dead-letter row keeps
DETAIL_KEEP_CHARS = 1024  # how much of a processing error's message the dead-letter row keeps

# Limits on what an accepted event may carry (documented in docs/reliability-limits.md).
MAX_MONEY = 1e12  # total, price: finite, 0..1e12 (ClickHouse revenue is Decimal(18, 4))
MAX_QUANTITY = 100_000  # quantity: an integer 1..100000 (cart sums stay far below 2^64)
MAX_DEPTH = 8  # props nesting, objects and lists; props itself is level 1 (snapshots pickle)
MAX_LIST_ITEMS = 1000  # items in any one list inside props
MAX_STRING_CHARS = 4096  # characters in any string (or key) inside props
MAX_PROPS_KEYS = 2048  # keys over all objects inside props, props included

# Reason codes of dead letters (stable: analysts group by them).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
OVERSIZE = "oversize"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
INVALID_TIMESTAMP = "invalid_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
INVALID_PROPS = "invalid_props"
DUPLICATE = "duplicate_event_id"
VALUE_OUT_OF_RANGE = "value_out_of_range"  # a number outside its limit, NaN or Infinity
TOO_DEEP = "too_deep"  # props nested deeper than MAX_DEPTH
TOO_LARGE = "too_large"  # a list, string or the key count of props over its limit
PROCESSING_ERROR = "processing_error"  # the engine raised on this event (see processing_error)

OUTCOME_TYPES = frozenset(
    {
        "message_delivered",
        "message_opened",
        "message_clicked",
        "message_bounced",
        "message_failed",
        "message_unsubscribed",
    }
)

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]


@record  # Bytewax pickles every one it moves between processes; state keeps some
class Event:
    """A validated event. ``ts`` is event time in epoch ms UTC."""

    event_id: str
    type: str
    customer_id: str
    ts: int
    props: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> bytes:
        """The wire form (what producers send), e.g. for JSONL files and Kafka."""
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "type": self.type,
                "customer_id": self.customer_id,
                "ts": self.ts,
                "props": self.props,
            }
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A dead-letter record: what came in, from where, and why it was refused."""

    reason: str
    detail: str
    raw: bytes
    source: str
    customer_id: str = ""
    event_id: str = ""
    event_type: str = ""


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    event_id: Id
    type: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    customer_id: Id
    ts: int | str
    props: dict[str, Any] = Field(default_factory=dict)


class _Props(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


Money = Annotated[float, Field(ge=0, le=MAX_MONEY)]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]


class _ProductProps(_Props):
    product_id: Id
    cart_id: Id | None = None
    price: Money | None = None
    quantity: Quantity | None = None


def _birthday(v: str) -> str:
    if calendar.birthday(v) is None:
        raise ValueError("a birthday is MM-DD or YYYY-MM-DD")
    return v


def _moment(v: int | str) -> int | str:
    if calendar.date_ms(v) is None:
        raise ValueError("a date is epoch ms, RFC 3339 text or YYYY-MM-DD")
    return v


class _DatesProps(_Props):
    """``signed_up`` / ``profile_updated``: the profile dates date triggers read (a bad one
    is a dead letter, never a silently missing birthday)."""

    birthday: Annotated[str, AfterValidator(_birthday)] | None = None
    registered_at: Annotated[int | str, AfterValidator(_moment)] | None = None


def _dates_ok(p: dict[str, Any]) -> bool:
    b, r = p.get("birthday"), p.get("registered_at")
    return ((b is None or calendar.birthday(b) is not None)
            and (r is None or (type(r) in (int, str) and calendar.date_ms(r) is not None)))


class _CheckoutProps(_Props):
    cart_id: Id | None = None


class _OrderItem(_Props):
    product_id: Id
    quantity: Quantity = 1
    price: Money | None = None


class _OrderPlacedProps(_Props):
    order_id: Id
    total: Money
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    items: list[_OrderItem] = Field(default_factory=list)


class _OrderProps(_Props):
    order_id: Id


class _ConsentProps(_Props):
    channel: Id
    category: Literal["marketing", "transactional"]
    granted: bool


class _OutcomeProps(_Props):
    send_id: Id
    channel: Id


class _ProductUpdatedProps(_Props):
    product_id: Id
    price: Money | None = None
    in_stock: bool | None = None


PROPS_MODELS: dict[str, type[_Props]] = {
    "product_viewed": _ProductProps,
    "added_to_cart": _ProductProps,
    "removed_from_cart": _ProductProps,
    "wishlist_added": _ProductProps,
    "checkout_started": _CheckoutProps,
    "order_placed": _OrderPlacedProps,
    "order_paid": _OrderProps,
    "order_shipped": _OrderProps,
    "order_delivered": _OrderProps,
    "order_cancelled": _OrderProps,
    "signed_up": _DatesProps,
    "profile_updated": _DatesProps,
    "consent_changed": _ConsentProps,
    "product_updated": _ProductUpdatedProps,
    **{t: _OutcomeProps for t in OUTCOME_TYPES},
}
KNOWN_TYPES = frozenset(PROPS_MODELS)
# one string object per known type and per product id for every event that names it:
# the state keeps events (exits) and their types and props (instances), one copy each
# otherwise (~130 B an active customer)
_TYPES = {t: sys.intern(t) for t in KNOWN_TYPES}


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                           "finite_number"})


def _describe(err: ValidationError, prefix: str = "") -> tuple[str, str]:
    """Pydantic error → (reason code, 'field: message; …'). Only range errors: out of range."""
    parts = []
    errors = err.errors()
    reason = (VALUE_OUT_OF_RANGE if all(e["type"] in _RANGE_ERRORS for e in errors)
              else INVALID_FIELD)
    for e in errors:
        if e["type"] == "missing":
            reason = MISSING_FIELD
        if not prefix and e["loc"][0] == "ts":  # the int | str union: one plain message
            msg = "ts: must be RFC 3339 text or an integer of epoch milliseconds"
        else:
            msg = f"{prefix}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        if msg not in parts:
            parts.append(msg)
    return reason, "; ".join(parts)


def _at(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _flat_within_limits(props: dict[str, Any]) -> bool:
    """True when ``props`` is flat (no object or list inside) and every key, string and
    float is within its limit: the common case, for which :func:`check_limits` finds nothing
    and need not walk."""
    if len(props) > MAX_PROPS_KEYS:
        return False
    for k, v in props.items():
        if len(k) > MAX_STRING_CHARS:
            return False
        t = type(v)
        if t is str:
            if len(v) > MAX_STRING_CHARS:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        elif t is not int and t is not bool and v is not None:
            return False
    return True


def check_limits(props: dict[str, Any]) -> tuple[str, str] | None:
    """One iterative walk of ``props`` (no recursion): (reason, detail) for the first value
    over a limit (depth, list length, string length, key count, a non-finite number), or
    None. Only containers are pushed; the path is spelled only for the one reported."""
    keys = len(props)
    stack: list[tuple[dict[str, Any] | list[Any], int, str]] = [(props, 1, "props")]
    while stack:
        node, depth, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(k, str) and len(k) > MAX_STRING_CHARS:
                return TOO_LARGE, f"{path}: a key of {len(k)} characters, limit {MAX_STRING_CHARS}"
            if isinstance(v, str):
                if len(v) > MAX_STRING_CHARS:
                    return TOO_LARGE, (f"{_at(path, k)}: a string of {len(v)} characters, "
                                       f"limit {MAX_STRING_CHARS}")
            elif isinstance(v, float):
                if not math.isfinite(v):
                    return VALUE_OUT_OF_RANGE, f"{_at(path, k)}: {v} is not a finite number"
            elif isinstance(v, dict | list):
                if depth >= MAX_DEPTH:
                    return TOO_DEEP, f"{_at(path, k)}: nested deeper than {MAX_DEPTH} levels"
                if isinstance(v, list) and len(v) > MAX_LIST_ITEMS:
                    return TOO_LARGE, (f"{_at(path, k)}: a list of {len(v)} items, "
                                       f"limit {MAX_LIST_ITEMS}")
                if isinstance(v, dict):
                    keys += len(v)
                    if keys > MAX_PROPS_KEYS:
                        return TOO_LARGE, f"props: more than {MAX_PROPS_KEYS} keys in all"
                stack.append((v, depth + 1, _at(path, k)))
    return None


def duplicate_record(event: Event) -> Rejected:
    """The dead letter of a catalogue record (``product_updated``) whose event id its
    product has already had: no customer state dedupes it, so the product step does, and
    it is counted with the other duplicates (id from its source position and wire form)."""
    return Rejected(DUPLICATE, f"event_id {event.event_id!r} already seen for this product",
                    event.to_json()[:RAW_KEEP_BYTES], event.source, event.customer_id[:256],
                    event.event_id[:256], event.type[:256])


def processing_error(event: Event, exc: BaseException) -> Rejected:
    """The dead-letter record for an event the engine raised on: the flow goes on without it.

    ``detail`` is the exception's type and message, ``raw`` the event's wire form, both
    truncated; source, customer, event id and type are kept. Never raises itself.
    """
    try:
        message = f"{type(exc).__name__}: {exc}"
    except Exception:  # a __str__ that raises: the type alone
        message = type(exc).__name__
    try:
        raw = event.to_json()
    except Exception:  # props the wire form cannot hold: their repr, for the analyst
        raw = repr(event.props).encode("utf-8", "replace")
    return Rejected(PROCESSING_ERROR, message[:DETAIL_KEEP_CHARS], raw[:RAW_KEEP_BYTES],
                    event.source, event.customer_id[:256], event.event_id[:256],
                    event.type[:256])


# ---- the fast path: predicates that only ever say "pydantic would accept this as is" ----
# A value failing one is not refused: it goes through the pydantic models above, which give
# the reason and the message. Strings with whitespace at an end go there too (pydantic
# strips them: Python's isspace covers every character Rust's trim removes).


def _id(v: Any, limit: int = 256) -> bool:
    return (type(v) is str and 0 < len(v) <= limit and not v[0].isspace()
            and not v[-1].isspace())


def _money(v: Any) -> bool:
    return (type(v) is float or type(v) is int) and 0 <= v <= MAX_MONEY  # NaN compares False


def _quantity(v: Any) -> bool:
    return type(v) is int and 1 <= v <= MAX_QUANTITY


def _fast_envelope(obj: dict[str, Any]) -> tuple[str, str, str, int | str, dict] | None:
    """``(event_id, type, customer_id, ts, props)`` when the envelope is plainly valid
    (what ``_Envelope`` would give back unchanged), else None."""
    event_id, typ, customer_id = obj.get("event_id"), obj.get("type"), obj.get("customer_id")
    ts = obj.get("ts")
    props = obj.get("props", {})
    if (_id(event_id) and _id(typ, 64) and _id(customer_id)
            and (type(ts) is int or type(ts) is str) and type(props) is dict):
        return event_id, typ, customer_id, ts, props  # type: ignore[return-value]
    return None


def _never(_props: dict[str, Any]) -> bool:
    return False


def _product_ok(p: dict[str, Any]) -> bool:
    price, qty, cart = p.get("price"), p.get("quantity"), p.get("cart_id")
    return (_id(p.get("product_id")) and (cart is None or _id(cart))
            and (price is None or _money(price)) and (qty is None or _quantity(qty)))


def _item_ok(i: Any) -> bool:
    if type(i) is not dict:
        return False
    price = i.get("price")
    return (_id(i.get("product_id")) and ("quantity" not in i or _quantity(i["quantity"]))
            and (price is None or _money(price)))


def _order_placed_ok(p: dict[str, Any]) -> bool:
    cur, items = p.get("currency"), p.get("items", [])
    return (_id(p.get("order_id")) and _money(p.get("total")) and type(cur) is str
            and len(cur) == 3 and all("A" <= c <= "Z" for c in cur) and type(items) is list
            and all(map(_item_ok, items)))


_FAST_PROPS: dict[str, Any] = {
    "product_viewed": _product_ok,
    "added_to_cart": _product_ok,
    "removed_from_cart": _product_ok,
    "checkout_started": lambda p: p.get("cart_id") is None or _id(p["cart_id"]),
    "order_placed": _order_placed_ok,
    **{t: lambda p: _id(p.get("order_id"))
       for t in ("order_paid", "order_shipped", "order_delivered", "order_cancelled")},
    "signed_up": _dates_ok,
    "profile_updated": _dates_ok,
    "consent_changed": lambda p: (_id(p.get("channel")) and type(p.get("granted")) is bool
                                  and p.get("category") in ("marketing", "transactional")),
    "product_updated": lambda p: (_id(p.get("product_id"))
                                  and (p.get("price") is None or _money(p["price"]))
                                  and (p.get("in_stock") is None
                                       or type(p["in_stock"]) is bool)),
    **{t: lambda p: _id(p.get("send_id")) and _id(p.get("channel")) for t in OUTCOME_TYPES},
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_ts(value: int | str) -> int:
    """RFC 3339 text (with offset) or epoch ms → epoch ms; ValueError otherwise."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text[-1:] == "z":  # RFC 3339 §5.6: "T" and "Z" may be lowercase ("t" is taken as is)
        text = text[:-1] + "Z"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not RFC 3339: {value[:64]!r}") from None
    if dt.tzinfo is None:
        raise ValueError(f"no UTC offset in {value[:64]!r} (RFC 3339 needs Z or ±hh:mm)")
    return (dt - _EPOCH) // _MS  # exact integer ms (float timestamp() can be off by one)


def _reject(data: bytes, source: str, reason: str, detail: str,
            obj: dict | None = None) -> Rejected:
    """The dead letter of a payload :func:`parse_event` refused (ids kept when it had them;
    a module function, not a closure made for every event parsed)."""

    def text(k: str) -> str:
        v = (obj or {}).get(k)
        return v[:256] if isinstance(v, str) else ""

    return Rejected(reason, detail, data[:RAW_KEEP_BYTES], source,
                    text("customer_id"), text("event_id"), text("type"))


def parse_event(raw: bytes | str, source: str = "", now_ms: int | None = None,
                max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> Event | Rejected:
    """Validate one raw event. Never raises for bad input; returns a Rejected instead.

    ``now_ms`` (live runs) also refuses events stamped more than ``max_future_ms`` ahead.
    """
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_EVENT_BYTES:
        return _reject(data, source, OVERSIZE,
                       f"payload is {len(data)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return _reject(data, source, INVALID_JSON, f"not JSON: {e}")
    if not isinstance(obj, dict):
        return _reject(data, source, NOT_AN_OBJECT,
                       f"expected a JSON object, got {type(obj).__name__}")
    envelope = _fast_envelope(obj)
    if envelope is None:  # not the plain case: pydantic decides (and explains a refusal)
        try:
            env = _Envelope.model_validate(obj)
        except ValidationError as e:
            return _reject(data, source, *_describe(e), obj)
        envelope = (env.event_id, env.type, env.customer_id, env.ts, env.props)
    event_id, typ, customer_id, raw_ts, props = envelope
    try:
        ts = parse_ts(raw_ts)
    except ValueError as e:
        return _reject(data, source, INVALID_TIMESTAMP, f"ts: {e}", obj)
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        hint = (" (epoch seconds? ts wants epoch milliseconds)"
                if 0 < ts < MIN_TS_MS // 1000 * 10 else "")
        return _reject(data, source, TIMESTAMP_OUT_OF_RANGE,
                       f"ts {raw_ts!r} is outside 2000..2100{hint}", obj)
    if now_ms is not None and ts > now_ms + max_future_ms:
        return _reject(data, source, TIMESTAMP_OUT_OF_RANGE,
                       f"ts {raw_ts!r} is more than {max_future_ms // 3_600_000} h in the "
                       "future", obj)
    over = None if _flat_within_limits(props) else check_limits(props)
    if over is not None:
        return _reject(data, source, over[0], f"{typ}: {over[1]}", obj)
    model = PROPS_MODELS.get(typ)
    if model is not None and not _FAST_PROPS.get(typ, _never)(props):
        try:
            model.model_validate(props)
        except ValidationError as e:
            reason, detail = _describe(e, "props.")
            reason = VALUE_OUT_OF_RANGE if reason == VALUE_OUT_OF_RANGE else INVALID_PROPS
            return _reject(data, source, reason, f"{typ}: {detail}", obj)
    pid = props.get("product_id")
    if type(pid) is str:
        props["product_id"] = sys.intern(pid)
    return Event(event_id, _TYPES.get(typ, typ), customer_id, ts, props, source)
