"""Customer metrics (operators/metrics.py) on event timelines through the pure engine:
event counts in start conditions and step `when`s, order metrics, RFM scores and segments,
template vars, bounded state, config errors and determinism."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from engine_helpers import (
    T0,
    at,
    config_dir,
    config_issues,
    custom_engine,
    decisions,
    ev,
    lifecycle,
    live,
    reachable,
    replay,
    sends,
)

from cdp_triggers.clock import DAY, MINUTE
from config.schema import Rfm
from operators.engine import Engine
from operators.metrics import (
    MISSING,
    RFM_SEGMENTS,
    RFM_TABLE,
    Tracking,
    metric,
    rfm_scores,
    rfm_segment,
)
from state.customer import CustomerState
from state.profiles import DictProfileStore

D = 24 * 60  # a day in minutes (the helpers' time unit)

VIEWED_OFTEN = """
id: viewed_often
start:
  event: product_viewed
  where:
    - {field: customer.events.product_viewed, within: 7d, op: gte, value: 3}
reentry: {once: true}
steps:
  - template: win_back
    channels: [email]
    vars: {views: customer.events.product_viewed}
"""

NUDGE = """
id: nudge
start: {event: order_delivered}
key: props.order_id
wait: {delay: 2d}
steps:
  - template: win_back
    when:
      - {field: customer.events.review_submitted, since: instance_start, op: eq, value: 0}
    channels: [email]
    vars:
      aov: customer.aov
      reviews: customer.events.review_submitted
      segment: customer.rfm_segment
      score: customer.rfm_score
"""


def view(day: float, customer: str = "c1") -> object:
    return ev("product_viewed", day * D, customer, product_id="p1")


def order_at(day: float, total: float, customer: str = "c1") -> object:
    return ev("order_placed", day * D, customer, order_id=f"o{day}", total=total,
              currency="EUR", items=[])


def run(eng: Engine, events: list, customer: str = "c1") -> tuple[CustomerState, list]:
    """Replay ``events`` of one customer; return the state and the outputs."""
    store = DictProfileStore([reachable(customer)])
    st, out = CustomerState(customer), []
    for e in events:
        out += eng.handle(st, e, max(st.high_water, e.ts), store.get)
    return st, out


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return custom_engine(tmp_path_factory.mktemp("metrics"),
                         triggers={"viewed_often": VIEWED_OFTEN, "nudge": NUDGE})


# ---- event counts ---------------------------------------------------------------------

def test_viewed_three_times_within_seven_days_starts(eng: Engine) -> None:
    # days 0, 3, 8: only two in any 7 days; day 9 makes three (3, 8, 9)
    _, out = run(eng, [view(0), view(3), view(8), view(9), ev("signed_up", 10 * D)])
    started = lifecycle(at(out, "viewed_often"), "started")
    assert [s.ts for s in started] == [T0 + 9 * DAY]
    assert [s.variables["views"] for s in sends(at(out, "viewed_often"))] == [4]  # ever


def test_a_count_within_a_window_only_is_forgotten_with_it(tmp_path: Path) -> None:
    """Without a condition or var counting since ever, nothing outlives the window: the
    customer's state empties (Bytewax may discard it) once the views are old."""
    trigger = VIEWED_OFTEN.replace("    vars: {views: customer.events.product_viewed}\n", "")
    eng = custom_engine(tmp_path, triggers={"viewed_often": trigger})
    st, _ = run(eng, [view(0), view(1)])
    assert "product_viewed" not in st.ev_total and len(st.ev_recent["product_viewed"]) == 2
    eng.prune(st, T0 + 20 * DAY, sweep=True)
    assert not st.ev_recent
    st.seen.clear()  # (the dedup window is pruned on its own schedule)
    assert st.is_empty()


def test_counts_keep_only_what_the_config_needs(eng: Engine) -> None:
    st, _ = run(eng, [view(i / 10) for i in range(200)])
    assert st.ev_total["product_viewed"] == (200, T0)  # ever: exact
    assert len(st.ev_recent["product_viewed"]) == 4  # gte 3 needs at most 4
    assert len(pickle.dumps(st.ev_recent)) < 200
    # a view 30 days later: the old ones are out of every window and pruned
    st2, _ = run(eng, [view(0), view(1), view(40), view(41)])
    assert all(ts >= T0 + 40 * DAY - 8 * DAY for ts, _ in st2.ev_recent["product_viewed"])


