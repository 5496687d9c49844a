"""The whole delivery loop on a real Tansu broker, redis-server and chdb, with the providers'
local stand-ins (tests/provider_stands.py: Unisender Go Web API v1 "email/send" and
"Webhooks"; Twilio "Create a Message resource" and "StatusCallback"):

order_shipped on ``orders`` → the flow decides an e-mail (``sends``) → the gateway makes one
Unisender Go request with the right body → Unisender Go's status webhook → the receiver puts
``message_delivered`` on ``outcomes`` → the flow ends the step's cascade; a refused e-mail
(4xx) and an e-mail with no receipt in time both move the cascade on to SMS; a replay of the
sends and a duplicated command call no provider again; a forged webhook is refused (401)
and leaves nothing on ``outcomes``.

The flow runs in replay mode (event-time clock), the gateway on an injected clock: nothing
depends on the machine's time of day.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from bytewax.testing import run_main
from provider_stands import TwilioStand, UnisenderStand, unisender_event, unisender_webhook
from services import consume_all, produce

from cdp_triggers.clock import ManualClock
from cdp_triggers.settings import Settings
from flows.app import build_run
from flows.delivery import build_gateway, providers_by_name
from flows.gateway import run_service
from flows.profiles_in import import_records
from flows.webhooks import KafkaBatcher, make_app
from sinks.clickhouse import open_backend
from sinks.kafka_out import KafkaOut
from tests.engine_helpers import trigger_semantics_dir

pytestmark = pytest.mark.integration

T0 = 1_767_261_600_000  # 2026-01-01T10:00:00Z, the orders' event time
MIN = 60_000
CASCADE = """
    cascade:                # no delivery receipt within 10 minutes → SMS
      email: {wait: 10m, until: [delivered]}
"""


def _config(tmp: Path) -> Path:
    """A copy of the shipped triggers (neutral policy) with order_status cascading e-mail →
    SMS (a copy: the neutral config directory is shared by the whole test session)."""
    root = tmp / "config"
    shutil.copytree(trigger_semantics_dir(), root)
    path = root / "triggers" / "order_status.yaml"
    text = path.read_text()
    assert "channels: [email, sms]\n" in text
    path.write_text(text.replace("channels: [email, sms]\n",
                                 "channels: [email, sms]\n" + CASCADE.lstrip("\n")))
    return root


def _order(cid: str, order_id: str, at: int) -> bytes:
    return orjson.dumps({"event_id": f"ship-{order_id}", "type": "order_shipped",
                         "customer_id": cid, "ts": at,
                         "props": {"order_id": order_id}})


def _gateway_pass(s: Settings, kafka, clock_ms: int) -> list:
    """The gateway service over the sends topic until idle (real consumer group)."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": s.gateway_group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    out = KafkaOut(s.brokers)
    seen: list = []
    try:
        asyncio.run(run_service(build_gateway(s, clock=ManualClock(clock_ms)), consumer, out,
                                sends_topic=s.sends_topic, outcomes_topic=s.outcomes_topic,
                                dead_letter_topic=s.send_dead_letter_topic, idle_exit_s=6.0,
                                on_batch=seen.extend))
    finally:
        consumer.close()
        out.close()
    return seen


