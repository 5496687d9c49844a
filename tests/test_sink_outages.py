"""Outages of ClickHouse, Redis and Kafka are waited out: nothing lost, nothing duplicated,
one log line per state change, no secret in any line, programming errors fail fast.

Real parts throughout: chdb wrapped in a fault-injecting backend, redis-server and Tansu
processes that are killed and started again on the same port, a TCP server that accepts
and never answers.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
import uuid
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from flow_helpers import DelegatingBackend
from services import RedisServer, TansuBroker, consume_all, free_port
from test_clickhouse import decision, many_records

from cdp_triggers.logs import RetryPolicy
from cdp_triggers.records import ProfileUpdate
from sinks.clickhouse import ChdbBackend, ServerBackend, ensure_schema, is_outage
from sinks.clickhouse_schema import DECISIONS, SENDS, rows_for
from sinks.clickhouse_sink import ClickHouseWriter
from sinks.effects import EffectsSink
from sinks.kafka_out import DeliveryFailed, KafkaOut
from sinks.profile_updates import ProfileUpdateSink
from state.profiles import ProfileUnavailable, RedisProfileStore

FAST = RetryPolicy(initial_s=0.05, cap_s=0.5)
SECRET = "s3cr3t-pw"

pytestmark = pytest.mark.integration
_n = itertools.count()


class Outage:
    """A window of time during which a FaultyBackend fails (starts at the first call)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None
        self.failures = 0
        self.lock = threading.Lock()

    def check(self, what: str) -> None:
        with self.lock:
            now = time.monotonic()
            if self.started is None:
                self.started = now
            if now - self.started < self.seconds:
                self.failures += 1
                raise ConnectionError(f"{what}: connection refused by "
                                      f"http://default:{SECRET}@ch.internal:8123")


class FaultyBackend(DelegatingBackend):
    """A real chdb backend whose calls fail while ``outage`` lasts; ``tables`` limits the
    faults to inserts into those tables, ``land_first`` writes the rows before failing
    (the server stored them, the client saw an error)."""

    def __init__(self, inner: ChdbBackend, outage: Outage, name: str,
                 tables: tuple[str, ...] = (), land_first: tuple[str, ...] = (),
                 commands: bool = False) -> None:
        super().__init__(inner, name)
        self.outage = outage
        self.tables, self.land_first, self.commands = tables, land_first, commands
        self.inserted: dict[str, int] = {}

    def command(self, sql: str) -> None:
        if self.commands:
            self.outage.check("DDL")
        self.inner.command(sql)

    def insert_json_rows(self, table: str, rows: list[dict]) -> None:
        raw = table.split(".")[-1]
        if raw in self.land_first:
            self.inner.insert_json_rows(table, rows)
            self.inserted[raw] = self.inserted.get(raw, 0) + len(rows)
        if not self.tables or raw in self.tables:
            self.outage.check(f"INSERT INTO {table}")
        if raw not in self.land_first:
            self.inner.insert_json_rows(table, rows)
            self.inserted[raw] = self.inserted.get(raw, 0) + len(rows)


def count(backend: ChdbBackend, sql: str) -> int:
    return backend.query_rows(sql)[0][0]


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if name in r.getMessage()]


def run_records(sink: EffectsSink, records: list[Any]) -> None:
    flow = Dataflow(f"outage_{next(_n)}")
    items = op.input("in", flow, TestingSource([sink.route(r) for r in records], batch_size=20))
    op.output("out", items, sink)
    run_main(flow)


