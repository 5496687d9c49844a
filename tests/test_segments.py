"""Dynamic segments (config/segments, operators/segments.py) on event timelines: membership
on events and on the daily check, segment_entered/left starting and cancelling triggers, the
shipped vip segment and vip_welcome, bounded timers, config errors, determinism, and the
ClickHouse table and views (chdb)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from engine_helpers import (
    T0,
    at,
    config_dir,
    config_issues,
    custom_engine,
    ev,
    lifecycle,
    live,
    reachable,
    replay,
    sends,
)

from cdp_triggers.clock import DAY
from cdp_triggers.records import SegmentChange
from config.loader import DEFAULT_CONFIG_DIR, load_config
from config.schema import Rfm
from operators.engine import Engine
from operators.metrics import boundaries_from_quantiles, rfm_boundaries_from_clickhouse
from operators.segments import Segments
from sinks.clickhouse import ChdbBackend
from sinks.clickhouse_schema import rows_for
from state.customer import CustomerState
from state.profiles import DictProfileStore

D = 24 * 60  # a day in minutes

LAPSED = """id: lapsed
description: No order for 30 days.
conditions:
  - {field: customer.days_since_last_order, op: gte, value: 30}
"""
BIG = """id: big_basket
conditions:
  - {field: customer.cart_total, op: gte, value: 100}
"""
COMEBACK = """id: comeback
start:
  event: segment_entered
  where: [{field: props.segment, op: eq, value: lapsed}]
wait: {delay: 2d}
cancel_on:
  - event: segment_left
    where: [{field: props.segment, op: eq, value: lapsed}]
steps:
  - template: win_back
    channels: [email]
"""
VIP = (DEFAULT_CONFIG_DIR / "segments" / "vip.yaml").read_text()
VIP_THANKS = """id: vip_thanks
start:
  event: order_placed
  where:
    - {field: customer.segments, any: {op: eq, value: vip}}
steps:
  - template: win_back
    channels: [email]
