"""SMS through Twilio Programmable Messaging: the Message resource and its status callbacks.

Twilio was chosen over a Russian gateway (SMS.ru, SMSC) because its request, error and
callback formats — and above all a real signature on the callback — are published in
full; SMS.ru/SMSC callbacks carry no signature we could verify.

Sources:

* https://www.twilio.com/docs/messaging/api/message-resource — "Create a Message resource":
  ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP Basic auth (Account SID,
  Auth Token), form-encoded ``To``, ``From`` or ``MessagingServiceSid``, ``Body``,
  ``StatusCallback``; answer 201 with the Message JSON (``sid``, ``status`` …).
* https://www.twilio.com/docs/usage/twilios-response — "Twilio's response" / errors: JSON
  ``{"code", "message", "more_info", "status"}``; https://www.twilio.com/docs/api/errors —
  21211 invalid 'To', 21614 not a mobile number, 21610 unsubscribed recipient (STOP),
  20429 too many requests, 30003 unreachable handset, 30005 unknown handset, 30006 landline
  or unreachable carrier.
* https://www.twilio.com/docs/messaging/guides/track-outbound-message-status — "Message
  status changes" / "StatusCallback webhook parameters": form POST with ``MessageSid``,
  ``MessageStatus`` (queued, sending, sent, delivered, undelivered, failed, read …),
  ``ErrorCode`` on undelivered/failed. It carries no event time: receipts are stamped on
  arrival.
* https://www.twilio.com/docs/usage/webhooks/webhooks-security — "Validate signatures":
  ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, full URL + each POST parameter
  name and value, sorted by name)).

Our send id and customer id ride in the ``StatusCallback`` URL's query string, so every
callback maps back to the send without a lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from sinks.providers.base import (
    DEFAULT_TIMEOUT_S,
    Accepted,
    BadRequest,
    Failed,
    Forged,
    Message,
    Receipt,
    Transient,
    exchange,
    header,
    retry_after_seconds,
    scrub,
)

# Error codes saying the number itself cannot take SMS (→ message_bounced, hard).
INVALID_NUMBER_CODES = frozenset({21211, 21614, 30005, 30006})
UNSUBSCRIBED_CODE = 21610

_FINAL_KIND = {"delivered": "delivered", "read": "opened"}


def _code(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """The documented ``X-Twilio-Signature`` of a form POST to ``url``."""
    data = url + "".join(k + v for k, v in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def with_query(url: str, extra: Mapping[str, str]) -> str:
    """``url`` with ``extra`` added to its query string."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class TwilioSms:
    """Twilio Programmable Messaging: one Message per send; ``status_callback_url`` (our
    public webhook URL) gets ``send_id``/``customer_id`` appended for the callbacks."""

    name = "twilio"
    channel = "sms"

    def __init__(self, account_sid: str, auth_token: str, *, from_number: str = "",
                 messaging_service_sid: str = "", status_callback_url: str = "",
                 base_url: str = "https://api.twilio.com",
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not account_sid or not auth_token:
            raise ValueError("twilio: account_sid and auth_token are required")
        if not from_number and not messaging_service_sid:
            raise ValueError("twilio: from_number or messaging_service_sid is required")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback_url = status_callback_url
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        self._clock = clock

    def __repr__(self) -> str:  # never the token
        return f"TwilioSms(account_sid={self.account_sid!r}, base_url={self.base_url!r})"

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> TwilioSms:
        """Options: account_sid, auth_token (required), from_number (alias ``from``) or
        messaging_service_sid, status_callback_url (alias ``status_callback``), base_url,
        timeout_s."""
        return cls(
            options.get("account_sid", ""), options.get("auth_token", ""),
            from_number=options.get("from_number") or options.get("from", ""),
            messaging_service_sid=options.get("messaging_service_sid", ""),
            status_callback_url=(options.get("status_callback_url")
                                 or options.get("status_callback", "")),
            base_url=options.get("base_url") or "https://api.twilio.com",
            timeout_s=float(options.get("timeout_s") or DEFAULT_TIMEOUT_S),
        )

    def form(self, msg: Message) -> dict[str, str]:
        """The documented form parameters of "Create a Message resource"."""
        form = {"To": msg.address, "Body": msg.text}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = self.from_number
        if self.status_callback_url:
            form["StatusCallback"] = with_query(
                self.status_callback_url,
                {"send_id": msg.send_id, "customer_id": msg.customer_id})
        return form

    async def send(self, http: aiohttp.ClientSession, msg: Message) -> Accepted | Failed:
        """Create one Message; see the module docstring for the error mapping."""
        url = f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        status, headers, raw = await exchange(
            http, "POST", url, timeout=self.timeout, data=self.form(msg),
            headers=self._headers)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if 200 <= status < 300 and data.get("sid"):
            return Accepted(provider_message_id=str(data["sid"]))
        code = _code(data.get("code"))
        text = scrub(str(data.get("message", "")), msg.address, self._auth_token)
        reason = f"twilio {status} code {code}: {text}" if code else f"twilio {status}"
        if status == 429 or status >= 500 or status == 401 or 200 <= status < 300:
            # 401 is our credentials, not the message: hold and retry until fixed.
            raise Transient(reason, retry_after_seconds(header(headers, "Retry-After")))
        if code in INVALID_NUMBER_CODES:
            return Failed(reason=f"twilio {code}", bounce=True)
        if code == UNSUBSCRIBED_CODE:
            return Failed(reason=f"twilio {code}: unsubscribed recipient")
        return Failed(reason=reason)

    def _valid(self, signature: str, url: str, params: list[tuple[str, str]]) -> bool:
        urls = [url]
        if self.status_callback_url:
            # Behind a proxy the receiver may see another host: the public URL is ours.
            query = urlsplit(url).query
            public = urlsplit(self.status_callback_url)
            urls.append(urlunsplit((public.scheme, public.netloc, public.path, query, "")))
        return any(
            hmac.compare_digest(twilio_signature(self._auth_token, u, params), signature)
            for u in urls)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str],
                      url: str) -> list[Receipt]:
        """A StatusCallback POST (``url`` as Twilio called it, query included) → receipts."""
        signature = header(headers, "X-Twilio-Signature")
        if not signature:
            raise Forged("no X-Twilio-Signature")
        try:
            params = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                               strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("body is not a form") from None
        if not self._valid(signature, url, params):
            raise Forged("signature mismatch")
        form = dict(params)
        sid, status = form.get("MessageSid") or form.get("SmsSid"), form.get(
            "MessageStatus") or form.get("SmsStatus")
        query = dict(parse_qsl(urlsplit(url).query))
        send_id, customer_id = query.get("send_id"), query.get("customer_id")
        if not sid or not status:
            raise BadRequest("MessageSid/MessageStatus missing")
        if not send_id or not customer_id:
            raise BadRequest("send_id/customer_id missing from the callback URL")
        ts = int(self._clock() * 1000)
        key = f"twilio:{sid}:{status}"
        if status in _FINAL_KIND:
            return [Receipt(send_id=send_id, customer_id=customer_id, channel=self.channel,
                            kind=_FINAL_KIND[status], ts=ts, key=key)]
        if status in ("undelivered", "failed"):
            code = _code(form.get("ErrorCode"))
            reason = f"twilio {code}" if code else f"twilio {status}"
            if code in INVALID_NUMBER_CODES:
                return [Receipt(send_id=send_id, customer_id=customer_id, channel=self.channel,
                                kind="bounced", ts=ts, key=key,
                                props={"hard": True, "reason": reason})]
            return [Receipt(send_id=send_id, customer_id=customer_id, channel=self.channel,
                            kind="failed", ts=ts, key=key, props={"reason": reason})]
        return []  # queued, sending, sent, accepted, scheduled …: not an outcome
