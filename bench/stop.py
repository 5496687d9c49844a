"""How long `cdp-triggers run` takes to stop on SIGTERM, by the customers it holds (issue 10).

For each size: synthetic traffic of ``N`` customers × ``--days`` on a Tansu broker (4
partitions a topic), one `cdp-triggers run` process with recovery on, the live clock and
``--epoch`` s epochs reads it all (``cdp_events_read_total`` reaches what was produced),
then gets SIGTERM; the figure is the time from the signal to the process's exit, for each
``CDP_STOP_MODE`` (the customers held are counted in the recovery snapshot afterwards).
``--code DIR`` runs another checkout's `cdp-triggers` on the same topics as well (an A/B).

Run: ``python -m bench.stop --customers 100000 600000 [--days 0.5] [--epoch 2]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _read(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return -1.0
    return sum(float(line.split()[-1]) for line in text.decode().splitlines()
               if line.startswith("cdp_events_read_total{"))


def stop_once(s, code: Path, produced: int, tmp: Path, tag: str) -> dict:
    from chaos_helpers import env_of
    from services import free_port

    port = free_port()
    s = s.model_copy(update={"recovery_dir": tmp / f"rec-{tag}", "metrics_port": port,
                             "clickhouse_url": f"chdb://{tmp}/ch-{tag}",
                             "clickhouse_database": f"db_{tag}",
                             "sends_topic": f"sends_{tag}"})
    env = env_of(s)
    env["CDP_COMPILED_DIR"] = str(code / ".build" / "compiled")
    p = subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "run"], env=env, cwd=code,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while _read(port) < produced and p.poll() is None and time.monotonic() - t0 < 900:
        time.sleep(0.5)
    read_s = time.monotonic() - t0
    time.sleep(2 * s.epoch_seconds + 1)  # its sinks flushed, the state snapshotted
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    stop_s = time.monotonic() - t1
    return {"read_s": read_s, "stop_s": stop_s, "rc": p.returncode, "held": _held(s),
            "err": err[-500:] if p.returncode else ""}


def _held(s) -> int:
    """Customers in the recovery snapshot (the engine step's keys, all partitions)."""
    import sqlite3

    n = 0
    for f in Path(s.recovery_dir).glob("part-*.sqlite3"):
        with sqlite3.connect(f) as db:
            n += db.execute("SELECT count(DISTINCT state_key) FROM snaps WHERE step_id LIKE "
                            "'%.engine' AND ser_change IS NOT NULL").fetchone()[0]
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--days", type=float, default=0.5)
    ap.add_argument("--epoch", type=float, default=2.0)
    ap.add_argument("--modes", nargs="+", default=["end_input", "settle"])
    ap.add_argument("--code", type=Path, action="append", default=[],
                    help="another checkout to run as well (A/B), its hot path compiled")
    a = ap.parse_args(argv)
    from chaos_helpers import TOPICS, Traffic, settings, topic_names
    from services import RedisServer, TansuBroker

    codes = [ROOT, *a.code]
    tmp = Path(tempfile.mkdtemp(prefix="cdp-stop-"))
    kafka, redis = TansuBroker(), RedisServer()
    kafka.start()
    redis.start()
    try:
        for n in a.customers:
            traffic = Traffic(tmp, redis.url, customers=n, days=a.days, seed=9)
            run = uuid.uuid4().hex[:8]
            s = settings(kafka, redis.url, "", run, traffic, epoch_seconds=a.epoch)
            s = s.model_copy(update={"clock": "live", "horizon_ms": None, "kafka_tail": True})
            kafka.create_topics(list(topic_names(run).values()), partitions=4)
            traffic.produce(kafka, topic_names(run), TOPICS)
            runs = [(code, mode) for code in codes for mode in a.modes]
            for i, (code, mode) in enumerate(runs):
                kafka.create_topics([f"sends_{run}{i}", s.dead_letter_topic], partitions=4)
                r = stop_once(s.model_copy(update={"stop_mode": mode}), code,
                              len(traffic.raws), tmp, f"{run}{i}")
                print(f"{n:>8,} customers, {len(traffic.raws):,} events, {code.name} "
                      f"{mode}: read in {r['read_s']:.1f} s, {r['held']:,} held, stop "
                      f"{r['stop_s']:.1f} s, exit {r['rc']} {r['err']}", flush=True)
    finally:
        kafka.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
