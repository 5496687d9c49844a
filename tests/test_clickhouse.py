"""ClickHouse schema, backends and Bytewax sink against a real embedded chdb.

chdb runs one engine per process on one directory, so the whole test session uses ONE data
directory (the ``chdb_url`` fixture) and every test gets its own database in it.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, cluster_main, run_main

from cdp_triggers.clock import iso
from cdp_triggers.events import DUPLICATE, Rejected, parse_event
from cdp_triggers.logs import RetryPolicy
from cdp_triggers.records import Conversion, Decision, Duplicate, Lifecycle, Send
from sinks.clickhouse import (
    ChdbBackend,
    ServerBackend,
    ensure_schema,
    open_backend,
    server_params,
)
from sinks.clickhouse_schema import (
    ANALYST_VIEWS,
    COUNTED_VIEWS,
    DEDUP_VIEWS,
    RAW_TABLES,
    ddl_statements,
    rejected_id,
    rows_for,
)
from sinks.clickhouse_sink import ClickHouseWriter
from sinks.effects import EffectsPartition, EffectsSink, route

T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z
DAY = iso(T0)[:10]

_names = itertools.count()


def decision(i: int, status: str = "sent", reason: str = "", channel: str = "email",
             variant: str = "A", trigger: str = "cart", instance: str = "inst1") -> Decision:
    return Decision(f"dec{i}", f"send{i}", "cust1", trigger, "marketing", "v1", instance, 0,
                    channel, "tpl", variant, status, reason, T0 + i, T0 + i + 5)


def send(i: int, channel: str = "email") -> Send:
    return Send(f"send{i}", "cust1", "cart", "marketing", "v1", "inst1", 0, channel, "tpl",
                "A", {"items": [{"sku": "X", "qty": 2}], "first_name": "Ann"}, T0 + i, T0 + i)


def lifecycle(i: int, action: str = "started", instance: str = "inst1") -> Lifecycle:
    return Lifecycle(f"lc{i}", "cust1", "cart", instance, "cart-9", action, "", f"ev{i}",
                     T0 + i, T0 + i)


def conversion(i: int, revenue: float = 99.9, channel: str = "email") -> Conversion:
    return Conversion(f"conv{i}", "cust1", f"order{i}", revenue, "EUR", f"send{i}", "cart",
                      "A", channel, T0, T0 + 60_000)


def rejected(i: int) -> Rejected:
    r = parse_event(b'{"event_id": "e%d", "type": "x"' % i + b"\xff", source=f"clicks:0:{i}")
    assert isinstance(r, Rejected)
    return r


def sample() -> list[Any]:
    return [
        lifecycle(1), lifecycle(2, "cancelled"),
        decision(1), decision(2, "suppressed", "no_consent", channel="sms"),
        decision(3, "cancelled", "cancel_event", channel="push"),
        send(1), conversion(1, revenue=50.5),
        Duplicate("ev7", "cust1", "added_to_cart", "clicks:0:7", T0), rejected(8),
    ]


def insert(backend: ChdbBackend, db: str, records: list[Any]) -> None:
    by_table: dict[str, list[dict]] = {}
    for r in records:
        table, row = rows_for(r, received_at=T0)
        by_table.setdefault(table, []).append(row)
    for table, rows in by_table.items():
        backend.insert_json_rows(f"{db}.{table}", rows)


def count(backend: ChdbBackend, sql: str) -> int:
    return backend.query_rows(sql)[0][0]


def test_ddl_applies_twice(backend: ChdbBackend, db: str) -> None:
    ensure_schema(backend, db)
    sql = f"SELECT name FROM system.tables WHERE database = '{db}'"
    names = {r[0] for r in backend.query_rows(sql)}
    views = [*DEDUP_VIEWS.values(), *COUNTED_VIEWS.values(), *ANALYST_VIEWS]
    assert names == set(RAW_TABLES) | set(views)
    for view in views:
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 0
    with pytest.raises(ValueError):
        ddl_statements("bad-name; DROP")


def test_replay_keeps_one_row_per_id(backend: ChdbBackend, db: str) -> None:
    insert(backend, db, sample())
    insert(backend, db, sample())  # a replay / at-least-once redelivery
    expected = {"decisions": 3, "sends": 1, "lifecycle": 2, "conversions": 1,
                "rejected_events": 2}
    for view, n in expected.items():
        assert count(backend, f"SELECT count() FROM {db}.{view}") == n, view
    assert 3 <= count(backend, f"SELECT count() FROM {db}.raw_decisions") <= 6  # merges dedupe too


def test_each_record_type_round_trips(backend: ChdbBackend, db: str) -> None:
    insert(backend, db, sample())
    cols, rows = backend.query(f"SELECT * FROM {db}.decisions WHERE decision_id = 'dec2'")
    got = dict(zip(cols, rows[0], strict=True))
    assert got.pop("inserted_at")
    written = rows_for(decision(2, "suppressed", "no_consent", channel="sms"))[1]
    # times are written as epoch seconds (ms fraction) and read back as DateTime64 text
    assert got == {k: iso(round(v * 1000)) if isinstance(v, float) else v
                   for k, v in written.items()}

    cols, rows = backend.query(f"SELECT * EXCEPT inserted_at FROM {db}.sends")
    got = dict(zip(cols, rows[0], strict=True))
    assert orjson.loads(got.pop("variables")) == send(1).variables
    assert got["send_id"] == "send1" and got["ts"] == iso(T0 + 1) and got["step"] == 0

    cols, rows = backend.query(f"SELECT * EXCEPT inserted_at FROM {db}.lifecycle ORDER BY ts")
    assert [r[cols.index("action")] for r in rows] == ["started", "cancelled"]
    assert rows[0][cols.index("instance_key")] == "cart-9"

    cols, rows = backend.query(f"SELECT revenue, currency, sent_at, ts FROM {db}.conversions")
    assert rows == [(50.5, "EUR", iso(T0), iso(T0 + 60_000))]

    cols, rows = backend.query(
        f"SELECT reason, raw, source, event_id, event_ts, received_at, rejected_id "
        f"FROM {db}.rejected_events ORDER BY reason")
    dup, bad = rows
    assert dup[:5] == (DUPLICATE, "", "clicks:0:7", "ev7", iso(T0))
    assert bad[0] == "invalid_json" and bad[1].endswith("\ufffd") and bad[4] is None
    assert bad[5] == iso(T0) and bad[6] == rejected_id(rejected(8))


@pytest.mark.parametrize("ms", [0, 1, 999, 1_000, T0, T0 + 1, T0 + 7, T0 + 999,
                                1_764_500_000_123, 4_102_444_799_999])  # … 2099-12-31 23:59
def test_row_times_are_exact_to_the_millisecond(backend: ChdbBackend, db: str, ms: int) -> None:
    """Rows carry times as JSON numbers (epoch seconds, ms fraction): ClickHouse stores
    exactly the millisecond the record had, whatever the digits."""
    row = rows_for(decision(1))[1]
    row.update(decision_id=f"ms{ms}", ts=ms / 1000, decided_at=ms / 1000)
    backend.insert_json_rows(f"{db}.raw_decisions", [row])
    got = backend.query_rows(f"SELECT toUnixTimestamp64Milli(ts), toString(decided_at) "
                             f"FROM {db}.raw_decisions WHERE decision_id = 'ms{ms}'")
    assert got == [(ms, iso(ms))]


def test_analyst_views(backend: ChdbBackend, db: str) -> None:
    insert(backend, db, sample())
    insert(backend, db, [decision(4, variant="B", instance="inst2"), lifecycle(3, instance="inst2"),
                         conversion(4, revenue=10.0)])
    cols, rows = backend.query(
        f"SELECT * FROM {db}.trigger_funnel_daily ORDER BY variant, channel")
    funnel = {(r[2], r[3]): dict(zip(cols[4:], r[4:], strict=True)) for r in rows}
    assert all(r[0] == DAY and r[1] == "cart" for r in rows)
    assert funnel[("A", "")]["instances_started"] == 1
    assert funnel[("A", "")]["instances_cancelled"] == 1
    assert funnel[("B", "")]["instances_started"] == 1
    assert funnel[("A", "email")] == {
        "instances_started": 0, "instances_cancelled": 0, "messages_considered": 1,
        "messages_sent": 1, "messages_suppressed": 0, "messages_cancelled": 0,
        "conversions": 2, "revenue": 60.5}
    assert funnel[("A", "sms")]["messages_suppressed"] == 1
    assert funnel[("A", "push")]["messages_cancelled"] == 1
    assert funnel[("B", "email")]["messages_sent"] == 1

    rows = backend.query_rows(
        f"SELECT trigger_id, status, reason, decisions, customers "
        f"FROM {db}.suppression_reasons ORDER BY reason")
    assert rows == [("cart", "cancelled", "cancel_event", 1, 1),
                    ("cart", "suppressed", "no_consent", 1, 1)]

    cols, rows = backend.query(f"SELECT * FROM {db}.channel_summary ORDER BY channel")
    by_channel = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert set(by_channel) == {"email", "push", "sms"}
    email = by_channel["email"]
    assert (email["messages_sent"], email["customers_reached"], email["conversions"],
            email["revenue"], email["conversion_rate"]) == (2, 1, 2, 60.5, 1.0)
    assert by_channel["sms"]["messages_suppressed"] == 1 and by_channel["sms"]["revenue"] == 0


class CountingBackend:
    """Wraps a backend and records every insert (the sink's flushes)."""

    inserts: list[tuple[str, int]] = []

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def insert_json_rows(self, table: str, rows: list[dict]) -> None:
        CountingBackend.inserts.append((table, len(rows)))
        self.inner.insert_json_rows(table, rows)

    def close(self) -> None:
        self.inner.close()


def sink_flow(sink: EffectsSink, records: list[Any], crash_at: Any = None) -> Dataflow:
    crashed = []

    def maybe_crash(item: tuple[str, Any]) -> tuple[str, Any]:
        if item[1] is crash_at and not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash")
        return item

    flow = Dataflow("ch_sink_test")
    items = op.input("in", flow, TestingSource([sink.route(r) for r in records], batch_size=7))
    op.output("out", op.map("crash", items, maybe_crash), sink)
    return flow


def run_sink(chdb_dir: str, db: str, records: list[Any], **kw: Any) -> EffectsSink:
    sink = EffectsSink(lambda: CountingBackend(ChdbBackend(chdb_dir)), db, **kw)
    run_main(sink_flow(sink, records))
    return sink


def many_records(n: int) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        out += [decision(i, variant="AB"[i % 2]), send(i), lifecycle(i), conversion(i)]
    return [*out, *(rejected(i) for i in range(n))]


@pytest.mark.parametrize(("max_rows", "parts"), [(5000, 1), (3, 2)])
def test_sink_writes_everything(chdb_dir: str, backend: ChdbBackend, db: str,
                                max_rows: int, parts: int) -> None:
    CountingBackend.inserts.clear()
    records = many_records(25)
    run_sink(chdb_dir, db, records, max_rows=max_rows, max_seconds=60.0, parts=parts)
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 25, view
    written = sum(n for _, n in CountingBackend.inserts)
    assert written == len(records)
    assert max(n for _, n in CountingBackend.inserts) <= max_rows
    if max_rows == 3:
        assert len(CountingBackend.inserts) >= len(records) // 3
    else:
        assert len(CountingBackend.inserts) == 5  # one flush per table, at epoch close

    run_sink(chdb_dir, db, records, max_rows=max_rows, max_seconds=60.0, parts=parts)  # replay
    assert sum(n for _, n in CountingBackend.inserts) == 2 * len(records)
    assert count(backend, f"SELECT count() FROM {db}.decisions") == 25
    # background merges may already have collapsed some twins in the raw table
    assert 25 <= count(backend, f"SELECT count() FROM {db}.raw_decisions") <= 50


def test_sink_multi_worker(chdb_dir: str, backend: ChdbBackend, db: str) -> None:
    """Three worker threads, each partition with its own chdb connection."""
    sink = EffectsSink(lambda: ChdbBackend(chdb_dir), db, max_rows=20, parts=3)
    cluster_main(sink_flow(sink, many_records(60)), [], 0, worker_count_per_proc=3)
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 60, view


def test_sink_crash_and_resume(chdb_dir: str, backend: ChdbBackend, db: str,
                               tmp_path: Path) -> None:
    """At-least-once: rows of committed epochs are in ClickHouse; the resumed run writes
    the rest, and the views hold each id once."""
    init_db_dir(tmp_path, 1)
    records = many_records(100)
    sink = EffectsSink(lambda: ChdbBackend(chdb_dir), db, max_rows=1000, parts=2)
    flow = sink_flow(sink, records, crash_at=records[300])
    with pytest.raises(BytewaxRuntimeError):
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(tmp_path))
    assert 0 < count(backend, f"SELECT count() FROM {db}.decisions") < 100
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(tmp_path))
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        assert count(backend, f"SELECT count() FROM {db}.{view}") == 100, view


