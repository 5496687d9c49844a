"""The one Bytewax sink for everything the engine decides, written in a safe order.

No send command leaves the flow before its ClickHouse rows are durable. Each partition
buffers its records and, on every flush (``max_rows`` records buffered, the oldest
``max_seconds`` old when a batch arrives, and always in ``snapshot()``, which Bytewax calls
at every epoch close before it commits recovery state, and in ``close()``):

1. INSERTs all buffered rows, every table (decisions, sends, lifecycle, …, dead letters);
2. looks the buffered send ids up in the outbox (``dispatched``) and produces the others
   to the sends topic (key = send_id), waiting for every delivery report;
3. records those ids in the outbox; then produces dead letters to their topic.

Live sends leave at once: a batch holding a send decided on live time (``decided_at``
within ``live_ms`` of the wall clock: a live run that has caught up, not a backfill or a
replay, whose decision times lie behind) flushes the partition's *send* part straight
away: its sends rows, then step 2; their decision and outbox rows (step 3) wait for the
next flush with every other table (and the dead letters, rows before messages). In live
runs (``trickle``) a due partition with no command or dead letter waiting writes its
tables one per batch, so no live send waits behind ten INSERTs. Backfills and replays
batch as before.

Every step blocks until it succeeds (outages are waited out with backoff, see
:class:`sinks.clickhouse_sink.ClickHouseWriter` and :class:`sinks.kafka_out.KafkaOut`), so
a full buffer stops the worker and Bytewax stops reading input: memory stays bounded by
``max_rows``. A crash replays the uncommitted epoch: rows are re-written (idempotent
tables), and commands already in the outbox are not sent again. A crash between steps 2
and 3 re-sends that flush's commands (same key; gateways dedupe on send_id), and so does a
crash before the full flush that records live sends' outbox rows (``max_seconds`` at most,
or the epoch's close).

Records are routed by customer, so a Send and its decision and sends rows share a
partition and a flush. Replays and backfills keep nothing buffered past an epoch (resume
state ``None``); a live run's epoch close keeps its buffer as the partition's resume state
instead of flushing it (see :meth:`EffectsPartition.snapshot`).

Metrics (:mod:`cdp_triggers.metrics`), published once per flush: decisions by status and
reason, sends by channel, dead letters by reason (``duplicate_event_id`` included), commands
produced and skipped; per partition the backlog and the flush time; retries per dependency.
While ClickHouse or Kafka is in an outage the process is not ready (``sinks``).
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from cdp_triggers import metrics, shutdown
from cdp_triggers.events import Rejected
from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy, redact
from cdp_triggers.records import Decision, Duplicate, Send
from sinks.clickhouse import ClickHouseBackend
from sinks.clickhouse_schema import (
    DISPATCHED,
    SENDS,
    Record,
    dispatched_row,
    record_id,
    rows_for,
)
from sinks.clickhouse_sink import ClickHouseWriter
from sinks.kafka_out import KafkaOut, Message, dead_letter_message

log = logging.getLogger(__name__)

#: the rows a send command needs durable before it leaves (a send-only flush writes these):
#: its sends row (DESIGN: "its ClickHouse row"); its decision row goes with the next flush
#: (a replay writes it again, like every row), one INSERT (~10 ms) less per live send
SEND_TABLES = (SENDS,)
#: a send decided within this long of the wall clock is live: it leaves at once
LIVE_MS = 10_000


def part_name(shard: int) -> str:
    return f"effects-{shard}"


def route(record: Record, shards: int = 1) -> tuple[str, Record]:
    """``(partition key, record)``: sharded by customer (by id for records without one)."""
    if shards <= 1:
        return part_name(0), record
    key = getattr(record, "customer_id", "") or record_id(record)
    return part_name(zlib.crc32(key.encode()) % shards), record


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EffectsPartition(StatefulSinkPartition[Record, bytes | None]):
    """One partition: rows per table, send commands and dead letters, flushed in order."""

    def __init__(self, clickhouse: ClickHouseWriter | None, kafka: KafkaOut | None,
                 sends_topic: str = "sends", dead_letter_topic: str = "dead_letters",
                 max_rows: int = 20_000, max_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, name: str = part_name(0),
                 live_ms: int | None = LIVE_MS,
                 wall_ms: Callable[[], int] | None = None, trickle: bool = False,
                 keep_snapshots: bool = True) -> None:
        self.clickhouse = clickhouse
        self.kafka = kafka
        self.sends_topic = sends_topic
        self.dead_letter_topic = dead_letter_topic
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.clock = clock
        self.name = name
        self.live_ms = live_ms
        self.wall_ms = wall_ms or _now_ms
        self.trickle = trickle
        self.keep_snapshots = keep_snapshots  # recovery on: a snapshot is written
        self.round: list[str] = []  # due tables not yet written this round (trickle)
        self.trickled = 0  # due background tables written one per batch (trickle)
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.sends: dict[str, bytes] = {}  # send_id → message value
        self.dead: list[Message] = []
        self.pending = 0
        self.oldest = 0.0
        self.flushes = 0
        self.send_flushes = 0  # of which send-only (live sends)
        self.sends_produced = 0
        self.sends_skipped = 0
        self.failed = False  # a flush raised: the worker is going down
        self.decisions = metrics.Tally(metrics.DECISIONS)
        self.by_channel = metrics.Tally(metrics.SENDS)
        self.rejected = metrics.Tally(metrics.EVENTS_REJECTED)
        self.backlog = metrics.sink_backlog(name)
        self.flush_seconds = metrics.sink_flush_seconds(name)
        metrics.READY.set("sinks")
        metrics.READY.watch("sinks", id(self), self._healthy)

    def _healthy(self) -> bool:
        return not any(d is not None and d.is_down for d in (self.clickhouse, self.kafka))

    def write_batch(self, values: list[Record] | list[list[Record]]) -> None:
        """Records, or bundles of them (:meth:`EffectsSink.bundle`), in order."""
        shutdown.written(self)
        if values and type(values[0]) is list:
            values = [r for bundle in values for r in bundle]  # type: ignore[union-attr]
        live_after = (self.wall_ms() - self.live_ms if self.live_ms is not None
                      and self.kafka is not None else None)
        urgent = False
        for record in values:
            if not self.pending:
                self.oldest = self.clock()
            if self.clickhouse is not None:
                table, row = rows_for(record)
                self.rows.setdefault(table, []).append(row)
            if isinstance(record, Decision):
                self.decisions.add(record.status, record.reason)
            elif isinstance(record, Send):
                self.by_channel.add(record.channel)
                if self.kafka is not None:
                    # = send_message(record).value (orjson of asdict), without asdict's deep
                    # copy: orjson writes a dataclass's fields in the same order
                    self.sends[record.send_id] = orjson.dumps(record)
                    if live_after is not None and record.decided_at >= live_after:
                        urgent = True
            elif isinstance(record, Rejected):
                self.rejected.add(record.reason)
                if self.kafka is not None:
                    msg = dead_letter_message(record)
                    self.dead.append((msg.key, msg.value))
            elif isinstance(record, Duplicate):
                self.rejected.add("duplicate_event_id")
            self.pending += 1
            if self.pending >= self.max_rows:
                self.flush()
        due = self.pending and (self.round or self.clock() - self.oldest >= self.max_seconds)
        if urgent and self.sends and (self.trickle or not due):
            self.flush(sends_only=True)  # (live, trickle: the due tables go on next batches)
        elif due and not self._trickle_one():
            self.flush()
        else:
            self.backlog.set(self.pending)

    def _trickle_one(self) -> bool:
        """Live runs (``trickle``): a due partition writes its buffered tables ONE per
        batch, in a round (each table that had rows when it fell due, largest first), as
        long as no command or dead letter waits on the rows (then nothing orders the
        tables); after the round the buffer's age counts from then. Every INSERT stalls the
        worker ~10 ms however few its rows, so writing a due partition's ten tables at once
        held every live send behind them for ~100 ms. False: flush whole instead."""
        if not (self.trickle and self.clickhouse is not None) or self.sends or self.dead:
            return False
        if not self.round:
            self.round = sorted(self.rows, key=lambda t: len(self.rows[t]))
        while self.round:
            table = self.round.pop()  # the largest left
            if table in self.rows:
                with self.flush_seconds.time():
                    self.pending -= self.clickhouse.insert_all(self.rows, (table,))
                self.trickled += 1
                break
        if not self.rows:
            self.pending, self.round = 0, []
        if not self.round:
            self.oldest = self.clock()  # round done: what is left counts from now
        self.backlog.set(self.pending)
        return True

    def flush(self, sends_only: bool = False) -> None:
        """Rows, then send commands not yet in the outbox, then the outbox, then dead letters
        (``sends_only``: only the sends rows, then the commands; the outbox rows wait).

        Blocks through outages; a buffer part is dropped only once its step succeeded.
        """
        if not sends_only:
            self.round = []  # everything goes now
        try:
            with self.flush_seconds.time():
                self._flush(sends_only and self.clickhouse is not None)
        except BaseException:
            self.failed = True
            raise
        finally:
            self.backlog.set(self.pending)

    def _flush(self, sends_only: bool = False) -> None:
        if self.clickhouse is not None:
            self.clickhouse.insert_all(self.rows, SEND_TABLES if sends_only else None)
        if self.sends and self.kafka is not None:
            self._dispatch(self.kafka, defer_outbox=sends_only)
        if sends_only:
            self.pending = sum(map(len, self.rows.values()))  # one row per record left
            self.send_flushes += 1
        else:
            if self.dead and self.kafka is not None:
                self.kafka.deliver(self.dead_letter_topic, self.dead)
                self.dead.clear()
            self.pending = 0
        self.flushes += 1
        self.decisions.publish()
        self.by_channel.publish()
        self.rejected.publish()

    def _dispatch(self, kafka: KafkaOut, defer_outbox: bool = False) -> None:
        """Commands not yet in the outbox, then their outbox rows: at once, or (a live
        send's flush, ``defer_outbox``) buffered for the next full flush: an INSERT is ~10 ms
        of a live send's ~35 ms, and a crash before that flush re-sends only commands
        gateways dedupe (same send_id), as a crash between produce and INSERT always could."""
        ids = list(self.sends)
        done = self.clickhouse.dispatched(ids) if self.clickhouse is not None else set()
        todo = [(sid.encode(), self.sends[sid]) for sid in ids if sid not in done]
        kafka.deliver(self.sends_topic, todo)
        if self.clickhouse is not None and todo:
            now = _now_ms()
            rows = [dispatched_row(k.decode(), now) for k, _ in todo if k is not None]
            if defer_outbox:
                self.rows.setdefault(DISPATCHED, []).extend(rows)
            else:
                self.clickhouse.insert(DISPATCHED, rows)
        self.sends_produced += len(todo)
        self.sends_skipped += len(done)
        metrics.SENDS_PRODUCED.inc(len(todo))
        metrics.SENDS_SKIPPED.inc(len(done))
        self.sends.clear()

    def snapshot(self) -> bytes | None:
        """At every epoch close. Replays and backfills flush whole (nothing stays buffered
        past an epoch). A live run (``trickle``) does not while only rows wait (ten INSERTs
        at once stalled every live send for ~180 ms each epoch): its buffered rows are the
        partition's resume state instead (pickled when the run keeps snapshots), so a
        restart from this epoch writes them; rows are idempotent. The records of the
        epoch's events are durable in ClickHouse or in the snapshot, never in neither. A
        command or dead letter waiting makes it flush whole: those are never produced from
        a snapshot (a graceful stop flushes at close too, after its last snapshot)."""
        shutdown.flushed(self)
        if not self.trickle or self.sends or self.dead:
            self.flush()
            return None
        if not self.pending or not self.keep_snapshots:
            return None  # (no recovery: a crash re-reads every topic anyway)
        return pickle.dumps((self.rows, self.pending), pickle.HIGHEST_PROTOCOL)

    def resume(self, state: bytes | None) -> None:
        """Take back what a live run's snapshot had buffered (see :meth:`snapshot`)."""
        if state is None:
            return
        self.rows, self.pending = pickle.loads(state)
        self.oldest = self.clock() - self.max_seconds  # due at once
        self.backlog.set(self.pending)

    def close(self) -> None:
        """Flush and release. Bytewax also calls this while a failed worker unwinds, where an
        exception aborts the process: a partition whose flush already failed does not try
        again, and a failure here is logged before it is raised."""
        try:
            if not self.failed:
                self.flush()
        except BaseException as e:
            log.error("effects sink: %d record(s) not written at close: %s", self.pending,
                      redact(e))
            raise
        finally:
            metrics.READY.unwatch(id(self))
            if self.clickhouse is not None:
                self.clickhouse.close()
            if self.kafka is not None:
                self.kafka.close()


class EffectsSink(FixedPartitionedSink[Record, bytes | None]):
    """Engine records and dead letters → ClickHouse rows, sends topic, dead-letter topic.

    Either side may be off: ``clickhouse=None`` (no rows, no outbox: commands are produced
    straight away) or ``kafka_brokers=None`` (rows only, e.g. the embedded demo). Feed items
    made by ``self.route``; ``parts`` partitions are spread over the workers. ``live_ms``:
    sends decided within this long of the wall clock leave at once (None: always batched);
    ``trickle`` (live runs): a due partition writes its tables one per batch, and an epoch's
    close keeps the buffer as the partition's snapshot (``keep_snapshots``: recovery on).
    """

    def __init__(self, clickhouse: Callable[[], ClickHouseBackend] | None,
                 database: str = "cdp", kafka_brokers: Sequence[str] | None = None,
                 sends_topic: str = "sends", dead_letter_topic: str = "dead_letters",
                 kafka_config: dict[str, Any] | None = None, max_rows: int = 20_000,
                 max_seconds: float = 2.0, parts: int = 2,
                 policy: RetryPolicy = DEFAULT_RETRY, live_ms: int | None = LIVE_MS,
                 trickle: bool = False, keep_snapshots: bool = True) -> None:
        if parts < 1 or max_rows < 1:
            raise ValueError("parts and max_rows must be at least 1")
        self.clickhouse = clickhouse
        self.database = database
        self.kafka_brokers = list(kafka_brokers or [])
        self.sends_topic = sends_topic
        self.dead_letter_topic = dead_letter_topic
        self.kafka_config = dict(kafka_config or {})
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.parts = parts
        self.policy = policy
        self.live_ms = live_ms
        self.trickle = trickle
        self.keep_snapshots = keep_snapshots
        # Bytewax indexes part_fn's value into the sorted global list of partitions.
        self._index = {n: i for i, n in enumerate(sorted(map(part_name, range(parts))))}

    def route(self, record: Record) -> tuple[str, Record]:
        return route(record, self.parts)

    def bundle(self, records: list[Record]) -> list[tuple[str, list[Record]]]:
        """``records`` as one ``(partition key, [records…])`` item per partition, in their
        order: what :meth:`route` does one record at a time (a partition writes a bundle's
        records as if they had come one by one)."""
        if self.parts <= 1:
            return [(part_name(0), records)]
        bundles: dict[str, list[Record]] = {}
        for record in records:
            part, _ = route(record, self.parts)
            bundles.setdefault(part, []).append(record)
        return list(bundles.items())

    def list_parts(self) -> list[str]:
        return sorted(self._index)

    def part_fn(self, item_key: str) -> int:
        index = self._index.get(item_key)
        return zlib.adler32(item_key.encode()) if index is None else index

    def build_part(self, step_id: str, for_part: str,
                   resume_state: bytes | None) -> EffectsPartition:
        writer = (ClickHouseWriter(self.clickhouse(), self.database, self.policy)
                  if self.clickhouse is not None else None)
        kafka = (KafkaOut(self.kafka_brokers, self.kafka_config, self.policy)
                 if self.kafka_brokers else None)
        part = EffectsPartition(writer, kafka, self.sends_topic, self.dead_letter_topic,
                                self.max_rows, self.max_seconds, name=for_part,
                                live_ms=self.live_ms, trickle=self.trickle,
                                keep_snapshots=self.keep_snapshots)
        part.resume(resume_state)
        return part