def test_clickhouse_outage_is_waited_out(chdb_dir: str, backend: ChdbBackend, db: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """ClickHouse fails every call for 3 s in the middle of a run: the worker waits, every
    row arrives exactly once, three log lines in all, no password in them."""
    outage = Outage(3.0)
    name = f"ClickHouse faulty-{next(_n)}"
    records = many_records(200)  # 1000 records, 5 tables
    sink = EffectsSink(lambda: FaultyBackend(ChdbBackend(chdb_dir), outage, name), db,
                       max_rows=100, parts=2, policy=FAST)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        run_records(sink, records)
    took = time.monotonic() - t0
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 200, view
    # exactly once even before merges: a failed insert wrote nothing and was retried once
    assert count(backend, f"SELECT count() FROM {db}.raw_decisions") == 200
    lines = messages(caplog, name)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{name} unavailable: INSERT INTO {db}.")
    assert lines[1].startswith(f"{name} back after 3.") and "rows written" in lines[1]
    assert outage.failures >= 5 and took >= 3.0
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


def test_outage_in_the_middle_of_a_multi_table_flush(chdb_dir: str, backend: ChdbBackend,
                                                     db: str) -> None:
    """The sends insert lands but the client sees an error (retried: written twice), the
    lifecycle insert then fails for 2 s; the decisions written before are not re-sent, and
    the views count every id once."""
    outage = Outage(2.0)
    name = f"ClickHouse mid-{next(_n)}"
    faulty = FaultyBackend(ChdbBackend(chdb_dir), outage, name,
                           tables=("raw_sends", "raw_lifecycle"), land_first=("raw_sends",))
    writer = ClickHouseWriter(faulty, db, FAST)
    buffer: dict[str, list[dict]] = {}
    for r in many_records(50):
        table, row = rows_for(r)
        buffer.setdefault(table, []).append(row)
    assert list(buffer)[:3] == [DECISIONS, SENDS, "raw_lifecycle"]
    assert writer.insert_all(buffer) == 250 and buffer == {}
    assert faulty.inserted[DECISIONS] == 50  # written once, before the fault
    assert faulty.inserted[SENDS] > 50  # landed, reported failed, written again
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 50, view
    assert count(backend, f"SELECT count() FROM {db}.raw_lifecycle") == 50


def test_ensure_schema_waits_for_clickhouse(chdb_dir: str, backend: ChdbBackend,
                                            caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(1.0)
    name = f"ClickHouse ddl-{next(_n)}"
    faulty = FaultyBackend(ChdbBackend(chdb_dir), outage, name, commands=True)
    db = f"ddl_{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.INFO):
        ensure_schema(faulty, db, FAST)
    assert count(backend, f"SELECT count() FROM system.tables WHERE database = '{db}'") > 10
    lines = messages(caplog, name)
    assert [m.split(":")[0].split(" after")[0] for m in lines] == [
        f"{name} unavailable", f"{name} back"]
    faulty.close()


def test_programming_errors_fail_fast(chdb_dir: str) -> None:
    """A wrong table or database is a bug: raised at once, never retried."""
    b = ChdbBackend(chdb_dir)
    writer = ClickHouseWriter(b, "no_such_database", RetryPolicy(initial_s=5))
    t0 = time.monotonic()
    with pytest.raises(Exception, match="no_such_database") as exc:
        writer.insert(DECISIONS, [rows_for(decision(1))[1]])
    assert time.monotonic() - t0 < 2 and not is_outage(exc.value)
    with pytest.raises(Exception) as exc:
        ensure_schema(FaultyBackend(b, Outage(0), "x"), "bad-name")
    assert isinstance(exc.value, ValueError)
    assert is_outage(ConnectionError("refused")) and is_outage(TimeoutError())
    assert is_outage(RuntimeError("Code: 241. DB::Exception: Memory limit exceeded"))
    assert not is_outage(RuntimeError("Code: 516. DB::Exception: Authentication failed"))
    # a view that cannot be created is a bug: fail at start, never retry it forever
    assert not is_outage(RuntimeError("Code: 184. DB::Exception: Aggregate function max(ts) "
                                      "AS ts is found inside another aggregate function"))
    assert not is_outage(TypeError("bad row"))
    b.close()


class HungServer:
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class Stamped(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))


def test_hung_server_is_logged_and_retried_in_bounded_time() -> None:
    """A server that accepts and never answers: the first log line comes after the
    send/receive timeout (1 s here, 60 s by default), not after 300 s of silence."""
    hung = HungServer()
    handler = Stamped()
    logging.getLogger("sinks").addHandler(handler)
    url = (f"http://default:{SECRET}@127.0.0.1:{hung.port}/?connect_timeout=1"
           f"&send_receive_timeout=1&password={SECRET}")
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception) as exc:
            ensure_schema(ServerBackend(url), "hung_db",
                          RetryPolicy(initial_s=0.1, cap_s=0.5, max_attempts=3))
    finally:
        logging.getLogger("sinks").removeHandler(handler)
        hung.close()
    took = time.monotonic() - t0
    assert is_outage(exc.value)
    first_line_after = handler.lines[0][0] - t0
    text = [m for _, m in handler.lines]
    assert "unavailable" in text[0] and f"127.0.0.1:{hung.port}" in text[0]
    assert all(SECRET not in m for m in text)
    assert 0.9 <= first_line_after < 5 and took < 15
    print(f"hung server: first log line after {first_line_after:.1f} s, gave up after "
          f"3 attempts in {took:.1f} s")


