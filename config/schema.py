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
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from cdp_triggers import calendar
from cdp_triggers.durations import parse_duration


class _DurationMark:
    """Marks a :data:`Duration` field, so the loader can refuse bare numbers in YAML."""


DURATION = _DurationMark()
Duration = Annotated[int, BeforeValidator(parse_duration, json_schema_input_type=str | int),
                     DURATION]
Ident = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Channel = Literal["push", "email", "sms"]  # = cdp_triggers.records.CHANNELS (tested)


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
INSTANCE_FIELDS = ("ordered", "key", "age_hours", "repurchased", "previous_outcome",
                   "previous_channel")
#: instance.previous_outcome: the best receipt of the instance's latest message (its step's
#: sends), "none" before any receipt (or before any message)
PREVIOUS_OUTCOMES = ("none", "delivered", "opened", "clicked")
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

    @cached_property  # read per event: worked out once
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

    @cached_property  # read per event: worked out once
    def counted(self) -> str | None:
        """The event type an event-count condition counts, else None."""
        return self.field[len(EVENTS_FIELD):] if self.field.startswith(EVENTS_FIELD) else None

    @model_validator(mode="after")
    def _quantified_field_is_props(self) -> Condition:
        if self.quantifier and not (self.field.startswith("props.")
                                    or self.field == "customer.segments"):
            raise ValueError("'any'/'all' test the items of a list: the field must be "
                             "props.<path> or customer.segments")
        if self.field == "instance.previous_outcome" and self.op in ("eq", "ne", "in"):
            values = self.value if isinstance(self.value, list) else [self.value]
            bad = [v for v in values if v not in PREVIOUS_OUTCOMES]
            if bad:
                raise ValueError(f"instance.previous_outcome is one of "
                                 f"{', '.join(PREVIOUS_OUTCOMES)}; not {bad[0]!r}")
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

    @cached_property  # read per event: worked out once
    def types(self) -> tuple[str, ...]:
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


DATE_SOURCES = ("profile.birthday", "profile.registered_at", "customer.first_order_at")


def _calendar_check(parse: Any) -> Any:
    """A validator running a :mod:`cdp_triggers.calendar` parser on the text."""
    def check(text: str) -> str:
        parse(text)
        return text
    return AfterValidator(check)


def _offset_days(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"write a number of days, e.g. {value:g}d or -{abs(value):g}d")
    if not isinstance(value, str) or not re.match(r"^[+-]?\d{1,2}d$", value.strip()):
        raise ValueError(f"{value!r} is not a day offset (write e.g. 0d, -3d, 7d; at most "
                         "99 days)")
    return value.strip()


class Schedule(_Strict):
    """When a scheduled campaign runs: once ``at`` a date and time, or on a ``cron``
    (``minute hour day-of-month month day-of-week``; numbers, ``*``, ranges, steps, lists;
    one minute: at most once an hour). ``local``: in each customer's zone (their profile's,
    else the policy's default); ``local: false``: in the policy's default zone for all."""

    at: Annotated[str, _calendar_check(calendar.parse_at)] | None = Field(
        default=None, description="YYYY-MM-DD HH:MM, once")
    cron: Annotated[str, _calendar_check(calendar.Cron.parse)] | None = Field(
        default=None, description="e.g. '0 10 * * 1' (Mondays 10:00)")
    local: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.at is None) == (self.cron is None):
            raise ValueError("set exactly one of 'at' (a date and time) or 'cron'")
        return self


def _event_optional(schema: dict[str, Any]) -> None:
    """Editors: a start needs an event, a schedule or a date (the model says which)."""
    schema["required"] = [r for r in schema.get("required", []) if r != "event"]
    if not schema["required"]:
        del schema["required"]


