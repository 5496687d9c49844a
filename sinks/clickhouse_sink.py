"""ClickHouse writes for the effects sink (:mod:`sinks.effects`) that wait outages out.

:class:`ClickHouseWriter` sends one ``JSONEachRow`` INSERT per table and retries an INSERT
that fails with an outage (:func:`sinks.clickhouse.is_outage`) with exponential backoff and
jitter, blocking the calling worker: Bytewax stops feeding it, so the input waits in Kafka,
not in memory. A programming error (unknown table, bad row) raises at once. A table's rows
leave the buffer only once written, so a failure in the middle of a multi-table flush
retries just the rest; a write that failed after the server stored it is written again,
which the ``ReplacingMergeTree`` tables and their ``FINAL`` views absorb (deterministic ids).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from cdp_triggers import metrics
from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy, shared_state_log, wait_out
from sinks.clickhouse import ClickHouseBackend, backend_name, is_outage
from sinks.clickhouse_schema import DISPATCHED

log = logging.getLogger(__name__)

# ids per outbox look-up: keeps each SELECT far below ClickHouse's max_query_size (256 KiB)
LOOKUP_CHUNK = 2000


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseWriter:
    """One backend, one database; every call blocks until ClickHouse took it."""

    def __init__(self, backend: ClickHouseBackend, database: str,
                 policy: RetryPolicy = DEFAULT_RETRY) -> None:
        self.backend = backend
        self.database = database
        self.policy = policy
        self.state = shared_state_log(log, backend_name(backend), policy.repeat_s)
        self.rows_written = 0
        self.inserts = 0
        self.retries = metrics.sink_retries("clickhouse")

    @property
    def is_down(self) -> bool:
        """ClickHouse is in an outage being waited out (by this process's writers)."""
        return self.state.is_down

    def _wait(self, fn: Any, detail: str) -> Any:
        return wait_out(metrics.counting_retries(fn, self.retries), self.state, is_outage,
                        self.policy, detail=lambda _: detail)

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """INSERT ``rows`` into raw table ``table`` of the database, retrying outages."""
        if not rows:
            return
        name = f"{self.database}.{table}"
        self._wait(lambda: self.backend.insert_json_rows(name, rows),
                   f"{len(rows)} rows written to {name}")
        self.rows_written += len(rows)
        self.inserts += 1

    def insert_all(self, buffer: dict[str, list[dict[str, Any]]],
                   tables: Iterable[str] | None = None) -> int:
        """Write and empty ``buffer`` (table → rows), one table at a time (only ``tables``
        when given: the rest stays buffered); returns rows."""
        n = 0
        todo = list(buffer) if tables is None else [t for t in tables if t in buffer]
        for table in todo:
            rows = buffer[table]
            self.insert(table, rows)
            del buffer[table]  # only once written: a failure keeps the rest
            n += len(rows)
        return n

    def dispatched(self, send_ids: list[str]) -> set[str]:
        """Which of ``send_ids`` the outbox already holds (produced by an earlier run)."""
        found: set[str] = set()
        for i in range(0, len(send_ids), LOOKUP_CHUNK):
            ids = ",".join(map(_quote, send_ids[i:i + LOOKUP_CHUNK]))
            sql = (f"SELECT DISTINCT send_id FROM {self.database}.{DISPATCHED} "
                   f"WHERE send_id IN ({ids})")
            rows = self._wait(lambda sql=sql: self.backend.query_rows(sql),
                              "outbox look-up answered")
            found.update(r[0] for r in rows)
        return found

    def close(self) -> None:
        self.backend.close()
