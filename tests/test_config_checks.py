"""Cross-file config checks: templates exist, have the channels and get their variables;
no step is unreachable; templates.yaml errors are located. Shipped config/ passes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cdp_triggers.cli import json_schemas, main
from config.checks import check_config
from config.loader import DEFAULT_CONFIG_DIR, load_config
from tests.engine_helpers import config_issues

TEMPLATES = """\
templates:
  cart_reminder:
    channels: [email, push]
    vars: [items, cart_total]
  welcome:
    channels: [email]
"""

TRIGGER = """\
id: cart
start:
  event: added_to_cart
wait:
  inactivity: 1h
expire_after: 2d
steps:
  - template: cart_reminder
    channels: [email, push]
    vars: {items: cart.items, cart_total: cart.total}
  - delay: 1d
    template: welcome
    channels: [email]
"""


def setup(tmp_path: Path, trigger: str = TRIGGER, templates: str | None = TEMPLATES) -> Path:
    (tmp_path / "triggers").mkdir(exist_ok=True)
    (tmp_path / "triggers" / "cart.yaml").write_text(trigger)
    if templates is not None:
        (tmp_path / "templates.yaml").write_text(templates)
    return tmp_path


issues = config_issues  # shared helper


def test_shipped_config_passes_every_check():
    cfg = load_config(DEFAULT_CONFIG_DIR)
    assert cfg.templates and check_config(DEFAULT_CONFIG_DIR, cfg) == []
    assert any(f.endswith("templates.yaml") for f in cfg.files)
    for t in cfg.triggers:
        for step in t.steps:
            assert step.template in cfg.templates, (t.id, step.template)


def test_a_consistent_set_loads_with_its_registry(tmp_path):
    cfg = load_config(setup(tmp_path))
    assert cfg.templates["cart_reminder"].vars == ["items", "cart_total"]


def test_unknown_template_is_located_with_a_suggestion(tmp_path):
    setup(tmp_path, TRIGGER.replace("template: welcome", "template: welcom"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:12:15 steps[1].template: unknown template "
                        "'welcom' (not in templates.yaml); did you mean 'welcome'?")


def test_channel_without_content_points_at_the_channel(tmp_path):
    setup(tmp_path, TRIGGER.replace("channels: [email]", "channels: [email, sms]"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:13:23 steps[1].channels[1]: template 'welcome' "
                        "has no sms content (it has: email)")


def test_missing_variable_points_at_vars(tmp_path):
    setup(tmp_path, TRIGGER.replace("cart_total: cart.total", "total: cart.total"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:10:5 steps[0].vars: template 'cart_reminder' "
                        "needs cart_total (add under vars, e.g. cart_total: cart.total)")


def test_missing_vars_block_points_at_the_template(tmp_path):
    setup(tmp_path, TRIGGER.replace("    vars: {items: cart.items, cart_total: cart.total}\n", ""))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:8:15 steps[0].vars: template 'cart_reminder' "
                        "needs items, cart_total (add under vars, e.g. items: cart.items)")


VARIANTS = """\
variants:
  - {id: a, weight: 50}
  - id: b
    weight: 50
    templates: {cart_reminder: welcome}
