"""Channel provider adapters, chosen by name from configuration.

``make_provider(name, options)`` builds one adapter from environment-style settings
(keys are case-insensitive; values are strings). Keys per provider:

* ``unisender_go`` (e-mail): api_key*, base_url (https://go1.unisender.ru or go2),
  from_email, from_name, track ("1"/"0": track_links and track_read), timeout_s.
* ``twilio`` (sms): account_sid*, auth_token*, from_number (or ``from``) or
  messaging_service_sid*, status_callback_url (or ``status_callback``: our public
  ``/webhooks/twilio`` URL; send_id/customer_id are appended), base_url, timeout_s.
* ``fcm`` (push): project_id*, access_token or access_token_file* (kept fresh by a
  sidecar / workload identity), webhook_secret* (HMAC key of our app's receipt callback
  on ``/webhooks/fcm``, see ``sinks.providers.push.APP_CALLBACK``), base_url, timeout_s.

(* required.) Errors name the missing key, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping

from sinks.providers.base import Provider
from sinks.providers.push import FcmPush
from sinks.providers.sms import TwilioSms
from sinks.providers.unisender import UnisenderGo

PROVIDERS: dict[str, type[UnisenderGo] | type[TwilioSms] | type[FcmPush]] = {
    "unisender_go": UnisenderGo,
    "twilio": TwilioSms,
    "fcm": FcmPush,
}


def make_provider(name: str, options: Mapping[str, str]) -> Provider:
    """The adapter called ``name``, configured from ``options``."""
    try:
        cls = PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {sorted(PROVIDERS)}") from None
    return cls.from_options({str(k).lower(): str(v) for k, v in options.items()})


__all__ = ["PROVIDERS", "FcmPush", "TwilioSms", "UnisenderGo", "make_provider"]
