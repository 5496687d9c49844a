"""Local stand-ins for the providers' HTTP APIs, and builders of their webhook payloads.

Each stand is an aiohttp.web server on 127.0.0.1 (OS-chosen port) in a background thread.
It accepts exactly the documented request (method, path, auth, content type, body fields
and types), answers the documented success or error, and records every request::

    with UnisenderStand(api_key="k") as stand:        # or the pytest fixtures in tests
        provider = UnisenderGo("k", base_url=stand.url)
        ...
        stand.fail_next(2, 503)                       # the next 2 calls answer 503
        stand.fail_next(1, 429, retry_after=7)        # … then one 429 with Retry-After: 7
        stand.fail_next(1, 400, code=102, message="bad")   # documented error body
        stand.delay_next(1, 0.5)                      # next call answers after 0.5 s
        stand.calls, stand.requests[-1].json, stand.violations

``violations`` lists every request that broke the documented shape (it is also answered
with the provider's 400/401): a test asserts it stays empty. Nothing sleeps in the hot
path, so the stands serve thousands of requests per second for benchmarks.

Documentation each stand follows is cited on its class.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from sinks.providers.push import app_signature
from sinks.providers.sms import twilio_signature


@dataclass
class Recorded:
    """One request as the stand saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    status: int
    retry_after: float | None = None
    code: Any = None
    message: str = ""
    delay: float = 0.0


