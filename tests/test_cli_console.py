"""The console as users meet it: every command's --help, `sql --format`, and one-line errors
(exit 2, no traceback) for a missing, busy or wrong database and bad SQL.

`sql` runs in subprocesses, as users run it: chdb opens one directory per process and the
test session already holds its own."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from cdp_triggers.cli import main

ROOT = Path(__file__).resolve().parents[1]
DB = "console"

COMMANDS = [[], ["demo"], ["run"], ["replay"], ["validate"], ["preview"], ["explain"],
            ["schema"], ["sql"], ["gateway"], ["webhooks"], ["send-test"], ["profiles"],
            ["profiles", "import"], ["profiles", "consume"], ["gateway-sim"], ["generate"]]

# id, name, amount, note (Nullable), tags: separators, quotes, a tab and a newline
ROWS = [(1, "plain", 1.5, None, []),  # 20.0 prints as 20, as ClickHouse prints it
        (2, "comma, and \"quotes\"", 20.0, "tab\there", ["a", "b"]),
        (3, "two\nlines", -3.25, "x", ["c"])]

MAKE_DB = """
import sys, json
from sinks.clickhouse import ChdbBackend, ensure_schema
b = ChdbBackend(sys.argv[1])
ensure_schema(b, sys.argv[2])
b.command(f"CREATE TABLE {sys.argv[2]}.t (id UInt32, name String, amount Float64, "
          "note Nullable(String), tags Array(String)) ENGINE = MergeTree ORDER BY id")
b.insert_json_rows(f"{sys.argv[2]}.t", [
    dict(zip(["id", "name", "amount", "note", "tags"], r)) for r in json.loads(sys.argv[3])])
