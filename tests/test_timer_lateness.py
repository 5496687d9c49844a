"""Live runs publish how late a timer fires (wall clock after due + grace), from the keyed
step, to ``cdp_timer_lateness_seconds``."""

from __future__ import annotations

from cdp_triggers.clock import MINUTE, ManualClock
from cdp_triggers.metrics import TIMER_LATENESS
from cdp_triggers.records import Lifecycle
from operators.keyed import CustomerLogic, EngineRuntime
from tests.engine_helpers import T0, cart, engine


def _count_and_sum() -> tuple[float, float]:
    samples = {s.name: s.value for m in TIMER_LATENESS.collect() for s in m.samples}
    return samples["cdp_timer_lateness_seconds_count"], samples["cdp_timer_lateness_seconds_sum"]


def test_a_live_timer_reports_its_lateness() -> None:
    eng = engine()
    clock = ManualClock(T0)
    rt = EngineRuntime(eng, lambda: (lambda cid: None), mode="live", clock=clock,
                       idle_ttl_ms=None)
    logic = CustomerLogic(rt, None)
    logic.on_batch([cart(0)])
    due = eng.next_wakeup(logic.state)
    assert due is not None
    count, total = _count_and_sum()
    clock.set(due - 1)
    logic.on_notify()  # not due yet: nothing observed
    assert _count_and_sum() == (count, total)
    clock.set(due + 1_500)  # woken 1.5 s after due + grace
    out, _ = logic.on_notify()
    assert _count_and_sum()[0] == count + 1
    assert abs(_count_and_sum()[1] - total - 1.5) < 1e-9
    assert out and not any(isinstance(r, Lifecycle) and r.action == "started" for r in out)
    assert due - T0 >= 60 * MINUTE  # the cart's inactivity wait
