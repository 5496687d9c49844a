"""Throughput of the delivery loop on this machine, against floors measured in the same run.

1. gateway: ``Gateway.process`` over batches of send commands (e-mail, SMS, push in turn)
   against the providers' local stand-ins (``tests/provider_stands.py``, served by a child
   process), with a real redis-server holding the profiles and the send ledger; provider
   calls/s at concurrency 1, 16 and 64. Floor: the same number of raw aiohttp POSTs to the
   same stands at the same concurrency.
2. service: the whole gateway service path, a Tansu broker's ``sends`` topic →
   ``flows.gateway.run_service`` (confluent Consumer, ``sinks.kafka_out.KafkaOut``);
   commands/s from the first batch read to the last batch committed.
3. webhooks: ``cdp-triggers webhooks`` in a child process (KafkaBatcher → Tansu
   ``outcomes``), Unisender Go callbacks posted at concurrency 64 for a few seconds;
   requests/s, p50/p99. Floor: a bare aiohttp handler answering 200, measured the same way.

Medians of ``--rounds`` rounds (3), each measurement paired with its floor.
``python -m bench.delivery [--quick]`` writes the "Delivery loop (issue 9)" section at the
end of docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:  # the stand-ins and the throwaway services live with the tests
    sys.path.insert(0, str(TESTS))

UGO_KEY, TW_SID, TW_TOKEN = "bench-ugo-key", "AC" + "7" * 32, "bench-tw-token"
FCM_PROJECT, FCM_TOKEN = "bench-project", "bench-access-token"
CHANNELS = ("email", "sms", "push")
START, END = "<!-- delivery: bench.delivery -->", "<!-- /delivery -->"


# ---- child processes -------------------------------------------------------------------

def serve_stands() -> None:
    """Child: the three stand-ins (recording off), their URLs as one JSON line on stdout;
    served until stdin closes."""
    from provider_stands import FcmStand, TwilioStand, UnisenderStand

    stands = {"email": UnisenderStand(UGO_KEY), "sms": TwilioStand(TW_SID, TW_TOKEN),
              "push": FcmStand(FCM_PROJECT, FCM_TOKEN)}
    for s in stands.values():
        s.record = False
        s.start()
    print(json.dumps({ch: s.url for ch, s in stands.items()}), flush=True)
    sys.stdin.read()
    bad = {ch: s.violations[:3] for ch, s in stands.items() if s.violations}
    if bad:
        print(f"stand violations: {bad}", file=sys.stderr, flush=True)
    for s in stands.values():
        s.stop()


def serve_floor(port: int) -> None:
    """Child: the webhook floor, a bare aiohttp handler answering 200 without work."""
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/{provider}", ok)
    app.router.add_get("/healthz", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


@contextmanager
def stands_process() -> Iterator[dict[str, str]]:
    """The stand-ins in a child process (so they do not share the gateway's GIL)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.delivery", "--serve-stands"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        yield urls
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(20)


@contextmanager
def http_process(cmd: list[str], port: int, env: dict[str, str] | None = None
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """A child HTTP server, once its /healthz answers."""
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as cwd:  # no stray .env
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{cmd[-3:]} did not start") from None
                    time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            proc.wait(20)


# ---- 1. gateway calls/s ----------------------------------------------------------------

def settings(urls: dict[str, str], redis_url: str, prefix: str, concurrency: int) -> Any:
    from cdp_triggers.settings import Settings

    return Settings(
        redis_url=redis_url, redis_key_prefix=f"{prefix}p:", send_ledger_prefix=f"{prefix}s:",
        gateway_concurrency=concurrency, gateway_backoff_s=0.01,
        provider_options={
            "unisender_go": {"api_key": UGO_KEY, "base_url": urls["email"],
                             "from_email": "shop@example.com"},
            "twilio": {"account_sid": TW_SID, "auth_token": TW_TOKEN,
                       "from_number": "+15005550006", "base_url": urls["sms"],
                       "status_callback_url": "https://hooks.example.com/webhooks/twilio"},
            "fcm": {"project_id": FCM_PROJECT, "access_token": FCM_TOKEN,
                    "webhook_secret": "bench-secret", "base_url": urls["push"]}})


def load_profiles(redis_url: str, prefix: str, customers: int) -> None:
    from flows.profiles_in import import_records
    from state.profiles import RedisProfileStore

    counts = import_records(
        ({"customer_id": f"b{i}", "email": f"b{i}@example.com", "phone": f"+49151{i:08d}",
          "push_token": f"fcm-token-{i:012d}-bench", "locale": "en"}
         for i in range(customers)), RedisProfileStore(redis_url, f"{prefix}p:"))
    assert counts.loaded == customers and not counts.invalid_contact, counts.line()


def commands(n: int, customers: int, tag: str) -> list[Any]:
    """``n`` send commands, channels in turn; send ids new per ``tag``."""
    from cdp_triggers.records import Send

    now = int(time.time() * 1000)
    return [Send(f"bench-{tag}-{i}", f"b{i % customers}", "order_status", "transactional",
                 "v1", f"inst-{i}", 0, CHANNELS[i % 3], "order_status", "a",
                 {"status": "order_shipped", "order_id": f"O-{i}"}, now, now)
            for i in range(n)]


def bench_gateway(urls: dict[str, str], redis_url: str, prefix: str, customers: int,
                  n: int, concurrency: int, batch: int) -> dict[str, Any]:
    """Provider calls/s of ``Gateway.process`` + ``finish`` over batches of ``batch``."""
    from flows.delivery import build_gateway

    gw = build_gateway(settings(urls, redis_url, prefix, concurrency))
    sends = commands(n, customers, uuid.uuid4().hex[:8])

    async def go() -> float:
        async with gw:
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                out = await gw.process(sends[i:i + batch])
                await gw.finish(out)
            return time.perf_counter() - t0

    dt = asyncio.run(go())
    calls = sum(gw.stats.calls.values())
    assert gw.stats.results["accepted"] == n and calls == n, gw.stats.line()
    return {"calls": calls, "seconds": dt, "per_s": calls / dt}


def raw_requests(urls: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """One documented request per channel, as raw aiohttp keyword arguments."""
    import base64

    basic = base64.b64encode(f"{TW_SID}:{TW_TOKEN}".encode()).decode()
    return [
        (urls["email"] + "/ru/transactional/api/v1/email/send.json",
         {"json": {"message": {"recipients": [{"email": "b1@example.com"}],
                               "subject": "Your order O-1 is on its way",
                               "body": {"plaintext": "Good news: your order O-1 has shipped."},
                               "from_email": "shop@example.com"}},
          "headers": {"X-API-KEY": UGO_KEY}}),
        (f"{urls['sms']}/2010-04-01/Accounts/{TW_SID}/Messages.json",
         {"data": {"To": "+4915100000001", "From": "+15005550006",
                   "Body": "Your order O-1 has shipped."},
          "headers": {"Authorization": f"Basic {basic}"}}),
        (f"{urls['push']}/v1/projects/{FCM_PROJECT}/messages:send",
         {"json": {"message": {"token": "fcm-token-000000000001-bench",
                               "notification": {"title": "Order O-1", "body": "Shipped"},
                               "data": {"send_id": "s1"}}},
          "headers": {"Authorization": f"Bearer {FCM_TOKEN}"}}),
    ]


def bench_floor(urls: dict[str, str], n: int, concurrency: int) -> dict[str, Any]:
    """``n`` raw POSTs to the same stands, channels in turn, ``concurrency`` at a time."""
    import aiohttp

    reqs = raw_requests(urls)

    async def go() -> float:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)) as http:

            async def one(i: int) -> None:
                url, kw = reqs[i % 3]
                async with sem, http.post(url, **kw) as r:
                    await r.read()
                    assert r.status < 300, (url, r.status)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - t0

    dt = asyncio.run(go())
    return {"calls": n, "seconds": dt, "per_s": n / dt}


# ---- 2. the service through Kafka -------------------------------------------------------

class _TimedConsumer:
    """The real consumer, remembering when the first commands arrived (the group join on
    Tansu takes seconds and is not the gateway's work)."""

    def __init__(self, consumer: Any) -> None:
        self.c = consumer
        self.first: float | None = None

    def consume(self, n: int, timeout: float) -> list[Any]:
        msgs = self.c.consume(n, timeout)
        if msgs and self.first is None:
            self.first = time.perf_counter()
        return msgs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.c, name)


