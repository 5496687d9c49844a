"""Profile-store writes decided by the engine: unsubscribes and hard bounces reach Redis.

The engine already applies them to its own keyed state at once (so the very next send is
blocked); this sink makes them durable in the store every other system reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from cdp_triggers.records import ProfileUpdate


class ProfileWriter(Protocol):
    def apply_updates(self, updates: Iterable[tuple[str, str, str]]) -> int: ...


class _Partition(StatelessSinkPartition[ProfileUpdate]):
    def __init__(self, writer: ProfileWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[ProfileUpdate]) -> None:
        self.writer.apply_updates((u.customer_id, u.field, u.value) for u in items)


class ProfileUpdateSink(DynamicSink[ProfileUpdate]):
    """Idempotent (last write wins on the same field), so at-least-once replays are safe."""

    def __init__(self, writer_factory: Callable[[], ProfileWriter]) -> None:
        self.writer_factory = writer_factory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.writer_factory())
