"""Two Bytewax processes (`cdp-triggers run -i 0/1 -a …`) over one Kafka topic give exactly
the sends of a single-process pure replay: nothing in the engine assumes one process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import orjson
import pytest
from services import consume_all, free_port, produce

from cdp_triggers.events import Event, parse_event
from cdp_triggers.records import Send
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from state.profiles import DictProfileStore, RedisProfileStore
from tests.engine_helpers import engine, replay
from tests.flow_helpers import kafka_key

pytestmark = pytest.mark.integration


def test_two_processes_share_the_work_and_match_one(kafka, redis_server, tmp_path):
    gen = SyntheticRetail(SyntheticConfig(customers=600, days=2, seed=23, price_change_rate=0,
                                          stockout_rate=0))
    profiles = gen.profiles()
    prefix = f"mp{uuid.uuid4().hex[:6]}:"
    RedisProfileStore(redis_server.url, prefix).put_many(profiles)
    raws = list(gen.events())
    run = uuid.uuid4().hex[:8]
    topic, sends = f"mp_in_{run}", f"mp_sends_{run}"
    kafka.create_topics([topic, sends, f"mp_dead_{run}"], partitions=4)
    produce(kafka.bootstrap, topic, [(kafka_key(r), r) for r in raws])

    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    base = {**os.environ, "CDP_KAFKA_BROKERS": kafka.bootstrap,
            "CDP_INPUT_TOPICS": f'["{topic}"]', "CDP_SENDS_TOPIC": sends,
            "CDP_DEAD_LETTER_TOPIC": f"mp_dead_{run}", "CDP_REDIS_URL": redis_server.url,
            "CDP_REDIS_KEY_PREFIX": prefix, "CDP_KAFKA_TAIL": "false", "CDP_CLOCK": "replay",
            "CDP_HORIZON_MS": str(gen.end_ms)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "cdp_triggers.cli", "run", "-w", "1", "-i", str(i), "-a",
         addresses],
        # chdb is one engine per process and directory: each process writes its own
        env={**base, "CDP_CLICKHOUSE_URL": f"chdb://{tmp_path}/ch{i}"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]

    events = [e for r in raws if isinstance(e := parse_event(r), Event)]
    expected = sorted(o.send_id for o in replay(engine(shipped_policy=True), events,
                                                gen.end_ms, DictProfileStore(profiles))
                      if isinstance(o, Send))
    got = consume_all(kafka.bootstrap, sends, expected=len(expected), timeout=60)
    assert len(expected) > 20
    assert sorted(k.decode() for k, _ in got) == expected
    assert {orjson.loads(v)["trigger_id"] for _, v in got} >= {"abandoned_cart",
                                                               "browse_abandonment"}
    # both processes wrote rows: the ClickHouse sink's partitions are spread over them
    counts = []
    for i in range(2):
        q = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "sql",
                            "SELECT count() FROM sends"],
                           env={**base, "CDP_CLICKHOUSE_URL": f"chdb://{tmp_path}/ch{i}"},
                           capture_output=True, text=True, timeout=60)
        counts.append(int(q.stdout.split()[-1]))
    assert all(c > 0 for c in counts) and sum(counts) == len(expected)