class Start(EventMatch):
    """What starts an instance: an ``event`` (with ``where`` conditions and a ``count``),
    or time: a ``schedule`` (a campaign) or a ``date`` of the customer (``profile.birthday``,
    ``profile.registered_at``, ``customer.first_order_at``: yearly, ``offset`` days away
    (-3d: three days before), ``at`` local time). A timed start may name a ``segment`` the
    customer must be in and ``spread`` its customers over a window (stable per customer);
    its ``where`` reads customer metrics only. Its instance key is the occurrence."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_event_optional)

    event: str | list[str]  # required unless a schedule or date is given (see _timed_start)
    count: Count | None = None
    schedule: Schedule | None = None
    date: Literal["profile.birthday", "profile.registered_at",
                  "customer.first_order_at"] | None = Field(default=None, description=(
                      "a date of the customer: the start recurs on its anniversary"))
    at: Annotated[str, _calendar_check(calendar.hhmm)] | None = Field(
        default=None, description="date starts: local time of day, HH:MM (default 09:00)")
    offset: Annotated[str, BeforeValidator(_offset_days)] = Field(
        default="0d", description="date starts: days from the date, e.g. -3d")
    segment: Ident | None = Field(default=None, description=(
        "timed starts: only customers in this segment (config/segments)"))
    spread: Duration | None = Field(default=None, description=(
        "timed starts: each customer at a stable offset within this window"))

    @cached_property  # read per event: worked out once
    def timed(self) -> bool:
        """Started by time (schedule or date), not by an event."""
        return self.schedule is not None or self.date is not None

    @property
    def offset_days(self) -> int:
        return int(self.offset[:-1])

    @property
    def at_time(self) -> tuple[int, int]:
        return calendar.hhmm(self.at or "09:00")

    @model_validator(mode="before")
    @classmethod
    def _timed_start(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event" not in data and (
                data.get("schedule") is not None or data.get("date") is not None):
            return {**data, "event": []}  # started by time: no event types
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Start:
        if self.event == [] and not self.timed:
            raise ValueError("'event' names at least one event type")
        kinds = [k for k, v in (("event", self.event), ("schedule", self.schedule),
                                ("date", self.date)) if v]
        if len(kinds) != 1:
            raise ValueError("set exactly one of 'event', 'schedule' or 'date'"
                             + (f" (got {' and '.join(kinds)})" if kinds else ""))
        if self.date is None:
            extra = [k for k in ("at", "offset") if k in self.model_fields_set]
            if extra:
                raise ValueError(f"'{extra[0]}' applies to a date start "
                                 "(start.schedule has its own 'at')")
        if self.timed:
            if self.count is not None:
                raise ValueError("'count' applies to event starts only")
            bad = next((c.field for c in self.where if not c.field.startswith("customer.")),
                       None)
            if bad:
                raise ValueError(f"a {kinds[0]} start has no event: where reads customer.* "
                                 f"only, not '{bad}'")
        elif self.segment is not None or self.spread is not None:
            raise ValueError("'segment' and 'spread' apply to schedule and date starts (an "
                             "event start reads customer.segments in 'where')")
        if self.spread is not None and not 0 < self.spread <= 7 * 86_400_000:
            raise ValueError("'spread' must be longer than 0 and at most 7d")
        return self


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

    @cached_property  # read per event: worked out once
    def ms(self) -> int:
        return self.inactivity if self.inactivity is not None else self.delay or 0


OUTCOMES = ("delivered", "opened", "clicked")


class CascadeWait(_Strict):
    """After a send on this channel, wait ``wait`` for one of ``until`` (outcomes of that
    send); none in time → the next channel of the step that has consent and contact."""

    wait: Duration
    until: list[Literal["delivered", "opened", "clicked"]] = Field(
        default_factory=lambda: ["delivered", "opened", "clicked"], min_length=1)


class _Planted:
    """A problem found across steps (see :func:`branch_problems`), put in place of the value
    it is about, so validation reports it at that value's file:line:field."""

    def __init__(self, message: str) -> None:
        self.message = message


def _refuse_planted(value: Any) -> Any:
    if isinstance(value, _Planted):
        raise ValueError(value.message)
    return value


