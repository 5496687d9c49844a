"""Live-mode latency of ``cdp-triggers run`` on a local Kafka-protocol broker (Tansu).

A background load of ``product_viewed`` events at ``--rate`` events/s (event time = now) runs
while the sparse topics (consents, product_updates, outcomes) stay nearly idle, and two kinds
of probes are measured on the ``sends`` topic:

- transactional: ``order_shipped`` (order_status, zero grace), ``--probes`` per second:
  from the moment it is produced to the moment its send command is read from ``sends``;
- timers: ``added_to_cart`` for a fresh customer, abandoned cart with a 10 s inactivity
  wait and no grace (a bench copy of the shipped config under a neutral policy): from the
  reminder's due time (event time + 10 s) to its send command on ``sends``.

Reports p50 / p99 / max in milliseconds against the targets (p99 < 250 ms; timers ≤ 1 s
after due + grace). Wall clocks of producer, flow and reader are the same machine's, so
differences are exact. The load is *half the maximum* by default: the maximum is the
shipped flow's throughput measured first by :mod:`bench.floors` (its ``shipped`` contestant
on the quick stream, a backfill through the same broker kind), so the run says which
fraction of the maximum it ran at; ``--rate N`` skips that measurement. The flow serves its
metrics: the run waits for ``/readyz`` and reports the sink flushes from ``/metrics``.

Run: ``python -m bench.latency [--rate half|N] [--seconds 20] [--recovery]`` (``make bench``
runs it); results go to docs/benchmarks.md ("Latency (issue 10)").
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
TARGET_P99_MS = 250  # transactional produce → sends, at half the maximum load
TARGET_TIMER_MS = 1000  # a timer's command after due + grace (the bench config: no grace)


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
            m = self.c.poll(0.05)  # returns at the first message (consume(n) waits for n)
            if m is not None and m.error() is None:
                at = now_ms()
                v = orjson.loads(m.value())
                self.seen.setdefault(v["customer_id"], (at, v))
        self.c.close()


def run(rate: int, seconds: float, probes: int, batch_seconds: float,
        extra_env: dict[str, str] | None = None, workers: int = 1) -> dict[str, Any]:
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
        from services import free_port

        metrics_port = free_port()
        env = {**os.environ, "CDP_KAFKA_BROKERS": kafka.bootstrap,
               "CDP_INPUT_TOPICS": orjson.dumps(list(names.values())).decode(),
               "CDP_CATALOGUE_TOPICS": orjson.dumps([names["product_updates"]]).decode(),
               "CDP_SENDS_TOPIC": sends, "CDP_DEAD_LETTER_TOPIC": dead,
               "CDP_REDIS_URL": redis.url, "CDP_CLICKHOUSE_URL": f"chdb://{work / 'ch'}",
               "CDP_CLICKHOUSE_DATABASE": "lat", "CDP_CONFIG_DIR": str(config),
               "CDP_CLOCK": "live", "CDP_CLICKHOUSE_BATCH_SECONDS": str(batch_seconds),
               "CDP_METRICS_PORT": str(metrics_port),
               **(extra_env or {})}
        reader = Reader(kafka.bootstrap, sends)
        reader.start()
        with open(work / "flow.log", "wb") as log:
            flow = subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "run",
                                     "-w", str(workers)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=log)
        prod = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 2})

        def event(kind: str, cid: str, props: dict[str, Any], at: int | None = None) -> bytes:
            return orjson.dumps({"event_id": uuid.uuid4().hex, "type": kind,
                                 "customer_id": cid, "ts": at or now_ms(), "props": props})

        try:
            # warm up: a transactional message went through (and /readyz said 200)
            t0 = time.monotonic()
            deadline = t0 + 120
            ready_s = None
            while "warm" not in reader.seen:
                if ready_s is None and _get(metrics_port, "/readyz")[0] == 200:
                    ready_s = time.monotonic() - t0
                if flow.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("flow did not start: " + (work / "flow.log").read_text()
                                       [-2000:])
                prod.produce(names["orders"], key=b"warm", value=event(
                    "order_shipped", "warm", {"order_id": f"W-{uuid.uuid4().hex[:6]}"}))
                prod.flush(5)
                time.sleep(1.0)
            until = time.monotonic() + 10  # (flows before the readiness wiring never are)
            while ready_s is None and time.monotonic() < until:
                if _get(metrics_port, "/readyz")[0] == 200:
                    ready_s = time.monotonic() - t0
                else:
                    time.sleep(0.2)
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
            flow_metrics = _flow_metrics(metrics_port)
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
            "timers_sent": len(timers), "timers_started": len(due_at), "ready_s": ready_s,
            **flow_metrics}


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _flow_metrics(port: int) -> dict[str, float]:
    """Sink flushes (count, seconds) and commands produced, from the flow's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _get(port, "/metrics")
    out = {"flushes": 0.0, "flush_s": 0.0, "produced": 0.0, "flushes_over_100ms": 0.0}
    if status != 200:
        return out
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "cdp_sink_flush_seconds_count":
                out["flushes"] += smp.value
                out["flushes_over_100ms"] += smp.value
            elif smp.name == "cdp_sink_flush_seconds_bucket" and smp.labels.get("le") == "0.1":
                out["flushes_over_100ms"] -= smp.value
            elif smp.name == "cdp_sink_flush_seconds_sum":
                out["flush_s"] += smp.value
            elif smp.name == "cdp_sends_produced_total":
                out["produced"] += smp.value
    return out


