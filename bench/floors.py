"""Throughput against floors and a peer, in ONE run, on one local Kafka broker (issue 10).

The same generated stream is produced once to a local Tansu broker (one topic, 4
partitions, keyed by customer); every contestant then reads it all from the beginning in a
fresh process, 1 Bytewax worker, and reports events/s over its own read-to-end time (start-
up and imports excluded, Kafka connection included):

* ``floor_a``: confluent-kafka ``consume(1000)`` + ``orjson.loads``, no Bytewax;
* ``floor_b``: Bytewax ``KafkaSource`` → ``map(orjson)`` → ``key_on(customer)`` →
  ``stateful_map`` counter;
* ``naive``: a naive Bytewax abandoned cart (a pydantic model per event, ``stateful_map``
  with a dict, a reminder when a cart went an hour without activity);
* ``cart``: ``cdp-triggers``' own flow (``flows.app.build_run``, replay clock, Redis
  profiles, chdb rows, the sends topic) with the abandoned_cart trigger only;
* ``shipped``: the same with the shipped config (every trigger, caps, holdout, …);
* ``shipped_recovery`` (only when asked for, ``--only``): ``shipped`` with recovery on, as
  production runs it (a fresh recovery directory, ``CDP_EPOCH_SECONDS`` epochs, default
  10 s): every epoch's close snapshots the customers it touched. ``bench.latency
  --recovery`` takes its maximum from it.

Rounds are interleaved (each round runs every contestant once, in turn) so a drift of the
shared machine's speed hits all of them alike; figures are medians over rounds and each
ratio is the median of the per-round ratios. Targets: shipped ≥ 0.5× floor_b, cart ≥ 1.5×
naive. Never a timed test: ratios from one run only.

    python -m bench.floors                      # 30k customers × 3 days, 3 rounds
    python -m bench.floors --quick              # 8k × 2 days, 1 round: a smoke check
    python -m bench.floors --only shipped --profile /tmp/prof.out   # cProfile one child
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONTESTANTS = ("floor_a", "floor_b", "naive", "cart", "shipped")
EXTRA = ("shipped_recovery",)  # run only when named in --only
TOPIC = "in"
PARTITIONS = 4
TARGETS = {("shipped", "floor_b"): 0.5, ("cart", "naive"): 1.5}
CART_WAIT_MS = 3_600_000  # the naive peer's inactivity wait: abandoned_cart's 1 h


# ---- contestants (each runs in its own child process) -------------------------------------


def floor_a(brokers: str, n: int, **_: Any) -> float:
    """confluent-kafka consume(1000) + orjson.loads until ``n`` messages were read."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "floor-a",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    t0 = time.perf_counter()
    c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen = 0
    while seen < n:
        for m in c.consume(1000, 0.05):
            if m.error() is None:
                with contextlib.suppress(orjson.JSONDecodeError):  # the bad payloads
                    orjson.loads(m.value())
                seen += 1
    dt = time.perf_counter() - t0
    c.close()
    return dt


def _null_sink() -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class _Part(StatelessSinkPartition):
        def write_batch(self, items: list[Any]) -> None:
            pass

    class _Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
            return _Part()

    return _Sink()


def _run_timed(flow: Any, **run_kwargs: Any) -> float:
    from bytewax.testing import run_main

    t0 = time.perf_counter()
    run_main(flow, **run_kwargs)
    return time.perf_counter() - t0


def floor_b(brokers: str, **_: Any) -> float:
    """Bytewax KafkaSource → map(orjson) → key_on(customer) → stateful_map counter."""
    import bytewax.operators as op
    import orjson
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow

    flow = Dataflow("floor_b")
    msgs = op.input("in", flow, KafkaSource([brokers], [TOPIC], tail=False))

    def parse(m: Any) -> Any:
        try:
            return orjson.loads(m.value)
        except orjson.JSONDecodeError:  # the stream's bad payloads
            return None

    objs = op.map("parse", msgs, parse)
    keyed = op.key_on("key", objs, lambda o: str(o.get("customer_id", ""))
                      if isinstance(o, dict) else "")

    def count(n: int | None, _o: Any) -> tuple[int, int]:
        n = (n or 0) + 1
        return n, n

    op.output("out", op.stateful_map("count", keyed, count), _null_sink())
    return _run_timed(flow)