"""


def buy(day: float, total: float = 20.0, customer: str = "c1") -> object:
    return ev("order_placed", day * D, customer, order_id=f"o{day}", total=total,
              currency="EUR", items=[])


def changes(out: list) -> list[tuple[str, str, int]]:
    return [(c.segment, c.action, c.ts) for c in out if isinstance(c, SegmentChange)]


def midnight_after(ts: int) -> int:
    return (ts // DAY + 1) * DAY


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return custom_engine(tmp_path_factory.mktemp("segments"), only_segments=True,
                         segments={"lapsed": LAPSED, "big_basket": BIG, "vip": VIP},
                         triggers={"comeback": COMEBACK, "vip_thanks": VIP_THANKS})


# ---- the shipped vip segment ----------------------------------------------------------------

def vip_only(root: Path) -> Engine:
    """The shipped config with its lifetime vip segment only (the shipped at_risk and
    non_openers segments read metrics that change with time: they have a daily check)."""
    return Engine(load_config(config_dir(root, segments={"vip": VIP}, only_segments=True)))


def test_vip_membership_starts_vip_welcome(tmp_path: Path) -> None:
    eng = vip_only(tmp_path)
    events = [buy(0, 100), buy(5, 90), buy(9, 150), buy(20, 10)]
    out = replay(eng, events, T0 + 30 * DAY)
    assert changes(out) == [("vip", "entered", T0 + 9 * DAY)]  # 3 orders, 340 spent
    change = next(o for o in out if isinstance(o, SegmentChange))
    (started,) = lifecycle(at(out, "vip_welcome"), "started")
    assert started.event_id == change.change_id  # the segment event, applied like any
    (send,) = sends(at(out, "vip_welcome"))
    assert send.ts == T0 + 9 * DAY + 3_600_000  # wait 1h
    # a lifetime segment: no daily segment timer
    st = CustomerState("c1")
    store = DictProfileStore([reachable()])
    for e in events:
        eng.handle(st, e, e.ts, store.get)
    eng.handle(st, None, T0 + 30 * DAY, store.get)
    assert st.segments == ("vip",) and st.seg_due == 0


def test_segments_list_in_a_condition(eng: Engine) -> None:
    """customer.segments is membership as of the event: the order that makes a customer
    vip already sees it."""
    out = replay(eng, [buy(0, 100), buy(1, 100), buy(2, 100), buy(3, 5)], T0 + 4 * DAY)
    assert [s.ts for s in sends(at(out, "vip_thanks"))] == [T0 + 2 * DAY, T0 + 3 * DAY]


# ---- time-based membership: the daily check ---------------------------------------------

def test_lapsed_enters_at_the_first_midnight_after_30_days(eng: Engine) -> None:
    out = replay(eng, [buy(0)], T0 + 40 * DAY)
    entered = midnight_after(T0 + 30 * DAY - 1)
    assert changes(out) == [("lapsed", "entered", entered)]
    assert [s.ts for s in sends(at(out, "comeback"))] == [entered + 2 * DAY]


def test_an_order_leaves_and_cancels(eng: Engine) -> None:
    out = replay(eng, [buy(0), buy(30.9)], T0 + 40 * DAY)
    entered = midnight_after(T0 + 30 * DAY - 1)
    assert changes(out) == [("lapsed", "entered", entered),
                            ("lapsed", "left", T0 + int(30.9 * DAY))]
    (cancelled,) = lifecycle(at(out, "comeback"), "cancelled")
    assert cancelled.reason == "segment_left" and not sends(at(out, "comeback"))


def test_membership_changes_on_events(eng: Engine) -> None:
    cart = [ev("added_to_cart", 10, product_id="p1", price=60.0, quantity=2),
            ev("removed_from_cart", 20, product_id="p1")]
    out = replay(eng, cart, T0 + DAY)
    assert changes(out) == [("big_basket", "entered", cart[0].ts),
                            ("big_basket", "left", cart[1].ts)]


TIMED = {
    "lapsed": LAPSED,
    "recent": "id: recent\nconditions:\n  - {field: customer.recency_days, op: lte, value: 10}\n",
    "old_friend": "id: old_friend\nconditions:\n  - {field: customer.days_since_first_order, "
                  "op: gt, value: 100.5}\n",
    "at_risk": "id: at_risk\nconditions:\n  - {field: customer.rfm_segment, op: in, "
               "value: [at_risk, cant_lose_them, hibernating]}\n",
    "loyal": "id: loyal\nconditions:\n  - {field: customer.rfm_score, op: gte, value: 333}\n",
    "twice": "id: twice\nconditions:\n  - {field: customer.frequency, op: gte, value: 2}\n",
    "browsing": "id: browsing\nconditions:\n  - {field: customer.events.product_viewed, "
                "within: 7d, op: gte, value: 2}\n",
    "vip": VIP,
}


class EveryMidnight(Segments):
    """The reference: a check at every 00:00 UTC for 800 days after the last event."""

    def next_check(self, state: CustomerState, t: int) -> int:
        return (t // DAY + 1) * DAY if t < state.high_water + 800 * DAY else 0


def test_time_checks_only_when_a_condition_can_change(tmp_path: Path) -> None:
    """The engine checks at the midnights after a threshold is reached or an order or a
    counted event leaves its window, and finds exactly the changes a check every midnight
    finds, on random timelines (events between the checks included)."""
    rng = random.Random(7)
    events = []
    for c in range(30):
        for _ in range(rng.randint(1, 6)):
            day = rng.uniform(0, 500)
            events.append(buy(day, round(rng.uniform(5, 400), 2), f"c{c}") if rng.random() < 0.6
                          else ev("product_viewed", day * D, f"c{c}", product_id="p"))
    events.sort(key=lambda e: (e.ts, e.event_id))
    horizon = T0 + 1400 * DAY
    eng = custom_engine(tmp_path / "a", segments=TIMED, only_segments=True)
    ref = custom_engine(tmp_path / "b", segments=TIMED, only_segments=True)
    ref._segments = EveryMidnight(ref.config.segments, ref._metrics)
    got, want = changes(replay(eng, events, horizon)), changes(replay(ref, events, horizon))
    assert got == want and len(got) > 100
    assert {seg for seg, _, _ in got} == set(TIMED)

    # one customer, 3 orders: checks on a handful of days, not every day for a year
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    for e in (buy(0), buy(3), buy(40)):
        eng.handle(st, e, e.ts, store.get)
    checks = []
    while (due := st.seg_due) and len(checks) < 1000:
        checks.append(due)
        eng.handle(st, None, due + eng.config.policy.late_event_grace, store.get)
    assert all(c % DAY == 0 for c in checks) and 5 <= len(checks) <= 30, len(checks)
    assert st.seg_due == 0


def test_an_event_within_grace_of_a_due_check_checks_every_segment(tmp_path: Path) -> None:
    """A view (which moves only 'browsing') read 2 minutes after the midnight at which
    'lapsed' is due, before that check fired: it checks every segment then."""
    eng = custom_engine(tmp_path, segments=TIMED, only_segments=True)
    entered = midnight_after(T0 + 30 * DAY - 1)
    late_view = ev("product_viewed", (entered - T0) / 60_000 + 2, product_id="p")
    out = replay(eng, [buy(0), late_view], T0 + 40 * DAY)
    assert ("lapsed", "entered", late_view.ts) in changes(out)


def test_no_timed_segment_no_timer(tmp_path: Path) -> None:
    st, store = CustomerState("c1"), DictProfileStore([reachable()])
    eng = vip_only(tmp_path)  # vip only (lifetime metrics)
    eng.handle(st, buy(0), T0, store.get)
    assert st.seg_due == 0
    # the instances' own timers only (win_back's 60 days, payment_reminder's hour, …)
    assert eng.next_wakeup(st) == min(i.due for i in st.instances.values()) + 5 * 60_000


def test_replay_and_live_agree(tmp_path: Path) -> None:
    events = sorted([buy(d, 60, c) for c, days in (("a", (0, 45)), ("b", (3,)),
                                                    ("c", (1, 2, 31.5, 80)))
                     for d in days], key=lambda e: e.ts)
    kw = {"segments": {"lapsed": LAPSED, "vip": VIP}, "triggers": {"comeback": COMEBACK},
          "only_segments": True}
    horizon = T0 + 120 * DAY
    a = replay(custom_engine(tmp_path / "a", **kw), events, horizon)
    b = replay(custom_engine(tmp_path / "b", **kw), events, horizon)
    c = live(custom_engine(tmp_path / "c", **kw), events, horizon)
    assert a == b  # same events in → same records, segment events in the same order
    key = sorted
    assert key((o.change_id, o.ts) for o in a if isinstance(o, SegmentChange)) == key(
        (o.change_id, o.ts) for o in c if isinstance(o, SegmentChange))
    assert key(s.send_id for s in sends(a)) == key(s.send_id for s in sends(c))
    assert sends(at(a, "comeback"))


# ---- config errors ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "where", "message"), [
    ("id: s\nconditions:\n  - {field: props.total, op: gte, value: 1}\n",
     "s.yaml:3:13 conditions[0].field", "a segment reads customer.<metric>"),
    ("id: s\nconditions:\n  - {field: customer.events.review_submitted, since: "
     "instance_start, op: gte, value: 1}\n",
     "s.yaml:3:", "'since' needs a trigger instance, which a segment has none"),
    ("id: s\nconditions:\n  - {field: customer.events.reviewd, op: gte, value: 1}\n",
     "s.yaml:3:13 conditions[0].field", "unknown event type 'reviewd'"),
    ("id: s\nconditions: []\n", "s.yaml:2:", "at least 1 item"),
    ("id: s\nconditions:\n  - {field: customer.segments, any: {op: eq, value: vip}}\n",
     "s.yaml:3:13 conditions[0].field", "a segment reads customer.<metric>"),
])
def test_segment_errors_name_file_line_field(tmp_path: Path, text: str, where: str,
                                             message: str) -> None:
    issues = config_issues(config_dir(tmp_path, segments={"s": text}))
    assert any(where in m and message in m for m in issues), issues


def test_duplicate_segment_id(tmp_path: Path) -> None:
    issues = config_issues(config_dir(tmp_path, segments={"a": LAPSED, "b": LAPSED}))
    assert any("b.yaml:1:5 id: duplicate segment id 'lapsed' (also in" in m
               for m in issues), issues


def test_bad_rfm_boundaries(tmp_path: Path) -> None:
    issues = config_issues(config_dir(tmp_path, rfm="frequency: [1, 3, 2, 5]\n"))
    assert any("rfm.yaml:1:12 frequency: boundaries must be strictly ascending" in m
               for m in issues), issues


# ---- ClickHouse -------------------------------------------------------------------------

def test_segment_changes_table_and_views(backend: ChdbBackend, db: str) -> None:
    out = replay(custom_engine(Path(f"/tmp/seg-{db}"), only_segments=True,
                               segments={"lapsed": LAPSED, "vip": VIP}),
                 [buy(0, customer="a"), buy(0, customer="b"), buy(35, customer="b")],
                 T0 + 40 * DAY)
    records = [o for o in out if isinstance(o, SegmentChange)]
    assert len(records) == 3  # a entered; b entered, then left
    for _ in range(2):  # a replay writes the same ids again
        for r in records:
            table, row = rows_for(r)
            backend.insert_json_rows(f"{db}.{table}", [row])
    rows = backend.query_rows(f"SELECT customer_id, segment, action FROM {db}.segment_changes "
                              "ORDER BY ts, customer_id")
    assert rows == [("a", "lapsed", "entered"), ("b", "lapsed", "entered"),
                    ("b", "lapsed", "left")]
    members = backend.query_rows(f"SELECT customer_id, segment FROM {db}.segment_membership")
    assert members == [("a", "lapsed")]


def test_rfm_boundaries_from_clickhouse(backend: ChdbBackend, db: str) -> None:
    from cdp_triggers.records import Conversion

    now = T0 + 100 * DAY
    convs = [Conversion(f"cv{c}{i}", f"c{c}", f"o{c}{i}", 10.0 * (c + 1), "EUR", f"s{c}{i}",
                        "t", "", "email", now - (c * 7 + i) * DAY, now - (c * 7 + i) * DAY)
             for c in range(10) for i in range(c % 4 + 1)]
    for r in convs:
        table, row = rows_for(r)
        backend.insert_json_rows(f"{db}.{table}", [row])
    rfm = rfm_boundaries_from_clickhouse(backend, db, now)
    assert rfm != Rfm() and len(rfm.frequency) == 4
    assert rfm.recency_days == sorted(rfm.recency_days) and rfm.monetary[0] > 0
    assert rfm_boundaries_from_clickhouse(backend, db, T0 - 400 * DAY) == Rfm()  # no orders
    # ties between quintiles are spread so boundaries stay ascending (a valid config)
    tied = boundaries_from_quantiles({"recency": [3, 3, 3, 9], "frequency": [1, 1, 1, 1],
                                      "monetary": [10, 10, 20, 30]})
    assert tied.frequency == [1, 2, 3, 4] and tied.recency_days == [3, 4, 5, 9]
