"""Quiet, secret-free logging for outages: one line per state change, not one per failure.

- :func:`mask_url` / :func:`redact` hide passwords and tokens in URLs (and any text
  holding URLs), so a connection error can be logged as it is.
- :class:`StateLog` turns a stream of failures of one dependency into "X unavailable"
  once, "still unavailable" at most every ``repeat_s``, and "X back after N s" once.
- :class:`RateLimited` keeps a repetitive warning to one line per key per interval, with
  a count of the lines it held back.
- :func:`wait_out` calls a function until it succeeds, retrying outages (and only them)
  with exponential backoff and jitter, and reporting them through a :class:`StateLog`.
- :func:`kafka_error_logger` gives confluent-kafka clients an ``error_cb`` / ``logger`` /
  ``stats_cb`` that fold librdkafka's "connection refused" flood (~17 lines/s per client)
  into broker down / back lines, and say clearly what needs a human (a topic or partition
  that does not exist, an offset out of range: a broker that lost its data).
- :func:`setup_logging` configures the process: text lines, or JSON lines (``ts``,
  ``level``, ``logger``, ``message``, ``exception``) for log collectors, both redacted.
- :func:`effective_settings` / :func:`log_effective_settings`: the start-up line with the
  settings a process runs with, secrets masked.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, TypeVar

import orjson
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

T = TypeVar("T")

MASK = "***"

# scheme://user:password@  (user may be empty: redis://:secret@host)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s?#]*:)[^\s/?#]+@")
# scheme://token@ for schemes that read a lone userinfo as a password
_LONE = re.compile(r"(?P<head>\b(?:rediss?|unix)://)(?![^:@/\s?#]*:)[^@/\s?#]+@")
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:[a-z0-9_.-]*?)(?:password|passwd|pwd|token|key|secret)=)[^&#;\s]+",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with its password, token or secret query parameters replaced by ``***``.

    ``redis://:s3cret@h:6379/0`` → ``redis://:***@h:6379/0``;
    ``http://user:pw@h:8123/?password=x`` → ``http://user:***@h:8123/?password=***``.
    """
    url = _USERINFO.sub(rf"\g<head>{MASK}@", url)
    url = _LONE.sub(rf"\g<head>{MASK}@", url)
    return _SECRET_PARAM.sub(rf"\g<head>{MASK}", url)


