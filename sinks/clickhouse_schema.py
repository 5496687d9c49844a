"""The one owner of all ClickHouse DDL, and of how engine records become rows.

Both backends (chdb embedded, clickhouse-connect server) run exactly these statements.

Storage tables ``raw_*`` are ``ReplacingMergeTree(inserted_at)`` ordered by a key that ends
with the record's deterministic id, so a replay or an at-least-once recovery that writes a
row again leaves one logical row. Analysts query the dedup views of the same name without
``raw_`` (``SELECT … FROM raw_x FINAL``) and the analyst views built on them.

Sorting keys only hold columns that are a function of the id (the trigger id is hashed into
every decision/send id), so a re-written row always replaces its twin. Partitions are by
``toYYYYMM(ts)``; ``FINAL`` merges across partitions (ClickHouse default), so even a row
re-written with another ``ts`` is counted once by the views.

No raw e-mail or phone numbers are stored: a send's ``variables`` is template data (JSON).

``raw_dispatched`` (view ``dispatched``) is the sends topic's outbox: one row per send
command the sink has produced and seen delivered, written after the delivery reports. A
replay skips the send ids found there, so it re-writes rows (idempotent) but not commands.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from cdp_triggers.clock import iso
from cdp_triggers.events import DUPLICATE, Rejected
from cdp_triggers.ids import stable_id
from cdp_triggers.records import (
    Conversion,
    Decision,
    Duplicate,
    Lifecycle,
    Outcome,
    Send,
    StartMiss,
)

DECISIONS = "raw_decisions"
SENDS = "raw_sends"
LIFECYCLE = "raw_lifecycle"
CONVERSIONS = "raw_conversions"
OUTCOMES = "raw_outcomes"
REJECTED = "raw_rejected_events"
DISPATCHED = "raw_dispatched"
START_MISSES = "raw_start_misses"
RAW_TABLES = (DECISIONS, SENDS, LIFECYCLE, CONVERSIONS, OUTCOMES, REJECTED, DISPATCHED,
              START_MISSES)

DEDUP_VIEWS = {
    DECISIONS: "decisions",
    SENDS: "sends",
    LIFECYCLE: "lifecycle",
    CONVERSIONS: "conversions",
    OUTCOMES: "outcomes",
    REJECTED: "rejected_events",
    DISPATCHED: "dispatched",
}
COUNTED_VIEWS = {START_MISSES: "start_misses"}  # one row per id, the highest count
ANALYST_VIEWS = ("trigger_funnel_daily", "suppression_reasons", "channel_summary",
                 "cascade_efficiency", "open_hour_heatmap", "conversions_by_arm",
                 "variant_lift")

# Arms (``conversions.arm``): ``treated`` = really sent, the only arm credited with revenue;
# ``control`` / ``holdout`` = "would have sent" (control variant / global holdout), counted
# only in their own arm. A conversion row written before the column existed reads ``''``
# and is left out of every arm-based view.

LC = "LowCardinality(String)"
TIME = "DateTime64(3, 'UTC')"
_INSERTED = f"inserted_at {TIME} DEFAULT now64(3)"
TREATED = "treated"
_ARM = f"arm {LC} DEFAULT ''"
# columns added after a table's first release: (table, definition), applied to old databases
_ADDED = [(CONVERSIONS, _ARM)]

# table -> (column definitions, PARTITION BY or "", ORDER BY)
_TABLES: dict[str, tuple[list[str], str, str]] = {
    DECISIONS: (
        [
            "decision_id String", "send_id String", "customer_id String",
            f"trigger_id {LC}", f"trigger_kind {LC}", f"config_version {LC}",
            "instance_id String", "step UInt16", f"channel {LC}", f"template {LC}",
            f"variant {LC}", f"status {LC}", f"reason {LC}",
            f"ts {TIME}", f"decided_at {TIME}", "detail String DEFAULT ''", _INSERTED,
        ],
        "toYYYYMM(ts)",
        "(trigger_id, decision_id)",
    ),
    SENDS: (
        [
            "send_id String", "customer_id String",
            f"trigger_id {LC}", f"trigger_kind {LC}", f"config_version {LC}",
            "instance_id String", "step UInt16", f"channel {LC}", f"template {LC}",
            f"variant {LC}", "variables String",
            f"ts {TIME}", f"decided_at {TIME}", _INSERTED,
        ],
        "toYYYYMM(ts)",
        "(trigger_id, send_id)",
    ),
    LIFECYCLE: (
        [
            "lifecycle_id String", "customer_id String", f"trigger_id {LC}",
            "instance_id String", "instance_key String", f"action {LC}", f"reason {LC}",
            "event_id String", f"ts {TIME}", f"decided_at {TIME}", _INSERTED,
        ],
        "toYYYYMM(ts)",
        "(trigger_id, lifecycle_id)",
    ),
    CONVERSIONS: (
        [
            "conversion_id String", "customer_id String", "order_id String",
            "revenue Decimal(18, 4)", f"currency {LC}", "send_id String",
            f"trigger_id {LC}", f"variant {LC}", f"channel {LC}",
            f"sent_at {TIME}", f"ts {TIME}", _INSERTED, _ARM,
        ],
        "toYYYYMM(ts)",
        "(trigger_id, conversion_id)",
    ),
    OUTCOMES: (
        [
            "outcome_id String", "send_id String", "customer_id String", f"channel {LC}",
            f"outcome {LC}", f"trigger_id {LC}", f"variant {LC}", "step Int16",
            f"sent_at {TIME}", f"ts {TIME}", _INSERTED,
        ],
        "toYYYYMM(ts)",
        "(trigger_id, outcome_id)",
    ),
    REJECTED: (
        [
            "rejected_id String", f"reason {LC}", "detail String", "raw String",
            "source String", "customer_id String", "event_id String", f"event_type {LC}",
            f"event_ts Nullable({TIME})", f"received_at {TIME}", _INSERTED,
        ],
        "",
        "(reason, rejected_id)",
    ),
    DISPATCHED: (
        ["send_id String", f"dispatched_at {TIME}", _INSERTED],
        "",
        "send_id",
    ),
    # re-written with a growing count: the view takes the highest (not FINAL's last insert)
    START_MISSES: (
        [
            "miss_id String", "customer_id String", f"trigger_id {LC}", f"reason {LC}",
            "day Date", "count UInt32", f"first_ts {TIME}", f"last_ts {TIME}", _INSERTED,
        ],
        "toYYYYMM(day)",
        "(trigger_id, miss_id)",
    ),
}


def _funnel(db: str) -> str:
    return f"""