class Stand:
    """The common part: thread + loop + server, recording, fault injection."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.record = True
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Stand:
        """Serve on 127.0.0.1:<free port>; ``self.url`` is the base URL."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stand did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Stand:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ---------------------------------------------------------------------
    def fail_next(self, n: int, status: int, *, retry_after: float | None = None,
                  code: Any = None, message: str = "") -> None:
        """The next ``n`` requests answer ``status`` with the provider's error body."""
        with self._lock:
            self._faults.extend(_Fault(status, retry_after, code, message) for _ in range(n))

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` requests answer normally, but only after ``seconds`` (timeouts)."""
        with self._lock:
            self._faults.extend(_Fault(0, delay=seconds) for _ in range(n))

    def reset(self) -> None:
        """Forget recorded requests, violations and pending faults."""
        with self._lock:
            self.requests.clear()
            self.violations.clear()
            self._faults.clear()
        self._reset_state()

    def _reset_state(self) -> None:
        pass

    @property
    def calls(self) -> int:
        return len(self.requests)

    # -- serving ---------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = Recorded(request.method, request.path, dict(request.query),
                       dict(request.headers), body)
        with self._lock:
            if self.record:
                self.requests.append(rec)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
            fault = None
        problem = self.check(request, rec)
        if problem is not None:
            status, why = problem
            with self._lock:
                self.violations.append(why)
            return self.error(status, None, why, None)
        if fault is not None:
            return self.error(fault.status, fault.code, fault.message, fault.retry_after)
        return self.answer(rec)

    def check(self, request: web.Request, rec: Recorded) -> tuple[int, str] | None:
        """``None`` when the request has the documented shape, else (status, why)."""
        raise NotImplementedError

    def answer(self, rec: Recorded) -> web.Response:
        raise NotImplementedError

    def error(self, status: int, code: Any, message: str,
              retry_after: float | None) -> web.Response:
        raise NotImplementedError


def _headers(retry_after: float | None) -> dict[str, str]:
    return {"Retry-After": str(int(retry_after))} if retry_after is not None else {}


# ---------------------------------------------------------------------------------------
# Unisender Go
# ---------------------------------------------------------------------------------------

class UnisenderStand(Stand):
    """Unisender Go Web API v1 ``email/send.json``.

    https://godocs.unisender.ru/web-api-ref — "Web API" (HTTPS POST JSON, ``X-API-KEY``,
    4xx/5xx with ``{"status": "error", "message", "code"}``) and "email/send" (recipients
    with email/substitutions/metadata, template_id or body+subject, idempotence_key ≤ 64;
    answer ``{"status": "success", "job_id", "emails", "failed_emails"}``).

    ``failed_emails[address] = reason`` makes that address come back in ``failed_emails``.
    A repeated ``idempotence_key`` answers the first job again (``jobs_sent`` counts jobs).
    Error ``code`` values are illustrative; the body shape is the documented one.
    """

    PATH = "/ru/transactional/api/v1/email/send.json"

    def __init__(self, api_key: str = "test-unisender-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.failed_emails: dict[str, str] = {}
        self._jobs: dict[str, str] = {}
        self.jobs_sent = 0

    def _reset_state(self) -> None:
        self.failed_emails.clear()
        self._jobs.clear()
        self.jobs_sent = 0

    def check(self, request: web.Request, rec: Recorded) -> tuple[int, str] | None:
        if request.method != "POST" or request.path != self.PATH:
            return 404, f"unknown method {request.method} {request.path}"
        if request.headers.get("X-API-KEY") != self.api_key:
            return 401, "X-API-KEY missing or wrong"
        if request.content_type != "application/json":
            return 400, f"content type {request.content_type}"
        try:
            rec.json = json.loads(rec.body)
        except ValueError:
            return 400, "body is not JSON"
        msg = rec.json.get("message") if isinstance(rec.json, dict) else None
        if not isinstance(msg, dict):
            return 400, "message missing"
        recipients = msg.get("recipients")
        if not isinstance(recipients, list) or not 1 <= len(recipients) <= 500:
            return 400, "recipients must be a list of 1..500"
        for r in recipients:
            if not isinstance(r, dict) or not isinstance(r.get("email"), str):
                return 400, "recipient without email"
            for name in ("substitutions", "metadata"):
                if name in r and not isinstance(r[name], dict):
                    return 400, f"recipient {name} not an object"
            for k, v in (r.get("metadata") or {}).items():
                if not isinstance(v, str) or len(k) > 64 or len(v) > 1024:
                    return 400, "metadata values must be strings (key ≤ 64, value ≤ 1024)"
        key = msg.get("idempotence_key")
        if key is not None and (not isinstance(key, str) or len(key) > 64):
            return 400, "idempotence_key must be a string of at most 64 characters"
        if "template_id" in msg:
            if not isinstance(msg["template_id"], str):
                return 400, "template_id must be a string"
        else:
            body = msg.get("body")
            if not isinstance(body, dict) or not any(
                    isinstance(body.get(k), str) for k in ("html", "plaintext", "amp")):
                return 400, "body.html or body.plaintext required without template_id"
            if not isinstance(msg.get("subject"), str):
                return 400, "subject required without template_id"
        for name in ("subject", "from_email", "from_name"):
            if name in msg and not isinstance(msg[name], str):
                return 400, f"{name} must be a string"
        for name in ("track_links", "track_read"):
            if name in msg and msg[name] not in (0, 1):
                return 400, f"{name} must be 0 or 1"
        if "global_substitutions" in msg and not isinstance(msg["global_substitutions"], dict):
            return 400, "global_substitutions must be an object"
        return None

    def answer(self, rec: Recorded) -> web.Response:
        msg = rec.json["message"]
        key = msg.get("idempotence_key")
        with self._lock:
            job_id = self._jobs.get(key) if key else None
            if job_id is None:
                job_id = uuid.uuid4().hex[:6] + "-" + uuid.uuid4().hex[:6].upper()
                self.jobs_sent += 1
                if key:
                    self._jobs[key] = job_id
        emails, failed = [], {}
        for r in msg["recipients"]:
            reason = self.failed_emails.get(r["email"])
            if reason is None:
                emails.append(r["email"])
            else:
                failed[r["email"]] = reason
        return web.json_response({"status": "success", "job_id": job_id, "emails": emails,
                                  "failed_emails": failed})

    def error(self, status: int, code: Any, message: str,
              retry_after: float | None) -> web.Response:
        return web.json_response(
            {"status": "error", "message": message or "error",
             "code": code if code is not None else 0},
            status=status, headers=_headers(retry_after))


def unisender_event(status: str, *, send_id: str | None = "s1", customer_id: str | None = "c1",
                    job_id: str = "1a3Q2V-0000OZ-S0", email: str = "user@example.com",
                    event_time: str = "2024-05-01 12:00:00", url: str | None = None,
                    delivery_status: str | None = None) -> dict[str, Any]:
    """One ``transactional_email_status`` event (Web API ref, "Webhooks": event_data)."""
    metadata: dict[str, str] = {}
    if send_id is not None:
        metadata["send_id"] = send_id
    if customer_id is not None:
        metadata["customer_id"] = customer_id
    data: dict[str, Any] = {"job_id": job_id, "metadata": metadata, "email": email,
                            "status": status, "event_time": event_time}
    if url is not None:
        data["url"] = url
    if delivery_status is not None:
        data["delivery_info"] = {"delivery_status": delivery_status,
                                 "destination_response": "550 mailbox unavailable",
                                 "user_agent": "", "ip": ""}
    return {"event_name": "transactional_email_status", "event_data": data}


def unisender_webhook(api_key: str, events: list[dict[str, Any]], *,
                      forge: bool = False, unsigned: bool = False) -> bytes:
    """A webhook body as Unisender Go sends it: ``auth`` = MD5 of the body in which the
    ``auth`` value is the API key (Web API ref, "Webhooks"). ``forge`` signs with another
    key; ``unsigned`` leaves ``auth`` out."""
    doc: dict[str, Any] = {
        "auth": api_key if not forge else api_key + "-forged",
        "events_by_user": [{"user_id": 456, "project_id": "6432890213745872",
                            "project_name": "MyProject", "events": events}],
    }
    if unsigned:
        del doc["auth"]
        return json.dumps(doc, separators=(",", ":")).encode()
    with_key = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    auth = hashlib.md5(with_key.encode()).hexdigest()
    return with_key.replace(json.dumps(doc["auth"]), json.dumps(auth), 1).encode()


# ---------------------------------------------------------------------------------------
# Twilio
# ---------------------------------------------------------------------------------------

E164 = re.compile(r"^\+[1-9]\d{1,14}$")


class TwilioStand(Stand):
    """Twilio Programmable Messaging "Create a Message resource".

    https://www.twilio.com/docs/messaging/api/message-resource — ``POST /2010-04-01/
    Accounts/{AccountSid}/Messages.json``, HTTP Basic (SID, token), form-encoded To, Body,
    From or MessagingServiceSid, StatusCallback; answer 201 with the Message JSON.
    https://www.twilio.com/docs/usage/twilios-response — errors
    ``{"code", "message", "more_info", "status"}``; codes from
    https://www.twilio.com/docs/api/errors (20003 auth, 21211 invalid To, 21602 no Body,
    21603 no From, 20429 too many requests).

    ``errors_for[to] = (status, code)`` makes a number fail that way (e.g. (400, 21211)).
    """

    def __init__(self, account_sid: str = "AC" + "0" * 32,
                 auth_token: str = "test-twilio-token") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.errors_for: dict[str, tuple[int, int]] = {}

    def _reset_state(self) -> None:
        self.errors_for.clear()

    @property
    def path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def check(self, request: web.Request, rec: Recorded) -> tuple[int, str] | None:
        if request.method != "POST" or request.path != self.path:
            return 404, f"unknown resource {request.method} {request.path}"
        expected = "Basic " + base64.b64encode(
            f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return 401, "HTTP Basic auth missing or wrong"
        if request.content_type != "application/x-www-form-urlencoded":
            return 400, f"content type {request.content_type}"
        rec.form = dict(parse_qsl(rec.body.decode(), keep_blank_values=True))
        form = rec.form
        if not E164.match(form.get("To", "")):
            return 400, "To is not an E.164 number"
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 400, "From or MessagingServiceSid required"
        if not form.get("Body"):
            return 400, "Body required"
        cb = form.get("StatusCallback")
        if cb is not None and not cb.startswith(("http://", "https://")):
            return 400, "StatusCallback must be an absolute URL"
        return None

    def answer(self, rec: Recorded) -> web.Response:
        form = rec.form
        err = self.errors_for.get(form["To"])
        if err is not None:
            return self.error(err[0], err[1], f"The 'To' number {form['To']} is not valid.",
                              None)
        sid = "SM" + uuid.uuid4().hex
        return web.json_response({
            "sid": sid, "account_sid": self.account_sid, "to": form["To"],
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form["Body"],
            "status": "accepted" if form.get("MessagingServiceSid") else "queued",
            "num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
            "error_code": None, "error_message": None, "price": None,
            "date_created": "Wed, 01 May 2024 12:00:00 +0000",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }, status=201)

    def error(self, status: int, code: Any, message: str,
              retry_after: float | None) -> web.Response:
        code = code if code is not None else {401: 20003, 429: 20429}.get(status, 20500)
        return web.json_response(
            {"code": code, "message": message or "error",
             "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
            status=status, headers=_headers(retry_after))


def twilio_callback(url: str, auth_token: str, *, message_sid: str = "SM" + "1" * 32,
                    status: str = "delivered", error_code: int | None = None,
                    forge: bool = False, unsigned: bool = False,
                    extra: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A StatusCallback POST (body, headers) as Twilio sends it to ``url``
    (track-outbound-message-status, "StatusCallback webhook parameters"), signed per
    webhooks-security "Validate signatures"."""
    params = {"MessageSid": message_sid, "SmsSid": message_sid, "AccountSid": "AC" + "0" * 32,
              "MessageStatus": status, "SmsStatus": status, "From": "+15005550006",
              "To": "+15005550009", "ApiVersion": "2010-04-01"}
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    params.update(extra or {})
    body = urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if not unsigned:
        key = auth_token + "-forged" if forge else auth_token
        headers["X-Twilio-Signature"] = twilio_signature(key, url, list(params.items()))
    return body, headers


# ---------------------------------------------------------------------------------------
# FCM
# ---------------------------------------------------------------------------------------

_OAUTH_FAILURE = "Request had invalid authentication credentials."
_RPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
        404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_FCM = {400: "INVALID_ARGUMENT", 401: "THIRD_PARTY_AUTH_ERROR", 403: "SENDER_ID_MISMATCH",
        404: "UNREGISTERED", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class FcmStand(Stand):
    """FCM HTTP v1 ``projects.messages.send``.

    https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send —
    ``POST /v1/projects/{project}/messages:send``, ``Authorization: Bearer``, body
    ``{"message": {...}}`` with exactly one of token/topic/condition, ``data`` values strings;
    answer ``{"name": "projects/{project}/messages/{id}"}``.
    https://firebase.google.com/docs/cloud-messaging/error-codes — "REST error codes for the
    HTTP v1 API": ``{"error": {"code", "message", "status", "details": [FcmError]}}``;
    https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode for the codes.

    ``unregistered`` holds tokens answered 404 UNREGISTERED. ``fail_next(n, status,
    code="QUOTA_EXCEEDED")`` picks the FcmError code (default by status).
    """

    def __init__(self, project_id: str = "test-project",
                 access_token: str = "test-access-token") -> None:
        super().__init__()
        self.project_id = project_id
        self.access_token = access_token
        self.unregistered: set[str] = set()

    def _reset_state(self) -> None:
        self.unregistered.clear()

    def check(self, request: web.Request, rec: Recorded) -> tuple[int, str] | None:
        if request.method != "POST" or request.path != (
                f"/v1/projects/{self.project_id}/messages:send"):
            return 404, f"unknown method {request.method} {request.path}"
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return 401, _OAUTH_FAILURE
        if request.content_type != "application/json":
            return 400, f"content type {request.content_type}"
        try:
            rec.json = json.loads(rec.body)
        except ValueError:
            return 400, "body is not JSON"
        msg = rec.json.get("message") if isinstance(rec.json, dict) else None
        if not isinstance(msg, dict):
            return 400, "message missing"
        targets = [k for k in ("token", "topic", "condition") if k in msg]
        if len(targets) != 1 or not isinstance(msg[targets[0]], str):
            return 400, "exactly one of token, topic, condition"
        data = msg.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return 400, "Invalid value at 'message.data' (TYPE_STRING)"
        note = msg.get("notification", {})
        if not isinstance(note, dict) or not all(
                isinstance(note.get(k, ""), str) for k in ("title", "body", "image")):
            return 400, "notification fields must be strings"
        return None

    def answer(self, rec: Recorded) -> web.Response:
        token = rec.json["message"].get("token")
        if token in self.unregistered:
            return self.error(404, "UNREGISTERED", "Requested entity was not found.", None)
        return web.json_response(
            {"name": f"projects/{self.project_id}/messages/0:{uuid.uuid4().int % 10**16}"})

    def error(self, status: int, code: Any, message: str,
              retry_after: float | None) -> web.Response:
        err: dict[str, Any] = {"code": status, "message": message or "error",
                               "status": _RPC.get(status, "UNKNOWN")}
        fcm_code = code if code is not None else _FCM.get(status)
        if fcm_code and message != _OAUTH_FAILURE:  # an OAuth failure has no FcmError
            err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                               "errorCode": fcm_code}]
        return web.json_response({"error": err}, status=status, headers=_headers(retry_after))


def push_callback(secret: str, *, send_id: str = "s1", customer_id: str = "c1",
                  event: str = "delivered", ts: int = 1_714_564_800_000,
                  url: str | None = None, forge: bool = False,
                  unsigned: bool = False) -> tuple[bytes, dict[str, str]]:
    """Our app's receipt callback (sinks.providers.push.APP_CALLBACK): (body, headers)."""
    doc: dict[str, Any] = {"send_id": send_id, "customer_id": customer_id, "event": event,
                           "ts": ts}
    if url is not None:
        doc["url"] = url
    body = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    if not unsigned:
        headers["X-Signature"] = app_signature(secret + "-forged" if forge else secret, body)
    return body, headers