def maximum_rate(say: Any = print, recovery: bool = False) -> float:
    """The shipped flow's events/s through a local broker (bench.floors, quick stream); with
    ``recovery``, of the flow with recovery on (``shipped_recovery``, same epochs as the
    measured run), the maximum of what is measured."""
    from bench import floors

    name = "shipped_recovery" if recovery else "shipped"
    r = floors.measure(8_000, 2.0, 1, [name], say=lambda _line: None)
    rate = r["median_events_per_s"][name]
    say(f"maximum: {rate:,.0f} events/s (bench.floors '{name}', {r['events']:,} events "
        "backfilled through a local broker, 1 worker)")
    return rate


def _line(name: str, p: dict[str, float], target_ms: float, n_of: str = "") -> str:
    met = "met" if p["n"] and p["p99"] < target_ms else "NOT met"
    return (f"{name}: n {p['n']}{n_of}, p50 {p['p50']:.0f} ms, p99 {p['p99']:.0f} ms, "
            f"max {p['max']:.0f} ms (target p99 < {target_ms:.0f} ms: {met})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="half",
                    help="background events/s, or 'half': half the maximum, measured first "
                         "with bench.floors (the issue's load; with --recovery, the "
                         "maximum with recovery on)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--probes", type=float, default=10.0, help="order_shipped probes/s")
    ap.add_argument("--batch-seconds", type=float, default=2.0,
                    help="CDP_CLICKHOUSE_BATCH_SECONDS of the flow")
    ap.add_argument("--recovery", action="store_true",
                    help="run the flow with recovery on (CDP_RECOVERY_DIR, as production "
                         "does): each epoch's close snapshots the customers it touched "
                         "(bench.recovery measures that floor)")
    ap.add_argument("-w", "--workers", type=int, default=1,
                    help="Bytewax workers (threads) of the one flow process")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    maximum = None
    if a.rate == "half":
        maximum = maximum_rate(recovery=a.recovery)
        rate = max(1, round(maximum / 2))
    else:
        rate = int(a.rate)
    extra = ({"CDP_RECOVERY_DIR": tempfile.mkdtemp(prefix="cdp-latency-recovery-")}
             if a.recovery else None)
    r = run(rate, a.seconds, a.probes, a.batch_seconds, extra, a.workers)
    r["maximum"] = maximum
    t, m = r["transactional_ms"], r["timer_late_ms"]
    share = f" = {rate / maximum:.2f} of the maximum" if maximum else ""
    print(f"load {rate:,} ev/s{share} for {a.seconds:g} s; {r['probes_sent']} order_shipped "
          f"probes; flow ready (/readyz 200) after "
          f"{'never' if r['ready_s'] is None else format(r['ready_s'], '.1f') + ' s'}")
    print(_line("transactional produce → sends", t, TARGET_P99_MS))
    print(_line("abandoned cart reminder after due", m, TARGET_TIMER_MS,
                f" of {r['timers_started']} carts (control ~10 % send nothing)"))
    if r["flushes"]:
        print(f"effects sink: {r['flushes']:.0f} flushes, mean "
              f"{1000 * r['flush_s'] / r['flushes']:.0f} ms "
              f"({r.get('flushes_over_100ms', 0):.0f} over 100 ms), {r['produced']:.0f} commands "
              "produced (flow's /metrics)")
    if a.json:
        Path(a.json).write_text(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
