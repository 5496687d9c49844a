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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sinks.catalogue import (  # noqa: F401  (re-exported: the sinks' one import)
    BY_NAME,
    CONVERSIONS,
    DECISIONS,
    DISPATCHED,
    INPUTS,
    LC,
    LIFECYCLE,
    OUTCOMES,
    REJECTED,
    SEGMENT_CHANGES,
    SENDS,
    START_MISSES,
    TABLES,
    TIME,
    Record,
    Table,
    dispatched_row,
    duplicate_id,
    record_id,
    rejected_id,
    rows_for,
    table_for,
)

SCHEMA_MIGRATIONS = "schema_migrations"  # which numbered migrations a database has had
RAW_TABLES = (*(t.name for t in TABLES), SCHEMA_MIGRATIONS)

DEDUP_VIEWS = {t.name: t.view for t in TABLES if t.view}
COUNTED_VIEWS = {START_MISSES: "start_misses"}  # one row per id, the highest count
ANALYST_VIEWS = ("trigger_funnel_daily", "suppression_reasons", "channel_summary",
                 "cascade_efficiency", "open_hour_heatmap", "conversions_by_arm",
                 "variant_lift", "send_facts", "trigger_summary", "conversion_funnel",
                 "chain_effectiveness", "delivery_daily", "delivery_current", "delivery_report",
                 "open_rate_by_hour", "open_hour_local", "contact_quality", "cascade_moves",
                 "customer_history", "segment_membership", "rfm_segments",
                 "segment_daily", "branch_funnel")
#: Analyst views on ``send_facts`` must follow it (views are created in this order).
ASSIST_WINDOW_DAYS = 7  # a chain's send this long before an order credited elsewhere assists it
ANALYST_ROLE = "cdp_analyst"
ANALYST_USER = "analyst"

# Arms (``conversions.arm``): ``treated`` = really sent, the only arm credited with revenue;
# ``control`` / ``holdout`` = "would have sent" (control variant / global holdout), counted
# only in their own arm. A conversion row written before the column existed reads ``''``
# and is left out of every arm-based view.
TREATED = "treated"


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


def _local(col: str, fmt: str, tz: str = "tz") -> str:
    """Hour (``%H``) or ISO weekday (``%u``) of ``col`` in the row's time zone ('' = UTC).

    ``toTimezone``/``toHour`` want a constant zone (a per-row zone is silently ignored or
    refused); ``formatDateTime`` takes one per row on ClickHouse ≥ 23.9 and chdb."""
    return f"toUInt8(formatDateTime({col}, '{fmt}', if({tz} = '', 'UTC', {tz})))"


def _send_facts(db: str) -> str:
    return f"""
SELECT s.send_id AS send_id, s.customer_id AS customer_id,
       toString(s.trigger_id) AS trigger_id, toString(s.trigger_kind) AS trigger_kind,
       s.instance_id AS instance_id, s.step AS step, toString(s.channel) AS channel,
       toString(s.template) AS template, toString(s.variant) AS variant,
       s.ts AS ts, toDate(s.ts) AS day, toString(s.tz) AS tz,
       {_local("s.ts", "%H", "s.tz")} AS local_hour,
       {_local("s.ts", "%u", "s.tz")} AS local_weekday,
       toUInt8(o.delivered OR o.opened OR o.clicked) AS delivered,
       toUInt8(o.opened OR o.clicked) AS opened,
       toUInt8(o.clicked) AS clicked, toUInt8(o.bounced) AS bounced,
       toUInt8(o.failed) AS failed,
       toUInt8(o.delivered OR o.opened OR o.clicked OR o.bounced OR o.failed) AS receipted,
       o.first_receipt_at AS first_receipt_at,
       toUInt8(c.n > 0) AS converted, c.revenue AS revenue
FROM {db}.sends AS s
LEFT JOIN (
    SELECT send_id,
           max(outcome = 'delivered') AS delivered, max(outcome = 'opened') AS opened,
           max(outcome = 'clicked') AS clicked, max(outcome = 'bounced') AS bounced,
           max(outcome = 'failed') AS failed, min(ts) AS first_receipt_at
    FROM {db}.outcomes GROUP BY send_id
) AS o USING (send_id)
LEFT JOIN (
    SELECT send_id, count() AS n, sum(revenue) AS revenue
    FROM {db}.conversions WHERE arm = '{TREATED}' GROUP BY send_id
) AS c USING (send_id)"""


