"""A customer's history: the inputs that mattered are stored (without contact details) and
read back in order with decisions, sends, receipts and conversions; the record catalogue
builds every row; a database applies only the migrations it has not recorded."""

from __future__ import annotations

import uuid
from dataclasses import fields

import orjson
import pytest

from cdp_triggers.events import Event, Rejected
from cdp_triggers.records import (
    Conversion,
    Decision,
    Duplicate,
    InputSeen,
    Lifecycle,
    Outcome,
    SegmentChange,
    Send,
    StartMiss,
)
from operators.engine import Engine
from operators.keyed import input_seen
from sinks.catalogue import BY_NAME, INPUTS, TABLES, rows_for
from sinks.clickhouse import ChdbBackend, ensure_schema
from sinks.clickhouse_schema import MIGRATIONS, SCHEMA_MIGRATIONS, migration_versions
from state.customer import CustomerState
from tests.engine_helpers import T0, cart, ev, order, trigger_semantics_dir
from tests.test_dashboards import demo_database


def _apply(engine: Engine, st: CustomerState, e: Event) -> InputSeen | None:
    """What the keyed step does around one event."""
    before = {s: i.activity_at for s, i in st.instances.items()}
    caused = engine.handle(st, e, e.ts, lambda _: None)
    return input_seen(e, caused, before, st)


def test_inputs_that_mattered_name_their_effect() -> None:
    from config.loader import load_config

    engine = Engine(load_config(trigger_semantics_dir()))
    st = CustomerState("c1")
    started = _apply(engine, st, cart(0))
    assert started is not None and "started" in started.effect.split(",")
    reset = _apply(engine, st, cart(10, product="p2"))  # same cart, inside the wait
    assert reset is not None and reset.effect == "reset"
    assert _apply(engine, st, ev("page_viewed_nowhere", 11)) is None  # nothing read it
    placed = _apply(engine, st, order(12))
    assert placed is not None and {"order", "cancelled"} <= set(placed.effect.split(","))
    again = Event(placed.event_id, "order_placed", "c1", T0, {})
    assert _apply(engine, st, again) is None  # a duplicate is a dead letter, not history


def test_stored_inputs_hold_no_contact_details() -> None:
    e = Event("e1", "signed_up", "c1", T0, {"email": "a@b.example", "phone": "+4930123",
                                            "source": "web", "nested": {"x": 1}})
    seen = InputSeen.of(e, {"started"})
    assert orjson.loads(seen.props) == {"nested": {"x": 1}, "source": "web"}
    big = Event("e2", "x", "c1", T0, {"blob": "y" * 10_000})
    assert orjson.loads(InputSeen.of(big, {"order"}).props) == {"truncated": True,
                                                                  "bytes": 10_011}


_SAMPLES = [
    Decision("d", "s", "c", "t", "marketing", "v", "i", 0, "email", "tpl", "A", "sent", "",
             T0, T0, "", "Europe/Berlin"),
    Send("s", "c", "t", "marketing", "v", "i", 1, "sms", "tpl", "B", {"b": 1}, T0, T0, "UTC"),
    Lifecycle("l", "c", "t", "i", "k", "started", "", "e", T0, T0),
    Conversion("cv", "c", "o", 12.5, "EUR", "s", "t", "A", "email", T0, T0, "control"),
    Outcome("o", "s", "c", "email", "opened", "t", "A", 0, T0, T0),
    Duplicate("e", "c", "product_viewed", "src", T0),
    StartMiss("m", "c", "t", "r", 20_000, 3, T0, T0),
    Rejected("invalid_json", "bad", b"{x", "src", "c", "e", "t"),
    InputSeen("e", "c", "order_placed", T0, "src", "{}", "order"),
    SegmentChange("sc", "c", "vip", "entered", T0, T0, "v"),
]


@pytest.mark.parametrize("record", _SAMPLES, ids=lambda r: type(r).__name__)
def test_catalogue_rows_fill_their_table(record) -> None:
    table, row = rows_for(record, T0)
    cols = BY_NAME[table].columns
    assert set(row) <= {c.name for c in cols}
    # every column without a DDL default is written
    assert {c.name for c in cols if not c.default} <= set(row)


