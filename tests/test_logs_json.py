"""Process logging: JSON lines (a setting), redacted, and the start-up line with the
effective settings, secrets masked."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from cdp_triggers.logs import (
    MASK,
    StateLog,
    effective_settings,
    log_effective_settings,
    mask_value,
    setup_logging,
)
from cdp_triggers.settings import Settings


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[str]:
    return [x for x in buf.getvalue().splitlines() if x]


def test_json_lines_carry_ts_level_logger_message_redacted(restore_root) -> None:
    buf = io.StringIO()
    setup_logging(logging.INFO, json=True, stream=buf)
    log = logging.getLogger("cdp.test")
    log.info("connected to %s", "redis://:hunter2@r:6379/0")
    try:
        raise ConnectionError("http://u:pw@ch:8123/?password=pw refused")
    except ConnectionError:
        log.exception("insert failed")
    log.debug("not at INFO")
    first, second = (orjson.loads(x) for x in lines(buf))
    assert set(first) == {"ts", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "cdp.test"
    assert first["message"] == "connected to redis://:***@r:6379/0"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "ERROR" and second["message"] == "insert failed"
    assert "ConnectionError" in second["exception"] and "Traceback" in second["exception"]
    assert "pw" not in second["exception"].replace("password", "")
    assert "hunter2" not in buf.getvalue()


def test_state_changes_are_one_json_line_each(restore_root) -> None:
    buf = io.StringIO()
    setup_logging(logging.INFO, json=True, stream=buf)
    state = StateLog(logging.getLogger("cdp.sink"), "ClickHouse http://d:secret@ch:8123")
    for _ in range(50):
        state.down("refused")
    state.up()
    got = [orjson.loads(x) for x in lines(buf)]
    assert [g["level"] for g in got] == ["WARNING", "WARNING"]
    assert "unavailable" in got[0]["message"] and "back after" in got[1]["message"]
    assert "secret" not in buf.getvalue()


def test_text_mode_keeps_the_cli_format(restore_root) -> None:
    buf = io.StringIO()
    setup_logging(logging.WARNING, json=False, stream=buf)
    logging.getLogger("cdp.t").warning("down: %s", "redis://:pw@h/0")
    logging.getLogger("cdp.t").info("hidden")
    assert lines(buf) == ["WARNING cdp.t: down: redis://:***@h/0"]


def secret_settings() -> Settings:
    return Settings(
        redis_url="rediss://default:r3dis@redis:6380/0",
        clickhouse_url="http://cdp:ch-pass@clickhouse:8123/?password=ch-pass",
        kafka_brokers="k1:9092,k2:9092",
        provider_options={
            "unisender_go": {"api_key": "ug-key", "base_url": "https://go1.unisender.ru",
                             "from_email": "shop@example.com"},
            "twilio": {"account_sid": "AC1", "auth_token": "tw-token", "from_number": ""},
            "fcm": {"access_token": "fcm-tok", "webhook_secret": "whs", "project_id": "p"},
        },
        recovery_dir=Path("/data/recovery"),
    )


SECRETS = ("r3dis", "ch-pass", "ug-key", "tw-token", "fcm-tok", "whs")


def test_effective_settings_mask_every_secret() -> None:
    masked = effective_settings(secret_settings())
    text = orjson.dumps(masked).decode()
    for secret in SECRETS:
        assert secret not in text, secret
    assert masked["redis_url"] == "rediss://default:***@redis:6380/0"
    assert masked["clickhouse_url"] == "http://cdp:***@clickhouse:8123/?password=***"
    opts = masked["provider_options"]
    assert opts["unisender_go"] == {"api_key": MASK, "base_url": "https://go1.unisender.ru",
                                    "from_email": "shop@example.com"}
    assert opts["twilio"] == {"account_sid": "AC1", "auth_token": MASK, "from_number": ""}
    assert opts["fcm"]["access_token"] == opts["fcm"]["webhook_secret"] == MASK
    # everything else as set: the line says what the process really runs with
    assert masked["kafka_brokers"] == "k1:9092,k2:9092"
    assert masked["recovery_dir"] == "/data/recovery"
    assert masked["redis_key_prefix"] == "cdp:profile:"  # "key" alone is no secret
    assert masked["log_json"] is False and masked["metrics_port"] is None
    assert set(masked) == set(Settings.model_fields)


@pytest.mark.parametrize(("key", "value", "out"), [
    ("password", "x", MASK), ("API_KEY", "x", MASK), ("apikey", "x", MASK),
    ("token", "", ""), ("secret", None, None), ("url", "http://a:b@h", "http://a:***@h"),
    ("headers", {"Authorization": "Bearer t"}, {"Authorization": MASK}),
    ("workers", 4, 4),
])
def test_mask_value(key: str, value: object, out: object) -> None:
    assert mask_value(key, value) == out


def test_start_up_line_in_json_and_text(restore_root) -> None:
    for json in (True, False):
        buf = io.StringIO()
        setup_logging(logging.WARNING, json=json, stream=buf)
        log_effective_settings(logging.getLogger("cdp_triggers.cli"), secret_settings(),
                               "run", process_id=1, workers=2)
        [line] = lines(buf)
        for secret in SECRETS:
            assert secret not in line, (json, secret)
        if json:
            obj = orjson.loads(line)
            assert obj["message"] == "run: effective settings"
            assert obj["process_id"] == 1 and obj["workers"] == 2
            assert obj["settings"]["provider_options"]["twilio"]["auth_token"] == MASK
            assert obj["settings"]["clock"] == "live"
        else:
            assert line.startswith("WARNING cdp_triggers.cli: run: effective settings {")
            assert orjson.loads(line.split(" ", 5)[5])["settings"]["sink_partitions"] == 2