_RECEIPTS = """count() AS sent,
       sum(delivered) AS delivered, sum(opened) AS opened, sum(clicked) AS clicked,
       sum(bounced) AS bounced, sum(failed) AS failed"""


def _trigger_summary(db: str) -> str:
    return f"""
SELECT d.trigger_id AS trigger_id, d.trigger_kind AS trigger_kind,
       d.considered AS messages_considered, d.sent AS messages_sent,
       d.suppressed AS messages_suppressed, d.cancelled AS messages_cancelled,
       d.customers_reached AS customers_reached,
       f.delivered AS delivered, f.opened AS opened, f.clicked AS clicked,
       f.converted AS conversions, f.revenue AS revenue,
       if(d.sent > 0, f.converted / d.sent, 0) AS conversion_rate
FROM (
    SELECT toString(trigger_id) AS trigger_id, any(toString(trigger_kind)) AS trigger_kind,
           count() AS considered, countIf(status = 'sent') AS sent,
           countIf(status = 'suppressed') AS suppressed,
           countIf(status = 'cancelled') AS cancelled,
           uniqExactIf(customer_id, status = 'sent') AS customers_reached
    FROM {db}.decisions GROUP BY trigger_id
) AS d
LEFT JOIN (
    SELECT trigger_id, sum(delivered) AS delivered, sum(opened) AS opened,
           sum(clicked) AS clicked, sum(converted) AS converted, sum(revenue) AS revenue
    FROM {db}.send_facts GROUP BY trigger_id
) AS f USING (trigger_id)"""


def _conversion_funnel(db: str) -> str:
    return f"""
SELECT day, trigger_id, variant, channel, {_RECEIPTS},
       sum(converted) AS converted, sum(revenue) AS revenue,
       if(sent > 0, delivered / sent, 0) AS delivery_rate,
       if(delivered > 0, opened / delivered, 0) AS open_rate,
       if(opened > 0, clicked / opened, 0) AS click_rate,
       if(sent > 0, converted / sent, 0) AS conversion_rate
FROM {db}.send_facts
GROUP BY day, trigger_id, variant, channel"""


def _effectiveness(db: str) -> str:
    return f"""
SELECT s.trigger_id AS trigger_id, s.trigger_kind AS trigger_kind, s.sends AS sends,
       s.customers AS customers_reached,
       a.orders AS attributed_orders, a.revenue AS attributed_revenue,
       x.orders AS assisted_orders, x.revenue AS assisted_revenue
FROM (
    SELECT trigger_id, any(trigger_kind) AS trigger_kind, count() AS sends,
           uniqExact(customer_id) AS customers
    FROM {db}.send_facts GROUP BY trigger_id
) AS s
LEFT JOIN (
    SELECT toString(trigger_id) AS trigger_id, uniqExact(order_id) AS orders,
           sum(revenue) AS revenue
    FROM {db}.conversions WHERE arm = '{TREATED}' GROUP BY trigger_id
) AS a USING (trigger_id)
LEFT JOIN (
    SELECT trigger_id, count() AS orders, sum(revenue) AS revenue
    FROM (
        SELECT DISTINCT toString(s.trigger_id) AS trigger_id, c.order_id AS order_id,
               c.revenue AS revenue
        FROM {db}.sends AS s
        INNER JOIN (
            SELECT customer_id, order_id, revenue, ts AS order_ts,
                   toString(trigger_id) AS credited
            FROM {db}.conversions WHERE arm = '{TREATED}'
        ) AS c ON s.customer_id = c.customer_id
        WHERE s.ts <= c.order_ts AND s.ts >= c.order_ts - INTERVAL {ASSIST_WINDOW_DAYS} DAY
          AND toString(s.trigger_id) != c.credited
    )
    GROUP BY trigger_id
) AS x USING (trigger_id)"""


