"""``cdp-triggers``: demo, run, replay, validate, sql, generate."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from pathlib import Path

from cdp_triggers.settings import Settings


def _config(settings: Settings):
    from config.loader import ConfigError, load_config

    try:
        return load_config(settings.config_dir)
    except ConfigError as e:
        print(f"config errors ({len(e.issues)}):", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


def print_table(columns: list[str], rows: list[tuple], out=sys.stdout) -> None:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(r: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=False)
        )

    print(line(cells[0]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells[1:]:
        print(line(r), file=out)


def _numeric(v: str) -> bool:
    return v.replace(".", "", 1).replace("-", "", 1).isdigit()


def cmd_demo(a: argparse.Namespace, s: Settings) -> int:
    from cdp_triggers.synthetic import SyntheticConfig
    from flows.demo import run_demo
    from flows.summary import demo_summary
    from sinks.clickhouse import open_backend

    config = _config(s)
    url = a.clickhouse_url or s.clickhouse_url
    backend = open_backend(url)
    if not a.keep:
        backend.command(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
    syn = SyntheticConfig(customers=a.customers, days=a.days, seed=a.seed)
    print(f"cdp-triggers demo: {syn.customers:,} customers × {syn.days:g} days of synthetic "
          f"retail traffic (seed {syn.seed}) → engine (replay clock) → ClickHouse at {url}")
    print(f"config {config.version}: triggers {', '.join(t.id for t in config.triggers)}")
    result = run_demo(config, url, s.clickhouse_database, syn,
                      None if a.no_redis else s.redis_url)
    ok = demo_summary(backend, s.clickhouse_database, result)
    print(f'\nexplore: cdp-triggers sql "SELECT count() FROM sends"'
          f"  (database {s.clickhouse_database})")
    return 0 if ok else 1


def cmd_run(a: argparse.Namespace, s: Settings) -> int:
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig, init_db_dir

    from flows.live import build_live_flow

    _config(s)
    flow = build_live_flow(s)
    recovery = None
    if s.recovery_dir:
        if not any(s.recovery_dir.glob("part-*.sqlite3")):
            s.recovery_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(s.recovery_dir, s.recovery_partitions)
            print(f"recovery: initialised {s.recovery_partitions} partitions in {s.recovery_dir}")
        recovery = RecoveryConfig(s.recovery_dir)
    cli_main(flow, workers_per_process=a.workers, process_id=a.process_id,
             addresses=a.addresses.split(";") if a.addresses else None,
             epoch_interval=timedelta(seconds=s.epoch_seconds), recovery_config=recovery)
    return 0


def cmd_replay(a: argparse.Namespace, s: Settings) -> int:
    from bytewax.testing import run_main

    from cdp_triggers.events import parse_event
    from flows.pipeline import Outputs, build_flow
    from flows.sources import JsonlSource
    from operators.engine import Engine
    from operators.keyed import EngineRuntime
    from sinks.clickhouse import ensure_schema, open_backend
    from state.profiles import DictProfileStore, RedisProfileStore

    config = _config(s)
    horizon = a.horizon_ms
    if horizon is None:  # default: the latest valid event time in the files
        horizon = 0
        for path in a.files:
            with open(path, "rb") as f:
                for line in f:
                    e = parse_event(line)
                    if hasattr(e, "ts"):
                        horizon = max(horizon, e.ts)
    store = RedisProfileStore(s.redis_url)
    if not store.ping():
        print(f"profiles: Redis NOT reachable at {s.redis_url}: every message will be "
              "suppressed as no_profile", file=sys.stderr)
        store = DictProfileStore()
    url = a.clickhouse_url or s.clickhouse_url
    ensure_schema(open_backend(url), s.clickhouse_database)
    runtime = EngineRuntime(Engine(config), lambda: store.get, mode="replay", horizon_ms=horizon)
    flow = build_flow(JsonlSource(a.files), runtime,
                      Outputs(clickhouse=lambda: open_backend(url),
                              clickhouse_database=s.clickhouse_database))
    run_main(flow)
    print(f"replayed {len(a.files)} file(s) up to horizon {horizon} into {url}")
    return 0


def cmd_validate(a: argparse.Namespace, s: Settings) -> int:
    config = _config(s)
    for f in config.files:
        print(f"ok  {f}")
    print(f"{len(config.triggers)} trigger(s) valid; config version {config.version}")
    return 0


def cmd_sql(a: argparse.Namespace, s: Settings) -> int:
    from sinks.clickhouse import open_backend

    backend = open_backend(a.clickhouse_url or s.clickhouse_url)
    backend.command(f"CREATE DATABASE IF NOT EXISTS {s.clickhouse_database}")
    backend.command(f"USE {s.clickhouse_database}")
    cols, rows = backend.query(a.query)
    print_table(cols, rows)
    return 0


def cmd_generate(a: argparse.Namespace, s: Settings) -> int:
    from cdp_triggers.synthetic import main

    return main(a.args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cdp-triggers", description=__doc__)
    ap.add_argument("--config-dir", type=Path,
                    help="trigger configs (default: the packaged config/)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="embedded demo: generator → engine → chdb, no servers")
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--days", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clickhouse-url", help="default: CDP_CLICKHOUSE_URL or chdb://data/clickhouse")
    p.add_argument("--no-redis", action="store_true", help="do not try Redis for profiles")
    p.add_argument("--keep", action="store_true", help="keep the previous demo's rows")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("run", help="live flow: Kafka → engine → ClickHouse + sends topic")
    p.add_argument("-w", "--workers", type=int, default=1, help="workers in this process")
    p.add_argument("-i", "--process-id", type=int, default=None)
    p.add_argument("-a", "--addresses", default=None, help="host:port;host:port of all processes")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("replay", help="replay JSONL files through the engine (event-time clock)")
    p.add_argument("files", nargs="+")
    p.add_argument("--horizon-ms", type=int, default=None)
    p.add_argument("--clickhouse-url")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("validate", help="validate the trigger configs")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("sql", help="query ClickHouse (embedded chdb by default)")
    p.add_argument("query")
    p.add_argument("--clickhouse-url")
    p.set_defaults(fn=cmd_sql)

    p = sub.add_parser("generate", help="write synthetic events as JSONL (see --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_generate)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    s = Settings()
    if a.config_dir:
        s = s.model_copy(update={"config_dir": a.config_dir})
    return a.fn(a, s)


if __name__ == "__main__":
    raise SystemExit(main())
