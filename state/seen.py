"""The event ids a customer has had (dedupe), oldest first, in two flat buffers.

A ``dict`` of event id → ts cost ~130 bytes an entry (the key's str object, an int object
per ts, the dict's slots) and it is the largest part of an active customer's memory. Here
the ids are one string (``SEP`` before and after each id) searched in C, and the times one
``array('q')``: ~22 bytes an entry. An id holding ``SEP`` or ``ESC`` is kept escaped, so a
match is always a whole id. Insertion order is the order of arrival, as a dict's was.

>>> s = SeenIds()
>>> s.add("e1", 1000), s.add("e2", 2000), s.add("e1", 3000)
(True, True, False)
>>> "e1" in s, "e" in s, len(s), s.oldest_ts()
(True, False, 2, 1000)
>>> s.drop_oldest(); s.items()
[('e2', 2000)]
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Iterable

SEP, ESC = "\x1f", "\x1e"
_UNESCAPE = re.compile(f"{ESC}(.)", re.S)


def _enc(event_id: str) -> str:
    if SEP in event_id or ESC in event_id:
        return event_id.replace(ESC, ESC + ESC).replace(SEP, ESC + "s")
    return event_id


def _dec(token: str) -> str:
    if ESC not in token:
        return token
    return _UNESCAPE.sub(lambda m: SEP if m[1] == "s" else ESC, token)


class SeenIds:
    """Event id → event time, oldest first (what ``CustomerState.seen`` holds)."""

    __slots__ = ("ids", "ts")

    def __init__(self, ids: str = SEP, ts: array | bytes = b"") -> None:
        self.ids = ids
        if type(ts) is array:
            self.ts = ts
        else:
            self.ts = array("q")
            self.ts.frombytes(ts)
            if sys.byteorder == "big":
                self.ts.byteswap()

    @classmethod
    def of(cls, pairs: dict[str, int] | Iterable[tuple[str, int]]) -> SeenIds:
        """From ``{event_id: ts}`` (the former form of ``seen``) or pairs, in order."""
        items = list(pairs.items() if isinstance(pairs, dict) else pairs)
        ids = SEP + "".join(_enc(k) + SEP for k, _ in items)
        return cls(ids, array("q", [v for _, v in items]))

    def __contains__(self, event_id: str) -> bool:
        return f"{SEP}{_enc(event_id)}{SEP}" in self.ids

    def __len__(self) -> int:
        return len(self.ts)

    def add(self, event_id: str, ts: int, most: int = 0) -> bool:
        """Remember ``event_id`` at ``ts`` unless it is here already (then False: a
        duplicate); with ``most``, the oldest id goes once there are more than that."""
        token = event_id if SEP not in event_id and ESC not in event_id else _enc(event_id)
        ids = self.ids
        if f"{SEP}{token}{SEP}" in ids:
            return False
        self.ids = f"{ids}{token}{SEP}"
        self.ts.append(ts)
        if most and len(self.ts) > most:
            self.drop_oldest()
        return True

    def oldest_ts(self) -> int:
        return self.ts[0]

    def drop_oldest(self) -> None:
        self.ids = self.ids[self.ids.index(SEP, 1):]
        del self.ts[0]

    def keep(self, since: int, most: int) -> None:
        """Keep the ids seen at or after ``since``, at most the ``most`` newest of them."""
        kept = [(k, v) for k, v in zip(self._tokens(), self.ts, strict=True) if v >= since]
        kept = kept[-most:] if most > 0 else []
        self.ids = SEP + "".join(k + SEP for k, _ in kept)
        self.ts = array("q", [v for _, v in kept])

    def clear(self) -> None:
        self.ids, self.ts = SEP, array("q")

    def items(self) -> list[tuple[str, int]]:
        return [(_dec(k), v) for k, v in zip(self._tokens(), self.ts, strict=True)]

    def _tokens(self) -> list[str]:
        return self.ids[1:-1].split(SEP) if self.ts else []

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self.items() == list(other.items())
        return isinstance(other, SeenIds) and self.ids == other.ids and self.ts == other.ts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SeenIds({dict(self.items())!r})"

    def __reduce__(self) -> tuple[type[SeenIds], tuple[str, bytes]]:
        """The id string and the times as little-endian bytes."""
        ts = self.ts
        if sys.byteorder == "big":
            ts = array("q", ts)
            ts.byteswap()
        return SeenIds, (self.ids, ts.tobytes())
