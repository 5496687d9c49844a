"""Scheduled and date starts on event timelines (pure engine): birthdays from events and
profiles, anniversaries, dated and cron campaigns to a segment, spread, re-entry, the
customer's zone, replay = live, and the config errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from engine_helpers import (
    T0,
    at,
    config_dir,
    config_issues,
    custom_engine,
    engine,
    ev,
    lifecycle,
    live,
    order,
    reachable,
    replay,
    sends,
)

from cdp_triggers import calendar
from cdp_triggers.clock import DAY, HOUR, MINUTE
from cdp_triggers.records import REENTRY_COOLDOWN, Decision, Profile, StartMiss
from config.loader import load_config
from operators.engine import Engine
from state.customer import CustomerState
from state.profiles import DictProfileStore

BERLIN = ZoneInfo("Europe/Berlin")
D = 24 * 60  # a day in minutes
# T0 is Monday 2026-09-21 14:13 UTC (16:13 in Berlin)


def local(ms: int, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromtimestamp(ms / 1000, zone)


def store(*profiles: Profile) -> DictProfileStore:
    return DictProfileStore(profiles)


def with_(p: Profile, **kw) -> Profile:
    from dataclasses import replace

    return replace(p, **kw)


# ---- birthday ---------------------------------------------------------------------------

def test_birthday_from_signed_up_at_nine_local_every_year() -> None:
    out = replay(engine(), [ev("signed_up", 0, birthday="1990-09-25")], T0 + 400 * DAY)
    got = sends(at(out, "birthday"))
    assert [(s.channel, s.variables["key"]) for s in got] == [
        ("email", "2026-09-25"), ("push", "2026-09-25"),
        ("email", "2027-09-25"), ("push", "2027-09-25")]
    for s in got:  # 09:00 Berlin (the profile's zone) within the 1h spread
        t = local(s.ts)
        assert (t.month, t.day, t.hour) == (9, 25, 9)
    # the same customer lands at the same minute every year (a stable offset)
    assert local(got[0].ts).minute == local(got[2].ts).minute
    starts = lifecycle(at(out, "birthday"), "started")
    assert len(starts) == 2 and all(s.instance_key == s.instance_key for s in starts)


def test_birthday_from_the_profile_alone() -> None:
    """No date in any event: the first plan reads the profile (zone and birthday)."""
    tokyo = with_(reachable("c1"), timezone="Asia/Tokyo", birthday="10-02")
    out = replay(engine(), [ev("product_viewed", 0, product_id="p1")], T0 + 30 * DAY,
                 store(tokyo))
    email, _push = sends(at(out, "birthday"))
    t = local(email.ts, ZoneInfo("Asia/Tokyo"))
    assert (t.month, t.day, t.hour) == (10, 2, 9) and email.tz == "Asia/Tokyo"


def test_no_birthday_no_plan_no_timer() -> None:
    eng = engine()
    st = CustomerState("c1")
    s = store(reachable("c1"))
    eng.handle(st, ev("product_viewed", 0, product_id="p1"), T0, s.get)
    assert st.sched["birthday"] == (0, "")
    assert not st.birthday
    # a later profile_updated event brings the date: planned from then on
    eng.handle(st, ev("profile_updated", 60, birthday="12-24"), T0 + HOUR, s.get)
    due, key = st.sched["birthday"]
    assert key == "2026-12-24" and local(due).hour == 9
    assert eng.next_wakeup(st) <= due + 5 * MINUTE


def test_birthday_offset_days_before_and_29_february(tmp_path: Path) -> None:
    early = """id: birthday_soon
start: {date: profile.birthday, at: "18:30", offset: -3d}
steps:
  - template: win_back
    channels: [email]
