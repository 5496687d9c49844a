"""The preview shows segment membership changes: counted per segment through the production
dataflow (replay clock, in memory), and as "segment <id>" rows of a diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import config_dir

from cdp_triggers.events import Event, parse_event
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, write_jsonl
from config.loader import load_config
from flows.preview import diff, run_preview, summarize
from flows.sources import latest_event_ts

BUYERS = """id: buyers
description: Anyone who ordered.
conditions:
  - {field: customer.orders_count, op: gte, value: 1}
"""


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preview-seg") / "events.jsonl"
    write_jsonl(path, SyntheticConfig(customers=150, days=2))
    return path


def test_preview_counts_segment_changes_and_diffs_them(events: Path, tmp_path: Path) -> None:
    base = load_config(config_dir(tmp_path / "base"))
    other = load_config(config_dir(tmp_path / "other", segments={"buyers": BUYERS}))
    horizon, _, _ = latest_event_ts([events])
    parsed = map(parse_event, events.read_bytes().splitlines())  # (the file has bad lines)
    buyers = {e.customer_id for e in parsed if isinstance(e, Event) and e.type == "order_placed"}
    a = summarize(run_preview(base, [events], Settings(), horizon, "assume")[0],
                  triggers=base.triggers)
    b = summarize(run_preview(other, [events], Settings(), horizon, "assume")[0],
                  triggers=other.triggers)
    assert "buyers" not in a.segments
    assert b.segments["buyers"] == {"entered": len(buyers)} and buyers
    rows = {(r.trigger, r.metric): (r.base, r.other) for r in diff(a, b).rows}
    assert rows[("segment buyers", "entered")] == (0, len(buyers))
