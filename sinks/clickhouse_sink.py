"""Bytewax sink that writes engine records to the ClickHouse ``raw_*`` tables in batches.

Items are ``(part_key, record)``; make them with :func:`route` (or ``sink.route``), which
sends a record to partition ``f"{table}-{shard}"``, the shard a stable hash of its id.
Each partition buffers rows and sends one ``JSONEachRow`` INSERT per table when it holds
``max_rows`` rows or its oldest row is ``max_seconds`` old (checked when a batch arrives),
and always in ``snapshot()`` and ``close()``.

Flush guarantee (observed with bytewax 0.21.1, ``run_main``/``cluster_main`` + TestingSource,
with AND without a recovery config): at every epoch close Bytewax calls ``snapshot()`` on
each partition that received items in that epoch, before it commits recovery state; at
the end of finite input ``close()`` follows. So nothing stays buffered past the epoch it
arrived in (latency ≤ epoch interval, default 10 s), and a crash loses only rows of an
uncommitted epoch, which recovery replays: at-least-once, made idempotent by the
deterministic ids (ReplacingMergeTree + ``FINAL`` views). The resume state is ``None``.

Backends are made by ``backend_factory`` in ``build_part``, in the worker that owns the
partition; the factory (not a connection) is what the sink holds. Create the schema
beforehand with :func:`sinks.clickhouse.ensure_schema`.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from sinks.clickhouse import ClickHouseBackend
from sinks.clickhouse_schema import RAW_TABLES, Record, record_id, rows_for, table_for

log = logging.getLogger(__name__)


def part_name(table: str, shard: int) -> str:
    return f"{table}-{shard}"


def route(record: Record, shards: int = 1) -> tuple[str, Record]:
    """``(partition key, record)``: the record's table, sharded by a stable hash of its id."""
    shard = zlib.crc32(record_id(record).encode()) % shards if shards > 1 else 0
    return part_name(table_for(record), shard), record


class ClickHousePartition(StatefulSinkPartition[Record, None]):
    """One partition: a row buffer per table and the backend it flushes to."""

    def __init__(self, backend: ClickHouseBackend, database: str, max_rows: int,
                 max_seconds: float, retries: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.database = database
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.retries = retries
        self.clock = clock
        self.buffer: dict[str, list[dict[str, Any]]] = {}
        self.pending = 0
        self.oldest = 0.0
        self.rows_written = 0
        self.inserts = 0

    def write_batch(self, values: list[Record]) -> None:
        for record in values:
            table, row = rows_for(record)
            if not self.pending:
                self.oldest = self.clock()
            self.buffer.setdefault(table, []).append(row)
            self.pending += 1
            if self.pending >= self.max_rows:
                self.flush()
        if self.pending and self.clock() - self.oldest >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        """Send everything buffered: one INSERT per table."""
        for table in list(self.buffer):
            rows = self.buffer[table]
            self._insert(f"{self.database}.{table}", rows)
            del self.buffer[table]  # only once written: a failure keeps it
            self.pending -= len(rows)
            self.rows_written += len(rows)
            self.inserts += 1

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        for attempt in range(self.retries + 1):
            try:
                self.backend.insert_json_rows(table, rows)
                return
            except Exception:
                if attempt == self.retries:
                    raise
                log.warning("insert of %d rows into %s failed, retrying", len(rows), table,
                            exc_info=True)
                time.sleep(0.5 * 2**attempt)

    def snapshot(self) -> None:
        self.flush()
        return None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.backend.close()


class ClickHouseSink(FixedPartitionedSink[Record, None]):
    """Batched, idempotent writes of engine records (and dead letters) to ClickHouse.

    ``parts`` is the number of shards per table; feed items made by ``self.route`` (or
    :func:`route` with the same ``parts``). Keys outside :meth:`list_parts` still land on
    some partition (any partition writes any table), just not a chosen one.
    """

    def __init__(self, backend_factory: Callable[[], ClickHouseBackend], database: str,
                 max_rows: int = 5000, max_seconds: float = 2.0, parts: int = 1,
                 retries: int = 2) -> None:
        if parts < 1 or max_rows < 1:
            raise ValueError("parts and max_rows must be at least 1")
        self.backend_factory = backend_factory
        self.database = database
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.parts = parts
        self.retries = retries
        names = [part_name(t, s) for t in RAW_TABLES for s in range(parts)]
        # Bytewax indexes part_fn's value into the sorted global list of partitions.
        self._index = {name: i for i, name in enumerate(sorted(names))}

    def route(self, record: Record) -> tuple[str, Record]:
        return route(record, self.parts)

    def list_parts(self) -> list[str]:
        return sorted(self._index)

    def part_fn(self, item_key: str) -> int:
        index = self._index.get(item_key)
        return zlib.adler32(item_key.encode()) if index is None else index

    def build_part(self, step_id: str, for_part: str,
                   resume_state: None) -> ClickHousePartition:
        return ClickHousePartition(self.backend_factory(), self.database, self.max_rows,
                                   self.max_seconds, self.retries)
