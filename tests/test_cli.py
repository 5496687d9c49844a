"""The CLI as users run it: demo summary, JSONL replay, sql."""

from __future__ import annotations

import pytest

from cdp_triggers.cli import main
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail, write_jsonl
from state.profiles import RedisProfileStore


def test_demo_prints_a_balanced_summary_and_sql_sees_the_sends(chdb_url, capsys):
    assert main(["demo", "--customers", "400", "--days", "2", "--no-redis",
                 "--clickhouse-url", chdb_url]) == 0
    out = capsys.readouterr().out
    assert "counts balance: read" in out
    assert "profiles: Redis not asked (--no-redis)" in out
    sent = int(out.split("messages sent")[1].split()[0].replace(",", ""))
    assert sent > 0
    assert main(["sql", "SELECT count() AS n FROM sends", "--clickhouse-url", chdb_url]) == 0
    assert int(capsys.readouterr().out.split()[-1]) == sent


@pytest.mark.integration
def test_replay_a_jsonl_file(chdb_url, redis_server, tmp_path, monkeypatch, capsys):
    cfg = SyntheticConfig(customers=200, days=2, seed=9)
    RedisProfileStore(redis_server.url).put_many(SyntheticRetail(cfg).profiles())
    path = tmp_path / "events.jsonl"
    stats = write_jsonl(path, cfg)
    monkeypatch.setenv("CDP_REDIS_URL", redis_server.url)
    monkeypatch.setenv("CDP_CLICKHOUSE_DATABASE", "replay_cli")
    assert main(["replay", str(path), "--clickhouse-url", chdb_url]) == 0
    assert "replayed 1 file(s)" in capsys.readouterr().out
    sql = ("SELECT countIf(reason != 'duplicate_event_id') AS bad, "
           "countIf(reason = 'duplicate_event_id') AS dups FROM rejected_events")
    assert main(["sql", sql, "--clickhouse-url", chdb_url]) == 0
    bad, dups = capsys.readouterr().out.split()[-2:]
    assert (int(bad), int(dups)) == (stats.bad, stats.duplicates)
    # dead letters point back at the file line they came from
    assert main(["sql", "SELECT source FROM rejected_events WHERE reason = 'invalid_json' "
                 "LIMIT 1", "--clickhouse-url", chdb_url]) == 0
    assert "events.jsonl:" in capsys.readouterr().out


def test_replay_with_redis_down_says_so_without_the_password(chdb_url, tmp_path, monkeypatch,
                                                              capsys, caplog):
    from services import free_port

    path = tmp_path / "events.jsonl"
    write_jsonl(path, SyntheticConfig(customers=50, days=1, seed=3))
    monkeypatch.setenv("CDP_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("CDP_CLICKHOUSE_DATABASE", "replay_secret")
    assert main(["replay", str(path), "--clickhouse-url", chdb_url]) == 0
    said = capsys.readouterr()
    text = said.out + said.err + " ".join(r.getMessage() for r in caplog.records)
    assert "Redis NOT reachable at redis://:***@127.0.0.1" in text
    assert "hunter2" not in text