def test_every_record_type_has_one_table() -> None:
    kinds = [spec.record for t in TABLES for spec in t.records]
    assert len(kinds) == len(set(kinds)) == len(_SAMPLES)
    assert all(f.name in {c.name for c in BY_NAME[INPUTS].columns}
               for f in fields(InputSeen))


class _Recording:
    """A backend that records the DDL it is asked to run."""

    def __init__(self, inner: ChdbBackend) -> None:
        self.inner, self.commands = inner, []

    def command(self, sql: str) -> None:
        self.commands.append(sql)
        self.inner.command(sql)

    def query_rows(self, sql: str):
        return self.inner.query_rows(sql)


def test_only_missing_migrations_are_applied(backend: ChdbBackend) -> None:
    db = f"mig_missing_{uuid.uuid4().hex[:8]}"
    backend.command(f"CREATE DATABASE {db}")
    backend.command(f"CREATE TABLE {db}.{SCHEMA_MIGRATIONS} (version UInt32, name String, "
                    f"applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                    f"ENGINE = ReplacingMergeTree ORDER BY version")
    for version, name, statements in MIGRATIONS[:2]:  # a database from before inputs
        for sql in statements(db):
            backend.command(sql)
        backend.command(f"INSERT INTO {db}.{SCHEMA_MIGRATIONS} (version, name) "
                        f"VALUES ({version}, '{name}')")
    rec = _Recording(backend)
    ensure_schema(rec, db)  # type: ignore[arg-type]
    ran = [s for s in rec.commands if s.startswith(("CREATE TABLE", "ALTER TABLE"))
           and "MODIFY" not in s and SCHEMA_MIGRATIONS not in s]
    later = [f"{db}.{t.name}" for t in TABLES if t.since > 2]  # raw_inputs, then later ones
    assert INPUTS in later[0] and [s.split("(")[0].split()[-1] for s in ran] == later
    assert backend.query_rows(f"SELECT version FROM {db}.{SCHEMA_MIGRATIONS} FINAL "
                              f"ORDER BY version") == [(v,) for v in migration_versions()]
    rec.commands.clear()
    ensure_schema(rec, db)  # type: ignore[arg-type]
    assert not [s for s in rec.commands if "TTL" not in s and SCHEMA_MIGRATIONS not in s
                and s.startswith(("CREATE TABLE", "INSERT", "ALTER TABLE"))]


@pytest.fixture(scope="module")
def history_db(chdb_dir: str) -> str:
    return demo_database(chdb_dir, "hist")


def test_history_has_inputs_before_what_they_caused(backend: ChdbBackend,
                                                    history_db: str) -> None:
    db = history_db
    missing = backend.query_rows(
        f"SELECT event_id FROM {db}.lifecycle WHERE action IN ('started', 'cancelled') "
        f"AND event_id NOT IN (SELECT event_id FROM {db}.inputs) "
        f"AND event_id NOT IN (SELECT change_id FROM {db}.segment_changes) LIMIT 5")
    assert missing == []  # (a segment change is the engine's own event, in segment_changes)
    assert backend.query_rows(f"SELECT count() FROM {db}.inputs WHERE props LIKE '%@%'") == [
        (0,)]
    cid, eid = backend.query_rows(
        f"SELECT customer_id, event_id FROM {db}.lifecycle WHERE action = 'started' "
        f"ORDER BY ts, lifecycle_id LIMIT 1")[0]
    rows = backend.query_rows(
        f"SELECT kind, what, detail FROM {db}.customer_history WHERE customer_id = '{cid}' "
        f"ORDER BY sort_key")
    kinds = [r[0] for r in rows]
    first_input = next(i for i, r in enumerate(rows) if r[0] == "input" and eid in r[2])
    started = next(i for i, r in enumerate(rows)
                   if r[0] == "lifecycle" and r[1] == "started" and eid in r[2])
    assert first_input < started
    assert {"input", "lifecycle", "decision"} <= set(kinds)
    # every credited order is an input whose effect says so
    conv = backend.query_rows(
        f"SELECT count() FROM {db}.conversions AS c WHERE c.customer_id NOT IN ("
        f"SELECT customer_id FROM {db}.inputs WHERE type = 'order_placed' "
        f"AND position(effect, 'converted') > 0)")
    assert conv == [(0,)]
