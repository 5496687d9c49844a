"""Outage logging: masked URLs, one line per state change, rate limits, librdkafka's flood."""

from __future__ import annotations

import logging
import threading
import time

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from services import free_port

from cdp_triggers.logs import RateLimited, StateLog, kafka_error_logger, mask_url, redact


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://default:p%40ss@h:6380/1", "rediss://default:***@h:6380/1"),
    ("redis://secret@h:6379/0", "redis://***@h:6379/0"),
    ("http://user:pw@h:8123", "http://user:***@h:8123"),
    ("https://u:a@b@h:8443/?async_insert=1", "https://u:***@h:8443/?async_insert=1"),
    ("http://h:8123/?user=x&password=pw&token=t", "http://h:8123/?user=x&password=***&token=***"),
    ("http://h/?api_key=k&secret=s&x=1", "http://h/?api_key=***&secret=***&x=1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("http://user@h:8123", "http://user@h:8123"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redact_masks_urls_inside_text() -> None:
    text = "Error 111 connecting to redis://:hunter2@10.0.0.1:6379/0. Connection refused."
    assert "hunter2" not in redact(text) and "redis://:***@10.0.0.1" in redact(text)
    assert redact(ValueError("http://a:b@h/?password=c")) == "http://a:***@h/?password=***"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_state_log_one_line_per_change(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    state = StateLog(logging.getLogger("t.state"), "Redis redis://:pw@h/0", repeat_s=300,
                     clock=clock)
    with caplog.at_level(logging.INFO):
        assert state.up() is None  # up while up: nothing
        assert state.down("refused by redis://:pw@h/0")
        for _ in range(1000):
            clock.t += 0.1
            assert not state.down("refused")
        clock.t = 301
        assert state.down("still refused")  # one reminder after repeat_s
        assert not state.down("still refused")
        clock.t = 320.5
        assert state.up("12 rows written") == 320.5
        assert state.up() is None
    assert lines(caplog) == [
        "Redis redis://:***@h/0 unavailable: refused by redis://:***@h/0",
        "Redis redis://:***@h/0 still unavailable after 5.0 min (1002 failures): still refused",
        "Redis redis://:***@h/0 back after 5.3 min (1003 retries); 12 rows written",
    ]
    assert state.outages == 1 and not state.is_down


def test_state_log_is_thread_safe(caplog: pytest.LogCaptureFixture) -> None:
    # the clock is injected: 4,000 calls on a loaded machine can take 0.1 s of real time
    state = StateLog(logging.getLogger("t.threads"), "X", clock=Clock())

    def hammer() -> None:
        for _ in range(500):
            state.down("boom")

    with caplog.at_level(logging.INFO):
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state.up()
    assert lines(caplog) == ["X unavailable: boom", "X back after 0.0 s (4000 retries)"]


def test_rate_limited_counts_what_it_held(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimited(logging.getLogger("t.rl"), every_s=60, clock=clock)
    with caplog.at_level(logging.INFO):
        assert rl.warning("a", "lookup failed for %s", "redis://:pw@h")
        assert rl.warning("b", "other key")
        for _ in range(9):
            assert not rl.warning("a", "lookup failed again")
        clock.t = 61
        assert rl.warning("a", "lookup failed: %d", 3)
    assert lines(caplog) == [
        "lookup failed for redis://:***@h", "other key",
        "lookup failed: 3 (9 similar line(s) suppressed in the last 61.0 s)",
    ]


class Err:
    """A stand-in KafkaError for the codes a test broker cannot produce on demand."""

    def __init__(self, code: int, text: str, fatal: bool = False) -> None:
        self._code, self._text, self._fatal = code, text, fatal

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return self._fatal


def test_kafka_log_classifies_errors(caplog: pytest.LogCaptureFixture) -> None:
    klog = kafka_error_logger(logging.getLogger("t.kafka"), "sends producer")
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            klog.error_cb(Err(KafkaError._TRANSPORT, "b:9092/1: Connect to ipv4#b failed: "
                                                      "Connection refused"))
            klog.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
                     "[thrd:b]: b:9092/1: Connect to ipv4#b failed: Connection refused")
            klog.error_cb(Err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        klog.stats_cb(orjson.dumps({"brokers": {"b:9092/1": {"state": "INIT"}}}).decode())
        assert klog.state.is_down
        klog.stats_cb(orjson.dumps({"brokers": {"b:9092/1": {"state": "UP"}}}).decode())
        for _ in range(3):
            klog.error_cb(Err(KafkaError.UNKNOWN_TOPIC_OR_PART, "sendz [0]: unknown"))
            klog.error_cb(Err(KafkaError.OFFSET_OUT_OF_RANGE, "clickstream [2]: offset 90 "
                                                               "out of range"))
    got = lines(caplog)
    assert got[0] == ("sends producer unavailable: b:9092/1: Connect to ipv4#b failed: "
                      "Connection refused")
    assert got[1].startswith("sends producer back after") and "(150 retries)" in got[1]
    assert "unknown topic or partition" in got[2] and "sendz" in got[2]
    assert "offset out of range" in got[3] and "lost" in got[3]
    assert len(got) == 4  # each repeated error once per minute


def test_kafka_log_folds_a_real_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    """A real producer pointed at a closed port: librdkafka's flood becomes one line."""
    klog = kafka_error_logger(logging.getLogger("t.kafka.real"), "probe")
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                         "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50,
                         **klog.config(stats_interval_ms=1000)})
    with caplog.at_level(logging.DEBUG, logger="t.kafka.real"):
        producer.produce("x", b"v")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            producer.poll(0.1)
        producer.purge()
        producer.flush(1)
    got = lines(caplog)
    assert klog.state.failures > 10  # the flood happened …
    assert [m for m in got if "unavailable" in m] == got[:1] and len(got) <= 2  # … one line