b.close()
"""

HOLD = """
import sys, time
from chdb.session import Session
s = Session(sys.argv[1])
s.query("SELECT 1")
print("held", flush=True)
time.sleep(60)
"""


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    e.update(CDP_CLICKHOUSE_DATABASE=DB, PYTHONPATH=str(ROOT), COLUMNS="80")
    return e


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_triggers.cli", *args], env=env(),
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and r.stdout == "", r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cdp-triggers ")
    return lines[0]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """An embedded database with table ``t`` (and the schema's tables), made in a
    subprocess."""
    path = tmp_path_factory.mktemp("console") / "clickhouse"
    subprocess.run([sys.executable, "-c", MAKE_DB, str(path), DB, orjson.dumps(ROWS).decode()],
                   env=env(), cwd=ROOT,
                   check=True, timeout=120)
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cdp-triggers")
def test_every_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: cdp-triggers" in out and "\x1b[" not in out
    if command == ["generate"]:  # its real options, not a bare "args"
        for option in ("--customers", "--days", "--seed", "--start-ms", "--bad-rate",
                       "--dup-rate", "--out"):
            assert option in out
    if command == ["sql"]:
        assert "table|csv|json|tsv" in out


def test_generate_writes_what_the_generator_makes(tmp_path):
    from cdp_triggers.synthetic import SyntheticConfig, write_jsonl

    out = tmp_path / "e.jsonl"
    r = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "generate", "--customers",
                        "40", "--days", "0.5", "--seed", "3", "--out", str(out)], env=env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    write_jsonl(tmp_path / "ref.jsonl", SyntheticConfig(customers=40, days=0.5, seed=3))
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert "good=" in r.stderr and "\x1b[" not in r.stderr


def test_usage_error_exits_2(capsys):
    assert main(["sql", "SELECT 1", "--format", "xml"]) == 2
    assert "xml" in capsys.readouterr().err


QUERY = "SELECT id, name, amount, note, tags FROM t ORDER BY id"


def test_sql_csv(db):
    r = cli("sql", QUERY, "--format", "csv", "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0, r.stderr
    got = list(csv.reader(io.StringIO(r.stdout)))
    assert got[0] == ["id", "name", "amount", "note", "tags"]
    assert got[1:] == [[str(i), n, f"{a:g}", "" if x is None else x, orjson.dumps(t).decode()]
                       for i, n, a, x, t in ROWS]
    # ClickHouse's own FORMAT clause (it used to raise): CSV has no header line
    r = cli("sql", QUERY + " FORMAT CSV", "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0, r.stderr
    assert list(csv.reader(io.StringIO(r.stdout))) == got[1:]


def test_sql_json(db):
    r = cli("sql", QUERY, "-f", "json", "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0, r.stderr
    assert [orjson.loads(x) for x in r.stdout.splitlines()] == [
        {"id": i, "name": n, "amount": a, "note": x, "tags": t} for i, n, a, x, t in ROWS]


def test_sql_tsv(db):
    r = cli("sql", QUERY, "--format", "tsv", "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "id\tname\tamount\tnote\ttags"
    assert lines[1] == '1\tplain\t1.5\t\\N\t[]'
    assert lines[2] == '2\tcomma, and "quotes"\t20\ttab\\there\t["a","b"]'
    assert lines[3] == '3\ttwo\\nlines\t-3.25\tx\t["c"]'
    assert len(lines) == 4


def test_sql_table_is_plain_text_off_a_terminal(db):
    r = cli("sql", "SELECT id, amount, name FROM t WHERE id < 3 ORDER BY id",
            "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    head, rule, *rows = r.stdout.splitlines()
    assert head.split() == ["id", "amount", "name"] and set(rule) == {"─"}
    assert [x.split(None, 2) for x in rows] == [["1", "1.5", "plain"],
                                                ["2", "20", 'comma, and "quotes"']]
    assert r.stderr.strip() == "(2 rows)"


def test_sql_without_a_database_says_where_and_creates_nothing(tmp_path):
    r = cli("sql", "SELECT count() FROM sends", cwd=tmp_path)  # default chdb://data/clickhouse
    line = one_line_error(r)
    assert str(tmp_path / "data" / "clickhouse") in line and "cdp-triggers demo" in line
    assert not (tmp_path / "data").exists()
    line = one_line_error(cli("sql", "SELECT 1", "--clickhouse-url",
                              f"chdb://{tmp_path}/nowhere"))
    assert f"{tmp_path}/nowhere" in line and "--clickhouse-url" in line
    assert not (tmp_path / "nowhere").exists()


def test_sql_on_a_directory_without_the_database(db):
    r = subprocess.run([sys.executable, "-m", "cdp_triggers.cli", "sql", "SELECT 1",
                        "--clickhouse-url", f"chdb://{db}"], env={**env(),
                       "CDP_CLICKHOUSE_DATABASE": "elsewhere"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert "no database 'elsewhere'" in one_line_error(r)


def test_sql_bad_sql_and_unknown_table(db):
    line = one_line_error(cli("sql", "SELEC 1", "--clickhouse-url", f"chdb://{db}"))
    assert "Syntax error" in line and "SYNTAX_ERROR" in line
    line = one_line_error(cli("sql", "SELECT * FROM nope", "--clickhouse-url", f"chdb://{db}"))
    assert "nope" in line and "UNKNOWN_TABLE" in line and f"tables in {DB}:" in line
    assert "sends" in line
    line = one_line_error(cli("sql", "SELECT 1 FORMAT Parquet", "--clickhouse-url",
                              f"chdb://{db}"))
    assert "--format" in line


def test_sql_while_another_process_holds_the_directory(db):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], env=env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(cli("sql", "SELECT count() FROM t", "--clickhouse-url",
                                  f"chdb://{db}"))
        assert str(db) in line and "in use" in line and "server" in line
        line = one_line_error(cli("explain", "--customer", "c1", "--clickhouse-url",
                                  f"chdb://{db}"))
        assert "in use" in line
    finally:
        holder.kill()
        holder.wait()
    r = cli("sql", "SELECT count() FROM t", "--clickhouse-url", f"chdb://{db}")
    assert r.returncode == 0 and r.stdout.split()[-1] == "3", r.stderr


def test_rfm_boundaries_from_the_demo_orders_written_to_a_config(tmp_path):
    """`rfm-boundaries --write` scores the stored orders (quintiles) into the config's
    rfm.yaml, which then loads; as of a fixed time (the clock is an input)."""
    import shutil

    from config.loader import DEFAULT_CONFIG_DIR, load_config

    url = f"chdb://{tmp_path}/ch"
    r = cli("demo", "--customers", "300", "--days", "3", "--no-redis", "--clickhouse-url", url)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, cfg, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    r = cli("--config-dir", str(cfg), "rfm-boundaries", "--write", "--now-ms",
            "1793923200000", "--clickhouse-url", url)
    assert r.returncode == 0, r.stderr[-2000:]
    rfm = load_config(cfg).rfm
    assert rfm.recency_days != load_config(DEFAULT_CONFIG_DIR).rfm.recency_days
    assert rfm.recency_days == sorted(rfm.recency_days) and len(rfm.monetary) == 4
    assert "written:" in r.stdout
