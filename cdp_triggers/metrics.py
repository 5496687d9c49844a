"""Prometheus metrics of a flow process, and ``/metrics``, ``/healthz``, ``/readyz`` on one port.

Every family lives in this module's :data:`REGISTRY` (plus the process, platform and GC
collectors). Hot paths never look labels up per event:

- per-partition children are bound once (``events_read("clickstream")`` returns the child;
  keep it and call ``.inc(n)`` per batch);
- per-record labels are counted in a :class:`Tally` (a plain dict increment) and published
  to Prometheus once per batch or flush (``tally.publish()``);
- the consumer lag comes from librdkafka's statistics (:func:`observe_kafka_stats`, every
  ``statistics.interval.ms``), not from per-message bookkeeping.

A Bytewax process runs its workers as threads, so one server per *process* covers all its
workers. Several processes on one host (``-i``/``-a``) take one port each:
:func:`process_port` = base + process id (one process per host keeps the base port).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import orjson
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import choose_encoder

REGISTRY = CollectorRegistry(auto_describe=True)
for _c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_c)

_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS_READ = Counter("cdp_events_read", "Events read from the input, per topic",
                      ["topic"], registry=REGISTRY)
EVENTS_REJECTED = Counter("cdp_events_rejected", "Events sent to dead letters, per reason "
                          "(duplicate_event_id included)", ["reason"], registry=REGISTRY)
DECISIONS = Counter("cdp_decisions", "Decision rows (considered messages), per status and "
                    "reason", ["status", "reason"], registry=REGISTRY)
SENDS = Counter("cdp_sends", "Send commands decided, per channel", ["channel"],
                registry=REGISTRY)
SENDS_PRODUCED = Counter("cdp_sends_produced", "Send commands produced to the sends topic "
                         "(not already in the outbox)", registry=REGISTRY)
SENDS_SKIPPED = Counter("cdp_sends_skipped", "Send commands found in the outbox and not "
                        "produced again (replays, recovery)", registry=REGISTRY)
SINK_BACKLOG = Gauge("cdp_sink_backlog_records", "Records buffered in a sink and not yet "
                     "written, per sink partition", ["sink"], registry=REGISTRY)
SINK_RETRIES = Counter("cdp_sink_retries", "Retries of a sink's writes during outages, per "
                       "dependency (clickhouse, kafka, redis)", ["target"], registry=REGISTRY)
SINK_FLUSH_SECONDS = Histogram("cdp_sink_flush_seconds", "Time of one sink flush (rows, then "
                               "commands, then outbox)", ["sink"], buckets=_FLUSH_BUCKETS,
                               registry=REGISTRY)
WATERMARK = Gauge("cdp_watermark_timestamp_seconds", "Event-time watermark of an input shard "
                  "(Unix seconds)", ["shard"], registry=REGISTRY)
WATERMARK_LAG = Gauge("cdp_watermark_lag_seconds", "Wall clock minus the shard's event-time "
                      "watermark", ["shard"], registry=REGISTRY)
TIMER_LATENESS = Histogram("cdp_timer_lateness_seconds", "How long after due + grace a timer "
                           "fired (live clock)", buckets=_LATENESS_BUCKETS, registry=REGISTRY)
TIMER_CLOCK_LAG = Gauge("cdp_timer_clock_lag_seconds", "Wall clock minus the time a worker's "
                        "timers fire by: the lowest in-band mark of every shard that reached "
                        "it (live; NaN until every shard has said something)", ["worker"],
                        registry=REGISTRY)
CONSUMER_LAG = Gauge("cdp_consumer_lag_messages", "Messages between the consumer's position "
                     "and the partition's high watermark", ["topic", "partition"],
                     registry=REGISTRY)


def events_read(topic: str) -> Any:
    """The ``cdp_events_read_total{topic}`` child: bind once per partition, ``.inc(n)``."""
    return EVENTS_READ.labels(topic)


def sink_backlog(sink: str) -> Any:
    """The ``cdp_sink_backlog_records{sink}`` child: ``.set(pending)`` after each batch."""
    return SINK_BACKLOG.labels(sink)


def sink_retries(target: str) -> Any:
    """The ``cdp_sink_retries_total{target}`` child (``clickhouse``, ``kafka``, ``redis``)."""
    return SINK_RETRIES.labels(target)


def sink_flush_seconds(sink: str) -> Any:
    """The ``cdp_sink_flush_seconds{sink}`` child: ``with child.time(): flush()``."""
    return SINK_FLUSH_SECONDS.labels(sink)


T = TypeVar("T")


def counting_retries(fn: Callable[[], T], retries: Any) -> Callable[[], T]:
    """``fn`` for :func:`cdp_triggers.logs.wait_out` that counts each call after the first
    (a retry) on ``retries``, a ``sink_retries(target)`` child. Costs one closure per wait,
    nothing per record."""
    first = True

    def attempt() -> T:
        nonlocal first
        if first:
            first = False
        else:
            retries.inc()
        return fn()

    return attempt


class Tally:
    """Per-record label counts kept in a plain dict, published to one family per batch.

    ``t = Tally(DECISIONS)``; per record ``t.add(status, reason)``; per batch or flush
    ``t.publish()``. Not thread-safe: one per partition (Bytewax calls a partition from one
    worker thread).
    """

    __slots__ = ("counts", "family")

    def __init__(self, family: Counter) -> None:
        self.family = family
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, *labels: str, n: int = 1) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + n

    def publish(self) -> None:
        """Add the held counts to the family and start again."""
        if not self.counts:
            return
        counts, self.counts = self.counts, {}
        for labels, n in counts.items():
            self.family.labels(*labels).inc(n)


def count_rejected(reasons: Iterable[str]) -> None:
    """Dead letters of one batch, by reason (e.g. ``r.reason for r in rejected``)."""
    t = Tally(EVENTS_REJECTED)
    for reason in reasons:
        t.add(reason)
    t.publish()


class WatermarkGauges:
    """The watermark gauges of one input shard, bound once."""

    __slots__ = ("lag", "mark")

    def __init__(self, shard: str) -> None:
        self.mark = WATERMARK.labels(shard)
        self.lag = WATERMARK_LAG.labels(shard)

    def update(self, watermark_ms: int | None, wall_ms: int) -> None:
        """Set both from the shard's watermark (None: nothing read yet, left unset)."""
        if watermark_ms is None:
            return
        self.mark.set(watermark_ms / 1000)
        self.lag.set(max(0, wall_ms - watermark_ms) / 1000)


