"""Profile-store writes decided by the engine: unsubscribes and hard bounces reach Redis.

The engine already applies them to its own keyed state at once (so the very next send is
blocked); this sink makes them durable in the store every other system reads. A store that
is down never crashes the flow: a batch is retried with backoff until written, blocking the
worker (back-pressure: nothing piles up in memory), with one log line when the store goes
away and one when it is back. Errors that retrying cannot fix (the writer's ``is_outage``
says so, e.g. a wrong password) raise at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from cdp_triggers import metrics
from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy, is_outage, shared_state_log, wait_out
from cdp_triggers.records import ProfileUpdate

log = logging.getLogger(__name__)


class ProfileWriter(Protocol):
    def apply_updates(self, updates: Iterable[tuple[str, str, str]]) -> int: ...


class _Partition(StatelessSinkPartition[ProfileUpdate]):
    """Retries count on ``cdp_sink_retries_total{target="redis"}``; while the store is in an
    outage the process is not ready (``sinks``, see :data:`cdp_triggers.metrics.READY`)."""

    def __init__(self, writer: ProfileWriter, policy: RetryPolicy) -> None:
        self.writer = writer
        self.policy = policy
        self.is_outage: Callable[[BaseException], bool] = getattr(writer, "is_outage",
                                                                  is_outage)
        name = getattr(writer, "name", type(writer).__name__)
        self.state = shared_state_log(log, f"profile store {name}", policy.repeat_s)
        self.retries = metrics.sink_retries("redis")
        self.written = 0
        metrics.READY.watch("sinks", id(self), lambda state=self.state: not state.is_down)

    def write_batch(self, items: list[ProfileUpdate]) -> None:
        updates = [(u.customer_id, u.field, u.value) for u in items]  # a list: retried
        self.written += wait_out(
            metrics.counting_retries(lambda: self.writer.apply_updates(updates), self.retries),
            self.state, self.is_outage, self.policy,
            detail=lambda n: f"{n} profile update(s) written")

    def close(self) -> None:
        metrics.READY.unwatch(id(self))


class ProfileUpdateSink(DynamicSink[ProfileUpdate]):
    """Idempotent (last write wins on the same field), so at-least-once replays are safe."""

    def __init__(self, writer_factory: Callable[[], ProfileWriter],
                 policy: RetryPolicy = DEFAULT_RETRY) -> None:
        self.writer_factory = writer_factory
        self.policy = policy

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.writer_factory(), self.policy)
