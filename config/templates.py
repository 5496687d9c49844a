"""The message template registry (``config/templates.yaml``) and its sandboxed rendering.

Each template id names the channels it has content for, the variables its content needs and
the content itself: per channel (sms ``text``; push ``title`` + ``body``; email a Unisender
Go ``provider_template_id`` and/or ``subject`` + ``text``), in the template's default locale
(``content``) and optionally in more locales (``locales``; a missing locale or channel falls
back to ``content``). Trigger steps are checked against the registry (:mod:`config.checks`).
Variables are template data only: a registry may never ask for a raw e-mail address or
phone number.

Content is Jinja2 source, compiled once when the registry is parsed, in an immutable sandbox
with strict undefined variables: a syntax error, an unknown filter or a variable the template
does not declare (besides :data:`ALWAYS_PROVIDED`) is a config error located at its field.
The channel gateway calls :func:`render` per send command and turns a :class:`RenderError`
into a dead letter:

>>> reg = TemplateRegistry.model_validate({"templates": {"thanks": {
...     "channels": ["sms"], "vars": ["order_id", "total"],
...     "content": {"sms": {"text": "Order {{ order_id }}: {{ total | money('EUR') }}"}}}}})
>>> msg = render(reg, "thanks", "sms", {"order_id": "A-7", "total": 59.9}, "de-DE")
>>> msg.text, msg.locale, msg.segments
('Order A-7: 59.90 EUR', 'en', 1)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any

import jinja2
from jinja2 import meta, nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config.schema import Channel, Ident

TEMPLATES_FILE = "templates.yaml"
CONTACT_DATA = re.compile(r"e_?mail|phone|mobile|msisdn|address")
DEFAULT_LOCALE = "en"

# Variables every template may use without declaring them: the gateway passes the send
# command's ids with the variables, render() adds locale and channel, and the engine puts
# the instance key into every Send.variables.
ALWAYS_PROVIDED = frozenset(
    {"customer_id", "send_id", "locale", "trigger_id", "variant", "channel", "key"})

# Locales whose amounts are written with a decimal comma (money filter).
_DECIMAL_COMMA = frozenset(
    {"ru", "uk", "be", "kk", "de", "fr", "es", "it", "pt", "nl", "pl", "cs", "sv", "fi", "tr"})


def _no_contact_data(name: str) -> str:
    if CONTACT_DATA.search(name):
        raise ValueError(f"no raw contact data in templates: '{name}' "
                         "(gateways resolve addresses from the customer id)")
    return name


Var = Annotated[Ident, AfterValidator(_no_contact_data)]
Locale = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


# ---- the sandbox ----------------------------------------------------------------------------

class _NullValue(Exception):
    """A ``{{ … }}`` printed None (a variable whose source was missing)."""


def _finalize(value: Any) -> Any:
    if value is None:
        raise _NullValue("a printed value is null (its variable's source was missing)")
    return value


@pass_context
def money(ctx: Context, value: Any, currency: str | None = None) -> str:
    """``59.9 | money`` → ``59.90``; ``| money('EUR')`` → ``59.90 EUR`` (half-up, 2 decimals;
    a decimal comma in locales that write one, e.g. ``ru``: ``59,90``)."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"money: not an amount: {value!r}")
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"money: not an amount: {value!r}") from None
    text = f"{amount:.2f}"
    if _language(str(ctx.get("locale") or "")) in _DECIMAL_COMMA:
        text = text.replace(".", ",")
    return f"{text} {currency}" if currency else text


def plural(n: Any, one: str, few: str, many: str | None = None) -> str:
    """The word form for count ``n``: ``n | plural('item', 'items')`` (one/other), or with
    three forms the East Slavic rule: ``n | plural('товар', 'товара', 'товаров')``."""
    n = abs(int(n))
    if many is None:
        return one if n == 1 else few
    if n % 10 == 1 and n % 100 != 11:
        return one
    return few if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14 else many


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                        trim_blocks=True, lstrip_blocks=True,
                                        finalize=_finalize)
    env.filters.update(money=money, plural=plural)
    return env


