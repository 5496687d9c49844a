"""Pure policy rules between "a trigger wants to send" and "a send leaves": frequency caps,
quiet hours in the customer's time zone, variant and holdout assignment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdp_triggers.ids import stable_fraction
from config.schema import CapRule, Policy, QuietHours, Trigger, Variant
from state.compact import positional

CONTROL = "control"
HOLDOUT = "holdout"


@positional
@dataclass(frozen=True, slots=True)
class Sent:
    """A message that counts against caps (sent, or "would have sent" for control)."""

    ts: int
    trigger_id: str
    channel: str
    kind: str


# ---- variants and holdout -------------------------------------------------------------

def assign_variant(trigger: Trigger, customer_id: str) -> Variant | None:
    """Stable arm for (customer, trigger, salt): the same on every re-entry and in every
    process; it moves only when the weights (or the salt) change."""
    if not trigger.variants:
        return None
    x = stable_fraction(customer_id, trigger.id, trigger.salt) * sum(
        v.weight for v in trigger.variants)
    for v in trigger.variants:
        x -= v.weight
        if x < 0:
            return v
    return trigger.variants[-1]


def in_holdout(policy: Policy, customer_id: str) -> bool:
    """Global holdout: a stable share of customers gets no marketing (measured, not sent)."""
    return (policy.holdout_percent > 0
            and stable_fraction(customer_id, policy.holdout_salt) * 100 < policy.holdout_percent)


# ---- quiet hours ------------------------------------------------------------------------

@lru_cache(maxsize=512)
def zone(name: str, default: str = "UTC") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def quiet_until(qh: QuietHours, tz: ZoneInfo, t: int) -> int | None:
    """If ``t`` falls in the quiet window in zone ``tz``, the epoch ms when it ends (the
    first local ``end`` after ``t``, DST-correct); else None."""
    local = datetime.fromtimestamp(t / 1000, tz)
    start, end, now = _hm(qh.start), _hm(qh.end), local.time().replace(tzinfo=None)
    if start == end:
        return None
    quiet = (start <= now < end) if start < end else (now >= start or now < end)
    if not quiet:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    ends = datetime.combine(day, end, tzinfo=tz)
    # a wall time that does not exist (spring forward) maps past the gap; fold=0 is fine
    return int(ends.timestamp() * 1000)


# ---- frequency caps -----------------------------------------------------------------------

def _applies(rule: CapRule, trigger_id: str, channel: str, kind: str) -> bool:
    if kind not in rule.kinds:
        return False
    if rule.channels and channel not in rule.channels:
        return False
    return not (rule.triggers and trigger_id not in rule.triggers)


def _same_bucket(rule: CapRule, s: Sent, trigger_id: str, channel: str) -> bool:
    if s.kind not in rule.kinds:
        return False
    if rule.scope == "channel":
        return s.channel == channel
    if rule.scope == "trigger":
        return s.trigger_id == trigger_id
    return not rule.channels or s.channel in rule.channels


def cap_check(rules: Iterable[CapRule], log: list[Sent], t: int, trigger_id: str,
              channel: str, kind: str) -> tuple[CapRule, int] | None:
    """None if a message may go at ``t``; else (the strictest rule, when the first slot
    frees up under every rule that caps it)."""
    capped: list[tuple[int, str, CapRule]] = []
    for rule in rules:
        if not _applies(rule, trigger_id, channel, kind):
            continue
        times = sorted(s.ts for s in log
                       if t - rule.window < s.ts <= t and _same_bucket(rule, s, trigger_id,
                                                                        channel))
        if len(times) >= rule.max:
            free_at = times[len(times) - rule.max] + rule.window if rule.max else 2**62
            capped.append((free_at, rule.id, rule))
    if not capped:
        return None
    free_at, _, rule = max(capped, key=lambda c: c[:2])
    return rule, free_at


def max_cap_window(policy: Policy) -> int:
    return max((r.window for r in policy.caps), default=0)
