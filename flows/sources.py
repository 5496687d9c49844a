"""Inputs of the flow. Every source emits ``RawEvent`` (bytes + where it came from).

``where`` (topic:partition:offset, file:line, synthetic:n) travels with the event into
dead letters, so a rejected record can always be found again at its origin.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from cdp_triggers.events import Event, parse_event


class RawEvent(NamedTuple):
    data: bytes
    where: str


def from_kafka(msg: KafkaSourceMessage) -> RawEvent:
    return RawEvent(msg.value or b"", f"{msg.topic}:{msg.partition}:{msg.offset}")


def kafka_source(brokers: list[str], topics: list[str], tail: bool,
                 batch_size: int = 1000) -> KafkaSource:
    """Bytewax's Kafka source: partitions are assigned to workers, no consumer group; the
    offsets live in Bytewax recovery snapshots beside the keyed state."""
    return KafkaSource(brokers, topics, tail=tail, batch_size=batch_size)


class _LinesPartition(StatefulSourcePartition[RawEvent, int]):
    def __init__(self, path: Path, resume_line: int | None, batch: int) -> None:
        self._name = path.name
        self._f = path.open("rb")
        self._line = 0
        self._batch = batch
        for _ in range(resume_line or 0):
            if not self._f.readline():
                break
            self._line += 1

    def next_batch(self) -> list[RawEvent]:
        out = []
        for _ in range(self._batch):
            line = self._f.readline()
            if not line:
                if out:
                    return out
                raise StopIteration
            self._line += 1
            line = line.rstrip(b"\r\n")
            if line.strip():
                out.append(RawEvent(line, f"{self._name}:{self._line}"))
        return out

    def snapshot(self) -> int:
        return self._line

    def close(self) -> None:
        self._f.close()


class JsonlSource(FixedPartitionedSource[RawEvent, int]):
    """One partition per JSONL file; resumes at the line after the last snapshot."""

    def __init__(self, paths: list[str | Path], batch: int = 1000) -> None:
        self.paths = {Path(p).name: Path(p) for p in paths}
        self.batch = batch

    def list_parts(self) -> list[str]:
        return list(self.paths)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        return _LinesPartition(self.paths[for_part], resume_state, self.batch)


def latest_event_ts(paths: Iterable[str | Path]) -> tuple[int, int, int]:
    """(latest valid event time, valid events, rejected lines) of JSONL files."""
    latest = valid = bad = 0
    for path in paths:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                e = parse_event(line.rstrip(b"\r\n"), f"{Path(path).name}:{n}")
                if isinstance(e, Event):
                    valid += 1
                    latest = max(latest, e.ts)
                else:
                    bad += 1
    return latest, valid, bad


class _IterPartition(StatefulSourcePartition[RawEvent, int]):
    def __init__(self, make: Callable[[], Iterator[bytes]], resume: int | None, batch: int,
                 name: str, progress: Callable[[int], None] | None) -> None:
        self._it = make()
        self._n = 0
        self._batch = batch
        self._name = name
        self._progress = progress
        for _ in range(resume or 0):  # deterministic generator: skip what was emitted
            next(self._it, None)
            self._n += 1

    def next_batch(self) -> list[RawEvent]:
        out = []
        for data in self._it:
            self._n += 1
            out.append(RawEvent(data, f"{self._name}:{self._n}"))
            if len(out) >= self._batch:
                break
        if self._progress:
            self._progress(self._n)
        if not out:
            raise StopIteration
        return out

    def snapshot(self) -> int:
        return self._n


class IteratorSource(FixedPartitionedSource[RawEvent, int]):
    """A deterministic iterator of raw events (the synthetic generator) as one partition."""

    def __init__(self, make: Callable[[], Iterator[bytes]], name: str = "synthetic",
                 batch: int = 1000, progress: Callable[[int], None] | None = None) -> None:
        self.make, self.name, self.batch, self.progress = make, name, batch, progress

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IterPartition:
        return _IterPartition(self.make, resume_state, self.batch, self.name, self.progress)


class Progress:
    """Prints a progress line at most every ``every_s`` seconds."""

    def __init__(self, label: str = "read", every_s: float = 2.0, out=print) -> None:
        self.label, self.every_s, self.out = label, every_s, out
        self.t0 = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.out(f"  … {self.label} {n:,} events ({n / (now - self.t0):,.0f}/s)", flush=True)
