"""Event-time alignment of one input shard: the pure part (no I/O, no Bytewax).

A shard is a set of input *streams* (Kafka partitions, JSONL files, a generator) that hold
all the events of a set of customers, plus every catalogue update. The aligner takes what
the streams read, in whatever order they were read, and releases it in one canonical order:
by ``(ts, event_id)``, behind a watermark

    W = min over streams of   +inf                    a stream at its end (finite input)
                              wall clock              a live stream with nothing unread
                              newest ts - lateness    otherwise (-inf before its first event)

so an event is released once no stream can still bring an earlier one, as long as each
stream is no more than ``lateness`` ms out of event-time order (``max_out_of_orderness``).
Events older than what was already released are *late*: they are released at once and
counted. Catalogue state follows the same order: product-interest events and
``product_updated`` are applied to the shard's product states as they are released, and the
derived ``price_dropped``/``back_in_stock`` events take their ``(ts, event_id)`` place in the
released batch. Per customer, the released sequence is therefore the same whatever the read
order, the number of shards, processes or workers: the property the flow's determinism
(Kafka backfill ≡ file replay) rests on.
"""

from __future__ import annotations

import heapq
import pickle
from dataclasses import dataclass, field
from typing import Any

import orjson

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event, Rejected, duplicate_record
from operators.interest import (
    DEFAULT_WINDOW,
    PRODUCT_TYPES,
    ProductState,
    forget_stale,
    is_blank,
    on_product_event,
    seen_update,
)

_CATALOGUE_ONLY = frozenset({"product_updated"})
_PICKLES = "pickles"  # a snapshot's products as {product_id: pickle} (see __getstate__)
NEVER = -(2**62)  # "no event time yet": holds the watermark back
DONE = 2**62  # a stream at its end no longer holds it back


@dataclass(slots=True)
class StreamMark:
    """What the aligner knows of one stream's progress."""

    newest: int = NEVER  # newest event time read from it
    done: bool = False  # finite input at its end
    caught_up: bool = False  # live: nothing unread right now (cleared by the next read)


@dataclass(slots=True)
class AlignStats:
    read: int = 0
    released: int = 0
    rejected: int = 0
    derived: int = 0
    late: int = 0
    stale_catalogue: int = 0