"""


def test_variant_template_must_exist_and_fit_the_step(tmp_path):
    setup(tmp_path, TRIGGER + VARIANTS.replace("cart_reminder: welcome", "cart_reminder: welcom"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:18:32 variants[1].templates.cart_reminder: unknown "
                        "template 'welcom' (not in templates.yaml); did you mean 'welcome'?")
    setup(tmp_path, TRIGGER + VARIANTS)  # welcome: email only, and no items/cart_total vars
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:18:32 variants[1].templates.cart_reminder: template "
                        "'welcome' has no push content, which steps[0].channels need "
                        "(it has: email)")


def test_variant_must_replace_a_template_a_step_uses(tmp_path):
    setup(tmp_path, TRIGGER + VARIANTS.replace("cart_reminder: welcome", "nope: welcome"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:18:17 variants[1].templates.nope: no step uses "
                        "template 'nope' (the steps use: cart_reminder, welcome)")


def test_step_vars_never_carry_contact_data(tmp_path):
    setup(tmp_path, TRIGGER + "    vars: {to: event.props.email}\n")
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:14:16 steps[1].vars.to: 'event.props.email' looks "
                        "like contact data: sends never carry raw e-mail addresses or phone "
                        "numbers (gateways resolve them from the customer id)")


def test_step_due_at_expiry_is_unreachable_and_names_the_steps_after_it(tmp_path):
    text = TRIGGER.replace("expire_after: 2d", "expire_after: 25h") + (
        "  - delay: 2d\n    template: welcome\n    channels: [email]\n")
    setup(tmp_path, text)
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:11:12 steps[1].delay: unreachable: due 25h after "
                        "the start (wait + delays), not before expire_after 25h, so it never "
                        "sends; nor will steps[2] after it")


def test_first_step_unreachable_when_the_wait_outlasts_expiry(tmp_path):
    setup(tmp_path, TRIGGER.replace("expire_after: 2d", "expire_after: 30m"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/cart.yaml:8:5 steps[0]: unreachable: due 1h after the start "
                        "(wait + delays), not before expire_after 30m, so it never sends; "
                        "nor will steps[1] after it")


def test_templates_yaml_errors_are_located(tmp_path):
    bad = TEMPLATES.replace("channels: [email]\n", "channels: [email, fax]\n    body: hi\n")
    bad = bad.replace("vars: [items, cart_total]", "vars: [items, email_address]")
    setup(tmp_path, templates=bad)
    msgs = issues(tmp_path)
    assert any(m.endswith("templates.yaml:4:19 templates.cart_reminder.vars[1]: no raw "
                          "contact data in templates: 'email_address' (gateways resolve "
                          "addresses from the customer id)") for m in msgs), msgs
    assert any(m.endswith("templates.yaml:6:23 templates.welcome.channels[1]: Input should be "
                          "'push', 'email' or 'sms'") for m in msgs), msgs
    assert any(m.endswith("templates.yaml:7:5 templates.welcome.body: unknown key (check the "
                          "spelling; see `cdp-triggers schema`)") for m in msgs), msgs
    # an invalid registry is reported once, not again as "unknown template" on every step
    assert not any("unknown template" in m for m in msgs)


def test_templates_yaml_syntax_error_is_located(tmp_path):
    setup(tmp_path, templates=TEMPLATES.replace("channels: [email]", "channels: [email"))
    [msg] = issues(tmp_path)
    assert "templates.yaml:7:1 YAML syntax" in msg


def test_templates_yaml_is_versioned_and_optional(tmp_path):
    a = load_config(setup(tmp_path)).version
    (tmp_path / "templates.yaml").write_text(TEMPLATES.replace("[email]", "[email, sms]"))
    assert load_config(tmp_path).version != a
    (tmp_path / "templates.yaml").unlink()
    cfg = load_config(setup(tmp_path, TRIGGER.replace("welcome", "anything"), templates=None))
    assert cfg.templates == {} and not any(f.endswith("templates.yaml") for f in cfg.files)


def test_validate_cli_prints_check_issues_and_exits_2(tmp_path, capsys):
    setup(tmp_path, TRIGGER.replace("channels: [email]", "channels: [sms]"))
    with pytest.raises(SystemExit) as e:
        main(["--config-dir", str(tmp_path), "validate"])
    assert e.value.code == 2
    assert "steps[1].channels[0]: template 'welcome' has no sms content" in capsys.readouterr().err


def test_schema_command_writes_editor_schemas(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# yaml-language-server: $schema=../schema/trigger.schema.json" in out
    files = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(files) == {"trigger.schema.json", "policy.schema.json", "templates.schema.json"}
    trigger = files["trigger.schema.json"]
    assert {"id", "start", "steps"} <= set(trigger["required"])
    assert trigger["additionalProperties"] is False
    window = trigger["properties"]["attribution_window"]
    assert window["default"] == "3d"  # durations as marketers write them, not ms
    assert window["type"] == "string" and "anyOf" not in window  # no bare numbers
    assert re.match(window["pattern"], "30m") and not re.match(window["pattern"], "3 hours")
    channels = files["templates.schema.json"]["$defs"]["Template"]["properties"]["channels"]
    assert channels["items"]["enum"] == ["push", "email", "sms"]


def test_committed_schemas_match_the_models():
    for name, schema in json_schemas().items():
        committed = json.loads((DEFAULT_CONFIG_DIR / "schema" / name).read_text())
        assert committed == schema, f"config/schema/{name} is stale: run `cdp-triggers schema`"
