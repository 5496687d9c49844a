"""The preview shows scheduled and date triggers: their occurrences within the horizon
(``--horizon-ms``, else the last event) start instances like any trigger's."""

from __future__ import annotations

import re

import orjson
from engine_helpers import T0

from cdp_triggers.cli import main
from cdp_triggers.clock import DAY, MINUTE
from cdp_triggers.settings import Settings
from config.loader import DEFAULT_CONFIG_DIR, load_config
from flows.preview import run_preview, summarize


def write_events(path) -> None:
    rows = [("s1", "signed_up", "a", 0, {"method": "email", "birthday": "1991-10-05"})]
    rows += [(f"o{i}", "order_placed", "v", i * 60,
              {"order_id": f"o{i}", "total": 120.0, "currency": "EUR", "items": []})
             for i in range(3)]  # vip: 3 orders worth 360
    path.write_bytes(b"".join(orjson.dumps({"event_id": eid, "type": typ, "customer_id": cid,
                                            "ts": T0 + m * MINUTE, "props": props}) + b"\n"
                              for eid, typ, cid, m, props in rows))


def started(out: str) -> dict[str, int]:
    """The 'started' column of the printed lifecycle table (its first rows per trigger)."""
    rows: dict[str, int] = {}
    for m in re.finditer(r"^(\w+)\s+(\d+)\s+\d+\s+\d+\s+\d+\s+\d+\s+[\d.]+$", out, re.M):
        rows.setdefault(m[1], int(m[2]))
    return rows


def test_preview_counts_scheduled_and_date_starts(tmp_path, monkeypatch, capsys) -> None:
    events = tmp_path / "events.jsonl"
    write_events(events)
    config = load_config(DEFAULT_CONFIG_DIR)
    horizon = T0 + 70 * DAY  # past 5 October (birthday) and 27 November (Black Friday)
    records, _ = run_preview(config, [events], Settings(), horizon, "assume")
    summary = summarize(records, triggers=config.triggers)
    bday, bf = summary.triggers["birthday"], summary.triggers["black_friday_vip"]
    assert bday.lifecycle["started"] == 1 and sum(bday.steps[0].sent.values()) == 1
    assert bf.lifecycle["started"] == 1 and bf.steps[0].sent["push"] == 1

    monkeypatch.setenv("CDP_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert main(["preview", "--events", str(events), "--horizon-ms", str(horizon)]) == 0
    out = capsys.readouterr().out
    rows = started(out)
    assert rows["birthday"] == 1 and rows["black_friday_vip"] == 1, out
    # without a horizon the preview ends at the last event: nothing was due yet
    assert main(["preview", "--events", str(events)]) == 0
    out = capsys.readouterr().out
    assert started(out)["birthday"] == 0, out
