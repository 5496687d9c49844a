"""The one dataflow shape every run uses (demo, replay, live; embedded or real stack).

input (event-time aligned shards, catalogue fan-out) → parse (strict) ─bad→ dead letters
              └─ bundle per owning worker → deliver → key by customer_id (profiles read)
                 → engine (stateful_batch) → records ─error→ dead letters
records → ClickHouse (all); Send → sends topic; Rejected → dead-letter topic

Live, each shard's batches end with a mark of what it has released (``Released``); the
bundle step sends it to every worker behind the batch's events, and the worker's timers
fire by the marks that reached its engine step (``WatermarkClock.follow_marks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from cdp_triggers.clock import Released, Ticks
from cdp_triggers.events import Event, Rejected, parse_event
from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy
from cdp_triggers.records import ProfileUpdate
from flows.sources import RawEvent, from_kafka
from operators import routing
from operators.keyed import EngineRuntime
from sinks.clickhouse import ClickHouseBackend
from sinks.effects import EffectsSink
from sinks.profile_updates import ProfileUpdateSink, ProfileWriter


@dataclass
class Outputs:
    """Where records go. Any part may be None (e.g. no Kafka in the embedded demo).

    ``clickhouse_shards``: partitions of the effects sink (records sharded by customer);
    ``kafka_config``: extra producer settings; ``retry``: how outages of ClickHouse, Kafka
    and the profile store are waited out (default: backoff up to 30 s, without limit).
    """

    clickhouse: Callable[[], ClickHouseBackend] | None = None
    clickhouse_database: str = "cdp"
    clickhouse_batch_rows: int = 20_000
    clickhouse_batch_seconds: float = 2.0
    clickhouse_shards: int = 2
    clickhouse_trickle: bool = False  # live: due background rows go one table per batch
    keep_snapshots: bool = True  # recovery on: the sink's live buffer is its snapshot
    profile_store: Callable[[], ProfileWriter] | None = None  # unsubscribes, hard bounces
    kafka_brokers: list[str] | None = None
    sends_topic: str = "sends"
    dead_letter_topic: str = "dead_letters"
    kafka_config: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = DEFAULT_RETRY


def build_flow(source: Source, runtime: EngineRuntime, outputs: Outputs,
               flow_id: str = "cdp_triggers") -> Dataflow:
    flow = Dataflow(flow_id)
    decided, refused = engine_outputs(flow, source, runtime)
    attach_outputs(op.merge("all_outputs", decided, refused), outputs)
    return flow


def engine_streams(flow: Dataflow, source: Source,
                   runtime: EngineRuntime) -> tuple[Stream, Stream]:
    """:func:`engine_outputs` as one item per record: (engine records, rejected) — for
    the runs that keep records in memory (preview, tests)."""
    decided, refused = engine_outputs(flow, source, runtime)
    records = op.map("unkey", decided, lambda kv: kv[1])
    # an event the engine could not process comes back as a dead letter (processing_error)
    failed = op.branch("processing_errors", records, lambda r: isinstance(r, Rejected))
    return failed.falses, op.merge("rejected", refused, failed.trues)


def engine_outputs(flow: Dataflow, source: Source,
                   runtime: EngineRuntime) -> tuple[Stream, Stream]:
    """input → parse → key by customer → engine; returns (``(customer, record)`` pairs as
    the engine emitted them, its ``processing_error`` dead letters included; the input's
    rejected events).

    Aligned sources (``flows.sources``) emit parsed events in event-time order with the
    catalogue fan-out done; raw items (tests' plain sources) are parsed here, unaligned.
    Every event reaching the engine has its customer's events before it in ``(ts,
    event_id)`` order, so the keyed step decides the same whatever the read order.
    """
    raw = op.input("input", flow, source)
    live = runtime.mode == "live"
    topology = runtime.topology

    def parse(r: Event | Rejected | RawEvent | KafkaSourceMessage) -> Event | Rejected:
        if isinstance(r, Event | Rejected):
            return r
        if isinstance(r, KafkaSourceMessage):
            r = from_kafka(r)
        return parse_event(r.data, r.where, runtime.wall.now_ms() if live else None)

    def bundle(batch: list[Any]) -> list[Rejected | tuple[str, tuple[list, tuple]]]:
        """A batch as its rejected items and its customer events (catalogue updates were
        fanned out already), one bundle per worker that owns some of them
        (:mod:`operators.routing`): one step per batch, not several per event. The
        shards' in-band marks (live) go to every worker, behind the batch's events."""
        out: list[Any] = []
        pairs: list[tuple[str, Event]] = []
        ticks: list[tuple[str, int]] = []
        for item in batch:
            t = type(item)
            if t is Released:  # (live: how far the shard has released, behind its events)
                ticks.append((item.shard, item.before))
                continue
            e = item if t is Event else parse(item)
            if type(e) is not Event:
                out.append(e)
            elif e.type != "product_updated":
                pairs.append((e.customer_id, e))
        if pairs or ticks:
            out += topology.bundle(pairs, tuple(ticks))
        return out

    parsed = op.flat_map_batch("parse_and_bundle", raw, bundle)
    valid = op.branch("valid", parsed, lambda x: type(x) is tuple)
    bundles = valid.trues
    op.output("topology", op.flat_map_batch("never", bundles, lambda _: []),
              routing.probe(topology))
    delivered = op.stateful_batch("deliver", bundles, routing.deliver_logic)

    def by_customer(items: list[tuple[str, tuple[list[tuple[str, Event]], tuple]]],
                    ) -> list[tuple[str, Event | Ticks]]:
        """The bundles that reached this worker, keyed by customer; their profiles are read
        in one round trip here, where the engine's lookups that follow will ask for them.
        Their in-band marks follow the events as one :class:`Ticks`, keyed by the route key
        that brought them here: Bytewax routes it to this worker in the engine's step too
        (:func:`routing.route_key`), and no customer has it."""
        keyed: list[Any] = [pair for _, (pairs, _) in items for pair in pairs]
        if runtime.prefetch is not None and keyed:
            runtime.prefetch([k for k, _ in keyed], runtime.sure_reads(keyed))
        ticks = tuple(t for _, (_, marks) in items for t in marks)
        if ticks:
            route = items[0][0]
            keyed.append((route, Ticks(ticks, routing.owner(route, topology.workers))))
        return keyed

    keyed = op.flat_map_batch("by_customer", delivered, by_customer)
    decided = op.stateful_batch("engine", keyed, runtime.builder)
    return decided, valid.falses  # the input's rejected items


def attach_outputs(records: Stream, outputs: Outputs) -> None:
    """Fan records out (bare, or ``(customer, record)`` pairs as the engine emits them):
    profile updates to the store; everything else, dead letters included, to the one
    effects sink, which writes ClickHouse rows first and only then produces send commands
    and dead letters to Kafka (see :mod:`sinks.effects`). Each batch moves to the sink as
    one bundle per sink partition (:meth:`EffectsSink.bundle`), not one item per record:
    fewer items through Bytewax, and one pickle per bundle when a partition lives in
    another process."""
    sink = None
    if outputs.clickhouse is not None or outputs.kafka_brokers:
        sink = EffectsSink(outputs.clickhouse, outputs.clickhouse_database,
                           outputs.kafka_brokers, outputs.sends_topic,
                           outputs.dead_letter_topic, outputs.kafka_config,
                           max_rows=outputs.clickhouse_batch_rows,
                           max_seconds=outputs.clickhouse_batch_seconds,
                           parts=outputs.clickhouse_shards, policy=outputs.retry,
                           trickle=outputs.clickhouse_trickle,
                           keep_snapshots=outputs.keep_snapshots)

    def route(items: list[Any]) -> list[Any]:
        """Profile updates as they are; the other records bundled per sink partition."""
        routed: list[Any] = []
        effects: list[Any] = []
        for item in items:
            record = item[1] if type(item) is tuple else item
            (routed if type(record) is ProfileUpdate else effects).append(record)
        if sink is not None and effects:
            routed += sink.bundle(effects)
        return routed

    routed = op.flat_map_batch("route", records, route)
    updates = op.branch("profile_updates", routed, lambda r: type(r) is ProfileUpdate)
    if outputs.profile_store is not None:
        op.output("profile_store", updates.trues,
                  ProfileUpdateSink(outputs.profile_store, outputs.retry))
    if sink is not None:
        op.output("effects", updates.falses, sink)
