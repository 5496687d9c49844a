"""Per-customer keyed state: everything the engine remembers about one customer.

Plain slotted dataclasses of built-in types, so Bytewax snapshots pickle them small and a
restore gives back exactly what the engine had. The engine owns all changes to it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import lz4.block

from cdp_triggers.records import Profile
from state.compact import EMPTY, HEX, Codec, Upgradable, nested
from state.seen import SeenIds

_LZ4 = b"LZ4:"  # a pickle starts with b"\x80": the tag cannot be a pickle's beginning


@dataclass(slots=True)
class Instance(Upgradable):
    """One live run of a trigger for this customer (customer × trigger × key)."""

    __packed__ = {"instance_id": HEX, "awaiting": HEX}

    trigger_id: str
    key: str
    instance_id: str
    start_event_id: str
    started_at: int
    activity_at: int
    due: int  # event time the next step is due (firing waits the late-event grace on top)
    step: int = 0  # index of the next step to run
    context: dict[str, Any] = field(default_factory=dict)  # props of the latest trigger event
    event_type: str = ""  # type of the latest trigger event
    variant: str = ""  # A/B/C arm ("" when the trigger has none)
    arm: str = ""  # "control" / "holdout": measured, never sent
    channel_idx: int = 0  # cascade position in the current step's channels
    awaiting: str = ""  # send_id whose receipt the cascade waits for (due = its timeout)
    step_base: int = 0  # when the current step was first due: the next step counts from it
    entered: bool = False  # its first message went (re-entry cooldown counts from then)
    held: str = ""  # the hold its last deferred row was written for: a retry in it is silent
    earlier: tuple[str, ...] = ()  # this step's sends the cascade moved on from: a late
    #                                success receipt for one of them still ends the step
    timed: int = -1  # the step whose send_at hold was decided (held once per step)
    sent_step: int = -1  # the step of its latest message (instance.previous_*)
    sent_channel: str = ""  # … that message's channel
    sent_outcome: str = ""  # … best receipt of that step's sends: delivered/opened/clicked
    branching: bool = False  # the step is done; its branch is decided when ``due`` comes


@dataclass(slots=True)
class Touch(Upgradable):
    """A send (or a control/holdout "would have sent"), remembered for last-touch
    conversion attribution. A touch from before ``arm``/``kind`` existed reads as a sent
    marketing message."""

    __packed__ = {"send_id": HEX, "instance_id": HEX}

    send_id: str
    trigger_id: str
    variant: str
    channel: str
    ts: int
    window: int
    instance_id: str = ""
    step: int = 0
    arm: str = "treated"  # treated (really sent) | control | holdout (would have sent)
    kind: str = "marketing"  # the trigger's kind: transactional touches are not credited


@dataclass(slots=True)
class CustomerState(Upgradable):
    # the last profile pickles without its class reference (state/compact.py)
    # (a snapshot from before SeenIds holds ``seen`` as a dict: it restores as SeenIds)
    __packed__ = {"profile": nested(Profile),
                  "seen": Codec(lambda v: v, SeenIds.of, packed=dict)}

    customer_id: str
    instances: dict[str, Instance] = EMPTY  # by "trigger\x1fkey"
    last_entry: dict[str, int] = EMPTY  # trigger → ts of its last first send
    seen: SeenIds = field(default_factory=SeenIds)  # event_id → ts, oldest first (dedupe)
    cart: dict[str, dict[str, Any]] = EMPTY  # product_id → line
    consents: dict[str, tuple[bool, int]] = EMPTY  # "ch:cat" → (granted, ts)
    touches: tuple[Touch, ...] | list[Touch] = ()  # a list once written (own_list)
    # "trigger\x1fkey" → its start times, oldest first (one start: the int itself)
    counts: dict[str, int | tuple[int, ...]] = EMPTY
    sent_log: tuple[Any, ...] | list[Any] = ()  # operators.policy.Sent, for caps (own_list)
    # channels whose contact hard-bounced; replaced, never changed in place: one shared
    # empty default instead of a 216-byte set per customer
    invalid: frozenset[str] | set[str] = frozenset()
    invalid_at: dict[str, int] = EMPTY  # channel → its hard bounce ts
    profile: Any = None  # last profile read: used for transactional when the store is down
    orders_count: int = 0
    total_spent: float = 0.0
    last_order_at: int = 0
    exits: tuple[Any, ...] | list[Any] = ()  # recent cancel-type events (Event), newest last
    # loopback gateway receipts (demo/tests), replaced, never changed in place
    pending: tuple[Any, ...] | list[Any] = ()
    high_water: int = 0  # highest event time seen: replay mode's `now` never goes back
    pruned_at: int = 0  # event time of the last sweep of the bounded parts
    refused: dict[str, int] = EMPTY  # slot → ts: not started (limit)
    misses: dict[str, list[int]] = EMPTY  # "trigger\x1freason" →
    # [day, count, first ts, last ts]: start misses being counted (records.StartMiss)
    # metrics (operators/metrics.py), bounded by what the config reads:
    first_order_at: int = 0
    orders: tuple[tuple[int, int], ...] = ()  # (ts, total in cents) within the RFM window
    ev_total: dict[str, tuple[int, int]] = EMPTY  # type → (n, first ts)
    ev_recent: dict[str, tuple[tuple[int, str], ...]] = EMPTY
    # type → recent (ts, key), oldest first: as many as the config's counts need
    bought: dict[str, int] = EMPTY  # product → last ordered (bounded)
    segments: tuple[str, ...] = ()  # segments (config/segments) the customer is in, sorted
    seg_due: int = 0  # next daily segment check (00:00 UTC, event time); 0: none
    read_hours: tuple[tuple[int, float], ...] = ()  # smart send time: decayed reads per
    read_last: int = 0  # local hour, as of read_last (operators/sendtime.Reads)
    # scheduled and date starts (operators/schedule.py), kept only when a trigger reads them:
    birthday: str = ""  # MM-DD, from a profile read or a signed_up/profile_updated event
    registered_at: int = 0  # epoch ms, likewise (signed_up: its own time)
    sched: dict[str, tuple[int, str]] = EMPTY  # trigger → (due, key)
    sched_done: dict[str, str] = EMPTY  # trigger → last key fired
    sched_basis: str = ""  # what `sched` was planned from (zone, dates, segments)

    def __post_init__(self) -> None:
        if type(self.seen) is dict:  # CustomerState(seen={event_id: ts}) reads as before
            self.seen = SeenIds.of(self.seen)

    def starts(self, slot: str) -> tuple[int, ...]:
        """The start times a count slot holds (``counts`` keeps a lone one as an int)."""
        v = self.counts.get(slot, ())
        return (v,) if type(v) is int else v

    def to_bytes(self) -> bytes:
        """The stored form (recovery snapshots): the compact pickle, LZ4-compressed behind
        a tag (about 0.6 of the bytes for ~4 µs; see docs/benchmarks.md)."""
        return _LZ4 + lz4.block.compress(pickle.dumps(self, pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def from_bytes(data: bytes) -> CustomerState:
        """A state from :meth:`to_bytes`, or from a plain pickle (snapshots written before)."""
        if data[:len(_LZ4)] == _LZ4:
            data = lz4.block.decompress(data[len(_LZ4):])
        return pickle.loads(data)

    def is_empty(self) -> bool:
        """Nothing worth keeping: Bytewax may discard this key. (After every activation:
        ``seen`` first, which nearly every customer with state holds.)"""
        return not (self.seen or self.instances or self.last_entry or self.cart
                    or self.consents or self.touches or self.counts or self.orders_count
                    or self.sent_log or self.invalid or self.pending or self.ev_total
                    or self.ev_recent or self.segments or self.read_hours
                    or self.birthday or self.registered_at)
