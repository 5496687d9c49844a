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
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlparse

import orjson

from sinks.clickhouse_schema import ddl_statements

# Per-query output settings that make JSONCompact decode to plain Python numbers.
JSON_OUTPUT_SETTINGS = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_decimals": 0,
    "output_format_json_quote_denormals": 0,
}


class ClickHouseBackend(Protocol):
    """What the sink and the tests need from ClickHouse."""

    def command(self, sql: str) -> None: ...

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]: ...

    def insert_json_rows(self, table: str, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def json_lines(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONEachRow text (one object a line)."""
    return b"\n".join(map(orjson.dumps, rows)) + b"\n"


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
    """

    def __init__(self, url: str = "", client: Any = None) -> None:
        if client is None:
            import clickhouse_connect

            client = clickhouse_connect.get_client(**server_params(url))
        self._client = client

    def command(self, sql: str) -> None:
        self._client.command(sql)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        raw = self._client.raw_query(sql, fmt="JSONCompact", settings=JSON_OUTPUT_SETTINGS)
        return _decode_compact(raw)

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.query(sql)[1]

    def insert_json_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._client.raw_insert(table, insert_block=json_lines(rows), fmt="JSONEachRow")

    def close(self) -> None:
        self._client.close()


def server_params(url: str) -> dict[str, Any]:
    """clickhouse-connect ``get_client`` keyword arguments for a server URL."""
    u = urlparse(url)
    secure = u.scheme in ("https", "clickhouses")
    params: dict[str, Any] = {
        "host": u.hostname or "localhost",
        "interface": "https" if secure else "http",
        "secure": secure,
    }
    if u.port:
        params["port"] = u.port
    if u.username:
        params["username"] = unquote(u.username)
    if u.password:
        params["password"] = unquote(u.password)
    settings = dict(parse_qsl(u.query))
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
    raise ValueError(f"unknown ClickHouse URL scheme {scheme!r} in {url!r}")


def ensure_schema(backend: ClickHouseBackend, database: str) -> None:
    """Create the database, tables and views if missing (idempotent)."""
    for sql in ddl_statements(database):
        backend.command(sql)