SELECT day, trigger_id, variant, channel,
       sum(started) AS instances_started,
       sum(inst_cancelled) AS instances_cancelled,
       sum(considered) AS messages_considered,
       sum(sent) AS messages_sent,
       sum(suppressed) AS messages_suppressed,
       sum(cancelled) AS messages_cancelled,
       sum(conv) AS conversions,
       sum(rev) AS revenue
FROM (
    SELECT toDate(l.ts) AS day, toString(l.trigger_id) AS trigger_id,
           toString(v.variant) AS variant, '' AS channel,
           toUInt64(l.action = 'started') AS started,
           toUInt64(l.action = 'cancelled') AS inst_cancelled,
           toUInt64(0) AS considered, toUInt64(0) AS sent, toUInt64(0) AS suppressed,
           toUInt64(0) AS cancelled, toUInt64(0) AS conv, toDecimal128(0, 4) AS rev
    FROM {db}.lifecycle AS l
    LEFT JOIN (SELECT instance_id, any(variant) AS variant
               FROM {db}.decisions GROUP BY instance_id) AS v USING (instance_id)
    UNION ALL
    SELECT toDate(ts), toString(trigger_id), toString(variant), toString(channel),
           0, 0, 1, status = 'sent', status = 'suppressed', status = 'cancelled',
           0, toDecimal128(0, 4)
    FROM {db}.decisions
    UNION ALL
    SELECT toDate(ts), toString(trigger_id), toString(variant), toString(channel),
           0, 0, 0, 0, 0, 0, 1, toDecimal128(revenue, 4)
    FROM {db}.conversions WHERE arm = '{TREATED}'
)
GROUP BY day, trigger_id, variant, channel"""


def _suppression(db: str) -> str:
    return f"""
SELECT trigger_id, status, reason,
       count() AS decisions,
       uniqExact(customer_id) AS customers,
       min(ts) AS first_ts, max(ts) AS last_ts
FROM {db}.decisions
WHERE status != 'sent'
GROUP BY trigger_id, status, reason"""


def _channels(db: str) -> str:
    return f"""
SELECT d.channel AS channel,
       d.considered AS messages_considered,
       d.sent AS messages_sent,
       d.suppressed AS messages_suppressed,
       d.cancelled AS messages_cancelled,
       d.customers_reached AS customers_reached,
       c.conversions AS conversions,
       c.revenue AS revenue,
       if(d.sent > 0, c.conversions / d.sent, 0) AS conversion_rate
