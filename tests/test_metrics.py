"""Metrics scraped over HTTP as Prometheus does, health and readiness on the same port; a
real flow's metrics against what it wrote, and a sink outage seen by /readyz."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import orjson
import pytest
from bytewax.testing import run_main
from flow_helpers import DelegatingBackend, kafka_key
from prometheus_client.parser import text_string_to_metric_families
from services import produce
from test_clickhouse import decision

from cdp_triggers import metrics as m
from cdp_triggers.events import Event, parse_event
from cdp_triggers.logs import RetryPolicy
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from flows.app import build_run
from sinks.clickhouse import ChdbBackend, open_backend
from sinks.clickhouse_sink import ClickHouseWriter
from sinks.effects import EffectsPartition
from state.profiles import RedisProfileStore
from tests.engine_helpers import trigger_semantics_dir


@pytest.fixture
def server() -> Iterator[tuple[m.MetricsServer, m.Readiness]]:
    ready = m.Readiness("sources", "sinks")
    srv = m.start_server(0, ready, host="127.0.0.1")
    yield srv, ready
    srv.close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a /metrics scrape."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_scraped_and_parsed(server) -> None:
    srv, _ = server
    before = scrape(srv.port)
    read = m.events_read("clickstream")
    read.inc(1000)
    read.inc(24)
    m.count_rejected(["invalid_json", "invalid_json", "duplicate_event_id"])
    decisions = m.Tally(m.DECISIONS)
    for status, reason in [("sent", ""), ("sent", ""), ("not_sent", "capped")]:
        decisions.add(status, reason)
    decisions.publish()
    decisions.publish()  # nothing held: nothing added twice
    sends = m.Tally(m.SENDS)
    sends.add("email", n=3)
    sends.publish()
    m.sink_backlog("effects-0").set(42)
    m.sink_retries("clickhouse").inc()
    with m.sink_flush_seconds("effects-0").time():
        pass
    wm = m.WatermarkGauges("shard-000")
    wm.update(None, 5_000)  # nothing read yet: unset
    wm.update(1_700_000_000_000, 1_700_000_002_500)
    m.observe_timer_lateness_ms(300)
    m.observe_timer_lateness_ms(-5)
    m.observe_kafka_stats(orjson.dumps({"topics": {"orders": {"partitions": {
        "0": {"fetch_state": "active", "hi_offset": 120, "app_offset": 100},
        "1": {"fetch_state": "active", "hi_offset": 50, "app_offset": -1001,
              "consumer_lag": 50},
        "-1": {"fetch_state": "none", "hi_offset": -1, "app_offset": -1}}}}}))
    m.observe_kafka_stats("not json")

    got = scrape(srv.port)

    def delta(name: str, **labels: str) -> float:
        return value(got, name, **labels) - value(before, name, **labels)

    assert delta("cdp_events_read_total", topic="clickstream") == 1024
    assert delta("cdp_events_rejected_total", reason="invalid_json") == 2
    assert delta("cdp_events_rejected_total", reason="duplicate_event_id") == 1
    assert delta("cdp_decisions_total", status="sent", reason="") == 2
    assert delta("cdp_decisions_total", status="not_sent", reason="capped") == 1
    assert delta("cdp_sends_total", channel="email") == 3
    assert value(got, "cdp_sink_backlog_records", sink="effects-0") == 42
    assert delta("cdp_sink_retries_total", target="clickhouse") == 1
    assert delta("cdp_sink_flush_seconds_count", sink="effects-0") == 1
    assert value(got, "cdp_watermark_timestamp_seconds", shard="shard-000") == 1_700_000_000
    assert value(got, "cdp_watermark_lag_seconds", shard="shard-000") == 2.5
    assert delta("cdp_timer_lateness_seconds_count") == 2
    assert delta("cdp_timer_lateness_seconds_bucket", le="0.01") == 1  # the early one: 0
    assert value(got, "cdp_consumer_lag_messages", topic="orders", partition="0") == 20
    assert value(got, "cdp_consumer_lag_messages", topic="orders", partition="1") == 50
    assert ("cdp_consumer_lag_messages", (("partition", "-1"), ("topic", "orders"))) not in got
    assert any(name == "process_resident_memory_bytes" for name, _ in got)  # Linux


def test_health_and_readiness(server) -> None:
    srv, ready = server
    assert get(srv.port, "/healthz") == (200, "ok\n")
    status, body = get(srv.port, "/readyz")
    assert status == 503 and "sinks, sources" in body
    ready.set("sources")
    status, body = get(srv.port, "/readyz")
    assert status == 503 and "sinks" in body and "sources" not in body
    ready.set("sinks")
    assert get(srv.port, "/readyz") == (200, "ready\n")
    ready.set("sinks", False)  # an outage takes it out of rotation again
    assert get(srv.port, "/readyz")[0] == 503
    assert get(srv.port, "/nope")[0] == 404


def test_a_failing_ready_check_is_not_ready_and_the_server_lives_on() -> None:
    def boom() -> bool:
        raise RuntimeError("redis://:secret@h")

    srv = m.start_server(0, boom, host="127.0.0.1")
    try:
        status, body = get(srv.port, "/readyz")
        assert status == 503 and "secret" not in body
        assert get(srv.port, "/healthz")[0] == 200
    finally:
        srv.close()


def test_one_port_per_process_sharing_a_host() -> None:
    assert m.process_port(9100) == m.process_port(9100, None) == 9100
    local = ["localhost:2101", "localhost:2102", "localhost:2103"]
    assert [m.process_port(9100, i, local) for i in range(3)] == [9100, 9101, 9102]
    pods = [f"cdp-flow-{i}.cdp-flow:2101" for i in range(3)]  # one process per pod
    assert [m.process_port(9100, i, pods) for i in range(3)] == [9100, 9100, 9100]
    mixed = ["h1:2101", "h1:2102", "h2:2101"]
    assert [m.process_port(9100, i, mixed) for i in range(3)] == [9100, 9101, 9100]


# ---- the metrics a real flow publishes ----------------------------------------------------


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _family(samples: dict, name: str, label: str) -> dict[str, float]:
    """{label value: sample value} of one sample name."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels)[label]] = out.get(dict(labels)[label], 0.0) + v
    return out