"""
    eng = custom_engine(tmp_path, triggers={"birthday_soon": early})
    out = replay(eng, [ev("signed_up", 0, birthday="02-29")], T0 + 560 * DAY)
    got = [local(s.ts) for s in sends(at(out, "birthday_soon"))]
    # 2027 and 2028 (no 29 Feb in 2027: the 28th), three days before, at 18:30 local
    assert [(t.year, t.month, t.day, t.hour, t.minute) for t in got] == [
        (2027, 2, 25, 18, 30), (2028, 2, 26, 18, 30)]


def test_reentry_cooldown_blocks_a_second_year(tmp_path: Path) -> None:
    long = """id: bday_once_in_a_while
start: {date: profile.birthday}
reentry: {cooldown: 400d}
steps:
  - template: win_back
    channels: [email]
"""
    eng = custom_engine(tmp_path, triggers={"b": long})
    out = replay(eng, [ev("signed_up", 0, birthday="10-01")], T0 + 400 * DAY)
    mine = at(out, "bday_once_in_a_while")
    assert len(sends(mine)) == 1
    assert [d.reason for d in mine if isinstance(d, Decision)
            and d.status != "sent"] == [REENTRY_COOLDOWN]


# ---- anniversaries ----------------------------------------------------------------------

def test_first_order_anniversary_counts_years() -> None:
    out = replay(engine(), [order(0)], T0 + 800 * DAY)
    got = sends(at(out, "first_order_anniversary"))
    assert [(s.channel, s.variables["years"], s.variables["key"]) for s in got] == [
        ("email", 1, "2027-09-21"), ("email", 2, "2028-09-21")]
    assert all(local(s.ts).hour in (11, 12) for s in got)  # 11:00 + up to 2h spread


def test_registration_anniversary(tmp_path: Path) -> None:
    text = """id: member_anniversary
start: {date: profile.registered_at, at: "10:00"}
steps:
  - template: first_order_anniversary
    channels: [email]
    vars: {years: event.props.years}
"""
    eng = custom_engine(tmp_path, triggers={"member_anniversary": text})
    events = [ev("signed_up", 0, "a"),  # registered now
              ev("profile_updated", 0, "b", registered_at="2020-03-01T12:00:00Z")]
    out = at(replay(eng, events, T0 + 370 * DAY), "member_anniversary")
    got = {(s.customer_id, s.variables["key"], s.variables["years"]) for s in sends(out)}
    assert got == {("a", "2027-09-21", 1), ("b", "2027-03-01", 7)}


# ---- scheduled campaigns ----------------------------------------------------------------

VIP = [order(0, "v", 100), order(60, "v", 100), order(120, "v", 150)]  # vip: 3 orders, 350


def test_dated_campaign_reaches_segment_members_only() -> None:
    bf = T0 + 70 * DAY  # 2026-11-30: past Black Friday 2026 (27 Nov)
    out = replay(engine(), [*VIP, order(30, "n", 20)], bf)
    got = sends(at(out, "black_friday_vip"))
    assert [(s.customer_id, s.channel) for s in got] == [("v", "push"), ("v", "email")]
    t = local(got[0].ts)
    assert (t.month, t.day) == (11, 27) and 10 <= t.hour < 12  # 10:00 + 2h spread
    assert got[0].variables["key"] == "2026-11-27 10:00"
    assert got[1].ts == got[0].ts + 3 * HOUR  # no open within 3h: the cascade's e-mail


def test_first_seen_after_the_date_is_not_reached() -> None:
    late = [order(d * D + i, "v", 120) for d in (70,) for i in (0, 1, 2)]  # after 27 Nov
    out = replay(engine(), late, T0 + 80 * DAY)
    assert not at(out, "black_friday_vip")


def test_spread_is_stable_and_within_the_window(tmp_path: Path) -> None:
    text = """id: weekly
start:
  schedule: {cron: "0 10 * * 1"}
  spread: 3h
steps:
  - template: win_back
    channels: [email]
