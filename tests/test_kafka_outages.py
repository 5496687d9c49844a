"""Kafka input outages are said clearly and briefly: a broker unreachable at start, a broker
that lost its data while the flow was away."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from bytewax.testing import run_main
from services import TansuBroker, free_port, produce

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event
from cdp_triggers.settings import Settings
from flows.app import RunError, build_run, prepare_recovery
from flows.sources import kafka_shards
from sinks.clickhouse import open_backend
from state.profiles import RedisProfileStore
from tests.engine_helpers import T0, reachable

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_unreachable_broker_at_start_is_one_clear_error_not_a_log_flood(caplog):
    caplog.set_level(logging.INFO)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer within 4 s"):
        kafka_shards([f"127.0.0.1:{free_port()}"], ["clickstream"], timeout_s=4)
    assert time.monotonic() - t0 < 15
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]  # ~17 lines/s before


def test_missing_topic_refuses_the_run_before_bytewax_starts(kafka, redis_server, chdb_url):
    s = Settings(kafka_brokers=kafka.bootstrap, input_topics=[f"nope_{uuid.uuid4().hex[:6]}"],
                 redis_url=redis_server.url, clickhouse_url=chdb_url,
                 clickhouse_database=f"m_{uuid.uuid4().hex[:6]}")
    with pytest.raises(RunError, match="does not exist"):
        build_run(s, "kafka")


def test_a_broker_that_lost_its_data_is_reported_and_reading_goes_on(redis_server, chdb_url,
                                                                     tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    run = uuid.uuid4().hex[:6]
    RedisProfileStore(redis_server.url, f"{run}:").put_many([reachable("c1")])

    def events(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
        return [(b"c1", Event(f"{prefix}{i}", "product_viewed", "c1", T0 + i * 1000,
                              {"product_id": "p1", "price": 5.0}).to_json()) for i in range(n)]

    with TansuBroker() as broker:
        s = Settings(kafka_brokers=broker.bootstrap, input_topics=["clickstream"],
                     redis_url=redis_server.url, redis_key_prefix=f"{run}:",
                     clickhouse_url=chdb_url, clickhouse_database=f"lost_{run}",
                     kafka_tail=False, clock="replay", recovery_dir=tmp_path / "rec",
                     sends_topic="sends", dead_letter_topic="dead")
        broker.create_topics(["clickstream", "sends", "dead"], partitions=1)
        produce(broker.bootstrap, "clickstream", events("a", 50))
        run_main(build_run(s, "kafka").flow, recovery_config=prepare_recovery(s, lambda _: None))
        broker.crash()  # memory storage: every topic and offset is gone
        broker.restart()
        broker.create_topics(["clickstream", "sends", "dead"], partitions=1)
        produce(broker.bootstrap, "clickstream", [(b"c1", Event(
            "b0", "order_shipped", "c1", T0 + DAY, {"order_id": "o1"}).to_json())])
        run_main(build_run(s, "kafka").flow, recovery_config=prepare_recovery(s, lambda _: None))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "resuming at offset 50 but the partition ends at" in said and "lost data" in said
    db = open_backend(chdb_url)
    try:  # the event written after the loss was read and decided on
        rows = db.query_rows(f"SELECT trigger_id, status FROM lost_{run}.decisions")
    finally:
        db.close()
    assert ("order_status", "sent") in rows
