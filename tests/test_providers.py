"""Provider adapters against their local stand-ins (tests/provider_stands.py).

Documentation followed (also cited on each adapter and stand):
* Unisender Go: https://godocs.unisender.ru/web-api-ref ("Web API", "email/send",
  "Webhooks"), https://godocs.unisender.ru/email-statuses ("Стандартные статусы").
* Twilio: https://www.twilio.com/docs/messaging/api/message-resource ("Create a Message
  resource"), https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
  ("StatusCallback webhook parameters"), https://www.twilio.com/docs/usage/webhooks/
  webhooks-security ("Validate signatures"), https://www.twilio.com/docs/api/errors.
* FCM: https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send,
  https://firebase.google.com/docs/cloud-messaging/error-codes ("REST error codes for the
  HTTP v1 API"), https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from provider_stands import (
    FcmStand,
    TwilioStand,
    UnisenderStand,
    push_callback,
    twilio_callback,
    unisender_event,
    unisender_webhook,
)

from sinks.providers import PROVIDERS, FcmPush, TwilioSms, UnisenderGo, make_provider
from sinks.providers.base import (
    Accepted,
    BadRequest,
    Failed,
    Forged,
    Message,
    Receipt,
    Transient,
)

EMAIL = "anna.petrova@example.com"
PHONE = "+79161234567"
TOKEN = "fcm-device-token-abc"
CALLBACK = "https://hooks.example.com/webhooks/twilio"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _send(provider: Any, msg: Message) -> Accepted | Failed:
    async with aiohttp.ClientSession() as http:
        return await provider.send(http, msg)


def send(provider: Any, msg: Message) -> Accepted | Failed:
    return run(_send(provider, msg))


def message(channel: str, address: str, **kw: Any) -> Message:
    base: dict[str, Any] = dict(send_id="snd-1", customer_id="cust-1", channel=channel,
                                template="welcome", address=address, subject="Hello",
                                text="Hi there")
    base.update(kw)
    return Message(**base)


@pytest.fixture(scope="module")
def unisender_stand() -> Iterator[UnisenderStand]:
    with UnisenderStand(api_key="ugo-key") as stand:
        yield stand  # type: ignore[misc]


@pytest.fixture(scope="module")
def twilio_stand() -> Iterator[TwilioStand]:
    with TwilioStand(auth_token="tw-token") as stand:
        yield stand  # type: ignore[misc]


@pytest.fixture(scope="module")
def fcm_stand() -> Iterator[FcmStand]:
    with FcmStand(project_id="shop-app", access_token="ya29.token") as stand:
        yield stand  # type: ignore[misc]


@pytest.fixture
def ugo(unisender_stand: UnisenderStand) -> Iterator[UnisenderGo]:
    unisender_stand.reset()
    yield UnisenderGo("ugo-key", unisender_stand.url, from_email="shop@example.com",
                      from_name="Shop", timeout_s=0.5)
    assert unisender_stand.violations == []


@pytest.fixture
def twilio(twilio_stand: TwilioStand) -> Iterator[TwilioSms]:
    twilio_stand.reset()
    yield TwilioSms(twilio_stand.account_sid, "tw-token", from_number="+15005550006",
                    status_callback_url=CALLBACK, base_url=twilio_stand.url, timeout_s=0.5,
                    clock=lambda: 1_714_564_800.0)
    assert twilio_stand.violations == []


@pytest.fixture
def fcm(fcm_stand: FcmStand) -> Iterator[FcmPush]:
    fcm_stand.reset()
    yield FcmPush("shop-app", access_token="ya29.token", webhook_secret="app-secret",
                  base_url=fcm_stand.url, timeout_s=0.5)
    assert fcm_stand.violations == []


def no_contact(receipts: list[Receipt], *contacts: str) -> None:
    text = repr(receipts)
    for c in contacts:
        assert c not in text


# --------------------------------------------------------------------------- registry

def test_make_provider_builds_each_adapter_from_env_style_options() -> None:
    assert set(PROVIDERS) == {"unisender_go", "twilio", "fcm"}
    ugo = make_provider("unisender_go", {"API_KEY": "k", "BASE_URL": "https://go2.unisender.ru"})
    assert isinstance(ugo, UnisenderGo) and ugo.base_url == "https://go2.unisender.ru"
    sms = make_provider("twilio", {"account_sid": "AC1", "auth_token": "t",
                                   "messaging_service_sid": "MG1"})
    assert isinstance(sms, TwilioSms) and sms.channel == "sms"
    # the keys of providers.env.example (CDP_PROVIDER_OPTIONS__TWILIO__FROM, …)
    sms = make_provider("twilio", {"ACCOUNT_SID": "AC1", "AUTH_TOKEN": "t", "FROM": "+1555",
                                   "STATUS_CALLBACK": CALLBACK})
    assert isinstance(sms, TwilioSms)
    assert (sms.from_number, sms.status_callback_url) == ("+1555", CALLBACK)
    push = make_provider("fcm", {"project_id": "p", "access_token": "t",
                                 "webhook_secret": "s", "timeout_s": "3"})
    assert isinstance(push, FcmPush) and push.timeout.total == 3.0
    with pytest.raises(ValueError, match="api_key"):
        make_provider("unisender_go", {})
    with pytest.raises(ValueError, match="unknown provider"):
        make_provider("pigeon", {})
    assert "secret-key" not in repr(make_provider("unisender_go", {"api_key": "secret-key"}))


# --------------------------------------------------------------------------- Unisender Go
# godocs web-api-ref "email/send"

def test_unisender_success_sends_documented_body(ugo: UnisenderGo,
                                                 unisender_stand: UnisenderStand) -> None:
    msg = message("email", EMAIL, provider_template_id="tpl-42",
                  substitutions={"name": "Anna"}, metadata={"trigger": "welcome"})
    result = send(ugo, msg)
    assert isinstance(result, Accepted) and result.provider_message_id
    req = unisender_stand.requests[-1]
    assert req.headers["X-API-KEY"] == "ugo-key"
    body = req.json["message"]
    assert body["template_id"] == "tpl-42" and body["idempotence_key"] == "snd-1"
    assert body["recipients"] == [{"email": EMAIL, "substitutions": {"name": "Anna"},
                                   "metadata": {"trigger": "welcome", "send_id": "snd-1",
                                                "customer_id": "cust-1"}}]
    assert body["from_email"] == "shop@example.com" and body["track_read"] == 1


def test_unisender_without_template_sends_plaintext_and_subject(
        ugo: UnisenderGo, unisender_stand: UnisenderStand) -> None:
    assert isinstance(send(ugo, message("email", EMAIL)), Accepted)
    body = unisender_stand.requests[-1].json["message"]
    assert body["body"] == {"plaintext": "Hi there"} and body["subject"] == "Hello"
    assert "template_id" not in body


def test_unisender_idempotence_key_dedups_a_retry(ugo: UnisenderGo,
                                                  unisender_stand: UnisenderStand) -> None:
    first, second = send(ugo, message("email", EMAIL)), send(ugo, message("email", EMAIL))
    assert first == second and unisender_stand.calls == 2 and unisender_stand.jobs_sent == 1
    long = message("email", EMAIL, send_id="x" * 100)
    assert isinstance(send(ugo, long), Accepted)
    assert len(unisender_stand.requests[-1].json["message"]["idempotence_key"]) == 64


@pytest.mark.parametrize(("reason", "bounce"), [
    ("invalid", True), ("permanent_unavailable", True), ("unsubscribed", False),
    ("complained", False), ("blocked", False), ("temporary_unavailable", False)])
def test_unisender_failed_emails(ugo: UnisenderGo, unisender_stand: UnisenderStand,
                                 reason: str, bounce: bool) -> None:
    unisender_stand.failed_emails[EMAIL] = reason
    result = send(ugo, message("email", EMAIL))
    assert result == Failed(reason=f"unisender_go: {reason}", bounce=bounce)


def test_unisender_duplicate_in_failed_emails_is_accepted(
        ugo: UnisenderGo, unisender_stand: UnisenderStand) -> None:
    unisender_stand.failed_emails[EMAIL] = "duplicate"
    assert isinstance(send(ugo, message("email", EMAIL)), Accepted)


# godocs web-api-ref "Web API" — error handling (HTTP 4xx/5xx, {"status":"error",…})
@pytest.mark.parametrize("status", [500, 502, 503])
def test_unisender_5xx_is_transient(ugo: UnisenderGo, unisender_stand: UnisenderStand,
                                    status: int) -> None:
    unisender_stand.fail_next(1, status, code=0, message="internal")
    with pytest.raises(Transient):
        send(ugo, message("email", EMAIL))
    assert isinstance(send(ugo, message("email", EMAIL)), Accepted)


def test_unisender_429_carries_retry_after(ugo: UnisenderGo,
                                           unisender_stand: UnisenderStand) -> None:
    unisender_stand.fail_next(1, 429, retry_after=7, message="Too many requests")
    with pytest.raises(Transient) as e:
        send(ugo, message("email", EMAIL))
    assert e.value.retry_after == 7


def test_unisender_400_is_failed_with_reason_and_no_address(
        ugo: UnisenderGo, unisender_stand: UnisenderStand) -> None:
    unisender_stand.fail_next(1, 400, code=102, message=f"Invalid recipient {EMAIL}")
    result = send(ugo, message("email", EMAIL))
    assert isinstance(result, Failed) and not result.bounce
    assert "code 102" in result.reason and EMAIL not in result.reason


def test_unisender_wrong_key_is_transient(unisender_stand: UnisenderStand) -> None:
    unisender_stand.reset()
    bad = UnisenderGo("wrong-key", unisender_stand.url)
    with pytest.raises(Transient, match="401"):
        send(bad, message("email", EMAIL))
    unisender_stand.reset()


def test_unisender_timeout_and_refused_connection_are_transient(
        ugo: UnisenderGo, unisender_stand: UnisenderStand) -> None:
    unisender_stand.delay_next(1, 1.0)
    with pytest.raises(Transient, match="timeout"):
        send(ugo, message("email", EMAIL))
    closed = UnisenderGo("ugo-key", "http://127.0.0.1:9", timeout_s=0.5)
    with pytest.raises(Transient, match="connection"):
        send(closed, message("email", EMAIL))


# godocs web-api-ref "Webhooks" + email-statuses "Стандартные статусы"
@pytest.mark.parametrize(("status", "kind", "props"), [
    ("delivered", "delivered", {}),
    ("opened", "opened", {}),
    ("clicked", "clicked", {"url": "https://shop.example.com/cart"}),
    ("unsubscribed", "unsubscribed", {}),
    ("hard_bounced", "bounced", {"hard": True, "reason": "err_user_unknown"}),
    ("soft_bounced", "bounced", {"hard": False, "reason": "err_user_unknown"}),
    ("spam", "unsubscribed", {"reason": "spam"}),
])
def test_unisender_webhook_statuses(ugo: UnisenderGo, status: str, kind: str,
                                    props: dict[str, Any]) -> None:
    url = "https://shop.example.com/cart?utm=1&email=x" if status == "clicked" else None
    info = "err_user_unknown" if "bounced" in status else None
    body = unisender_webhook("ugo-key", [unisender_event(
        status, send_id="snd-1", customer_id="cust-1", email=EMAIL, url=url,
        delivery_status=info, event_time="2024-05-01 12:00:00")])
    [receipt] = ugo.parse_webhook(body, {"Content-Type": "application/json"}, "")
    assert (receipt.send_id, receipt.customer_id, receipt.channel, receipt.kind) == (
        "snd-1", "cust-1", "email", kind)
    assert receipt.ts == 1_714_564_800_000  # event_time is UTC
    assert dict(receipt.props) == props
    no_contact([receipt], EMAIL)


@pytest.mark.parametrize("status", ["sent", "subscribed"])
def test_unisender_webhook_ignores_non_outcomes(ugo: UnisenderGo, status: str) -> None:
    body = unisender_webhook("ugo-key", [unisender_event(status)])
    assert ugo.parse_webhook(body, {}, "") == []


def test_unisender_webhook_skips_foreign_and_spam_block_events(ugo: UnisenderGo) -> None:
    block = {"event_name": "transactional_spam_block",
             "event_data": {"block_time": "2024-05-01 12:00:00", "block_type": "one_smtp",
                            "domain": "example.com", "SMTP_blocks_count": 8,
                            "domain_status": "blocked"}}
    foreign = unisender_event("delivered", send_id=None, customer_id=None)
    ours = unisender_event("delivered")
    body = unisender_webhook("ugo-key", [block, foreign, ours])
    assert [r.kind for r in ugo.parse_webhook(body, {}, "")] == ["delivered"]


def test_unisender_webhook_duplicate_gives_same_key_and_clicks_differ(ugo: UnisenderGo) -> None:
    one = unisender_webhook("ugo-key", [unisender_event("clicked", url="https://a.example/1")])
    again = unisender_webhook("ugo-key", [unisender_event("clicked", url="https://a.example/1")])
    other = unisender_webhook("ugo-key", [unisender_event("clicked", url="https://a.example/2")])
    [a], [b], [c] = (ugo.parse_webhook(x, {}, "") for x in (one, again, other))
    assert a.key == b.key and a.key != c.key


def test_unisender_webhook_auth_over_raw_body_with_spaces_and_unicode(ugo: UnisenderGo) -> None:
    # The check hashes the body as sent: spacing and escaping are the sender's.
    doc = {"auth": "ugo-key", "events_by_user": [{"user_id": 1, "events": [
        unisender_event("delivered", customer_id="клиент-1")]}]}
    import hashlib
    text = json.dumps(doc, indent=2)  # spaces, \u escapes
    auth = hashlib.md5(text.encode()).hexdigest()
    body = text.replace('"ugo-key"', json.dumps(auth), 1).encode()
    [receipt] = ugo.parse_webhook(body, {}, "")
    assert receipt.customer_id == "клиент-1"


def test_unisender_webhook_forged_unsigned_malformed(ugo: UnisenderGo) -> None:
    events = [unisender_event("delivered")]
    with pytest.raises(Forged):
        ugo.parse_webhook(unisender_webhook("ugo-key", events, forge=True), {}, "")
    with pytest.raises(Forged):
        ugo.parse_webhook(unisender_webhook("ugo-key", events, unsigned=True), {}, "")
    good = unisender_webhook("ugo-key", events)
    with pytest.raises(Forged):  # tampered after signing
        ugo.parse_webhook(good.replace(b'"c1"', b'"c2"'), {}, "")
    for bad in (b"not json", b"[1,2]", b""):
        with pytest.raises(BadRequest):
            ugo.parse_webhook(bad, {}, "")
    broken = unisender_webhook("ugo-key", [{"event_name": "transactional_email_status",
                                            "event_data": {"status": "delivered"}}])
    with pytest.raises(BadRequest):  # no event_time
        ugo.parse_webhook(broken, {}, "")


# --------------------------------------------------------------------------- Twilio
# message-resource "Create a Message resource"

def test_twilio_success_sends_documented_form(twilio: TwilioSms,
                                              twilio_stand: TwilioStand) -> None:
    result = send(twilio, message("sms", PHONE))
    assert isinstance(result, Accepted) and result.provider_message_id.startswith("SM")
    form = twilio_stand.requests[-1].form
    assert form["To"] == PHONE and form["From"] == "+15005550006" and form["Body"] == "Hi there"
    assert form["StatusCallback"] == CALLBACK + "?send_id=snd-1&customer_id=cust-1"


def test_twilio_messaging_service(twilio_stand: TwilioStand) -> None:
    twilio_stand.reset()
    svc = TwilioSms(twilio_stand.account_sid, "tw-token", messaging_service_sid="MG" + "2" * 32,
                    base_url=twilio_stand.url)
    assert isinstance(send(svc, message("sms", PHONE)), Accepted)
    form = twilio_stand.requests[-1].form
    assert "From" not in form and form["MessagingServiceSid"].startswith("MG")
    assert twilio_stand.violations == []


@pytest.mark.parametrize(("code", "bounce"), [(21211, True), (21614, True), (21610, False),
                                              (21408, False)])
def test_twilio_400_is_failed(twilio: TwilioSms, twilio_stand: TwilioStand, code: int,
                              bounce: bool) -> None:
    twilio_stand.errors_for[PHONE] = (400, code)
    result = send(twilio, message("sms", PHONE))
    assert isinstance(result, Failed) and result.bounce is bounce
    assert str(code) in result.reason and PHONE not in result.reason


@pytest.mark.parametrize("status", [500, 503])
def test_twilio_5xx_is_transient(twilio: TwilioSms, twilio_stand: TwilioStand,
                                 status: int) -> None:
    twilio_stand.fail_next(2, status)
    for _ in range(2):
        with pytest.raises(Transient):
            send(twilio, message("sms", PHONE))
    assert isinstance(send(twilio, message("sms", PHONE)), Accepted)
    assert twilio_stand.calls == 3


def test_twilio_429_and_timeout(twilio: TwilioSms, twilio_stand: TwilioStand) -> None:
    twilio_stand.fail_next(1, 429, retry_after=3)
    with pytest.raises(Transient) as e:
        send(twilio, message("sms", PHONE))
    assert e.value.retry_after == 3 and "20429" in e.value.reason
    twilio_stand.delay_next(1, 1.0)
    with pytest.raises(Transient, match="timeout"):
        send(twilio, message("sms", PHONE))


# track-outbound-message-status + webhooks-security
def _cb_url(send_id: str = "snd-1", customer_id: str = "cust-1") -> str:
    return f"{CALLBACK}?send_id={send_id}&customer_id={customer_id}"


@pytest.mark.parametrize(("status", "code", "kind", "props"), [
    ("delivered", None, "delivered", {}),
    ("read", None, "opened", {}),
    ("undelivered", 30003, "failed", {"reason": "twilio 30003"}),
    ("failed", 30008, "failed", {"reason": "twilio 30008"}),
    ("undelivered", 30005, "bounced", {"hard": True, "reason": "twilio 30005"}),
    ("failed", 30006, "bounced", {"hard": True, "reason": "twilio 30006"}),
])
def test_twilio_callback_statuses(twilio: TwilioSms, status: str, code: int | None,
                                  kind: str, props: dict[str, Any]) -> None:
    body, headers = twilio_callback(_cb_url(), "tw-token", status=status, error_code=code)
    [receipt] = twilio.parse_webhook(body, headers, _cb_url())
    assert (receipt.send_id, receipt.customer_id, receipt.channel, receipt.kind) == (
        "snd-1", "cust-1", "sms", kind)
    assert dict(receipt.props) == props and receipt.ts == 1_714_564_800_000
    no_contact([receipt], "+15005550009", PHONE)


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted"])
def test_twilio_callback_ignores_progress(twilio: TwilioSms, status: str) -> None:
    body, headers = twilio_callback(_cb_url(), "tw-token", status=status)
    assert twilio.parse_webhook(body, headers, _cb_url()) == []


def test_twilio_callback_duplicate_same_key(twilio: TwilioSms) -> None:
    body, headers = twilio_callback(_cb_url(), "tw-token", status="delivered")
    later = TwilioSms("AC1", "tw-token", from_number="+1", status_callback_url=CALLBACK,
                      clock=lambda: 1_714_564_900.0)
    [a] = twilio.parse_webhook(body, headers, _cb_url())
    [b] = later.parse_webhook(body, headers, _cb_url())
    assert a.key == b.key


def test_twilio_callback_behind_proxy_uses_public_url(twilio: TwilioSms) -> None:
    body, headers = twilio_callback(_cb_url(), "tw-token")
    seen = "http://10.0.0.5:8080/webhooks/twilio?send_id=snd-1&customer_id=cust-1"
    assert [r.kind for r in twilio.parse_webhook(body, headers, seen)] == ["delivered"]


def test_twilio_callback_forged_unsigned_malformed(twilio: TwilioSms) -> None:
    body, headers = twilio_callback(_cb_url(), "tw-token", forge=True)
    with pytest.raises(Forged):
        twilio.parse_webhook(body, headers, _cb_url())
    body, headers = twilio_callback(_cb_url(), "tw-token", unsigned=True)
    with pytest.raises(Forged):
        twilio.parse_webhook(body, headers, _cb_url())
    body, headers = twilio_callback(_cb_url(), "tw-token")
    with pytest.raises(Forged):  # another send id in the URL than the one signed
        twilio.parse_webhook(body, headers, _cb_url(send_id="snd-2"))
    with pytest.raises(BadRequest):  # signed, but no send id in the URL
        body, headers = twilio_callback(CALLBACK, "tw-token")
        twilio.parse_webhook(body, headers, CALLBACK)
    with pytest.raises(BadRequest):  # signed, but no MessageStatus
        body, headers = twilio_callback(_cb_url(), "tw-token", extra={"MessageStatus": "",
                                                                      "SmsStatus": ""})
        twilio.parse_webhook(body, headers, _cb_url())


# --------------------------------------------------------------------------- FCM
# projects.messages/send

def test_fcm_success_sends_documented_body(fcm: FcmPush, fcm_stand: FcmStand) -> None:
    result = send(fcm, message("push", TOKEN, metadata={"trigger": "cart"}))
    assert isinstance(result, Accepted)
    assert result.provider_message_id.startswith("projects/shop-app/messages/")
    req = fcm_stand.requests[-1]
    assert req.headers["Authorization"] == "Bearer ya29.token"
    assert req.json == {"message": {"token": TOKEN,
                                    "notification": {"title": "Hello", "body": "Hi there"},
                                    "data": {"trigger": "cart", "send_id": "snd-1",
                                             "customer_id": "cust-1"}}}


def test_fcm_unregistered_is_bounce(fcm: FcmPush, fcm_stand: FcmStand) -> None:
    fcm_stand.unregistered.add(TOKEN)
    result = send(fcm, message("push", TOKEN))
    assert result == Failed(reason="fcm UNREGISTERED", bounce=True)


def test_fcm_invalid_token_is_bounce_other_400_is_not(fcm: FcmPush, fcm_stand: FcmStand) -> None:
    fcm_stand.fail_next(1, 400, message="The registration token is not a valid FCM "
                                        "registration token")
    assert send(fcm, message("push", TOKEN)) == Failed(
        reason="fcm INVALID_ARGUMENT: invalid registration token", bounce=True)
    fcm_stand.fail_next(1, 400, message="Message too big")
    result = send(fcm, message("push", TOKEN))
    assert isinstance(result, Failed) and not result.bounce and "too big" in result.reason
    fcm_stand.fail_next(1, 403, message="SenderId mismatch")
    result = send(fcm, message("push", TOKEN))
    assert isinstance(result, Failed) and "SENDER_ID_MISMATCH" in result.reason


@pytest.mark.parametrize(("status", "retry_after"), [(429, 30), (503, 5), (500, None)])
def test_fcm_retried_errors_are_transient(fcm: FcmPush, fcm_stand: FcmStand, status: int,
                                          retry_after: int | None) -> None:
    fcm_stand.fail_next(1, status, retry_after=retry_after)
    with pytest.raises(Transient) as e:
        send(fcm, message("push", TOKEN))
    assert e.value.retry_after == retry_after


def test_fcm_expired_token_is_transient_and_token_file_is_reread(
        fcm_stand: FcmStand, tmp_path: Any) -> None:
    import os

    fcm_stand.reset()
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    push = FcmPush("shop-app", access_token_file=str(token_file), webhook_secret="s",
                   base_url=fcm_stand.url)
    with pytest.raises(Transient, match="401"):
        send(push, message("push", TOKEN))
    token_file.write_text("ya29.token\n")  # the sidecar refreshed it
    os.utime(token_file, ns=(1, 2_000_000_000_000_000_000))
    assert isinstance(send(push, message("push", TOKEN)), Accepted)
    fcm_stand.reset()


def test_fcm_timeout_is_transient(fcm: FcmPush, fcm_stand: FcmStand) -> None:
    fcm_stand.delay_next(1, 1.0)
    with pytest.raises(Transient, match="timeout"):
        send(fcm, message("push", TOKEN))


# our app callback (sinks.providers.push.APP_CALLBACK)
@pytest.mark.parametrize("event", ["delivered", "opened", "clicked"])
def test_push_callback_events(fcm: FcmPush, event: str) -> None:
    body, headers = push_callback("app-secret", event=event, url="https://s.example/p?t=1")
    [receipt] = fcm.parse_webhook(body, headers, "/webhooks/fcm")
    assert (receipt.send_id, receipt.customer_id, receipt.channel, receipt.kind,
            receipt.ts) == ("s1", "c1", "push", event, 1_714_564_800_000)
    assert dict(receipt.props) == ({"url": "https://s.example/p"} if event == "clicked" else {})


def test_push_callback_duplicate_same_key(fcm: FcmPush) -> None:
    a = fcm.parse_webhook(*push_callback("app-secret"), "")
    b = fcm.parse_webhook(*push_callback("app-secret"), "")
    c = fcm.parse_webhook(*push_callback("app-secret", ts=1_714_564_800_001), "")
    assert a[0].key == b[0].key != c[0].key


def test_push_callback_forged_unsigned_malformed(fcm: FcmPush) -> None:
    with pytest.raises(Forged):
        fcm.parse_webhook(*push_callback("app-secret", forge=True), "")
    with pytest.raises(Forged):
        fcm.parse_webhook(*push_callback("app-secret", unsigned=True), "")
    for doc in (b"not json", json.dumps({"send_id": "s1"}).encode(),
                json.dumps({"send_id": "s1", "customer_id": "c1", "event": "exploded",
                            "ts": 1}).encode(),
                json.dumps({"send_id": "s1", "customer_id": "c1", "event": "opened",
                            "ts": "yesterday"}).encode()):
        from sinks.providers.push import app_signature

        with pytest.raises(BadRequest):
            fcm.parse_webhook(doc, {"X-Signature": app_signature("app-secret", doc)}, "")


# --------------------------------------------------------------------------- stands

def test_stand_counts_calls_and_serves_concurrently(ugo: UnisenderGo,
                                                    unisender_stand: UnisenderStand) -> None:
    async def many() -> list[Accepted | Failed]:
        async with aiohttp.ClientSession() as http:
            return await asyncio.gather(*(
                ugo.send(http, message("email", EMAIL, send_id=f"s{i}")) for i in range(200)))

    results = run(many())
    assert all(isinstance(r, Accepted) for r in results)
    assert unisender_stand.calls == 200 and unisender_stand.jobs_sent == 200


def test_stand_reports_shape_violations(unisender_stand: UnisenderStand) -> None:
    unisender_stand.reset()

    async def post() -> int:
        async with aiohttp.ClientSession() as http, http.post(
                unisender_stand.url + UnisenderStand.PATH, headers={"X-API-KEY": "ugo-key"},
                json={"message": {"recipients": [{"email": 1}]}}) as resp:
            assert (await resp.json())["status"] == "error"
            return resp.status

    assert run(post()) == 400
    assert unisender_stand.violations == ["recipient without email"]
    unisender_stand.reset()
