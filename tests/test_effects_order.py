"""The effects sink: rows durable before commands, the outbox, replays and crashes.

Real chdb and a real Tansu broker; spies only record the order of the real calls.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from flow_helpers import DelegatingBackend
from services import consume_all
from test_clickhouse import rejected

from cdp_triggers.records import Decision, Lifecycle, Send
from sinks.clickhouse import ChdbBackend, has_dispatched
from sinks.clickhouse_sink import ClickHouseWriter
from sinks.effects import EffectsPartition, EffectsSink
from sinks.kafka_out import KafkaOut, Message

pytestmark = pytest.mark.integration
_n = itertools.count()

T0 = 1_780_000_000_000


@pytest.fixture
def topics(kafka: Any) -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    sends, dead = f"eff_sends_{run}", f"eff_dead_{run}"
    kafka.create_topics([sends, dead], partitions=2)
    return sends, dead


def records(n: int) -> list[Any]:
    """n customers, each with a decision, a send, a lifecycle row; plus n dead letters."""
    out: list[Any] = []
    for i in range(n):
        cid, sid = f"cust{i}", f"send{i}"
        out += [
            Lifecycle(f"lc{i}", cid, "cart", f"inst{i}", "", "started", "", f"ev{i}", T0, T0),
            Decision(f"dec{i}", sid, cid, "cart", "marketing", "v1", f"inst{i}", 0, "email",
                     "tpl", "A", "sent", "", T0 + i, T0 + i),
            Send(sid, cid, "cart", "marketing", "v1", f"inst{i}", 0, "email", "tpl", "A",
                 {"n": i}, T0 + i, T0 + i),
        ]
    return [*out, *(rejected(i) for i in range(n))]


class Journal:
    """The order of real calls: ("insert", table, ids) / ("deliver", topic, ids)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, set[str]]] = []


class SpyBackend(DelegatingBackend):
    def __init__(self, inner: ChdbBackend, journal: Journal) -> None:
        super().__init__(inner, "ClickHouse spy")
        self.journal = journal

    def insert_json_rows(self, table: str, rows: list[dict]) -> None:
        self.inner.insert_json_rows(table, rows)
        self.journal.events.append(("insert", table.split(".")[-1],
                                    {r.get("send_id", "") for r in rows}))


