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


def test_a_days_final_count_is_written_once_the_day_is_over_whatever_wakes_the_customer():
    """The last count of a day (not a power of two) is written when the customer is next
    woken after the day: by a later miss, any other event, a timer call (the end of input)
    or a sweep. Before, only a later miss of the same kind wrote it, so the count depended
    on which unrelated events happened to wake the customer, and a sweep lost it."""
    def final_rows(wake) -> list[int]:
        eng, st, rows = engine(), CustomerState("c1"), []
        for e in views(5):
            rows += eng.handle(st, e, max(st.high_water, e.ts), lambda c: None)
        rows += wake(eng, st)
        return [r.count for r in rows if isinstance(r, StartMiss)
                and r.trigger_id == "browse_abandonment"]

    def timer_call(eng, st):
        return eng.handle(st, None, T0 + DAY + MINUTE, lambda c: None)

    def other_event(eng, st):
        e = ev("signed_up", 24 * 60 + 1, "c1")
        return eng.handle(st, e, e.ts, lambda c: None)

    def sweep(eng, st):
        return eng.prune(st, T0 + DAY + MINUTE, sweep=True)

    for wake in (timer_call, other_event, sweep):
        assert final_rows(wake) == [1, 2, 4, 5], wake.__name__
    same_day = final_rows(lambda eng, st: eng.handle(st, None, T0 + 60 * MINUTE, lambda c: None))
    assert same_day == [1, 2, 4]  # the day is not over: 5 is not final yet


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