def naive(brokers: str, **_: Any) -> float:
    """A naive abandoned cart: pydantic per event, a dict per customer in stateful_map, a
    reminder when the next event finds the cart idle for an hour (no timers, no policy)."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from pydantic import BaseModel, ValidationError

    class Ev(BaseModel):
        event_id: str
        type: str
        customer_id: str
        ts: int | str
        props: dict[str, Any] = {}

    def parse(m: Any) -> Ev | None:
        try:
            return Ev.model_validate_json(m.value)
        except ValidationError:
            return None

    def cart(st: dict | None, e: Ev) -> tuple[dict, list[str]]:
        st = st if st is not None else {"cart": {}, "last": 0, "seen": set()}
        out: list[str] = []
        if e.event_id in st["seen"]:
            return st, out
        st["seen"].add(e.event_id)
        ts = e.ts if isinstance(e.ts, int) else 0
        if st["cart"] and ts - st["last"] >= CART_WAIT_MS:
            out.append(f"remind:{e.customer_id}:{st['last']}")
            st["last"] = ts
        if e.type == "added_to_cart":
            pid = str(e.props.get("product_id"))
            st["cart"][pid] = st["cart"].get(pid, 0) + int(e.props.get("quantity") or 1)
            st["last"] = ts
        elif e.type == "removed_from_cart":
            st["cart"].pop(str(e.props.get("product_id")), None)
        elif e.type == "order_placed":
            st["cart"].clear()
        return st, out

    flow = Dataflow("naive")
    msgs = op.input("in", flow, KafkaSource([brokers], [TOPIC], tail=False))
    evs = op.filter_map("parse", msgs, parse)
    keyed = op.key_on("key", evs, lambda e: e.customer_id)
    reminders = op.flat_map("reminders", op.stateful_map("cart", keyed, cart), lambda kv: kv[1])
    op.output("out", reminders, _null_sink())
    return _run_timed(flow)


def _cdp(brokers: str, redis: str, horizon: int, work: str, name: str,
         config_dir: str | None, recovery: bool = False) -> float:
    from cdp_triggers.settings import Settings
    from flows.app import build_run, prepare_recovery

    env = {"kafka_brokers": brokers, "input_topics": [TOPIC], "sends_topic": f"sends_{name}",
           "dead_letter_topic": f"dead_{name}", "kafka_tail": False, "clock": "replay",
           "horizon_ms": horizon, "redis_url": redis, "allow_reprocess": True,
           "clickhouse_url": f"chdb://{tempfile.mkdtemp(prefix=f'{name}-', dir=work)}"}
    if config_dir:
        env["config_dir"] = Path(config_dir)
    if recovery:  # epoch length from CDP_EPOCH_SECONDS, as the live run reads it
        env["recovery_dir"] = Path(tempfile.mkdtemp(prefix=f"{name}-recovery-", dir=work))
    s = Settings(**env)
    run = build_run(s, "kafka", profiles="redis", recovery=recovery)
    if not recovery:
        return _run_timed(run.flow)
    from datetime import timedelta

    return _run_timed(run.flow, epoch_interval=timedelta(seconds=s.epoch_seconds),
                      recovery_config=prepare_recovery(s, say=lambda _line: None))


def cart(brokers: str, redis: str, horizon: int, work: str, **_: Any) -> float:
    return _cdp(brokers, redis, horizon, work, "cart", str(Path(work) / "cart_config"))


def shipped(brokers: str, redis: str, horizon: int, work: str, **_: Any) -> float:
    return _cdp(brokers, redis, horizon, work, "shipped", None)


def shipped_recovery(brokers: str, redis: str, horizon: int, work: str, **_: Any) -> float:
    return _cdp(brokers, redis, horizon, work, "shipped", None, recovery=True)


RUNNERS = {"floor_a": floor_a, "floor_b": floor_b, "naive": naive, "cart": cart,
           "shipped": shipped, "shipped_recovery": shipped_recovery}


def _child(a: argparse.Namespace) -> int:
    kwargs = {"brokers": a.brokers, "redis": a.redis, "horizon": a.horizon, "work": a.work,
              "n": a.events}
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        dt = RUNNERS[a.child](**kwargs)
        prof.disable()
        prof.dump_stats(a.profile)
    else:
        dt = RUNNERS[a.child](**kwargs)
    print(json.dumps({"name": a.child, "events": a.events, "seconds": dt,
                      "events_per_s": a.events / dt}))
    return 0


# ---- the parent: services, stream, interleaved rounds -------------------------------------


def _cart_only_config(work: Path) -> Path:
    from config.loader import DEFAULT_CONFIG_DIR

    root = work / "cart_config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for f in (root / "triggers").glob("*.yaml"):
        if f.stem != "abandoned_cart":
            f.unlink()
    return root


def _stream(customers: int, days: float) -> tuple[list[tuple[bytes | None, bytes]], Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from flow_helpers import kafka_key

    from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail

    gen = SyntheticRetail(SyntheticConfig(customers=customers, days=days, price_change_rate=0,
                                          stockout_rate=0))
    return [(kafka_key(r), r) for r in gen.events()], gen


def measure(customers: int, days: float, rounds: int, only: list[str],
            say: Any = print, profile: str | None = None) -> dict[str, Any]:
    """Every contestant of ``only``, ``rounds`` interleaved rounds on one broker."""
    sys.path.insert(0, str(ROOT / "tests"))
    from services import RedisServer, TansuBroker, produce

    from state.profiles import RedisProfileStore

    items, gen = _stream(customers, days)
    work = Path(tempfile.mkdtemp(prefix="bench-floors-"))
    _cart_only_config(work)
    runs: dict[str, list[float]] = {c: [] for c in only}
    try:
        with TansuBroker() as kafka, RedisServer() as redis:
            RedisProfileStore(redis.url).put_many(gen.profiles())
            kafka.create_topics([TOPIC], partitions=PARTITIONS)
            kafka.create_topics([f"{k}_{c}" for c in ("cart", "shipped")
                                 for k in ("sends", "dead")], partitions=1)
            produce(kafka.bootstrap, TOPIC, items)
            say(f"stream: {len(items):,} events ({customers:,} customers × {days:g} days) "
                f"on {TOPIC} ({PARTITIONS} partitions)")
            args = ["--brokers", kafka.bootstrap, "--redis", redis.url, "--horizon",
                    str(gen.end_ms), "--work", str(work), "--events", str(len(items)),
                    *(["--profile", profile] if profile else [])]
            for r in range(rounds):
                for c in only:
                    out = subprocess.run([sys.executable, "-m", "bench.floors", "--child", c,
                                          *args], cwd=ROOT, capture_output=True, text=True,
                                         check=False)
                    if out.returncode:
                        raise RuntimeError(f"{c}: {out.stderr[-3000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    runs[c].append(res["events_per_s"])
                    say(f"round {r + 1}/{rounds} {c:8s} {res['events_per_s']:>10,.0f} events/s"
                        f" ({res['seconds']:.1f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarize(runs, len(items), customers, days)


def summarize(runs: dict[str, list[float]], events: int, customers: int,
              days: float) -> dict[str, Any]:
    """Medians per contestant; each ratio the median of the per-round (paired) ratios."""
    med = {c: statistics.median(v) for c, v in runs.items() if v}
    pairs = [("shipped", "floor_b"), ("cart", "naive"), ("floor_b", "floor_a"),
             ("naive", "floor_b"), ("cart", "floor_b"), ("shipped", "cart")]
    ratios = {f"{a}/{b}": statistics.median(x / y for x, y in zip(runs[a], runs[b],
                                                                    strict=True))
              for a, b in pairs if runs.get(a) and runs.get(b)}
    return {"events": events, "customers": customers, "days": days,
            "rounds": max((len(v) for v in runs.values()), default=0), "runs": runs,
            "median_events_per_s": med, "ratios": ratios}


def report(r: dict[str, Any]) -> str:
    """A markdown table of the medians, and the ratios against their targets."""
    names = {"floor_a": "Floor A: confluent-kafka consume(1000) + orjson.loads",
             "floor_b": "Floor B: Bytewax KafkaSource → map(orjson) → key_on → stateful_map",
             "naive": "naive Bytewax abandoned cart (pydantic, stateful_map dict)",
             "cart": "cdp-triggers flow, abandoned_cart only",
             "shipped": "cdp-triggers flow, shipped config",
             "shipped_recovery": "cdp-triggers flow, shipped config, recovery on"}
    lines = ["| what runs | events/s (median) | runs |", "|---|---:|---|"]
    for c, v in r["median_events_per_s"].items():
        runs = ", ".join(f"{x:,.0f}" for x in r["runs"][c])
        lines.append(f"| {names[c]} | {v:,.0f} | {runs} |")
    lines += ["", "| ratio | median of paired rounds | target |", "|---|---:|---:|"]
    for k, v in r["ratios"].items():
        a, b = k.split("/")
        t = TARGETS.get((a, b))
        lines.append(f"| {k} | {v:.2f}× | {f'≥ {t:g}×' if t else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=30_000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="8k customers × 2 days, 1 round")
    ap.add_argument("--only", default=",".join(CONTESTANTS),
                    help=f"comma-separated subset of {','.join(CONTESTANTS + EXTRA)}")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", help="cProfile each child into PATH.<name>")
    # child mode (internal)
    ap.add_argument("--child", choices=CONTESTANTS + EXTRA, help=argparse.SUPPRESS)
    for k in ("brokers", "redis", "work"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    ap.add_argument("--horizon", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        if a.profile:
            a.profile = f"{a.profile}.{a.child}"
        return _child(a)
    if a.quick:
        a.customers, a.days, a.rounds = 8_000, 2.0, 1
    only = [c for c in a.only.split(",") if c]
    result = measure(a.customers, a.days, a.rounds, only, profile=a.profile)
    text = report(result)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
