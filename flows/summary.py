"""The demo's closing figures, read back from ClickHouse (what analysts would see).

Data only: :func:`demo_summary` returns a :class:`DemoSummary`; the CLI prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdp_triggers.events import DUPLICATE
from flows.demo import DemoResult
from sinks.clickhouse import ClickHouseBackend


@dataclass(frozen=True)
class LiftRow:
    """One arm of a marketing trigger: customers, converted, and the lift of a treated
    variant vs control and holdout (``+1.2 [-0.3, +2.7]`` percentage points, 95 % CI)."""

    trigger_id: str
    arm: str  # "treated A", "control", "holdout"
    customers: int
    converted: int
    rate: float
    vs_control: str
    vs_holdout: str


@dataclass
class DemoSummary:
    """``rows``: (label, value) lines, sub-items indented; ``balance``: the balance sentence;
    ``balanced``: read = accepted + rejected + duplicates; ``lift``: per trigger and arm."""

    rows: list[tuple[str, str]]
    balance: str
    balanced: bool
    lift: list[LiftRow] = field(default_factory=list)


def demo_summary(backend: ClickHouseBackend, db: str, r: DemoResult) -> DemoSummary:
    """The demo's figures from ClickHouse; ``balanced`` when the counts balance
    (read = accepted + rejected + duplicates, as many bad and duplicates as generated)."""

    def one(sql: str) -> int | float:
        rows = backend.query_rows(sql)
        return rows[0][0] if rows else 0

    rejected = one(f"SELECT count() FROM {db}.rejected_events WHERE reason != '{DUPLICATE}'")
    dups = one(f"SELECT count() FROM {db}.rejected_events WHERE reason = '{DUPLICATE}'")
    accepted = r.read - rejected - dups
    life = dict(backend.query_rows(f"SELECT action, count() FROM {db}.lifecycle GROUP BY action"))
    status = dict(backend.query_rows(f"SELECT status, count() FROM {db}.decisions GROUP BY status"))
    reasons = backend.query_rows(
        f"SELECT reason, count() AS n FROM {db}.decisions WHERE status = 'suppressed' "
        f"GROUP BY reason ORDER BY n DESC, reason")
    sends = one(f"SELECT count() FROM {db}.sends")
    conv = backend.query_rows(  # credited: sent messages only
        f"SELECT count(), sum(revenue) FROM {db}.conversions WHERE arm = 'treated'")[0]
    unsent = dict(backend.query_rows(
        f"SELECT arm, count() FROM {db}.conversions WHERE arm IN ('control', 'holdout') "
        f"GROUP BY arm"))
    by_channel = backend.query_rows(
        f"SELECT channel, count() FROM {db}.sends GROUP BY channel ORDER BY channel")
    by_trigger = backend.query_rows(
        f"SELECT trigger_id, count() FROM {db}.sends GROUP BY trigger_id ORDER BY trigger_id")
    cascaded = one(f"SELECT count() FROM (SELECT instance_id, step FROM {db}.sends "
                   f"GROUP BY instance_id, step HAVING count() > 1)")
    outcomes = dict(backend.query_rows(
        f"SELECT outcome, count() FROM {db}.outcomes GROUP BY outcome"))
    deferred = dict(backend.query_rows(
        f"SELECT reason, count() FROM {db}.decisions WHERE status = 'deferred' GROUP BY reason"))
    balanced = rejected == r.generated_bad and dups == r.generated_duplicates

    rows = [
        ("events read", f"{r.read:,}"),
        ("  accepted", f"{accepted:,}"),
        ("  rejected (dead letters)", f"{rejected:,}"),
        ("  duplicates dropped", f"{dups:,}"),
        ("triggers started", f"{life.get('started', 0):,}"),
        ("  cancelled", f"{life.get('cancelled', 0):,}"),
        ("  completed", f"{life.get('completed', 0):,}"),
        ("messages sent", f"{sends:,}"),
        *((f"  {t}", f"{n:,}") for t, n in by_trigger),
        ("  by channel", ", ".join(f"{c} {n:,}" for c, n in by_channel)),
        ("  cascaded to a next channel", f"{cascaded:,} step(s)"),
        ("  suppressed", f"{status.get('suppressed', 0):,}"),
        *((f"    {reason}", f"{n:,}") for reason, n in reasons),
        ("  deferred", ", ".join(f"{r} {n:,}" for r, n in sorted(deferred.items())) or "0"),
        ("receipts", ", ".join(f"{k} {outcomes[k]:,}" for k in sorted(outcomes)) or "0"),
        ("conversions", f"{conv[0]:,} (revenue {float(conv[1] or 0):,.2f}, sent messages)"),
        ("  not credited", f"control {unsent.get('control', 0):,}, "
                           f"holdout {unsent.get('holdout', 0):,}"),
        ("profiles from", r.profiles_from),
        ("throughput", f"{r.read / max(r.seconds, 1e-9):,.0f} events/s ({r.seconds:.1f} s)"),
    ]
    balance = (f"counts {'balance' if balanced else 'DO NOT balance'}: read {r.read:,} = "
               f"accepted {accepted:,} + rejected {rejected:,} + duplicates {dups:,} "
               f"(generator made {r.generated_bad:,} bad, {r.generated_duplicates:,} "
               f"duplicates)")
    return DemoSummary(rows, balance, balanced, lift_rows(backend, db))


def _pp(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}"


def _vs(r: dict, base: str) -> str:
    """``+1.2 pp [-0.3, +2.7]``: absolute lift in percentage points with its 95 % interval."""
    if r[f"lift_vs_{base}"] is None:
        return "-"
    return (f"{_pp(r[f'lift_vs_{base}'])} [{_pp(r[f'lift_vs_{base}_ci_low'])}, "
            f"{_pp(r[f'lift_vs_{base}_ci_high'])}]")


def lift_rows(backend: ClickHouseBackend, db: str) -> list[LiftRow]:
    """Per marketing trigger and arm: customers, converted, rate, and the lift of each
    treated variant against control and holdout (percentage points, 95 % interval)."""
    cols, rows = backend.query(
        f"SELECT * FROM {db}.variant_lift ORDER BY trigger_id, "
        f"indexOf(['treated', 'control', 'holdout'], arm), variant")
    out = []
    for row in rows:
        r = dict(zip(cols, row, strict=True))
        arm = r["arm"] + (f" {r['variant']}" if r["arm"] != "holdout" else "")
        out.append(LiftRow(r["trigger_id"], arm, r["customers"], r["converted_customers"],
                           r["conversion_rate"], _vs(r, "control"), _vs(r, "holdout")))
    return out
