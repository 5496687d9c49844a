"""The webhook receiver: providers' delivery callbacks → outcome events on ``outcomes``.

``POST /webhooks/{provider}`` (``unisender_go``, ``twilio``, ``fcm``…): the provider's
adapter checks the signature and maps the payload to receipts
(:meth:`sinks.providers.base.Provider.parse_webhook`); each receipt becomes a
``message_*`` event keyed by customer, with an event id stable per (provider, send id,
status, key) so a callback delivered twice is dropped as a duplicate by the flow. The
answer (200) is given once the events are acknowledged by Kafka: a provider that gets no
200 sends again, so nothing is lost. Requests are batched into one Kafka delivery every
few milliseconds, which keeps bursts cheap.

Forged or unsigned requests get 401, malformed ones 400, unknown providers 404: each with
one (rate-limited) log line and nothing else. ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from cdp_triggers.events import Event
from cdp_triggers.logs import RateLimited
from flows.gateway import receipt_event
from sinks.providers.base import BadRequest, Forged, Provider, Receipt

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], Awaitable[None]]
MAX_BODY = 4 * 1024 * 1024
COUNTS = web.AppKey("counts", dict)  # requests refused / events published, for /healthz


def receipt_events(provider: str, receipts: Sequence[Receipt]) -> list[Event]:
    return [receipt_event(r.send_id, r.customer_id, r.channel, r.kind, r.ts,
                          f"webhook:{provider}", r.key, **dict(r.props)) for r in receipts]


class KafkaBatcher:
    """Events from concurrent requests, delivered in batches by one thread; each caller
    waits for its own events' acknowledgement."""

    def __init__(self, deliver: Callable[[str, list[tuple[bytes | None, bytes]]], int],
                 topic: str, max_batch: int = 2000, linger_s: float = 0.002) -> None:
        self.deliver = deliver
        self.topic = topic
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.queue: asyncio.Queue[tuple[list[Event], asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put((list(events), fut))
        await fut

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(self.linger_s)
            n = len(batch[0][0])
            while not self.queue.empty() and n < self.max_batch:
                batch.append(self.queue.get_nowait())
                n += len(batch[-1][0])
            msgs = [(e.customer_id.encode(), e.to_json()) for evs, _ in batch for e in evs]
            try:
                await asyncio.to_thread(self.deliver, self.topic, msgs)
                self.delivered += len(msgs)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            except Exception as e:  # the providers will call again: nothing is lost
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def make_app(providers: Mapping[str, Provider], publish: Publish,
             public_base: str = "") -> web.Application:
    """The receiver; ``providers`` by name (the path segment). ``public_base``: the URL the
    providers call (e.g. https://hooks.example.com) when a proxy sits in front, for
    signatures computed over the full URL (Twilio)."""
    rl = RateLimited(log, 60.0)
    counts: dict[str, int] = {}

    async def webhook(request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        provider = providers.get(name)
        if provider is None:
            rl.warning(f"unknown:{name}", "webhook for unknown provider %r from %s", name,
                       request.remote)
            return web.json_response({"error": "unknown provider"}, status=404)
        body = await request.read()
        url = (public_base.rstrip("/") + request.path_qs) if public_base else str(request.url)
        try:
            receipts = provider.parse_webhook(body, request.headers, url)
        except Forged as e:
            counts["forged"] = counts.get("forged", 0) + 1
            rl.warning(f"forged:{name}", "refused a %s webhook from %s: %s (401)", name,
                       request.remote, e)
            return web.json_response({"error": "bad signature"}, status=401)
        except BadRequest as e:
            counts["bad"] = counts.get("bad", 0) + 1
            rl.warning(f"bad:{name}", "refused a malformed %s webhook from %s: %s (400)", name,
                       request.remote, e)
            return web.json_response({"error": "bad request"}, status=400)
        events = receipt_events(name, receipts)
        try:
            await publish(events)
        except Exception as e:
            rl.error("publish", "outcomes not delivered to Kafka (%s): answering 503", e)
            return web.json_response({"error": "try again"}, status=503)
        counts["events"] = counts.get("events", 0) + len(events)
        return web.json_response({"status": "ok"})

    async def probe(_: web.Request) -> web.Response:  # providers check the URL with a GET
        return web.json_response({"status": "ok"})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **counts})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/webhooks/{provider}", webhook)
    app.router.add_get("/webhooks/{provider}", probe)
    app.router.add_get("/healthz", healthz)
    app[COUNTS] = counts
    return app


def serve(providers: Mapping[str, Provider], batcher: KafkaBatcher, host: str, port: int,
          public_base: str = "", **kw: Any) -> None:
    """Run the receiver until SIGTERM/SIGINT (aiohttp's own handling: graceful)."""
    app = make_app(providers, batcher.publish, public_base)

    async def closing(_: web.Application) -> None:
        await batcher.close()

    app.on_cleanup.append(closing)
    web.run_app(app, host=host, port=port, print=None, **kw)
