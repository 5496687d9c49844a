"""Smart send time: learn the local hour a customer reads, and hold a message to it.

A customer's reads (``message_opened`` / ``message_clicked`` receipts) go into an hour-of-day
histogram in their local time, decayed with a half-life so habits can change. A step with
``send_at: preferred_hour`` is then held, within its ``within`` window, to the start of the
customer's best hour ("opened at 13:14 and 13:47" → the next message between 13:00 and
14:00); without enough reads, or when that hour does not come within the window, it goes
at once (or at the step's fallback hour).

Pure and order-independent: the histogram holds ``Σ 0.5^((last − tᵢ)/half_life)`` per hour,
the same whatever order the reads arrive in; at most 24 entries per customer.

>>> from datetime import datetime
>>> from cdp_triggers.clock import HOUR, local_zone
>>> t0 = 1_790_000_000_000  # 2026-09-21 14:13:20 UTC
>>> reads = Reads()
>>> for minutes in (0, 33):
...     reads = reads.observe(t0 + minutes * 60_000, "Europe/Berlin", half_life=30 * 86_400_000)
>>> reads.best()
16
>>> at = hold_until(t0 + 2 * HOUR, "Europe/Berlin", 16, within=24 * HOUR)  # 18:13 local
>>> datetime.fromtimestamp(at / 1000, local_zone("Europe/Berlin")).isoformat()
'2026-09-22T16:00:00+02:00'
"""

from __future__ import annotations

from dataclasses import dataclass

from cdp_triggers.clock import local_hour
from cdp_triggers.clock import next_local_hour as hold_until

READ_KINDS = ("opened", "clicked")  # receipts that show when the customer reads
MIN_WEIGHT = 1.5  # decayed reads needed before an hour is trusted (two recent ones)
READ_HALF_LIFE = 30 * 86_400_000  # a read counts half after 30 days: habits may change


@dataclass(frozen=True, slots=True)
class Reads:
    """Decayed reads per local hour: ``weights[h]`` as of ``last`` (epoch ms)."""

    weights: tuple[tuple[int, float], ...] = ()
    last: int = 0

    def observe(self, ts: int, tz: str, half_life: int) -> Reads:
        """One more read at ``ts`` (its local hour in ``tz``)."""
        hour = local_hour(ts, tz)
        w = dict(self.weights)
        if ts > self.last:  # everything so far decays to the new reference time
            if self.last:
                f = 0.5 ** ((ts - self.last) / half_life)
                w = {h: v * f for h, v in w.items()}
            last, add = ts, 1.0
        else:  # an older read counts as decayed to the current reference time
            last, add = self.last, 0.5 ** ((self.last - ts) / half_life)
        w[hour] = w.get(hour, 0.0) + add
        return Reads(tuple(sorted(w.items())), last)

    def best(self, min_weight: float = MIN_WEIGHT) -> int | None:
        """The local hour with the most (decayed) reads, ties to the earliest hour; None
        until the reads add up to ``min_weight``."""
        if sum(v for _, v in self.weights) < min_weight:
            return None
        return max(self.weights, key=lambda hv: (hv[1], -hv[0]))[0]


def send_time(t: int, tz: str, reads: Reads, within: int, fallback_hour: int | None = None,
              min_weight: float = MIN_WEIGHT) -> tuple[int, str]:
    """When a step due at ``t`` goes out, and why: ``(t', "preferred_hour")`` held to the
    customer's best hour, ``(t', "fallback_hour")`` held to the step's fallback hour (too
    few reads), or ``(t, "at_once")`` when neither comes within ``within``."""
    best = reads.best(min_weight)
    for hour, why in ((best, "preferred_hour"), (fallback_hour, "fallback_hour")):
        if hour is not None:
            at = hold_until(t, tz, hour, within)
            if at is not None:
                return at, why
            break  # a known best hour that does not come in time: at once, not fallback
    return t, "at_once"
