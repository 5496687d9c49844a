"""Durations as marketers write them: ``90s``, ``30m``, ``4h``, ``7d``, ``2w``
(or plain ms ints)."""

from __future__ import annotations

import re

from cdp_triggers.clock import DAY, HOUR, MINUTE, SECOND

_UNITS = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
_PATTERN = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: object) -> int:
    """Return milliseconds; raise ValueError with the offending text otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: negative")
        return value
    if isinstance(value, str):
        m = _PATTERN.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r} (use e.g. 90s, 30m, 4h, 7d)")


def format_duration(ms: int) -> str:
    """Shortest exact text for a duration in ms (inverse of parse_duration)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
