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


class Condition(_Strict):
    """``field`` is a dotted path into the event (``props.total``, ``type``)."""

    field: str = Field(min_length=1)
    op: Literal["eq", "ne", "in", "gt", "gte", "lt", "lte", "exists"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op '{self.op}' needs a number value")
        return self


class EventMatch(_Strict):
    """An event type plus optional conditions that must all hold."""

    event: str = Field(min_length=1)
    where: list[Condition] = Field(default_factory=list)


class Wait(_Strict):
    """Before the first step: ``inactivity`` (restarted by ``reset_on`` events) or
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
    """One message of the series, ``delay`` after the previous step (the first: after the wait)."""

    delay: Duration = 0
    template: Ident
    channels: list[Channel] = Field(min_length=1)


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
    start: EventMatch
    key: str | None = Field(
        default=None, description="props field naming the instance, e.g. props.cart_id")
    wait: Wait = Field(default_factory=lambda: Wait(delay=0))
    cancel_on: list[EventMatch] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    reentry: Reentry = Field(default_factory=Reentry)
    attribution_window: Duration = Field(default=parse_duration("3d"))


class Policy(_Strict):
    """Global policy (``config/policy.yaml``)."""

    late_event_grace: Duration = Field(default=parse_duration("5m"))
    default_timezone: str = "UTC"
    dedup_window: Duration = Field(default=parse_duration("3d"))
    dedup_max_ids: int = Field(default=512, ge=1)