def test_route_is_stable_and_by_customer() -> None:
    sink = EffectsSink(lambda: None, "db", parts=4)  # type: ignore[arg-type, return-value]
    parts = sink.list_parts()
    assert len(parts) == 4 and parts == sorted(parts)
    for r in many_records(10):
        key, same = route(r, 4)
        assert same is r and key == sink.route(r)[0] == route(r, 4)[0]
        assert parts[sink.part_fn(key)] == key
    # a customer's decision, send, lifecycle and conversion rows share one partition
    assert len({route(r, 4)[0] for r in many_records(10) if r.customer_id == "cust1"}) == 1
    assert route(decision(1))[0] == "effects-0"
    assert sink.part_fn("unknown-7") >= 0


@pytest.mark.parametrize("parts", [1, 3])
def test_a_bundle_is_each_partitions_records_in_order(parts: int) -> None:
    """What the flow hands the sink per batch: one item per partition, holding exactly the
    records ``route`` would have sent there one by one, in the same order."""
    sink = EffectsSink(lambda: None, "db", parts=parts)  # type: ignore[arg-type, return-value]
    records = many_records(20)
    bundles = sink.bundle(records)
    assert len({k for k, _ in bundles}) == len(bundles) <= parts
    for key, bundle in bundles:
        assert bundle == [r for r in records if sink.route(r)[0] == key]


