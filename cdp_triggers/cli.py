"""``cdp-triggers``: demo, run, replay, preview, validate, schema, sql, generate."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdp_triggers.logs import mask_url
from cdp_triggers.settings import Settings

if TYPE_CHECKING:
    from flows.preview import Diff, Summary


def _config(settings: Settings):
    from config.loader import ConfigError, load_config

    try:
        return load_config(settings.config_dir)
    except ConfigError as e:
        print(f"config errors ({len(e.issues)}):", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


def print_table(columns: list[str], rows: list[tuple], out=None) -> None:
    out = out or sys.stdout
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
    return v.removeprefix("+").replace(".", "", 1).replace("-", "", 1).isdigit()


def cmd_demo(a: argparse.Namespace, s: Settings) -> int:
    from cdp_triggers.synthetic import SyntheticConfig
    from flows.demo import run_demo
    from flows.summary import demo_summary
    from sinks.clickhouse import open_backend

    config = _config(s)
    if a.clickhouse_url:
        s = s.model_copy(update={"clickhouse_url": a.clickhouse_url})
    url = s.clickhouse_url
    backend = open_backend(url)
    if not a.keep:
        backend.command(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
    syn = SyntheticConfig(customers=a.customers, days=a.days, seed=a.seed)
    print(f"cdp-triggers demo: {syn.customers:,} customers × {syn.days:g} days of synthetic "
          f"retail traffic (seed {syn.seed}) → engine (replay clock) → ClickHouse at "
          f"{mask_url(url)}")
    print(f"config {config.version}: triggers {', '.join(t.id for t in config.triggers)}")
    result = run_demo(config, s, syn, use_redis=not a.no_redis)
    ok = demo_summary(backend, s.clickhouse_database, result)
    print(f'\nexplore: cdp-triggers sql "SELECT count() FROM sends"'
          f"  (database {s.clickhouse_database})")
    return 0 if ok else 1


def cmd_run(a: argparse.Namespace, s: Settings) -> int:
    from bytewax._bytewax import cli_main

    from flows.app import RunError, build_run, prepare_recovery

    _config(s)
    try:
        recovery = prepare_recovery(s)
        flow = build_run(s, "kafka").flow
    except RunError as e:
        print(f"cdp-triggers run: {e}", file=sys.stderr)
        return 2
    cli_main(flow, workers_per_process=a.workers, process_id=a.process_id,
             addresses=a.addresses.split(";") if a.addresses else None,
             epoch_interval=timedelta(seconds=s.epoch_seconds), recovery_config=recovery)
    return 0


def cmd_replay(a: argparse.Namespace, s: Settings) -> int:
    from bytewax.testing import run_main

    from flows.app import build_run
    from flows.sources import latest_event_ts

    config = _config(s)
    horizon = a.horizon_ms
    if horizon is None:  # default: the latest valid event time in the files
        horizon = latest_event_ts(a.files)[0]
    if a.clickhouse_url:
        s = s.model_copy(update={"clickhouse_url": a.clickhouse_url})
    s = s.model_copy(update={"clock": "replay", "horizon_ms": horizon, "recovery_dir": None})
    run = build_run(s, "files", files=a.files, config=config, profiles="empty",
                    outputs="clickhouse")
    for note in run.notes:
        print(note, file=sys.stderr if run.profiles_from == "none" else sys.stdout)
    run_main(run.flow)
    print(f"replayed {len(a.files)} file(s) up to horizon {horizon} into "
          f"{mask_url(s.clickhouse_url)}")
    return 0


def cmd_validate(a: argparse.Namespace, s: Settings) -> int:
    config = _config(s)
    for f in config.files:
        print(f"ok  {f}")
    print(f"{len(config.triggers)} trigger(s) valid; config version {config.version}")
    return 0


def cmd_preview(a: argparse.Namespace, s: Settings) -> int:
    from cdp_triggers.clock import to_datetime
    from config.loader import _display
    from flows.preview import diff, run_preview, summarize
    from flows.sources import latest_event_ts

    base = _config(s.model_copy(update={"config_dir": a.config or s.config_dir}))
    other = _config(s.model_copy(update={"config_dir": a.against})) if a.against else None
    missing = [p for p in a.events if not Path(p).is_file()]
    if missing:
        print(f"no such events file: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    latest, valid, bad = latest_event_ts(a.events)
    horizon = a.horizon_ms if a.horizon_ms is not None else latest
    names = ", ".join(Path(p).name for p in a.events)
    print(f"preview on {names}: {valid:,} events, {bad:,} rejected; replay clock up to "
          f"{to_datetime(horizon):%Y-%m-%d %H:%M:%S} UTC")
    fallback = "assume" if a.no_redis else "reachable"
    if a.no_redis:
        print("profiles: ASSUMED reachable (--no-redis): every customer has every contact "
              "and consent; consent_changed events still apply")
    summaries = {}
    for label, cfg, where in (("base", base, a.config or s.config_dir),
                              ("other", other, a.against)):
        if cfg is None:
            continue
        print(f"{label}: config {cfg.version} ({_display(where)}): "
              f"{len(cfg.triggers)} trigger(s)")
        records, notes = run_preview(cfg, a.events, s, horizon, fallback)
        for note in notes if label == "base" else ():
            print(note)
        summaries[label] = summarize(records, a.examples, cfg.triggers)
    print()
    if other is None:
        print_summary(summaries["base"])
    else:
        print_diff(diff(summaries["base"], summaries["other"]))
    return 0


def cmd_explain(a: argparse.Namespace, s: Settings) -> int:
    """One customer's timeline: on recorded events (why each trigger started or not), or
    from a run's ClickHouse rows."""
    if a.events:
        from flows.app import open_profiles
        from flows.explain import explain_events
        from flows.sources import latest_event_ts

        missing = [p for p in a.events if not Path(p).is_file()]
        if missing:
            print(f"no such events file: {', '.join(map(str, missing))}", file=sys.stderr)
            return 2
        config = _config(s)
        horizon = a.horizon_ms if a.horizon_ms is not None else latest_event_ts(a.events)[0]
        store, _origin, note = open_profiles(s, "assume" if a.no_redis else "reachable")
        if note:
            print(note)
        lines = explain_events(config, a.events, a.customer, store.get, horizon)
        source = f"recorded events ({', '.join(Path(p).name for p in a.events)})"
    else:
        from flows.explain import explain_clickhouse
        from sinks.clickhouse import open_backend

        backend = open_backend(a.clickhouse_url or s.clickhouse_url)
        try:
            lines = explain_clickhouse(backend, s.clickhouse_database, a.customer)
        finally:
            backend.close()
        source = (f"ClickHouse {mask_url(a.clickhouse_url or s.clickhouse_url)} database "
                  f"{s.clickhouse_database}")
    if a.trigger:  # its lines, and the events that did something to it
        lines = [x for i, x in enumerate(lines) if x.trigger_id == a.trigger or (
            x.what == "event" and any(y.trigger_id == a.trigger for y in lines[i + 1:i + 4]
                                      if y.ts == x.ts))]
    triggers = sorted({x.trigger_id for x in lines if x.trigger_id})
    print(f"customer {a.customer}: {len(lines)} lines from {source}; "
          f"triggers: {', '.join(triggers) or 'none'}")
    if not lines:
        return 1
    print_table(["time (UTC)", "trigger", "what", "detail"],
                [(x.at, x.trigger_id, x.what, x.text) for x in lines])
    return 0


