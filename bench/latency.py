"""Live-mode latency of ``cdp-triggers run`` on a local Kafka-protocol broker (Tansu).

A background load of ``product_viewed`` events at ``--rate`` events/s (event time = now) runs
while the sparse topics (consents, product_updates, outcomes) stay nearly idle, and two kinds
of probes are measured on the ``sends`` topic:

- transactional: ``order_shipped`` (order_status, zero grace), ``--probes`` per second:
  from the moment it is produced to the moment its send command is read from ``sends``;
- timers: ``added_to_cart`` for a fresh customer, abandoned cart with a 10 s inactivity
  wait and no grace (a bench copy of the shipped config under a neutral policy): from the
  reminder's due time (event time + 10 s) to its send command on ``sends``.

Reports p50 / p99 / max in milliseconds. Wall clocks of producer, flow and reader are the
same machine's, so differences are exact. Run: ``python -m bench.latency [--rate 2000]
[--seconds 30]``; results go to docs/benchmarks.md ("Latency (issue 10)").
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TOPICS = ("clickstream", "orders", "outcomes", "consents", "product_updates")
WAIT_S = 10


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bench_config() -> Path:
    """The shipped triggers, neutral policy (no caps, quiet hours, holdout: any hour),
    abandoned cart after 10 s of inactivity and no grace."""
    from config.loader import DEFAULT_CONFIG_DIR

    root = Path(tempfile.mkdtemp(prefix="cdp-latency-")) / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "schema"))
    (root / "policy.yaml").write_text("late_event_grace: 0s\n")
    cart = root / "triggers" / "abandoned_cart.yaml"
    text = cart.read_text().replace("inactivity: 1h", f"inactivity: {WAIT_S}s")
    cart.write_text(text.replace("cooldown: 24h", "cooldown: 1m"))
    return root


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    xs = sorted(xs)
    return {"n": len(xs), "p50": statistics.median(xs),
            "p99": xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))], "max": xs[-1]}


class Reader(threading.Thread):
    """Reads ``sends`` from its end; records when each customer's command arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4()}",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        parts = self.c.list_topics(topic, timeout=10).topics[topic].partitions
        self.c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        self.seen: dict[str, tuple[int, dict[str, Any]]] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            for m in self.c.consume(500, 0.05):
                if m.error() is None:
                    at = now_ms()
                    v = orjson.loads(m.value())
                    self.seen.setdefault(v["customer_id"], (at, v))
        self.c.close()


