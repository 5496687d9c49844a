"""ClickHouse backends: embedded chdb or a server through clickhouse-connect, same SQL.

Both speak the same tiny protocol. Inserts are ``JSONEachRow`` text built with orjson;
queries are read back as ``JSONCompact`` and decoded the same way on both backends
(64-bit integers and decimals unquoted), so a query returns the same Python values on
either: numbers as int/float, strings, dates and times as ClickHouse text.

chdb (4.x) hosts ONE embedded engine per process, bound to one data directory. Any number
of connections (``chdb.session.Session``) to that directory may coexist and the engine
stops when the last one closes; opening another directory while one is open fails. So
each :class:`ChdbBackend` opens its own connection (a connection runs one streaming insert
at a time, so threads must not share one), and a process-wide guard counts them and
raises a clear error when a second directory is asked for. Separate data sets in one
process = separate databases in the same directory.

Outages: :func:`is_outage` tells an outage (connection refused, timeout, a server that is
overloaded or read-only…: retry) from a programming or configuration error (unknown table,
syntax, bad data, authentication: raise at once). :func:`ensure_schema` waits outages out;
a :class:`ServerBackend` connects lazily with explicit connect / send-receive timeouts, so
opening one never blocks and a server that accepts and never answers fails in bounded time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlparse

import orjson

from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy, mask_url, shared_state_log, wait_out
from cdp_triggers.logs import is_outage as default_is_outage
from sinks.clickhouse_schema import (
    DISPATCHED,
    SCHEMA_MIGRATIONS,
    applied_versions_sql,
    ddl_statements,
)

log = logging.getLogger(__name__)

#: Default client timeouts for a server (seconds); override with ``?connect_timeout=…`` /
#: ``?send_receive_timeout=…`` in the URL.
CONNECT_TIMEOUT = 10
SEND_RECEIVE_TIMEOUT = 60

# ClickHouse error codes that retrying cannot fix: a wrong statement, table, column or
# value (a bug) or wrong credentials (configuration). Everything else is an outage.
PERMANENT_CODES = frozenset({
    6, 10, 15, 16, 20, 26, 27, 36, 38, 41, 42, 43, 44, 46, 47, 48, 49, 53, 57, 60, 62, 69,
    70, 72, 80, 81, 82, 113, 115, 117, 179, 181, 184, 190, 192, 194, 206, 215, 349, 352,
    386, 403, 497, 516,
})  # e.g. 184 ILLEGAL_AGGREGATION, 215 NOT_AN_AGGREGATE, 352 AMBIGUOUS_COLUMN_NAME
_CODE = re.compile(r"(?:Code:|error code)\s*(\d+)")

# Per-query output settings that make JSONCompact decode to plain Python numbers.
JSON_OUTPUT_SETTINGS = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_decimals": 0,
    "output_format_json_quote_denormals": 0,
}


class ClickHouseBackend(Protocol):
    """What the sink and the tests need from ClickHouse. ``name`` is for log lines (no
    secrets)."""

    name: str

    def command(self, sql: str) -> None: ...

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]: ...

    def insert_json_rows(self, table: str, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _DriverNoise(logging.Filter):
    """Drops clickhouse-connect's "Unexpected Http Driver Exception" warning: the same error
    reaches the caller as OperationalError, and the sink reports it once per outage."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Unexpected Http Driver Exception"


def _quiet_driver() -> None:
    logger = logging.getLogger("clickhouse_connect.driver._backend.http_sync")
    if not any(isinstance(f, _DriverNoise) for f in logger.filters):
        logger.addFilter(_DriverNoise())


def is_outage(exc: BaseException) -> bool:
    """True when retrying may help: connection, timeout and server-side load errors.

    False for Python programming errors (TypeError, ValueError, KeyError…) and for
    ClickHouse errors whose code says the statement, table, data or credentials are wrong.
    """
    if not default_is_outage(exc):
        return False
    code = _CODE.search(str(exc))
    return not (code and int(code.group(1)) in PERMANENT_CODES)


