"""Smart send time on event timelines: a step with ``send_at: preferred_hour`` is held to the
hour the customer reads in (learned from their opens/clicks, local time), else to its
fallback hour, else goes at once; quiet hours and caps still apply at the held time; replay
and live decide alike; the config refuses a bad send_at."""

from __future__ import annotations

from datetime import datetime
from itertools import count
from zoneinfo import ZoneInfo

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event
from cdp_triggers.records import (
    CAPPED,
    DEFERRED,
    QUIET_HOURS_DEFERRED,
    SEND_TIME_DEFERRED,
    SENT,
    SUPPRESSED,
)
from config.loader import load_config
from operators.engine import Engine
from tests.engine_helpers import config_dir, config_issues, decisions, live, replay, sends

BERLIN = ZoneInfo("Europe/Berlin")  # the zone of engine_helpers.reachable()
_ids = count()

TIMED = """id: timed
kind: marketing
start: {event: product_viewed}
key: props.product_id
steps:
  - template: browse_abandonment
    channels: [email]
    vars: {product_id: instance.key}
    send_at: {mode: preferred_hour, within: %(within)s, fallback: %(fallback)s}
%(extra)s"""


def local(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp() * 1000)


def hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, BERLIN).strftime("%Y-%m-%d %H:%M")


def event(type_: str, when: str, customer: str = "c1", **props) -> Event:
    return Event(f"s{next(_ids)}", type_, customer, local(when), props)


def opened(when: str, customer: str = "c1") -> Event:
    return event("message_opened", when, customer, send_id=f"old{next(_ids)}", channel="email")


def view(when: str, product: str = "p1", customer: str = "c1") -> Event:
    return event("product_viewed", when, customer, product_id=product)


def timed_engine(tmp_path, within: str = "24h", fallback: str = "null", extra: str = "",
                 policy: str | None = None) -> Engine:
    root = config_dir(tmp_path, triggers={"timed": TIMED % {
        "within": within, "fallback": fallback, "extra": extra}})
    if policy is not None:
        (root / "policy.yaml").write_text(policy)
    return Engine(load_config(root))


def timed(out):
    return [o for o in out if getattr(o, "trigger_id", None) == "timed"]


def test_opens_at_13_14_and_13_47_hold_the_next_message_to_the_13h_hour(tmp_path):
    eng = timed_engine(tmp_path)
    events = [opened("2026-03-02T13:14"), opened("2026-03-03T13:47"),
              view("2026-03-05T08:30")]
    out = timed(replay(eng, events, local("2026-03-07T00:00")))
    [held] = [d for d in decisions(out) if d.status == DEFERRED]
    assert (held.reason, held.detail, hhmm(held.ts)) == (
        SEND_TIME_DEFERRED, "preferred_hour:13", "2026-03-05 08:30")
    [sent] = sends(out)
    assert "2026-03-05 13:00" <= hhmm(sent.ts) < "2026-03-05 14:00"
    assert [d.status for d in decisions(out)] == [DEFERRED, SENT]  # held once, then sent


def test_a_customer_without_reads_gets_the_fallback_hour_or_at_once(tmp_path):
    events = [view("2026-03-05T08:30")]
    horizon = local("2026-03-07T00:00")
    out = timed(replay(timed_engine(tmp_path / "a", fallback='"10:00"'), events, horizon))
    [held] = [d for d in decisions(out) if d.status == DEFERRED]
    assert held.detail == "fallback_hour:10"
    assert [hhmm(s.ts) for s in sends(out)] == ["2026-03-05 10:00"]
    out = timed(replay(timed_engine(tmp_path / "b"), events, horizon))  # no fallback
    assert [(d.status, hhmm(d.ts)) for d in decisions(out)] == [(SENT, "2026-03-05 08:30")]


def test_a_best_hour_beyond_within_goes_at_once(tmp_path):
    eng = timed_engine(tmp_path, within="2h", fallback='"10:00"')
    events = [opened("2026-03-02T13:14"), opened("2026-03-03T13:47"),
              view("2026-03-05T08:30")]
    out = timed(replay(eng, events, local("2026-03-07T00:00")))
    assert [(d.status, hhmm(d.ts)) for d in decisions(out)] == [(SENT, "2026-03-05 08:30")]


