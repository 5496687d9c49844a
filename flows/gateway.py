"""The channel gateway: send commands from the ``sends`` topic to real providers, once each.

Per batch of commands (one consumer poll):

1. claim every send id in the Redis send ledger (:mod:`state.send_ledger`): a command
   seen before (restart, replay, duplicate) is skipped, so a provider is called once per
   send id;
2. read the contacts from Redis (:meth:`state.profiles.RedisProfileStore.contacts_for`):
   addresses never travel on the topic and never reach a log line;
3. render the message from ``config/templates.yaml`` (Jinja2 sandbox, compiled once);
4. call the channel's provider, ``concurrency`` calls at a time, each provider under its
   own rate limit; 5xx, 429 and timeouts are retried with exponential backoff and jitter
   (the provider's Retry-After wins), up to ``max_attempts``;
5. produce receipts to ``outcomes`` for what will get no webhook: ``message_failed`` with
   the provider's reason on 4xx (``message_bounced`` when the address is invalid), and for
   a command that cannot be sent at all (no contact, render error, attempts exhausted)
   also a dead-letter record on the send dead-letter topic; so a cascade always moves on;
6. mark the send ids done in the ledger, then commit the batch's offsets.

A crash anywhere re-reads the uncommitted batch: finished send ids are skipped, claimed
ones are taken over after the ledger's lease and called again with the provider's
idempotence key (Unisender Go) — see ``state/send_ledger.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from cdp_triggers.clock import Clock, WallClock
from cdp_triggers.events import Event
from cdp_triggers.ids import stable_id
from cdp_triggers.logs import RateLimited
from cdp_triggers.records import Send
from sinks.providers.base import Accepted, Failed, Message, Provider, Transient
from state.profiles import Contact

log = logging.getLogger(__name__)

# results recorded in the ledger and counted
ACCEPTED, FAILED, BOUNCED, DEAD_LETTER, DUPLICATE = (
    "accepted", "failed", "bounced", "dead_letter", "duplicate")


def receipt_event(send_id: str, customer_id: str, channel: str, kind: str, ts: int,
                  source: str, key: str = "", **props: Any) -> Event:
    """An outcome event (``message_{kind}``); its id is stable per (source, send, kind,
    key), so a receipt produced twice is dropped as a duplicate by the flow."""
    return Event(stable_id(source, send_id, kind, key), f"message_{kind}", customer_id, ts,
                 {"send_id": send_id, "channel": channel, **props}, source)


class RateLimit:
    """A token bucket: at most ``rate`` calls per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.clock = clock
        self.at = clock()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class GatewayStats:
    """What one gateway process did (counts by result, provider calls and retries)."""

    results: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)  # provider name → HTTP calls
    retries: int = 0

    def line(self) -> str:
        r = ", ".join(f"{k} {v:,}" for k, v in sorted(self.results.items()))
        c = ", ".join(f"{k} {v:,}" for k, v in sorted(self.calls.items()))
        return f"{r or 'nothing'}; provider calls: {c or 'none'}; retries {self.retries:,}"


@dataclass(frozen=True)
class Outcome:
    """What became of one send command."""

    send: Send
    result: str  # ACCEPTED, FAILED, BOUNCED, DEAD_LETTER, DUPLICATE
    reason: str = ""
    provider_message_id: str = ""
    receipts: tuple[Event, ...] = ()
    dead_letter: Mapping[str, Any] | None = None
    message: Message | None = None  # what was (or, dry run, would be) sent


Renderer = Callable[[Send, Contact], Message]  # raises RenderError-like exceptions