def _delivery_daily(db: str) -> str:
    return f"""
SELECT day, channel, trigger_id, {_RECEIPTS},
       if(sent > 0, delivered / sent, 0) AS delivery_rate
FROM {db}.send_facts
GROUP BY day, channel, trigger_id"""


def _delivery_current(db: str) -> str:
    return f"""
SELECT trigger_id, channel, {_RECEIPTS},
       sent - sum(receipted) AS awaiting_receipt,
       min(ts) AS since, max(ts) AS until
FROM {db}.send_facts
WHERE ts > (SELECT max(ts) FROM {db}.sends) - INTERVAL 1 DAY
GROUP BY trigger_id, channel"""


def _delivery_report(db: str) -> str:
    return f"""
SELECT trigger_id, channel, template, {_RECEIPTS},
       sent - sum(receipted) AS no_receipt,
       if(sent > 0, delivered / sent, 0) AS delivery_rate,
       if(sent > 0, bounced / sent, 0) AS bounce_rate,
       if(sent > 0, failed / sent, 0) AS failure_rate
FROM {db}.send_facts
GROUP BY trigger_id, channel, template"""


def _open_rate_by_hour(db: str) -> str:
    return f"""
SELECT channel, local_weekday AS weekday, local_hour AS hour, {_RECEIPTS},
       if(delivered > 0, opened / delivered, 0) AS open_rate
FROM {db}.send_facts
GROUP BY channel, weekday, hour"""


def _open_hour_local(db: str) -> str:
    return f"""
SELECT toString(o.channel) AS channel, {_local("o.ts", "%u", "s.tz")} AS weekday,
       {_local("o.ts", "%H", "s.tz")} AS hour, count() AS opens
FROM {db}.outcomes AS o
LEFT JOIN (SELECT send_id, toString(tz) AS tz FROM {db}.sends) AS s USING (send_id)
WHERE o.outcome = 'opened'
GROUP BY channel, weekday, hour"""


def _contact_quality(db: str) -> str:
    return f"""
SELECT channel, issue, count() AS events, uniqExact(customer_id) AS customers
FROM (
    SELECT toString(channel) AS channel, toString(reason) AS issue, customer_id
    FROM {db}.decisions WHERE reason IN ('no_contact', 'contact_invalid')
    UNION ALL
    SELECT toString(channel), 'bounced', customer_id
    FROM {db}.outcomes WHERE outcome = 'bounced'
)
GROUP BY channel, issue"""


# One row per (instance, step, channel) in the order the cascade tried them: the earliest
# decision first; at the same instant a channel not sent comes before the one that was
# (skips happen on the way to the channel that sends), then by name. A sent channel followed
# by another moved on for a bounce, a failure, or a timeout (no success receipt in time: the
# step's success receipt may be an open or a click, so a delivered message can time out).
def _cascade_moves(db: str) -> str:
    return f"""
SELECT trigger_id, step, channel, next_channel, outcome, move_reason,
       count() AS messages, uniqExact(customer_id) AS customers
FROM (
    SELECT trigger_id, step, customer_id,
           tupleElement(t, 3) AS channel,
           if(i < length(tries), tupleElement(tries[i + 1], 3), '') AS next_channel,
           tupleElement(t, 2) AS was_sent, tupleElement(t, 4) AS reason,
           tupleElement(t, 5) AS ok, tupleElement(t, 6) AS bounced,
           tupleElement(t, 7) AS failed,
           multiIf(next_channel != '', 'moved', ok, 'success', 'last_channel') AS outcome,
           multiIf(next_channel = '', '',
                   NOT was_sent AND reason IN ('no_contact', 'contact_invalid'), 'no_contact',
                   NOT was_sent, reason, bounced, 'bounce', failed, 'failure',
                   'timeout') AS move_reason
    FROM (
        SELECT d.trigger_id AS trigger_id, d.step AS step, any(d.customer_id) AS customer_id,
               arraySort(groupArray((d.first_ts, d.sent, d.channel, d.last_reason, o.ok,
                                     o.bounced, o.failed))) AS tries
        FROM (
            SELECT instance_id, toString(trigger_id) AS trigger_id, step,
                   toString(channel) AS channel, any(customer_id) AS customer_id,
                   min(ts) AS first_ts, max(status = 'sent') AS sent,
                   argMax(toString(reason), ts) AS last_reason,
                   anyIf(send_id, status = 'sent') AS sent_id
            FROM {db}.decisions
            WHERE toString(reason) NOT IN ('control_group', 'holdout')
            GROUP BY instance_id, trigger_id, step, channel
        ) AS d
        LEFT JOIN (
            SELECT send_id, max(outcome IN ('delivered', 'opened', 'clicked')) AS ok,
                   max(outcome = 'bounced') AS bounced, max(outcome = 'failed') AS failed
            FROM {db}.outcomes GROUP BY send_id
        ) AS o ON d.sent_id = o.send_id
        GROUP BY d.instance_id, trigger_id, step
    )
    ARRAY JOIN tries AS t, arrayEnumerate(tries) AS i
)
GROUP BY trigger_id, step, channel, next_channel, outcome, move_reason"""


