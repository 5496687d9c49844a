"""The delivery commands as users run them (a subprocess, real redis-server, the providers'
local stand-ins): ``send-test`` dry run and real send, its refusals, and ``profiles import``
of a CSV file in a terminal-less run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from provider_stands import UnisenderStand

from flows.profiles_in import import_records
from state.profiles import RedisProfileStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "cli-ugo-key"
EMAIL = "olga.cli@example.com"


@pytest.fixture(scope="module")
def stand() -> Iterator[UnisenderStand]:
    with UnisenderStand(API_KEY) as u:
        yield u


@pytest.fixture
def env(stand: UnisenderStand, redis_server: Any) -> Iterator[dict[str, str]]:
    """The CLI's environment (a fresh key prefix per test) with two customers loaded."""
    stand.reset()
    run = uuid.uuid4().hex[:8]
    e = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    e.update({  # only e-mail is configured: SMS and push unconfigured must not stop it
        "CDP_REDIS_URL": redis_server.url,
        "CDP_REDIS_KEY_PREFIX": f"cli{run}:p:",
        "CDP_SEND_LEDGER_PREFIX": f"cli{run}:s:",
        "CDP_PROVIDER_OPTIONS__UNISENDER_GO__API_KEY": API_KEY,
        "CDP_PROVIDER_OPTIONS__UNISENDER_GO__BASE_URL": stand.url,
        "CDP_PROVIDER_OPTIONS__UNISENDER_GO__FROM_EMAIL": "shop@example.com",
    })
    store = RedisProfileStore(redis_server.url, e["CDP_REDIS_KEY_PREFIX"])
    import_records([{"customer_id": "olga", "email": EMAIL, "locale": "en"},
                    {"customer_id": "nomail", "phone": "+4915123456780"}], store)
    yield e
    assert stand.violations == [], stand.violations


def cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``cdp-triggers ARGS`` in a subprocess without a terminal (stdin closed)."""
    return subprocess.run([sys.executable, "-m", "cdp_triggers.cli", *args], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)


SEND = ("send-test", "--template", "order_status", "--channel", "email",
        "--var", "status=order_shipped", "--var", "order_id=O-9")


def test_send_test_dry_run_prints_the_message_without_the_address(env, stand, tmp_path):
    r = cli(env, *SEND, "--customer", "olga", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "to: email contact of olga (present)" in r.stdout
    assert "subject: Your order O-9 is on its way" in r.stdout
    assert "your order O-9 has shipped" in r.stdout
    assert "https://mercato.example/orders/O-9" in r.stdout
    assert EMAIL not in r.stdout + r.stderr
    assert stand.calls == 0


def test_send_test_sends_exactly_one_request(env, stand, tmp_path):
    r = cli(env, *SEND, "--customer", "olga", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "send-test: sent via unisender_go" in r.stdout
    assert EMAIL not in r.stdout + r.stderr
    [req] = stand.requests
    msg = req.json["message"]
    assert [x["email"] for x in msg["recipients"]] == [EMAIL]
    assert msg["subject"] == "Your order O-9 is on its way"
    assert msg["from_email"] == "shop@example.com"


def test_send_test_to_a_customer_without_email_fails_with_no_contact(env, stand, tmp_path):
    r = cli(env, *SEND, "--customer", "nomail", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no_contact" in r.stdout
    assert "Traceback" not in r.stderr
    assert stand.calls == 0


def test_send_test_with_an_unknown_template_says_so_in_one_line(env, stand, tmp_path):
    r = cli(env, "send-test", "--template", "no_such_template", "--channel", "email",
            "--customer", "olga", cwd=tmp_path)
    assert r.returncode == 2  # bad input, like any other
    assert "Traceback" not in r.stdout + r.stderr
    said = [line for line in (r.stdout + r.stderr).splitlines() if "no_such_template" in line]
    assert said, r.stdout + r.stderr
    assert stand.calls == 0


def test_a_missing_variable_is_named_and_nothing_sent(env, stand, tmp_path):
    r = cli(env, "send-test", "--template", "order_status", "--channel", "email",
            "--customer", "olga", "--var", "order_id=O-9", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "render_error" in r.stderr and "status" in r.stderr
    assert stand.calls == 0


def test_a_half_configured_sms_provider_does_not_stop_an_email_send_test(env, stand, tmp_path):
    e = {**env, "CDP_PROVIDER_OPTIONS__TWILIO__ACCOUNT_SID": "AC" + "1" * 32}  # no token
    r = cli(e, *SEND, "--customer", "olga", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stand.calls == 1


def test_send_test_with_a_malformed_var_exits_2(env, stand, tmp_path):
    r = cli(env, "send-test", "--template", "order_status", "--channel", "email",
            "--customer", "olga", "--var", "bad", cwd=tmp_path)
    assert r.returncode == 2
    assert "--var 'bad': expected NAME=VALUE" in r.stderr
    assert "Traceback" not in r.stderr
    assert stand.calls == 0


def test_profiles_import_of_a_csv_prints_the_counts(env, redis_server, tmp_path):
    path = tmp_path / "profiles.csv"
    path.write_text(
        "customer_id,email,phone,locale,consent:email:marketing\n"
        "p1,p1@example.com,+4915123456781,de,true\n"
        "p2,not-an-address@,,en,false\n"
        "p3,,+79161234567,ru,\n"
        ",orphan@example.com,,,\n", encoding="utf-8")
    r = cli(env, "profiles", "import", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "profiles import: profiles.csv → Redis at redis://127.0.0.1" in r.stdout
    [line] = [x for x in r.stdout.splitlines() if x.startswith("profiles import: loaded")]
    assert line.startswith("profiles import: loaded 3, invalid contact 1, stale 0, refused 1")
    assert "Traceback" not in r.stderr
    assert "\x1b[" not in r.stdout + r.stderr  # no terminal: no cursor or colour codes
    store = RedisProfileStore(redis_server.url, env["CDP_REDIS_KEY_PREFIX"])
    c1, c2, c3 = store.contacts_for([("p1", "email"), ("p2", "email"), ("p3", "sms")])
    assert (c1.address, c1.locale) == ("p1@example.com", "de")
    assert (c2.address, c2.reason) == ("", "contact_invalid")
    assert c3.address == "+79161234567"
