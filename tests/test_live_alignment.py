"""Live runs: idle and sparse partitions never hold a send back."""

from __future__ import annotations

import time
import uuid

import pytest
from chaos_helpers import cdp_run
from confluent_kafka import Consumer, TopicPartition
from services import produce

from cdp_triggers.events import Event
from cdp_triggers.settings import Settings
from state.profiles import RedisProfileStore
from tests.engine_helpers import reachable, trigger_semantics_dir

pytestmark = pytest.mark.integration


def test_a_transactional_send_leaves_while_sparse_topics_stay_silent(kafka, redis_server,
                                                                    tmp_path):
    """`cdp-triggers run` live over five topics of which only `orders` ever gets a message:
    the order_shipped message is sent though consents, outcomes and product_updates never
    said anything (before, they held the clock back until they counted as idle)."""
    run = uuid.uuid4().hex[:6]
    names = {t: f"{t}_{run}" for t in ("clickstream", "orders", "outcomes", "consents",
                                       "product_updates")}
    prefix = f"live{run}:"
    RedisProfileStore(redis_server.url, prefix).put_many([reachable("c1")])
    s = Settings(kafka_brokers=kafka.bootstrap, input_topics=list(names.values()),
                 catalogue_topics=[names["product_updates"]], sends_topic=f"sends_{run}",
                 dead_letter_topic=f"dead_{run}", redis_url=redis_server.url,
                 redis_key_prefix=prefix, clickhouse_url=f"chdb://{tmp_path / 'ch'}",
                 clickhouse_database="live", config_dir=trigger_semantics_dir(),
                 clickhouse_batch_seconds=0.1, epoch_seconds=0.5)
    kafka.create_topics([*names.values(), s.sends_topic, s.dead_letter_topic], partitions=4)
    p = cdp_run(s)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"g{run}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(s.sends_topic, i, 0) for i in range(4)])
    try:
        time.sleep(6)  # start-up
        assert p.poll() is None, p.stdout.read().decode()[-2000:] if p.stdout else ""
        now = int(time.time() * 1000)
        produce(kafka.bootstrap, names["orders"], [(b"c1", Event(
            f"ship-{run}", "order_shipped", "c1", now, {"order_id": "o1"}).to_json())])
        produced = time.monotonic()
        got = None
        while got is None and time.monotonic() - produced < 60:
            m = consumer.poll(0.2)
            if m is not None and m.error() is None:
                got = m
        assert got is not None, "no send command within 60 s"
        print(f"\norder_shipped → send command on `sends`: {time.monotonic() - produced:.2f} s")
    finally:
        consumer.close()
        p.kill()
        p.wait(30)
