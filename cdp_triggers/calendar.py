"""Calendar arithmetic for scheduled and date starts: a small cron, local wall times,
yearly anniversaries, and the date values profiles and events carry. Pure: no clock.

Occurrences are named by a *key* that sorts in time order: ``YYYY-MM-DD HH:MM`` (the local
wall time of a schedule) or ``YYYY-MM-DD`` (an anniversary's date). The engine remembers the
last key it fired per trigger, so a plan made again (the zone changed) never repeats one.

A local time a DST change skips (02:30 on a spring-forward night) is read with the offset
before the change: it happens an hour later on the wall clock. Deterministic, documented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cdp_triggers.clock import local_zone

SEARCH_DAYS = 4 * 366 + 1  # a cron that matches no day within this never matches
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_AT = re.compile(r"^(\d{4}-\d{2}-\d{2}) ([01]\d|2[0-3]):([0-5]\d)$")
_BIRTHDAY = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))


def hhmm(text: str) -> tuple[int, int]:
    """``"09:30"`` → (9, 30); ValueError otherwise."""
    m = _HHMM.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a time of day (write HH:MM, e.g. 09:00)")
    return int(m[1]), int(m[2])


def parse_at(text: str) -> tuple[date, int, int]:
    """``"2026-11-24 10:00"`` → (date, hour, minute); ValueError otherwise."""
    m = _AT.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a date and time (write YYYY-MM-DD HH:MM, "
                         "e.g. 2026-11-24 10:00)")
    try:
        day = date.fromisoformat(m[1])
    except ValueError:
        raise ValueError(f"'{m[1]}' is not a calendar date") from None
    return day, int(m[2]), int(m[3])


def _values(text: str, name: str, low: int, high: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) < 1:
                raise ValueError(f"{name}: '{part}' has a bad step (write e.g. */2)")
            step = int(step_s)
        if rng == "*":
            a, b = low, high
        else:
            a_s, dash, b_s = rng.partition("-")
            if not a_s.isdigit() or (dash and not b_s.isdigit()):
                raise ValueError(f"{name}: '{part}' is not a number, range or * "
                                 "(names such as MON are not supported)")
            a = int(a_s)
            b = int(b_s) if dash else (high if step_s else a)
        if not low <= a <= b <= high:
            raise ValueError(f"{name}: '{part}' is outside {low}-{high}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    """Five fields ``minute hour day-of-month month day-of-week`` with numbers, ``*``,
    ranges ``a-b``, steps ``/n`` and lists ``,``; day of week 0–7 (0 and 7: Sunday). As in
    cron, when both day fields are restricted a day matching either one runs. The minute
    must be one number: a campaign runs at most once an hour."""

    text: str
    minute: int
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday … 6 = Sunday (Python's)
    days_any: bool
    weekdays_any: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"'{text}' has {len(parts)} fields; a cron has 5: minute hour "
                             "day-of-month month day-of-week (e.g. '0 10 * * 1')")
        vals = [_values(p, *f) for p, f in zip(parts, _FIELDS, strict=True)]
        if len(vals[0]) != 1:
            raise ValueError(f"minute: '{parts[0]}' must be one number (a campaign runs at "
                             "most once an hour)")
        cron = cls(text, next(iter(vals[0])), tuple(sorted(vals[1])), vals[2], vals[3],
                   frozenset((d - 1) % 7 for d in vals[4]), parts[2] == "*", parts[4] == "*")
        if cron.next_day(date(2024, 1, 1)) is None:
            raise ValueError(f"'{text}' never happens (no such day)")
        return cron

    def runs_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, day.weekday() in self.weekdays
        if self.days_any or self.weekdays_any:
            return dom and dow
        return dom or dow

    def next_day(self, start: date) -> date | None:
        for i in range(SEARCH_DAYS):
            day = start + timedelta(days=i)
            if self.runs_on(day):
                return day
        return None


def local_ms(day: date, hour: int, minute: int, zone: str) -> int:
    """Epoch ms of a local wall time in ``zone`` (a skipped time: the offset before)."""
    dt = datetime(day.year, day.month, day.day, hour, minute, tzinfo=local_zone(zone))
    return int(dt.timestamp() * 1000)


def local_date(ms: int, zone: str) -> date:
    return datetime.fromtimestamp(ms / 1000, local_zone(zone)).date()


def next_cron(cron: Cron, after: int, zone: str, done: str) -> tuple[int, str] | None:
    """The first run at or after ``after`` whose key sorts after ``done``."""
    day = local_date(after, zone) - timedelta(days=1)
    for _ in range(SEARCH_DAYS):
        found = cron.next_day(day)
        if found is None:
            return None
        for hour in cron.hours:
            key = f"{found.isoformat()} {hour:02d}:{cron.minute:02d}"
            at = local_ms(found, hour, cron.minute, zone)
            if at >= after and key > done:
                return at, key
        day = found + timedelta(days=1)
    return None


def next_at(at: str, after: int, zone: str, done: str) -> tuple[int, str] | None:
    """A one-off date and time: itself if not passed (nor done), else None."""
    day, hour, minute = parse_at(at)
    ms = local_ms(day, hour, minute, zone)
    return (ms, at) if ms >= after and at > done else None


def anniversary(year: int, month: int, day: int) -> date:
    """The date in ``year``; 29 February is the 28th in other years."""
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 or year % 400 == 0)):
        return date(year, 2, 28)
    return date(year, month, day)


def next_anniversary(month: int, day: int, origin_year: int | None, at: tuple[int, int],
                     offset_days: int, after: int, zone: str,
                     done: str) -> tuple[int, str] | None:
    """The next yearly occurrence: the anniversary (of a year after ``origin_year`` when it
    is known) ``offset_days`` away, at local ``at``, at or after ``after``, key after
    ``done``. The key is the anniversary's date."""
    first = local_date(after, zone).year - 1
    for year in range(first, first + 4):
        if origin_year is not None and year <= origin_year:
            continue
        ann = anniversary(year, month, day)
        key = ann.isoformat()
        ms = local_ms(ann + timedelta(days=offset_days), *at, zone)
        if ms >= after and key > done:
            return ms, key
    return None


def birthday(value: object) -> str | None:
    """A birthday as ``MM-DD`` from ``MM-DD`` or ``YYYY-MM-DD`` text, else None (the year
    is not kept: the engine needs the day, not the age)."""
    if not isinstance(value, str):
        return None
    m = _BIRTHDAY.match(value.strip())
    if not m:
        return None
    try:
        date(int(m[1] or 2000), int(m[2]), int(m[3]))  # 2000: a leap year (29 Feb is valid)
    except ValueError:
        return None
    return f"{m[2]}-{m[3]}"


def date_ms(value: object) -> int | None:
    """A moment as epoch ms from epoch ms (int), RFC 3339 text or a ``YYYY-MM-DD`` date
    (00:00 UTC); None when it is none of these or before 1970."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2**53 else None
    if not isinstance(value, str) or len(value) > 40:
        return None
    text = value.strip()
    if text.isdigit():
        return date_ms(int(text))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ms = int(dt.timestamp() * 1000)
    return ms if ms > 0 else None
