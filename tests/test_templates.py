"""Template content and sandboxed rendering: each channel, locale fallback, config errors
located at their field (Jinja syntax, undeclared variables), sandbox and strict-undefined
refusals as RenderError, SMS segments; the shipped templates render with what the shipped
triggers pass."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import pytest

import config.templates
from config.loader import DEFAULT_CONFIG_DIR, load_config, validate_document
from config.templates import (
    ALWAYS_PROVIDED,
    Rendered,
    RenderError,
    TemplateRegistry,
    render,
    sms_segments,
)
from tests.engine_helpers import config_issues

REGISTRY = """\
templates:
  order:
    channels: [sms, push, email]
    vars: [order_id, items, total]
    content:
      sms:
        text: "Order {{ order_id }}: {{ total | money('EUR') }}"
      push:
        title: |
          Order
          {{ order_id }}
        body: >-
          {% for item in items %}{{ item.quantity }} x {{ item.product_id }}
          {%- if item.price is not none %} at {{ item.price | money }}{% endif %}
          {{- '; ' if not loop.last else '' }}{% endfor %}
      email:
        subject: Your order {{ order_id }}
        text: |
          Hello {{ customer_id }},
          {% for item in items %}
          - {{ item.product_id }} x {{ item.quantity }}
          {% endfor %}
          Total: {{ total | money }}
    locales:
      ru:
        sms:
          text: "Заказ {{ order_id }}: {{ total | money }} ({{ locale }}, {{ channel }})"
  promo:
    channels: [email]
    vars: [product_id]
    content:
      email:
        provider_template_id: ug-promo-1
        subject: "{{ variant }}: a deal on {{ product_id }}"
  legacy:
    channels: [sms]
