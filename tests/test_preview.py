"""`cdp-triggers preview`: the production dataflow in memory (no ClickHouse), counts equal a
direct engine replay, `--against` shows what a config change does; summarize/diff are pure."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cdp_triggers.cli import main
from cdp_triggers.events import Event, parse_event
from cdp_triggers.records import CONDITION_NOT_MET, Conversion, Decision, Lifecycle, Send
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, write_jsonl
from config.loader import DEFAULT_CONFIG_DIR, load_config
from flows.app import assume_reachable
from flows.preview import branch_rows, diff, run_preview, summarize
from flows.sources import latest_event_ts
from operators.engine import Engine
from state.customer import CustomerState


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preview") / "events.jsonl"
    write_jsonl(path, SyntheticConfig(customers=200, days=2))
    return path


@pytest.fixture(scope="module")
def customer_events(events, tmp_path_factory) -> Path:
    """The same file without catalogue updates: the bare engine has no product fan-out step
    (price_dropped/back_in_stock), and caps couple every trigger of a customer."""
    path = tmp_path_factory.mktemp("preview") / "customer_events.jsonl"
    path.write_bytes(b"".join(line for line in events.read_bytes().splitlines(keepends=True)
                              if b'"product_updated"' not in line))
    return path


def direct_replay(config, path: Path, horizon: int) -> list:
    """The pure engine, no dataflow: each customer's events in (ts, event_id) order, then
    the horizon."""
    eng, states, out = Engine(config), {}, []
    events = [parse_event(line) for line in path.read_bytes().splitlines() if line.strip()]
    for e in sorted((e for e in events if isinstance(e, Event)),
                    key=lambda e: (e.ts, e.event_id)):
        if True:
            st = states.setdefault(e.customer_id, CustomerState(e.customer_id))
            out += eng.handle(st, e, max(st.high_water, e.ts), assume_reachable)
    for st in states.values():
        out += eng.handle(st, None, horizon, assume_reachable)
    return out


def counts(summary) -> dict:
    return {tid: (dict(t.lifecycle), t.conversions, dict(t.branches), {
        i: (dict(s.sent), dict(s.suppressed), s.skipped, s.cancelled) for i, s in t.steps.items()})
        for tid, t in summary.triggers.items()}


def table(out: str, header: str) -> list[list[str]]:
    """Rows of the printed table whose header line starts with ``header``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip() or not line[0].islower() or line.split()[0].endswith(":"):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_preview_counts_equal_a_direct_engine_replay(customer_events, monkeypatch, capsys):
    events = customer_events
    monkeypatch.setenv("CDP_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert main(["preview", "--events", str(events)]) == 0
    out = capsys.readouterr().out
    assert "profiles: ASSUMED reachable" in out and "Redis not answering" in out

    config = load_config(DEFAULT_CONFIG_DIR)
    horizon, valid, bad = latest_event_ts([events])
    assert f"{valid:,} events, {bad:,} rejected" in out and bad > 0
    ids = [t.id for t in config.triggers]
    records, _ = run_preview(config, [events], Settings(), horizon, "assume")
    via_flow = summarize(records, triggers=config.triggers)
    direct = summarize(direct_replay(config, events, horizon), triggers=config.triggers)
    assert counts(via_flow) == counts(direct)
    assert sum(t.lifecycle["started"] for t in via_flow.triggers.values()) > 0
    cart = via_flow.triggers["abandoned_cart"]  # its reminder branches: opened or not
    assert sum(cart.branches.values()) == cart.lifecycle["branched"] > 0
    assert set(cart.branches) <= {"reminder→discount", "reminder→last_call", "discount→end"}
    sends = sum(isinstance(r, Send) for r in records)
    assert sends == sum(sum(s.sent.values()) for t in via_flow.triggers.values()
                        for s in t.steps.values()) > 0

    printed = {r[0]: [int(x) for x in r[1:6]] for r in table(out, "trigger  ")}
    assert set(printed) == set(ids)
    for tid, t in via_flow.triggers.items():
        life = [t.lifecycle[a] for a in ("started", "cancelled", "completed", "expired")]
        assert printed[tid] == [*life, t.conversions], tid
    assert "\nexamples\n  abandoned_cart\n    c" in out


def test_against_a_changed_config_shows_the_delta(events, tmp_path, capsys):
    other = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, other,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "schema"))
    cart = other / "triggers" / "abandoned_cart.yaml"
    text, n = re.subn(r"inactivity: \w+", "inactivity: 6h", cart.read_text(), count=1)
    assert n == 1
    cart.write_text(text)
    assert main(["preview", "--no-redis", "--events", str(events), "--against", str(other)]) == 0
    out = capsys.readouterr().out
    assert "profiles: ASSUMED reachable" in out and "(--no-redis)" in out
    rows = table(out, "trigger  ")
    changed = [r for r in rows if r[0] == "abandoned_cart" and r[-1] != "0"]
    assert changed, out
    for r in rows:  # delta = other - base on every row
        assert int(r[-1]) == int(r[-2]) - int(r[-3])
    assert re.search(r"\n([1-9]\d*) of \d+ counts differ", out)
    assert re.search(r"\nunchanged: .*win_back", out)  # no sends: its rows are left out
    assert not any(r[0] == "win_back" for r in rows)


