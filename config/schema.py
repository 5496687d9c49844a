"""The config schema: what marketers may write in ``config/triggers/*.yaml`` and ``policy.yaml``.

One place owns it. Durations are written ``30m``/``4h``/``7d`` and held as milliseconds
(a bare number in YAML is refused: :func:`bare_durations`).
Unknown keys are errors (``extra="forbid"``), so a typo never silently disables a rule.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from cdp_triggers.durations import parse_duration


class _DurationMark:
    """Marks a :data:`Duration` field, so the loader can refuse bare numbers in YAML."""


DURATION = _DurationMark()
Duration = Annotated[int, BeforeValidator(parse_duration, json_schema_input_type=str | int),
                     DURATION]
Ident = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Channel = Literal["push", "email", "sms"]
CHANNELS: tuple[str, ...] = ("push", "email", "sms")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CUSTOMER_METRICS = ("orders_count", "total_spent", "last_order_at", "days_since_last_order",
                    "cart_items", "cart_total",
                    # operators/metrics.py: orders, RFM (over config/rfm.yaml's window), segments
                    "aov", "first_order_at", "days_since_first_order", "recency_days",
                    "frequency", "monetary", "rfm_recency", "rfm_frequency", "rfm_monetary",
                    "rfm_score", "rfm_segment", "segments")
#: metrics whose value changes as time passes (a segment over them is re-checked daily)
TIME_METRICS = ("days_since_last_order", "days_since_first_order", "recency_days",
                "frequency", "monetary", "rfm_recency", "rfm_frequency", "rfm_monetary",
                "rfm_score", "rfm_segment")
EVENTS_FIELD = "customer.events."  # + an event type: how often the customer sent it
MAX_EVENT_COUNT = 50  # an event-count condition compares with at most this many events
INSTANCE_FIELDS = ("ordered", "key", "age_hours", "repurchased")
VAR_SOURCES = ("cart.items", "cart.total", "instance.key", "event.type", "event.props.<path>",
               "customer.<metric>", "customer.events.<event type>")
_PATH = r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*"
_PROPS = re.compile(rf"^props\.{_PATH}$")
_EVENT_TYPE = r"[a-z][a-z0-9_]{0,63}"
_FIELD = (rf"^(type|customer_id|props\.{_PATH}"
          rf"|customer\.({'|'.join(CUSTOMER_METRICS)}|events\.{_EVENT_TYPE})"
          rf"|instance\.({'|'.join(INSTANCE_FIELDS)}))$")
_VAR_SOURCE = (rf"^(cart\.items|cart\.total|instance\.key|event\.type|event\.props\.{_PATH}"
               rf"|customer\.({'|'.join(CUSTOMER_METRICS)}|events\.{_EVENT_TYPE}))$")


def _hint(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{near[0]}'?" if near else ""


def _named(kind: str, name: str, valid: tuple[str, ...]) -> str:
    return f"unknown {kind} '{name}'{_hint(name, valid)} (valid: {', '.join(valid)})"


def check_field(field: str) -> str:
    """A condition's field, or a message naming what is valid."""
    head, _, rest = field.partition(".")
    if head == "customer" and rest.startswith("events."):
        if not re.match(rf"^{_EVENT_TYPE}$", rest[7:]):
            raise ValueError(f"'{field}' does not name an event type (write e.g. "
                             "customer.events.product_viewed)")
    elif head == "customer" and rest not in CUSTOMER_METRICS:
        raise ValueError(_named("customer metric", rest, CUSTOMER_METRICS))
    if head == "instance" and rest not in INSTANCE_FIELDS:
        raise ValueError(_named("instance field", rest, INSTANCE_FIELDS))
    if head == "props" and not _PROPS.match(field):
        raise ValueError(f"'{field}' is not a props path (write e.g. props.cart_id)")
    if not re.match(_FIELD, field):
        raise ValueError(f"unknown field '{field}'{_hint(field, ('type', 'customer_id'))}"
                         " (valid: type, customer_id, props.<path>, customer.<metric>, "
                         "instance.<field>)")
    return field