"""

VARS = {"order_id": "A-7", "total": 1234.5, "customer_id": "c1",
        "items": [{"product_id": "SKU-1", "quantity": 2, "price": 9.995},
                  {"product_id": "SKU-2", "quantity": 1, "price": None}]}


def registry(text: str = REGISTRY) -> TemplateRegistry:
    parsed, issues = validate_document(text, "templates.yaml", TemplateRegistry)
    assert not issues, [str(i) for i in issues]
    return parsed


def issues_of(text: str) -> list[str]:
    return [str(i) for i in validate_document(text, "templates.yaml", TemplateRegistry)[1]]


def test_renders_each_channel():
    reg = registry()
    assert render(reg, "order", "sms", VARS, "en") == Rendered(
        "order", "sms", "en", text="Order A-7: 1234.50 EUR", segments=1, encoding="gsm7")
    push = render(reg, "order", "push", VARS, "en")
    assert (push.title, push.text) == ("Order A-7", "2 x SKU-1 at 10.00; 1 x SKU-2")
    email = render(reg, "order", "email", VARS, "en")
    assert email.subject == "Your order A-7" and email.provider_template_id == ""
    assert email.text == "Hello c1,\n- SKU-1 x 2\n- SKU-2 x 1\nTotal: 1234.50\n"


def test_provider_template_passes_variables_as_substitutions():
    msg = render(registry(), "promo", "email",
                 {"product_id": "SKU-9", "variant": "b", "send_id": "s1", "other": "x"}, "en")
    assert msg.provider_template_id == "ug-promo-1" and msg.subject == "b: a deal on SKU-9"
    assert msg.text == "" and msg.substitutions == {
        "product_id": "SKU-9", "channel": "email", "locale": "en", "send_id": "s1",
        "variant": "b"}  # declared and always-provided variables only
    with pytest.raises(RenderError, match=r"undefined_variable: .*'variant' is undefined"):
        render(registry(), "promo", "email", {"product_id": "SKU-9"}, "en")
    with pytest.raises(RenderError, match="template 'promo' needs product_id"):
        render(registry(REGISTRY.replace("{{ variant }}: a deal on {{ product_id }}", "Deals")),
               "promo", "email", {}, "en")


@pytest.mark.parametrize(("asked", "used"), [
    ("ru", "ru"), ("ru-RU", "ru"), ("RU_ru", "ru"), ("en", "en"), ("de-DE", "en"), ("", "en"),
    (None, "en")])
def test_locale_falls_back_to_the_default(asked, used):
    msg = render(registry(), "order", "sms", VARS, asked)
    assert msg.locale == used
    if used == "ru":  # the ru text; money writes a decimal comma; locale and channel given
        assert msg.text == "Заказ A-7: 1234,50 (ru, sms)" and msg.encoding == "ucs2"
    # push has no ru content: the default locale's
    assert render(registry(), "order", "push", VARS, asked).locale == "en"


def test_missing_template_channel_or_content_is_a_render_error():
    reg = registry()
    for tid, channel, reason in [("nope", "sms", "unknown_template"),
                                 ("promo", "sms", "no_content"),
                                 ("legacy", "sms", "no_content")]:  # declared, no content
        with pytest.raises(RenderError) as e:
            render(reg, tid, channel, VARS, "en")
        assert e.value.reason == reason


@pytest.mark.parametrize(("text", "reason"), [
    ("{{ ''.__class__.__mro__ }}", "sandbox_violation"),
    ("{{ order_id.__class__.__base__.__subclasses__() }}", "sandbox_violation"),
    ("{{ items.append(1) }}", "sandbox_violation"),  # immutable: no mutating methods
    ("{{ range.__globals__ }}", "sandbox_violation"),
    ("{{ total }}", "undefined_variable"),  # declared, not passed: strict undefined
    ("{{ order_id }}", "null_value"),  # passed as null (its source was missing)
    ("{{ order_id | money }}", "render_failed"),  # not an amount
])
def test_sandbox_and_strict_undefined_refuse_as_render_errors(text, reason):
    reg = registry(REGISTRY.replace("\"Order {{ order_id }}: {{ total | money('EUR') }}\"",
                                    repr(text)))
    variables = {"order_id": None if reason == "null_value" else "A-7", "items": []}
    with pytest.raises(RenderError) as e:
        render(reg, "order", "sms", variables, "en")
    assert e.value.reason == reason, e.value


def test_jinja_syntax_error_is_a_config_error_with_file_line_and_field(tmp_path: Path):
    setup(tmp_path, REGISTRY.replace("{{ total | money('EUR') }}\"", "{{ total | money('EUR') }\""))
    [msg] = config_issues(tmp_path)
    assert msg.endswith("templates.yaml:7:15 templates.order.content.sms.text: unexpected '}'")


def test_multiline_syntax_errors_name_the_template_line_and_unknown_filters_fail():
    msgs = issues_of(REGISTRY.replace("Total: {{ total | money }}", "Total: {{ total | mony }}")
                     .replace("{% endfor %}\n          Total", "{% endfr %}\n          Total"))
    assert any(m.startswith("templates.yaml:18:15 templates.order.content.email.text: "
                            "Encountered unknown tag 'endfr'") and "(line 4 of the template)" in m
               for m in msgs), msgs
    [msg] = issues_of(REGISTRY.replace("{{ item.price | money }}", "{{ item.price | mony }}"))
    assert msg.endswith("templates.order.content.push.body: no filter named 'mony'")


def test_undeclared_variable_is_a_config_error_with_file_line_and_field(tmp_path: Path):
    setup(tmp_path, REGISTRY.replace("Your order {{ order_id }}", "Your order {{ order_ids }}"))
    [msg] = config_issues(tmp_path)
    assert msg.endswith(
        "templates.yaml:17:18 templates.order.content.email.subject: undeclared variable "
        "order_ids: add it to this template's vars (always available: channel, customer_id, "
        "key, locale, send_id, trigger_id, variant); did you mean 'order_id'?")
    # {% set %}, loop variables, globals and the always-provided variables need no declaring
    text = ("'{% set n = 2 %}{% for i in range(n) %}{{ loop.index }}{% endfor %} "
            + " ".join(f"{{{{ {name} }}}}" for name in sorted(ALWAYS_PROVIDED)) + "'")
    reg = registry(REGISTRY.replace("\"Order {{ order_id }}: {{ total | money('EUR') }}\"", text))
    msg = render(reg, "order", "sms", {name: name.upper() for name in ALWAYS_PROVIDED}, "de")
    assert msg.text == "12 sms CUSTOMER_ID KEY en SEND_ID TRIGGER_ID VARIANT"  # render sets two


def test_content_must_match_channels_and_email_must_be_complete():
    msgs = issues_of(REGISTRY.replace("channels: [sms, push, email]", "channels: [sms, push]")
                     .replace("provider_template_id: ug-promo-1\n", ""))
    assert any(m.startswith("templates.yaml:6:7 templates.order.content: email content, but "
                            "channels does not list it") for m in msgs), msgs
    assert any("templates.promo.content.email: an e-mail needs provider_template_id or "
               "subject + text" in m for m in msgs), msgs
    [msg] = issues_of(REGISTRY.replace("    locales:\n      ru:", "    locales:\n      en:"))
    assert "templates.order.locales: 'en' is the default locale" in msg


def test_a_valid_registry_loads_with_the_config(tmp_path: Path):
    cfg = load_config(setup(tmp_path, REGISTRY))
    assert render(cfg.templates, "order", "sms", VARS, "ru").locale == "ru"


@pytest.mark.parametrize(("text", "expected"), [
    ("", (0, "")), ("a" * 160, (1, "gsm7")), ("a" * 161, (2, "gsm7")),
    ("a" * 306, (2, "gsm7")), ("a" * 307, (3, "gsm7")),
    ("€" * 80, (1, "gsm7")), ("€" * 81, (2, "gsm7")),  # extension characters: 2 septets
    ("a" * 152 + "€" + "a" * 10, (2, "gsm7")),  # an escape pair is never split
    ("я" * 70, (1, "ucs2")), ("я" * 71, (2, "ucs2")), ("я" * 134, (2, "ucs2")),
    ("😀" * 35, (1, "ucs2")), ("😀" * 34 + "я" * 2, (1, "ucs2")),  # surrogate pairs
])
def test_sms_segments(text, expected):
    assert sms_segments(text) == expected


def test_docstring_examples():
    assert doctest.testmod(config.templates).failed == 0


# ---- the shipped templates -----------------------------------------------------------------

ITEMS = [{"product_id": "SKU-1042", "quantity": 2, "price": 24.5},
         {"product_id": "SKU-2210", "quantity": 1, "price": None}]
# A sample value per step `vars` source the shipped triggers use (as operators/engine.py
# turns them into Send.variables); "event.type" takes each start event of the trigger.
SAMPLES: dict[str, Any] = {
    "cart.items": ITEMS, "cart.total": 49.0, "event.props.order_id": "A-100234",
    "event.props.product_id": "SKU-1042", "instance.key": "SKU-1042",
    "event.props.price": 19.99, "event.props.old_price": 29.99, "customer.orders_count": 3,
    "event.props.total": 349.0, "event.props.currency": "EUR", "event.props.tier": "gold",
    "event.props.years": 2,
}
GATEWAY = {"customer_id": "c-1", "send_id": "s-1", "trigger_id": "t", "variant": "a"}


def shipped_variables() -> dict[str, list[dict[str, Any]]]:
    """Per template id, the Send.variables the shipped triggers' steps would carry."""
    cfg = load_config(DEFAULT_CONFIG_DIR)
    out: dict[str, list[dict[str, Any]]] = {}
    for t in cfg.triggers:
        starts = ([t.start.event] if isinstance(t.start.event, str)
                  else list(t.start.event or ())) or ["(timed start)"]  # schedule / date
        for step in t.steps:
            unknown = [s for s in step.vars.values() if s not in SAMPLES and s != "event.type"]
            assert not unknown, f"{t.id}: add a sample for {unknown} to SAMPLES"
            for start in starts:
                variables = {"key": "k-1", **GATEWAY, **{
                    name: start if source == "event.type" else SAMPLES[source]
                    for name, source in step.vars.items()}}
                names = [step.template, *(v.templates.get(step.template) for v in t.variants)]
                for name in filter(None, names):
                    out.setdefault(name, []).append(variables)
    return out