class _Checked(_Strict):
    """A model a cross-step problem may be planted in place of."""

    @model_validator(mode="before")
    @classmethod
    def _planted(cls, data: Any) -> Any:
        return _refuse_planted(data)


HOUR_OF_DAY = re.compile(r"^([01]\d|2[0-3]):00$")


class SendAt(_Strict):
    """Smart send time: hold the step's message to the start of the customer's best local
    hour (from the hours they opened/clicked before) if it comes ``within`` of the step's
    due time; too few reads → the ``fallback`` hour (same window), else at once. Quiet hours
    and caps are checked at the held time as usual. ``send_at: preferred_hour`` is short for
    ``{mode: preferred_hour}``."""

    mode: Literal["preferred_hour"] = "preferred_hour"
    within: Duration = Field(default=parse_duration("24h"), description=(
        "hold at most this long after the step is due"))
    fallback: str | None = Field(default=None, description=(
        "HH:00 local hour for customers with too few reads (none: at once)"))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _sane(self) -> SendAt:
        if self.within <= 0:
            raise ValueError("'within' must be longer than 0")
        if self.fallback is not None and not HOUR_OF_DAY.match(self.fallback):
            raise ValueError(f"fallback {self.fallback!r} is not an hour of the day: write "
                             "HH:00, e.g. \"10:00\"")
        return self

    @property
    def fallback_hour(self) -> int | None:
        return None if self.fallback is None else int(self.fallback[:2])


END = "end"  # a branch's goto that ends the chain


class Branch(_Checked):
    """Where the chain goes after a step: the first entry whose ``when`` holds (no ``when``:
    always) names the next step by its ``id``, or ``end``."""

    when: Annotated[list[Condition], BeforeValidator(_refuse_planted)] = Field(
        default_factory=list, description=(
            "conditions on customer.* and instance.* (e.g. instance.previous_outcome)"))
    goto: Annotated[str, BeforeValidator(_refuse_planted)] = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a later step's id, or end")

    @model_validator(mode="after")
    def _no_event(self) -> Branch:
        bad = next((c.field for c in self.when if c.field.startswith("props.")
                    or c.field in ("type", "customer_id")), None)
        if bad:
            raise ValueError(f"a branch is decided without an event: '{bad}' has nothing to "
                             "read (use customer.* or instance.* fields)")
        return self


class Step(_Checked):
    """One message of the series, ``delay`` after the previous step (the first: after the
    wait). ``when``: conditions re-checked at send time; false → skipped, recorded.
    ``channels`` in order; ``cascade`` says which of them wait for a receipt before the
    next channel is tried (a channel without an entry ends the step once sent)."""

    id: Annotated[Ident | None, BeforeValidator(_refuse_planted)] = Field(
        default=None, description="names the step for a branch's goto")
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
    send_at: SendAt | None = Field(default=None, description=(
        "preferred_hour: hold the message to the customer's best local hour"))
    branch: list[Branch] = Field(default_factory=list, description=(
        "after this step: the first entry whose when holds names the next step (goto: a "
        "later step's id, or end); decided when the earliest of its targets is due"))


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


