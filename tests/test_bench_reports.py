"""The arithmetic and bookkeeping of the issue-10 benchmarks (no services, no timing):
scaling estimates, py-spy sample shares, sections replaced in place."""

from __future__ import annotations

import pytest

from bench import memory, profile, scaling


def test_scaling_estimates_follow_the_stated_arithmetic():
    r = {"median": {1: {"cpu_us_per_event": 100.0}, 2: {"cpu_us_per_event": 150.0},
                    4: {"cpu_us_per_event": 190.0}}}
    est = scaling.estimates(r)
    assert est["per_move_us"] == pytest.approx(100.0)  # (150 - 100) / (1/2)
    assert est["moves"][4] == pytest.approx(120.0)  # (190 - 100) / (3/4)
    host = est["hosts"]["16-core host"]
    assert host["cpu_us"] == pytest.approx(100 + 100 * 15 / 16)
    assert host["events_per_s"] == pytest.approx(16 * 0.8 / (host["cpu_us"] / 1e6))
    assert host["linear_events_per_s"] == pytest.approx(16 * 0.8 / 100e-6)
    assert est["hosts"]["3 hosts × 16 cores"]["processes"] == 48


def test_profile_shares_count_only_the_flow_process():
    flow = ("process 2:\"python -m bench.floors --child shipped\";_run_timed "
            "(bench/floors.py:80)")
    raw = "\n".join([
        f"{flow};CustomerLogic.on_batch (operators/keyed.py:120);Engine.handle_split "
        "(operators/engine.py:170);RedisProfileStore.get (state/profiles.py:160) 30",
        f"{flow};CustomerLogic.on_batch (operators/keyed.py:120);Engine.handle_split "
        "(operators/engine.py:170);Engine._apply (operators/engine.py:430) 50",
        f"{flow};_KafkaShard.next_batch (flows/sources.py:150);parse_event "
        "(cdp_triggers/events.py:400) 20",
        "process 1:\"python -m bench.floors\";produce (tests/services.py:350) 500",
    ])
    r = profile.analyse(raw)
    assert r["samples"] == 100
    assert r["groups"]["engine `Engine.handle_split` (incl. profile reads)"] == pytest.approx(0.8)
    assert r["groups"]["profile reads (Redis, synchronous)"] == pytest.approx(0.3)
    assert r["groups"]["aligned Kafka source `next_batch`"] == pytest.approx(0.2)
    assert r["self"][0] == ("Engine._apply (operators/engine.py)", pytest.approx(0.5))


def test_sections_are_replaced_in_place(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhead\n\n## Latency (issue 10)\n\nkept\n")
    r = {"customers": [10, 20], "days": 1.0}
    memory.write_section(doc, r, "first body\n")
    memory.write_section(doc, r, "second body\n")
    text = doc.read_text()
    assert text.count(memory.START) == 1 and "second body" in text
    assert "first body" not in text and "kept" in text and text.startswith("# Benchmarks")