ENV = _environment()  # plain text (sms, push, e-mail subject and plain body): no escaping

# The declared vars of the template being validated (None: not inside a template, or its
# vars are invalid): lets each content field check its own variables, so an error names it.
_DECLARED: ContextVar[frozenset[str] | None] = ContextVar("declared_template_vars",
                                                          default=None)


class Source(str):
    """Jinja2 source text; ``compiled`` is the sandboxed template, compiled once at load."""

    compiled: jinja2.Template


def _compile(text: str) -> Source:
    try:
        ast = ENV.parse(text)
        # Jinja checks filters and tests inside {% if %} only when it runs: check all now
        for node in ast.find_all((nodes.Filter, nodes.Test)):
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            if node.name not in (ENV.filters if kind == "filter" else ENV.tests):
                raise jinja2.TemplateAssertionError(f"no {kind} named '{node.name}'",
                                                    node.lineno)
        compiled = ENV.from_string(ast)
    except jinja2.TemplateSyntaxError as e:
        where = f" (line {e.lineno} of the template)" if "\n" in text.strip() else ""
        raise ValueError(f"{e.message}{where}") from None
    declared = _declared_now()
    if declared is not None:
        unknown = sorted(meta.find_undeclared_variables(ast) - declared)
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(declared - ALWAYS_PROVIDED), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"undeclared variable {', '.join(unknown)}: add it to this "
                             f"template's vars (always available: "
                             f"{', '.join(sorted(ALWAYS_PROVIDED))}){hint}")
    source = Source(text)
    source.compiled = compiled
    return source


def _declared_now() -> frozenset[str] | None:
    declared = _DECLARED.get()
    return None if declared is None else declared | ALWAYS_PROVIDED | set(ENV.globals)


Jinja = Annotated[str, AfterValidator(_compile)]


# ---- the registry model -----------------------------------------------------------------------

class SmsContent(BaseModel):
    """An SMS: its text (GSM-7 160 / UCS-2 70 characters per segment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Jinja


class PushContent(BaseModel):
    """A push notification: title and body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Jinja
    body: Jinja


class EmailContent(BaseModel):
    """An e-mail: a provider-side template (the variables go as substitutions, not rendered
    here) and/or a plain body; the subject is rendered here whenever it is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider_template_id: Annotated[str, StringConstraints(pattern=r"^\S+$")] | None = Field(
        default=None, description="Unisender Go template id; the variables are substitutions")
    subject: Jinja | None = None
    text: Jinja | None = Field(default=None, description="plain-text body (needs a subject)")

    @model_validator(mode="after")
    def _complete(self) -> EmailContent:
        if self.provider_template_id is None and self.text is None:
            raise ValueError("an e-mail needs provider_template_id or subject + text")
        if self.text is not None and self.subject is None:
            raise ValueError("a plain-text e-mail (text) needs a subject")
        return self


class Content(BaseModel):
    """The content of one locale, per channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sms: SmsContent | None = None
    push: PushContent | None = None
    email: EmailContent | None = None

    def channels(self) -> list[str]:
        return [c for c in ("push", "email", "sms") if getattr(self, c) is not None]


