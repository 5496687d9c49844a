"""The test rig itself: Tansu speaks enough Kafka for confluent-kafka and Bytewax; redis works."""

from __future__ import annotations

import time
import uuid

import bytewax.operators as op
import pytest
import redis
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.testing import cluster_main, run_main
from confluent_kafka import Consumer
from services import FAST_GROUP_CONFIG, RedisServer, TansuBroker, consume_all, produce

pytestmark = pytest.mark.integration

N = 200


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _items(n: int = N) -> list[tuple[bytes, bytes]]:
    return [(f"customer-{i % 23}".encode(), f'{{"seq":{i}}}'.encode()) for i in range(n)]


def test_kafka_produce_consume(kafka):
    topic = _topic("rig")
    kafka.create_topics([topic], partitions=4)
    meta = kafka.admin().list_topics(topic, timeout=5).topics[topic]
    assert len(meta.partitions) == 4

    items = _items()
    produce(kafka.bootstrap, topic, items)
    got = consume_all(kafka.bootstrap, topic, expected=N)
    assert sorted(got) == sorted(items)

    # Without `expected`, consume_all stops on idle and still sees everything exactly once.
    assert sorted(consume_all(kafka.bootstrap, topic, idle=1.0)) == sorted(items)


def test_kafka_consumer_group_and_key_partitioning(kafka):
    topic = _topic("keys")
    kafka.create_topics([topic])
    produce(kafka.bootstrap, topic, _items())
    c = Consumer({
        "bootstrap.servers": kafka.bootstrap,
        "group.id": uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        **FAST_GROUP_CONFIG,
    })  # fmt: skip
    assigned: list[int] = []
    c.subscribe([topic], on_assign=lambda _c, ps: assigned.extend(p.partition for p in ps))
    parts: dict[bytes, set[int]] = {}
    deadline = time.monotonic() + 30
    seen = 0
    while seen < N and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            parts.setdefault(m.key(), set()).add(m.partition())
            seen += 1
    c.close()
    assert seen == N
    assert sorted(assigned) == [0, 1, 2, 3]
    assert all(len(p) == 1 for p in parts.values())
    assert len(set().union(*parts.values())) > 1  # keys are spread over partitions


def _upper_flow(bootstrap: str, src: str, dst: str) -> Dataflow:
    flow = Dataflow("rig")
    msgs = op.input("in", flow, KafkaSource([bootstrap], [src], tail=False))
    out = op.map("upper", msgs, lambda m: KafkaSinkMessage(m.key, m.value.upper()))
    op.output("out", out, KafkaSink([bootstrap], dst))
    return flow


@pytest.mark.parametrize("workers", [1, 2])
def test_bytewax_kafka_source_to_sink(kafka, workers):
    src, dst = _topic("bw-in"), _topic("bw-out")
    kafka.create_topics([src, dst], partitions=4)
    items = _items()
    produce(kafka.bootstrap, src, items)

    flow = _upper_flow(kafka.bootstrap, src, dst)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)

    got = consume_all(kafka.bootstrap, dst, expected=N)
    assert sorted(got) == sorted((k, v.upper()) for k, v in items)


def test_redis_round_trip(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    key = f"profile:{uuid.uuid4().hex}"
    pipe = r.pipeline()
    pipe.hset(key, mapping={"tz": "Europe/Paris", "consent:email:marketing": "1"})
    pipe.expire(key, 60)
    pipe.hgetall(key)
    *_, profile = pipe.execute()
    assert profile == {b"tz": b"Europe/Paris", b"consent:email:marketing": b"1"}
    r.close()


def test_service_start_stop_times(record_property):
    """Fresh instances, to know what the session fixtures cost."""
    for cls, start_max in ((TansuBroker, 15.0), (RedisServer, 10.0)):
        svc = cls()
        svc.start()
        svc.stop()
        record_property(f"{svc.name}_start_s", round(svc.start_seconds, 3))
        record_property(f"{svc.name}_stop_s", round(svc.stop_seconds, 3))
        print(f"{svc.name}: start {svc.start_seconds:.2f}s, stop {svc.stop_seconds:.2f}s")
        assert svc.start_seconds < start_max
        assert svc.stop_seconds < svc.stop_timeout + 1
        assert svc.proc is None
