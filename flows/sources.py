"""Inputs of the flow, aligned in event time.

Every source here is made of *shards*; a shard is one Bytewax source partition that reads
several streams (Kafka partitions, JSONL files, the generator) and releases their events
through :class:`operators.align.Aligner`: parsed, in ``(ts, event_id)`` order behind a
watermark, with the catalogue fan-out (derived ``price_dropped``/``back_in_stock``) in place.
A customer's events all come from one shard, so they reach the customer's keyed state in
that order whatever the read order, processes or workers.

* Kafka: shard *i* reads partition *i* of every customer-keyed topic (producers key by
  customer_id with one partitioner, so a customer's events share the partition index) plus
  every partition of the catalogue topics (small, read by each shard). Topics with unequal
  partition counts fall back to one shard reading everything, with a warning.
* Files and the generator: one shard.

``where`` (topic:partition:offset, file:line, synthetic:n) travels with each event into dead
letters, so a rejected record can always be found again at its origin. The resume state of
a shard is its read positions plus the aligner (buffered events and product states).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from cdp_triggers import metrics, shutdown
from cdp_triggers.clock import WallClock, WatermarkClock
from cdp_triggers.events import Event, Rejected, parse_event
from cdp_triggers.logs import KafkaLog, RateLimited, StateLog
from cdp_triggers.shutdown import STOP
from operators.align import DONE, NEVER, Aligner

log = logging.getLogger(__name__)

CATALOGUE_TOPICS = ("product_updates",)
#: live: an empty poll comes back this much later (Bytewax ``next_awake``), never blocking
LIVE_POLL = timedelta(milliseconds=5)
SETTLE_POLL = timedelta(milliseconds=100)  # a stopping input, waiting for the epochs to close


class RawEvent(NamedTuple):
    data: bytes
    where: str


def from_kafka(msg: KafkaSourceMessage) -> RawEvent:
    return RawEvent(msg.value or b"", f"{msg.topic}:{msg.partition}:{msg.offset}")


class AlignOptions(NamedTuple):
    """How a shard aligns: lateness allowed inside a stream, the buffer bound, whether live
    (wall clock: caught-up streams do not hold the watermark, far-future events refused),
    whether snapshots must be independent copies (recovery on)."""

    lateness_ms: int = 2000
    max_buffer: int = 200_000
    live: bool = False
    copy_snapshots: bool = True
    clock: WatermarkClock | None = None  # live: where the shard publishes its watermark
    interest: bool = True  # track product interest for the fan-out (``Aligner.interest``)


# ---- shards over local readers (files, generator, lists) -----------------------------------


class _Reader:
    """One finite stream: ``read(n)`` returns up to n raw events, [] at its end."""

    name: str
    position: int

    def read(self, n: int) -> list[RawEvent]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FileReader(_Reader):
    def __init__(self, path: Path, resume_line: int) -> None:
        self.name = path.name
        self._f = path.open("rb")
        self.position = 0
        for _ in range(resume_line):
            if not self._f.readline():
                break
            self.position += 1

    def read(self, n: int) -> list[RawEvent]:
        out = []
        while len(out) < n:
            line = self._f.readline()
            if not line:
                break
            self.position += 1
            line = line.rstrip(b"\r\n")
            if line.strip():
                out.append(RawEvent(line, f"{self.name}:{self.position}"))
        return out

    def close(self) -> None:
        self._f.close()


class _IterReader(_Reader):
    def __init__(self, name: str, make: Callable[[], Iterator[bytes]], resume: int,
                 progress: Callable[[int], None] | None = None) -> None:
        self.name = name
        self._it = make()
        self.position = 0
        self._progress = progress
        for _ in range(resume):  # deterministic: skip what was read before
            next(self._it, None)
            self.position += 1

    def read(self, n: int) -> list[RawEvent]:
        out = []
        for data in self._it:
            self.position += 1
            out.append(RawEvent(data, f"{self.name}:{self.position}"))
            if len(out) >= n:
                break
        if self._progress:
            self._progress(self.position)
        return out


class _ReadersPartition(StatefulSourcePartition[Event | Rejected, Any]):
    """One shard over local readers: reads the stream holding the watermark back first, so
    the buffer stays small, and releases what the watermark passed."""

    def __init__(self, shard: str, readers: list[_Reader], aligner: Aligner,
                 opts: AlignOptions, batch: int) -> None:
        self.shard, self.readers, self.aligner = shard, {r.name: r for r in readers}, aligner
        self.opts, self.batch = opts, batch
        self.wall = WallClock()
        if opts.clock is not None:
            opts.clock.claim(shard)

    def next_batch(self) -> list[Event | Rejected]:
        al = self.aligner
        wall = self.wall.now_ms() if self.opts.live else None
        for name in al.behind()[:1] or []:
            raws = self.readers[name].read(self.batch)
            if not raws:
                al.end(name)
            for r in raws:
                al.offer(name, parse_event(r.data, r.where, wall))
        out = al.release(wall)
        released = _publish(self.opts, self.shard, al, wall)
        if not out and al.finished():
            return _last_word(self.opts, self.shard)
        return _with_mark(self.opts, out, self.shard, released)

    def snapshot(self) -> Any:
        state = ({n: r.position for n, r in self.readers.items()}, self.aligner)
        return pickle.dumps(state, pickle.HIGHEST_PROTOCOL) if self.opts.copy_snapshots \
            else state

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


def _resume(resume_state: Any) -> tuple[dict[str, int], Aligner | None]:
    if resume_state is None:
        return {}, None
    if isinstance(resume_state, bytes):
        resume_state = pickle.loads(resume_state)
    return resume_state


def _aligner(resumed: Aligner | None, streams: list[str], opts: AlignOptions) -> Aligner:
    if resumed is None:
        return Aligner(streams, opts.lateness_ms, interest=opts.interest)
    resumed.reopen(streams)
    resumed.lateness = opts.lateness_ms
    resumed.track_interest(opts.interest)
    return resumed


def _with_mark(opts: AlignOptions, out: list[Any], shard: str,
               released: int | None) -> list[Any]:
    """``out``, with the shard's :class:`Released` mark at its end when it is due (live:
    ``WatermarkClock.say``): it travels behind these events to every worker."""
    clock = opts.clock
    if clock is not None and clock.in_band and opts.live:
        said = clock.say(shard, released, bool(out))
        if said is not None:
            out.append(said)
    return out


def _last_word(opts: AlignOptions, shard: str) -> list[Any]:
    """A finished shard's last batch: its mark that it has ended, once (in band), so no
    worker's timers wait for it; then the end of its input."""
    said = _with_mark(opts, [], shard, None)
    if said:
        return said
    raise StopIteration