class Gateway:
    """Sends commands through providers, once per send id; I/O is injected so the same
    code runs the service, ``send-test`` and the tests."""

    def __init__(self, providers: Mapping[str, Provider], render: Renderer,
                 contacts: Callable[[Sequence[tuple[str, str]]], list[Contact]],
                 ledger: Any, *, clock: Clock | None = None, concurrency: int = 64,
                 max_attempts: int = 6, backoff_s: float = 0.2, backoff_cap_s: float = 30.0,
                 rate_limits: Mapping[str, float] | None = None,
                 timeout_s: float = 10.0, sleep: Callable[[float], Any] = asyncio.sleep,
                 dry_run: bool = False) -> None:
        self.providers = dict(providers)
        self.render = render
        self.contacts = contacts
        self.ledger = ledger
        self.clock = clock or WallClock()
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.limits = {name: RateLimit(rate) for name, rate in (rate_limits or {}).items()}
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.dry_run = dry_run
        self.stats = GatewayStats()
        self.rl = RateLimited(log, 60.0)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def process(self, sends: Sequence[Send]) -> list[Outcome]:
        """One batch: ledger claim → contacts → render → provider calls → outcomes. The
        caller produces the receipts and dead letters, then calls :meth:`finish`."""
        if not sends:
            return []
        sends = list({s.send_id: s for s in sends}.values())  # a batch may repeat a command
        claims = await self._claim(sends)
        todo = [s for s in sends if claims[s.send_id] != "done"]
        out = [Outcome(s, DUPLICATE) for s in sends if claims[s.send_id] == "done"]
        contacts = await asyncio.to_thread(
            self.contacts, [(s.customer_id, s.channel) for s in todo]) if todo else []
        sem = asyncio.Semaphore(self.concurrency)

        async def one(s: Send, c: Contact) -> Outcome:
            async with sem:
                return await self._one(s, c)

        out += await asyncio.gather(*(one(s, c) for s, c in zip(todo, contacts, strict=True)))
        for o in out:
            self.stats.results[o.result] += 1
        return out

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Record the batch's results in the ledger (after its receipts are delivered)."""
        done = [(o.send.send_id, o.result) for o in outcomes if o.result != DUPLICATE]
        if done and not self.dry_run:
            await asyncio.to_thread(self.ledger.finish_many, done)

    async def _claim(self, sends: Sequence[Send]) -> dict[str, str]:
        """Claims for the batch; a send another live process holds is waited for (only
        at a rebalance or right after a crash) until it is done or its lease runs out."""
        if self.dry_run:
            return {s.send_id: "new" for s in sends}
        ids = [s.send_id for s in sends]
        claims = dict(zip(ids, await asyncio.to_thread(
            self.ledger.claim_many, ids, self.clock.now_ms()), strict=True))
        while busy := [i for i, c in claims.items() if c == "busy"]:
            self.rl.warning("busy", "%d send(s) held by another gateway process (or one that "
                            "crashed): waiting for them or for their lease", len(busy))
            await self.sleep(1.0)
            claims.update(zip(busy, await asyncio.to_thread(
                self.ledger.claim_many, busy, self.clock.now_ms()), strict=True))
        return claims

    async def _one(self, send: Send, contact: Contact) -> Outcome:
        provider = self.providers.get(send.channel)
        if self.dry_run:  # render only: what would go out, and why it would not
            try:
                msg = self.render(send, contact)
            except Exception as e:
                return Outcome(send, DEAD_LETTER, f"render_error: {e}")
            why = ("no_provider" if provider is None else contact.reason) or "dry_run"
            return Outcome(send, ACCEPTED if why == "dry_run" else FAILED, why, message=msg)
        if provider is None:
            return self._cannot(send, "no_provider", f"no provider for channel {send.channel}")
        if not contact.address:
            return self._refused(send, contact.reason or "no_contact", provider.name)
        try:
            msg = self.render(send, contact)
        except Exception as e:  # a template that cannot render this command's data
            return self._cannot(send, "render_error", str(e)[:500])
        limit = self.limits.get(provider.name)
        attempt = 0
        while True:
            attempt += 1
            if limit is not None:
                await limit.acquire()
            self.stats.calls[provider.name] += 1
            try:
                assert self._http is not None, "use the gateway as an async context manager"
                res = await provider.send(self._http, msg)
            except Transient as e:
                if attempt >= self.max_attempts:
                    return self._cannot(send, "provider_unavailable",
                                        f"{provider.name}: {e.reason} ({attempt} attempts)",
                                        msg)
                self.stats.retries += 1
                self.rl.warning(f"transient:{provider.name}", "%s: %s; retrying (attempt %d)",
                                provider.name, e.reason, attempt)
                await self.sleep(self._backoff(attempt, e.retry_after))
                continue
            if isinstance(res, Accepted):
                return Outcome(send, ACCEPTED, provider_message_id=res.provider_message_id,
                               message=msg)
            assert isinstance(res, Failed)
            self.rl.warning(f"failed:{provider.name}:{res.reason}",
                            "%s refused a %s message: %s", provider.name, send.channel,
                            res.reason)
            return self._refused(send, res.reason, provider.name, bounce=res.bounce,
                                 message=msg)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_cap_s)
        base = min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1))
        return base + random.uniform(0, self.backoff_s)  # jitter: no thundering herd

    def _refused(self, send: Send, reason: str, source: str, bounce: bool = False,
                 message: Message | None = None) -> Outcome:
        """The message will get no webhook: a receipt so the cascade moves on."""
        now = self.clock.now_ms()
        if bounce:
            ev = receipt_event(send.send_id, send.customer_id, send.channel, "bounced", now,
                               f"gateway:{source}", hard=True, reason=reason)
            return Outcome(send, BOUNCED, reason, receipts=(ev,), message=message)
        ev = receipt_event(send.send_id, send.customer_id, send.channel, "failed", now,
                           f"gateway:{source}", reason=reason)
        return Outcome(send, FAILED, reason, receipts=(ev,), message=message)

    def _cannot(self, send: Send, reason: str, detail: str,
                message: Message | None = None) -> Outcome:
        """Not sendable at all: a dead letter (the whole command, replayable) and a failed
        receipt so the customer's cascade does not wait for nothing."""
        self.rl.error(f"dead:{reason}", "send %s (%s, %s) cannot be sent: %s: %s",
                      send.send_id, send.trigger_id, send.channel, reason, detail)
        now = self.clock.now_ms()
        ev = receipt_event(send.send_id, send.customer_id, send.channel, "failed", now,
                           "gateway", reason=reason)
        dl = {"reason": reason, "detail": detail, "source": "gateway", "at": now,
              "send": asdict(send)}
        return Outcome(send, DEAD_LETTER, reason, receipts=(ev,), dead_letter=dl,
                       message=message)


