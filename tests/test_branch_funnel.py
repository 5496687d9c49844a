"""The branch_funnel analyst view on chdb: abandoned_cart's reminder branches (opened →
discount, not opened → last call); per branch, instances and the target step's messages."""

from __future__ import annotations

from cdp_triggers.clock import DAY, HOUR
from cdp_triggers.records import Conversion, Decision, Lifecycle, Outcome, Send
from sinks.clickhouse import ChdbBackend
from sinks.clickhouse_schema import ANALYST_VIEWS, rows_for
from tests.engine_helpers import T0, cart, engine, ev, order, replay, sends


def test_branch_funnel_counts_each_branch_and_its_target_step(backend: ChdbBackend,
                                                                db: str) -> None:
    assert ANALYST_VIEWS.index("branch_funnel") > ANALYST_VIEWS.index("send_facts")
    customers = ("reader", "buyer", "quiet")
    adds = [cart(0, customer=c, cart_id=f"k-{c}") for c in customers]
    first = replay(engine(), adds, T0 + 2 * HOUR)
    emails = {s.customer_id: s for s in sends(first)
              if s.channel == "email" and s.trigger_id == "abandoned_cart"}
    events = list(adds)
    for c in ("reader", "buyer"):  # read the reminder e-mail: the discount branch
        events.append(ev("message_opened", 2 * 60, c, send_id=emails[c].send_id,
                         channel="email"))
    events.append(order(26 * 60, "buyer"))  # after the discount went out (25 h)
    events.sort(key=lambda e: e.ts)
    out = [o for o in replay(engine(), events, T0 + 3 * DAY)
           if getattr(o, "trigger_id", "abandoned_cart") == "abandoned_cart"]
    kinds = (Decision, Send, Lifecycle, Outcome, Conversion)
    for r in out:
        if isinstance(r, kinds):
            table, row = rows_for(r)
            backend.insert_json_rows(f"{db}.{table}", [row])
    rows = backend.query_rows(
        f"SELECT from_step, to_step, instances, instances_sent, sent, converted "
        f"FROM {db}.branch_funnel WHERE trigger_id = 'abandoned_cart' ORDER BY from_step, "
        f"to_step")
    assert rows == [("discount", "end", 2, 0, 0, 0),
                    ("reminder", "discount", 2, 2, 2, 1),
                    ("reminder", "last_call", 1, 1, 1, 0)]