"""
    eng = custom_engine(tmp_path, triggers={"weekly": text})
    customers = [f"c{i}" for i in range(40)]
    events = [ev("product_viewed", 0, c, product_id="p") for c in customers]
    out = at(replay(eng, events, T0 + 22 * DAY,
                    store(*(reachable(c) for c in customers))), "weekly")
    got = sends(out)
    assert len(got) == 3 * 40  # Mondays 28 Sep, 5 Oct, 12 Oct (the 21st: 10:00 passed)
    offsets: dict[str, set[int]] = {}
    for s in got:
        t = local(s.ts)
        assert t.weekday() == 0 and 10 <= t.hour < 13
        offsets.setdefault(s.customer_id, set()).add(t.hour * 60 + t.minute)
    assert all(len(v) == 1 for v in offsets.values())  # each customer: the same minute
    assert len({next(iter(v)) for v in offsets.values()}) > 20  # spread, not one instant
    keys = sorted({s.variables["key"] for s in got})
    assert keys == ["2026-09-28 10:00", "2026-10-05 10:00", "2026-10-12 10:00"]


def test_segment_left_before_the_date_and_where(tmp_path: Path) -> None:
    segment = """id: has_cart
conditions:
  - {field: customer.cart_items, op: gte, value: 1}
"""
    text = """id: cart_campaign
start:
  schedule: {at: "2026-09-25 12:00", local: false}
  segment: has_cart
  where:
    - {field: customer.cart_total, op: gte, value: 15}
steps:
  - template: win_back
    channels: [email]
