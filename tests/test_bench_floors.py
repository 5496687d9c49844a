"""bench.floors bookkeeping (no services): paired ratios and the report sections it keeps."""

from __future__ import annotations

from pathlib import Path

from bench import floors
from bench import run as bench_run


def test_ratios_are_medians_of_paired_rounds() -> None:
    runs = {"floor_b": [100.0, 200.0, 100.0], "shipped": [50.0, 50.0, 60.0],
            "naive": [10.0, 10.0, 10.0], "cart": [20.0, 14.0, 16.0]}
    r = floors.summarize(runs, 1000, 10, 1.0)
    assert r["median_events_per_s"]["shipped"] == 50.0
    assert r["ratios"]["shipped/floor_b"] == 0.5  # per round 0.5, 0.25, 0.6
    assert r["ratios"]["cart/naive"] == 1.6
    text = floors.report(r)
    assert "≥ 0.5×" in text and "≥ 1.5×" in text


def test_floors_table_is_replaced_and_the_section_survives_a_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n")
    r = floors.summarize({"floor_b": [2.0], "shipped": [1.0]}, 10, 1, 1.0)
    bench_run.write_floors_table(out, r, "TABLE-1")
    text = out.read_text().replace("## Throughput (issue 10)\n",
                                   "## Throughput (issue 10)\n\nhand-written profile\n")
    out.write_text(text)
    bench_run.write_floors_table(out, r, "TABLE-2")
    text = out.read_text()
    assert "TABLE-2" in text and "TABLE-1" not in text and "hand-written profile" in text
    row = {"events_per_s": 1.0, "rss_mb": 1.0, "events": 1, "decisions": 1, "sends": 1,
           "workers": 1, "customers_with_state": 1, "state_bytes_mean": 1.0,
           "state_bytes_max": 1}
    results = {k: row for k in ("parse", "engine", "flow_1w", "flow_2w", "kafka_1p",
                                "kafka_2p")}
    bench_run.write_report(out, 1, 1.0, results)
    text = out.read_text()
    assert "hand-written profile" in text and "TABLE-2" in text


def test_floors_table_goes_inside_a_throughput_section_that_lost_its_markers(
        tmp_path: Path) -> None:
    """A hand-edited section without the floors markers gets the table at its end, not a
    second "Throughput" section at the end of the file."""
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Benchmarks\n\n{bench_run.THROUGHPUT_START}\n## Throughput (issue 10)\n"
                   f"\nhand-written\n{bench_run.THROUGHPUT_END}\n\n## Latency\n")
    r = floors.summarize({"floor_b": [2.0], "shipped": [1.0]}, 10, 1, 1.0)
    bench_run.write_floors_table(out, r, "TABLE-1")
    text = out.read_text()
    assert text.count("## Throughput") == 1 and text.index("TABLE-1") < text.index("## Latency")
    assert text.index("hand-written") < text.index("TABLE-1")