class SpyKafka(KafkaOut):
    """Records deliveries; ``crash_on_sends``: the next delivery to the sends topic fails."""

    crash_on_sends = False

    def __init__(self, journal: Journal, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.journal = journal

    def deliver(self, topic: str, messages: list[Message]) -> int:  # type: ignore[override]
        if SpyKafka.crash_on_sends and "sends" in topic:
            SpyKafka.crash_on_sends = False
            raise RuntimeError("simulated crash before producing")
        n = super().deliver(topic, messages)
        self.journal.events.append(("deliver", topic, {k.decode() for k, _ in messages if k}))
        return n


class SpySink(EffectsSink):
    def __init__(self, chdb_dir: str, journal: Journal, *a: Any, **kw: Any) -> None:
        super().__init__(lambda: SpyBackend(ChdbBackend(chdb_dir), journal), *a, **kw)
        self.journal = journal
        self.built: list[EffectsPartition] = []

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> EffectsPartition:
        assert self.clickhouse is not None
        part = EffectsPartition(
            ClickHouseWriter(self.clickhouse(), self.database, self.policy),
            SpyKafka(self.journal, self.kafka_brokers, self.kafka_config, self.policy),
            self.sends_topic, self.dead_letter_topic, self.max_rows, self.max_seconds)
        self.built.append(part)
        return part


def flow_of(sink: EffectsSink, items: list[Any]) -> Dataflow:
    flow = Dataflow(f"effects_{next(_n)}")
    src = op.input("in", flow, TestingSource(items, batch_size=10))
    op.output("effects", op.map("route", src, lambda r: r if isinstance(r, tuple)
                                else sink.route(r)), sink)
    return flow


def sink_for(chdb_dir: str, db: str, kafka: Any, topics: tuple[str, str],
             journal: Journal) -> SpySink:
    return SpySink(chdb_dir, journal, db, [kafka.bootstrap], topics[0], topics[1],
                   max_rows=25, parts=3)


def test_rows_are_durable_before_commands_leave(chdb_dir: str, backend: ChdbBackend,
                                                db: str, kafka: Any,
                                                topics: tuple[str, str]) -> None:
    journal = Journal()
    items = records(40)
    run_main(flow_of(sink_for(chdb_dir, db, kafka, topics, journal), items))
    events = journal.events
    for i, (kind, where, ids) in enumerate(events):
        if kind != "deliver" or where != topics[0]:
            continue
        for table in ("raw_sends", "raw_decisions"):
            written = set().union(*(e[2] for e in events[:i] if e[:2] == ("insert", table)))
            assert ids <= written, f"{table} rows of {ids - written} not written before send"
        later = set().union(*(e[2] for e in events[i:] if e[:2] == ("insert", "raw_dispatched")))
        assert ids <= later
    sent = consume_all(kafka.bootstrap, topics[0], expected=40, timeout=20)
    by_key = {k.decode(): orjson.loads(v) for k, v in sent}
    assert len(sent) == 40 and len(by_key) == 40
    assert by_key["send7"] == orjson.loads(orjson.dumps(asdict(items[3 * 7 + 2])))
    dead = consume_all(kafka.bootstrap, topics[1], expected=40, timeout=20)
    assert len(dead) == 40 and orjson.loads(dead[0][1])["reason"] == "invalid_json"
    assert backend.query_rows(f"SELECT count() FROM {db}.rejected_events")[0][0] == 40
    assert has_dispatched(backend, db) == 40
    assert has_dispatched(backend, "no_such_db") == 0


def test_replay_rewrites_rows_but_does_not_resend(chdb_dir: str, backend: ChdbBackend,
                                                  db: str, kafka: Any,
                                                  topics: tuple[str, str]) -> None:
    items = records(30)
    run_main(flow_of(sink_for(chdb_dir, db, kafka, topics, Journal()), items))
    again = sink_for(chdb_dir, db, kafka, topics, Journal())
    run_main(flow_of(again, items))  # a restart from the beginning
    assert sum(p.sends_skipped for p in again.built) == 30
    assert sum(p.sends_produced for p in again.built) == 0
    sent = consume_all(kafka.bootstrap, topics[0], timeout=20, idle=2)
    assert len(sent) == 30 and len({k for k, _ in sent}) == 30
    for view in ("decisions", "sends", "lifecycle", "dispatched"):
        assert backend.query_rows(f"SELECT count() FROM {db}.{view}")[0][0] == 30, view


def test_crash_before_producing_then_resume_sends_each_once(
        chdb_dir: str, backend: ChdbBackend, db: str, kafka: Any, topics: tuple[str, str],
        tmp_path: Path) -> None:
    """A flush dies after it wrote its rows and before it produced the commands: no command
    is on the topic without its row (the other partitions still flush in ``close()``, rows
    first; the failed one does not flush again); the resumed run sends each command once."""
    init_db_dir(tmp_path, 1)
    items = records(60)
    SpyKafka.crash_on_sends = True
    rc = RecoveryConfig(tmp_path)
    with pytest.raises(BytewaxRuntimeError):
        run_main(flow_of(sink_for(chdb_dir, db, kafka, topics, Journal()), items),
                 epoch_interval=timedelta(0), recovery_config=rc)
    on_topic = {k.decode() for k, _ in consume_all(kafka.bootstrap, topics[0], idle=2)}
    rows = {r[0] for r in backend.query_rows(f"SELECT send_id FROM {db}.sends")}
    assert on_topic <= rows and len(rows) > len(on_topic)  # the crashed flush's rows landed
    run_main(flow_of(sink_for(chdb_dir, db, kafka, topics, Journal()), items),
             epoch_interval=timedelta(0), recovery_config=rc)
    sent = consume_all(kafka.bootstrap, topics[0], expected=60, timeout=20, idle=2)
    assert sorted(k.decode() for k, _ in sent) == sorted(f"send{i}" for i in range(60))
    assert has_dispatched(backend, db) == 60


def test_a_live_send_leaves_at_once_with_its_rows_the_rest_stays_batched(
        chdb_dir: str, backend: ChdbBackend, db: str, kafka: Any,
        topics: tuple[str, str]) -> None:
    """A send decided on live time (decided_at = now) is produced within its own batch:
    its send row first, then the command; its decision and outbox rows, the batch's other
    rows and its dead letter wait for the next full flush (DESIGN: no command without its
    row). A send decided long ago (a
    replay or a backfill) waits for the batch like any row."""
    import time

    journal = Journal()
    now = time.time_ns() // 1_000_000
    part = EffectsPartition(
        ClickHouseWriter(SpyBackend(ChdbBackend(chdb_dir), journal), db),
        SpyKafka(journal, [kafka.bootstrap]), topics[0], topics[1], max_seconds=600.0)
    live = [
        Lifecycle("lc-live", "cust-live", "cart", "inst-live", "", "started", "", "ev1", now,
                  now),
        Decision("dec-live", "send-live", "cust-live", "order_status", "transactional", "v1",
                 "inst-live", 0, "email", "tpl", "A", "sent", "", now, now),
        Send("send-live", "cust-live", "order_status", "transactional", "v1", "inst-live", 0,
             "email", "tpl", "A", {}, now, now),
        rejected(1),
    ]
    part.write_batch(live)
    kinds = [(kind, where) for kind, where, _ in journal.events]
    assert kinds == [("insert", "raw_sends"), ("deliver", topics[0])]
    assert part.pending == 4 and set(part.rows) == {"raw_lifecycle", "raw_rejected_events",
                                                    "raw_dispatched", "raw_decisions"}
    assert [k for k, _ in consume_all(kafka.bootstrap, topics[0], expected=1)] == [b"send-live"]

    old = records(1)  # decided at T0, months ago: batched
    part.write_batch(old)
    assert len(journal.events) == 2 and part.pending == 4 + len(old)
    part.snapshot()  # the epoch closes: everything, rows before commands and dead letters
    later = [(kind, where) for kind, where, _ in journal.events[2:]]
    assert ("insert", "raw_dispatched") in later[:later.index(("deliver", topics[0]))]
    assert later.index(("deliver", topics[0])) > later.index(("insert", "raw_sends"))
    assert later[-1] == ("deliver", topics[1]) and part.pending == 0
    assert part.send_flushes == 1 and part.sends_produced == 2
    part.close()
    assert has_dispatched(backend, db) == 2


def test_a_live_partition_writes_due_tables_one_per_batch_then_waits_again(
        chdb_dir: str, backend: ChdbBackend, db: str, kafka: Any,
        topics: tuple[str, str]) -> None:
    """Live (``trickle``): once due, the buffered tables go one per batch, largest first,
    with nothing but its own INSERT in a batch; after the round the age counts anew. A
    live send in a due batch still leaves at once; a dead letter waiting makes the flush
    whole again (its rows before it)."""
    import time

    journal, clock = Journal(), [0.0]
    part = EffectsPartition(
        ClickHouseWriter(SpyBackend(ChdbBackend(chdb_dir), journal), db),
        SpyKafka(journal, [kafka.bootstrap]), topics[0], topics[1], max_seconds=2.0,
        clock=lambda: clock[0], trickle=True)
    background = [Lifecycle(f"lc{i}", f"c{i}", "cart", f"i{i}", "", "started", "", f"e{i}",
                            T0, T0) for i in range(3)]
    background += [Decision(f"d{i}", f"s{i}", f"c{i}", "cart", "marketing", "v1", f"i{i}", 0,
                            "email", "tpl", "A", "suppressed", "no_consent", T0, T0)
                   for i in range(2)]
    part.write_batch(background)
    assert journal.events == [] and part.pending == 5
    clock[0] = 2.5  # due
    part.write_batch([])
    assert [e[:2] for e in journal.events] == [("insert", "raw_lifecycle")]
    assert part.pending == 2
    now = time.time_ns() // 1_000_000
    live = [Decision("dec-live", "send-live", "cust-live", "order_status", "transactional",
                     "v1", "inst-live", 0, "email", "tpl", "A", "sent", "", now, now),
            Send("send-live", "cust-live", "order_status", "transactional", "v1", "inst-live",
                 0, "email", "tpl", "A", {}, now, now)]
    part.write_batch(live)  # the live send first: its row and command only
    assert [e[:2] for e in journal.events[1:]] == [("insert", "raw_sends"),
                                                   ("deliver", topics[0])]
    part.write_batch([])  # the round goes on: the decisions (the live one's too)
    assert [e[:2] for e in journal.events[3:]] == [("insert", "raw_decisions")]
    assert part.trickled == 2 and part.pending == 1
    assert set(part.rows) == {"raw_dispatched"}  # the live send's outbox row: next round
    part.write_batch([])  # the round is over
    part.write_batch(background[:1])  # the age counts from the round's end: not due
    assert len(journal.events) == 4
    clock[0] = 5.0
    part.write_batch([rejected(1)])  # a dead letter waits: the whole partition flushes
    assert [e[:2] for e in journal.events[4:]] == [
        ("insert", "raw_dispatched"), ("insert", "raw_lifecycle"),
        ("insert", "raw_rejected_events"), ("deliver", topics[1])]
    assert part.pending == 0
    part.close()


def test_a_live_epoch_close_keeps_waiting_rows_as_the_snapshot_and_a_restart_writes_them(
        chdb_dir: str, backend: ChdbBackend, db: str, kafka: Any,
        topics: tuple[str, str]) -> None:
    """Live (``trickle``): an epoch's close with only rows waiting writes nothing (ten
    INSERTs stalled live sends); with recovery on they are the partition's snapshot, and a
    partition built from it (a restart from that epoch) writes them. A command or a dead
    letter waiting makes the close flush whole, as a replay's always does."""
    journal = Journal()

    def part(resume: bytes | None = None, trickle: bool = True) -> EffectsPartition:
        p = EffectsPartition(
            ClickHouseWriter(SpyBackend(ChdbBackend(chdb_dir), journal), db),
            SpyKafka(journal, [kafka.bootstrap]), topics[0], topics[1], max_seconds=600.0,
            trickle=trickle, keep_snapshots=True)
        p.resume(resume)
        return p

    rows = [r for r in records(3) if isinstance(r, Decision | Lifecycle)]
    live = part()
    live.write_batch(rows)
    snap = live.snapshot()
    assert journal.events == [] and isinstance(snap, bytes)
    live.failed = True  # the process dies here: nothing written at close
    live.close()
    assert journal.events == []
    again = part(snap)  # restarted from that epoch
    assert again.pending == len(rows) == 6
    again.write_batch([])  # due at once: a table per batch
    again.write_batch([])
    assert sorted(w for _, w, _ in journal.events) == ["raw_decisions", "raw_lifecycle"]
    assert again.pending == 0
    again.write_batch([rejected(1)])
    assert again.snapshot() is None and again.pending == 0  # a dead letter: flushed whole
    assert journal.events[-1][:2] == ("deliver", topics[1])
    again.close()
    replay = part(trickle=False)
    replay.write_batch(records(1))
    assert replay.snapshot() is None and replay.pending == 0  # flushed whole
    replay.close()
    assert has_dispatched(backend, db) == 1