def observe_timer_lateness_ms(late_ms: int) -> None:
    """A timer fired ``late_ms`` after its due time + grace (negative counts as 0)."""
    TIMER_LATENESS.observe(max(0, late_ms) / 1000)


def timer_clock_lag(worker: int) -> Any:
    """The ``cdp_timer_clock_lag_seconds`` child of one worker (bound once, set per batch of
    marks): a lag that grows while events are read means a shard, or the process that
    reads it, says nothing, and that worker's timers wait for it."""
    return TIMER_CLOCK_LAG.labels(str(worker))


def observe_kafka_stats(stats: str | bytes) -> None:
    """Consumer lag from a librdkafka statistics report (a ``stats_cb`` argument).

    Per assigned partition: high watermark minus the next offset handed to the application
    (``app_offset``); before any message, librdkafka's own ``consumer_lag``. The consumer
    needs ``statistics.interval.ms`` > 0 (``KafkaLog.config()`` sets 5000).
    """
    try:
        topics = orjson.loads(stats).get("topics", {})
    except orjson.JSONDecodeError:
        return
    for topic, t in topics.items():
        for pid, p in t.get("partitions", {}).items():
            if pid == "-1" or p.get("fetch_state") in (None, "none", "stopped"):
                continue
            hi, app = p.get("hi_offset", -1), p.get("app_offset", -1)
            lag = hi - app if hi >= 0 and app >= 0 else p.get("consumer_lag", -1)
            if lag >= 0:
                CONSUMER_LAG.labels(topic, pid).set(lag)