FROM (
    SELECT toString(channel) AS channel, count() AS considered,
           countIf(status = 'sent') AS sent,
           countIf(status = 'suppressed') AS suppressed,
           countIf(status = 'cancelled') AS cancelled,
           uniqExactIf(customer_id, status = 'sent') AS customers_reached
    FROM {db}.decisions GROUP BY channel
) AS d
LEFT JOIN (
    SELECT toString(channel) AS channel, count() AS conversions, sum(revenue) AS revenue
    FROM {db}.conversions WHERE arm = '{TREATED}' GROUP BY channel
) AS c USING (channel)"""


def _cascade(db: str) -> str:
    return f"""
SELECT s.trigger_id AS trigger_id, s.step AS step, s.channel AS channel,
       count() AS sends,
       countIf(o.delivered) AS delivered, countIf(o.opened) AS opened,
       countIf(o.clicked) AS clicked, countIf(o.bounced) AS bounced,
       countIf(o.failed) AS failed,
       if(count() > 0, countIf(o.delivered OR o.opened OR o.clicked) / count(), 0)
           AS success_rate
FROM (SELECT send_id, toString(trigger_id) AS trigger_id, step, toString(channel) AS channel
      FROM {db}.sends) AS s
LEFT JOIN (
    SELECT send_id,
           max(outcome = 'delivered') AS delivered, max(outcome = 'opened') AS opened,
           max(outcome = 'clicked') AS clicked, max(outcome = 'bounced') AS bounced,
           max(outcome = 'failed') AS failed
    FROM {db}.outcomes GROUP BY send_id
) AS o USING (send_id)
GROUP BY trigger_id, step, channel"""


def _heatmap(db: str) -> str:
    return f"""
SELECT toString(channel) AS channel, toDayOfWeek(ts) AS weekday_utc, toHour(ts) AS hour_utc,
       count() AS opens
FROM {db}.outcomes
WHERE outcome = 'opened'
GROUP BY channel, weekday_utc, hour_utc"""


def _by_arm(db: str) -> str:
    return f"""
SELECT toString(trigger_id) AS trigger_id, toString(arm) AS arm,
       toString(variant) AS variant, toString(channel) AS channel,
       count() AS conversions, uniqExact(customer_id) AS converted_customers,
       sum(revenue) AS revenue
FROM {db}.conversions
WHERE arm != ''
GROUP BY trigger_id, arm, variant, channel"""


def _diff(p1: str, n1: str, p2: str, n2: str, ok: str, name: str) -> str:
    """Absolute and relative lift of rate p1 (n1 customers) over p2 (n2), and the 95 %
    normal-approximation interval of the absolute lift; NULL where ``ok`` is false."""
    se = f"sqrt({p1} * (1 - {p1}) / {n1} + {p2} * (1 - {p2}) / {n2})"
    return (f"if({ok}, {p1} - {p2}, NULL) AS lift_vs_{name},\n"
            f"       if({ok} AND {p2} > 0, {p1} / {p2} - 1, NULL) AS rel_lift_vs_{name},\n"
            f"       if({ok}, {p1} - {p2} - 1.96 * {se}, NULL) AS lift_vs_{name}_ci_low,\n"
            f"       if({ok}, {p1} - {p2} + 1.96 * {se}, NULL) AS lift_vs_{name}_ci_high")


def _lift(db: str) -> str:
    treated = "g.arm = 'treated'"
    return f"""
WITH g AS (
    SELECT e.trigger_id AS trigger_id, e.arm AS arm, e.variant AS variant,
           count() AS customers, sum(cv.hit) AS converted,
           converted / customers AS rate, any(rv.revenue) AS revenue
    FROM (
        SELECT DISTINCT toString(trigger_id) AS trigger_id,
               multiIf(reason = 'control_group', 'control', reason = 'holdout', 'holdout',
                       'treated') AS arm,
               if(reason = 'holdout', '', toString(variant)) AS variant, customer_id
        FROM {db}.decisions
        WHERE trigger_kind != 'transactional'
          AND (status = 'sent' OR reason IN ('control_group', 'holdout'))
    ) AS e
    LEFT JOIN (
        SELECT DISTINCT toString(trigger_id) AS trigger_id, toString(arm) AS arm,
               if(arm = 'holdout', '', toString(variant)) AS variant, customer_id,
               toUInt64(1) AS hit
        FROM {db}.conversions WHERE arm != ''
    ) AS cv ON e.trigger_id = cv.trigger_id AND e.arm = cv.arm AND e.variant = cv.variant
           AND e.customer_id = cv.customer_id
    LEFT JOIN (
        SELECT toString(trigger_id) AS trigger_id, toString(arm) AS arm,
               if(arm = 'holdout', '', toString(variant)) AS variant,
               sum(revenue) AS revenue
        FROM {db}.conversions WHERE arm != '' GROUP BY trigger_id, arm, variant
    ) AS rv ON e.trigger_id = rv.trigger_id AND e.arm = rv.arm AND e.variant = rv.variant
    GROUP BY trigger_id, arm, variant
)
SELECT g.trigger_id AS trigger_id, g.arm AS arm, g.variant AS variant,
       g.customers AS customers, g.converted AS converted_customers,
       g.revenue AS revenue, g.rate AS conversion_rate,
       c.n AS control_customers, if(c.n > 0, c.k / c.n, NULL) AS control_rate,
       {_diff("g.rate", "g.customers", "(c.k / c.n)", "c.n", f"{treated} AND c.n > 0",
              "control")},
       h.n AS holdout_customers, if(h.n > 0, h.k / h.n, NULL) AS holdout_rate,
       {_diff("g.rate", "g.customers", "(h.k / h.n)", "h.n", f"{treated} AND h.n > 0",
              "holdout")}