class Template(BaseModel):
    """One message template: its channels, the variables it needs and its content."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    channels: list[Channel] = Field(min_length=1, description="channels with content")
    vars: list[Var] = Field(default_factory=list,
                            description="variables the content needs (step `vars` keys)")
    default_locale: Locale = Field(default=DEFAULT_LOCALE,
                                   description="the locale of `content`, the fallback")
    content: Content | None = Field(default=None,
                                    description="per channel, in the default locale")
    locales: dict[Locale, Content] = Field(
        default_factory=dict, description="more locales; a missing channel falls back")

    @model_validator(mode="wrap")
    @classmethod
    def _with_declared_vars(cls, data: Any, handler: Any) -> Any:
        """Content fields check their variables against ``vars`` (see :data:`_DECLARED`)."""
        names = data.get("vars", []) if isinstance(data, dict) else None
        ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
        token = _DECLARED.set(frozenset(names) if ok else None)
        try:
            return handler(data)
        finally:
            _DECLARED.reset(token)

    @field_validator("channels", "vars")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({x for x in v if v.count(x) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return v

    @field_validator("content")
    @classmethod
    def _covers_channels(cls, v: Content | None, info: ValidationInfo) -> Content | None:
        channels = info.data.get("channels")
        if v is None or channels is None:
            return v
        missing = [c for c in channels if c not in v.channels()]
        extra = [c for c in v.channels() if c not in channels]
        if missing:
            raise ValueError(f"no {', '.join(missing)} content, which channels lists")
        if extra:
            raise ValueError(f"{', '.join(extra)} content, but channels does not list it")
        return v

    @field_validator("locales")
    @classmethod
    def _locales_fit(cls, v: dict[str, Content], info: ValidationInfo) -> dict[str, Content]:
        if v and "content" in info.data and info.data["content"] is None:
            raise ValueError("locales need the default locale's content (content:) to fall "
                             "back on")
        default = str(info.data.get("default_locale", "")).lower()
        names = [name.lower() for name in v]
        if default in names:
            raise ValueError(f"'{default}' is the default locale: its content goes under "
                             "content:")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"listed twice (locales ignore case): {', '.join(dupes)}")
        channels = info.data.get("channels") or []
        for locale, content in v.items():
            extra = [c for c in content.channels() if c not in channels]
            if extra:
                raise ValueError(f"{locale}: {', '.join(extra)} content, but channels does "
                                 "not list it")
        return v

    def content_for(self, channel: str, locale: str) -> tuple[str, Any]:
        """(locale used, channel content or None): ``ru-RU`` tries ``ru-RU``, ``ru``, then
        the default locale."""
        by_name = {name.lower(): name for name in self.locales}
        for candidate in _candidates(locale):
            name = by_name.get(candidate)
            found = getattr(self.locales[name], channel, None) if name else None
            if found is not None:
                return name, found  # type: ignore[return-value]
        return self.default_locale, getattr(self.content, channel, None)


class TemplateRegistry(BaseModel):
    """The whole ``templates.yaml``: ``templates: {id: Template}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: dict[Ident, Template] = Field(min_length=1)


def _language(locale: str) -> str:
    return locale.replace("_", "-").split("-")[0].lower()


def _candidates(locale: str) -> list[str]:
    """Lower-case lookups for a requested locale: ``ru_RU`` → ``ru-ru``, ``ru``."""
    full = locale.strip().replace("_", "-").lower()
    return [c for c in dict.fromkeys([full, full.split("-")[0]]) if c]


# ---- rendering --------------------------------------------------------------------------------