def json_schemas() -> dict[str, dict]:
    """JSON Schemas of the config files, durations written as marketers write them."""
    from pydantic.json_schema import GenerateJsonSchema

    from cdp_triggers.durations import format_duration, parse_duration
    from config.schema import Policy, Trigger
    from config.templates import TemplateRegistry

    def is_duration(schema) -> bool:
        fn = schema.get("function", {}).get("function")
        return schema.get("type") == "function-before" and fn is parse_duration

    class Generator(GenerateJsonSchema):
        def function_before_schema(self, schema):
            if is_duration(schema):
                return {"type": "string", "pattern": r"^\s*\d+\s*(ms|s|m|h|d|w)\s*$",
                        "description": "a duration with its unit: 90s, 30m, 4h, 7d, 2w "
                                       "(a bare number is refused)"}
            return super().function_before_schema(schema)

        def default_schema(self, schema):
            js = super().default_schema(schema)
            if is_duration(schema["schema"]) and isinstance(js.get("default"), int):
                js["default"] = format_duration(js["default"]) if js["default"] else "0s"
            return js

    out = {}
    for name, model, title in (("trigger", Trigger, "config/triggers/*.yaml"),
                               ("policy", Policy, "config/policy.yaml"),
                               ("templates", TemplateRegistry, "config/templates.yaml")):
        schema = model.model_json_schema(schema_generator=Generator)
        out[f"{name}.schema.json"] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                      **schema, "title": f"cdp-triggers {title}"}
    return out


