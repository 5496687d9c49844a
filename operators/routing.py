"""Move a batch's customer events to the workers that own them as a few bundles.

Bytewax 0.21 routes every item of a keyed step to worker ``siphash13(key + 0xff) %
worker_count`` (Rust's ``DefaultHasher`` over a ``String`` key: SipHash-1-3, zero keys, the
bytes and a 0xff terminator; pinned by ``tests/test_routing.py`` against Bytewax itself).
Keyed by customer straight away, each event crossing to another process is pickled, sent and
unpickled alone. Here the source's batch is grouped by the worker that will own each
customer, and each group travels as ONE item keyed by a name that routes to that worker
(:func:`route_key`); there it is unpacked, its customers' profiles are read in one round
trip *on the worker that looks them up*, and the events are keyed by customer for the
engine, whose own exchange is then a local hand-over.

A wrong prediction (another Bytewax hash, an unknown worker count) would still have every
event meet its customer's state in order (the engine's keyed step routes by customer
whatever the bundle did; a bundle holds its events in batch order and one sender's items
reach a worker in order). But the live timers' in-band marks follow the bundles, under
their route key, so an event sent on to another worker by the engine's step could arrive
there after a mark that covers it. The prediction is therefore relied on: the hash is
pinned against Bytewax itself, and the worker count comes from Bytewax when it builds the
flow (:func:`probe`), before any item moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from siphash24 import siphash13

_ZERO_KEY = bytes(16)
_U64 = (1 << 64) - 1  # siphash24's intdigest is signed; Rust's u64 is not


def owner(key: str, workers: int) -> int:
    """The worker index Bytewax 0.21 gives ``key`` in a keyed step of ``workers`` workers.

    >>> [owner(k, 2) for k in ("c000001", "c000002", "c000003")]
    [1, 0, 0]
    """
    if workers <= 1:
        return 0
    return (siphash13(key.encode() + b"\xff", key=_ZERO_KEY).intdigest() & _U64) % workers


@cache
def route_key(worker: int, workers: int) -> str:
    """A key Bytewax routes to ``worker`` (of ``workers``): the first `` to-N`` that does.
    It begins with a space, which no customer id does (ids are stripped), so the engine's
    step can take a worker's in-band marks under the very key its bundles came by: the
    same step shape routes it to the same worker, whatever the worker count.

    >>> [owner(route_key(w, 4), 4) for w in range(4)], route_key(0, 1)
    ([0, 1, 2, 3], ' to-0')
    """
    n = 0
    while owner(f" to-{n}", workers) != worker:
        n += 1
    return f" to-{n}"


class Topology:
    """The run's worker count, learnt when Bytewax builds the probe (:func:`probe`): a flow
    is built before it knows how many workers will run it."""

    def __init__(self) -> None:
        self.workers = 1

    def bundle(self, batch: Iterable[tuple[str, Any]],
               ticks: tuple = ()) -> list[tuple[str, tuple[list, tuple]]]:
        """``(customer, event)`` pairs → one ``(route key, ([pairs…], ticks))`` per owning
        worker, each in batch order. With ``ticks`` (the shards' in-band ``Released``
        marks, as ``(shard, before)``), every worker gets one, an empty bundle where it
        owns none of the events: a mark must reach every keyed step, behind the events
        it covers."""
        workers = max(self.workers, 1)
        if workers == 1:
            pairs = list(batch)
            return [(route_key(0, 1), (pairs, ticks))] if pairs or ticks else []
        groups: dict[int, list] = {}
        for pair in batch:
            groups.setdefault(owner(pair[0], workers), []).append(pair)
        if ticks:
            return [(route_key(w, workers), (groups.get(w, []), ticks))
                    for w in range(workers)]
        return [(route_key(w, workers), (pairs, ())) for w, pairs in groups.items()]


class _Deliver(StatefulBatchLogic[list, list, None]):
    """Hands a bundle on at the worker its key routes to; keeps nothing."""

    def on_batch(self, values: list[list]) -> tuple[list[list], bool]:
        return values, StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        return None


def deliver_logic(_resume: Any) -> _Deliver:
    return _Deliver()


class _Probe(DynamicSink[Any]):
    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NoWrites:
        self.topology.workers = worker_count
        return _NoWrites()


class _NoWrites(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:  # the probe's stream is empty
        return None


def probe(topology: Topology) -> _Probe:
    """A sink for an empty stream whose building tells ``topology`` the worker count."""
    return _Probe(topology)