def check_var_source(source: str) -> str:
    """A step variable's source, or a message naming the valid ones."""
    head, _, rest = source.partition(".")
    if head == "customer" and not rest.startswith("events.") and rest not in CUSTOMER_METRICS:
        raise ValueError(_named("customer metric", rest, CUSTOMER_METRICS))
    if not re.match(_VAR_SOURCE, source):
        fixed = ("cart.items", "cart.total", "instance.key", "event.type")
        raise ValueError(f"unknown var source '{source}'{_hint(source, fixed)} "
                         f"(valid: {', '.join(VAR_SOURCES)})")
    return source


Op = Literal["eq", "ne", "in", "gt", "gte", "lt", "lte", "exists"]


class _Test(_Strict):
    op: Op = "eq"
    value: Any = None
    any: ItemCondition | list[ItemCondition] | None = Field(default=None, description=(
        "the field is a list: true when at least one item meets these conditions"))
    all: ItemCondition | list[ItemCondition] | None = Field(default=None, description=(
        "the field is a list: true when every item meets these conditions"))

    @property
    def quantifier(self) -> tuple[str, tuple[ItemCondition, ...]] | None:
        """("any" | "all", the item conditions, all of which one item must meet) or None."""
        for kind in ("any", "all"):
            sub = getattr(self, kind)
            if sub is not None:
                return kind, (sub,) if isinstance(sub, ItemCondition) else tuple(sub)
        return None

    @model_validator(mode="after")
    def _value_fits_op(self) -> _Test:
        if self.any is not None or self.all is not None:
            if self.any is not None and self.all is not None:
                raise ValueError("set one of 'any' or 'all', not both")
            if {"op", "value"} & self.model_fields_set:
                raise ValueError("with 'any'/'all', op and value go inside, on the item "
                                 "(e.g. any: {field: category, op: eq, value: coffee})")
            return self
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op '{self.op}' needs a number value")
        return self


class ItemCondition(_Test):
    """A condition on one item of a list (inside ``any``/``all``): ``field`` is a path
    inside the item (e.g. ``category``); without it, the item itself."""

    field: str | None = Field(default=None, pattern=rf"^{_PATH}$",
                              description="path inside the item, e.g. category; "
                                          "omit for the item itself")


class Condition(_Test):
    """``field`` is ``type``, ``props.x`` (the event), ``customer.<metric>``,
    ``customer.events.<event type>`` (how many such events the customer sent: ever, or
    ``within`` a duration, or ``since: instance_start``; ``key`` counts only those whose
    props path equals the instance's key) or ``instance.<field>``; ``op`` compares it with
    ``value``. A list field (``props.items``, ``customer.segments``) is tested with
    ``any:``/``all:`` conditions on its items instead."""

    field: Annotated[str, AfterValidator(check_field)] = Field(
        json_schema_extra={"pattern": _FIELD}, description=(
            "type | customer_id | props.<path> | customer.<" + "|".join(CUSTOMER_METRICS)
            + "> | customer.events.<event type> | instance.<" + "|".join(INSTANCE_FIELDS)
            + ">"))
    within: Duration | None = Field(default=None, description=(
        "customer.events.<type> only: count the events of the last <duration>"))
    since: Literal["instance_start"] | None = Field(default=None, description=(
        "customer.events.<type> only: count the events since the instance started "
        "(in a step's when)"))
    key: str | None = Field(default=None, pattern=rf"^props\.{_PATH}$", description=(
        "customer.events.<type> only: count the events whose props path equals the "
        "instance's key, e.g. props.order_id (in a step's when)"))

    @property
    def counted(self) -> str | None:
        """The event type an event-count condition counts, else None."""
        return self.field[len(EVENTS_FIELD):] if self.field.startswith(EVENTS_FIELD) else None

    @model_validator(mode="after")
    def _quantified_field_is_props(self) -> Condition:
        if self.quantifier and not (self.field.startswith("props.")
                                    or self.field == "customer.segments"):
            raise ValueError("'any'/'all' test the items of a list: the field must be "
                             "props.<path> or customer.segments")
        counted = self.counted
        given = [k for k in ("within", "since", "key") if getattr(self, k) is not None]
        if counted is None and given:
            raise ValueError(f"'{given[0]}' only applies to customer.events.<event type>")
        if counted is not None:
            if self.within is not None and self.since is not None:
                raise ValueError("set one of 'within' or 'since', not both")
            if self.within == 0:
                raise ValueError("'within' must be longer than 0")
            if self.op not in ("eq", "ne", "gt", "gte", "lt", "lte", "in"):
                raise ValueError(f"op '{self.op}' does not compare a count "
                                 "(use eq, ne, gt, gte, lt, lte or in)")
            values = self.value if isinstance(self.value, list) else [self.value]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in values):
                raise ValueError("an event count is compared with whole numbers ≥ 0")
            if max(values, default=0) > MAX_EVENT_COUNT:
                raise ValueError(f"an event count is compared with at most {MAX_EVENT_COUNT} "
                                 "(the engine remembers that many events per type)")
        return self


