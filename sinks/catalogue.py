"""The record catalogue: every ClickHouse table declared once — its columns (with the
migration that added each), sorting key, partition, retention, dedup view, and which engine
records land in it with their id and row.

The DDL (:mod:`sinks.clickhouse_schema`) and the row building (:func:`rows_for`) both derive
from these declarations, so a column added here reaches the CREATE TABLE of a new database,
the ``ALTER TABLE … ADD COLUMN`` of an old one (its ``since`` migration) and every row the
sinks write, without a second list to keep in step.

A row copies each column from the record attribute of the same name, converting
``DateTime64`` columns from epoch ms to ISO text; columns a record has no attribute for
are computed (``RecordRows.computed``) or left to their DDL default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from cdp_triggers.clock import ch_time
from cdp_triggers.events import DUPLICATE, Rejected
from cdp_triggers.ids import stable_id
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

LC = "LowCardinality(String)"
TIME = "DateTime64(3, 'UTC')"
INSERTED = "inserted_at"


@dataclass(frozen=True)
class Column:
    """``name type [DEFAULT …]``; ``since``: the migration that added it (1 = first release);
    ``altered``: added by ALTER in that migration also to a table created before it (a
    column that came after its table's first release)."""

    name: str
    type: str
    default: str = ""
    since: int = 1
    altered: bool = False

    @property
    def ddl(self) -> str:
        return f"{self.name} {self.type}" + (f" DEFAULT {self.default}" if self.default else "")


def col(spec: str, since: int = 1, altered: bool = False) -> Column:
    """``"name Type"`` or ``"name Type DEFAULT expr"`` → Column."""
    name, _, rest = spec.partition(" ")
    typ, _, default = rest.partition(" DEFAULT ")
    return Column(name, typ, default, since, altered or since > 1)


Computed = Callable[[Any, int | None], Any]  # (record, received_at ms or None) → value


@dataclass(frozen=True)
class RecordRows:
    """How one record type becomes a row: its id, and the columns not copied by name."""

    record: type
    id_of: Callable[[Any], str]
    computed: Mapping[str, Computed] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """One ``raw_*`` table: ``ReplacingMergeTree(inserted_at)`` sorted by a key that ends
    with the record id; ``view``: its dedup view (``SELECT * … FINAL``), if any;
    ``ttl_days``: the setting that bounds how long its rows live (see Retention)."""

    name: str
    columns: tuple[Column, ...]
    order_by: str
    partition_by: str = "toYYYYMM(ts)"
    view: str = ""
    records: tuple[RecordRows, ...] = ()
    since: int = 1  # the migration that created it
    ttl: str = ""  # "dead_letter" | "raw" | "": which retention setting applies

    def column_names(self, until: int | None = None) -> list[str]:
        """Names in the order a database migrated up to ``until`` holds them."""
        return [c.name for c in self.columns if until is None or c.since <= until]


def _inserted() -> Column:
    return Column(INSERTED, TIME, "now64(3)")


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _received(_: Any, received_at: int | None) -> str:
    return ch_time(_now_ms() if received_at is None else received_at)


def rejected_id(record: Rejected) -> str:
    """Deterministic id of a dead letter: its source position and payload."""
    return stable_id(record.source, _text(record.raw))


def duplicate_id(record: Duplicate) -> str:
    """Deterministic id of a dropped duplicate event."""
    return stable_id("dup", record.customer_id, record.event_id, record.source)


DECISIONS = "raw_decisions"
SENDS = "raw_sends"
LIFECYCLE = "raw_lifecycle"
CONVERSIONS = "raw_conversions"
OUTCOMES = "raw_outcomes"
REJECTED = "raw_rejected_events"
DISPATCHED = "raw_dispatched"
START_MISSES = "raw_start_misses"
INPUTS = "raw_inputs"
SEGMENT_CHANGES = "raw_segment_changes"

_ARM = col(f"arm {LC} DEFAULT ''", since=1, altered=True)  # came after the table
#: The customer's IANA time zone at decision time ('' = unknown: views read it as UTC).
_TZ = col(f"tz {LC} DEFAULT ''", since=2)

TABLES: tuple[Table, ...] = (
    Table(DECISIONS, (
        *map(col, ["decision_id String", "send_id String", "customer_id String",
                   f"trigger_id {LC}", f"trigger_kind {LC}", f"config_version {LC}",
                   "instance_id String", "step UInt16", f"channel {LC}", f"template {LC}",
                   f"variant {LC}", f"status {LC}", f"reason {LC}", f"ts {TIME}",
                   f"decided_at {TIME}", "detail String DEFAULT ''"]),
        _inserted(), _TZ),
        "(trigger_id, decision_id)", view="decisions",
        records=(RecordRows(Decision, lambda r: r.decision_id),)),
    Table(SENDS, (
        *map(col, ["send_id String", "customer_id String", f"trigger_id {LC}",
                   f"trigger_kind {LC}", f"config_version {LC}", "instance_id String",
                   "step UInt16", f"channel {LC}", f"template {LC}", f"variant {LC}",
                   "variables String", f"ts {TIME}", f"decided_at {TIME}"]),
        _inserted(), _TZ),
        "(trigger_id, send_id)", view="sends",
        records=(RecordRows(Send, lambda r: r.send_id,
                            {"variables": lambda r, _: _json(r.variables)}),)),
    Table(LIFECYCLE, (
        *map(col, ["lifecycle_id String", "customer_id String", f"trigger_id {LC}",
                   "instance_id String", "instance_key String", f"action {LC}",
                   f"reason {LC}", "event_id String", f"ts {TIME}", f"decided_at {TIME}"]),
        _inserted()),
        "(trigger_id, lifecycle_id)", view="lifecycle",
        records=(RecordRows(Lifecycle, lambda r: r.lifecycle_id),)),
    Table(CONVERSIONS, (
        *map(col, ["conversion_id String", "customer_id String", "order_id String",
                   "revenue Decimal(18, 4)", f"currency {LC}", "send_id String",
                   f"trigger_id {LC}", f"variant {LC}", f"channel {LC}", f"sent_at {TIME}",
                   f"ts {TIME}"]),
        _inserted(), _ARM),
        "(trigger_id, conversion_id)", view="conversions",
        records=(RecordRows(Conversion, lambda r: r.conversion_id),)),
    Table(OUTCOMES, (
        *map(col, ["outcome_id String", "send_id String", "customer_id String",
                   f"channel {LC}", f"outcome {LC}", f"trigger_id {LC}", f"variant {LC}",
                   "step Int16", f"sent_at {TIME}", f"ts {TIME}"]),
        _inserted()),
        "(trigger_id, outcome_id)", view="outcomes",
        records=(RecordRows(Outcome, lambda r: r.outcome_id),)),
    Table(REJECTED, (
        *map(col, ["rejected_id String", f"reason {LC}", "detail String", "raw String",
                   "source String", "customer_id String", "event_id String",
                   f"event_type {LC}", f"event_ts Nullable({TIME})",
                   f"received_at {TIME}"]),
        _inserted()),
        "(reason, rejected_id)", partition_by="", view="rejected_events", ttl="dead_letter",
        records=(
            RecordRows(Rejected, rejected_id, {
                "rejected_id": lambda r, _: rejected_id(r), "raw": lambda r, _: _text(r.raw),
                "event_ts": lambda r, _: None, "received_at": _received}),
            RecordRows(Duplicate, duplicate_id, {
                "rejected_id": lambda r, _: duplicate_id(r), "reason": lambda r, _: DUPLICATE,
                "detail": lambda r, _: f"event_id {r.event_id!r} already seen for this "
                                       "customer",
                "raw": lambda r, _: "", "event_ts": lambda r, _: ch_time(r.ts),
                "received_at": _received}),
        )),
    Table(DISPATCHED, (col("send_id String"), col(f"dispatched_at {TIME}"), _inserted()),
          "send_id", partition_by="", view="dispatched"),
    # re-written with a growing count: its view takes the highest (not FINAL's last insert)
    Table(START_MISSES, (
        *map(col, ["miss_id String", "customer_id String", f"trigger_id {LC}",
                   f"reason {LC}", "day Date", "count UInt32", f"first_ts {TIME}",
                   f"last_ts {TIME}"]),
        _inserted()),
        "(trigger_id, miss_id)", partition_by="toYYYYMM(day)",
        records=(RecordRows(StartMiss, lambda r: r.miss_id, {
            "day": lambda r, _: time.strftime("%Y-%m-%d", time.gmtime(r.day * 86_400))}),)),
    # the input events that mattered to a decision (customer_history), for raw_ttl_days
    Table(INPUTS, (
        *map(col, ["event_id String", "customer_id String", f"type {LC}", f"ts {TIME}",
                   "source String", "props String", f"effect {LC}"]),
        _inserted()),
        "(customer_id, event_id)", view="inputs", since=3, ttl="raw",
        records=(RecordRows(InputSeen, lambda r: r.event_id),)),
    # customers entering / leaving the dynamic segments of config/segments (the engine)
    Table(SEGMENT_CHANGES, (
        *map(col, ["change_id String", "customer_id String", f"segment {LC}",
                   f"action {LC}", f"ts {TIME}", f"decided_at {TIME}",
                   f"config_version {LC}"]),
        _inserted()),
        "(segment, change_id)", view="segment_changes", since=4,
        records=(RecordRows(SegmentChange, lambda r: r.change_id),)),
)

BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def _builder(table: Table, spec: RecordRows) -> Callable[[Any, int | None], dict[str, Any]]:
    """A row function for one record type, its column plan worked out once."""
    attrs = {f.name for f in fields(spec.record)}
    plan: list[tuple[str, Computed | None, bool]] = []
    for c in table.columns:
        if c.name in spec.computed:
            plan.append((c.name, spec.computed[c.name], False))
        elif c.name in attrs:
            plan.append((c.name, None, c.type == TIME))

    def row(record: Any, received_at: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn, is_time in plan:
            if fn is not None:
                out[name] = fn(record, received_at)
            else:
                v = getattr(record, name)
                out[name] = v / 1000 if is_time else v  # = ch_time(v), inlined
        return out

    return row


_ROWS: dict[type, tuple[str, Callable[[Any], str], Callable[[Any, int | None], dict]]] = {
    spec.record: (t.name, spec.id_of, _builder(t, spec)) for t in TABLES for spec in t.records}

Record = (Decision | Send | Lifecycle | Conversion | Outcome | Duplicate | Rejected | StartMiss
          | InputSeen | SegmentChange)


def _spec(record: Any) -> tuple[str, Callable[[Any], str], Callable[[Any, int | None], dict]]:
    try:
        return _ROWS[type(record)]
    except KeyError:
        raise TypeError(f"no ClickHouse table for {type(record).__name__}") from None


def table_for(record: Record) -> str:
    """The raw table a record goes to."""
    return _spec(record)[0]


def record_id(record: Record) -> str:
    """The id a record is deduplicated on."""
    return _spec(record)[1](record)


def rows_for(record: Record, received_at: int | None = None) -> tuple[str, dict[str, Any]]:
    """``(raw table, JSON-ready row)`` for ``INSERT INTO db.table FORMAT JSONEachRow``.

    ``received_at`` (epoch ms; default: now) stamps dead letters and duplicates, which
    carry no engine time of their own; it is not part of their id.
    """
    table, _, build = _spec(record)
    return table, build(record, received_at)


def dispatched_row(send_id: str, at_ms: int) -> dict[str, Any]:
    """An outbox row: ``send_id`` was produced to the sends topic and delivered at ``at_ms``."""
    return {"send_id": send_id, "dispatched_at": ch_time(at_ms)}
