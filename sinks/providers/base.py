"""What every channel provider adapter offers the gateway and the webhook receiver.

A provider adapter owns one published HTTP API: the request it sends for a message and
the callbacks (webhooks) it receives back. The gateway (``flows/gateway.py``) only sees
this interface, so providers are chosen by configuration, one per channel.

Contacts (``Message.address``) are read from Redis at send time and live only in memory
for the call: adapters must never log them nor put them into a receipt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered message, ready for a provider call."""

    send_id: str  # our deterministic id: the provider's idempotence key where it has one
    customer_id: str
    channel: str  # email | sms | push
    template: str  # our template id
    address: str  # e-mail, E.164 phone or push token (never logged, never in receipts)
    locale: str = "en"
    subject: str = ""  # e-mail subject / push title
    text: str = ""  # rendered body (sms, push; e-mail when no provider template is used)
    provider_template_id: str = ""  # e-mail: the provider-side template
    substitutions: Mapping[str, Any] = field(default_factory=dict)  # template variables
    metadata: Mapping[str, str] = field(default_factory=dict)  # send_id, customer_id, …

    def __repr__(self) -> str:  # printed in a traceback or a log line: never the address
        return (f"Message({self.send_id!r}, {self.customer_id!r}, {self.channel!r}, "
                f"{self.template!r}, address={'***' if self.address else ''!r})")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message; receipts follow by webhook."""

    provider_message_id: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    """The provider refused the message for good (4xx): a ``message_failed`` receipt with
    ``reason``; ``bounce`` when the contact itself is invalid (→ ``message_bounced``)."""

    reason: str
    bounce: bool = False


class Transient(Exception):
    """5xx, 429, timeout, connection error: retried with backoff; ``retry_after`` seconds
    when the provider said so."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Forged(Exception):
    """A webhook request whose signature is missing or wrong: answered 401, nothing else."""


class BadRequest(Exception):
    """A webhook request that is not the provider's format: answered 400, nothing else."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery fact from a provider callback, mapped to our outcome vocabulary.

    ``kind`` is one of delivered, opened, clicked, bounced, failed, unsubscribed (the
    ``message_*`` outcome events); ``key`` tells duplicates of the same fact apart from
    distinct facts (e.g. two clicks) and becomes part of the outcome's event id.
    """

    send_id: str
    customer_id: str
    channel: str
    kind: str
    ts: int  # epoch ms UTC, the provider's event time
    key: str = ""
    props: Mapping[str, Any] = field(default_factory=dict)  # hard, reason, url…: no contacts


class Provider(Protocol):
    """One channel's provider adapter."""

    name: str  # e.g. unisender_go, twilio, fcm
    channel: str  # email | sms | push

    async def send(self, http: aiohttp.ClientSession, msg: Message) -> Accepted | Failed:
        """Call the provider once. Raise :class:`Transient` for what a retry may fix."""
        ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str],
                      url: str) -> list[Receipt]:
        """A callback request → receipts. Raise :class:`Forged` / :class:`BadRequest`."""
        ...


# --- small helpers shared by the adapters (no contact, token or key ever leaves them) ---

DEFAULT_TIMEOUT_S = 10.0


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts and aiohttp's multidicts."""
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (delta seconds or HTTP date) → seconds, ``None`` if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def scrub(text: str, *secrets: str, limit: int = 200) -> str:
    """A provider's error text made safe for a receipt or a log: the message's address
    (providers echo it back, e.g. Twilio's "The 'To' number … is not valid") and any
    other given secret replaced, and the text cut to ``limit`` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text[:limit]


async def exchange(http: aiohttp.ClientSession, method: str, url: str, *,
                   timeout: aiohttp.ClientTimeout,
                   **kwargs: Any) -> tuple[int, Mapping[str, str], bytes]:
    """One HTTP request/response; a timeout or a connection error becomes :class:`Transient`
    (raised ``from None`` so no URL, header or body rides along in a traceback)."""
    try:
        async with http.request(method, url, timeout=timeout, **kwargs) as resp:
            return resp.status, resp.headers, await resp.read()
    except TimeoutError:
        raise Transient("timeout") from None
    except aiohttp.ClientError as e:
        raise Transient(f"connection error: {type(e).__name__}") from None