def process_port(base: int, process_id: int | None = None,
                 addresses: list[str] | None = None) -> int:
    """The metrics port of Bytewax process ``process_id`` (``-i``) of the cluster
    ``addresses`` (``-a``): ``base``, or ``base + process_id`` when other processes of the
    cluster run on the same host (``-a "localhost:2101;localhost:2102"``). One process per
    host (a Kubernetes pod each) keeps ``base``, so one scrape annotation fits all pods."""
    if not process_id or not addresses or process_id >= len(addresses):
        return base
    host = addresses[process_id].rsplit(":", 1)[0]
    shared = sum(1 for a in addresses if a.rsplit(":", 1)[0] == host) > 1
    return base + process_id if shared else base


class Readiness:
    """Named conditions a process needs before it serves (e.g. ``sources``, ``sinks``).

    ``ready = Readiness("sources", "sinks")``; the flow calls ``ready.set("sources")`` when
    its partitions are assigned and ``ready.set("sinks")`` when its sink partitions are
    built; a sink partition also :meth:`watch`-es its dependencies (``check()`` false while
    one is in an outage), so ``sinks`` is missing during an outage, and :meth:`unwatch`-es
    them when it closes. Pass ``ready`` to :func:`start_server`.
    """

    def __init__(self, *required: str) -> None:
        self._lock = threading.Lock()
        self._state = dict.fromkeys(required, False)
        self._checks: dict[Hashable, tuple[str, Callable[[], bool]]] = {}

    def set(self, name: str, ok: bool = True) -> None:
        with self._lock:
            self._state[name] = ok

    def watch(self, name: str, key: Hashable, check: Callable[[], bool]) -> None:
        """``name`` is missing while ``check()`` is false (asked at each ``/readyz``, so
        nothing is done on a hot path); ``key`` identifies the watcher for :meth:`unwatch`.
        A bound method is held weakly: a sink dropped without closing (its flow aborted)
        stops counting instead of keeping the process out of rotation."""
        if hasattr(check, "__self__"):
            ref = weakref.WeakMethod(check)  # type: ignore[arg-type]

            def check() -> bool:
                live = ref()
                return True if live is None else live()

        with self._lock:
            self._checks[key] = (name, check)

    def unwatch(self, key: Hashable) -> None:
        with self._lock:
            self._checks.pop(key, None)

    def missing(self) -> list[str]:
        with self._lock:
            bad = {k for k, ok in self._state.items() if not ok}
            checks = list(self._checks.values())
        for name, check in checks:
            if name in bad:
                continue
            try:
                ok = bool(check())
            except Exception:  # a failing check means not ready
                ok = False
            if not ok:
                bad.add(name)
        return sorted(bad)

    def __call__(self) -> bool:
        return not self.missing()


#: the flow process's readiness (see :class:`Readiness`)
READY = Readiness("sources", "sinks")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            try:
                ok = bool(self.server.ready())
            except Exception as e:  # a failing check means not ready, never a crash
                ok, detail = False, f"ready check failed: {type(e).__name__}"
            else:
                missing = getattr(self.server.ready, "missing", None)
                detail = f"waiting for: {', '.join(missing())}" if not ok and missing else ""
            self._send(200, b"ready\n") if ok else self._send(
                503, f"not ready{': ' + detail if detail else ''}\n".encode())
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ready: Callable[[], bool]
    registry: CollectorRegistry


class MetricsServer:
    """A running server: ``.port`` (the bound one, useful with port 0), ``.close()``."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server, self.thread = server, thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_server(port: int, ready: Callable[[], bool] = READY, host: str = "0.0.0.0",
                 registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve ``/metrics`` (Prometheus text), ``/healthz`` (200 while the process runs) and
    ``/readyz`` (200 when ``ready()``, else 503 naming what is missing) on ``host:port``
    from a daemon thread. ``port=0`` picks a free port (see ``.port``)."""
    server = _Server((host, port), _Handler)
    server.ready, server.registry = ready, registry
    thread = threading.Thread(target=server.serve_forever, name=f"metrics:{server.server_port}",
                              daemon=True)
    thread.start()
    return MetricsServer(server, thread)