class RenderError(Exception):
    """A send command that cannot be rendered: the gateway dead-letters it with ``reason``
    (``unknown_template``, ``no_content``, ``undefined_variable``, ``null_value``,
    ``sandbox_violation`` or ``render_failed``) and ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rendered:
    """One rendered message. ``text`` is the body on every channel (the SMS text, the push
    body, the plain e-mail body); e-mail with ``provider_template_id`` carries the variables
    as ``substitutions`` for the provider to render (``text`` then is an optional plain
    alternative). ``segments``/``encoding``: SMS length, GSM-7 or UCS-2 (not refused)."""

    template_id: str
    channel: str
    locale: str
    subject: str = ""
    text: str = ""
    title: str = ""
    provider_template_id: str = ""
    substitutions: Mapping[str, Any] = field(default_factory=dict)
    segments: int = 0
    encoding: str = ""


def render(registry: TemplateRegistry | Mapping[str, Template], template_id: str,
           channel: str, variables: Mapping[str, Any], locale: str | None = "") -> Rendered:
    """Render ``template_id`` for ``channel`` in ``locale`` (falling back to the template's
    default locale) with the send command's ``variables`` (plus ``customer_id``,
    ``send_id``, ``trigger_id`` and ``variant`` when its content uses them). Pure: no I/O.
    Raises :class:`RenderError`, never anything else."""
    templates = registry.templates if isinstance(registry, TemplateRegistry) else registry
    tpl = templates.get(template_id)
    if tpl is None:
        raise RenderError("unknown_template", f"no template '{template_id}'")
    locale = locale if isinstance(locale, str) else ""  # a profile without one: the default
    used, content = tpl.content_for(channel, locale) if channel in tpl.channels else ("", None)
    if content is None:
        raise RenderError("no_content", f"template '{template_id}' has no {channel} content")
    ctx = {**variables, "locale": used, "channel": channel}
    out: dict[str, Any] = {}
    if isinstance(content, SmsContent):
        out["text"] = _run(content.text, ctx).strip()
        out["segments"], out["encoding"] = sms_segments(out["text"])
    elif isinstance(content, PushContent):
        out["title"] = _one_line(_run(content.title, ctx))
        out["text"] = _run(content.body, ctx).strip()
    else:
        if content.subject is not None:
            out["subject"] = _one_line(_run(content.subject, ctx))
        if content.text is not None:
            out["text"] = _run(content.text, ctx).strip() + "\n"
        if content.provider_template_id is not None:
            out["provider_template_id"] = content.provider_template_id
            out["substitutions"] = _substitutions(tpl, template_id, ctx)
    return Rendered(template_id, channel, used, **out)


def _run(source: Source, ctx: Mapping[str, Any]) -> str:
    try:
        return source.compiled.render(ctx)
    except SecurityError as e:
        raise RenderError("sandbox_violation", str(e)) from None
    except jinja2.UndefinedError as e:
        raise RenderError("undefined_variable", str(e)) from None
    except _NullValue as e:
        raise RenderError("null_value", str(e)) from None
    except Exception as e:  # a filter's ValueError, a TypeError in an expression, …
        raise RenderError("render_failed", f"{type(e).__name__}: {e}") from None


def _one_line(text: str) -> str:
    """Subjects and titles: one line (no header or layout injection by a variable)."""
    return " ".join(text.split())


def _substitutions(tpl: Template, template_id: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    missing = [v for v in tpl.vars if v not in ctx]
    if missing:
        raise RenderError("undefined_variable",
                          f"template '{template_id}' needs {', '.join(missing)}")
    names = [*tpl.vars, *sorted(ALWAYS_PROVIDED - set(tpl.vars))]
    return {name: ctx[name] for name in names if name in ctx}


# ---- SMS length -------------------------------------------------------------------------------

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")  # two septets each (escape + char)


def sms_segments(text: str) -> tuple[int, str]:
    """(segments, encoding) of an SMS: GSM-7 when every character is in the GSM 03.38 set
    (160 septets alone, 153 per part), else UCS-2 (70 UTF-16 units alone, 67 per part); an
    escape pair or a surrogate pair is never split across parts.

    >>> sms_segments("Hello"), sms_segments("Привет"), sms_segments("x" * 161)
    ((1, 'gsm7'), (1, 'ucs2'), (2, 'gsm7'))
    """
    if not text:
        return 0, ""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        units, single, part, encoding = [2 if c in GSM7_EXTENDED else 1 for c in text], 160, \
            153, "gsm7"
    else:
        units, single, part, encoding = [2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67, \
            "ucs2"
    if sum(units) <= single:
        return 1, encoding
    segments, used = 1, 0
    for u in units:
        if used + u > part:
            segments, used = segments + 1, 0
        used += u
    return segments, encoding