def _publish(opts: AlignOptions, shard: str, al: Aligner, wall: int | None) -> int | None:
    """Publish the shard's watermark to the clock (live); what it published (None: ended)."""
    if opts.clock is None:
        return None
    w = al.watermark(wall)
    released = None if w >= DONE else w - 1
    opts.clock.publish(shard, released)
    return released


class JsonlSource(FixedPartitionedSource[Event | Rejected, Any]):
    """JSONL files as one shard (each file a stream); resumes at the lines after the last
    snapshot with the aligner's buffer."""

    def __init__(self, paths: list[str | Path], opts: AlignOptions | None = None,
                 batch: int = 1000) -> None:
        self.paths = {Path(p).name: Path(p) for p in paths}
        self.opts = opts or AlignOptions()
        self.batch = batch

    def list_parts(self) -> list[str]:
        return ["files"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ReadersPartition:
        pos, aligner = _resume(resume_state)
        readers: list[_Reader] = [_FileReader(p, pos.get(n, 0)) for n, p in self.paths.items()]
        aligner = _aligner(aligner, list(self.paths), self.opts)
        return _ReadersPartition(for_part, readers, aligner, self.opts, self.batch)


class IteratorSource(FixedPartitionedSource[Event | Rejected, Any]):
    """A deterministic iterator of raw events (the synthetic generator) as one shard."""

    def __init__(self, make: Callable[[], Iterator[bytes]], name: str = "synthetic",
                 batch: int = 1000, progress: Callable[[int], None] | None = None,
                 opts: AlignOptions | None = None) -> None:
        self.make, self.name, self.batch, self.progress = make, name, batch, progress
        self.opts = opts or AlignOptions()

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ReadersPartition:
        pos, aligner = _resume(resume_state)
        reader = _IterReader(self.name, self.make, pos.get(self.name, 0), self.progress)
        aligner = _aligner(aligner, [self.name], self.opts)
        return _ReadersPartition(for_part, [reader], aligner, self.opts, self.batch)


def list_source(raws: Iterable[bytes | RawEvent], name: str = "events",
                opts: AlignOptions | None = None, batch: int = 1000) -> IteratorSource:
    """Tests: a list of raw events (or Events) as an aligned one-stream source."""
    items = [r.data if isinstance(r, RawEvent) else r.to_json() if isinstance(r, Event) else r
             for r in raws]
    return IteratorSource(lambda: iter(items), name, batch, opts=opts)


# ---- Kafka shards -----------------------------------------------------------------------


def kafka_shards(brokers: list[str], topics: list[str], timeout_s: float = 60.0,
                 catalogue: Iterable[str] = CATALOGUE_TOPICS) -> dict[str, list[tuple[str, int]]]:
    """shard name → the topic partitions it reads (see module doc). Waits up to
    ``timeout_s`` for the broker; a missing topic is a clear error."""
    from confluent_kafka.admin import AdminClient

    klog = KafkaLog(log, "admin")
    admin = AdminClient({"bootstrap.servers": ",".join(brokers), **klog.config()})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            break
        except Exception as e:
            klog.state.down(e)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"Kafka at {','.join(brokers)} did not answer within "
                                   f"{timeout_s:g} s: {e}") from None
    klog.ok()
    counts: dict[str, int] = {}
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None or not tm.partitions:
            raise RuntimeError(f"input topic {t!r} does not exist on {','.join(brokers)} "
                               f"(create it with the same partition count as the others)")
        counts[t] = len(tm.partitions)
    cat = [t for t in topics if t in set(catalogue)]
    keyed = [t for t in topics if t not in cat] or topics
    every_cat = [(t, p) for t in cat for p in range(counts[t])]
    sizes = {counts[t] for t in keyed}
    if len(sizes) == 1:
        n = sizes.pop()
        return {f"shard-{i:03d}": [(t, i) for t in keyed] + every_cat for i in range(n)}
    log.warning("input topics have unequal partition counts (%s): one shard reads them all; "
                "give customer-keyed topics the same count to spread reading over workers",
                ", ".join(f"{t}={counts[t]}" for t in keyed))
    return {"shard-all": [(t, p) for t in keyed for p in range(counts[t])] + every_cat}