def test_order_shipped_to_provider_to_webhook_to_cascade(kafka, redis_server, chdb_url,
                                                         tmp_path):
    run = uuid.uuid4().hex[:8]
    topics = {"orders": f"orders_{run}", "outcomes": f"outcomes_{run}"}
    config = _config(tmp_path)
    with UnisenderStand("ugo-key") as ugo, TwilioStand(auth_token="tw-token") as tw:
        base = dict(
            kafka_brokers=kafka.bootstrap, input_topics=list(topics.values()),
            catalogue_topics=[], sends_topic=f"sends_{run}", dead_letter_topic=f"dead_{run}",
            outcomes_topic=topics["outcomes"], send_dead_letter_topic=f"sdl_{run}",
            gateway_group=f"gw_{run}", redis_url=redis_server.url,
            redis_key_prefix=f"e2e{run}:p:", send_ledger_prefix=f"e2e{run}:s:",
            clickhouse_url=chdb_url, kafka_tail=False, clock="replay", config_dir=config,
            recovery_dir=tmp_path / "recovery", gateway_backoff_s=0.01,
            provider_options={
                "unisender_go": {"api_key": "ugo-key", "base_url": ugo.url,
                                 "from_email": "shop@example.com"},
                "twilio": {"account_sid": tw.account_sid, "auth_token": "tw-token",
                           "from_number": "+15005550006", "base_url": tw.url,
                           "status_callback_url": "https://hooks.example.com/webhooks/twilio"},
            })
        kafka.create_topics([*topics.values(), base["sends_topic"], base["dead_letter_topic"],
                             base["send_dead_letter_topic"]], partitions=4)
        s = Settings(clickhouse_database=f"e2e_{run}", horizon_ms=T0 + MIN, **base)
        import_records([  # through the CDP import path: contacts normalised
            {"customer_id": "ann", "email": "Ann@Example.com", "phone": "+49 151 23456789"},
            {"customer_id": "bob", "email": "bob@example.com", "phone": "+4915123456780"},
            {"customer_id": "cem", "email": "cem@example.com", "phone": "+4915123456781"},
        ], _store(s))
        produce(kafka.bootstrap, topics["orders"], [
            (b"ann", _order("ann", "A-1", T0)), (b"bob", _order("bob", "B-1", T0)),
            (b"cem", _order("cem", "C-1", T0))])

        # 1. the flow decides three e-mails
        from flows.app import prepare_recovery

        run_main(build_run(s, "kafka").flow, recovery_config=prepare_recovery(s, lambda _: None))
        sends = _sends(kafka, s)
        assert sorted((v["customer_id"], v["channel"]) for v in sends.values()) == [
            ("ann", "email"), ("bob", "email"), ("cem", "email")]

        # 2. the gateway: ann's and cem's accepted; bob's refused with a 4xx
        ugo.failed_emails["bob@example.com"] = "temporary_unavailable"
        ugo.fail_next(1, 503)  # and one 5xx on the way: retried
        done = _gateway_pass(s, kafka, T0 + 20_000)
        assert sorted(o.result for o in done) == ["accepted", "accepted", "failed"]
        by_email = {r.json["message"]["recipients"][0]["email"]: r.json for r in ugo.requests}
        assert set(by_email) == {"ann@example.com", "bob@example.com", "cem@example.com"}
        ann = by_email["ann@example.com"]["message"]
        ann_send = next(k for k, v in sends.items() if v["customer_id"] == "ann")
        assert ann["recipients"][0]["metadata"]["send_id"] == ann_send
        assert ann["idempotence_key"] == ann_send and "A-1" in ann["subject"]
        assert ugo.calls == 4  # 3 messages + 1 retried 5xx

        # 3. Unisender Go's webhook: ann delivered; a forged one for cem is refused
        async def hooks() -> list[int]:
            out = KafkaOut(s.brokers)
            batcher = KafkaBatcher(out.deliver, s.outcomes_topic)
            app = make_app(providers_by_name(s), batcher.publish)
            try:
                async with TestClient(TestServer(app)) as c:
                    real = unisender_webhook("ugo-key", [unisender_event(
                        "delivered", send_id=ann_send, customer_id="ann",
                        event_time="2026-01-01 10:00:40")])
                    forged = unisender_webhook("ugo-key", [unisender_event(
                        "delivered", send_id="x", customer_id="cem",
                        event_time="2026-01-01 10:00:41")], forge=True)
                    codes = []
                    for body in (real, real, forged):  # the real one delivered twice
                        r = await c.post("/webhooks/unisender_go", data=body)
                        codes.append(r.status)
                    return codes
            finally:
                await batcher.close()
                out.close()

        assert asyncio.run(hooks()) == [200, 200, 401]
        outcomes = [orjson.loads(v) for _, v in consume_all(kafka.bootstrap, s.outcomes_topic)]
        kinds = sorted((o["customer_id"], o["type"], o.get("props", {}).get("reason", ""))
                       for o in outcomes)
        assert kinds[0][:2] == ("ann", "message_delivered")
        assert kinds[1][:2] == ("ann", "message_delivered")  # a duplicate: same event id
        assert kinds[2][:2] == ("bob", "message_failed") and "temporary" in kinds[2][2]
        assert len(kinds) == 3  # nothing from the forged request
        assert len({o["event_id"] for o in outcomes}) == 2

        # 4. the flow again (recovered, later horizon): bob's failure and cem's silence move
        #    the cascade on to SMS; ann's delivery ends her step
        s2 = s.model_copy(update={"horizon_ms": T0 + 30 * MIN})
        run_main(build_run(s2, "kafka").flow, recovery_config=prepare_recovery(s2))
        sends = _sends(kafka, s)
        assert sorted((v["customer_id"], v["channel"]) for v in sends.values()) == [
            ("ann", "email"), ("bob", "email"), ("bob", "sms"), ("cem", "email"),
            ("cem", "sms")]
        db = open_backend(chdb_url)
        try:
            rows = db.query_rows(f"SELECT customer_id, outcome FROM {s.clickhouse_database}"
                                 ".outcomes ORDER BY customer_id, outcome")
            assert [tuple(r) for r in rows] == [("ann", "delivered"), ("bob", "failed")]
            ch = db.query_rows(f"SELECT customer_id, channel FROM {s.clickhouse_database}"
                               ".sends ORDER BY customer_id, channel")
            assert [tuple(r) for r in ch] == sorted(
                (v["customer_id"], v["channel"]) for v in sends.values())
        finally:
            db.close()

        # 5. the gateway again: only the two SMS go out; a duplicated command (the sends
        #    topic replayed, ann's e-mail produced again) calls nobody
        produce(kafka.bootstrap, s.sends_topic,
                [(ann_send.encode(), orjson.dumps(sends[ann_send]))])
        done = _gateway_pass(s, kafka, T0 + 31 * MIN)
        assert sorted((o.send.customer_id, o.send.channel, o.result) for o in done) == [
            ("ann", "email", "duplicate"), ("bob", "sms", "accepted"),
            ("cem", "sms", "accepted")]
        assert ugo.calls == 4 and tw.calls == 2
        assert sorted(r.form["To"] for r in tw.requests) == ["+4915123456780",
                                                             "+4915123456781"]
        assert ugo.violations == [] and tw.violations == []


def _store(s: Settings) -> Any:
    from state.profiles import RedisProfileStore

    return RedisProfileStore(s.redis_url, s.redis_key_prefix)


def _sends(kafka, s: Settings) -> dict[str, dict]:
    """The sends topic by send id (each id once on the topic)."""
    msgs = consume_all(kafka.bootstrap, s.sends_topic)
    ids = [k.decode() for k, _ in msgs]
    assert len(ids) == len(set(ids)), "a send command left the flow twice"
    return {k.decode(): orjson.loads(v) for k, v in msgs}