def test_since_instance_start_skips_after_a_review(eng: Engine) -> None:
    delivered = ev("order_delivered", 0, order_id="o1")
    review = ev("review_submitted", 1 * D, order_id="o9", product_id="p", rating=5)
    old_review = ev("review_submitted", -1 * D, order_id="o8", product_id="p", rating=4)
    _, out = run(eng, [delivered, review, ev("signed_up", 3 * D)])
    nudge = decisions(at(out, "nudge"))
    assert [(d.status, d.reason) for d in nudge] == [("suppressed", "condition_not_met")]
    # a review before the instance started does not count "since instance_start"
    _, out = run(eng, [old_review, ev("order_delivered", 0, order_id="o2"),
                       ev("signed_up", 3 * D)])
    assert [d.status for d in decisions(at(out, "nudge"))] == ["sent"]


def test_metric_template_vars(eng: Engine) -> None:
    events = [order_at(0, 100), order_at(1, 50),
              ev("review_submitted", 1.5 * D, order_id="o0", product_id="p", rating=5),
              ev("order_delivered", 2 * D, order_id="o1"), ev("signed_up", 5 * D)]
    _, out = run(eng, events)
    (send,) = sends(at(out, "nudge"))
    # at day 4: 2 orders, 150 spent; R 5 (4 days), F 2, M 2 (150 ≤ 150) → FM 2
    assert send.variables == {"key": "o1", "aov": 75.0, "reviews": 1,
                              "segment": "potential_loyalists", "score": 522}


# ---- orders and RFM ---------------------------------------------------------------------

def test_order_metrics_over_the_window(eng: Engine) -> None:
    st, _ = run(eng, [order_at(0, 100), order_at(200, 50), order_at(400, 30.5)])
    tr, now = Tracking(), T0 + 400 * DAY
    values = {name: metric(tr, st, name, now) for name in (
        "orders_count", "total_spent", "aov", "first_order_at", "days_since_first_order",
        "recency_days", "frequency", "monetary", "rfm_recency", "rfm_frequency",
        "rfm_monetary", "rfm_score", "rfm_segment")}
    assert values == {"orders_count": 3, "total_spent": 180.5, "aov": 60.17,
                      "first_order_at": T0, "days_since_first_order": 400.0,
                      "recency_days": 0, "frequency": 2, "monetary": 80.5,
                      "rfm_recency": 5, "rfm_frequency": 2, "rfm_monetary": 2,
                      "rfm_score": 522, "rfm_segment": "potential_loyalists"}
    # the order of day 0 is out of the 365-day window: pruned from state
    assert [ts for ts, _ in st.orders] == [T0 + 200 * DAY, T0 + 400 * DAY]
    # 200 days on, nothing in the window any more: lost
    later = T0 + 800 * DAY
    assert rfm_scores(tr.rfm, st, later) == (1, 1, 1)
    assert metric(tr, st, "rfm_segment", later) == "lost"


def test_no_orders_no_rfm() -> None:
    st, tr = CustomerState("c"), Tracking()
    assert metric(tr, st, "rfm_segment", T0) is MISSING
    assert metric(tr, st, "aov", T0) is MISSING
    assert metric(tr, st, "frequency", T0) == 0


@pytest.mark.parametrize(("r", "f", "m", "segment"), [
    (5, 5, 5, "champions"), (5, 4, 3, "champions"), (5, 1, 1, "new_customers"),
    (5, 2, 3, "potential_loyalists"), (4, 1, 1, "promising"), (4, 5, 4, "loyal_customers"),
    (3, 3, 3, "need_attention"), (3, 1, 2, "about_to_sleep"), (3, 4, 4, "loyal_customers"),
    (2, 3, 3, "at_risk"), (2, 5, 5, "cant_lose_them"), (2, 1, 2, "hibernating"),
    (1, 1, 1, "lost"), (1, 2, 2, "lost"), (1, 4, 3, "at_risk"), (1, 5, 4, "cant_lose_them"),
])
def test_rfm_table(r: int, f: int, m: int, segment: str) -> None:
    assert rfm_segment(r, f, m) == segment


def test_rfm_table_covers_every_score_with_the_eleven_segments() -> None:
    assert set(RFM_TABLE) == {(r, fm) for r in range(1, 6) for fm in range(1, 6)}
    assert set(RFM_TABLE.values()) == set(RFM_SEGMENTS) and len(RFM_SEGMENTS) == 11