_HISTORY_RANK = {"input": 0, "lifecycle": 1, "decision": 2, "send": 3, "receipt": 4,
                 "conversion": 5}


def _history(db: str) -> str:
    r = _HISTORY_RANK
    return f"""
SELECT customer_id, ts, kind, trigger_id, instance_id, step, channel, what, reason,
       detail, send_id, revenue,
       (ts, kind_rank, step, tie, channel, id) AS sort_key
FROM (
    SELECT customer_id, ts, ts AS decided_at, 'input' AS kind, {r["input"]} AS kind_rank,
           '' AS trigger_id, '' AS instance_id, toUInt16(0) AS step, '' AS channel,
           toString(type) AS what, toString(effect) AS reason,
           concat('event ', event_id, ' ', props) AS detail, '' AS send_id,
           toDecimal128(0, 4) AS revenue, toUInt8(0) AS tie, event_id AS id
    FROM {db}.inputs
    UNION ALL
    SELECT customer_id, ts, decided_at, 'lifecycle', {r["lifecycle"]},
           toString(trigger_id), instance_id, toUInt16(0), '', toString(action),
           toString(reason), if(event_id = '', '', concat('event ', event_id)), '',
           toDecimal128(0, 4), toUInt8(0), lifecycle_id
    FROM {db}.lifecycle
    UNION ALL
    SELECT customer_id, ts, decided_at, 'decision', {r["decision"]}, toString(trigger_id),
           instance_id, step, toString(channel), toString(status), toString(reason), detail,
           send_id, toDecimal128(0, 4), toUInt8(status = 'sent'), decision_id
    FROM {db}.decisions
    UNION ALL
    SELECT customer_id, ts, decided_at, 'send', {r["send"]}, toString(trigger_id),
           instance_id, step, toString(channel), toString(template), toString(variant), '',
           send_id, toDecimal128(0, 4), toUInt8(1), send_id
    FROM {db}.sends
    UNION ALL
    SELECT customer_id, ts, ts, 'receipt', {r["receipt"]}, toString(trigger_id), '',
           toUInt16(greatest(step, 0)), toString(channel), toString(outcome), '', '',
           send_id, toDecimal128(0, 4),
           toUInt8(indexOf(['delivered', 'opened', 'clicked', 'bounced', 'failed',
                            'unsubscribed'], toString(outcome))), outcome_id
    FROM {db}.outcomes
    UNION ALL
    SELECT customer_id, ts, ts, 'conversion', {r["conversion"]}, toString(trigger_id), '',
           toUInt16(0), toString(channel), toString(arm), concat('order ', order_id), '',
           send_id, toDecimal128(revenue, 4), toUInt8(0), conversion_id
    FROM {db}.conversions
)"""


