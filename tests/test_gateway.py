"""The gateway against the providers' local stand-ins (tests/provider_stands.py, which accept
only the documented request shapes: Unisender Go Web API v1 "email/send", Twilio "Create a
Message resource", FCM HTTP v1 "projects.messages.send") with a real redis-server holding
profiles and the send ledger; the webhook receiver with the documented callback payloads
(Unisender Go Web API ref "Webhooks", Twilio "Track the message status of outbound
messages" + "Webhooks security", our app's push callback in sinks/providers/push.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from provider_stands import (
    FcmStand,
    TwilioStand,
    UnisenderStand,
    push_callback,
    twilio_callback,
    unisender_event,
    unisender_webhook,
)

from cdp_triggers.clock import ManualClock
from cdp_triggers.records import Send
from cdp_triggers.settings import Settings
from flows.delivery import build_gateway, providers_by_name
from flows.gateway import ACCEPTED, BOUNCED, DEAD_LETTER, DUPLICATE, FAILED, Gateway, Outcome
from flows.profiles_in import import_records
from flows.webhooks import make_app
from state.profiles import RedisProfileStore

pytestmark = pytest.mark.integration

T0 = 1_767_261_600_000  # 2026-01-01T10:00:00Z: the gateway's (injected) clock
EMAIL, PHONE, TOKEN = "ann.lee@example.com", "+4915123456789", "fcm-token-ann-0123456789"


@pytest.fixture(scope="module")
def stands() -> Iterator[dict[str, Any]]:
    with UnisenderStand("ugo-key") as u, TwilioStand(auth_token="tw-token") as t, \
            FcmStand("shop-app", "ya29.token") as f:
        yield {"email": u, "sms": t, "push": f}


def settings_for(stands: dict[str, Any], redis_url: str, **over: Any) -> Settings:
    run = uuid.uuid4().hex[:6]
    u, t, f = stands["email"], stands["sms"], stands["push"]
    return Settings(
        redis_url=redis_url, redis_key_prefix=f"gw{run}:p:", send_ledger_prefix=f"gw{run}:s:",
        provider_options={
            "unisender_go": {"api_key": "ugo-key", "base_url": u.url,
                             "from_email": "shop@example.com", "timeout_s": "1"},
            "twilio": {"account_sid": t.account_sid, "auth_token": "tw-token",
                       "from_number": "+15005550006", "base_url": t.url,
                       "status_callback_url": "https://hooks.example.com/webhooks/twilio"},
            "fcm": {"project_id": "shop-app", "access_token": "ya29.token",
                    "webhook_secret": "app-secret", "base_url": f.url}},
        gateway_backoff_s=0.01, gateway_max_attempts=4, **over)


@pytest.fixture
def env(stands, redis_server) -> Iterator[tuple[Settings, dict[str, Any]]]:
    for s in stands.values():
        s.reset()
    s = settings_for(stands, redis_server.url)
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    import_records([
        {"customer_id": "ann", "email": EMAIL, "phone": PHONE, "push_token": TOKEN,
         "locale": "en"},
        {"customer_id": "boris", "email": "boris@example.com", "phone": "+79161234567",
         "locale": "ru"},
        {"customer_id": "nomail", "phone": "+4915123456780"},
        {"customer_id": "badmail", "email": "not-an-address@"},
    ], store)
    yield s, stands
    for st in stands.values():
        assert st.violations == [], st.violations


def cmd(customer: str = "ann", channel: str = "email", template: str = "order_status",
        n: int = 1, **variables: Any) -> Send:
    variables = variables or {"status": "order_shipped", "order_id": "O-1", "key": "O-1"}
    return Send(f"send-{customer}-{channel}-{template}-{n}", customer, "order_status",
                "transactional", "v1", "inst-1", 0, channel, template, "a", variables,
                T0 - 1000, T0 - 1000)


def run(gateway: Gateway, sends: list[Send]) -> list[Outcome]:
    async def go() -> list[Outcome]:
        async with gateway:
            out = await gateway.process(sends)
            await gateway.finish(out)
            return out

    return asyncio.run(go())


def gw(s: Settings) -> Gateway:
    return build_gateway(s, clock=ManualClock(T0))


def test_email_goes_out_once_with_the_documented_body(env):
    s, st = env
    [o] = run(gw(s), [cmd()])
    assert o.result == ACCEPTED and o.provider_message_id
    [req] = st["email"].requests
    msg = req.json["message"]
    [rcpt] = msg["recipients"]
    assert rcpt["email"] == EMAIL
    assert rcpt["metadata"] == {"send_id": "send-ann-email-order_status-1",
                                "customer_id": "ann", "trigger_id": "order_status"}
    assert msg["idempotence_key"] == "send-ann-email-order_status-1"
    assert "O-1" in msg["subject"] and "O-1" in msg["body"]["plaintext"]
    assert req.headers["X-API-KEY"] == "ugo-key"
    # the same command again (duplicate in the batch, then a restarted gateway): no call
    again = run(gw(s), [cmd(), cmd()])
    assert [x.result for x in again] == [DUPLICATE]
    assert st["email"].calls == 1


def test_sms_and_push_render_from_templates_and_reach_their_providers(env):
    s, st = env
    out = run(gw(s), [cmd("boris", "sms"), cmd("ann", "push")])
    assert [o.result for o in out] == [ACCEPTED, ACCEPTED]
    [sms] = st["sms"].requests
    assert sms.form["To"] == "+79161234567" and "O-1" in sms.form["Body"]
    assert "send_id=send-boris-sms-order_status-1" in sms.form["StatusCallback"]
    assert any("\u0400" <= ch <= "\u04ff" for ch in sms.form["Body"])  # boris reads Russian
    [push] = st["push"].requests
    m = push.json["message"]
    assert m["token"] == TOKEN and m["data"]["send_id"] == "send-ann-push-order_status-1"
    assert m["notification"]["title"] and m["notification"]["body"]


def test_provider_5xx_is_retried_then_sent(env):
    s, st = env
    st["email"].fail_next(2, 503)
    [o] = run(gw(s), [cmd()])
    assert o.result == ACCEPTED
    assert st["email"].calls == 3  # two 503s, then the message, sent once
    st["sms"].fail_next(1, 429, retry_after=0.05)
    [o] = run(gw(s), [cmd("boris", "sms")])
    assert o.result == ACCEPTED and st["sms"].calls == 2


def test_provider_4xx_gives_a_failed_receipt_with_the_reason(env):
    s, st = env
    st["email"].fail_next(1, 400, code=204, message="Invalid template_id")
    [o] = run(gw(s), [cmd()])
    assert o.result == FAILED and st["email"].calls == 1  # a 4xx is not retried
    [ev] = o.receipts
    assert ev.type == "message_failed" and ev.customer_id == "ann" and ev.ts == T0
    assert ev.props["send_id"] == o.send.send_id and ev.props["channel"] == "email"
    assert "Invalid template_id" in ev.props["reason"]
    # an address the provider says is invalid: a hard bounce (the flow drops the contact)
    st["email"].failed_emails["boris@example.com"] = "invalid"
    [o] = run(gw(s), [cmd("boris", "email")])
    assert o.result == BOUNCED and o.receipts[0].type == "message_bounced"
    assert o.receipts[0].props["hard"] is True


def test_no_contact_and_invalid_contact_fail_without_a_provider_call(env):
    s, st = env
    out = run(gw(s), [cmd("nomail"), cmd("badmail"), cmd("ghost")])
    assert [(o.result, o.reason) for o in out] == [
        (FAILED, "no_contact"), (FAILED, "contact_invalid"), (FAILED, "no_profile")]
    assert all(o.receipts[0].type == "message_failed" for o in out)
    assert st["email"].calls == 0


def test_what_cannot_be_sent_is_dead_lettered_and_the_cascade_told(env):
    s, st = env
    st["email"].fail_next(10, 503)
    out = run(gw(s), [cmd(), cmd("ann", "email", "no_such_template", 2)])
    by = {o.send.template: o for o in out}
    down, broken = by["order_status"], by["no_such_template"]
    assert down.result == DEAD_LETTER and down.reason == "provider_unavailable"
    assert st["email"].calls == s.gateway_max_attempts
    assert broken.result == DEAD_LETTER and broken.reason == "render_error"
    for o in (down, broken):
        assert o.dead_letter["send"]["send_id"] == o.send.send_id  # the whole command
        assert o.receipts[0].type == "message_failed"


def test_a_crashed_claim_is_taken_over_after_the_lease(env):
    s, st = env
    s = s.model_copy(update={"send_ledger_lease_ms": 50})
    g = gw(s)
    g.ledger.claim_many(["send-ann-email-order_status-1"], T0 - 60_000)  # a crashed process
    [o] = run(g, [cmd()])
    assert o.result == ACCEPTED and st["email"].calls == 1
    assert g.ledger.state(o.send.send_id) == "done:accepted"


def test_rate_limit_spaces_the_calls(env):
    s, _ = env
    s = s.model_copy(update={"provider_rate_limits": {"unisender_go": 20.0}})
    g = gw(s)
    g.limits["unisender_go"].tokens = 0  # start empty: 5 calls need ~0.25 s at 20/s
    t = time.monotonic()
    out = run(g, [cmd(n=i) for i in range(5)])
    assert all(o.result == ACCEPTED for o in out)
    assert time.monotonic() - t >= 0.2


def test_no_contact_value_in_logs_or_receipts(env, caplog):
    s, st = env
    caplog.set_level(logging.DEBUG)
    st["email"].fail_next(1, 400, message=f"bad recipient {EMAIL}")
    out = run(gw(s), [cmd(), cmd("ann", "sms"), cmd("ann", "push")])
    text = caplog.text + repr([o.receipts for o in out]) + repr(out)
    for secret in (EMAIL, PHONE, TOKEN, "ugo-key", "tw-token", "ya29.token"):
        assert secret not in text


# ---- webhooks -------------------------------------------------------------------------


def _client(s: Settings, published: list) -> Any:
    async def publish(events):
        published.extend(events)

    app = make_app(providers_by_name(s), publish,
                   public_base="https://hooks.example.com")
    return TestClient(TestServer(app))


def test_webhooks_map_statuses_to_outcomes_and_refuse_forgeries(env, caplog):
    s, _ = env
    published: list = []

    async def go():
        async with _client(s, published) as c:
            events = [unisender_event(st, send_id="s1", customer_id="ann",
                                      event_time="2026-01-01 10:00:30")
                      for st in ("delivered", "opened", "clicked", "hard_bounced", "spam")]
            r = await c.post("/webhooks/unisender_go", data=unisender_webhook("ugo-key", events))
            assert r.status == 200
            r = await c.post("/webhooks/unisender_go",  # the same body again: same ids
                             data=unisender_webhook("ugo-key", events))
            assert r.status == 200
            n = len(published)
            for forged in (unisender_webhook("ugo-key", events, forge=True),
                           unisender_webhook("ugo-key", events, unsigned=True)):
                r = await c.post("/webhooks/unisender_go", data=forged)
                assert r.status == 401
            r = await c.post("/webhooks/unisender_go", data=b"{not json")
            assert r.status == 400
            url = ("https://hooks.example.com/webhooks/twilio?send_id=s2&customer_id=boris")
            body, headers = twilio_callback(url, "tw-token", status="undelivered",
                                            error_code=30003)
            r = await c.post("/webhooks/twilio?send_id=s2&customer_id=boris", data=body,
                             headers=headers)
            assert r.status == 200
            body, headers = twilio_callback(url, "tw-token", forge=True)
            r = await c.post("/webhooks/twilio?send_id=s2&customer_id=boris", data=body,
                             headers=headers)
            assert r.status == 401
            body, headers = push_callback("app-secret", send_id="s3", customer_id="ann",
                                          event="opened", ts=T0)
            r = await c.post("/webhooks/fcm", data=body, headers=headers)
            assert r.status == 200
            r = await c.post("/webhooks/nobody", data=b"{}")
            assert r.status == 404
            return n

    caplog.set_level(logging.WARNING)
    n = asyncio.run(go())
    first, second = published[:5], published[5:10]
    assert [e.type for e in first] == ["message_delivered", "message_opened",
                                       "message_clicked", "message_bounced",
                                       "message_unsubscribed"]
    assert [e.event_id for e in first] == [e.event_id for e in second]  # duplicates: same id
    assert all(e.customer_id == "ann" and e.props["send_id"] == "s1" for e in first)
    assert first[0].ts == T0 + 30_000
    assert len(published) == n + 2  # forged, malformed, unknown: nothing published
    sms, push = published[-2:]
    assert (sms.type, sms.customer_id, sms.props["send_id"]) == ("message_failed", "boris", "s2")
    assert (push.type, push.props["send_id"], push.ts) == ("message_opened", "s3", T0)
    assert "401" in caplog.text and "user@example.com" not in caplog.text


def test_webhook_burst_is_answered_and_batched(env):
    """200 concurrent callbacks through the Kafka batcher's queue: every one answered 200
    after its events are handed over; handed over in fewer, larger batches."""
    from flows.webhooks import KafkaBatcher

    s, _ = env
    delivered: list[list] = []

    def deliver(topic, msgs):
        delivered.append(msgs)
        return len(msgs)

    async def go():
        batcher = KafkaBatcher(deliver, "outcomes", linger_s=0.01)
        app = make_app(providers_by_name(s), batcher.publish)
        async with TestClient(TestServer(app)) as c:
            bodies = [unisender_webhook("ugo-key", [unisender_event(
                "delivered", send_id=f"s{i}", customer_id=f"c{i}")]) for i in range(200)]
            rs = await asyncio.gather(*(c.post("/webhooks/unisender_go", data=b)
                                        for b in bodies))
            assert [r.status for r in rs] == [200] * 200
        await batcher.close()

    asyncio.run(go())
    assert sum(len(b) for b in delivered) == 200
    assert len(delivered) < 100