@pytest.mark.integration
def test_a_kafka_flow_publishes_its_metrics(kafka, redis_server, chdb_url) -> None:
    """A flow over two topics (replay clock, chdb, the sends topic) with the server up: every
    figure scraped over HTTP matches what the run wrote (topics read, dead letters by
    reason, decisions by status, sends by channel); the sink flushes are timed, its backlog
    is empty at the end, and the process reports ready once sources and sinks are up."""
    gen = SyntheticRetail(SyntheticConfig(customers=150, days=2, seed=5,
                                          price_change_rate=0, stockout_rate=0))
    RedisProfileStore(redis_server.url).put_many(gen.profiles())
    raws = list(gen.events())
    run = uuid.uuid4().hex[:8]
    topics = {"orders": f"m_orders_{run}", "clickstream": f"m_click_{run}"}

    def topic_of(raw: bytes) -> str:
        e = parse_event(raw)
        kind = "orders" if isinstance(e, Event) and e.type.startswith("order_") else "clickstream"
        return topics[kind]

    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {t: [] for t in topics.values()}
    for r in raws:
        by_topic[topic_of(r)].append((kafka_key(r), r))
    s = Settings(kafka_brokers=kafka.bootstrap, input_topics=list(topics.values()),
                 sends_topic=f"m_sends_{run}", dead_letter_topic=f"m_dead_{run}",
                 redis_url=redis_server.url, clickhouse_url=chdb_url,
                 clickhouse_database=f"metrics_{run}", kafka_tail=False, clock="replay",
                 horizon_ms=gen.end_ms, config_dir=trigger_semantics_dir())
    kafka.create_topics([*topics.values(), s.sends_topic, s.dead_letter_topic], partitions=4)
    for topic, items in by_topic.items():
        produce(kafka.bootstrap, topic, items)

    m.READY.set("sources", False)
    m.READY.set("sinks", False)
    srv = m.start_server(0, m.READY, host="127.0.0.1")
    try:
        assert get(srv.port, "/readyz")[0] == 503
        before = scrape(srv.port)
        run_main(build_run(s, "kafka").flow)
        after = scrape(srv.port)
        ready = get(srv.port, "/readyz")
        health = get(srv.port, "/healthz")
    finally:
        srv.close()

    for topic, items in by_topic.items():
        assert _delta(before, after, "cdp_events_read_total", topic=topic) == len(items)
    assert _delta(before, after, "cdp_events_rejected_total",
                  reason="duplicate_event_id") == gen.stats.duplicates
    bad = {r: v - _family(before, "cdp_events_rejected_total", "reason").get(r, 0.0)
           for r, v in _family(after, "cdp_events_rejected_total", "reason").items()}
    bad.pop("duplicate_event_id", None)
    assert sum(bad.values()) == gen.stats.bad > 0 and bad.get("invalid_json", 0) > 0

    db = open_backend(chdb_url)
    try:
        q = f"SELECT status, count() FROM {s.clickhouse_database}.decisions GROUP BY status"
        statuses = dict(db.query_rows(q))
        q = f"SELECT channel, count() FROM {s.clickhouse_database}.sends GROUP BY channel"
        channels = dict(db.query_rows(q))
    finally:
        db.close()
    assert statuses.get("sent", 0) > 10 and len(statuses) > 1
    decided = {st: v - _family(before, "cdp_decisions_total", "status").get(st, 0.0)
               for st, v in _family(after, "cdp_decisions_total", "status").items()}
    assert {st: n for st, n in decided.items() if n} == statuses
    sent = {ch: v - _family(before, "cdp_sends_total", "channel").get(ch, 0.0)
            for ch, v in _family(after, "cdp_sends_total", "channel").items()}
    assert {ch: n for ch, n in sent.items() if n} == channels
    assert _delta(before, after, "cdp_sends_produced_total") == sum(channels.values())
    flushes = sum(_delta(before, after, "cdp_sink_flush_seconds_count", sink=f"effects-{i}")
                  for i in range(s.sink_partitions))
    assert flushes >= s.sink_partitions  # every partition flushes at least at its close
    for i in range(s.sink_partitions):
        assert value(after, "cdp_sink_backlog_records", sink=f"effects-{i}") == 0
    assert ready == (200, "ready\n") and health == (200, "ok\n")


