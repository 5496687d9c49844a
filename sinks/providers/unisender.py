"""E-mail through Unisender Go (Web API v1): ``email/send.json`` and its status webhooks.

Sources (Unisender Go documentation, checked against django-anymail's adapter):

* https://godocs.unisender.ru/web-api-ref — "Web API" (servers go1/go2, ``X-API-KEY``,
  errors: HTTP 4xx/5xx with ``{"status": "error", "message", "code"}``) and "email/send"
  (``message.recipients[].email/substitutions/metadata``, ``template_id``,
  ``global_substitutions``, ``idempotence_key`` ≤ 64 characters, ``body.plaintext``,
  ``subject``, ``from_email``/``from_name``, ``track_links``/``track_read``; the answer
  ``{"status": "success", "job_id", "emails", "failed_emails": {address: reason}}`` with
  reasons unsubscribed, invalid, duplicate, temporary_unavailable, permanent_unavailable,
  complained, blocked; a duplicate is listed in both ``emails`` and ``failed_emails``).
* https://godocs.unisender.ru/web-api-ref — "Webhooks" / "webhook/set": the callback body
  ``{"auth", "events_by_user": [{"user_id", "project_id", "events": [{"event_name":
  "transactional_email_status", "event_data": {"job_id", "metadata", "email", "status",
  "event_time", "url", "delivery_info": {"delivery_status", "destination_response", …}}}]}]}``
  where ``auth`` is the MD5 of the body in which the ``auth`` value is replaced by the API
  key; ``event_time`` is "YYYY-MM-DD hh:mm:ss" in UTC.
* https://godocs.unisender.ru/email-statuses — "Стандартные статусы": sent, delivered,
  opened, clicked, unsubscribed, subscribed, soft_bounced, hard_bounced, spam.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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

SEND_PATH = "/ru/transactional/api/v1/email/send.json"
IDEMPOTENCE_KEY_MAX = 64  # email/send: idempotence_key, at most 64 characters

# failed_emails reasons that say the address itself is unusable (→ message_bounced, hard).
BOUNCE_REASONS = frozenset({"invalid", "permanent_unavailable"})

# Webhook ``status`` → (receipt kind, props). sent / subscribed carry no outcome for us.
_STATUS_KIND: dict[str, tuple[str, dict[str, Any]]] = {
    "delivered": ("delivered", {}),
    "opened": ("opened", {}),
    "clicked": ("clicked", {}),
    "unsubscribed": ("unsubscribed", {}),
    "hard_bounced": ("bounced", {"hard": True}),
    # A soft bounce (mailbox full, greylisting…) must not invalidate the contact.
    "soft_bounced": ("bounced", {"hard": False}),
    # A complaint revokes e-mail marketing consent.
    "spam": ("unsubscribed", {"reason": "spam"}),
}


def idempotence_key(send_id: str) -> str:
    """Our send id as Unisender's ``idempotence_key`` (hashed when longer than 64 chars)."""
    if len(send_id) <= IDEMPOTENCE_KEY_MAX:
        return send_id
    return hashlib.sha256(send_id.encode()).hexdigest()