FROM g
LEFT JOIN (SELECT trigger_id, sum(customers) AS n, sum(converted) AS k
           FROM g WHERE arm = 'control' GROUP BY trigger_id) AS c
    ON g.trigger_id = c.trigger_id
LEFT JOIN (SELECT trigger_id, sum(customers) AS n, sum(converted) AS k
           FROM g WHERE arm = 'holdout' GROUP BY trigger_id) AS h
    ON g.trigger_id = h.trigger_id"""


def ddl_statements(database: str) -> list[str]:
    """Every statement that builds ``database``, in order; each is idempotent.

    Tables use ``IF NOT EXISTS`` (never dropped; a column added later is added to an
    existing table with ``ADD COLUMN IF NOT EXISTS``, nothing else is altered); views use
    ``CREATE OR REPLACE`` so a new definition reaches existing databases.
    """
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    db = database
    out = [f"CREATE DATABASE IF NOT EXISTS {db}"]
    for table, (columns, partition, order) in _TABLES.items():
        part = f"\nPARTITION BY {partition}" if partition else ""
        cols = ",\n    ".join(columns)
        out.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{table} (\n    {cols}\n)\n"
            f"ENGINE = ReplacingMergeTree(inserted_at){part}\nORDER BY {order}"
        )
    for table, column in _ADDED:  # a database made before the column existed
        out.append(f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS {column}")
    for table, view in DEDUP_VIEWS.items():
        out.append(f"CREATE OR REPLACE VIEW {db}.{view} AS SELECT * FROM {db}.{table} FINAL")
    out.append(f"""CREATE OR REPLACE VIEW {db}.{COUNTED_VIEWS[START_MISSES]} AS
SELECT miss_id, any(customer_id) AS customer_id, any(trigger_id) AS trigger_id,
       any(reason) AS reason, any(day) AS day, max(count) AS count,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts
FROM {db}.{START_MISSES} GROUP BY miss_id""")
    bodies = (_funnel, _suppression, _channels, _cascade, _heatmap, _by_arm, _lift)
    for view, body in zip(ANALYST_VIEWS, bodies, strict=True):
        out.append(f"CREATE OR REPLACE VIEW {db}.{view} AS{body(db)}")
    return out


def columns(table: str) -> list[str]:
    """Column names of a raw table (including the server-filled ``inserted_at``)."""
    return [c.split(" ", 1)[0] for c in _TABLES[table][0]]


# ---------------------------------------------------------------- row mappers

Record = Decision | Send | Lifecycle | Conversion | Outcome | Duplicate | Rejected | StartMiss

_TABLE_OF: dict[type, str] = {
    Decision: DECISIONS,
    Send: SENDS,
    Lifecycle: LIFECYCLE,
    Conversion: CONVERSIONS,
    Outcome: OUTCOMES,
    Duplicate: REJECTED,
    Rejected: REJECTED,
    StartMiss: START_MISSES,
}


def table_for(record: Record) -> str:
    """The raw table a record goes to."""
    try:
        return _TABLE_OF[type(record)]
    except KeyError:
        raise TypeError(f"no ClickHouse table for {type(record).__name__}") from None


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw


def rejected_id(record: Rejected) -> str:
    """Deterministic id of a dead letter: its source position and payload."""
    return stable_id(record.source, _text(record.raw))


def duplicate_id(record: Duplicate) -> str:
    """Deterministic id of a dropped duplicate event."""
    return stable_id("dup", record.customer_id, record.event_id, record.source)


def record_id(record: Record) -> str:
    """The id a record is deduplicated on."""
    match record:
        case Decision():
            return record.decision_id
        case Send():
            return record.send_id
        case Lifecycle():
            return record.lifecycle_id
        case Conversion():
            return record.conversion_id
        case Outcome():
            return record.outcome_id
        case Duplicate():
            return duplicate_id(record)
        case Rejected():
            return rejected_id(record)
        case StartMiss():
            return record.miss_id
    raise TypeError(f"no ClickHouse table for {type(record).__name__}")


def dispatched_row(send_id: str, at_ms: int) -> dict[str, Any]:
    """An outbox row: ``send_id`` was produced to the sends topic and delivered at ``at_ms``."""
    return {"send_id": send_id, "dispatched_at": iso(at_ms)}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def rows_for(record: Record, received_at: int | None = None) -> tuple[str, dict[str, Any]]:
    """``(raw table, JSON-ready row)`` for ``INSERT INTO db.table FORMAT JSONEachRow``.

    ``received_at`` (epoch ms; default: now) stamps dead letters and duplicates, which
    carry no engine time of their own; it is not part of their id.
    """
    match record:
        case Decision():
            return DECISIONS, {
                "decision_id": record.decision_id, "send_id": record.send_id,
                "customer_id": record.customer_id, "trigger_id": record.trigger_id,
                "trigger_kind": record.trigger_kind, "config_version": record.config_version,
                "instance_id": record.instance_id, "step": record.step,
                "channel": record.channel, "template": record.template,
                "variant": record.variant, "status": record.status, "reason": record.reason,
                "ts": iso(record.ts), "decided_at": iso(record.decided_at),
                "detail": record.detail,
            }
        case Send():
            variables = orjson.dumps(record.variables, default=str,
                                     option=orjson.OPT_SORT_KEYS).decode()
            return SENDS, {
                "send_id": record.send_id, "customer_id": record.customer_id,
                "trigger_id": record.trigger_id, "trigger_kind": record.trigger_kind,
                "config_version": record.config_version, "instance_id": record.instance_id,
                "step": record.step, "channel": record.channel, "template": record.template,
                "variant": record.variant, "variables": variables,
                "ts": iso(record.ts), "decided_at": iso(record.decided_at),
            }
        case Lifecycle():
            return LIFECYCLE, {
                "lifecycle_id": record.lifecycle_id, "customer_id": record.customer_id,
                "trigger_id": record.trigger_id, "instance_id": record.instance_id,
                "instance_key": record.instance_key, "action": record.action,
                "reason": record.reason, "event_id": record.event_id,
                "ts": iso(record.ts), "decided_at": iso(record.decided_at),
            }
        case Conversion():
            return CONVERSIONS, {
                "conversion_id": record.conversion_id, "customer_id": record.customer_id,
                "order_id": record.order_id, "revenue": record.revenue,
                "currency": record.currency, "send_id": record.send_id,
                "trigger_id": record.trigger_id, "variant": record.variant,
                "channel": record.channel, "sent_at": iso(record.sent_at), "ts": iso(record.ts),
                "arm": record.arm,
            }
        case Outcome():
            return OUTCOMES, {
                "outcome_id": record.outcome_id, "send_id": record.send_id,
                "customer_id": record.customer_id, "channel": record.channel,
                "outcome": record.outcome, "trigger_id": record.trigger_id,
                "variant": record.variant, "step": record.step,
                "sent_at": iso(record.sent_at), "ts": iso(record.ts),
            }
        case Duplicate():
            return REJECTED, {
                "rejected_id": duplicate_id(record), "reason": DUPLICATE,
                "detail": f"event_id {record.event_id!r} already seen for this customer",
                "raw": "", "source": record.source, "customer_id": record.customer_id,
                "event_id": record.event_id, "event_type": record.event_type,
                "event_ts": iso(record.ts),
                "received_at": iso(_now_ms() if received_at is None else received_at),
            }
        case StartMiss():
            return START_MISSES, {
                "miss_id": record.miss_id, "customer_id": record.customer_id,
                "trigger_id": record.trigger_id, "reason": record.reason,
                "day": time.strftime("%Y-%m-%d", time.gmtime(record.day * 86_400)),
                "count": record.count, "first_ts": iso(record.first_ts),
                "last_ts": iso(record.last_ts),
            }
        case Rejected():
            return REJECTED, {
                "rejected_id": rejected_id(record), "reason": record.reason,
                "detail": record.detail, "raw": _text(record.raw), "source": record.source,
                "customer_id": record.customer_id, "event_id": record.event_id,
                "event_type": record.event_type, "event_ts": None,
                "received_at": iso(_now_ms() if received_at is None else received_at),
            }
    raise TypeError(f"no ClickHouse table for {type(record).__name__}")