@pytest.mark.integration
def test_a_clickhouse_outage_counts_retries_and_takes_the_process_out_of_rotation(
        chdb_dir: str, db: str) -> None:
    """While the effects sink waits a ClickHouse outage out, /readyz answers 503 naming
    the sinks and every retry is counted; once ClickHouse is back the rows land and the
    process is ready again."""
    back = threading.Event()
    failures = []

    class Down(DelegatingBackend):
        def insert_json_rows(self, table: str, rows: list[dict]) -> None:
            if not back.is_set():
                failures.append(table)
                raise ConnectionError("connection refused")
            self.inner.insert_json_rows(table, rows)

    writer = ClickHouseWriter(Down(ChdbBackend(chdb_dir), f"ClickHouse {db}"), db,
                              RetryPolicy(initial_s=0.02, cap_s=0.05))
    part = EffectsPartition(writer, None, name="effects-outage")
    m.READY.set("sources")
    srv = m.start_server(0, m.READY, host="127.0.0.1")
    try:
        before = scrape(srv.port)
        part.write_batch([decision(i) for i in range(5)])
        assert value(scrape(srv.port), "cdp_sink_backlog_records", sink="effects-outage") == 5
        flusher = threading.Thread(target=part.snapshot)
        flusher.start()
        for _ in range(200):
            if len(failures) >= 3:
                break
            threading.Event().wait(0.02)
        status, body = get(srv.port, "/readyz")
        assert status == 503 and "sinks" in body and "sources" not in body
        back.set()
        flusher.join(10)
        assert not flusher.is_alive()
        after = scrape(srv.port)
        assert get(srv.port, "/readyz") == (200, "ready\n")
        part.close()
    finally:
        srv.close()
    assert _delta(before, after, "cdp_sink_retries_total", target="clickhouse") == len(failures)
    assert _delta(before, after, "cdp_sink_flush_seconds_count", sink="effects-outage") == 1
    assert value(after, "cdp_sink_backlog_records", sink="effects-outage") == 0
    assert _delta(before, after, "cdp_decisions_total", status="sent", reason="") == 5
    rows = ChdbBackend(chdb_dir)
    try:
        assert rows.query_rows(f"SELECT count() FROM {db}.decisions")[0][0] == 5
    finally:
        rows.close()
