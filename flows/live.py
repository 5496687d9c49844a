"""The production flow: Kafka in, Redis profiles, ClickHouse + Kafka out.

Run it with Bytewax's runner (any number of processes/workers)::

    python -m bytewax.run flows.live:flow -w 2
    python -m bytewax.run flows.live:flow -w 2 -i 0 -a host0:2101;host1:2101   # per host

or ``cdp-triggers run``. Settings come from ``CDP_*`` environment variables.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from cdp_triggers.clock import WatermarkClock
from cdp_triggers.gateway_sim import simulate
from cdp_triggers.settings import Settings
from config.loader import load_config
from flows.pipeline import Outputs, build_flow
from flows.sources import kafka_source
from operators.engine import Engine
from operators.keyed import EngineRuntime
from sinks.clickhouse import ensure_schema, open_backend
from state.profiles import RedisProfileStore


def build_live_flow(settings: Settings | None = None) -> Dataflow:
    s = settings or Settings()
    config = load_config(s.config_dir)
    backend = open_backend(s.clickhouse_url)
    ensure_schema(backend, s.clickhouse_database)
    clock = WatermarkClock(idle_ms=s.live_idle_ms)
    def profiles() -> RedisProfileStore:
        return RedisProfileStore(s.redis_url, s.redis_key_prefix)

    runtime = EngineRuntime(Engine(config), lambda: profiles().get, mode=s.clock, clock=clock,
                            horizon_ms=s.horizon_ms,
                            loopback=simulate if s.simulate_gateways else None,
                            copy_snapshots=s.recovery_dir is not None)
    source = kafka_source(s.brokers, s.input_topics, s.kafka_tail, s.kafka_batch_size)
    outputs = Outputs(clickhouse=lambda: open_backend(s.clickhouse_url),
                      clickhouse_database=s.clickhouse_database,
                      clickhouse_batch_rows=s.clickhouse_batch_rows,
                      clickhouse_batch_seconds=s.clickhouse_batch_seconds,
                      profile_store=profiles,
                      kafka_brokers=s.brokers, sends_topic=s.sends_topic,
                      dead_letter_topic=s.dead_letter_topic)
    return build_flow(source, runtime, outputs)


def __getattr__(name: str) -> Dataflow:
    """``flows.live:flow`` is built on first access, so importing this module stays cheap."""
    if name == "flow":
        return build_live_flow()
    raise AttributeError(name)