@dataclass
class Aligner:
    """Merge-sorts one shard's streams behind a watermark and runs its product fan-out."""

    streams: list[str]
    lateness: int = 0  # max out-of-orderness inside one stream, ms
    product_window: int = DEFAULT_WINDOW
    marks: dict[str, StreamMark] = field(default_factory=dict)
    buffer: list[tuple[int, str, int, Event]] = field(default_factory=list)  # heap
    passthrough: list[Rejected] = field(default_factory=list)
    products: dict[str, ProductState] = field(default_factory=dict)
    released_to: int = NEVER  # every event before this has been released
    stats: AlignStats = field(default_factory=AlignStats)
    seq: int = 0  # read order: the last tie-break, never reached for distinct events
    # remember who showed interest in each product (views, cart adds, wishes) for the
    # price-drop / back-in-stock fan-out; off when the config names neither derived type
    # (``derives_events``): the hot path then skips the product state for every view
    interest: bool = True
    swept_at: int = NEVER  # released time of the last sweep of every product's interest

    def __post_init__(self) -> None:
        for s in self.streams:
            self.marks.setdefault(s, StreamMark())
        self._dirty: set[str] = set(self.products)  # changed since the last snapshot
        self._packed: dict[str, bytes] = {}  # every product's pickle as of that snapshot
        self.track_interest(self.interest)

    def track_interest(self, on: bool) -> None:
        """Whether interest events update the product states (see ``interest``); a run
        resumed under a config that turns it on fans out only to interest shown since."""
        self.interest = on
        self._products_of = PRODUCT_TYPES if on else _CATALOGUE_ONLY

    def __getstate__(self) -> dict[str, Any]:
        """The held-back events go as one JSON document (their props came from JSON), not
        as pickled objects: a live shard holds ``lateness`` worth of input, and the source
        is snapshotted at every epoch's close, on the worker's path (~4× faster). The
        catalogue state (14 days of interest per product) goes as one pickle per product,
        each redone only when its product changed since the previous snapshot."""
        state = self.__dict__.copy()
        del state["_dirty"], state["_packed"], state["_products_of"]
        state["buffer"] = _pack_buffer(self.buffer)
        packed = self._packed
        for pid in self._dirty:
            packed[pid] = pickle.dumps(self.products[pid], pickle.HIGHEST_PROTOCOL)
        self._dirty.clear()
        state["products"] = (_PICKLES, dict(packed))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if type(state.get("buffer")) is bytes:  # a list: a snapshot from before
            state = {**state, "buffer": _unpack_buffer(state["buffer"])}
        products = state.get("products")
        packed: dict[str, bytes] = {}
        if type(products) is tuple and products[0] == _PICKLES:  # a dict: from before
            packed = products[1]
            state = {**state, "products": {pid: pickle.loads(b) for pid, b in packed.items()}}
        self.__dict__.update(state)
        self._packed = dict(packed)
        self._dirty = set(self.products) - self._packed.keys()
        self.track_interest(state.get("interest", True))

    # ---- input ---------------------------------------------------------------------------

    def offer(self, stream: str, item: Event | Rejected) -> None:
        """One parsed item read from ``stream``."""
        mark = self.marks[stream]
        mark.caught_up = False
        self.stats.read += 1
        if isinstance(item, Rejected):
            self.passthrough.append(item)
            return
        if item.ts > mark.newest:
            mark.newest = item.ts
        self.seq += 1
        heapq.heappush(self.buffer, (item.ts, item.event_id, self.seq, item))

    def reopen(self, streams: list[str]) -> None:
        """A new run resumed from a snapshot: its streams (maybe new ones) are read again, and
        whether they have ended is found out anew."""
        self.streams = list(streams)
        for s in streams:
            self.marks.setdefault(s, StreamMark())
        for m in self.marks.values():
            m.done = m.caught_up = False
        for s in set(self.marks) - set(streams):  # no longer read: holds nothing back
            self.marks[s].done = True

    def end(self, stream: str) -> None:
        """A finite stream has nothing more."""
        self.marks[stream].done = True

    def caught_up(self, stream: str) -> None:
        """A live stream has nothing unread at the moment (until its next read)."""
        self.marks[stream].caught_up = True

    # ---- progress ------------------------------------------------------------------------

    def watermark(self, wall: int | None = None) -> int:
        """Event time before which no stream can bring anything more (see module doc)."""
        w = DONE
        for m in self.marks.values():
            if m.done:
                continue
            if m.caught_up and wall is not None:
                mw = max(wall, m.newest - self.lateness)
            else:
                mw = m.newest - self.lateness if m.newest != NEVER else NEVER
            if mw < w:
                w = mw
        return w

    def ended(self) -> bool:
        """Every stream is done (finite input): nothing more will be offered."""
        return all(m.done for m in self.marks.values())

    def finished(self) -> bool:
        return self.ended() and not self.buffer and not self.passthrough

    def behind(self) -> list[str]:
        """Streams holding the watermark back (read these first)."""
        live = [(m.newest, s) for s, m in self.marks.items() if not m.done]
        if not live:
            return []
        low = min(n for n, _ in live)
        return [s for n, s in live if n == low]

    def release(self, wall: int | None = None) -> list[Event | Rejected]:
        """Everything the watermark has passed, in ``(ts, event_id)`` order, derived catalogue
        events in their place; rejected items first (they need no order)."""
        out: list[Event | Rejected] = self.passthrough
        self.passthrough = []
        self.stats.rejected += len(out)
        w = self.watermark(wall)
        buf = self.buffer
        events: list[Event] = []
        derived = False
        while buf and buf[0][0] < w:
            ev = heapq.heappop(buf)[3]
            if ev.ts < self.released_to:
                self.stats.late += 1
            if ev.type == "product_updated" and "product_id" in ev.props and seen_update(
                    self._product(ev), ev, self.product_window):
                out.append(duplicate_record(ev))  # (no customer state dedupes these)
                self.stats.rejected += 1
                continue
            events.append(ev)
            if ev.type in self._products_of and "product_id" in ev.props:
                more = self._catalogue(ev)
                if more:
                    events += more
                    derived = True
        high = w if w < DONE else (events[-1].ts + 1 if events else self.released_to)
        if high > self.released_to:
            self.released_to = high
            if self.released_to - self.swept_at >= DAY and self.products:
                self._sweep()
        if derived:  # derived events share their update's ts: put them in (ts, id) place
            events.sort(key=_order)
        self.stats.released += len(events)
        out += events  # type: ignore[arg-type]
        return out

    def _sweep(self) -> None:
        """Once a day of released time, forget the interest older than the window in every
        product, not only in those events touch (each product also sweeps itself at its
        own events). Decision-neutral: the fan-out reads only interest within the window
        of the update's time, and no update released from now on is older than what was
        released, late ones aside (as with a product's own sweep). A product left with
        nothing but its id is dropped: a later event makes it anew, the same."""
        self.swept_at = self.released_to
        horizon = self.released_to - self.product_window
        blank = []
        for pid, state in self.products.items():
            if forget_stale(state, horizon):
                self._dirty.add(pid)
                if is_blank(state):  # a product only ever viewed: made anew if it comes
                    blank.append(pid)
        for pid in blank:
            del self.products[pid]
            self._dirty.discard(pid)
            self._packed.pop(pid, None)

    def _product(self, ev: Event) -> ProductState:
        """The product's state, to change: it is pickled again at the next snapshot."""
        pid = str(ev.props["product_id"])
        self._dirty.add(pid)
        state = self.products.get(pid)
        if state is None:
            state = self.products[pid] = ProductState(pid)
        return state

    def _catalogue(self, ev: Event) -> list[Event]:
        state = self._product(ev)
        before = state.stale
        more = on_product_event(state, ev, self.product_window)
        self.stats.stale_catalogue += state.stale - before
        self.stats.derived += len(more)
        return more


def _order(e: Event) -> tuple[int, str]:
    return e.ts, e.event_id


def _pack_buffer(buffer: list[tuple[int, str, int, Event]]) -> bytes | list:
    """The heap, in its order, as JSON rows ``[seq, event_id, type, customer_id, ts, props,
    source]``; the list itself (pickled) if a value is not JSON."""
    try:
        return orjson.dumps([(seq, e.event_id, e.type, e.customer_id, e.ts, e.props, e.source)
                             for _, _, seq, e in buffer])
    except TypeError:
        return buffer


def _unpack_buffer(data: bytes) -> list[tuple[int, str, int, Event]]:
    out = []
    for seq, event_id, typ, customer_id, ts, props, source in orjson.loads(data):
        out.append((ts, event_id, seq, Event(event_id, typ, customer_id, ts, props, source)))
    return out