class _KafkaShard(StatefulSourcePartition[Event | Rejected, Any]):
    """One shard: a consumer assigned its topic partitions (no group: offsets live in the
    Bytewax snapshot beside the aligner), end-of-partition events telling the aligner which
    streams are done (backfill) or caught up (live)."""

    def __init__(self, shard: str, brokers: list[str], tps: list[tuple[str, int]],
                 resume_state: Any, tail: bool, batch: int, opts: AlignOptions,
                 extra: dict[str, Any] | None = None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.shard, self.tail, self.batch, self.opts = shard, tail, batch, opts
        shutdown.watch(self)  # (a stop by settling waits for this shard's epochs to close)
        self.offsets, aligner = _resume(resume_state)
        names = [f"{t}:{p}" for t, p in tps]
        self.aligner = _aligner(aligner, names, opts)
        self.klog = KafkaLog(log, f"source {shard}")
        self.limited = RateLimited(log, 60.0)
        self.stall = StateLog(log, f"Kafka input {shard}", repeat_s=300.0)
        self.wall = WallClock()
        self.last_data = time.monotonic()
        self.paused: set[str] = set()
        self.idle = False  # the last poll returned nothing
        self.lost = False
        self._tp = {f"{t}:{p}": TopicPartition(t, p) for t, p in tps}
        self.consumer = Consumer({
            "bootstrap.servers": ",".join(brokers), "group.id": f"cdp-triggers-{shard}",
            "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # live: a fetch on a quiet partition returns within 20 ms, not librdkafka's
            # 500 ms default, so a lone transactional event is read at once
            **({"fetch.wait.max.ms": 20} if tail else {}),
            # connect to the brokers at once: connecting as needed held the first metadata
            # answer (see _learn_leaders) 50 ms behind a coordinator query, every shard
            "enable.sparse.connections": False,
            **self.klog.config(), **(extra or {})})
        self._check_offsets(tps)
        self._learn_leaders(tps)
        self.consumer.assign([TopicPartition(t, p, self.offsets.get(f"{t}:{p}",
                                                                     OFFSET_BEGINNING))
                              for t, p in tps])
        if opts.clock is not None:
            opts.clock.claim(shard)
        self.read_counters = {t: metrics.events_read(t) for t, _ in tps}
        self.wm = metrics.WatermarkGauges(shard)
        metrics.READY.set("sources")

    def _learn_leaders(self, tps: list[tuple[str, int]]) -> None:
        """Wait for the topics' metadata before assigning: librdkafka, given a partition
        whose leader it does not know yet, queries the start offset only after a 500 ms
        retry timer, and every shard started that way (measured: the first event 0.5 s
        after the consumer was made, 7 ms with the metadata first). The run checked the
        brokers a moment ago; one that does not answer now costs at most a second here,
        and reading then starts as it did before."""
        for topic in sorted({t for t, _ in tps}):
            try:
                self.consumer.list_topics(topic, timeout=1.0)
            except Exception as e:
                self.klog.state.down(e)
                return

    def _check_offsets(self, tps: list[tuple[str, int]]) -> None:
        """A resumed offset past a partition's end means the broker lost data (or the topic
        was re-created): say so and read that partition from its beginning (events already
        seen are deduplicated by event_id) instead of waiting for offsets that never come."""
        from confluent_kafka import TopicPartition

        for t, p in tps:
            name = f"{t}:{p}"
            want = self.offsets.get(name)
            if want is None:
                continue
            try:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(t, p), 10.0)
            except Exception as e:
                self.klog.state.down(e)
                continue
            if want > high:
                log.error("Kafka input %s: resuming at offset %d but the partition ends at %d: "
                          "the broker lost data (or the topic was re-created); reading it from "
                          "offset %d", name, want, high, low)
                self.offsets[name] = low
                self.lost = True

    def next_batch(self) -> list[Event | Rejected]:
        from confluent_kafka import KafkaError

        if STOP.is_set():  # graceful stop: the snapshot resumes this input here
            if shutdown.settling():  # (CDP_STOP_MODE=settle) open, reading and releasing
                self.idle = True  # nothing
                return []
            raise StopIteration  # (end_input) its end
        al = self.aligner
        live = self.opts.live
        # live: never block in consume: one worker runs every shard and every later step in
        # turn, so a 50 ms wait per quiet shard delayed everything else (next_awake instead).
        # Backfill: take what is queued at once, and wait (50 ms at most) only when nothing
        # is: a wait for a full batch held every shard's last, partial one for the whole
        # timeout. Once every stream of the shard has ended, nothing is asked of the broker.
        if not self.tail and al.ended():
            msgs = []
        else:
            msgs = self.consumer.consume(self.batch, 0)
            if not msgs and not self.tail:
                msgs = self.consumer.consume(self.batch, 0.05)
        self.idle = not msgs
        wall = self.wall.now_ms() if live else None
        read: dict[str, int] = {}  # messages per topic (end-of-partition events are not)
        answered = False  # the brokers answered: a message or an end of partition
        for m in msgs:
            err = m.error()
            topic = m.topic()
            stream = f"{topic}:{m.partition()}"
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    answered = True
                    if self.tail:
                        al.caught_up(stream)
                    else:
                        al.end(stream)
                else:
                    if answered:  # what came before the error, in order
                        self._data_seen()
                        answered = False
                    self.klog.error_cb(err)
                continue
            answered = True
            off = m.offset()
            expected = self.offsets.get(stream)
            if expected is not None and off < expected:
                self.limited.error(f"back:{stream}", "Kafka input %s went back from offset "
                                   "%d to %d: the broker lost data (or the topic was "
                                   "re-created); events are read again and deduplicated "
                                   "by event_id", stream, expected, off)
            self.offsets[stream] = off + 1
            read[topic] = read.get(topic, 0) + 1
            al.offer(stream, parse_event(m.value() or b"", f"{stream}:{off}", wall))
        if answered:  # once a batch, not per message
            self._data_seen()
        if self.tail and msgs:
            self._caught_up_by_high_watermark(msgs)
        for topic, n in read.items():
            self.read_counters[topic].inc(n)
        if not msgs and time.monotonic() - self.last_data > 30.0 and not all(
                al.marks[s].done or al.marks[s].caught_up for s in al.marks):
            self.stall.down("no data and no end-of-partition from the broker for 30 s")
        self._bound_memory(wall)
        out = al.release(wall)
        released = _publish(self.opts, self.shard, al, wall)
        if msgs and NEVER < (w := al.watermark(wall)) < DONE:
            self.wm.update(w, wall if wall is not None else self.wall.now_ms())
        if not out and not self.tail and al.finished():
            return _last_word(self.opts, self.shard)
        return _with_mark(self.opts, out, self.shard, released)

    def next_awake(self) -> datetime | None:
        """Live, after an empty poll: come back in :data:`LIVE_POLL` (no busy loop, no
        blocking); otherwise at once."""
        if shutdown.settling():  # stopping: nothing to read, the epochs close meanwhile
            return datetime.now(UTC) + SETTLE_POLL
        if self.tail and self.idle:
            return datetime.now(UTC) + LIVE_POLL
        return None

    def _caught_up_by_high_watermark(self, msgs: list[Any]) -> None:
        """A busy live partition rarely reports end-of-partition (each fetch brings data), so
        it would hold the watermark ``max_out_of_orderness_ms`` behind its newest event: a
        stream whose last read message is its partition's last (the high watermark of the
        latest fetch, cached by librdkafka: no broker call) is caught up now."""
        for stream in {f"{m.topic()}:{m.partition()}" for m in msgs if m.error() is None}:
            try:
                _low, high = self.consumer.get_watermark_offsets(self._tp[stream], cached=True)
            except Exception:  # no fetch answer cached yet: wait for the end-of-partition
                continue
            if high >= 0 and self.offsets.get(stream, -1) >= high:
                self.aligner.caught_up(stream)

    def _data_seen(self) -> None:
        self.last_data = time.monotonic()
        self.klog.ok()
        if self.stall.is_down:
            self.stall.up()

    def _bound_memory(self, wall: int | None) -> None:
        """Pause the streams ahead of the watermark while the buffer is over its bound."""
        al = self.aligner
        size = len(al.buffer)
        if size > self.opts.max_buffer:
            w = al.watermark(wall)
            ahead = [s for s, m in al.marks.items()
                     if s not in self.paused and not m.done and m.newest - al.lateness > w]
            if ahead:
                self.consumer.pause([self._tp[s] for s in ahead])
                self.paused.update(ahead)
        elif self.paused and size <= self.opts.max_buffer // 2:
            self.consumer.resume([self._tp[s] for s in self.paused])
            self.paused.clear()

    def snapshot(self) -> Any:
        shutdown.epoch_closed(self)
        state = (dict(self.offsets), self.aligner)
        return pickle.dumps(state, pickle.HIGHEST_PROTOCOL) if self.opts.copy_snapshots \
            else state

    def close(self) -> None:
        self.consumer.close()


class AlignedKafkaSource(FixedPartitionedSource[Event | Rejected, Any]):
    """Kafka topics read as event-time aligned shards (see module doc)."""

    def __init__(self, brokers: list[str], topics: list[str], tail: bool = True,
                 batch: int = 1000, opts: AlignOptions | None = None,
                 extra: dict[str, Any] | None = None,
                 catalogue: Iterable[str] = CATALOGUE_TOPICS) -> None:
        self.brokers, self.topics, self.tail, self.batch = brokers, topics, tail, batch
        self.catalogue = list(catalogue)
        self.opts = opts or AlignOptions(live=tail)
        self.extra = extra
        self._shards: dict[str, list[tuple[str, int]]] | None = None

    def shards(self) -> dict[str, list[tuple[str, int]]]:
        if self._shards is None:
            self._shards = kafka_shards(self.brokers, self.topics, catalogue=self.catalogue)
        return self._shards

    def list_parts(self) -> list[str]:
        return sorted(self.shards())

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaShard:
        return _KafkaShard(for_part, self.brokers, self.shards()[for_part], resume_state,
                           self.tail, self.batch, self.opts, self.extra)


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