def test_quiet_hours_still_apply_after_the_hold(tmp_path):
    quiet = 'quiet_hours: {start: "21:00", end: "08:00", channels: [email]}'
    eng = timed_engine(tmp_path, extra=quiet)
    events = [opened("2026-03-02T22:10"), opened("2026-03-03T22:40"),
              view("2026-03-05T15:00")]
    out = timed(replay(eng, events, local("2026-03-08T00:00")))
    assert [(d.status, d.reason, d.detail, hhmm(d.ts)) for d in decisions(out)] == [
        (DEFERRED, SEND_TIME_DEFERRED, "preferred_hour:22", "2026-03-05 15:00"),
        (DEFERRED, QUIET_HOURS_DEFERRED, "", "2026-03-05 22:00"),
        (SENT, "", "", "2026-03-06 08:00"),  # not held to 22:00 again: once per step
    ]


def test_caps_still_apply_at_the_held_time(tmp_path):
    policy = ("late_event_grace: 5m\n"
              "caps:\n  - {id: one_a_day, scope: trigger, max: 1, window: 24h}\n")
    eng = timed_engine(tmp_path, policy=policy)
    events = [opened("2026-03-02T13:14"), opened("2026-03-03T13:47"),
              view("2026-03-05T08:30", "p1"), view("2026-03-05T09:00", "p2")]
    out = timed(replay(eng, events, local("2026-03-07T00:00")))
    held = [d for d in decisions(out) if d.reason == SEND_TIME_DEFERRED]
    assert len(held) == 2
    after = [(d.status, d.reason, d.detail) for d in decisions(out) if d.status != DEFERRED]
    assert after == [(SENT, "", ""), (SUPPRESSED, CAPPED, "one_a_day")]
    assert [hhmm(s.ts) for s in sends(out)] == ["2026-03-05 13:00"]


def test_reads_are_learned_from_receipts_of_real_sends_too(tmp_path):
    """The engine's own message, opened at 19:20 twice: the third is held to 19:00."""
    eng = timed_engine(tmp_path, within="24h")
    horizon = local("2026-03-09T00:00")
    events = [view("2026-03-02T19:05", "p1"), view("2026-03-03T19:05", "p2")]
    first = timed(replay(eng, events, horizon))
    s1, s2 = sends(first)  # no reads yet: at once
    receipts = [Event(f"r{next(_ids)}", "message_opened", "c1", s.ts + 15 * 60_000,
                      {"send_id": s.send_id, "channel": "email"}) for s in (s1, s2)]
    events = sorted([*events, *receipts, view("2026-03-05T09:00", "p3")], key=lambda e: e.ts)
    out = timed(replay(timed_engine(tmp_path / "again"), events, horizon))
    assert [hhmm(s.ts) for s in sends(out)] == ["2026-03-02 19:05", "2026-03-03 19:05",
                                                "2026-03-05 19:00"]


def test_replay_and_live_hold_alike(tmp_path):
    quiet = 'quiet_hours: {start: "21:00", end: "08:00", channels: [email]}'
    eng = timed_engine(tmp_path, fallback='"10:00"', extra=quiet)
    events = []
    for i in range(12):
        c = f"c{i % 4}"
        day = 2 + i // 4
        if i % 4:  # c0 never reads: its views go at the fallback hour
            events.append(opened(f"2026-03-0{day}T{(11 + 5 * (i % 4)) % 24:02d}:1{i % 10}", c))
        events.append(view(f"2026-03-0{day}T{7 + i:02d}:30", f"p{i}", c))
    events.sort(key=lambda e: e.ts)
    horizon = local("2026-03-09T00:00")

    def key(out):
        return sorted((d.customer_id, d.instance_id, d.step, d.status, d.reason, d.detail,
                       d.ts) for d in decisions(timed(out)))

    replayed, lived = key(replay(eng, events, horizon)), key(live(eng, events, horizon))
    assert replayed == lived
    assert {r[4] for r in replayed} >= {SEND_TIME_DEFERRED, ""}


def test_bad_send_at_is_refused_with_file_line_and_field(tmp_path):
    bad = TIMED % {"within": "0h", "fallback": "null", "extra": ""}
    issues = config_issues(config_dir(tmp_path / "a", triggers={"timed": bad}))
    assert any("timed.yaml:9:14 steps[0].send_at: 'within' must be longer than 0" in i
               for i in issues), issues
    bad = TIMED % {"within": "24h", "fallback": '"10:30"', "extra": ""}
    issues = config_issues(config_dir(tmp_path / "b", triggers={"timed": bad}))
    assert any("steps[0].send_at: fallback '10:30' is not an hour of the day" in i
               for i in issues), issues
    short = TIMED.replace("{mode: preferred_hour, within: %(within)s, fallback: %(fallback)s}",
                          "preferred_hour") % {"extra": ""}
    cfg = load_config(config_dir(tmp_path / "c", triggers={"timed": short}))
    step = cfg.trigger("timed").steps[0]
    assert (step.send_at.mode, step.send_at.within, step.send_at.fallback) == (
        "preferred_hour", DAY, None)