def test_preview_refuses_a_bad_config_or_a_missing_file(events, tmp_path, capsys):
    assert main(["preview", "--no-redis", "--events", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such events file" in capsys.readouterr().err
    (tmp_path / "triggers").mkdir()
    (tmp_path / "triggers" / "x.yaml").write_text("id: x\n")
    with pytest.raises(SystemExit) as e:
        main(["preview", "--no-redis", "--events", str(events), "--config", str(tmp_path)])
    assert e.value.code == 2 and "x.yaml" in capsys.readouterr().err


def _d(status: str, reason: str = "", step: int = 0, channel: str = "email",
       customer: str = "c1", trigger: str = "cart", instance: str = "i1") -> Decision:
    return Decision("d", f"s-{customer}-{step}", customer, trigger, "marketing", "v", instance,
                    step, channel, f"tpl{step}", "", status, reason, 0, 0)


def _life(action: str, customer: str = "c1", trigger: str = "cart", reason: str = "",
          instance: str = "i1") -> Lifecycle:
    return Lifecycle("l", customer, trigger, instance, "", action, reason, "", 0, 0)


def test_summarize_counts_steps_reasons_and_tells_stories():
    records = [
        _life("started"), _d("suppressed", "no_consent"), _d("sent", channel="push"),
        Conversion("c", "c1", "o1", 12.5, "EUR", "s-c1-0", "cart", "", "push", 0, 0),
        _d("suppressed", CONDITION_NOT_MET, step=1), _life("completed"),
        _life("started", "c2"), _d("cancelled", "cancel_event:order_placed", customer="c2"),
        _life("cancelled", "c2", reason="order_placed"),
        _life("started", "c3", "welcome"),
    ]
    s = summarize(records, examples=2, triggers=["cart", "welcome", "idle"])
    cart = s.triggers["cart"]
    assert dict(cart.lifecycle) == {"started": 2, "completed": 1, "cancelled": 1}
    assert (cart.conversions, cart.revenue) == (1, 12.5)
    s0, s1 = cart.steps[0], cart.steps[1]
    assert (dict(s0.sent), dict(s0.suppressed), s0.cancelled) == ({"push": 1},
                                                                  {"no_consent": 1}, 1)
    assert (s1.template, s1.skipped, sum(s1.sent.values())) == ("tpl1", 1, 0)
    assert cart.examples == {
        "c1": "started → step 0 email no_consent → step 0 push sent → ordered 12.50 EUR → "
              "step 1 skipped (when) → completed",
        "c2": "started → cancelled by order_placed"}
    assert s.triggers["welcome"].examples == {"c3": "started (still running)"}
    assert not s.triggers["idle"].lifecycle and not s.triggers["idle"].steps


def test_diff_rows_deltas_and_one_sided_triggers():
    a = summarize([_life("started"), _d("sent"), _life("completed")], triggers=["cart", "old"])
    b = summarize([_life("started"), _d("suppressed", "no_contact"), _life("completed")],
                  triggers=["cart", "new"])
    d = diff(a, b)
    assert (d.only_base, d.only_other) == (["old"], ["new"])
    rows = {(r.trigger, r.step, r.metric.strip()): (r.base, r.other, r.delta) for r in d.rows}
    assert rows[("cart", "", "started")] == (1, 1, 0)
    assert rows[("cart", "0 tpl0", "sent")] == (1, 0, -1)
    assert rows[("cart", "0 tpl0", "no_contact")] == (0, 1, 1)
    assert ("cart", "", "expired") not in rows  # 0 on both sides: left out


def test_branches_are_counted_told_and_diffed():
    records = [_life("started"), _d("sent"), _life("branched", reason="hello→readers"),
               _d("sent", step=1), _life("completed"),
               _life("started", "c2", instance="i2"), _d("sent", customer="c2"),
               _life("branched", "c2", reason="hello→end", instance="i2"),
               _life("completed", "c2", instance="i2")]
    s = summarize(records, triggers=["cart"])
    assert dict(s.triggers["cart"].branches) == {"hello→readers": 1, "hello→end": 1}
    assert branch_rows(s) == [("cart", "hello", "end", 1), ("cart", "hello", "readers", 1)]
    assert "branched hello→readers" in s.triggers["cart"].examples["c1"]
    d = diff(summarize(records[:5], triggers=["cart"]), s)
    rows = {(r.trigger, r.metric): (r.base, r.other) for r in d.rows}
    assert rows[("cart", "branch hello→end")] == (0, 1)
    assert rows[("cart", "branch hello→readers")] == (1, 1)