# ---------------------------------------------------------------- Redis


def updates(n: int) -> list[ProfileUpdate]:
    return [ProfileUpdate(f"c{i}", "consent:email:marketing", "0", 1_780_000_000_000)
            for i in range(n)]


def test_redis_outage_profile_updates_wait_and_land(caplog: pytest.LogCaptureFixture) -> None:
    """redis-server is killed: the profile-update sink blocks and retries; started again
    (same port, empty) 2 s later, every update lands; one line down, one line back."""
    with RedisServer() as srv:
        store = RedisProfileStore(srv.url, prefix="out:")
        srv.crash()
        flow = Dataflow(f"redis_outage_{next(_n)}")
        items = op.input("in", flow, TestingSource(updates(300), batch_size=50))
        op.output("store", items, ProfileUpdateSink(lambda: store, FAST))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                run_main(flow)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        with caplog.at_level(logging.INFO):
            runner = threading.Thread(target=run)
            runner.start()
            time.sleep(2.0)
            assert runner.is_alive()  # waiting, not crashed
            srv.restart()
            runner.join(60)
        assert not runner.is_alive() and not errors
        got = store.get_many([f"c{i}" for i in range(300)])
        assert len(got) == 300
        assert all(p.consent("email", "marketing") is False for p in got.values())
        lines = messages(caplog, "profile store")
        assert len(lines) == 2, lines
        assert "unavailable" in lines[0] and "back after" in lines[1]


def test_redis_lookups_log_state_changes_without_password(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    store = RedisProfileStore(f"redis://:{SECRET}@127.0.0.1:{port}/0")
    with caplog.at_level(logging.DEBUG, logger="state.profiles"):
        assert store.ping() is False
        for i in range(200):
            with pytest.raises(ProfileUnavailable) as exc:
                store.get(f"c{i}")
            assert SECRET not in str(exc.value)
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "unavailable" in m]) == 1  # was 200 warnings
    assert f"redis://:***@127.0.0.1:{port}/0" in lines[-1]
    assert all(SECRET not in m for m in lines)
    # one attempt reached for the server; the other 199 failed fast (FAIL_FAST_S), so an
    # outage costs one socket timeout per second, not one per customer
    assert store.lookups.failures == 1


# ---------------------------------------------------------------- Kafka


def test_kafka_outage_sends_wait_and_arrive_once(caplog: pytest.LogCaptureFixture) -> None:
    """The broker is killed before a flush; the producer's attempts time out (2 s each)
    and are produced again; the broker comes back after ~4 s: every send arrives once."""
    topic = "sends_outage"
    with TansuBroker() as broker:
        broker.create_topics([topic], partitions=2)
        out = KafkaOut([broker.bootstrap], {"message.timeout.ms": 2000,
                                            "reconnect.backoff.max.ms": 200}, FAST)
        batch = [(f"send{i}".encode(), b"{}") for i in range(100)]
        out.deliver(topic, batch[:10])  # connected and working
        broker.crash()
        done: list[int] = []
        with caplog.at_level(logging.INFO):
            t = threading.Thread(target=lambda: done.append(out.deliver(topic, batch[10:])))
            t.start()
            time.sleep(4.0)
            assert t.is_alive()
            broker.restart()  # memory storage: the topic is gone until created again
            broker.create_topics([topic], partitions=2)
            t.join(60)
        assert done == [90] and out.attempts > 2
        got = consume_all(broker.bootstrap, topic, expected=90, timeout=20)
        assert sorted(k for k, _ in got) == sorted(k for k, _ in batch[10:])
        out.close()
    lines = messages(caplog, f"Kafka {broker.bootstrap}")
    downs = [m for m in lines if "unavailable" in m and "still" not in m]
    assert len(downs) == 1 and any("back after" in m for m in lines), lines
    assert len(lines) <= 6, lines  # not one per failed connection attempt


def test_kafka_permanent_delivery_error_raises(kafka) -> None:
    topic = f"big_{uuid.uuid4().hex[:6]}"
    kafka.create_topics([topic], partitions=1)
    out = KafkaOut([kafka.bootstrap], {"message.max.bytes": 10_000}, FAST)
    with pytest.raises(DeliveryFailed) as exc:
        out.deliver(topic, [(b"k", b"x" * 20_000)])
    assert not exc.value.retriable
    assert out.deliver(topic, [(b"k", b"small")]) == 1
    out.close()