def cmd_schema(a: argparse.Namespace, s: Settings) -> int:
    import json

    from config.loader import _display

    out = a.out or s.config_dir / "schema"
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {_display(out / name)}")
    out = _display(out)
    print(f"""
editors (VS Code with the YAML extension by Red Hat; any yaml-language-server editor):
  first line of a trigger file in config/triggers/:
    # yaml-language-server: $schema=../schema/trigger.schema.json
  first line of config/policy.yaml and config/templates.yaml:
    # yaml-language-server: $schema=./schema/policy.schema.json
    # yaml-language-server: $schema=./schema/templates.schema.json
  or once for the workspace, in .vscode/settings.json:
    "yaml.schemas": {{"{out}/trigger.schema.json": "config/triggers/*.yaml",
                     "{out}/policy.schema.json": "config/policy.yaml",
                     "{out}/templates.schema.json": "config/templates.yaml"}}
the schema checks keys, types and durations as you type; `cdp-triggers validate` also checks
templates, channels, variables and unreachable steps across files.""")
    return 0


def cmd_sql(a: argparse.Namespace, s: Settings) -> int:
    from sinks.clickhouse import open_backend

    backend = open_backend(a.clickhouse_url or s.clickhouse_url)
    backend.command(f"CREATE DATABASE IF NOT EXISTS {s.clickhouse_database}")
    backend.command(f"USE {s.clickhouse_database}")
    cols, rows = backend.query(a.query)
    print_table(cols, rows)
    return 0


def cmd_gateway_sim(a: argparse.Namespace, s: Settings) -> int:
    from cdp_triggers.gateway_sim import serve

    print(f"gateway-sim: {s.sends_topic} → {a.outcomes_topic} on {s.kafka_brokers} "
          f"(seed {a.seed}, time scale {a.time_scale:g})", flush=True)
    made = serve(s.kafka_brokers, s.sends_topic, a.outcomes_topic, a.seed, a.time_scale,
                 a.idle_exit)
    print(f"gateway-sim: produced {made:,} receipts")
    return 0


def cmd_gateway(a: argparse.Namespace, s: Settings) -> int:
    from flows.delivery import DeliveryError, run_gateway

    print(f"gateway: {s.sends_topic} → providers {s.providers} → {s.outcomes_topic} "
          f"on {s.kafka_brokers}", flush=True)
    try:
        stats = run_gateway(s, idle_exit_s=a.idle_exit)
    except DeliveryError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    print(f"gateway: {stats.line()}")
    return 0


def cmd_webhooks(a: argparse.Namespace, s: Settings) -> int:
    from flows.delivery import DeliveryError, run_webhooks

    if a.port is not None:
        s = s.model_copy(update={"webhook_port": a.port})
    print(f"webhooks: listening on {s.webhook_host}:{s.webhook_port} → {s.outcomes_topic}",
          flush=True)
    try:
        run_webhooks(s)
    except DeliveryError as e:
        print(f"webhooks: {e}", file=sys.stderr)
        return 2
    return 0


