"""SIGTERM on `cdp-triggers run` (issue 10, operations): the process finishes its epoch,
flushes its sinks, snapshots and exits 0 within a bound; what it wrote is consistent
(every send row's command is on the topic, no command without its row) and a restart on
the same recovery directory carries on to the clean run's result with no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from chaos_helpers import (
    ROOT,
    TOPICS,
    Traffic,
    settings,
    topic_names,
    topic_send_ids,
)

from cdp_triggers.settings import Settings

pytestmark = [pytest.mark.integration]

#: seconds from SIGTERM to exit: one epoch (EPOCH_S) plus a flush and a snapshot, with room
#: for a loaded 2-core CI machine
EXIT_BOUND_S = 30.0
EPOCH_S = 1.0

# Bytewax 0.21.1 installs no SIGTERM handler and `cdp-triggers run` adds none: Python's default
# action (SIG_DFL) kills the process at once (exit -15), with the open epoch's buffered rows
# unwritten and their commands unproduced. See the module docstring and docs/operations.md.


class DiedOfSigterm(AssertionError):
    """The run was killed by SIGTERM instead of stopping gracefully."""


@pytest.fixture(scope="module")
def traffic(tmp_path_factory, redis_server) -> Traffic:
    return Traffic(tmp_path_factory.mktemp("sigterm"), redis_server.url, customers=800, days=2,
                   seed=41)


def _env(s: Settings) -> dict[str, str]:
    """The CDP_* environment giving `cdp-triggers run` these settings (lists and dicts as
    JSON, which pydantic-settings parses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    for name, value in s.model_dump(mode="json").items():
        if value is not None:
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            env[f"CDP_{name.upper()}"] = text
    return env


def cdp_run(s: Settings) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "run"], env=_env(s),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _rows(chdb: str, db: str) -> set[str]:
    """Send ids of the run's own chdb directory, read by another process (this test
    process may already run an embedded engine on another directory: one per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env["CDP_CLICKHOUSE_DATABASE"] = db
    r = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "sql", "--format", "csv",
                        "--clickhouse-url", chdb, "SELECT send_id FROM sends"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split()[1:])  # after the header line


def _wait_for_sends(p: subprocess.Popen, kafka, topic: str, timeout: float = 120.0) -> bool:
    """True once send commands are on the topic while ``p`` still runs."""
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if topic_send_ids(kafka, topic, idle=0.2):
            return p.poll() is None
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("stop_mode", ["end_input", "settle"])
def test_sigterm_mid_run_exits_cleanly_and_a_restart_continues(stop_mode, traffic, kafka,
                                                               redis_server, tmp_path):
    """A tailing live run gets SIGTERM once send commands flow; then the same recovery
    directory is run to the end of the topics. Both stop modes: the end of input, and
    settling (reading stops, two epochs close, the run interrupts itself)."""
    run = uuid.uuid4().hex[:8]
    chdb_dir = f"chdb://{tmp_path / 'chdb'}"  # the run's own engine: it is another process
    s = settings(kafka, redis_server.url, chdb_dir, run, traffic,
                 recovery_dir=tmp_path / "recovery", epoch_seconds=EPOCH_S,
                 stop_mode=stop_mode)
    # live clock (a tailing replay clock never passes the caught-up partitions)
    s = s.model_copy(update={"clock": "live", "horizon_ms": None})
    kafka.create_topics([*topic_names(run).values(), s.sends_topic, s.dead_letter_topic],
                        partitions=4)
    traffic.produce(kafka, topic_names(run), TOPICS)

    # tailing: it never ends by itself; small reads and flushes, so SIGTERM lands with
    # records buffered in the sink
    p = cdp_run(s.model_copy(update={"kafka_tail": True, "kafka_batch_size": 20,
                                     "clickhouse_batch_rows": 50}))
    took = 0.0
    try:
        assert _wait_for_sends(p, kafka, s.sends_topic), \
            p.communicate(timeout=30)[0].decode(errors="replace")[-3000:]
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            out = p.communicate(timeout=EXIT_BOUND_S + 30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {EXIT_BOUND_S + 30:.0f} s after SIGTERM")
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    print(f"\nSIGTERM → returncode {p.returncode} after {took:.1f} s")
    if p.returncode == -signal.SIGTERM:
        raise DiedOfSigterm(f"killed by SIGTERM after {took:.1f} s\n{out[-3000:]}")
    assert p.returncode == 0, f"SIGTERM: returncode {p.returncode}\n{out[-3000:]}"
    assert took <= EXIT_BOUND_S

    # flushed on the way out: every row's command is on the topic, and only those, once
    rows = _rows(chdb_dir, s.clickhouse_database)
    first = topic_send_ids(kafka, s.sends_topic, expected=len(rows))
    assert rows and set(first) == rows
    assert len(first) == len(set(first))

    # the restart resumes from the snapshot taken at SIGTERM, reads to the end of the
    # topics and exits: more sends, none of them twice
    again = cdp_run(s.model_copy(update={"kafka_tail": False}))
    try:
        out = again.communicate(timeout=240)[0].decode(errors="replace")
    finally:
        if again.poll() is None:
            again.kill()
            again.wait(30)
    assert again.returncode == 0, out[-3000:]
    final = _rows(chdb_dir, s.clickhouse_database)
    on_topic = topic_send_ids(kafka, s.sends_topic, expected=len(final))
    assert len(on_topic) == len(set(on_topic)), "duplicate send commands after the restart"
    assert set(on_topic) == final
    assert rows < final, "the restart decided nothing new: the first run was not mid-run"