def test_bundled_records_give_the_same_rows_as_one_by_one(chdb_dir: str,
                                                          backend: ChdbBackend) -> None:
    db_one, db_bundled = (f"test_clickhouse_{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in (db_one, db_bundled):
        ensure_schema(backend, name)
    records = many_records(40)
    run_sink(chdb_dir, db_one, records, max_rows=7, parts=2)
    sink = EffectsSink(lambda: ChdbBackend(chdb_dir), db_bundled, max_rows=7, parts=2)
    flow = Dataflow("bundled")
    chunks = [records[i:i + 9] for i in range(0, len(records), 9)]
    items = op.input("in", flow, TestingSource([b for c in chunks for b in sink.bundle(c)]))
    op.output("out", items, sink)
    run_main(flow)
    for view in ("decisions", "sends", "lifecycle", "conversions", "rejected_events"):
        wall = "inserted_at, received_at" if view == "rejected_events" else "inserted_at"
        sql = f"SELECT * EXCEPT ({wall}) FROM {{}}.{view} ORDER BY ALL"  # not the wall times
        one = backend.query_rows(sql.format(db_one))
        assert one and one == backend.query_rows(sql.format(db_bundled)), view


class FakeBackend:
    def __init__(self) -> None:
        self.inserts: list[tuple[str, int]] = []
        self.closed = False

    name = "fake ClickHouse"

    def insert_json_rows(self, table: str, rows: list[dict]) -> None:
        self.inserts.append((table, len(rows)))

    def close(self) -> None:
        self.closed = True


def test_partition_flushes_on_size_age_snapshot_and_close() -> None:
    now = [0.0]
    fake = FakeBackend()
    part = EffectsPartition(ClickHouseWriter(fake, "db"), None,  # type: ignore[arg-type]
                            max_rows=3, max_seconds=2.0, clock=lambda: now[0])
    part.write_batch([decision(i) for i in range(7)])
    assert fake.inserts == [("db.raw_decisions", 3), ("db.raw_decisions", 3)]
    now[0] = 1.0
    part.write_batch([send(1)])
    assert len(fake.inserts) == 2  # one decision + one send buffered, oldest 1 s old
    now[0] = 2.5
    part.write_batch([])
    assert fake.inserts[2:] == [("db.raw_decisions", 1), ("db.raw_sends", 1)]
    part.write_batch([lifecycle(1)])
    assert part.snapshot() is None and fake.inserts[-1] == ("db.raw_lifecycle", 1)
    part.write_batch([conversion(1)])
    part.close()
    assert fake.inserts[-1] == ("db.raw_conversions", 1) and fake.closed
    assert part.clickhouse is not None and part.clickhouse.rows_written == 10
    assert part.pending == 0


def test_failed_insert_keeps_rows() -> None:
    """With a bounded retry policy an outage that outlasts it raises, rows kept."""
    class Flaky(FakeBackend):
        def insert_json_rows(self, table: str, rows: list[dict]) -> None:
            raise ConnectionError("down")

    writer = ClickHouseWriter(Flaky(), "db",  # type: ignore[arg-type]
                              RetryPolicy(initial_s=0.01, max_attempts=2))
    part = EffectsPartition(writer, None, max_rows=100, max_seconds=60.0)
    part.write_batch([decision(1)])
    with pytest.raises(ConnectionError):
        part.snapshot()
    assert part.pending == 1 and len(part.rows["raw_decisions"]) == 1


def test_server_backend_runs_the_same_sql(chdb_dir: str, backend: ChdbBackend) -> None:
    """ServerBackend's code path (command/raw_query/raw_insert) via clickhouse-connect's
    in-process chdb client on the same engine: no server needed."""
    import clickhouse_connect

    server = ServerBackend(client=clickhouse_connect.get_client(interface="chdb", path=chdb_dir))
    try:
        name = f"cdp_test_{next(_names)}"
        ensure_schema(server, name)
        ensure_schema(server, name)
        rows = [rows_for(r, received_at=T0) for r in sample()]
        for table, row in rows:
            server.insert_json_rows(f"{name}.{table}", [row])
        sql = f"SELECT * FROM {name}.channel_summary ORDER BY channel"
        assert server.query(sql) == backend.query(sql)
        sql = f"SELECT * EXCEPT inserted_at FROM {name}.decisions ORDER BY decision_id"
        assert server.query(sql) == backend.query(sql)
        assert len(server.query_rows(sql)) == 3
    finally:
        server.close()


def test_open_backend_urls(chdb_dir: str, tmp_path: Any) -> None:
    for url in (f"chdb://{chdb_dir}", chdb_dir, f"{chdb_dir}/"):
        b = open_backend(url)
        assert isinstance(b, ChdbBackend) and b.query_rows("SELECT 1") == [(1,)]
        b.close()
    with pytest.raises(RuntimeError, match="one embedded engine per process"):
        ChdbBackend(str(tmp_path / "other"))
    with pytest.raises(ValueError):
        open_backend("ftp://x")
    assert server_params("https://u:p%40ss@ch.example:8443/?async_insert=1") == {
        "host": "ch.example", "interface": "https", "secure": True, "port": 8443,
        "username": "u", "password": "p@ss", "settings": {"async_insert": "1"},
        "connect_timeout": 10, "send_receive_timeout": 60, "query_retries": 0}
    params = server_params("http://h/?connect_timeout=2&send_receive_timeout=5")
    assert (params["connect_timeout"], params["send_receive_timeout"]) == (2, 5)
    assert "settings" not in params
    assert server_params("clickhouse://ch")["interface"] == "http"
