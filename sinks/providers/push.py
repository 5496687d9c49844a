"""Push through Firebase Cloud Messaging HTTP v1, plus our own app receipt callback.

Sources:

* https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send —
  "projects.messages.send": ``POST https://fcm.googleapis.com/v1/{parent=projects/*}/
  messages:send``, body ``{"message": Message}``, answer a Message with its ``name``
  ("projects/*/messages/{message_id}"); OAuth 2.0 bearer token (scope
  ``https://www.googleapis.com/auth/firebase.messaging``).
* https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages — "Message":
  ``token``, ``notification.title``/``body``, ``data`` (string values only).
* https://firebase.google.com/docs/cloud-messaging/error-codes — "REST error codes for
  the HTTP v1 API": ``{"error": {"code", "message", "status", "details": [{"@type":
  "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}]}}``, and
  https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode — "ErrorCode":
  INVALID_ARGUMENT 400, UNREGISTERED 404, SENDER_ID_MISMATCH 403, QUOTA_EXCEEDED 429,
  UNAVAILABLE 503, INTERNAL 500, THIRD_PARTY_AUTH_ERROR 401; 429/503/500 are retried
  (honouring ``Retry-After``), an UNREGISTERED token is stale and must not be used again.

The access token is short-lived: this adapter never mints it. A sidecar or workload
identity keeps it fresh, given either as ``access_token`` or — better — as a file
(``access_token_file``) that the sidecar rewrites and the adapter re-reads when it changes.
A 401 is therefore Transient: the next attempt carries the refreshed token.

FCM has no delivery webhook. Our mobile app reports what it saw for a send id on
``POST /webhooks/fcm`` (see :data:`APP_CALLBACK` below), signed with a shared secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

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

APP_CALLBACK = """\
POST /webhooks/fcm   (our app → our receiver, flows/webhooks.py; not an FCM API)
Content-Type: application/json
X-Signature: hex(HMAC-SHA256(webhook_secret, raw body))
Body: one event or a JSON array of events, each
  {"send_id": str, "customer_id": str, "event": "delivered" | "opened" | "clicked",
   "ts": int epoch milliseconds UTC (device time of the event), "url": str (clicked, optional)}
Duplicates (the app retries until it gets 2xx) give the same Receipt.key.
"""

APP_EVENTS = frozenset({"delivered", "opened", "clicked"})
RETRIED = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "THIRD_PARTY_AUTH_ERROR"})


def app_signature(secret: str, body: bytes) -> str:
    """The ``X-Signature`` our app puts on a receipt callback."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _fcm_error(data: Any) -> tuple[str, str, str]:
    """An FCM error body → (FCM errorCode or "", google.rpc status, message)."""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", "", ""
    code = ""
    for detail in err.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(
                "google.firebase.fcm.v1.FcmError"):
            code = str(detail.get("errorCode", ""))
    return code, str(err.get("status", "")), str(err.get("message", ""))