def run(rate: int, seconds: float, probes: int, batch_seconds: float,
        extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from confluent_kafka import Producer
    from services import RedisServer, TansuBroker

    from flows.profiles_in import import_records
    from state.profiles import RedisProfileStore

    run_id = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="cdp-latency-run-"))
    config = bench_config()
    with TansuBroker() as kafka, RedisServer() as redis:
        names = {t: f"{t}_{run_id}" for t in TOPICS}
        sends, dead = f"sends_{run_id}", f"dead_{run_id}"
        kafka.create_topics([*names.values(), sends, dead], partitions=4)
        n_probe = int(probes * seconds) + 50
        timer_probes = max(10, int(seconds))  # one cart a second
        import_records([{"customer_id": f"p{i}", "email": f"p{i}@example.com"}
                        for i in range(n_probe)]
                       + [{"customer_id": f"t{i}", "email": f"t{i}@example.com",
                           "push_token": f"tok-{i}-0123456789",
                           "consents": {"push:marketing": True, "email:marketing": True}}
                          for i in range(timer_probes)]
                       + [{"customer_id": "warm", "email": "warm@example.com"}],
                       RedisProfileStore(redis.url))
        env = {**os.environ, "CDP_KAFKA_BROKERS": kafka.bootstrap,
               "CDP_INPUT_TOPICS": orjson.dumps(list(names.values())).decode(),
               "CDP_CATALOGUE_TOPICS": orjson.dumps([names["product_updates"]]).decode(),
               "CDP_SENDS_TOPIC": sends, "CDP_DEAD_LETTER_TOPIC": dead,
               "CDP_REDIS_URL": redis.url, "CDP_CLICKHOUSE_URL": f"chdb://{work / 'ch'}",
               "CDP_CLICKHOUSE_DATABASE": "lat", "CDP_CONFIG_DIR": str(config),
               "CDP_CLOCK": "live", "CDP_CLICKHOUSE_BATCH_SECONDS": str(batch_seconds),
               **(extra_env or {})}
        reader = Reader(kafka.bootstrap, sends)
        reader.start()
        with open(work / "flow.log", "wb") as log:
            flow = subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "run"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=log)
        prod = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 2})

        def event(kind: str, cid: str, props: dict[str, Any], at: int | None = None) -> bytes:
            return orjson.dumps({"event_id": uuid.uuid4().hex, "type": kind,
                                 "customer_id": cid, "ts": at or now_ms(), "props": props})

        try:
            # warm up: the flow is ready once a transactional message goes through
            deadline = time.monotonic() + 120
            while "warm" not in reader.seen:
                if flow.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("flow did not start: " + (work / "flow.log").read_text()
                                       [-2000:])
                prod.produce(names["orders"], key=b"warm", value=event(
                    "order_shipped", "warm", {"order_id": f"W-{uuid.uuid4().hex[:6]}"}))
                prod.flush(5)
                time.sleep(1.0)
            sent_at: dict[str, int] = {}
            due_at: dict[str, int] = {}
            rng = random.Random(7)
            start = time.monotonic()
            tick, i, k, ticks = 0.01, 0, 0, 0
            while time.monotonic() - start < seconds:
                ticks += 1
                target = start + ticks * tick
                for _ in range(int(rate * tick)):
                    cid = f"b{rng.randrange(50_000)}"
                    prod.produce(names["clickstream"], key=cid.encode(), value=event(
                        "product_viewed", cid, {"product_id": f"sku{rng.randrange(500)}"}))
                if ticks % max(1, int(1 / (probes * tick))) == 0 and i < n_probe:
                    cid = f"p{i}"
                    i += 1
                    sent_at[cid] = now_ms()
                    prod.produce(names["orders"], key=cid.encode(), value=event(
                        "order_shipped", cid, {"order_id": f"P-{cid}"}, sent_at[cid]))
                if ticks % 100 == 0 and k < timer_probes:
                    cid = f"t{k}"
                    k += 1
                    at = now_ms()
                    due_at[cid] = at + WAIT_S * 1000
                    prod.produce(names["clickstream"], key=cid.encode(), value=event(
                        "added_to_cart", cid, {"cart_id": f"C-{cid}", "product_id": "sku1",
                                               "quantity": 1, "price": 10.0}, at))
                prod.poll(0)
                time.sleep(max(0.0, target - time.monotonic()))
            prod.flush(10)
            time.sleep(WAIT_S + 5)  # the last carts come due
            seen = dict(reader.seen)
        finally:
            reader.stop = True
            flow.terminate()
            try:
                flow.wait(30)
            except subprocess.TimeoutExpired:
                flow.kill()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(config.parent, ignore_errors=True)
    trans = [seen[c][0] - t for c, t in sent_at.items() if c in seen]
    timers = [seen[c][0] - t for c, t in due_at.items() if c in seen]
    return {"rate": rate, "seconds": seconds, "probes_sent": len(sent_at),
            "transactional_ms": percentiles(trans), "timer_late_ms": percentiles(timers),
            "timers_sent": len(timers), "timers_started": len(due_at)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=2000, help="background events/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--probes", type=float, default=10.0, help="order_shipped probes/s")
    ap.add_argument("--batch-seconds", type=float, default=2.0,
                    help="CDP_CLICKHOUSE_BATCH_SECONDS of the flow")
    a = ap.parse_args(argv)
    r = run(a.rate, a.seconds, a.probes, a.batch_seconds)
    t, m = r["transactional_ms"], r["timer_late_ms"]
    print(f"load {a.rate:,} ev/s for {a.seconds:g} s; {r['probes_sent']} order_shipped probes")
    print(f"transactional produce → sends: n {t['n']}, p50 {t['p50']:.0f} ms, "
          f"p99 {t['p99']:.0f} ms, max {t['max']:.0f} ms")
    print(f"abandoned cart reminder after due: n {m['n']} of {r['timers_started']} carts "
          f"(control ~10 % send nothing), p50 {m['p50']:.0f} ms, p99 {m['p99']:.0f} ms, "
          f"max {m['max']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