def redact(text: object) -> str:
    """``str(text)`` with every URL's credentials masked (error messages quote URLs)."""
    return mask_url(str(text))


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class StateLog:
    """Logs the up/down state of one dependency: one line per change, never per failure.

    ``down(reason)`` logs "NAME unavailable: reason" on the first failure, then at most one
    "still unavailable" line every ``repeat_s``; ``up()`` logs "NAME back after N s (M
    retries)" once. Thread-safe; every message goes through :func:`redact`.
    """

    def __init__(self, logger: logging.Logger, name: str, repeat_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.name = redact(name)
        self.repeat_s = repeat_s
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_line = 0.0
        self._failures = 0
        self.outages = 0

    @property
    def is_down(self) -> bool:
        return self._since is not None

    @property
    def failures(self) -> int:
        """Failures seen in the current outage (0 while up)."""
        return self._failures

    def down(self, reason: object) -> bool:
        """Record a failure; True when this call logged a line."""
        now = self.clock()
        with self._lock:
            self._failures += 1
            if self._since is None:
                self._since = self._last_line = now
                self.outages += 1
                self.logger.warning("%s unavailable: %s", self.name, redact(reason))
                return True
            if now - self._last_line < self.repeat_s:
                return False
            self._last_line = now
            self.logger.warning("%s still unavailable after %s (%d failures): %s", self.name,
                                _fmt(now - self._since), self._failures, redact(reason))
            return True

    def up(self, detail: str = "") -> float | None:
        """Record a success; logs and returns the outage's length if it was down."""
        now = self.clock()
        with self._lock:
            if self._since is None:
                return None
            took, failures = now - self._since, self._failures
            self._since, self._failures = None, 0
            extra = f"; {redact(detail)}" if detail else ""
            self.logger.warning("%s back after %s (%d retries)%s", self.name, _fmt(took),
                                failures, extra)
            return took


_SHARED: dict[tuple[str, str], Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_state_log(logger: logging.Logger, name: str, repeat_s: float = 300.0) -> StateLog:
    """The process's one :class:`StateLog` for ``name``: the sink partitions of a process
    (one per worker thread) report one outage once, not once each."""
    with _SHARED_LOCK:
        return _SHARED.setdefault(("state", name), StateLog(logger, name, repeat_s))


def is_outage(exc: BaseException) -> bool:
    """Default outage test: anything but a Python programming error may pass with time."""
    return not isinstance(exc, TypeError | ValueError | LookupError | AttributeError
                          | NameError | AssertionError | NotImplementedError)


@dataclass(frozen=True)
class RetryPolicy:
    """How outages are waited out: exponential backoff from ``initial_s`` doubling up to
    ``cap_s`` (plus up to ``initial_s`` of jitter), ``max_attempts`` None = until it works;
    a "still unavailable" line every ``repeat_s``."""

    initial_s: float = 0.2
    cap_s: float = 30.0
    max_attempts: int | None = None
    repeat_s: float = 300.0


DEFAULT_RETRY = RetryPolicy()


def wait_out(fn: Callable[[], T], state: StateLog,
             is_outage: Callable[[BaseException], bool] = is_outage,
             policy: RetryPolicy = DEFAULT_RETRY,
             detail: Callable[[T], str] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried while it raises an outage (``is_outage``), blocking the caller.

    The first failure logs "unavailable" through ``state`` and success after failures logs
    "back" (with ``detail(result)``); any other exception, or the last failure once
    ``policy.max_attempts`` is reached, is raised at once.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_outage),
        wait=wait_exponential_jitter(multiplier=policy.initial_s, max=policy.cap_s,
                                     jitter=policy.initial_s),
        stop=stop_after_attempt(policy.max_attempts) if policy.max_attempts else stop_never,
        before_sleep=lambda rs: state.down(rs.outcome.exception() if rs.outcome else "?"),
        sleep=sleep,
        reraise=True,
    )
    try:
        result = retrying(fn)
    except BaseException as e:
        if is_outage(e):
            state.down(f"giving up: {e}")
        raise
    if state.is_down:
        state.up(detail(result) if detail else "")
    return result


class RateLimited:
    """At most one line per key every ``every_s``; the next line says how many were held.

    ``rl.log(logging.WARNING, "key", "fmt %s", arg)`` (or ``.warning``/``.error``).
    """

    def __init__(self, logger: logging.Logger, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log unless ``key`` logged within ``every_s``; True when it logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        text = redact(msg % args if args else msg)
        if held:
            text += f" ({held} similar line(s) suppressed in the last {_fmt(now - last)})"
        self.logger.log(level, "%s", text)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args)


# librdkafka error codes (confluent_kafka.KafkaError), kept as ints so this module imports
# without confluent-kafka.
_ALL_BROKERS_DOWN, _TRANSPORT, _RESOLVE = -187, -195, -193
_UNKNOWN_TOPIC, _UNKNOWN_PARTITION, UNKNOWN_TOPIC_OR_PART = -188, -190, 3
OFFSET_OUT_OF_RANGE, _AUTO_OFFSET_RESET = 1, -140
_CONNECT_FAILURES = ("Connect to ", "Connection refused", "brokers are down",
                     "Failed to resolve", "Connection setup timed out")


class KafkaLog:
    """``error_cb``, ``logger`` and ``stats_cb`` for one confluent-kafka client.

    Broker connection failures only move a :class:`StateLog` ("Kafka <name> unavailable" /
    "back after"); the client is "back" when a stats report shows a broker ``UP`` or the
    owner calls :meth:`ok` (e.g. on a successful delivery). Missing topics/partitions and
    offsets out of range are errors, rate-limited per topic; anything else is passed on,
    rate-limited per message kind.
    """

    def __init__(self, logger: logging.Logger, name: str = "Kafka", repeat_s: float = 300.0,
                 every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.state = StateLog(logger, name, repeat_s, clock)
        self.limited = RateLimited(logger, every_s, clock)

    def config(self, stats_interval_ms: int = 5000) -> dict[str, Any]:
        """The client config entries that route librdkafka's errors and logs here."""
        return {"error_cb": self.error_cb, "logger": self, "stats_cb": self.stats_cb,
                "statistics.interval.ms": stats_interval_ms}

    def ok(self) -> None:
        """The owner saw the brokers work (a delivery, a fetched message)."""
        if self.state.is_down:
            self.state.up()

    def error_cb(self, err: Any) -> None:
        """confluent-kafka ``error_cb``: a ``KafkaError``."""
        code, text = err.code(), redact(err.str())
        if code == _ALL_BROKERS_DOWN:
            self.state.down(f"all brokers down ({text})")
        elif code in (_TRANSPORT, _RESOLVE):
            self.state.down(text)
        elif code in (_UNKNOWN_TOPIC, _UNKNOWN_PARTITION, UNKNOWN_TOPIC_OR_PART):
            self.limited.error(f"unknown:{text}", "%s: unknown topic or partition "
                               "(create it, or check the name): %s", self.state.name, text)
        elif code in (OFFSET_OUT_OF_RANGE, _AUTO_OFFSET_RESET):
            self.limited.error(f"offset:{text}", "%s: offset out of range, the broker "
                               "no longer has the data asked for (lost or deleted: check its "
                               "storage and retention): %s", self.state.name, text)
        elif err.fatal():
            self.logger.error("%s: fatal error: %s", self.state.name, text)
        else:
            self.limited.warning(f"err:{code}", "%s: %s", self.state.name, text)

    def log(self, level: int, msg: str, *args: Any) -> None:
        """confluent-kafka ``logger``: librdkafka's ``log(level, "%s [%s] %s", fac, ...)``."""
        text = msg % args if args else msg
        if any(s in text for s in _CONNECT_FAILURES):
            self.state.down(text.split("]: ", 1)[-1])
            return
        fac = str(args[0]) if args else ""
        if "OFFSET" in fac or "out of range" in text:
            self.limited.error(f"log:offset:{text}", "%s: %s", self.state.name, text)
        else:
            self.limited.log(level, f"log:{fac}:{level}", "%s: %s", self.state.name, text)

    def stats_cb(self, stats: str) -> None:
        """confluent-kafka ``stats_cb``: a broker in state UP means the brokers are back."""
        if not self.state.is_down:
            return
        brokers = orjson.loads(stats).get("brokers", {})
        if any(b.get("state") == "UP" for b in brokers.values()):
            self.state.up()


def kafka_error_logger(logger: logging.Logger, name: str = "Kafka", repeat_s: float = 300.0,
                       shared: bool = False) -> KafkaLog:
    """A :class:`KafkaLog`; put ``klog.config()`` into the client's config
    (``{"error_cb": ..., "logger": ..., "stats_cb": ..., "statistics.interval.ms": ...}``).

    ``shared``: the process's one KafkaLog of that name, so that the clients of several
    worker threads report one broker outage once.
    """
    if not shared:
        return KafkaLog(logger, name, repeat_s)
    with _SHARED_LOCK:
        return _SHARED.setdefault(("kafka", name), KafkaLog(logger, name, repeat_s))


# ---- process logging: text or JSON lines, redacted -------------------------------------

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: a settings (or options) key whose value is a secret whatever it looks like
SECRET_KEY = re.compile(r"(password|passwd|pwd|secret|token|api_?key|private_?key|credential"
                        r"|auth)", re.IGNORECASE)
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """Fields given with ``extra={...}``, masked like settings."""
    return {k: mask_value(k, v) for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``,
    ``exception`` (traceback text) when there is one, and any ``extra`` fields. Message and
    exception text go through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        for k, v in _extra(record).items():
            out.setdefault(k, v)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message`` (the CLI's format), redacted; ``extra`` fields appended
    as JSON."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        extra = _extra(record)
        return f"{text} {orjson.dumps(extra, default=str).decode()}" if extra else text


def setup_logging(level: int | str = logging.WARNING, json: bool = False,
                  stream: Any = None) -> logging.Handler:
    """The root logger writes to ``stream`` (stderr) at ``level``: JSON lines with ``json``
    (``CDP_LOG_JSON=true``), else ``LEVEL logger: message``. Replaces earlier handlers;
    returns the new one."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler


def mask_value(key: str, value: Any) -> Any:
    """``value`` safe to log under ``key``: a secret key's non-empty value becomes ``***``,
    strings have URL credentials masked, mappings and lists are walked."""
    if isinstance(value, Mapping):
        return {str(k): mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(key, v) for v in value]
    if SECRET_KEY.search(key) and value not in (None, "", b""):
        return MASK
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return mask_url(value)
    return value


def effective_settings(settings: Any) -> dict[str, Any]:
    """A settings object (pydantic model or mapping) as a dict safe to log: passwords in
    URLs, and every value under a key naming a secret (``api_key``, ``auth_token``,
    ``webhook_secret``, ... in ``provider_options`` too), masked."""
    data = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
    return {k: mask_value(k, v) for k, v in data.items()}


def log_effective_settings(logger: logging.Logger, settings: Any, what: str = "start",
                           **fields: Any) -> dict[str, Any]:
    """The start-up line: ``"<what>: effective settings"`` with the masked settings as the
    ``settings`` field (a JSON object in JSON logs, appended JSON in text logs) and any
    other ``fields`` (e.g. ``process_id=0, workers=2``). Logged at WARNING so it shows at
    the default level; returns the masked dict."""
    masked = effective_settings(settings)
    logger.warning("%s: effective settings", what, extra={"settings": masked, **fields})
    return masked
