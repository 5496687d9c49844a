"""The stop's bookkeeping (``cdp_triggers.shutdown``), without a run: when a settling stop
may interrupt, and that an input stops reading but stays open."""

from __future__ import annotations

import pytest

from cdp_triggers import shutdown


@pytest.fixture
def settle_mode():
    """Settle mode as `cdp-triggers run` with recovery installs it; restored after."""
    shutdown._settle["fallback_s"] = 30.0
    yield
    shutdown._settle.clear()
    shutdown._closes.clear()
    shutdown._dirty.clear()
    shutdown.STOP.clear()


def test_a_settling_stop_waits_for_two_closes_of_every_input_and_a_flushed_sink(settle_mode):
    a, b, sink = object(), object(), object()
    shutdown.watch(a)
    shutdown.watch(b)
    shutdown.epoch_closed(a)  # before the stop: not counted
    shutdown.written(sink)
    assert not shutdown.settling()
    shutdown.STOP.set()
    assert shutdown.settling()
    for _ in range(shutdown.SETTLE_EPOCHS):
        shutdown.epoch_closed(a)
    assert not shutdown.settled()  # b's epochs have not closed yet
    for _ in range(shutdown.SETTLE_EPOCHS):
        shutdown.epoch_closed(b)
    assert not shutdown.settled()  # the sink holds records since its last snapshot
    shutdown.flushed(sink)
    assert shutdown.settled()
    shutdown.written(sink)  # (a timer's send decided meanwhile)
    assert not shutdown.settled()


def test_without_recovery_a_stop_ends_the_input_and_watches_nothing():
    part = object()
    shutdown.watch(part)
    shutdown.written(part)
    assert not shutdown._closes and not shutdown._dirty
    shutdown.STOP.set()
    try:
        assert not shutdown.settling()  # inputs end their partitions instead
        assert shutdown.fallback_s(1.0) == 30.0 and shutdown.fallback_s(10.0) == 40.0
    finally:
        shutdown.STOP.clear()


def test_a_settling_stop_without_recovery_is_refused_at_start():
    """Settling leaves the last epoch's work to the restart: without a recovery directory
    there is none to resume from, so `run` says so instead of starting."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env["CDP_STOP_MODE"] = "settle"
    r = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "run"], env=env,
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "CDP_STOP_MODE=settle needs CDP_RECOVERY_DIR" in r.stderr
