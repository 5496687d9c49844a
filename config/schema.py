"""The config schema: what marketers may write in ``config/triggers/*.yaml`` and ``policy.yaml``.

One place owns it. Durations are written ``30m``/``4h``/``7d`` and held as milliseconds.
Unknown keys are errors (``extra="forbid"``), so a typo never silently disables a rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cdp_triggers.durations import parse_duration

Duration = Annotated[int, BeforeValidator(parse_duration)]
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


class Step(_Strict):
    """One message of the series, ``delay`` after the previous step (the first: after the
    wait). ``when``: conditions re-checked at send time; false → skipped, recorded."""

    delay: Duration = 0
    when: list[Condition] = Field(default_factory=list)
    template: Ident
    channels: list[Channel] = Field(min_length=1)
    vars: dict[str, Annotated[str, Field(pattern=_VAR_SOURCE)]] = Field(
        default_factory=dict,
        description="template variable → source: cart.items, cart.total, instance.key, "
                    "event.type, event.props.<path>, customer.<metric>")


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
    expire_after: Duration | None = Field(
        default=None, description="an instance still running this long after it started ends")
    attribution_window: Duration = Field(default=parse_duration("3d"))


class Policy(_Strict):
    """Global policy (``config/policy.yaml``)."""

    late_event_grace: Duration = Field(default=parse_duration("5m"))
    default_timezone: str = "UTC"
    dedup_window: Duration = Field(default=parse_duration("3d"))
    dedup_max_ids: int = Field(default=512, ge=1)