def _segment_membership(db: str) -> str:
    """Current members: each customer × segment whose latest change entered it."""
    return f"""
SELECT customer_id, segment, last_ts AS since
FROM (SELECT customer_id, toString(segment) AS segment,
             argMax(action, ts) AS last_action, max(ts) AS last_ts
      FROM {db}.segment_changes GROUP BY customer_id, segment)
WHERE last_action = 'entered'"""


RFM_PREFIX = "rfm_"  # config/segments/rfm_<segment>.yaml: one segment per RFM segment


def _rfm_segments(db: str) -> str:
    """Customers per RFM segment now (the rfm_* segments' current members)."""
    return f"""
SELECT substring(segment, {len(RFM_PREFIX) + 1}) AS rfm_segment, count() AS customers
FROM {db}.segment_membership WHERE startsWith(segment, '{RFM_PREFIX}')
GROUP BY rfm_segment"""


def _segment_daily(db: str) -> str:
    """Day × segment: customers who entered and who left (membership dynamics)."""
    return f"""
SELECT toDate(ts) AS day, toString(segment) AS segment,
       countIf(action = 'entered') AS entered, countIf(action = 'left') AS left
FROM {db}.segment_changes GROUP BY day, segment"""


# ---------------------------------------------------------------- migrations, retention, roles

#: Numbered migrations: (version, name, statements(db)). Every statement is idempotent, so a
#: database that had a migration before it was recorded (or a rerun) is left as it is.
Migration = tuple[int, str, Callable[[str], list[str]]]


def _branch_funnel(db: str) -> str:
    """Per trigger × branch taken (from step id → to step id | end): instances, and the
    target step's messages — sent, opened, clicked, converted, revenue. The target step is
    the instance's first step decided at or after the branch (steps only move forward; a
    delay-0 target decided in the very millisecond its branching step was may be mistaken
    for it)."""
    return f"""
SELECT b.trigger_id AS trigger_id, b.from_step AS from_step, b.to_step AS to_step,
       count() AS instances, countIf(f.sent > 0) AS instances_sent,
       sum(f.sent) AS sent, sum(f.opened) AS opened, sum(f.clicked) AS clicked,
       sum(f.converted) AS converted, sum(f.revenue) AS revenue,
       if(sent > 0, opened / sent, 0) AS open_rate,
       if(instances > 0, converted / instances, 0) AS conversion_rate
FROM (
    SELECT br.trigger_id AS trigger_id, br.instance_id AS instance_id,
           br.from_step AS from_step, br.to_step AS to_step,
           if(countIf(st.first_ts >= br.ts AND br.to_step != 'end') > 0,
              minIf(toInt32(st.step), st.first_ts >= br.ts AND br.to_step != 'end'),
              -1) AS target_step
    FROM (
        SELECT toString(trigger_id) AS trigger_id, instance_id, ts,
               splitByString('→', toString(reason))[1] AS from_step,
               splitByString('→', toString(reason))[2] AS to_step
        FROM {db}.lifecycle WHERE action = 'branched'
    ) AS br
    LEFT JOIN (
        SELECT instance_id, step, min(ts) AS first_ts FROM {db}.decisions
        GROUP BY instance_id, step
    ) AS st ON st.instance_id = br.instance_id
    GROUP BY br.trigger_id, br.instance_id, br.from_step, br.to_step, br.ts
) AS b
LEFT JOIN (
    SELECT instance_id, toInt32(step) AS step, count() AS sent, sum(opened) AS opened,
           sum(clicked) AS clicked, sum(converted) AS converted, sum(revenue) AS revenue
    FROM {db}.send_facts GROUP BY instance_id, step
) AS f ON f.instance_id = b.instance_id AND f.step = b.target_step
GROUP BY b.trigger_id, b.from_step, b.to_step"""