class Count(_Strict):
    """Start only once the start event happened ``at_least`` times within ``within``
    (per instance key), e.g. the same product viewed twice within an hour."""

    at_least: int = Field(ge=2)
    within: Duration


class EventMatch(_Strict):
    """One event type (or a list of them) plus conditions that must all hold."""

    event: str | list[str] = Field(min_length=1)
    where: list[Condition] = Field(default_factory=list)

    @property
    def types(self) -> tuple[str, ...]:
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


class Start(EventMatch):
    count: Count | None = None


class CancelOn(EventMatch):
    """An exit event. ``same_key``: only cancel the instance whose key the event names."""

    same_key: bool = False


class Wait(_Strict):
    """Before the first step: ``inactivity`` (restarted by ``reset_on`` events) or a
    fixed ``delay``."""

    inactivity: Duration | None = None
    delay: Duration | None = None
    reset_on: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Wait:
        if (self.inactivity is None) == (self.delay is None):
            raise ValueError("set exactly one of 'inactivity' or 'delay'")
        if self.delay is not None and self.reset_on:
            raise ValueError("'reset_on' only applies to an 'inactivity' wait")
        return self

    @property
    def ms(self) -> int:
        return self.inactivity if self.inactivity is not None else self.delay or 0


OUTCOMES = ("delivered", "opened", "clicked")


class CascadeWait(_Strict):
    """After a send on this channel, wait ``wait`` for one of ``until`` (outcomes of that
    send); none in time → the next channel of the step that has consent and contact."""

    wait: Duration
    until: list[Literal["delivered", "opened", "clicked"]] = Field(
        default_factory=lambda: ["delivered", "opened", "clicked"], min_length=1)


class Step(_Strict):
    """One message of the series, ``delay`` after the previous step (the first: after the
    wait). ``when``: conditions re-checked at send time; false → skipped, recorded.
    ``channels`` in order; ``cascade`` says which of them wait for a receipt before the
    next channel is tried (a channel without an entry ends the step once sent)."""

    delay: Duration = 0
    when: list[Condition] = Field(default_factory=list)
    template: Ident
    channels: list[Channel] = Field(min_length=1)
    cascade: dict[Channel, CascadeWait] = Field(default_factory=dict)
    vars: dict[str, Annotated[str, AfterValidator(check_var_source),
                              Field(json_schema_extra={"pattern": _VAR_SOURCE})]] = Field(
        default_factory=dict,
        description="template variable → source: cart.items, cart.total, instance.key, "
                    "event.type, event.props.<path>, customer.<metric>")


    @model_validator(mode="after")
    def _cascade_channels_listed(self) -> Step:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("a channel is listed twice")
        extra = [c for c in self.cascade if c not in self.channels]
        if extra:
            raise ValueError(f"cascade names channels not in 'channels': {extra}")
        return self


