"""Helpers for tests that run the real Bytewax flow: sources, configs with short waits."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import DynamicSource, StatelessSourcePartition

from config.loader import DEFAULT_CONFIG_DIR
from flows.sources import RawEvent


class _IdleThenEnd(StatelessSourcePartition[RawEvent]):
    def __init__(self, items: list[RawEvent], idle_s: float, until: Callable[[], bool] | None):
        self._items, self._end, self._until = items, None, until
        self._idle = idle_s

    def next_batch(self) -> list[RawEvent]:
        if self._items:
            out, self._items = self._items, []
            self._end = time.monotonic() + self._idle
            return out
        if time.monotonic() >= self._end or (self._until is not None and self._until()):
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now().astimezone() + timedelta(milliseconds=50)


class IdleSource(DynamicSource[RawEvent]):
    """Emits the items once, then stays open (idle) for ``idle_s`` so timers can fire."""

    def __init__(self, items: list[RawEvent], idle_s: float,
                 until: Callable[[], bool] | None = None) -> None:
        self.items, self.idle_s, self.until = items, idle_s, until

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _IdleThenEnd:
        return _IdleThenEnd(self.items if worker_index == 0 else [], self.idle_s, self.until)


def kafka_key(raw: bytes) -> bytes | None:
    """The Kafka message key producers use: the payload's customer_id (None if unreadable)."""
    try:
        cid = orjson.loads(raw).get("customer_id")
    except Exception:
        return None
    return cid.encode() if isinstance(cid, str) else None


def short_wait_config(tmp_path: Path, inactivity: str = "1s", grace: str = "0s") -> Path:
    """A copy of the shipped config whose abandoned-cart wait takes seconds, not minutes."""
    root = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    t = root / "triggers" / "abandoned_cart.yaml"
    t.write_text(re.sub(r"inactivity: \w+", f"inactivity: {inactivity}", t.read_text()))
    p = root / "policy.yaml"
    p.write_text(p.read_text().replace("late_event_grace: 5m", f"late_event_grace: {grace}"))
    return root


class DelegatingBackend:
    """A ClickHouse backend that passes every call to ``inner``: tests override the calls
    they spy on or break."""

    def __init__(self, inner: Any, name: str = "ClickHouse") -> None:
        self.inner, self.name = inner, name

    def command(self, sql: str) -> None:
        self.inner.command(sql)

    def query(self, sql: str) -> Any:
        return self.inner.query(sql)

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.inner.query_rows(sql)

    def insert_json_rows(self, table: str, rows: list[dict]) -> None:
        self.inner.insert_json_rows(table, rows)

    def close(self) -> None:
        self.inner.close()