def branch_problems(steps: list[Any]) -> list[tuple[tuple[Any, ...], str]]:
    """What is wrong with a chain's step ids and branches, as (path under ``steps``,
    message): a repeated or reserved id, a goto to an unknown or earlier step (a chain only
    moves forward, so it has no loops), a branch entry after an unconditional one, a branch
    whose last entry has a ``when`` (the chain must always know where to go), a step no path
    from the first reaches. Works on raw YAML data (anything malformed is left to the
    models)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    ids: dict[str, int] = {}
    for i, step in enumerate(steps):
        sid = step.get("id") if isinstance(step, dict) else None
        if not isinstance(sid, str):
            continue
        if sid == END:
            out.append(((i, "id"), f"'{END}' is reserved: a branch's 'goto: {END}' ends the "
                                   "chain"))
        elif sid in ids:
            out.append(((i, "id"), f"step id '{sid}' is taken by steps[{ids[sid]}]"))
        else:
            ids[sid] = i
    reached = {0}
    for i, step in enumerate(steps):
        branch = step.get("branch") if isinstance(step, dict) else None
        if not isinstance(branch, list) or not branch:
            if i in reached:
                reached.add(i + 1)
            continue
        always = None
        for k, entry in enumerate(branch):
            if not isinstance(entry, dict):
                continue
            if always is not None:
                out.append(((i, "branch", k), f"unreachable: branch[{always}] before it has "
                                              "no 'when', so the chain always goes there"))
                continue
            if not entry.get("when"):
                always = k
            goto = entry.get("goto")
            if not isinstance(goto, str) or goto == END:
                continue
            j = ids.get(goto)
            if j is None:
                known = ", ".join([*ids, END])
                out.append(((i, "branch", k, "goto"), f"unknown step '{goto}'"
                            f"{_hint(goto, [*ids, END])} (step ids: {known})"))
            elif j <= i:
                out.append(((i, "branch", k, "goto"), f"goes back to steps[{j}] ('{goto}'): "
                            "a chain only moves forward (no loops)"))
            elif i in reached:
                reached.add(j)
        if always is None:
            out.append(((i, "branch", len(branch) - 1, "when"), "the last branch entry must "
                        "have no 'when' (e.g. {goto: end}), so the chain always knows where "
                        "to go"))
    for i in range(1, len(steps)):
        if i not in reached:
            how = ("no branch goes to it" if isinstance(steps[i], dict) and steps[i].get("id")
                   else "it has no id for a branch's goto")
            out.append(((i,), f"unreachable: no path from the first step leads here ({how})"))
    return out


def _plant(data: Any, path: tuple[Any, ...], message: str) -> Any:
    """A copy of ``data`` with a :class:`_Planted` problem in place of the value at ``path``
    (copied along the path only)."""
    if not path:
        return _Planted(message)
    head, rest = path[0], path[1:]
    if isinstance(data, dict) and (head in data or not rest):
        return {**data, head: _plant(data.get(head), rest, message)}
    if isinstance(data, list) and isinstance(head, int) and head < len(data):
        return [*data[:head], _plant(data[head], rest, message), *data[head + 1:]]
    return data


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

    @model_validator(mode="before")
    @classmethod
    def _branches_make_sense(cls, data: Any) -> Any:
        """Cross-step problems, each planted on its value (file:line:field in errors)."""
        steps = data.get("steps") if isinstance(data, dict) else None
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            return data
        for path, message in branch_problems(steps):
            data = _plant(data, ("steps", *path), message)
        return data

    @model_validator(mode="after")
    def _chain_is_whole(self) -> Trigger:
        """The same checks for a trigger built in code from Step objects."""
        problems = branch_problems([s.model_dump(include={"id", "branch"}) for s in self.steps])
        if problems:
            path, message = problems[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
            raise ValueError(f"steps{where}: {message}")
        return self

    def next_steps(self, i: int) -> tuple[int | None, ...]:
        """Where the chain may go after step ``i`` (None: the end)."""
        step = self.steps[i]
        if not step.branch:
            return (i + 1 if i + 1 < len(self.steps) else None,)
        return tuple(self.step_index(b.goto) for b in step.branch)

    def step_index(self, goto: str) -> int | None:
        """The position of the step a goto names (None: ``end``)."""
        return next((j for j, s in enumerate(self.steps) if s.id == goto), None)

    @model_validator(mode="after")
    def _variants_make_sense(self) -> Trigger:
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant ids must be unique")
        if self.kind == "transactional" and any(v.control for v in self.variants):
            raise ValueError("a transactional trigger cannot have a control variant")
        if self.start.timed and self.key is not None:
            raise ValueError("a schedule or date start has no event to take a key from: "
                             "its instance key is the occurrence (remove 'key')")
        if self.start.timed and (self.wait.inactivity is not None or self.wait.reset_on):
            raise ValueError("a schedule or date start has no activity to wait out: use "
                             "wait.delay (or a step's delay)")
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
