"""Versioned migrations on start: an old database gets the new columns, applying twice is a
no-op; dead-letter TTLs from settings; the analyst role is skipped on chdb."""

from __future__ import annotations

import uuid

import pytest

from sinks.clickhouse import ChdbBackend, ensure_schema
from sinks.clickhouse_schema import (
    ANALYST_VIEWS,
    MIGRATIONS,
    REJECTED,
    SCHEMA_MIGRATIONS,
    Retention,
    analyst_statements,
    apply_analyst_role,
    columns,
    ddl_statements,
    migration_versions,
)


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _columns(backend: ChdbBackend, db: str, table: str) -> list[str]:
    return [r[0] for r in backend.query_rows(
        f"SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}' "
        f"ORDER BY position")]


def _schema(backend: ChdbBackend, db: str) -> list[tuple]:
    return backend.query_rows(
        f"SELECT table, name, type, default_expression FROM system.columns "
        f"WHERE database = '{db}' ORDER BY table, position")


def _old_ddl(db: str) -> list[str]:
    """The DDL before migrations existed: migration 1's tables, no tz, no record of it."""
    return [f"CREATE DATABASE IF NOT EXISTS {db}", *MIGRATIONS[0][2](db)]


def test_old_database_gets_the_new_columns_on_start(backend: ChdbBackend) -> None:
    db = _name("mig_old")
    for sql in _old_ddl(db):
        backend.command(sql)
    backend.command(f"INSERT INTO {db}.raw_sends (send_id, customer_id, trigger_id, "
                    f"trigger_kind, config_version, instance_id, step, channel, template, "
                    f"variant, variables, ts, decided_at) VALUES ('s-old', 'c1', 'cart', "
                    f"'marketing', 'v1', 'i1', 0, 'email', 't', '', '{{}}', now64(3), "
                    f"now64(3))")
    assert "tz" not in _columns(backend, db, "raw_decisions")
    assert "tz" not in _columns(backend, db, "raw_sends")

    ensure_schema(backend, db)

    assert _columns(backend, db, "raw_decisions") == columns("raw_decisions")
    assert _columns(backend, db, "raw_sends") == columns("raw_sends")
    assert backend.query_rows(f"SELECT version FROM {db}.{SCHEMA_MIGRATIONS} FINAL "
                              f"ORDER BY version") == [(v,) for v in migration_versions()]
    # old rows read '' (UTC in the views) and every analyst view works on them
    assert backend.query_rows(f"SELECT send_id, tz, local_hour >= 0 FROM {db}.send_facts") == [
        ("s-old", "", 1)]
    for view in ANALYST_VIEWS:
        backend.query_rows(f"SELECT count() FROM {db}.{view}")


def test_applying_twice_is_a_no_op(backend: ChdbBackend) -> None:
    db = _name("mig_twice")
    ensure_schema(backend, db)
    before = _schema(backend, db)
    sql = f"SELECT version, name, applied_at FROM {db}.{SCHEMA_MIGRATIONS} ORDER BY version"
    applied = backend.query_rows(sql)
    ensure_schema(backend, db)
    assert _schema(backend, db) == before
    assert backend.query_rows(sql) == applied
    assert len(applied) == len(MIGRATIONS)


def test_every_statement_is_idempotent_alone(backend: ChdbBackend) -> None:
    db = _name("mig_each")
    for sql in ddl_statements(db):
        backend.command(sql)
        backend.command(sql)
    assert backend.query_rows(f"SELECT count() FROM {db}.{SCHEMA_MIGRATIONS}") == [
        (len(MIGRATIONS),)]


def test_dead_letter_ttls_come_from_settings(backend: ChdbBackend,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    db = _name("mig_ttl")
    monkeypatch.setenv("CDP_DEAD_LETTER_TTL_DAYS", "14")
    monkeypatch.setenv("CDP_RAW_TTL_DAYS", "3")
    ensure_schema(backend, db)
    ddl = backend.query_rows(f"SELECT create_table_query FROM system.tables "
                             f"WHERE database = '{db}' AND name = '{REJECTED}'")[0][0]
    assert "`raw` String TTL toDateTime(inserted_at) + toIntervalDay(3)," in ddl
    assert "rejected_id) TTL toDateTime(inserted_at) + toIntervalDay(14)" in ddl
    # a changed setting reaches the existing table on the next start
    for sql in ddl_statements(db, Retention(dead_letter_days=30)):
        backend.command(sql)
    ddl = backend.query_rows(f"SELECT create_table_query FROM system.tables "
                             f"WHERE database = '{db}' AND name = '{REJECTED}'")[0][0]
    assert "toIntervalDay(14)" not in ddl and "toIntervalDay(3)" not in ddl
    assert ddl.count("toIntervalDay(30)") == 2  # raw lives as long as its dead letter
    with pytest.raises(ValueError):
        Retention(dead_letter_days=0)


def test_analyst_role_is_read_only_and_skipped_on_chdb(backend: ChdbBackend) -> None:
    sql = analyst_statements("cdp", "it's")
    assert sql[0] == "CREATE ROLE IF NOT EXISTS cdp_analyst"
    assert "GRANT SELECT ON cdp.* TO cdp_analyst" in sql
    assert all("INSERT" not in s and "ALL" not in s for s in sql)
    assert "BY 'it\\'s'" in sql[2] and "readonly = 2" in sql[2]
    assert apply_analyst_role(backend, "cdp", "x") is False  # chdb: no user directory

    class Server:
        name = "server"
        seen: list[str] = []

        def command(self, s: str) -> None:
            self.seen.append(s)

    server = Server()
    assert apply_analyst_role(server, "cdp", "pw") is True
    assert server.seen == analyst_statements("cdp", "pw")
    with pytest.raises(ValueError):
        analyst_statements("cdp; DROP", "pw")
