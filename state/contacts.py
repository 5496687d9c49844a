"""Contacts normalised on their way into the profile store (CDP topic and bulk import).

- phones to E.164 with ``phonenumbers``; a number without ``+`` is read in the record's
  region (the locale's country, e.g. ``de-DE`` → DE) or ``CDP_DEFAULT_PHONE_REGION``;
- e-mail addresses checked for syntax with ``email-validator`` (no DNS lookups) and
  normalised: trimmed, lower-cased (domain IDNA-normalised by the validator);
- push tokens trimmed, one printable word of at most 4,096 characters.

Each function returns the normalised value, or None when the contact is invalid: the caller
records ``invalid:CH`` and keeps nothing. Values are never logged or put into exceptions.
"""

from __future__ import annotations

import os

DEFAULT_REGION_ENV = "CDP_DEFAULT_PHONE_REGION"
MAX_PUSH_TOKEN = 4096


def region_for(locale: str | None, default: str | None = None) -> str | None:
    """The region to read national phone numbers in: the locale's country (``de-DE``, ``de_DE``
    → ``DE``), else ``default``, else ``CDP_DEFAULT_PHONE_REGION``, else None."""
    if locale:
        parts = locale.replace("_", "-").split("-")
        if len(parts) >= 2 and len(parts[-1]) == 2 and parts[-1].isalpha():
            return parts[-1].upper()
    region = default or os.environ.get(DEFAULT_REGION_ENV) or None
    return region.upper() if region else None


def normalise_phone(raw: str, region: str | None = None) -> str | None:
    """E.164 (``+4915123456789``) or None when the number is not a valid one."""
    import phonenumbers

    raw = raw.strip()
    if not raw or len(raw) > 64:
        return None
    try:
        num = phonenumbers.parse(raw, None if raw.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def timezone_for_phone(e164: str) -> str | None:
    """The IANA zone of a phone's country when it is unambiguous (+49 → Europe/Berlin): the
    calling code belongs to one country and the number maps to exactly one zone
    (``time_zones_for_number``). None for shared codes (+1: US, Canada, …) or several zones."""
    import phonenumbers
    from phonenumbers import timezone

    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if len(phonenumbers.region_codes_for_country_code(num.country_code)) != 1:
        return None
    zones = timezone.time_zones_for_number(num)
    if len(zones) == 1 and zones[0] != timezone.UNKNOWN_TIMEZONE:
        return zones[0]
    return None


def normalise_email(raw: str) -> str | None:
    """The checked, lower-cased address, or None when its syntax is invalid."""
    from email_validator import EmailNotValidError, validate_email

    raw = raw.strip()
    if not raw or len(raw) > 320:
        return None
    try:
        return validate_email(raw, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def normalise_push_token(raw: str) -> str | None:
    raw = raw.strip()
    if not raw or len(raw) > MAX_PUSH_TOKEN or not raw.isprintable() or any(
            c.isspace() for c in raw):
        return None
    return raw