class Variant(_Strict):
    """An arm of an A/B/C test. ``control: true`` arms are recorded, never sent.
    ``templates`` swaps step templates for this arm (base template → variant template)."""

    id: Ident
    weight: float = Field(gt=0)
    control: bool = False
    templates: dict[str, Ident] = Field(default_factory=dict)


class QuietHours(_Strict):
    """Local-time window (customer's zone) in which these channels are held until it ends."""

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    channels: list[Channel] = Field(default_factory=lambda: ["sms", "push"])
    kinds: list[Literal["marketing", "transactional"]] = Field(
        default_factory=lambda: ["marketing"])


class Reentry(_Strict):
    """``cooldown``: no new first message within this time of the last one;
    ``once``: never again."""

    cooldown: Duration | None = None
    once: bool = False


class Trigger(_Strict):
    id: Ident
    kind: Literal["marketing", "transactional"] = "marketing"
    enabled: bool = True
    priority: int = Field(default=50, ge=0, le=100)
    description: str = ""
    start: Start
    key: str | None = Field(default=None, pattern=r"^props(\.[A-Za-z0-9_\-]+)+$",
                            description="props field naming the instance, e.g. props.cart_id")
    wait: Wait = Field(default_factory=lambda: Wait(delay=0))
    cancel_on: list[CancelOn] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    reentry: Reentry = Field(default_factory=Reentry)
    grace: Duration | None = Field(default=None, description="overrides policy late_event_grace")
    variants: list[Variant] = Field(default_factory=list)
    salt: str = Field(default="", description="change to re-draw the variant split")
    on_cap: Literal["skip", "defer"] = "skip"
    quiet_hours: QuietHours | None = Field(
        default=None, description="overrides the policy's quiet hours for this trigger")
    expire_after: Duration | None = Field(
        default=None, description="an instance still running this long after it started ends")
    attribution_window: Duration = Field(default=parse_duration("3d"))

    @model_validator(mode="after")
    def _variants_make_sense(self) -> Trigger:
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant ids must be unique")
        if self.kind == "transactional" and any(v.control for v in self.variants):
            raise ValueError("a transactional trigger cannot have a control variant")
        return self


class Segment(_Strict):
    """A dynamic segment (``config/segments/*.yaml``): a customer is a member while every
    condition holds. Conditions read customer metrics only (``customer.<metric>``,
    ``customer.events.<type>`` with ``within``); membership is re-evaluated after each of
    the customer's events and, when a condition depends on time passing, daily at 00:00
    UTC. A change emits ``segment_entered`` / ``segment_left`` (props: ``segment``)."""

    id: Ident
    description: str = ""
    conditions: list[Condition] = Field(min_length=1)


def _ascending(v: list[float]) -> list[float]:
    if any(b >= a for a, b in zip(v[1:], v, strict=False)):
        raise ValueError(f"boundaries must be strictly ascending, got {v}")
    return v


Boundaries = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=4, max_length=4),
                       AfterValidator(_ascending)]


class Rfm(_Strict):
    """RFM scoring (``config/rfm.yaml``). Each score is 1–5 from four ascending boundaries:
    recency (days since the last order): ≤ b1 → 5, ≤ b2 → 4, ≤ b3 → 3, ≤ b4 → 2, else 1;
    frequency (orders in ``window``) and monetary (their total): ≤ b1 → 1, ≤ b2 → 2,
    ≤ b3 → 3, ≤ b4 → 4, else 5. Quintile boundaries can be computed from ClickHouse
    (``operators.metrics.rfm_boundaries_from_clickhouse``); these are the demo's."""

    window: Duration = Field(default=parse_duration("365d"), description=(
        "frequency and monetary count the orders of this last period"))
    max_orders: int = Field(default=32, ge=2, le=256, description=(
        "orders remembered per customer within the window (frequency saturates there)"))
    recency_days: Boundaries = Field(default_factory=lambda: [30.0, 90.0, 180.0, 365.0])
    frequency: Boundaries = Field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    monetary: Boundaries = Field(default_factory=lambda: [50.0, 150.0, 400.0, 1000.0])

    @model_validator(mode="after")
    def _fits(self) -> Rfm:
        if self.frequency[-1] >= self.max_orders:
            raise ValueError(f"the top frequency boundary ({self.frequency[-1]:g}) must be "
                             f"below max_orders ({self.max_orders})")
        return self


