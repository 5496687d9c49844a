"""The one dataflow shape every run uses (demo, replay, live; embedded or real stack).

input → parse (strict) ─bad→ dead letters
              └─ key by customer_id → engine (stateful_batch) → records
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
from operators.interest import PRODUCT_TYPES, product_of
from operators.keyed import EngineRuntime, product_builder
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

    Live runs also refuse events stamped too far ahead of the wall clock, and tell the
    runtime's clock how far the input's event time has got.
    """
    raw = op.input("input", flow, source)
    live = runtime.mode == "live"

    def parse(r: RawEvent | KafkaSourceMessage) -> Event | Rejected:
        if isinstance(r, KafkaSourceMessage):
            r = from_kafka(r)
        e = parse_event(r.data, r.where, runtime.wall.now_ms() if live else None)
        if live and isinstance(e, Event):
            runtime.observe(e)
        return e

    parsed = op.map("parse", raw, parse)
    valid = op.branch("valid", parsed, lambda x: isinstance(x, Event))
    # product fan-out: views/carts/catalogue updates keyed by product → derived customer events
    product_events = op.filter("product_events", valid.trues,
                               lambda e: e.type in PRODUCT_TYPES and "product_id" in e.props)
    derived = op.map("derived_unkey", op.stateful_batch(
        "products", op.key_on("by_product", product_events, product_of), product_builder()),
        lambda kv: kv[1])
    customer_events = op.filter("customer_events", valid.trues,
                                lambda e: e.type != "product_updated")
    keyed = op.key_on("by_customer", op.merge("with_derived", customer_events, derived),
                      lambda e: e.customer_id)
    decided = op.stateful_batch("engine", keyed, runtime.builder)
    return op.map("unkey", decided, lambda kv: kv[1]), valid.falses


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