@pytest.mark.parametrize(("days", "orders", "money", "scores"), [
    (0, 1, 10.0, (5, 1, 1)), (30, 2, 50.0, (5, 2, 1)), (31, 3, 50.01, (4, 3, 2)),
    (90, 5, 400.0, (4, 4, 3)), (180, 6, 1000.0, (3, 5, 4)), (364, 6, 1000.01, (2, 5, 5)),
    (365, 6, 1000.01, (2, 1, 1)), (366, 1, 5.0, (1, 1, 1)),
])
def test_rfm_score_boundaries(days: int, orders: int, money: float,
                              scores: tuple[int, int, int]) -> None:
    """Default boundaries: recency 30/90/180/365 days, frequency 1/2/3/5, monetary
    50/150/400/1000; a value equal to a boundary takes the lower band; orders older than
    the 365-day window no longer count for F and M."""
    st = CustomerState("c")
    last = T0 + 400 * DAY
    cents = round(money * 100)
    st.orders = tuple((last - i * MINUTE, cents if i == 0 else 0) for i in range(orders))[::-1]
    st.orders_count, st.last_order_at = orders, last
    assert rfm_scores(Rfm(), st, last + days * DAY) == scores


# ---- config errors ----------------------------------------------------------------------

def _issues(tmp_path: Path, trigger: str) -> list[str]:
    return config_issues(config_dir(tmp_path, triggers={"bad": trigger}))


BAD = """id: bad
start:
  event: order_delivered
  where:
    - {cond}
steps:
  - template: win_back
    channels: [email]
"""


@pytest.mark.parametrize(("cond", "field", "message"), [
    ("{field: customer.events.prodcut_viewed, within: 7d, op: gte, value: 3}",
     "start.where[0].field", "unknown event type 'prodcut_viewed'; did you mean "
     "'product_viewed'?"),
    ("{field: customer.events.review_submitted, since: instance_start, op: eq, value: 0}",
     "start.where[0].since", "'since' needs a trigger instance, which start and cancel_on "
     "conditions have none"),
    ("{field: customer.orders_count, within: 7d, op: gte, value: 3}",
     "start.where[0]", "'within' only applies to customer.events.<event type>"),
    ("{field: customer.events.product_viewed, op: gte, value: 500}",
     "start.where[0]", "an event count is compared with at most 50"),
    ("{field: customer.events.product_viewed, within: 7, op: gte, value: 3}",
     "start.where[0].within", "a bare number is not a duration"),
    ("{field: customer.rfm_segmnt, op: eq, value: lost}",
     "start.where[0].field", "unknown customer metric 'rfm_segmnt'; did you mean "
     "'rfm_segment'?"),
])
def test_metric_config_errors_name_file_line_and_field(tmp_path: Path, cond: str, field: str,
                                                        message: str) -> None:
    issues = _issues(tmp_path, BAD.replace("{cond}", cond))
    hit = [m for m in issues if "bad.yaml:5:" in m and f" {field}: " in m]
    assert hit and message in hit[0], issues


def test_unknown_key_path_of_a_counted_event(tmp_path: Path) -> None:
    trigger = """id: bad
start: {event: order_delivered}
key: props.order_id
steps:
  - template: win_back
    when:
      - {field: customer.events.review_submitted, key: props.order_idd, op: eq, value: 0}
    channels: [email]
"""
    issues = _issues(tmp_path, trigger)
    assert any("bad.yaml:7:" in m and "steps[0].when[0].key: review_submitted has no "
               "props.order_idd" in m for m in issues), issues


# ---- determinism --------------------------------------------------------------------------

def _timeline() -> list:
    out = []
    for c in ("a", "b", "c"):
        out += [view(d, c) for d in (0, 2, 2.5, 9, 10, 10.2)]
        out += [ev("order_delivered", 1 * D, c, order_id=f"{c}1"),
                ev("review_submitted", 2 * D, c, order_id=f"{c}1", product_id="p", rating=3),
                order_at(3, 120, c)]
    return sorted(out, key=lambda e: (e.ts, e.event_id))


def test_same_events_same_outputs(tmp_path: Path) -> None:
    events, horizon = _timeline(), T0 + 30 * DAY
    kw = {"triggers": {"viewed_often": VIEWED_OFTEN, "nudge": NUDGE}}
    a = replay(custom_engine(tmp_path / "a", **kw), events, horizon)
    b = replay(custom_engine(tmp_path / "b", **kw), events, horizon)
    assert a == b and sends(a)
    c = live(custom_engine(tmp_path / "c", **kw), events, horizon)
    assert sorted(s.send_id for s in sends(c)) == sorted(s.send_id for s in sends(a))
