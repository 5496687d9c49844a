"""Two and four Bytewax processes (`cdp-triggers run -i I -a …`) over the README's five
topics give exactly the sends of a single-process file replay, catalogue fan-out included:
nothing in the engine or the input alignment assumes one process."""

from __future__ import annotations

import subprocess
import sys
import uuid
import warnings

import orjson
import pytest
from bytewax.testing import run_main
from chaos_helpers import (
    ROOT,
    TOPICS,
    Traffic,
    env_of,
    outcome,
    settings,
    topic_names,
    watermarks,
)
from services import consume_all, free_port

from flows.app import build_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(own_kafka):
    """This module's own broker (see ``own_kafka``): its flows run several producers."""
    return own_kafka


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_share_the_work_and_match_one(processes, kafka, redis_server, chdb_url,
                                                tmp_path):
    traffic = Traffic(tmp_path, redis_server.url, customers=600, days=2, seed=23)
    ref = settings(kafka, redis_server.url, chdb_url, uuid.uuid4().hex[:8], traffic)
    run_main(build_run(ref, "files", files=[traffic.file], outputs="clickhouse").flow)
    expected = outcome(chdb_url, ref.clickhouse_database)["sends"]
    assert len(expected) > 20

    run = uuid.uuid4().hex[:8]
    s = settings(kafka, redis_server.url, chdb_url, run, traffic)
    kafka.create_topics([*topic_names(run).values(), s.sends_topic, s.dead_letter_topic],
                        partitions=4)
    traffic.produce(kafka, topic_names(run), TOPICS)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    # chdb is one engine per process and directory: each process writes its own
    envs = [env_of(s.model_copy(update={"clickhouse_url": f"chdb://{tmp_path}/ch{i}"}))
            for i in range(processes)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "cdp_triggers.cli", "run", "-w", "1", "-i", str(i), "-a",
         addresses], env=envs[i], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(processes)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]

    got = consume_all(kafka.bootstrap, s.sends_topic, expected=len(expected), timeout=60)
    on_topic = sorted(k.decode() for k, _ in got)
    if on_topic != sorted(expected):  # say whether the flows had the delivery reports
        missing = set(expected) - set(on_topic)
        outbox = [subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "sql",
                                  f"SELECT send_id FROM {s.clickhouse_database}.dispatched",
                                  "--format", "tsv"], env=envs[i], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60).stdout.split()
                  for i in range(processes)]
        acked = missing & {x for ids in outbox for x in ids}
        marks = watermarks(kafka, s.sends_topic)
        held = sum(high - low for low, high in marks.values())
        # Tansu (memory storage) was seen to drop messages it had acknowledged (2adfea1):
        # then every missing command is in an outbox (its delivery was reported), the topic
        # holds fewer messages than the flows had acknowledged, and a partition's low
        # watermark moved off 0 although nothing truncates it. The flows decided and
        # produced exactly the expected sends; the broker lost some. Said, not failed.
        if (acked == missing and set(on_topic) <= set(expected) and held < len(expected)
                and any(low > 0 for low, _ in marks.values())):
            warnings.warn(f"the Tansu broker lost {len(missing)} acknowledged send commands "
                          f"(watermarks {marks}); the flows' outboxes hold them all",
                          stacklevel=1)
        else:
            raise AssertionError(f"{len(missing)} of {len(expected)} sends not on the topic; "
                                 f"{len(acked)} of them in an outbox (delivery reported); "
                                 f"watermarks {marks}")
    assert {orjson.loads(v)["trigger_id"] for _, v in got} >= {
        "abandoned_cart", "browse_abandonment", "price_drop"}
    # the processes wrote rows: the effects sink's partitions are spread over them
    queries = [subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "sql",
                                 f"SELECT count() FROM {s.clickhouse_database}.sends"],
                                env=envs[i], cwd=ROOT, stdout=subprocess.PIPE, text=True)
               for i in range(processes)]  # at once: each is a process start-up
    counts = [int(q.communicate(timeout=60)[0].split()[-1]) for q in queries]
    assert sum(c > 0 for c in counts) >= 2 and sum(counts) == len(expected), counts
