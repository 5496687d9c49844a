"""What the engine reads and emits: the customer profile it is given, and the records every
sink writes.

Each record carries a deterministic id, so that a replay or an at-least-once recovery
writes the same ids again and idempotent sinks (ClickHouse ReplacingMergeTree views, the
sends topic keyed by send id) keep exactly one copy. Times are epoch ms UTC: ``ts`` is the
logical (event-time) moment the record is about, ``decided_at`` the engine's ``now``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from cdp_triggers import calendar
from state.compact import Codec, Upgradable, record

CHANNELS = ("push", "email", "sms")
CATEGORIES = ("marketing", "transactional")

# Decision statuses
SENT = "sent"
SUPPRESSED = "suppressed"  # not sent, with a reason
CANCELLED = "cancelled"  # the instance was cancelled before this message went out
DEFERRED = "deferred"  # held (quiet hours, cap with on_cap: defer, profile store down)

# Suppression reasons (stable codes; analysts group by them)
NO_CONSENT = "no_consent"
NO_CONTACT = "no_contact"
NO_PROFILE = "no_profile"
PROFILE_UNAVAILABLE = "profile_unavailable"  # the profile store did not answer
REENTRY_COOLDOWN = "reentry_cooldown"
REENTRY_ONCE = "reentry_once"
CANCEL_EVENT = "cancel_event"
TRIGGER_DISABLED = "trigger_disabled"
CAPPED = "capped"
QUIET_HOURS_DEFERRED = "quiet_hours_deferred"
CONTROL_GROUP = "control_group"  # would have sent (after every check): the variant is control
HOLDOUT = "holdout"  # would have sent: the customer is in the global holdout
CONTACT_INVALID = "contact_invalid"  # the channel's contact hard-bounced
CONDITION_NOT_MET = "condition_not_met"  # a step's `when` was false at send time: skipped
EXPIRED = "expired"  # the instance outlived its trigger's expire_after
INSTANCE_LIMIT = "instance_limit"  # not started: the customer × trigger has too many live ones
SEND_TIME_DEFERRED = "send_time_deferred"  # held to the customer's best hour (send_at)
BRANCHED = "branched"  # lifecycle action: a step's branch chose the next step (reason a→b)


class ProfileUnavailable(Exception):
    """The profile store did not answer: callers must not guess consent."""


@dataclass(frozen=True, slots=True)
class Profile(Upgradable):
    """A customer's profile as the engine reads it: zone, locale, which channels have a
    contact (flags only, never addresses) and consents per ``channel:category``. Kept in
    customer state (the last one read), so it pickles compactly and a profile kept before a
    field existed restores with its default (:mod:`state.compact`)."""

    __getstate__ = Upgradable.__getstate__
    # a shared consent map pickles as the plain dict it stands for, and is shared again
    __packed__ = {"consents": Codec(dict, lambda d: shared_map(d), dict)}

    def __setstate__(self, state: Any) -> None:
        """Restored (a snapshot, a dormant customer) with its parts shared, as read."""
        Upgradable.__setstate__(self, state)
        for name in ("timezone", "locale", "contacts", "birthday"):
            object.__setattr__(self, name, shared(getattr(self, name)))

    customer_id: str
    timezone: str = ""  # IANA zone; "" = unknown (the policy's default_timezone applies)
    locale: str = "en"
    contacts: frozenset[str] = field(default_factory=frozenset)
    consents: Mapping[str, bool] = field(default_factory=dict)
    birthday: str = ""  # MM-DD ("" = unknown): date triggers (profile.birthday)
    registered_at: int = 0  # epoch ms (0 = unknown): date triggers (profile.registered_at)

    def has_contact(self, channel: str) -> bool:
        return channel in self.contacts

    def consent(self, channel: str, category: str) -> bool | None:
        """True/False when the customer said so, None when unknown."""
        return self.consents.get(f"{channel}:{category}")

    def to_redis(self) -> dict[str, str]:
        fields = {
            "tz": self.timezone,
            "locale": self.locale,
            "contacts": ",".join(sorted(self.contacts)),
        }
        for k, v in self.consents.items():
            fields[f"consent:{k}"] = "1" if v else "0"
        if self.birthday:
            fields["birthday"] = self.birthday
        if self.registered_at:
            fields["registered_at"] = str(self.registered_at)
        return fields

    @classmethod
    def from_redis(cls, customer_id: str, h: Mapping[bytes | str, bytes | str]) -> Profile:
        d = {_s(k): _s(v) for k, v in h.items()}
        invalid = {k[8:] for k, v in d.items() if k.startswith("invalid:") and v == "1"}
        contacts = frozenset(c for c in d.get("contacts", "").split(",") if c and c not in invalid)
        consents = {k[8:]: v == "1" for k, v in d.items() if k.startswith("consent:")}
        registered = d.get("registered_at", "")  # a profile from before these reads as unknown
        return cls(customer_id, shared(d.get("tz") or ""), shared(d.get("locale") or "en"),
                   shared(contacts), shared_map(consents),
                   shared(calendar.birthday(d.get("birthday")) or ""),
                   int(registered) if registered.isdigit() else 0)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class ReadOnlyMap(dict):
    """A map shared by many profiles (:func:`shared_map`): refuses writes, pickles as a
    plain dict."""

    __slots__ = ()
    __hash__ = object.__hash__

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError("a shared profile map is read-only")

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


_SHARED: dict[Any, Any] = {}  # a value → the one object kept for it
_SHARED_MAX = 50_000  # distinct values kept (zones, locales, contact sets, consent maps…)


def shared(value: Any) -> Any:
    """One object for equal profile values across customers: zones, locales, birthdays,
    contact sets repeat (a profile is kept in each customer's state, ~900 B when every
    part is its own copy). Past ``_SHARED_MAX`` distinct values, the value itself."""
    got = _SHARED.get(value)
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:
            return value
        got = _SHARED[value] = value
    return got


def shared_map(consents: Mapping[str, bool]) -> Mapping[str, bool]:
    """One read-only map for equal consent maps (there are few distinct ones)."""
    key = ("consents", frozenset(consents.items()))
    got = _SHARED.get(key)
    if got is None:
        got = ReadOnlyMap({sys.intern(k): v for k, v in consents.items()})
        if len(_SHARED) < _SHARED_MAX:
            _SHARED[key] = got
    return got


@record
class Decision:
    """One considered message (trigger × step × channel): sent, or not sent with a reason."""

    decision_id: str
    send_id: str
    customer_id: str
    trigger_id: str
    trigger_kind: str
    config_version: str
    instance_id: str
    step: int
    channel: str
    template: str
    variant: str
    status: str
    reason: str
    ts: int
    decided_at: int
    detail: str = ""  # e.g. which cap rule capped it
    tz: str = ""  # the customer's zone (not personal data): local-time reports


@record
class Send:
    """A command for a channel gateway. ``send_id`` is the Kafka key: gateways dedupe on it."""

    send_id: str
    customer_id: str
    trigger_id: str
    trigger_kind: str
    config_version: str
    instance_id: str
    step: int
    channel: str
    template: str
    variant: str
    variables: dict[str, Any] = field(default_factory=dict)
    ts: int = 0
    decided_at: int = 0
    tz: str = ""  # the customer's zone: local-time reports, smart send time


@record
class Lifecycle:
    """A trigger instance changed: ``started``, ``cancelled``, ``completed`` or ``expired``;
    ``branched`` (reason ``<from step id>→<to step id>``: which way a step's branch went);
    or ``not_started`` (reason ``instance_limit``, once per instance key, no instance id)."""

    lifecycle_id: str
    customer_id: str
    trigger_id: str
    instance_id: str
    instance_key: str
    action: str
    reason: str
    event_id: str
    ts: int
    decided_at: int


@record
class Conversion:
    """An ``order_placed`` attributed (last touch) to a marketing message within its
    attribution window: sent (arm ``treated``, the only arm credited with revenue) or
    recorded as "would have sent" (arm ``control`` or ``holdout``, counted only in its arm).
    Transactional messages are never credited."""

    conversion_id: str
    customer_id: str
    order_id: str
    revenue: float
    currency: str
    send_id: str
    trigger_id: str
    variant: str
    channel: str
    sent_at: int
    ts: int
    arm: str = "treated"  # treated | control | holdout


@record
class Outcome:
    """A delivery receipt from a channel gateway, joined to the send it is about."""

    outcome_id: str
    send_id: str
    customer_id: str
    channel: str
    outcome: str  # delivered | opened | clicked | bounced | failed | unsubscribed
    trigger_id: str
    variant: str
    step: int
    sent_at: int
    ts: int


START_CONDITION_NOT_MET = "start_condition_not_met"  # a start event whose `where` failed
COUNT_NOT_REACHED = "count_not_reached"  # a start event short of `start.count`


@record
class StartMiss:
    """A trigger that did not start on this customer's events, counted, not one row per
    event: one id per customer × trigger × reason × UTC day, re-emitted with the count at
    1, 2, 4, 8, … and with its final count once a later day's miss closes the day (so a
    count is exact for a closed day and at least half the true one otherwise)."""

    miss_id: str
    customer_id: str
    trigger_id: str
    reason: str
    day: int  # epoch day (UTC) of the misses
    count: int
    first_ts: int
    last_ts: int


@record
class ProfileUpdate:
    """A change the profile store must learn (an unsubscribe, a hard bounce)."""

    customer_id: str
    field: str  # "consent:<channel>:<category>" or "invalid:<channel>"
    value: str
    ts: int


@record
class Duplicate:
    """An event whose event_id this customer already had: dropped, but counted."""

    event_id: str
    customer_id: str
    event_type: str
    source: str
    ts: int


#: props never stored with an input: contact details a producer may have put there
CONTACT_PROPS = frozenset({"email", "phone", "phone_number", "msisdn", "address", "name",
                           "first_name", "last_name", "push_token", "device_token"})
MAX_INPUT_PROPS = 4096  # bytes of props JSON kept with an input (longer: cut, marked)


@record
class InputSeen:
    """An input event that mattered to this customer's decisions — it started, reset or
    cancelled an instance, or was a conversion, receipt or consent — kept for the customer's
    history (raw table with the raw-payload retention). ``effect`` names what it did
    (comma-joined, sorted); ``props`` is JSON without contact details."""

    event_id: str
    customer_id: str
    type: str
    ts: int
    source: str
    props: str
    effect: str

    @classmethod
    def of(cls, event: Any, effects: set[str]) -> InputSeen:
        """From a parsed ``cdp_triggers.events.Event``."""
        props = {k: v for k, v in event.props.items() if k not in CONTACT_PROPS}
        text = orjson.dumps(props, default=str, option=orjson.OPT_SORT_KEYS).decode()
        if len(text) > MAX_INPUT_PROPS:
            text = orjson.dumps({"truncated": True, "bytes": len(text)}).decode()
        return cls(event.event_id, event.customer_id, event.type, event.ts, event.source,
                   text, ",".join(sorted(effects)))


@record
class SegmentChange:
    """A customer entered or left a dynamic segment (config/segments) at event time ``ts``;
    the engine also applies it as a ``segment_entered`` / ``segment_left`` event whose
    ``event_id`` is this ``change_id``."""

    change_id: str
    customer_id: str
    segment: str
    action: str  # entered | left
    ts: int
    decided_at: int
    config_version: str


Output = (Decision | Send | Lifecycle | Conversion | Outcome | ProfileUpdate | Duplicate
          | StartMiss | InputSeen | SegmentChange)


def to_dict(record: Output) -> dict[str, Any]:
    return asdict(record)
