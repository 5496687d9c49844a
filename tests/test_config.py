"""Config loading: the shipped configs are valid; errors name file, line, column and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdp_triggers.cli import main
from config.loader import DEFAULT_CONFIG_DIR, load_config
from tests.engine_helpers import config_issues

GOOD = """\
id: abandoned_cart
kind: marketing
start:
  event: added_to_cart
wait:
  inactivity: 30m
  reset_on: [added_to_cart]
cancel_on:
  - event: order_placed
reentry:
  cooldown: 24h
steps:
  - template: abandoned_cart_reminder
    channels: [email]
"""


def write(tmp_path: Path, text: str, name: str = "abandoned_cart.yaml") -> Path:
    (tmp_path / "triggers").mkdir(exist_ok=True)
    (tmp_path / "triggers" / name).write_text(text)
    return tmp_path


issues = config_issues  # shared helper


def test_shipped_config_is_valid_and_versioned():
    cfg = load_config(DEFAULT_CONFIG_DIR)
    t = cfg.trigger("abandoned_cart")
    assert t is not None and t.wait.inactivity == 60 * 60_000 and t.reentry.cooldown == 86_400_000
    assert {x.id for x in cfg.triggers} >= {
        "abandoned_cart", "browse_abandonment", "welcome_series", "win_back", "order_status",
        "price_drop", "back_in_stock", "vip_welcome"}
    assert len(cfg.version) == 12 and cfg.version == load_config(DEFAULT_CONFIG_DIR).version


def test_version_changes_with_content(tmp_path):
    a = load_config(write(tmp_path, GOOD)).version
    b = load_config(write(tmp_path, GOOD.replace("30m", "45m"))).version
    assert a != b


def test_bad_duration_names_file_line_column_and_field(tmp_path):
    write(tmp_path, GOOD.replace("inactivity: 30m", "inactivity: 3 hours"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/abandoned_cart.yaml:6:15 wait.inactivity: "
                        "invalid duration '3 hours' (use e.g. 90s, 30m, 4h, 7d)")


def test_unknown_key_points_at_the_key(tmp_path):
    write(tmp_path, GOOD.replace("  - template:", "  - templte: x\n    template:"))
    [msg] = issues(tmp_path)
    assert "abandoned_cart.yaml:13:5 steps[0].templte: unknown key" in msg


def test_missing_field_and_bad_channel_are_both_reported(tmp_path):
    write(tmp_path,
          GOOD.replace("  event: added_to_cart", "  where: []").replace("[email]", "[fax]"))
    msgs = issues(tmp_path)
    assert any("abandoned_cart.yaml:3:1 start.event: required" in m for m in msgs)
    assert any(":14:16 steps[0].channels[0]: Input should be 'push', 'email' or 'sms'" in m
               for m in msgs)


def test_yaml_syntax_error_has_a_position(tmp_path):
    write(tmp_path, GOOD.replace("kind: marketing", "kind: [marketing"))
    [msg] = issues(tmp_path)
    assert "abandoned_cart.yaml:" in msg and "YAML syntax" in msg


def test_duplicate_ids_across_files(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, GOOD, "copy.yaml")
    [msg] = issues(tmp_path)
    assert "copy.yaml:1:5 id: duplicate trigger id 'abandoned_cart'" in msg


def test_cli_validate_exits_non_zero_with_the_errors(tmp_path, capsys):
    shutil.copy(DEFAULT_CONFIG_DIR / "policy.yaml", tmp_path / "policy.yaml")
    write(tmp_path, GOOD.replace("cooldown: 24h", "cooldown: soon"))
    with pytest.raises(SystemExit) as e:
        main(["--config-dir", str(tmp_path), "validate"])
    assert e.value.code == 2
    assert "reentry.cooldown: invalid duration 'soon'" in capsys.readouterr().err
    assert main(["validate"]) == 0


def test_a_bare_number_is_not_a_duration(tmp_path):
    write(tmp_path, GOOD.replace("cooldown: 24h", "cooldown: 14"))
    [msg] = issues(tmp_path)
    assert msg.endswith("triggers/abandoned_cart.yaml:11:13 reentry.cooldown: a bare number is "
                        "not a duration (it would be 14 milliseconds): write 14d, 14h or 14m "
                        "(or 14s, 14w, 14ms)")
    write(tmp_path, GOOD + "    cascade: {email: {wait: 0}}\n")
    [msg] = issues(tmp_path)
    assert "steps[0].cascade.email.wait: a bare number is not a duration" in msg
    (tmp_path / "policy.yaml").write_text("late_event_grace: 300\n")
    write(tmp_path, GOOD)
    [msg] = issues(tmp_path)
    assert msg.endswith("policy.yaml:1:19 late_event_grace: a bare number is not a duration "
                        "(it would be 300 milliseconds): write 300d, 300h or 300m "
                        "(or 300s, 300w, 300ms)")


def test_code_may_still_pass_milliseconds():
    from config.schema import Reentry

    assert Reentry(cooldown=14).cooldown == 14 and Reentry(cooldown="14m").cooldown == 840_000


def test_unknown_customer_metric_and_var_source_name_the_valid_ones(tmp_path):
    write(tmp_path, GOOD.replace("  event: added_to_cart", "  event: added_to_cart\n  where:\n"
                                 "    - {field: customer.order_count, op: gt, value: 0}")
          + "    vars: {total: cart.totl, n: customer.spent}\n")
    msgs = issues(tmp_path)
    assert any(m.endswith("abandoned_cart.yaml:6:15 start.where[0].field: unknown customer "
                          "metric 'order_count'; did you mean 'orders_count'? (valid: "
                          "orders_count, total_spent, last_order_at, days_since_last_order, "
                          "cart_items, cart_total, aov, first_order_at, days_since_first_order, "
                          "recency_days, frequency, monetary, rfm_recency, rfm_frequency, "
                          "rfm_monetary, rfm_score, rfm_segment, segments)") for m in msgs), msgs
    assert any(m.endswith("steps[0].vars.total: unknown var source 'cart.totl'; did you mean "
                          "'cart.total'? (valid: cart.items, cart.total, instance.key, "
                          "event.type, event.props.<path>, customer.<metric>, "
                          "customer.events.<event type>)") for m in msgs)
    assert any(m.endswith("steps[0].vars.n: unknown customer metric 'spent'; did you mean "
                          "'total_spent'? (valid: "
                          "orders_count, total_spent, last_order_at, days_since_last_order, "
                          "cart_items, cart_total, aov, first_order_at, days_since_first_order, "
                          "recency_days, frequency, monetary, rfm_recency, rfm_frequency, "
                          "rfm_monetary, rfm_score, rfm_segment, segments)") for m in msgs), msgs
    assert not any("pattern" in m or "^(" in m for m in msgs), msgs