def parse_send(raw: bytes) -> Send:
    """A send command from the topic (the flow's own JSON, ``sinks.kafka_out``)."""
    d = orjson.loads(raw)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return Send(**d)


class _Stop:
    """Set by SIGTERM/SIGINT: the current batch finishes, offsets are committed, then exit."""

    def __init__(self) -> None:
        self.set = False


def _dead_letter_raw(raw: bytes | None, reason: str, detail: str, now: int) -> bytes:
    return orjson.dumps({"reason": reason, "detail": detail, "source": "gateway", "at": now,
                         "raw": (raw or b"")[:4096].decode("utf-8", "replace")})


async def run_service(gateway: Gateway, consumer: Any, out: Any, *, sends_topic: str,
                      outcomes_topic: str, dead_letter_topic: str, batch: int = 500,
                      idle_exit_s: float | None = None, stop: _Stop | None = None,
                      on_batch: Callable[[list[Outcome]], None] | None = None) -> GatewayStats:
    """Consume ``sends_topic`` until stopped (or idle for ``idle_exit_s``): each batch is
    processed, its receipts and dead letters delivered, its send ids marked done in the
    ledger, and only then its offsets committed (at least once + the ledger = once)."""
    stop = stop or _Stop()
    consumer.subscribe([sends_topic])
    last = time.monotonic()
    async with gateway:
        while not stop.set:
            msgs = await asyncio.to_thread(consumer.consume, batch, 0.5)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
                continue
            last = time.monotonic()
            sends, bad = [], []
            for m in msgs:
                try:
                    sends.append(parse_send(m.value()))
                except Exception as e:  # not a send command: kept whole on the dead letters
                    bad.append((m.key(), _dead_letter_raw(m.value(), "bad_command", str(e)[:300],
                                                          gateway.clock.now_ms())))
            outcomes = await gateway.process(sends)
            receipts = [(e.customer_id.encode(), e.to_json())
                        for o in outcomes for e in o.receipts]
            dead = bad + [(o.send.send_id.encode(), orjson.dumps(o.dead_letter))
                          for o in outcomes if o.dead_letter is not None]
            if dead:  # the command first: a receipt never exists without its dead letter
                await asyncio.to_thread(out.deliver, dead_letter_topic, dead)
            if receipts:
                await asyncio.to_thread(out.deliver, outcomes_topic, receipts)
            await gateway.finish(outcomes)
            await asyncio.to_thread(consumer.commit, asynchronous=False)
            if on_batch is not None:
                on_batch(outcomes)
    return gateway.stats