def json_lines(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONEachRow input: one JSON array of the row objects, which the format reads
    as well as one object a line, from one orjson call (a call per row cost 15× as much)."""
    return orjson.dumps(rows)


def _decode_compact(data: bytes | str) -> tuple[list[str], list[tuple[Any, ...]]]:
    if not data:
        return [], []
    doc = orjson.loads(data)
    return [m["name"] for m in doc["meta"]], [tuple(r) for r in doc["data"]]


class _Engine:
    """Which directory this process's chdb engine is bound to, and how many backends use it."""

    lock = threading.Lock()
    path: str | None = None
    users = 0

    @classmethod
    def open(cls, path: str) -> Any:
        from chdb.session import Session

        with cls.lock:
            if cls.users and cls.path != path:
                raise RuntimeError(
                    f"chdb already runs on {cls.path!r} in this process; it cannot also open "
                    f"{path!r} (one embedded engine per process: use another database instead)"
                )
            os.makedirs(path, exist_ok=True)
            session = Session(path)
            try:
                for name, value in JSON_OUTPUT_SETTINGS.items():
                    session.query(f"SET {name} = {value}")
            except Exception:
                session.close()
                raise
            cls.path = path
            cls.users += 1
            return session

    @classmethod
    def close(cls, session: Any) -> None:
        with cls.lock:
            session.close()
            cls.users -= 1


class ChdbBackend:
    """Embedded ClickHouse (chdb) on a persistent directory.

    Each backend holds its own chdb connection to the process's engine: a connection runs
    one streaming insert at a time, so sink partitions on different worker threads must
    not share one. Use one backend from one thread at a time.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)  # chdb compares engine paths literally
        self.name = f"ClickHouse chdb://{self.path}"
        self._session: Any = _Engine.open(self.path)

    def command(self, sql: str) -> None:
        self._session.query(sql)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        return _decode_compact(self._session.query(sql, "JSONCompact").bytes())

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.query(sql)[1]

    def insert_json_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._session.send_insert(f"INSERT INTO {table}", "JSONEachRow") as ins:
                ins.append(json_lines(rows))
                ins.finish()

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            _Engine.close(session)


class ServerBackend:
    """A ClickHouse server over HTTP(S) via clickhouse-connect.

    ``url``: ``http(s)://user:password@host:port/?setting=…`` or ``clickhouse(s)://…``
    (``clickhouse://`` is plain HTTP, ``clickhouses://`` is HTTPS). A path in the URL is
    ignored: statements name their database. Or pass a ready ``client``.

    The client is made on first use (making it talks to the server), so a server that is
    down fails that call, which the caller may retry, instead of the constructor.
    """

    def __init__(self, url: str = "", client: Any = None) -> None:
        self.url = url
        self.name = f"ClickHouse {mask_url(url)}" if url else "ClickHouse server"
        self._client = client
        self._lock = threading.Lock()

    def _c(self) -> Any:
        if self._client is None:
            import clickhouse_connect

            _quiet_driver()
            with self._lock:
                if self._client is None:
                    self._client = clickhouse_connect.get_client(**server_params(self.url))
        return self._client

    def command(self, sql: str) -> None:
        self._c().command(sql)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        raw = self._c().raw_query(sql, fmt="JSONCompact", settings=JSON_OUTPUT_SETTINGS)
        return _decode_compact(raw)

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.query(sql)[1]

    def insert_json_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._c().raw_insert(table, insert_block=json_lines(rows), fmt="JSONEachRow")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def server_params(url: str) -> dict[str, Any]:
    """clickhouse-connect ``get_client`` keyword arguments for a server URL.

    ``connect_timeout`` / ``send_receive_timeout`` query parameters set the client's
    timeouts (defaults :data:`CONNECT_TIMEOUT`, :data:`SEND_RECEIVE_TIMEOUT`); other query
    parameters are ClickHouse settings.
    """
    u = urlparse(url)
    secure = u.scheme in ("https", "clickhouses")
    settings = dict(parse_qsl(u.query))
    params: dict[str, Any] = {
        "host": u.hostname or "localhost",
        "interface": "https" if secure else "http",
        "secure": secure,
        "connect_timeout": int(settings.pop("connect_timeout", CONNECT_TIMEOUT)),
        "send_receive_timeout": int(settings.pop("send_receive_timeout", SEND_RECEIVE_TIMEOUT)),
        "query_retries": 0,  # retries (with backoff and logs) are the caller's
    }
    if u.port:
        params["port"] = u.port
    if u.username:
        params["username"] = unquote(u.username)
    if u.password:
        params["password"] = unquote(u.password)
    if settings:
        params["settings"] = settings
    return params


def open_backend(url: str) -> ClickHouseBackend:
    """``chdb:///dir`` or a bare directory → :class:`ChdbBackend`;
    ``http(s)://`` / ``clickhouse(s)://`` → :class:`ServerBackend`."""
    scheme = urlparse(url).scheme
    if scheme in ("http", "https", "clickhouse", "clickhouses"):
        return ServerBackend(url)
    if scheme == "chdb":
        u = urlparse(url)
        path = unquote(u.netloc + u.path)
        if not path:
            raise ValueError(f"chdb URL needs a directory: {url!r}")
        return ChdbBackend(path)
    if scheme in ("", "file"):
        return ChdbBackend(url.removeprefix("file://"))
    raise ValueError(f"unknown ClickHouse URL scheme {scheme!r} in {mask_url(url)!r}")


def backend_name(backend: ClickHouseBackend) -> str:
    """How log lines name a backend (credentials masked)."""
    return mask_url(getattr(backend, "name", "ClickHouse"))


def ensure_schema(backend: ClickHouseBackend, database: str,
                  policy: RetryPolicy = DEFAULT_RETRY) -> None:
    """Bring the database up to date: the migrations it has not recorded yet, then TTLs
    and views (idempotent).

    Waits a ClickHouse outage out (backoff, one log line per state change, see
    :func:`cdp_triggers.logs.wait_out`) instead of failing start-up; errors that retrying
    cannot fix are raised at once.
    """
    state = shared_state_log(log, backend_name(backend), policy.repeat_s)
    applied = wait_out(lambda: applied_versions(backend, database), state, is_outage, policy)
    for sql in ddl_statements(database, applied=applied):
        wait_out(lambda sql=sql: backend.command(sql), state, is_outage, policy,
                 detail=lambda _: f"schema of {database} applied")


def _has_table(backend: ClickHouseBackend, database: str, table: str) -> bool:
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    return bool(backend.query_rows(
        f"SELECT count() FROM system.tables WHERE database = '{database}' "
        f"AND name = '{table}'")[0][0])


def applied_versions(backend: ClickHouseBackend, database: str) -> frozenset[int]:
    """The migration versions ``database`` has recorded (none for a new database)."""
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    if not _has_table(backend, database, SCHEMA_MIGRATIONS):
        return frozenset()
    return frozenset(int(r[0]) for r in backend.query_rows(applied_versions_sql(database)))


def has_dispatched(backend: ClickHouseBackend, database: str) -> int:
    """How many send commands the sink has already produced to the sends topic from this
    database (0 when it has no outbox yet): a run that starts from the beginning of its
    input without recovery state would replay them."""
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    if not _has_table(backend, database, DISPATCHED):
        return 0
    return int(backend.query_rows(
        f"SELECT uniqExact(send_id) FROM {database}.{DISPATCHED}")[0][0])
