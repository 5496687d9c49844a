"""Arms never mix (issue 8): treated, control and holdout conversions each count only in
their own arm; revenue is credited to marketing only from sent messages; transactional
messages are not credited; `variant_lift` reports lift with a 95 % interval."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cdp_triggers.clock import DAY
from cdp_triggers.records import CONTROL_GROUP, HOLDOUT, Conversion, Decision, Send
from config.loader import load_config
from operators.engine import Engine
from operators.policy import assign_variant, in_holdout
from sinks.clickhouse import ChdbBackend, ensure_schema
from sinks.clickhouse_schema import ddl_statements, rows_for, table_for
from tests.engine_helpers import T0, ev, order, replay

# ---- records written straight to ClickHouse, numbers worked out by hand ------------------


def _d(i: int, cust: str, variant: str, status: str = "sent", reason: str = "",
       channel: str = "email", trigger: str = "cart", kind: str = "marketing",
       step: int = 0) -> Decision:
    return Decision(f"dec{i}", f"send{i}", cust, trigger, kind, "v1", f"inst-{cust}", step,
                    channel, "tpl", variant, status, reason, T0 + i, T0 + i)


def _s(d: Decision) -> Send:
    return Send(d.send_id, d.customer_id, d.trigger_id, d.trigger_kind, "v1", d.instance_id,
                d.step, d.channel, "tpl", d.variant, {}, d.ts, d.ts)


def _c(i: int, d: Decision, revenue: float, arm: str) -> Conversion:
    return Conversion(f"conv{i}", d.customer_id, f"order{i}", revenue, "EUR", d.send_id,
                      d.trigger_id, d.variant, d.channel, d.ts, d.ts + 60_000, arm)


def insert(backend: ChdbBackend, db: str, records: list[Any]) -> None:
    by_table: dict[str, list[dict]] = {}
    for r in records:
        try:
            table_for(r)
        except TypeError:  # ProfileUpdate etc.: not a ClickHouse row
            continue
        table, row = rows_for(r, received_at=T0)
        by_table.setdefault(table, []).append(row)
    for table, rows in by_table.items():
        backend.insert_json_rows(f"{db}.{table}", rows)


def lift_rows(backend: ChdbBackend, db: str, trigger: str = "cart") -> dict[tuple, dict]:
    cols, rows = backend.query(f"SELECT * FROM {db}.variant_lift "
                               f"WHERE trigger_id = '{trigger}' ORDER BY arm, variant")
    return {(r[1], r[2]): dict(zip(cols, r, strict=True)) for r in rows}


def sample() -> list[Any]:
    """cart: A treated a1..a4 (a1, a2 convert; a1 twice), B treated b1..b5 (b1), control
    c1..c4 (c1), holdout h1..h6 (h1; assigned variants A and B, pooled), plus noise that
    must not count: a suppressed A decision, second steps, a transactional send."""
    out: list[Any] = []
    n = iter(range(1000))
    a = [_d(next(n), f"a{k}", "A") for k in range(1, 5)]
    a2 = _d(next(n), "a1", "A", channel="sms", step=1)  # a1's second message
    b = [_d(next(n), f"b{k}", "B") for k in range(1, 6)]
    c = [_d(next(n), f"c{k}", "control", "suppressed", CONTROL_GROUP) for k in range(1, 5)]
    h = [_d(next(n), f"h{k}", "A" if k < 6 else "B", "suppressed", HOLDOUT)
         for k in range(1, 7)]
    noise = _d(next(n), "x1", "A", "suppressed", "no_consent")
    tx = _d(next(n), "a3", "", channel="sms", trigger="order_status", kind="transactional")
    out += [*a, a2, *b, *c, *h, noise, tx]
    out += [_s(d) for d in [*a, a2, *b, tx]]
    out += [_c(1, a[0], 10.0, "treated"), _c(2, a2, 5.0, "treated"),
            _c(3, a[1], 20.0, "treated"), _c(4, b[0], 7.0, "treated"),
            _c(5, c[0], 100.0, "control"), _c(6, h[0], 200.0, "holdout")]
    return out


def _ci(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float, float]:
    diff = p1 - p2
    half = 1.96 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return diff, diff - half, diff + half


def test_variant_lift_by_arm_with_confidence_interval(backend: ChdbBackend, db: str) -> None:
    insert(backend, db, sample())
    rows = lift_rows(backend, db)
    assert set(rows) == {("control", "control"), ("holdout", ""), ("treated", "A"),
                         ("treated", "B")}
    got = {k: (r["customers"], r["converted_customers"], float(r["revenue"]))
           for k, r in rows.items()}
    assert got == {("treated", "A"): (4, 2, 35.0), ("treated", "B"): (5, 1, 7.0),
                   ("control", "control"): (4, 1, 100.0), ("holdout", ""): (6, 1, 200.0)}
    for r in rows.values():
        assert r["converted_customers"] <= r["customers"]
        assert r["control_customers"] == 4 and r["holdout_customers"] == 6
        assert r["control_rate"] == pytest.approx(0.25, abs=1e-9)
        assert r["holdout_rate"] == pytest.approx(1 / 6, abs=1e-9)

    # by hand: A 2/4 = 0.5, B 1/5 = 0.2, control 1/4 = 0.25, holdout 1/6
    # A vs control: 0.25, relative 0.5/0.25 - 1 = 1.0,
    #   half width 1.96·sqrt(0.5·0.5/4 + 0.25·0.75/4) = 1.96·sqrt(0.109375) = 0.648209...
    expected = {
        "A": {"conversion_rate": 0.5,
              "control": (*_ci(0.5, 4, 0.25, 4), 1.0),
              "holdout": (*_ci(0.5, 4, 1 / 6, 6), 2.0)},
        "B": {"conversion_rate": 0.2,
              "control": (*_ci(0.2, 5, 0.25, 4), 0.2 / 0.25 - 1),
              "holdout": (*_ci(0.2, 5, 1 / 6, 6), 0.2 * 6 - 1)},
    }
    assert expected["A"]["control"][1] == pytest.approx(0.25 - 0.648209, abs=1e-6)
    assert expected["A"]["control"][2] == pytest.approx(0.25 + 0.648209, abs=1e-6)
    for variant, exp in expected.items():
        r = rows[("treated", variant)]
        assert r["conversion_rate"] == pytest.approx(exp["conversion_rate"], abs=1e-6)
        for base in ("control", "holdout"):
            diff, low, high, rel = exp[base]
            assert r[f"lift_vs_{base}"] == pytest.approx(diff, abs=1e-6)
            assert r[f"rel_lift_vs_{base}"] == pytest.approx(rel, abs=1e-6)
            assert r[f"lift_vs_{base}_ci_low"] == pytest.approx(low, abs=1e-6)
            assert r[f"lift_vs_{base}_ci_high"] == pytest.approx(high, abs=1e-6)
    for key in (("control", "control"), ("holdout", "")):  # no lift of an unsent arm
        r = rows[key]
        assert r["conversion_rate"] == pytest.approx(0.25 if key[0] == "control" else 1 / 6)
        assert all(r[f"{m}_vs_{b}{s}"] is None for m in ("lift", "rel_lift")
                   for b in ("control", "holdout") for s in ("", "_ci_low", "_ci_high")
                   if not (m == "rel_lift" and s))
    assert lift_rows(backend, db, "order_status") == {}  # transactional: no lift rows


def test_revenue_is_credited_only_to_sent_messages(backend: ChdbBackend, db: str) -> None:
    insert(backend, db, sample())
    cols, rows = backend.query(f"SELECT * FROM {db}.channel_summary ORDER BY channel")
    by = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert (by["email"]["conversions"], float(by["email"]["revenue"])) == (3, 37.0)
    assert (by["sms"]["conversions"], float(by["sms"]["revenue"])) == (1, 5.0)
    assert by["sms"]["messages_sent"] == 2  # the transactional one is sent, never credited
    rows = backend.query_rows(
        f"SELECT variant, sum(conversions), sum(revenue) FROM {db}.trigger_funnel_daily "
        f"GROUP BY variant HAVING sum(conversions) > 0 ORDER BY variant")
    assert [(v, n, float(r)) for v, n, r in rows] == [("A", 3, 35.0), ("B", 1, 7.0)]
    rows = backend.query_rows(
        f"SELECT arm, variant, sum(conversions), sum(converted_customers), sum(revenue) "
        f"FROM {db}.conversions_by_arm GROUP BY arm, variant ORDER BY arm, variant")
    assert [(*r[:4], float(r[4])) for r in rows] == [
        ("control", "control", 1, 1, 100.0), ("holdout", "A", 1, 1, 200.0),
        ("treated", "A", 3, 3, 35.0), ("treated", "B", 1, 1, 7.0)]  # a1: email + sms
    # every credited conversion points at a real send
    assert backend.query_rows(
        f"SELECT count() FROM {db}.conversions WHERE arm = 'treated' "
        f"AND send_id NOT IN (SELECT send_id FROM {db}.sends)") == [(0,)]


# ---- the pure engine ---------------------------------------------------------------------

VARIANTS = """
variants:
  - {id: a, weight: 45}
  - {id: b, weight: 45}
  - {id: control, weight: 10, control: true}
