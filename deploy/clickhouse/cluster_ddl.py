"""Print the schema for a ClickHouse *cluster*: the statements of
:func:`sinks.clickhouse_schema.ddl_statements` rewritten for replicated, sharded tables.

Every raw table ``raw_x`` becomes

- ``raw_x_local`` ``ON CLUSTER``: ``ReplicatedReplacingMergeTree`` (same columns, version,
  partitioning and sorting key) on every shard's replicas;
- ``raw_x`` ``ON CLUSTER``: a ``Distributed`` table over them, sharded by
  ``cityHash64(<id>)``, the record id that ends the sorting key, so a re-written row lands on
  the shard of its twin and ``FINAL`` (run per shard) still leaves one logical row.

The app keeps writing and reading ``raw_x`` and the views by their usual names; views and
column additions are created ``ON CLUSTER``. Apply once, before the first run (the app's
own ``CREATE ... IF NOT EXISTS`` then finds everything in place)::

    python deploy/clickhouse/cluster_ddl.py --cluster cdp --database cdp > cluster.sql
    clickhouse-client --multiquery < cluster.sql
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sinks.clickhouse_schema import ddl_statements

_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (?P<db>\w+)\.(?P<table>\w+) (?P<rest>\(.*)$",
                    re.DOTALL)
_ENGINE = re.compile(r"ENGINE = ReplacingMergeTree(?:\((?P<version>[^)]*)\))?")
_COLUMN_OPS = ("ADD COLUMN", "DROP COLUMN", "MODIFY COLUMN", "RENAME COLUMN", "COMMENT COLUMN")
_ORDER = re.compile(r"ORDER BY \(?(?P<keys>[^)\n]+)\)?")


def cluster_statements(database: str, cluster: str,
                       zk_path: str = "/clickhouse/tables/{shard}/{database}/{table}",
                       replica: str = "{replica}") -> list[str]:
    """The cluster variant of every schema statement, in order."""
    on = f" ON CLUSTER '{cluster}'"
    out: list[str] = []
    for stmt in ddl_statements(database):
        m = _TABLE.match(stmt)
        if m:
            db, table, rest = m["db"], m["table"], m["rest"]
            engine = _ENGINE.search(rest)
            order = _ORDER.search(rest)
            if engine is None or order is None:
                raise ValueError(f"unexpected table statement for {table}:\n{stmt}")
            path = zk_path.format(shard="{shard}", database=db, table=table)
            version = f", {engine['version']}" if engine["version"] else ""  # None or ""
            local = rest.replace(engine.group(0), f"ENGINE = ReplicatedReplacingMergeTree("
                                 f"'{path}', '{replica}'{version})")
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{table}_local{on} {local}")
            key = order["keys"].split(",")[-1].strip()
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{table}{on} AS {db}.{table}_local\n"
                       f"ENGINE = Distributed('{cluster}', {db}, {table}_local, "
                       f"cityHash64({key}))")
        elif stmt.startswith("ALTER TABLE "):  # storage on the local tables; columns on both
            head, tail = stmt.removeprefix("ALTER TABLE ").split(" ", 1)
            out.append(f"ALTER TABLE {head}_local{on} {tail}")
            if any(op in tail for op in _COLUMN_OPS):
                out.append(f"ALTER TABLE {head}{on} {tail}")
        elif stmt.startswith("CREATE DATABASE IF NOT EXISTS "):
            out.append(stmt + on)
        elif stmt.startswith("CREATE OR REPLACE VIEW "):
            name, body = stmt.removeprefix("CREATE OR REPLACE VIEW ").split(" AS", 1)
            out.append(f"CREATE OR REPLACE VIEW {name}{on} AS{body}")
        elif stmt.startswith("INSERT INTO "):  # bookkeeping rows: once, through Distributed
            out.append(stmt)
        else:
            raise ValueError(f"no cluster variant for:\n{stmt}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", required=True, help="cluster name in remote_servers")
    ap.add_argument("--database", default="cdp")
    a = ap.parse_args(argv)
    for stmt in cluster_statements(a.database, a.cluster):
        print(f"{stmt};\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
