"""Metrics scraped over HTTP as Prometheus does, health and readiness on the same port."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdp_triggers import metrics as m


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