"""


def _engine(tmp_path: Path, triggers: dict[str, str], policy: str) -> Engine:
    (tmp_path / "triggers").mkdir(parents=True, exist_ok=True)
    (tmp_path / "policy.yaml").write_text(policy)
    for name, text in triggers.items():
        (tmp_path / "triggers" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return Engine(load_config(tmp_path))


def _trig(id_: str, start: str, kind: str = "marketing", extra: str = "") -> str:
    return (f"id: {id_}\nkind: {kind}\nstart: {{event: {start}}}\n"
            f"steps:\n  - template: {id_}\n    channels: [email]\n{extra}")


def test_holdout_order_is_attributed_to_the_holdout_arm(tmp_path: Path) -> None:
    eng = _engine(tmp_path, {"m": _trig("m", "x", extra=VARIANTS)},
                  "late_event_grace: 0s\nholdout_percent: 50\n")
    t, policy = eng.config.trigger("m"), eng.config.policy
    cands = [f"c{i}" for i in range(400)]
    held = next(c for c in cands if in_holdout(policy, c) and assign_variant(t, c).id == "a")
    treated = next(c for c in cands
                   if not in_holdout(policy, c) and assign_variant(t, c).id == "a")
    control = next(c for c in cands if not in_holdout(policy, c)
                   and assign_variant(t, c).control)
    events = [x for c in (held, treated, control) for x in (ev("x", 0, c), order(60, c))]
    out = replay(eng, events, T0 + DAY)
    conv = {o.customer_id: (o.arm, o.variant) for o in out if isinstance(o, Conversion)}
    assert conv == {held: ("holdout", "a"), treated: ("treated", "a"),
                    control: ("control", "control")}


def test_transactional_is_not_credited_and_lift_never_mixes_arms(
        tmp_path: Path, backend: ChdbBackend, db: str) -> None:
    eng = _engine(tmp_path, {"m": _trig("m", "x_m", extra=VARIANTS),
                             "t": _trig("t", "x_t", kind="transactional")},
                  "late_event_grace: 0s\nholdout_percent: 20\n")
    customers = [f"c{i}" for i in range(60)]
    events = []
    for i, c in enumerate(customers):
        events += [ev("x_m", 0, c), ev("x_t", 30, c)]  # transactional is the last touch
        if i % 2:
            events.append(order(60, c, total=10.0))
    events += [ev("x_t", 0, "only_tx"), order(30, "only_tx")]
    out = replay(eng, events, T0 + DAY)
    convs = [o for o in out if isinstance(o, Conversion)]
    assert len(convs) == 30 and {o.trigger_id for o in convs} == {"m"}  # never "t"
    insert(backend, db, out)
    treated = [o for o in convs if o.arm == "treated"]
    assert 0 < len(treated) < 30
    [(n, revenue)] = backend.query_rows(
        f"SELECT sum(conversions), sum(revenue) FROM {db}.channel_summary")
    assert (n, float(revenue)) == (len(treated), 10.0 * len(treated))
    rows = lift_rows(backend, db, "m")
    assert {k[0] for k in rows} == {"treated", "control", "holdout"}
    for (arm, _variant), r in rows.items():
        assert r["converted_customers"] == sum(
            o.arm == arm and (arm == "holdout" or o.variant == _variant) for o in convs)
        assert r["converted_customers"] <= r["customers"]
    assert sum(r["customers"] for r in rows.values()) == len(customers)


def test_server_backend_runs_the_same_lift_sql(chdb_dir: str, backend: ChdbBackend,
                                               db: str) -> None:
    """The views on clickhouse-connect's code path (in-process chdb client, same engine)."""
    import clickhouse_connect

    from sinks.clickhouse import ServerBackend

    insert(backend, db, sample())
    server = ServerBackend(client=clickhouse_connect.get_client(interface="chdb", path=chdb_dir))
    try:
        for view in ("variant_lift", "conversions_by_arm", "channel_summary"):
            sql = f"SELECT * FROM {db}.{view} ORDER BY ALL"
            assert server.query(sql) == backend.query(sql)
    finally:
        server.close()