"""
    eng = custom_engine(tmp_path, segments={"has_cart": segment},
                        triggers={"cart_campaign": text})
    events = [ev("added_to_cart", 0, "keeps", product_id="p", price=20.0),
              ev("added_to_cart", 0, "cheap", product_id="p", price=5.0),
              ev("added_to_cart", 0, "leaves", product_id="p", price=20.0),
              ev("removed_from_cart", D, "leaves", product_id="p")]
    out = at(replay(eng, events, T0 + 5 * DAY), "cart_campaign")
    assert [s.customer_id for s in sends(out)] == ["keeps"]
    assert local(sends(out)[0].ts, ZoneInfo("UTC")).hour == 12  # local: false → UTC here
    assert [(m.customer_id, m.reason) for m in out if isinstance(m, StartMiss)] == [
        ("cheap", "start_condition_not_met")]


def test_zone_change_replans() -> None:
    """The plan follows the zone the last profile read gave (here: a shipping notice's)."""
    eng = engine()
    st = CustomerState("c1")
    berlin = with_(reachable("c1"), birthday="10-10")
    eng.handle(st, ev("product_viewed", 0, product_id="p"), T0, store(berlin).get)
    first = st.sched["birthday"]
    moved = with_(berlin, timezone="America/New_York")
    eng.handle(st, ev("order_shipped", 60, order_id="o1"), T0 + HOUR, store(moved).get)
    assert st.profile == moved
    due, key = st.sched["birthday"]
    assert key == first[1] == "2026-10-10" and due - first[0] == 6 * HOUR


# ---- determinism ------------------------------------------------------------------------

def timeline() -> list:
    evs = [ev("signed_up", 0, "a", birthday="10-03"), *VIP,
           ev("profile_updated", 3 * D, "b", birthday="1985-12-01"),
           order(5 * D, "b"), ev("added_to_cart", 6 * D, "b", product_id="p", price=3.0),
           order(40 * D, "a", 30)]
    return sorted(evs, key=lambda e: e.ts)


def test_replay_equals_live() -> None:
    horizon = T0 + 400 * DAY
    a = replay(engine(), timeline(), horizon)
    b = replay(engine(), timeline(), horizon)
    mine = ("birthday", "first_order_anniversary", "black_friday_vip")
    timed_a = sorted(s.send_id for s in sends(a) if s.trigger_id in mine)
    assert timed_a and timed_a == sorted(s.send_id for s in sends(b)
                                         if s.trigger_id in mine)
    c = live(engine(), timeline(), horizon)
    assert timed_a == sorted(s.send_id for s in sends(c) if s.trigger_id in mine)
    assert {s.trigger_id for s in sends(a) if s.trigger_id in mine} == set(mine)


def test_dormant_state_keeps_the_date_and_wakes() -> None:
    """A customer with only a birthday is kept (not empty) and wakes at the occurrence."""
    eng = engine()
    st = CustomerState("c1")
    s = store(reachable("c1"))
    eng.handle(st, ev("profile_updated", 0, birthday="11-11"), T0, s.get)
    eng.prune(st, T0 + 10 * DAY, sweep=True)
    st.seen.clear()
    assert not st.is_empty()
    wake = eng.next_wakeup(st)
    assert local(wake).date().isoformat() == "2026-11-11"
    out = eng.handle(st, None, wake, s.get)
    assert [x.channel for x in sends(at(out, "birthday"))] == ["email", "push"]


# ---- calendar ---------------------------------------------------------------------------

def test_cron_subset() -> None:
    c = calendar.Cron.parse("30 8,20 1-7 * 1")  # 08:30 and 20:30 on the 1st-7th OR Mondays
    assert c.hours == (8, 20) and c.minute == 30
    day = datetime(2026, 9, 21).date()  # a Monday
    assert c.runs_on(day) and c.runs_on(datetime(2026, 10, 3).date())
    assert not c.runs_on(datetime(2026, 9, 23).date())
    nxt = calendar.next_cron(c, T0, "UTC", "")
    assert nxt is not None and nxt[1] == "2026-09-21 20:30"
    # the 22nd-27th are neither the 1st-7th nor Mondays: the next Monday
    assert calendar.next_cron(c, T0, "UTC", nxt[1])[1] == "2026-09-28 08:30"
    assert calendar.next_cron(c, T0 + 12 * DAY, "UTC", "")[1] == "2026-10-03 20:30"


@pytest.mark.parametrize(("text", "message"), [
    ("0 10 * *", "has 4 fields"),
    ("*/5 10 * * *", "must be one number"),
    ("0 25 * * *", "outside 0-23"),
    ("0 10 31 2 *", "never happens"),
    ("0 10 * * MON", "names such as MON are not supported"),
])
def test_bad_crons(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calendar.Cron.parse(text)


def test_dates_values() -> None:
    assert calendar.birthday("1990-02-29") is None  # not a date (1990 is no leap year)
    assert calendar.birthday("02-29") == "02-29"
    assert calendar.birthday("1990-7-4") is None and calendar.birthday(19900704) is None
    assert calendar.date_ms("2020-03-01") == 1_583_020_800_000
    assert calendar.date_ms(1_583_020_800_000) == 1_583_020_800_000
    assert calendar.date_ms("yesterday") is None and calendar.date_ms(True) is None


# ---- config errors ----------------------------------------------------------------------

BASE = "id: t\nstart:\n{start}steps:\n  - template: win_back\n    channels: [email]\n"


@pytest.mark.parametrize(("start", "where", "message"), [
    ('  schedule: {cron: "0 10 30 2 *"}\n', "t.yaml:3:", "never happens"),
    ('  schedule: {cron: "* 10 * * *"}\n', "schedule.cron", "must be one number"),
    ('  schedule: {at: "2026-11-31 10:00"}\n', "schedule.at", "is not a calendar date"),
    ('  schedule: {at: "2026-11-24"}\n', "schedule.at", "write YYYY-MM-DD HH:MM"),
    ("  schedule: {}\n", "t.yaml:3:", "set exactly one of 'at' (a date and time) or 'cron'"),
    ('  schedule: {at: "2026-11-24 10:00"}\n  segment: vipp\n', "t.yaml:4:12 start.segment",
     "unknown segment 'vipp'; did you mean 'vip'?"),
    ("  date: profile.birthday\n  offset: 3\n", "t.yaml:4:11 start.offset",
     "write a number of days"),
    ("  date: profile.birthday\n  at: '9:00'\n", "start.at", "write HH:MM"),
    ("  date: profile.birthdate\n", "start.date", "profile.birthday"),
    ("  date: profile.birthday\n  where: [{field: props.x, op: exists}]\n", "t.yaml:3:",
     "a date start has no event: where reads customer.* only"),
    ("  event: order_placed\n  date: profile.birthday\n", "t.yaml:3:",
     "set exactly one of 'event', 'schedule' or 'date' (got event and date)"),
    ("  event: order_placed\n  spread: 1h\n", "t.yaml:3:",
     "'segment' and 'spread' apply to schedule and date starts"),
    ("  date: profile.birthday\n  spread: 8d\n", "t.yaml:3:", "at most 7d"),
])
def test_config_errors_name_file_line_field(tmp_path: Path, start: str, where: str,
                                            message: str) -> None:
    issues = config_issues(config_dir(tmp_path, triggers={"t": BASE.format(start=start)}))
    assert any(where in m and message in m for m in issues), issues


def test_key_and_inactivity_refused(tmp_path: Path) -> None:
    text = BASE.format(start="  date: profile.birthday\n") + "key: props.x\n"
    issues = config_issues(config_dir(tmp_path, triggers={"t": text}))
    assert any("its instance key is the occurrence" in m for m in issues), issues
    text = BASE.format(start="  date: profile.birthday\n") + "wait: {inactivity: 1h}\n"
    issues = config_issues(config_dir(tmp_path / "b", triggers={"t": text}))
    assert any("use wait.delay" in m for m in issues), issues


def test_shipped_config_loads() -> None:
    config = load_config()
    for tid in ("birthday", "first_order_anniversary", "black_friday_vip"):
        assert config.trigger(tid).start.timed
    assert Engine(config)._timed.needs_profile


def test_keyed_dormant_customer_is_woken_by_its_birthday() -> None:
    """The Bytewax glue (live): a customer at rest is compressed with the occurrence as its
    next timer and woken by it."""
    from operators.keyed import CustomerLogic, EngineRuntime

    class Wall:
        t = T0 + 1000

        def now_ms(self) -> int:
            return self.t

    wall, s = Wall(), store(reachable("c1"))
    rt = EngineRuntime(engine(), lambda: s.get, mode="live", clock=wall, idle_ttl_ms=10)
    logic = CustomerLogic(rt, None)
    logic.on_batch([ev("profile_updated", 0, birthday="1979-10-01")])
    wall.t += 10
    logic.on_notify()
    assert logic.state is None and logic.dormant is not None  # at rest, compressed
    wake = logic.dormant[0]
    assert local(wake).date().isoformat() == "2026-10-01" and local(wake).hour == 9
    wall.t = wake
    out, _ = logic.on_notify()
    assert [x.channel for x in sends(at(out, "birthday"))] == ["email", "push"]


def test_a_plan_made_under_another_config_is_redone_at_the_next_call(tmp_path: Path) -> None:
    """A customer's timed plan holds from one call to the next, except across a config
    change (a restart with edited YAML): the first call under the new config, a timer-only
    one here, plans again and fires by the new time."""
    import pickle

    def bday(at: str) -> str:
        return (f'id: bday\nstart: {{date: profile.birthday, at: "{at}"}}\n'
                "steps:\n  - template: win_back\n    channels: [email]\n")

    old = custom_engine(tmp_path / "old", triggers={"bday": bday("18:30")})
    new = custom_engine(tmp_path / "new", triggers={"bday": bday("08:00")})
    lookup = store(reachable("c1")).get
    st = CustomerState("c1")
    old.handle(st, ev("signed_up", 0, birthday="09-25"), T0, lookup)
    noon = int(datetime(2026, 9, 25, 12, 0, tzinfo=BERLIN).timestamp() * 1000)
    assert not sends(at(old.handle(pickle.loads(pickle.dumps(st)), None, noon, lookup), "bday"))
    got = sends(at(new.handle(pickle.loads(pickle.dumps(st)), None, noon, lookup), "bday"))
    assert [(local(s.ts).day, local(s.ts).hour) for s in got] == [(25, 8)]
