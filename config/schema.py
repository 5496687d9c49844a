"""The config schema: what marketers may write in ``config/triggers/*.yaml`` and ``policy.yaml``.

One place owns it. Durations are written ``30m``/``4h``/``7d`` and held as milliseconds.
Unknown keys are errors (``extra="forbid"``), so a typo never silently disables a rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cdp_triggers.durations import parse_duration

Duration = Annotated[int, BeforeValidator(parse_duration, json_schema_input_type=str | int)]
Ident = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Channel = Literal["push", "email", "sms"]
CHANNELS: tuple[str, ...] = ("push", "email", "sms")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CUSTOMER_METRICS = ("orders_count", "total_spent", "last_order_at", "days_since_last_order",
                    "cart_items", "cart_total")
INSTANCE_FIELDS = ("ordered", "key", "age_hours")
_FIELD = (r"^(type|customer_id|props(\.[A-Za-z0-9_\-]+)+"
          rf"|customer\.({'|'.join(CUSTOMER_METRICS)})|instance\.({'|'.join(INSTANCE_FIELDS)}))$")
_VAR_SOURCE = (r"^(cart\.items|cart\.total|instance\.key|event\.type"
               r"|event\.props(\.[A-Za-z0-9_\-]+)+"
               rf"|customer\.({'|'.join(CUSTOMER_METRICS)}))$")


class Condition(_Strict):
    """``field`` is ``type``, ``props.x`` (the event), ``customer.<metric>`` or
    ``instance.<field>``; ``op`` compares it with ``value``."""

    field: str = Field(pattern=_FIELD, description=(
        "type | customer_id | props.<path> | customer.<" + "|".join(CUSTOMER_METRICS)
        + "> | instance.<" + "|".join(INSTANCE_FIELDS) + ">"))
    op: Literal["eq", "ne", "in", "gt", "gte", "lt", "lte", "exists"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op '{self.op}' needs a number value")
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
    vars: dict[str, Annotated[str, Field(pattern=_VAR_SOURCE)]] = Field(
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