def bench_service(urls: dict[str, str], redis_url: str, prefix: str, customers: int,
                  broker: Any, n: int, concurrency: int, batch: int) -> dict[str, Any]:
    """Commands/s of ``run_service``: Tansu ``sends`` → gateway → providers → commit."""
    from confluent_kafka import Consumer
    from services import FAST_GROUP_CONFIG, produce

    from cdp_triggers.logs import RetryPolicy
    from flows.delivery import build_gateway
    from flows.gateway import _Stop, run_service
    from sinks.kafka_out import KafkaOut, send_message

    tag = uuid.uuid4().hex[:8]
    topic = f"sends-{tag}"
    broker.create_topics([topic, "outcomes", "send_dead_letters"], partitions=4)
    produce(broker.bootstrap, topic,
            ((s.send_id.encode(), send_message(s).value) for s in commands(n, customers, tag)))
    gw = build_gateway(settings(urls, redis_url, prefix, concurrency))
    consumer = _TimedConsumer(Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"bench-gw-{tag}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, **FAST_GROUP_CONFIG}))
    out = KafkaOut([broker.bootstrap], policy=RetryPolicy(max_attempts=3))
    stop, done = _Stop(), [0]

    def on_batch(outcomes: list[Any]) -> None:
        done[0] += len(outcomes)
        if done[0] >= n:
            stop.set = True

    try:
        stats = asyncio.run(run_service(
            gw, consumer, out, sends_topic=topic, outcomes_topic="outcomes",
            dead_letter_topic="send_dead_letters", batch=batch, idle_exit_s=60, stop=stop,
            on_batch=on_batch))
        dt = time.perf_counter() - (consumer.first or time.perf_counter())
    finally:
        consumer.close()
        out.close()
    assert stats.results["accepted"] == n, stats.line()
    return {"commands": n, "seconds": dt, "per_s": n / dt}


# ---- 3. webhooks ------------------------------------------------------------------------

def webhook_bodies(k: int) -> list[bytes]:
    from provider_stands import unisender_event, unisender_webhook

    return [unisender_webhook(UGO_KEY, [unisender_event(
        "delivered", send_id=f"bench-wh-{i}", customer_id=f"b{i}",
        event_time="2026-01-01 10:00:00")]) for i in range(k)]


def bench_http(url: str, bodies: Sequence[bytes], concurrency: int,
               seconds: float) -> dict[str, Any]:
    """POST ``bodies`` in turn at ``concurrency`` for ``seconds``: requests/s, p50, p99."""
    import aiohttp

    lat: list[float] = []

    async def go() -> float:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency)) as http:
            end = time.perf_counter() + seconds

            async def worker(w: int) -> None:
                i = w
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    async with http.post(url, data=bodies[i % len(bodies)]) as r:
                        await r.read()
                        assert r.status == 200, r.status
                    lat.append(time.perf_counter() - t)
                    i += concurrency

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return time.perf_counter() - t0

    dt = asyncio.run(go())
    q = statistics.quantiles(lat, n=100)
    return {"requests": len(lat), "seconds": dt, "per_s": len(lat) / dt,
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def webhooks_env(broker: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env.update({"CDP_KAFKA_BROKERS": broker.bootstrap, "CDP_OUTCOMES_TOPIC": "outcomes",
                "CDP_WEBHOOK_HOST": "127.0.0.1", "CDP_PROVIDERS__SMS": "none",
                "CDP_PROVIDERS__PUSH": "none",
                "CDP_PROVIDER_OPTIONS__UNISENDER_GO__API_KEY": UGO_KEY})
    return env


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())


# ---- running and reporting ---------------------------------------------------------------

def paired(rounds: int, fn: Callable[[], dict[str, Any]], floor: Callable[[], dict[str, Any]]
           ) -> tuple[dict[str, Any], dict[str, Any], float]:
    """``fn`` and its ``floor`` in turn, ``rounds`` times (a neighbour's load on the shared
    cores hits both alike): their medians, and the median of the per-round ratios."""
    runs = [(fn(), floor()) for _ in range(rounds)]
    med = [{k: statistics.median(r[i][k] for r in runs) for k in runs[0][i]}
           | {"rounds": [r[i] for r in runs]} for i in (0, 1)]
    ratios = [a["per_s"] / b["per_s"] for a, b in runs]
    med[0]["ratios"] = ratios
    return med[0], med[1], statistics.median(ratios)


def run(quick: bool, rounds: int) -> dict[str, Any]:
    from services import RedisServer, TansuBroker, free_port

    n = 600 if quick else 3000
    seconds = 1.5 if quick else 4.0
    batch, customers = 500, 1000
    r: dict[str, Any] = {"n": n, "seconds": seconds, "batch": batch, "rounds_n": rounds,
                         "rows": {}}
    rows = r["rows"]
    with RedisServer() as redis_srv, TansuBroker() as broker, stands_process() as urls:
        prefix = f"bench{uuid.uuid4().hex[:6]}:"
        load_profiles(redis_srv.url, prefix, customers)
        bench_gateway(urls, redis_srv.url, prefix, customers, 300, 64, batch)  # warm-up
        bench_floor(urls, 300, 64)
        for c in (1, 16, 64):
            rows[f"gateway {c}"] = paired(rounds, lambda c=c: bench_gateway(
                urls, redis_srv.url, prefix, customers, n, c, batch),
                lambda c=c: bench_floor(urls, n, c))
            g, f, ratio = rows[f"gateway {c}"]
            print(f"gateway c={c}: {g['per_s']:,.0f} calls/s, floor {f['per_s']:,.0f}, "
                  f"ratio {ratio:.2f}", flush=True)
        rows["service"] = paired(rounds, lambda: bench_service(
            urls, redis_srv.url, prefix, customers, broker, n, 64, batch),
            lambda: bench_floor(urls, n, 64))
        print(f"service: {rows['service'][0]['per_s']:,.0f} commands/s", flush=True)

        bodies = webhook_bodies(4096)
        port, floor_port = free_port(), free_port()
        with http_process([sys.executable, "-m", "cdp_triggers.cli", "webhooks", "--port",
                           str(port)], port, webhooks_env(broker)), \
                http_process([sys.executable, "-m", "bench.delivery", "--serve-floor",
                              str(floor_port)], floor_port,
                             {**os.environ, "PYTHONPATH": str(ROOT)}):
            url = f"http://127.0.0.1:{port}/webhooks/unisender_go"
            floor_url = f"http://127.0.0.1:{floor_port}/webhooks/unisender_go"
            bench_http(url, bodies, 64, 1.0)  # warm-up (and the producer's connection)
            bench_http(floor_url, bodies, 64, 1.0)
            before = healthz(port).get("events", 0)
            rows["webhooks"] = paired(rounds, lambda: bench_http(url, bodies, 64, seconds),
                                      lambda: bench_http(floor_url, bodies, 64, seconds))
            published = healthz(port).get("events", 0) - before
        sent = sum(x["requests"] for x in rows["webhooks"][0]["rounds"])
        assert published == sent, (published, sent)  # each answer followed a Kafka ack
        r["webhooks_published"] = published
    return r


def table(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(what, concurrency, measured, floor, ratio) rows; the ratio is the median of the
    rounds' ratios."""
    out = []
    for key, (m, f, ratio) in r["rows"].items():
        what, c = {"service": ("service via Kafka: commands/s", "64"),
                   "webhooks": ("webhooks: requests/s", "64")}.get(
            key, ("gateway: provider calls/s", key.split()[-1]))
        spread = f" ({min(m['ratios']):.2f}–{max(m['ratios']):.2f})" if len(m["ratios"]) > 1 else ""
        out.append((what, c, f"{m['per_s']:,.0f}", f"{f['per_s']:,.0f}",
                    f"{ratio:.2f}{spread}"))
    w, wf, _ = r["rows"]["webhooks"]
    out.append(("webhooks: p50 / p99 ms", "64", f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f}",
                f"{wf['p50_ms']:.1f} / {wf['p99_ms']:.1f}", ""))
    return out


def print_table(rows: list[tuple[str, ...]]) -> None:
    head = ("what", "concurrency", "measured", "floor", "ratio")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    for i, row in enumerate([head, *rows]):
        print("  ".join(v.ljust(w) if j == 0 else v.rjust(w)
                        for j, (v, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def section(r: dict[str, Any], argv: Sequence[str]) -> str:
    """The docs section (between markers, so a rerun replaces only it)."""
    cmd = " ".join(["python -m bench.delivery", *argv])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in table(r))
    g1, g64 = r["rows"]["gateway 1"][0]["per_s"], r["rows"]["gateway 64"][0]["per_s"]
    return f"""{START}
## Delivery loop (issue 9)

`{cmd}` on {platform.machine()} / CPython {platform.python_version()},
{os.cpu_count()} shared cores, at {when}; medians of {r['rounds_n']} rounds. Local stand-ins
of the providers (`tests/provider_stands.py`: Unisender Go, Twilio, FCM, which check every
request's documented shape) in a child process, a throwaway redis-server (profiles and the
send ledger), a Tansu broker. Absolute figures depend on the machine; the ratio to the floor
measured in the same run is what compares across machines.

| what | concurrency | measured | floor | ratio (rounds' range) |
|---|---:|---:|---:|---:|
{rows}

- gateway: `Gateway.process` + `finish` over {r['n']:,} send commands (e-mail, SMS, push in
  turn) in batches of {r['batch']}: ledger claim, contacts read, Jinja2 render, the provider
  call; floor: the same number of raw aiohttp POSTs of the documented requests to the same
  stands at the same concurrency, each round right after the gateway's (the ratio is the
  median of the rounds' ratios; their range shows how much the neighbours' load moved
  them). What the gateway adds per call: rendering, the provider
  adapter (request built, answer parsed) and its share of three Redis round trips per batch
  (ledger claim, contacts read, ledger finish). Concurrency 1 → 64 takes it from
  {g1:,.0f} to {g64:,.0f} calls/s; past that the one gateway process is CPU-bound, so more
  throughput means more gateway processes (partitions of `sends`).
- service: {r['n']:,} commands on a 4-partition `sends` topic read by
  `flows.gateway.run_service` (confluent Consumer, batches of {r['batch']}, `KafkaOut`,
  offsets committed per batch after the ledger's finish); from the first batch read to the
  last committed (the consumer-group join is left out); floor: raw POSTs at 64 as above.
  Every command was accepted, so no receipts were produced.
- webhooks: `cdp-triggers webhooks` in its own process, Unisender Go status callbacks (one
  event each, signed) posted by an aiohttp client at concurrency 64 for {r['seconds']:g} s per
  round; each 200 follows the Kafka acknowledgement of its event on `outcomes` (the
  KafkaBatcher batches them; {r['webhooks_published']:,} events published, one per request).
  Floor: a bare aiohttp handler answering 200, same client, same bodies.
- Client, servers, broker and Redis share the 2 cores, so the floors are low and the ratios
  conservative.
{END}
"""


def write_section(path: Path, text: str) -> None:
    """Append the section at the end of ``path``; a rerun replaces its own section only."""
    doc = path.read_text(encoding="utf-8")
    if START in doc and END in doc:
        a, b = doc.index(START), doc.index(END) + len(END)
        doc = doc[:a] + text.rstrip("\n") + doc[b:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc, encoding="utf-8")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer commands, shorter rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--serve-stands", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_stands:
        serve_stands()
        return 0
    if a.serve_floor:
        serve_floor(a.serve_floor)
        return 0
    r = run(a.quick, a.rounds)
    print()
    print_table(table(r))
    if not a.no_write:
        args = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--no-write"]
        write_section(Path(a.out), section(r, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