def _create(db: str, table: Table) -> str:
    """CREATE TABLE with the columns of the table's own migration (later ones are added)."""
    body = ",\n    ".join(c.ddl for c in table.columns if c.since <= table.since)
    part = f"\nPARTITION BY {table.partition_by}" if table.partition_by else ""
    return (f"CREATE TABLE IF NOT EXISTS {db}.{table.name} (\n    {body}\n)\n"
            f"ENGINE = ReplacingMergeTree(inserted_at){part}\nORDER BY {table.order_by}")


def _migration(version: int) -> Callable[[str], list[str]]:
    """Migration ``version`` from the catalogue: the tables it creates, then the columns it
    adds to older tables (``ADD COLUMN IF NOT EXISTS``, appended in catalogue order)."""
    def statements(db: str) -> list[str]:
        out = [_create(db, t) for t in TABLES if t.since == version]
        out += [f"ALTER TABLE {db}.{t.name} ADD COLUMN IF NOT EXISTS {c.ddl}"
                for t in TABLES if t.since <= version for c in t.columns
                if c.since == version and c.altered]
        return out
    return statements


#: Numbered migrations: (version, name, statements(db)), derived from the catalogue's
#: ``since`` marks. Every statement is idempotent, so a database that had a migration before
#: it was recorded (or a rerun) is left as it is.
Migration = tuple[int, str, Callable[[str], list[str]]]
MIGRATIONS: list[Migration] = [
    (1, "tables, conversion arms", _migration(1)),
    (2, "customer time zone on decisions and sends", _migration(2)),
    (3, "input events that mattered (customer history)", _migration(3)),
    (4, "segment membership changes", _migration(4)),
]


@dataclass(frozen=True)
class Retention:
    """How long dead letters live, and their raw payloads (which may hold contacts) within;
    stored input events (``raw_inputs``) live ``raw_days``.

    ``raw_days=None``: a payload lives as long as its dead letter."""

    dead_letter_days: int = 30
    raw_days: int | None = None

    def __post_init__(self) -> None:
        if self.dead_letter_days < 1 or (self.raw_days is not None and self.raw_days < 1):
            raise ValueError("retention days must be at least 1")

    @classmethod
    def from_settings(cls) -> Retention:
        """``CDP_DEAD_LETTER_TTL_DAYS`` / ``CDP_RAW_TTL_DAYS`` (see Settings)."""
        from cdp_triggers.settings import Settings

        s = Settings()
        return cls(s.dead_letter_ttl_days, s.raw_ttl_days)


def retention_statements(db: str, retention: Retention) -> list[str]:
    """TTLs of the tables the catalogue marks (dead letters; raw inputs, which live as long
    as raw payloads) and of the dead letters' ``raw`` column, counted from when a row was
    stored (``inserted_at``: a backfill of old events keeps its rows the full time);
    re-applied on every start so a changed setting reaches existing databases."""
    raw_days = min(retention.raw_days or retention.dead_letter_days,
                   retention.dead_letter_days)
    days = {"dead_letter": retention.dead_letter_days,
            "raw": retention.raw_days or retention.dead_letter_days}
    at = "toDateTime(inserted_at)"
    return [
        *(f"ALTER TABLE {db}.{t.name} MODIFY TTL {at} + INTERVAL {days[t.ttl]} DAY"
          for t in TABLES if t.ttl),
        f"ALTER TABLE {db}.{REJECTED} MODIFY COLUMN raw String TTL {at} + INTERVAL "
        f"{raw_days} DAY",
    ]


def analyst_statements(database: str, password: str, user: str = ANALYST_USER) -> list[str]:
    """A read-only analyst: role ``cdp_analyst`` (SELECT on the database, nothing else) and
    a user holding it with ``readonly = 2`` (no writes or DDL; per-query settings allowed,
    which Grafana's plugin sends). Servers only: run as a user with access management;
    chdb has no user directory (see :func:`apply_analyst_role`). Compose loads the same
    user from ``deploy/clickhouse/users.d/analyst.xml``."""
    if not (database.isidentifier() and user.isidentifier()):
        raise ValueError("database and user must be plain identifiers")
    pw = password.replace("\\", "\\\\").replace("'", "\\'")
    return [
        f"CREATE ROLE IF NOT EXISTS {ANALYST_ROLE}",
        f"GRANT SELECT ON {database}.* TO {ANALYST_ROLE}",
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY '{pw}' "
        f"SETTINGS readonly = 2",
        f"GRANT {ANALYST_ROLE} TO {user}",
        f"ALTER USER {user} DEFAULT ROLE {ANALYST_ROLE}",
    ]


