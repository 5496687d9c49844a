"""The one dataflow shape every run uses (demo, replay, live; embedded or real stack).

input (event-time aligned shards, catalogue fan-out) → parse (strict) ─bad→ dead letters
              └─ key by customer_id → engine (stateful_batch) → records ─error→ dead letters
records → ClickHouse (all); Send → sends topic; Rejected → dead-letter topic
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from cdp_triggers.events import Event, Rejected, parse_event
from cdp_triggers.records import ProfileUpdate, Send
from flows.sources import RawEvent, from_kafka
from operators.keyed import EngineRuntime
from sinks.clickhouse import ClickHouseBackend
from sinks.clickhouse_sink import ClickHouseSink, route
from sinks.kafka_out import dead_letter_message, send_message
from sinks.profile_updates import ProfileUpdateSink, ProfileWriter


@dataclass
class Outputs:
    """Where records go. Any part may be None (e.g. no Kafka in the embedded demo)."""

    clickhouse: Callable[[], ClickHouseBackend] | None = None
    clickhouse_database: str = "cdp"
    clickhouse_batch_rows: int = 20_000
    clickhouse_batch_seconds: float = 2.0
    clickhouse_shards: int = 2
    profile_store: Callable[[], ProfileWriter] | None = None  # unsubscribes, hard bounces
    kafka_brokers: list[str] | None = None
    sends_topic: str = "sends"
    dead_letter_topic: str = "dead_letters"


def build_flow(source: Source, runtime: EngineRuntime, outputs: Outputs,
               flow_id: str = "cdp_triggers") -> Dataflow:
    flow = Dataflow(flow_id)
    records, rejected = engine_streams(flow, source, runtime)
    attach_outputs(records, rejected, outputs)
    return flow


def engine_streams(flow: Dataflow, source: Source,
                   runtime: EngineRuntime) -> tuple[Stream, Stream]:
    """input → parse → key by customer → engine; returns (engine records, rejected).

    Aligned sources (``flows.sources``) emit parsed events in event-time order with the
    catalogue fan-out done; raw items (tests' plain sources) are parsed here, unaligned.
    Every event reaching the engine has its customer's events before it in ``(ts,
    event_id)`` order, so the keyed step decides the same whatever the read order.
    """
    raw = op.input("input", flow, source)
    live = runtime.mode == "live"

    def parse(r: Event | Rejected | RawEvent | KafkaSourceMessage) -> Event | Rejected:
        if isinstance(r, Event | Rejected):
            return r
        if isinstance(r, KafkaSourceMessage):
            r = from_kafka(r)
        return parse_event(r.data, r.where, runtime.wall.now_ms() if live else None)

    parsed = op.map("parse", raw, parse)
    valid = op.branch("valid", parsed, lambda x: isinstance(x, Event))
    customer_events = op.filter("customer_events", valid.trues,
                                lambda e: e.type != "product_updated")
    keyed = op.key_on("by_customer", customer_events, lambda e: e.customer_id)
    decided = op.stateful_batch("engine", keyed, runtime.builder)
    records = op.map("unkey", decided, lambda kv: kv[1])
    # an event the engine could not process comes back as a dead letter (processing_error)
    failed = op.branch("processing_errors", records, lambda r: isinstance(r, Rejected))
    return failed.falses, op.merge("rejected", valid.falses, failed.trues)


def attach_outputs(records: Stream, rejected: Stream, outputs: Outputs) -> None:
    """Fan records out: profile updates to the store, everything else to ClickHouse, sends
    and dead letters to Kafka."""
    updates = op.branch("profile_updates", records, lambda r: isinstance(r, ProfileUpdate))
    records = updates.falses
    if outputs.profile_store is not None:
        op.output("profile_store", updates.trues, ProfileUpdateSink(outputs.profile_store))
    if outputs.clickhouse is not None:
        shards = outputs.clickhouse_shards
        to_ch = op.map("route", op.merge("all_records", records, rejected),
                       lambda r: route(r, shards))
        op.output("clickhouse", to_ch, ClickHouseSink(
            outputs.clickhouse, outputs.clickhouse_database,
            max_rows=outputs.clickhouse_batch_rows, max_seconds=outputs.clickhouse_batch_seconds,
            parts=shards))
    if outputs.kafka_brokers:
        sends = op.filter_map("sends", records,
                              lambda r: send_message(r) if isinstance(r, Send) else None)
        op.output("sends_topic", sends, KafkaSink(outputs.kafka_brokers, outputs.sends_topic))
        dead = op.map("dead_letters", rejected, dead_letter_message)
        op.output("dead_letter_topic", dead,
                  KafkaSink(outputs.kafka_brokers, outputs.dead_letter_topic))