def _strip_query(url: str) -> str:
    """A clicked URL without query and fragment: tracking parameters may carry personal data."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _event_ms(value: Any) -> int:
    """``event_time`` ("YYYY-MM-DD hh:mm:ss", UTC; ISO with an offset also accepted) → epoch ms."""
    if not isinstance(value, str):
        raise BadRequest("event_time missing")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("event_time not a date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class UnisenderGo:
    """Unisender Go transactional e-mail: one recipient per call, our send id as the
    ``idempotence_key`` and, with the customer id, as recipient metadata that every status
    webhook carries back."""

    name = "unisender_go"
    channel = "email"

    def __init__(self, api_key: str, base_url: str = "https://go1.unisender.ru", *,
                 from_email: str = "", from_name: str = "",
                 timeout_s: float = DEFAULT_TIMEOUT_S, track: bool = True) -> None:
        if not api_key:
            raise ValueError("unisender_go: api_key is required")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.from_email = from_email
        self.from_name = from_name
        self.track = track
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:  # never the key
        return f"UnisenderGo(base_url={self.base_url!r})"

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> UnisenderGo:
        """Options: api_key (required), base_url, from_email, from_name, timeout_s, track."""
        return cls(
            options.get("api_key", ""),
            options.get("base_url") or "https://go1.unisender.ru",
            from_email=options.get("from_email", ""),
            from_name=options.get("from_name", ""),
            timeout_s=float(options.get("timeout_s") or DEFAULT_TIMEOUT_S),
            track=(options.get("track", "1").lower() not in ("0", "false", "no")),
        )

    def request_body(self, msg: Message) -> dict[str, Any]:
        """The documented ``email/send`` body for one message."""
        metadata = {str(k): str(v) for k, v in msg.metadata.items()}
        metadata.update(send_id=msg.send_id, customer_id=msg.customer_id)
        recipient: dict[str, Any] = {"email": msg.address, "metadata": metadata}
        if msg.substitutions:
            recipient["substitutions"] = dict(msg.substitutions)
        message: dict[str, Any] = {
            "recipients": [recipient],
            "idempotence_key": idempotence_key(msg.send_id),
        }
        if msg.provider_template_id:
            message["template_id"] = msg.provider_template_id
        else:
            message["body"] = {"plaintext": msg.text}
        if msg.subject:
            message["subject"] = msg.subject
        if self.from_email:
            message["from_email"] = self.from_email
        if self.from_name:
            message["from_name"] = self.from_name
        if self.track:
            message["track_links"] = 1
            message["track_read"] = 1
        return {"message": message}

    async def send(self, http: aiohttp.ClientSession, msg: Message) -> Accepted | Failed:
        """Call ``email/send.json`` once; see the module docstring for the mapping."""
        status, headers, raw = await exchange(
            http, "POST", self.base_url + SEND_PATH, timeout=self.timeout,
            json=self.request_body(msg),
            headers={"X-API-KEY": self._api_key, "Accept": "application/json"},
        )
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if 200 <= status < 300 and data.get("status") == "success":
            failed = data.get("failed_emails") or {}
            reasons = [r for r in failed.values() if r != "duplicate"] if isinstance(
                failed, dict) else []
            if reasons:
                reason = str(reasons[0])
                return Failed(reason=f"unisender_go: {reason}", bounce=reason in BOUNCE_REASONS)
            return Accepted(provider_message_id=str(data.get("job_id", "")))
        code = data.get("code", "")
        text = scrub(str(data.get("message", "")), msg.address, self._api_key)
        reason = f"unisender_go {status} code {code}: {text}".rstrip(": ")
        if status == 429 or status >= 500 or status == 401:
            # 401 is our key, not the message: hold and retry until the key is fixed.
            raise Transient(reason, retry_after_seconds(header(headers, "Retry-After")))
        if 200 <= status < 300:
            raise Transient(f"unisender_go {status}: unexpected answer")
        return Failed(reason=reason)

    def _signed(self, body: bytes, auth: str) -> bool:
        """The documented check: MD5 of the body with the ``auth`` value replaced by the key.

        The raw body is used as sent (whatever its spacing or escaping); a compact
        re-serialisation is tried as well, as anymail does.
        """
        text = body.decode("utf-8")
        candidates = [text.replace(json.dumps(auth), json.dumps(self._api_key), 1)]
        try:
            doc = json.loads(text)
            doc["auth"] = self._api_key
            candidates.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
            candidates.append(json.dumps(doc, separators=(",", ":")))
        except (ValueError, TypeError):
            pass
        return any(
            hmac.compare_digest(hashlib.md5(c.encode()).hexdigest(), auth.lower())
            for c in candidates
        )

    def parse_webhook(self, body: bytes, headers: Mapping[str, str],
                      url: str) -> list[Receipt]:
        """A webhook POST → receipts (one per mapped ``transactional_email_status`` event)."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not JSON") from None
        if not isinstance(doc, dict):
            raise BadRequest("body is not an object")
        auth = doc.get("auth")
        if not isinstance(auth, str) or not auth:
            raise Forged("no auth")
        if not self._signed(body, auth):
            raise Forged("auth mismatch")
        users = doc.get("events_by_user")
        if not isinstance(users, list):
            raise BadRequest("events_by_user missing")
        receipts: list[Receipt] = []
        for user in users:
            events = user.get("events") if isinstance(user, dict) else None
            if not isinstance(events, list):
                raise BadRequest("events missing")
            for event in events:
                receipt = self._receipt(event)
                if receipt is not None:
                    receipts.append(receipt)
        return receipts

    def _receipt(self, event: Any) -> Receipt | None:
        if not isinstance(event, dict) or not isinstance(event.get("event_name"), str):
            raise BadRequest("event without event_name")
        if event["event_name"] != "transactional_email_status":
            return None  # e.g. transactional_spam_block: about our servers, not a message
        data = event.get("event_data")
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise BadRequest("event_data without status")
        ts = _event_ms(data.get("event_time"))
        mapped = _STATUS_KIND.get(data["status"])
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        send_id, customer_id = metadata.get("send_id"), metadata.get("customer_id")
        if mapped is None or not isinstance(send_id, str) or not isinstance(customer_id, str):
            return None  # sent/subscribed, or a message not sent by this engine
        kind, props = mapped
        props = dict(props)
        info = data.get("delivery_info")
        if kind == "bounced" and isinstance(info, dict) and info.get("delivery_status"):
            props["reason"] = str(info["delivery_status"])
        click = ""
        if kind == "clicked" and isinstance(data.get("url"), str):
            props["url"] = _strip_query(data["url"])
            click = ":" + hashlib.sha1(data["url"].encode()).hexdigest()[:12]
        key = f"unisender_go:{data.get('job_id', '')}:{data['status']}:{ts}{click}"
        return Receipt(send_id=send_id, customer_id=customer_id, channel=self.channel,
                       kind=kind, ts=ts, key=key, props=props)