def apply_analyst_role(backend: Any, database: str, password: str) -> bool:
    """Create the analyst role and user on a server; on chdb (no user directory) do nothing
    and return False."""
    if type(backend).__name__ == "ChdbBackend":
        return False
    for sql in analyst_statements(database, password):
        backend.command(sql)
    return True


def ddl_statements(database: str, retention: Retention | None = None,
                   applied: frozenset[int] | set[int] = frozenset()) -> list[str]:
    """Every statement that brings ``database`` up to date, in order; each is idempotent.

    The schema is :data:`MIGRATIONS`, applied in version order, skipping the versions in
    ``applied`` (what ``schema_migrations`` already records, see :func:`applied_versions`):
    tables use ``IF NOT EXISTS`` (never dropped), later columns ``ADD COLUMN IF NOT
    EXISTS``; each migration is then recorded unless it already is, so applying twice
    changes nothing. Then the TTLs (``retention``, default: from the settings) and the
    views, with ``CREATE OR REPLACE`` so a new definition reaches existing databases.
    """
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    db = database
    out = [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.{SCHEMA_MIGRATIONS} (\n"
        f"    version UInt32, name String, applied_at {TIME} DEFAULT now64(3)\n)\n"
        f"ENGINE = ReplacingMergeTree\nORDER BY version",
    ]
    for version, name, statements in MIGRATIONS:
        if version in applied:
            continue
        out.extend(statements(db))
        out.append(f"INSERT INTO {db}.{SCHEMA_MIGRATIONS} (version, name) "
                   f"SELECT {version}, '{name}' WHERE {version} NOT IN "
                   f"(SELECT version FROM {db}.{SCHEMA_MIGRATIONS})")
    out.extend(retention_statements(db, retention or Retention.from_settings()))
    for table, view in DEDUP_VIEWS.items():
        out.append(f"CREATE OR REPLACE VIEW {db}.{view} AS SELECT * FROM {db}.{table} FINAL")
    out.append(f"""CREATE OR REPLACE VIEW {db}.{COUNTED_VIEWS[START_MISSES]} AS
SELECT miss_id, any(customer_id) AS customer_id, any(trigger_id) AS trigger_id,
       any(reason) AS reason, any(day) AS day, max(count) AS count,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts
FROM {db}.{START_MISSES} GROUP BY miss_id""")
    bodies = (_funnel, _suppression, _channels, _cascade, _heatmap, _by_arm, _lift,
              _send_facts, _trigger_summary, _conversion_funnel, _effectiveness,
              _delivery_daily, _delivery_current, _delivery_report, _open_rate_by_hour,
              _open_hour_local, _contact_quality, _cascade_moves, _history,
              _segment_membership, _rfm_segments, _segment_daily, _branch_funnel)
    for view, body in zip(ANALYST_VIEWS, bodies, strict=True):
        out.append(f"CREATE OR REPLACE VIEW {db}.{view} AS{body(db)}")
    return out


def applied_versions_sql(database: str) -> str:
    """The query for the migration versions a database has recorded (its table may be
    missing: ask ``system.tables`` first, see ``sinks.clickhouse.ensure_schema``)."""
    return f"SELECT version FROM {database}.{SCHEMA_MIGRATIONS} FINAL"


def migration_versions() -> list[int]:
    """The versions a database up to date has recorded in ``schema_migrations``."""
    return [m[0] for m in MIGRATIONS]


def columns(table: str) -> list[str]:
    """Column names of a raw table once migrated (including the server-filled
    ``inserted_at``)."""
    return BY_NAME[table].column_names()