def _parse_vars(pairs: list[str]) -> dict[str, Any]:
    import orjson

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--var {pair!r}: expected NAME=VALUE")
        try:
            out[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[name] = value
    return out


def cmd_send_test(a: argparse.Namespace, s: Settings) -> int:
    from flows.delivery import DeliveryError, send_test

    try:
        variables = _parse_vars(a.var)
        res = send_test(s, a.template, a.channel, a.customer, variables, dry_run=a.dry_run)
    except (DeliveryError, ValueError) as e:
        print(f"send-test: {e}", file=sys.stderr)
        return 2
    o = res.outcome
    m = o.message
    if m is not None:
        print(f"to: {a.channel} contact of {a.customer}"
              + (" (present)" if m.address else " (none)"))
        if m.provider_template_id:
            print(f"provider template: {m.provider_template_id}")
            print(f"substitutions: {dict(m.substitutions)}")
        if m.subject:
            print(f"subject: {m.subject}")
        if m.text:
            print(m.text)
    verdict = {"accepted": "sent", "duplicate": "already sent"}.get(o.result, o.result)
    print(f"send-test: {verdict} via {res.provider}" + (f" ({o.reason})" if o.reason else "")
          + (f", provider id {o.provider_message_id}" if o.provider_message_id else ""))
    return 0 if o.result == "accepted" else 1


def cmd_profiles_import(a: argparse.Namespace, s: Settings) -> int:
    from flows.profiles_in import import_file
    from state.profiles import RedisProfileStore

    path = Path(a.file)
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    if not store.ping():
        print(f"profiles import: Redis is not reachable at {mask_url(s.redis_url)}",
              file=sys.stderr)
        return 2
    print(f"profiles import: {path.name} → Redis at {mask_url(s.redis_url)}", flush=True)
    counts = _with_progress(path, lambda progress: import_file(
        path, store, chunk=a.chunk, progress=progress, every_s=0.2))
    print(f"profiles import: {counts.line()}")
    return 0


def _with_progress(path: Path, work: Any) -> Any:
    """Run ``work(progress)`` under a rich progress bar over the file's records (lines;
    a CSV's header is not one). On a terminal-less run the bar is not drawn."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with path.open("rb") as f:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    total -= path.suffix.lower() == ".csv"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[line]}"),
                  transient=False) as bar:
        task = bar.add_task(path.name, total=max(total, 1), line="")
        result = work(lambda c, n: bar.update(task, completed=n, line=c.line()))
        bar.update(task, completed=max(total, 1), line=result.line())
    return result


def cmd_profiles_consume(a: argparse.Namespace, s: Settings) -> int:
    from flows.profiles_in import consume
    from state.profiles import RedisProfileStore

    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    print(f"profiles consume: {s.profiles_topic} on {s.kafka_brokers} (group {a.group}) → "
          f"Redis at {mask_url(s.redis_url)}", flush=True)
    counts = consume(s.kafka_brokers, s.profiles_topic, store, group=a.group,
                     idle_exit_s=a.idle_exit)
    print(f"profiles consume: {counts.line()}")
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

    p = sub.add_parser("preview", help="what would this config do on recorded events? "
                                       "(replay in memory; --against: compare two configs)")
    p.add_argument("--config", type=Path, help="config set (default: --config-dir or config/)")
    p.add_argument("--events", nargs="+", required=True, help="JSONL file(s) of recorded events")
    p.add_argument("--against", type=Path, help="another config set: print a diff table")
    p.add_argument("--examples", type=int, default=3, help="example customers per trigger")
    p.add_argument("--horizon-ms", type=int, default=None,
                   help="fire timers due up to here (default: the latest event time)")
    p.add_argument("--no-redis", action="store_true",
                   help="assume every customer reachable instead of reading Redis profiles")
    p.set_defaults(fn=cmd_preview)

    p = sub.add_parser("explain", help="why did a customer (not) get a message? their "
                                       "timeline per trigger")
    p.add_argument("--customer", required=True)
    p.add_argument("--events", nargs="*", help="recorded JSONL events (default: ClickHouse)")
    p.add_argument("--trigger", help="only this trigger")
    p.add_argument("--horizon-ms", type=int, default=None)
    p.add_argument("--no-redis", action="store_true",
                   help="assume the customer reachable instead of reading Redis")
    p.add_argument("--clickhouse-url")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("schema", help="write JSON Schemas of the config files (for editors)")
    p.add_argument("--out", type=Path, help="directory (default: config/schema/)")
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("sql", help="query ClickHouse (embedded chdb by default)")
    p.add_argument("query")
    p.add_argument("--clickhouse-url")
    p.set_defaults(fn=cmd_sql)

    p = sub.add_parser("gateway-sim", help="simulate channel gateways: sends topic → outcomes")
    p.add_argument("--outcomes-topic", default="outcomes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="compress receipt delays (60: a minute passes in a second)")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="exit after this many seconds without sends (default: run forever)")
    p.set_defaults(fn=cmd_gateway_sim)

    p = sub.add_parser("gateway", help="send commands to the providers: sends → e-mail/SMS/"
                                       "push providers → receipts on outcomes")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="exit after this many seconds without sends (default: run forever)")
    p.set_defaults(fn=cmd_gateway)

    p = sub.add_parser("webhooks", help="receive the providers' delivery webhooks → outcomes")
    p.add_argument("--port", type=int, default=None, help="default: CDP_WEBHOOK_PORT")
    p.set_defaults(fn=cmd_webhooks)

    p = sub.add_parser("send-test", help="render one message and send it through the "
                                         "configured provider (or print it: --dry-run)")
    p.add_argument("--template", required=True)
    p.add_argument("--channel", required=True, choices=["email", "sms", "push"])
    p.add_argument("--customer", required=True, help="customer id (contacts read from Redis)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a template variable (VALUE may be JSON: items=[...])")
    p.add_argument("--dry-run", action="store_true", help="render and print, send nothing")
    p.set_defaults(fn=cmd_send_test)

    p = sub.add_parser("profiles", help="profiles from the CDP into Redis (import, consume)")
    psub = p.add_subparsers(dest="profiles_cmd", required=True)
    q = psub.add_parser("import", help="bulk load a JSONL or CSV file of profiles")
    q.add_argument("file", help="FILE.jsonl or FILE.csv")
    q.add_argument("--chunk", type=int, default=1000, help="writes per pipelined round trip")
    q.set_defaults(fn=cmd_profiles_import)
    q = psub.add_parser("consume", help="apply the profiles topic (CDP_PROFILES_TOPIC)")
    q.add_argument("--group", default="cdp-profiles", help="Kafka consumer group")
    q.add_argument("--idle-exit", type=float, default=None,
                   help="exit after this many seconds without records (default: run forever)")
    q.set_defaults(fn=cmd_profiles_consume)

    p = sub.add_parser("generate", help="write synthetic events as JSONL (see --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_generate)
    return ap


# ---- preview printing (flows.preview returns data, the CLI prints) -----------------------


def print_summary(s: Summary, out=None) -> None:
    """Per trigger: lifecycle counts; per step: sent, suppressed, skipped; examples."""
    out = out or sys.stdout
    life = ("started", "cancelled", "completed", "expired")
    print_table(["trigger", *life, "conversions", "revenue"],
                [(tid, *(t.lifecycle[a] for a in life), t.conversions, f"{t.revenue:.2f}")
                 for tid, t in s.triggers.items()], out)
    print(file=out)
    rows, reasons = [], []
    for tid, t in s.triggers.items():
        for i, st in sorted(t.steps.items()):
            sent = ", ".join(f"{ch} {n}" for ch, n in st.sent.most_common())
            rows.append((tid, i, st.template, sum(st.sent.values()), sent,
                         sum(st.suppressed.values()), st.skipped, st.cancelled))
            reasons += [(tid, i, reason, n) for reason, n in st.suppressed.most_common()]
    print_table(["trigger", "step", "template", "sent", "by channel", "suppressed",
                 "skipped (when)", "cancelled"], rows, out)
    if reasons:
        print(file=out)
        print_table(["trigger", "step", "suppressed because", "decisions"], reasons, out)
    print("\nexamples", file=out)
    for tid, t in s.triggers.items():
        if t.examples:
            print(f"  {tid}", file=out)
            width = max(len(c) for c in t.examples)
            for cid, story in t.examples.items():
                print(f"    {cid.ljust(width)}  {story}", file=out)


def print_diff(d: Diff, out=None) -> None:
    """The rows of every trigger with a changed count; unchanged triggers are named."""
    out = out or sys.stdout
    changed = {r.trigger for r in d.rows if r.delta}
    print_table(["trigger", "step", "metric", "base", "other", "delta"],
                [(r.trigger, r.step, r.metric, r.base, r.other,
                  f"{r.delta:+d}" if r.delta else "0") for r in d.rows if r.trigger in changed],
                out)
    same = sorted({r.trigger for r in d.rows} - changed)
    for label, ids in (("unchanged", same), ("only in base", d.only_base),
                       ("only in other", d.only_other)):
        if ids:
            print(f"{label}: {', '.join(ids)}", file=out)
    n = sum(1 for r in d.rows if r.delta)
    print(f"{n} of {len(d.rows)} counts differ", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a, extra = ap.parse_known_args(argv)
    if extra and a.cmd != "generate":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.cmd == "generate":  # its options belong to the generator (argparse stops at "--x")
        a.args = extra + a.args
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    s = Settings()
    if a.config_dir:
        s = s.model_copy(update={"config_dir": a.config_dir})
    return a.fn(a, s)


if __name__ == "__main__":
    raise SystemExit(main())
