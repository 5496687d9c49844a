"""Starts that did not happen are recorded compactly: counted per customer × trigger ×
reason × day, never one row per event."""

from __future__ import annotations

from bytewax.testing import run_main

from cdp_triggers.clock import DAY, MINUTE
from cdp_triggers.records import COUNT_NOT_REACHED, StartMiss
from cdp_triggers.settings import Settings
from flows.app import build_run
from flows.explain import explain_clickhouse
from sinks.clickhouse import open_backend
from state.customer import CustomerState
from tests.engine_helpers import T0, engine, ev, trigger_semantics_dir


def views(n: int, day: int = 0, customer: str = "c1") -> list:
    """Views of n different products, a minute apart: browse_abandonment wants two views
    of one product within an hour, so each one is a count not reached."""
    return [ev("product_viewed", day * 24 * 60 + i / 2, customer, product_id=f"p{i}",
               price=5.0) for i in range(n)]


def test_a_thousand_misses_in_a_day_write_a_dozen_rows_and_the_exact_final_count():
    eng, st, rows = engine(), CustomerState("c1"), []
    for e in [*views(1000), *views(3, day=1)]:
        rows += [r for r in eng.handle(st, e, max(st.high_water, e.ts), lambda c: None)
                 if isinstance(r, StartMiss) and r.trigger_id == "browse_abandonment"]
    assert all(r.reason == COUNT_NOT_REACHED for r in rows)
    first_day = [r.count for r in rows if r.day == T0 // DAY]
    assert first_day == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]  # 11 rows, not 1,000
    assert [r.count for r in rows if r.day == T0 // DAY + 1] == [1, 2]  # 3 so far: ≥ half
    assert len({r.miss_id for r in rows}) == 2


def test_explain_reads_the_misses_from_clickhouse(tmp_path, chdb_url):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in [*views(40), *views(1, day=1)]))
    s = Settings(clickhouse_url=chdb_url, clickhouse_database="misses", clock="replay",
                 horizon_ms=T0 + 2 * DAY + MINUTE, config_dir=trigger_semantics_dir())
    run_main(build_run(s, "files", files=[path], profiles="assume",
                       outputs="clickhouse").flow)
    db = open_backend(chdb_url)
    try:
        raw = db.query_rows("SELECT count() FROM misses.raw_start_misses "
                            "WHERE trigger_id = 'browse_abandonment'")[0][0]
        lines = explain_clickhouse(db, "misses", "c1")
    finally:
        db.close()
    assert raw <= 8  # 1, 2, 4, 8, 16, 32, final 40, next day's 1
    said = [x.text for x in lines if x.trigger_id == "browse_abandonment"]
    assert any(t.startswith("not started: count not reached ×40") for t in said), said
