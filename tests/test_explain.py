"""`cdp-triggers explain`: one customer's timeline per trigger, with why it started or not."""

from __future__ import annotations

from pathlib import Path

from bytewax.testing import run_main

from cdp_triggers.cli import main
from cdp_triggers.events import Event
from cdp_triggers.settings import Settings
from flows.app import assume_reachable, build_run
from flows.explain import explain_clickhouse, explain_events
from sinks.clickhouse import open_backend
from tests.engine_helpers import T0, cart, engine, ev, order, trigger_semantics_dir


def write(path: Path, events: list[Event]) -> Path:
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    return path


def timeline() -> list[Event]:
    return [
        ev("product_viewed", 0, "c1", product_id="p1", price=9.0),  # browse: 1 of 2
        cart(5, customer="c1"),                                     # abandoned cart starts
        cart(6, customer="c1"),                                     # activity on it
        order(8, customer="c1"),                                    # cancels it
        ev("product_viewed", 0, "c2", product_id="p1", price=9.0),  # someone else
    ]


def test_recorded_events_say_why_each_trigger_started_or_not(tmp_path):
    path = write(tmp_path / "e.jsonl", timeline())
    lines = explain_events(engine().config, [path], "c1", assume_reachable, T0 + 86_400_000)
    said = [(x.trigger_id, x.what, x.text) for x in lines]
    assert ("browse_abandonment", "start",
            "not started: count not reached (1 of 2 within 1h)") in said
    assert ("abandoned_cart", "start", "started") in said
    assert ("abandoned_cart", "start",
            "already running: applied to the live instance as activity") in said
    assert any(t == "abandoned_cart" and w == "lifecycle" and x.startswith("cancelled")
               for t, w, x in said)
    assert all(x.ts >= y.ts for x, y in zip(lines[1:], lines, strict=False))  # time order
    assert not any("c2" in x.text for x in lines)


def test_clickhouse_timeline_of_a_run_and_the_cli(tmp_path, chdb_url, capsys, monkeypatch):
    path = write(tmp_path / "e.jsonl", timeline())
    s = Settings(clickhouse_url=chdb_url, clickhouse_database="explain_it", clock="replay",
                 horizon_ms=T0 + 86_400_000, config_dir=trigger_semantics_dir())
    run_main(build_run(s, "files", files=[path], profiles="assume",
                       outputs="clickhouse").flow)
    db = open_backend(chdb_url)
    try:
        lines = explain_clickhouse(db, "explain_it", "c1")
        decisions = db.query_rows("SELECT count() FROM explain_it.decisions "
                                  "WHERE customer_id = 'c1'")[0][0]
    finally:
        db.close()
    assert sum(x.what == "decision" for x in lines) == decisions > 0
    assert any(x.what == "lifecycle" and x.text.startswith("cancelled") for x in lines)

    monkeypatch.setenv("CDP_CONFIG_DIR", str(trigger_semantics_dir()))
    monkeypatch.setenv("CDP_CLICKHOUSE_DATABASE", "explain_it")
    assert main(["explain", "--customer", "c1", "--events", str(path), "--no-redis"]) == 0
    out = capsys.readouterr().out
    assert "count not reached" in out and "abandoned_cart" in out
    assert main(["explain", "--customer", "c1", "--clickhouse-url", chdb_url]) == 0
    out = capsys.readouterr().out
    assert "cancelled" in out and "decision" in out