class CapRule(_Strict):
    """At most ``max`` messages per rolling ``window`` in a scope: all messages (global),
    per channel (``channels`` filter), or per trigger (``triggers`` filter). Only messages
    of ``kinds`` count and are capped (transactional is exempt unless listed)."""

    id: Ident
    scope: Literal["global", "channel", "trigger"] = "global"
    max: int = Field(ge=0)
    window: Duration
    channels: list[Channel] = Field(default_factory=list)
    triggers: list[str] = Field(default_factory=list)
    kinds: list[Literal["marketing", "transactional"]] = Field(
        default_factory=lambda: ["marketing"])


class Policy(_Strict):
    """Global policy (``config/policy.yaml``)."""

    caps: list[CapRule] = Field(default_factory=list)
    quiet_hours: QuietHours | None = None
    holdout_percent: float = Field(default=0, ge=0, le=50)
    holdout_salt: str = "holdout"
    profile_retry: Duration = Field(default=parse_duration("5m"),
                                    description="Redis unreachable: marketing retried after")

    late_event_grace: Duration = Field(default=parse_duration("5m"))
    default_timezone: str = "UTC"
    dedup_window: Duration = Field(default=parse_duration("3d"))
    dedup_max_ids: int = Field(default=512, ge=1)

    # Bounded work per customer: one customer's flood must not slow every other key.
    max_instances_per_trigger: int = Field(default=50, ge=1, description=(
        "live instances per customer × trigger; a start beyond it is not started (one "
        "lifecycle row 'not_started: instance_limit' per instance key)"))
    max_cart_lines: int = Field(default=500, ge=1, description=(
        "distinct products in a customer's cart facts; further products are ignored for "
        "cart.items, cart.total and customer.cart_items/cart_total"))
    max_count_slots: int = Field(default=256, ge=1, description=(
        "per-key counters of count-started triggers (start.count) per customer; beyond it "
        "the least recently counted key is forgotten"))
    max_exits: int = Field(default=16, ge=1, description=(
        "recent exit (cancel_on) events remembered per customer, to cancel an instance "
        "whose start event is read after its exit"))


def _duration_or_models(annotation: Any) -> Iterator[Any]:
    """What a field's annotation may hold that the duration walk cares about: DURATION for a
    duration, a model class, or ("list" | "dict", inner annotation)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        if DURATION in annotation.__metadata__:
            yield DURATION
        else:
            yield from _duration_or_models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _duration_or_models(arg)
    elif origin is list:
        yield "list", typing.get_args(annotation)[0]
    elif origin is dict:
        yield "dict", typing.get_args(annotation)[1]
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation


def _bare(annotation: Any, data: Any, loc: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, bool):
        return
    for kind in _duration_or_models(annotation):
        if kind is DURATION and isinstance(data, int | float):
            yield loc
        elif isinstance(kind, tuple) and kind[0] == "list" and isinstance(data, list):
            for i, item in enumerate(data):
                yield from _bare(kind[1], item, (*loc, i))
        elif isinstance(kind, tuple) and kind[0] == "dict" and isinstance(data, dict):
            for k, item in data.items():
                yield from _bare(kind[1], item, (*loc, k))
        elif isinstance(kind, type) and isinstance(data, dict):
            yield from bare_durations(kind, data, loc)


def bare_durations(model: type[BaseModel], data: dict[str, Any],
                   loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths in ``data`` (as read from YAML for ``model``) where a duration is a bare number:
    ``cooldown: 14`` would be 14 milliseconds, never what a marketer means. Code may still
    pass integer milliseconds to the models."""
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        annotation = (Annotated[info.annotation, *info.metadata] if info.metadata
                      else info.annotation)
        yield from _bare(annotation, data[name], (*loc, name))