class FcmPush:
    """FCM HTTP v1 ``messages:send`` for one device token per send; receipts come from our
    app's signed callback."""

    name = "fcm"
    channel = "push"

    def __init__(self, project_id: str, *, access_token: str = "", access_token_file: str = "",
                 webhook_secret: str = "", base_url: str = "https://fcm.googleapis.com",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not project_id:
            raise ValueError("fcm: project_id is required")
        if not access_token and not access_token_file:
            raise ValueError("fcm: access_token or access_token_file is required")
        if not webhook_secret:
            raise ValueError("fcm: webhook_secret is required")
        self.project_id = project_id
        self._token = access_token
        self.access_token_file = access_token_file
        self._secret = webhook_secret
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._file_seen: tuple[int, str] = (-1, "")  # (mtime_ns, token): a cache, not state

    def __repr__(self) -> str:  # never the token or the secret
        return f"FcmPush(project_id={self.project_id!r}, base_url={self.base_url!r})"

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> FcmPush:
        """Options: project_id, webhook_secret (required), access_token or
        access_token_file, base_url, timeout_s."""
        return cls(
            options.get("project_id", ""),
            access_token=options.get("access_token", ""),
            access_token_file=options.get("access_token_file", ""),
            webhook_secret=options.get("webhook_secret", ""),
            base_url=options.get("base_url") or "https://fcm.googleapis.com",
            timeout_s=float(options.get("timeout_s") or DEFAULT_TIMEOUT_S),
        )

    def access_token(self) -> str:
        """The current bearer token: the file's content when it changed, else the cache."""
        if not self.access_token_file:
            return self._token
        try:
            mtime = os.stat(self.access_token_file).st_mtime_ns
            if mtime != self._file_seen[0]:
                with open(self.access_token_file, encoding="utf-8") as f:
                    self._file_seen = (mtime, f.read().strip())
        except OSError:
            raise Transient("fcm: access token file unreadable") from None
        return self._file_seen[1]

    def request_body(self, msg: Message) -> dict[str, Any]:
        """The documented ``{"message": …}`` for one device token."""
        data = {str(k): str(v) for k, v in msg.metadata.items()}
        data.update(send_id=msg.send_id, customer_id=msg.customer_id)
        return {"message": {
            "token": msg.address,
            "notification": {"title": msg.subject, "body": msg.text},
            "data": data,
        }}

    async def send(self, http: aiohttp.ClientSession, msg: Message) -> Accepted | Failed:
        """Call ``messages:send`` once; see the module docstring for the error mapping."""
        url = f"{self.base_url}/v1/projects/{self.project_id}/messages:send"
        status, headers, raw = await exchange(
            http, "POST", url, timeout=self.timeout, json=self.request_body(msg),
            headers={"Authorization": f"Bearer {self.access_token()}"})
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if 200 <= status < 300 and isinstance(data, dict) and data.get("name"):
            return Accepted(provider_message_id=str(data["name"]))
        code, rpc_status, text = _fcm_error(data)
        text = scrub(text, msg.address, self._token)
        label = code or rpc_status or str(status)
        reason = f"fcm {status} {label}: {text}".rstrip(": ")
        if status in (401, 429) or status >= 500 or code in RETRIED or 200 <= status < 300:
            raise Transient(reason, retry_after_seconds(header(headers, "Retry-After")))
        if code == "UNREGISTERED" or status == 404:
            return Failed(reason="fcm UNREGISTERED", bounce=True)
        if code == "INVALID_ARGUMENT" and "registration token" in text.lower():
            return Failed(reason="fcm INVALID_ARGUMENT: invalid registration token", bounce=True)
        return Failed(reason=reason)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str],
                      url: str) -> list[Receipt]:
        """Our app's receipt callback (:data:`APP_CALLBACK`) → receipts."""
        signature = header(headers, "X-Signature")
        if not signature:
            raise Forged("no X-Signature")
        if not hmac.compare_digest(app_signature(self._secret, body), signature.lower()):
            raise Forged("signature mismatch")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not JSON") from None
        events = doc if isinstance(doc, list) else [doc]
        return [self._receipt(e) for e in events]

    def _receipt(self, event: Any) -> Receipt:
        if not isinstance(event, dict):
            raise BadRequest("event is not an object")
        send_id, customer_id = event.get("send_id"), event.get("customer_id")
        kind, ts = event.get("event"), event.get("ts")
        if not isinstance(send_id, str) or not send_id or not isinstance(customer_id, str) \
                or not customer_id:
            raise BadRequest("send_id/customer_id missing")
        if kind not in APP_EVENTS:
            raise BadRequest("event must be delivered, opened or clicked")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
            raise BadRequest("ts must be epoch milliseconds")
        props: dict[str, Any] = {}
        if kind == "clicked" and isinstance(event.get("url"), str):
            props["url"] = event["url"].split("?", 1)[0]
        return Receipt(send_id=send_id, customer_id=customer_id, channel=self.channel,
                       kind=kind, ts=ts, key=f"fcm:{send_id}:{kind}:{ts}", props=props)