def test_shipped_templates_render_every_channel_and_locale():
    cfg = load_config(DEFAULT_CONFIG_DIR)
    samples = shipped_variables()
    assert set(samples) == set(cfg.templates), "a shipped template no trigger uses"
    assert any(tpl.locales for tpl in cfg.templates.values())
    for tid, tpl in cfg.templates.items():
        assert tpl.content is not None, tid
        for variables in samples[tid]:
            for channel in tpl.channels:
                for locale in ("en", *tpl.locales, "fr-FR"):
                    msg = render(cfg.templates, tid, channel, variables, locale)
                    where = (tid, channel, locale, msg)
                    assert msg.locale in (locale, "en"), where
                    if channel == "email":
                        assert msg.subject and (msg.provider_template_id or msg.text), where
                    elif channel == "push":
                        assert msg.title and msg.text, where
                    else:
                        assert msg.text and msg.segments <= 2, where
                        assert msg.encoding == ("ucs2" if msg.locale == "ru" else "gsm7"), where
                    assert "None" not in f"{msg.subject} {msg.title} {msg.text}", where


def test_shipped_order_status_says_what_happened():
    cfg = load_config(DEFAULT_CONFIG_DIR)
    says = {"order_shipped": "on its way", "order_delivered": "delivered",
            "order_cancelled": "cancelled", "order_paid": "Payment received"}
    for status, words in says.items():
        variables = {"status": status, "order_id": "A-100234"}
        email = render(cfg.templates, "order_status", "email", variables, "en")
        assert email.provider_template_id == "" and words.lower() in email.subject.lower()
        assert "A-100234" in email.text and "https://mercato.example/orders/A-100234" in email.text
        sms = render(cfg.templates, "order_status", "sms", variables, "en")
        assert words.lower() in sms.text.lower() and sms.segments == 1
    ru = render(cfg.templates, "order_status", "sms",
                {"status": "order_shipped", "order_id": "A-1"}, "ru-RU")
    assert ru.text == "Mercato: заказ A-1 в пути. https://mercato.example/orders/A-1"
    cart = render(cfg.templates, "abandoned_cart_reminder", "push",
                  {"items": ITEMS, "cart_total": 49.0}, "ru")
    assert cart.text.startswith("В корзине 3 товара на 49,00.")
    marketing = render(cfg.templates, "abandoned_cart_reminder", "email",
                       {"items": ITEMS, "cart_total": 49.0}, "en")
    assert marketing.provider_template_id == "ug-abandoned-cart-1"
    assert marketing.substitutions == {"items": ITEMS, "cart_total": 49.0, "channel": "email",
                                       "locale": "en"}


# ---- helpers -------------------------------------------------------------------------------

TRIGGER = """\
id: t
start:
  event: order_shipped
steps:
  - template: order
    channels: [sms]
    vars: {order_id: event.props.order_id, items: cart.items, total: cart.total}
"""


def setup(tmp_path: Path, templates: str) -> Path:
    (tmp_path / "triggers").mkdir(exist_ok=True)
    (tmp_path / "triggers" / "t.yaml").write_text(TRIGGER)
    (tmp_path / "templates.yaml").write_text(templates)
    return tmp_path