def test_old_database_gets_the_arm_column(backend: ChdbBackend) -> None:
    """A database made before ``arm``: the schema adds it; old rows read '' and stay out."""
    name = f"lift_old_{T0 % 9973}"
    old = [s for s in ddl_statements(name)
           if "CREATE TABLE" in s or "CREATE DATABASE" in s]
    for stmt in old:
        backend.command(stmt.replace(", arm LowCardinality(String) DEFAULT ''", "")
                        .replace(",\n    arm LowCardinality(String) DEFAULT ''", ""))
    assert "arm" not in {r[0] for r in backend.query_rows(
        f"SELECT name FROM system.columns WHERE database = '{name}' "
        f"AND table = 'raw_conversions'")}
    ensure_schema(backend, name)
    d = _d(1, "a1", "A")
    insert(backend, name, [d, _s(d), _c(1, d, 10.0, "treated")])
    backend.command(f"INSERT INTO {name}.raw_conversions (conversion_id, customer_id, order_id, "
                    f"revenue, currency, send_id, trigger_id, variant, channel, sent_at, ts) "
                    f"VALUES ('old', 'a1', 'o0', 5, 'EUR', 'send1', 'cart', 'A', 'email', "
                    f"now64(3), now64(3))")
    assert backend.query_rows(f"SELECT conversions, revenue FROM {name}.channel_summary") == [
        (1, 10)]
    rows = lift_rows(backend, name)
    assert rows[("treated", "A")]["converted_customers"] == 1
