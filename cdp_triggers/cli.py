"""``cdp-triggers``: demo, run, replay, preview, explain, validate, schema, sql, generate, and
the delivery loop (gateway, webhooks, send-test, profiles)."""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TextIO
from urllib.parse import unquote, urlparse

import typer

from cdp_triggers.logs import mask_url, redact
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig

if TYPE_CHECKING:
    from rich.console import Console

    from flows.preview import Diff, Summary
    from sinks.clickhouse import ClickHouseBackend

app = typer.Typer(name="cdp-triggers", no_args_is_help=True, rich_markup_mode="markdown",
                  add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
profiles_app = typer.Typer(help="Profiles from the CDP into Redis (import, consume).",
                           rich_markup_mode="markdown",
                           no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")

# ---- output: rich tables, plain text when stdout is not a terminal --------------------


def console(file: TextIO | None = None) -> Console:
    """A rich console on ``file`` (stdout): colours on a terminal; elsewhere plain text, no
    control codes, and no wrapping (the width is unlimited)."""
    from rich.console import Console

    file = file or sys.stdout
    tty = file.isatty()
    return Console(file=file, force_terminal=tty, color_system="auto" if tty else None,
                   no_color=not tty, highlight=False, emoji=False, markup=False,
                   width=None if tty else 100_000, soft_wrap=not tty)


def _numeric(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return True
    s = str(v).replace(",", "").removesuffix("%")
    return s.removeprefix("+").replace(".", "", 1).replace("-", "", 1).isdigit()


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]],
                file: TextIO | None = None, title: str | None = None) -> None:
    """A rich table: header, a rule, one line per row; numeric columns right-aligned.
    Off a terminal: plain text, trailing spaces stripped, nothing wrapped."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    file = file or sys.stdout
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold",
                  title=title, title_justify="left")
    for i, name in enumerate(columns):
        col = [r[i] for r in cells if r[i] != ""]
        table.add_column(Text(str(name)), overflow="fold",
                         justify="right" if col and all(map(_numeric, col)) else "left")
    for r in cells:
        table.add_row(*map(Text, r))
    if file.isatty():
        console(file).print(table)
        return
    buf = io.StringIO()
    buf.isatty = lambda: False  # type: ignore[method-assign]
    console(buf).print(table)
    file.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))


def _err(command: str, message: str) -> int:
    """One line on stderr (credentials masked); the exit code of a user error."""
    print(f"cdp-triggers {command}: {redact(message)}", file=sys.stderr)
    return 2


# ---- settings and config -------------------------------------------------------------


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


def _config(settings: Settings):
    from config.loader import ConfigError, load_config

    try:
        return load_config(settings.config_dir)
    except ConfigError as e:
        print(f"config errors ({len(e.issues)}):", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        raise SystemExit(2) from None


@app.callback()
def _root(ctx: typer.Context,
          config_dir: Annotated[Path | None, typer.Option(
              "--config-dir", help="Trigger configs (default: CDP_CONFIG_DIR or the "
                                   "packaged config/).")] = None,
          verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                                help="Debug logging.")] = False) -> None:
    """Trigger and service communications engine of a retail CDP.

    Embedded demo and replays, the live flow, marketers' preview and explain, analysts'
    sql, and the delivery loop (gateway, webhooks, send-test, profiles)."""
    from cdp_triggers.logs import setup_logging

    s = Settings()
    setup_logging(logging.DEBUG if verbose else logging.WARNING, json=s.log_json)
    if config_dir:
        s = s.model_copy(update={"config_dir": config_dir})
    ctx.obj = s


# ---- ClickHouse for reading: an existing database, one-line errors --------------------


class DatabaseError(Exception):
    """A database the CLI cannot read, said in one line."""


_CH_MESSAGE = re.compile(r"Code: (\d+)\. DB::Exception: ([^\n]*)")


def server_message(exc: BaseException) -> str:
    """The first line of ClickHouse's own message (``Code: N. DB::Exception:`` dropped),
    else the exception's first line; stack traces and driver prefixes are left out."""
    text = str(exc)
    m = _CH_MESSAGE.search(text)
    if m:
        line = m.group(2).strip()
        line = re.sub(r"\s*Stack trace:.*$", "", line)
        line = re.sub(r"(Expected one of: (?:[^,]*, ){4})[^()]*", r"\1… ", line)  # 50 tokens
        return re.sub(r"\s*\(version [^)]*\)\s*$", "", line)
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line or type(exc).__name__


def chdb_dir(url: str) -> str | None:
    """The embedded database directory of a ``chdb://`` (or bare path) URL, else None."""
    u = urlparse(url)
    if u.scheme == "chdb":
        return unquote(u.netloc + u.path)
    if u.scheme in ("", "file"):
        return url.removeprefix("file://")
    return None


def _locked(path: str) -> bool:
    """True when a ClickHouse engine (another process) holds ``path``: its ``status`` file is
    flock-ed while an embedded or server engine runs on the directory."""
    try:
        fd = os.open(os.path.join(path, "status"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we got
    return False


@contextmanager
def _stderr_captured() -> Iterator[io.StringIO]:
    """Send file descriptor 2 to a buffer (chdb's engine prints its start-up errors there)."""
    out = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.write(tmp.read().decode(errors="replace"))


def open_existing(url: str, database: str, origin: str) -> ClickHouseBackend:
    """A backend on a database that already exists: never creates a chdb directory or the
    database. ``origin`` says where ``url`` came from (for the messages). Raises
    :class:`DatabaseError` with one line: missing directory or database, a directory held by
    another process, an unreachable server."""
    from sinks.clickhouse import open_backend

    path = chdb_dir(url)
    if path is not None:
        full = os.path.abspath(path)
        where = f"{full} ({origin} {mask_url(url)}, relative to the current directory)" \
            if not os.path.isabs(path) else f"{full} ({origin})"
        if not os.path.isdir(os.path.join(full, "metadata")):
            raise DatabaseError(
                f"no embedded ClickHouse database at {where}; make one with `cdp-triggers demo "
                f"--clickhouse-url chdb://{full}` (or `replay FILE.jsonl --clickhouse-url …`), "
                f"or point --clickhouse-url / CDP_CLICKHOUSE_URL at an existing one")
        held = (f"the embedded database {full} is in use by another process (e.g. "
                f"`cdp-triggers run`); chdb lets one process open a directory at a time: stop "
                f"it, or run ClickHouse as a server and query it with --clickhouse-url "
                f"http://… (clickhouse-connect)")
        if _locked(full):
            raise DatabaseError(held)
        try:
            with _stderr_captured() as said:
                backend = open_backend(url)
        except Exception as e:
            if "Cannot lock file" in said.getvalue() or _locked(full):
                raise DatabaseError(held) from None
            raise DatabaseError(f"cannot open {where}: {server_message(e)}") from None
    else:
        backend = open_backend(url)
    try:
        found = backend.query_rows(
            f"SELECT count() FROM system.databases WHERE name = '{database}'")[0][0]
    except Exception as e:
        backend.close()
        raise DatabaseError(f"ClickHouse at {mask_url(url)} ({origin}): "
                            f"{server_message(e)}") from None
    if not found:
        backend.close()
        raise DatabaseError(
            f"no database {database!r} at {mask_url(url)} ({origin}); set CDP_CLICKHOUSE_DATABASE "
            f"or fill it with `cdp-triggers demo` / `replay` / `run`")
    return backend


def _ch_url(s: Settings, option: str | None) -> tuple[str, str]:
    """The ClickHouse URL to read and where it came from."""
    return (option, "--clickhouse-url") if option else (s.clickhouse_url, "CDP_CLICKHOUSE_URL")


# ---- commands --------------------------------------------------------------------------

ClickHouseUrl = Annotated[str | None, typer.Option(
    "--clickhouse-url", help="chdb://DIR (embedded) or http(s)://host:8123 (default: "
                             "CDP_CLICKHOUSE_URL, chdb://data/clickhouse).")]
HorizonMs = Annotated[int | None, typer.Option(
    "--horizon-ms", help="Fire timers due up to here (default: the latest event time).")]
IdleExit = Annotated[float | None, typer.Option(
    "--idle-exit", help="Exit after this many seconds without input (default: run forever).")]


def _with_database(command: str, s: Settings, clickhouse_url: str | None,
                   work: Any) -> Any:
    """``work(backend)`` on an existing database; any failure is one line, exit 2."""
    url, origin = _ch_url(s, clickhouse_url)
    try:
        backend = open_existing(url, s.clickhouse_database, origin)
    except DatabaseError as e:
        _done(_err(command, str(e)))
    try:
        return work(backend)
    except Exception as e:
        _done(_err(command, server_message(e)))
    finally:
        backend.close()


def _done(code: int) -> None:
    """End a command with its exit code (typer ignores return values)."""
    raise typer.Exit(code)


@app.command()
def demo(ctx: typer.Context,
         customers: Annotated[int, typer.Option(help="Synthetic customers.")] = 20_000,
         days: Annotated[float, typer.Option(help="Days of traffic.")] = 3.0,
         seed: Annotated[int, typer.Option(help="Generator seed.")] = 7,
         clickhouse_url: ClickHouseUrl = None,
         no_redis: Annotated[bool, typer.Option(
             "--no-redis", help="Do not try Redis for profiles.")] = False,
         keep: Annotated[bool, typer.Option(
             "--keep", help="Keep the previous demo's rows.")] = False) -> None:
    """Embedded demo: generator → engine → chdb, no servers."""
    from flows.demo import run_demo
    from flows.summary import demo_summary
    from sinks.clickhouse import open_backend

    s = _settings(ctx)
    config = _config(s)
    if clickhouse_url:
        s = s.model_copy(update={"clickhouse_url": clickhouse_url})
    url = s.clickhouse_url
    backend = open_backend(url)
    if not keep:
        backend.command(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
    syn = SyntheticConfig(customers=customers, days=days, seed=seed)
    print(f"cdp-triggers demo: {syn.customers:,} customers × {syn.days:g} days of synthetic "
          f"retail traffic (seed {syn.seed}) → engine (replay clock) → ClickHouse at "
          f"{mask_url(url)}")
    print(f"config {config.version}: triggers {', '.join(t.id for t in config.triggers)}")
    result = run_demo(config, s, syn, use_redis=not no_redis)
    summary = demo_summary(backend, s.clickhouse_database, result)
    print_demo_summary(summary)
    print(f'\nexplore: cdp-triggers sql "SELECT count() FROM sends"'
          f"  (database {s.clickhouse_database})")
    _done(0 if summary.balanced else 1)


@app.command()
def run(ctx: typer.Context,
        workers: Annotated[int, typer.Option("-w", "--workers",
                                             help="Workers in this process.")] = 1,
        process_id: Annotated[int | None, typer.Option(
            "-i", "--process-id", help="This process's index among --addresses.")] = None,
        addresses: Annotated[str | None, typer.Option(
            "-a", "--addresses", help="host:port;host:port of all processes.")] = None) -> None:
    """Live flow: Kafka → engine → ClickHouse + sends topic."""
    from bytewax._bytewax import cli_main
    from bytewax.errors import BytewaxRuntimeError

    from cdp_triggers import compiled, shutdown
    from cdp_triggers.logs import log_effective_settings
    from flows.app import RunError, build_run, prepare_recovery

    s = _settings(ctx)
    _config(s)
    peers = addresses.split(";") if addresses else None
    log_effective_settings(logging.getLogger("cdp_triggers.run"), s, "run",
                           process_id=process_id, workers=workers,
                           compiled=f"{len(compiled.loaded())}/{len(compiled.HOT)}")
    try:
        if s.stop_mode == "settle" and s.recovery_dir is None:
            raise RunError("CDP_STOP_MODE=settle needs CDP_RECOVERY_DIR: a settling stop "
                           "leaves the last epoch's work to the restart, which resumes from "
                           "the recovery snapshot")
        recovery = prepare_recovery(s)
        flow = build_run(s, "kafka").flow
    except RunError as e:
        print(f"cdp-triggers run: {e}", file=sys.stderr)
        _done(2)
    _serve_metrics(s, process_id, peers)
    # SIGTERM/SIGINT: exit 0 within a bound (cdp_triggers.shutdown): end the input, flush,
    # snapshot, exit; or (CDP_STOP_MODE=settle) stop reading, interrupt after two epochs
    shutdown.install(settle_fallback_s=shutdown.fallback_s(s.epoch_seconds)
                     if s.stop_mode == "settle" else None)
    try:
        cli_main(flow, workers_per_process=workers, process_id=process_id, addresses=peers,
                 epoch_interval=timedelta(seconds=s.epoch_seconds), recovery_config=recovery)
    except (KeyboardInterrupt, BytewaxRuntimeError):  # ("signal received")
        if not shutdown.interrupted():
            raise
    _done(0)


def _serve_metrics(s: Settings, process_id: int | None = None,
                   peers: list[str] | None = None) -> None:
    """/metrics, /healthz, /readyz on CDP_METRICS_PORT (+ the process id when processes
    share a host), when set."""
    if s.metrics_port is None:
        return
    from cdp_triggers import metrics

    metrics.start_server(metrics.process_port(s.metrics_port, process_id, peers))


@app.command()
def replay(ctx: typer.Context,
           files: Annotated[list[str], typer.Argument(help="JSONL files of recorded events.")],
           horizon_ms: HorizonMs = None, clickhouse_url: ClickHouseUrl = None) -> None:
    """Replay JSONL files through the engine (event-time clock) into ClickHouse.

    The horizon is the latest event time, or --horizon-ms."""
    from bytewax.testing import run_main

    from flows.app import build_run
    from flows.sources import latest_event_ts

    s = _settings(ctx)
    config = _config(s)
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        _done(_err("replay", f"no such events file: {', '.join(missing)}"))
    horizon = horizon_ms
    if horizon is None:  # default: the latest valid event time in the files
        horizon = latest_event_ts(files)[0]
    if clickhouse_url:
        s = s.model_copy(update={"clickhouse_url": clickhouse_url})
    s = s.model_copy(update={"clock": "replay", "horizon_ms": horizon, "recovery_dir": None})
    run = build_run(s, "files", files=files, config=config, profiles="empty",
                    outputs="clickhouse")
    for note in run.notes:
        print(note, file=sys.stderr if run.profiles_from == "none" else sys.stdout)
    run_main(run.flow)
    print(f"replayed {len(files)} file(s) up to horizon {horizon} into "
          f"{mask_url(s.clickhouse_url)}")
    _done(0)


@app.command()
def validate(ctx: typer.Context) -> None:
    """Validate the trigger configs.

    On an error: exit 2, each issue as file:line:col field: message."""
    config = _config(_settings(ctx))
    for f in config.files:
        print(f"ok  {f}")
    print(f"{len(config.triggers)} trigger(s) valid; config version {config.version}")
    _done(0)


@app.command("compile")
def compile_hot() -> None:
    """Compile the hot path with Cython (what changed since the last build; `make venv`
    runs it). A module whose build does not match its source runs from source."""
    from cdp_triggers import compiled

    try:
        done = compiled.build()
    except Exception as e:  # no Cython, no C compiler, a compile error: said, not hidden
        print(f"cdp-triggers compile: {type(e).__name__}: {e}", file=sys.stderr)
        _done(1)
    print(f"compiled {len(done)} of {len(compiled.HOT)} hot modules into "
          f"{compiled.build_dir()}" + (f": {', '.join(done)}" if done else " (up to date)"))
    _done(0)


Events = Annotated[list[Path] | None, typer.Option(
    "--events", help="A JSONL file of recorded events (repeat it, or list more files after "
                     "it).")]
MoreEvents = Annotated[list[Path] | None, typer.Argument(
    help="More events files (as in --events a.jsonl b.jsonl).", show_default=False)]
NoRedis = Annotated[bool, typer.Option(
    "--no-redis", help="Assume every customer reachable instead of reading Redis profiles.")]


@app.command()
def preview(ctx: typer.Context,
            more: MoreEvents = None,
            events: Events = None,
            config: Annotated[Path | None, typer.Option(
                help="Config set (default: --config-dir or config/).")] = None,
            against: Annotated[Path | None, typer.Option(
                help="Another config set: print a diff table.")] = None,
            examples: Annotated[int, typer.Option(help="Example customers per trigger.")] = 3,
            horizon_ms: HorizonMs = None,
            no_redis: NoRedis = False) -> None:
    """What would this config do on recorded events? --against: compare two configs.

    Replays the files in memory through the production dataflow (replay clock); nothing is
    written or sent."""
    from cdp_triggers.clock import to_datetime
    from config.loader import _display
    from flows.preview import diff, run_preview, summarize
    from flows.sources import latest_event_ts

    s = _settings(ctx)
    files = [*(events or ()), *(more or ())]
    if not files:
        _done(_err("preview", "--events FILE.jsonl is required"))
    base = _config(s.model_copy(update={"config_dir": config or s.config_dir}))
    other = _config(s.model_copy(update={"config_dir": against})) if against else None
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        print(f"no such events file: {', '.join(map(str, missing))}", file=sys.stderr)
        _done(2)
    latest, valid, bad = latest_event_ts(files)
    horizon = horizon_ms if horizon_ms is not None else latest
    names = ", ".join(Path(p).name for p in files)
    print(f"preview on {names}: {valid:,} events, {bad:,} rejected; replay clock up to "
          f"{to_datetime(horizon):%Y-%m-%d %H:%M:%S} UTC")
    fallback = "assume" if no_redis else "reachable"
    if no_redis:
        print("profiles: ASSUMED reachable (--no-redis): every customer has every contact "
              "and consent; consent_changed events still apply")
    summaries = {}
    for label, cfg, where in (("base", base, config or s.config_dir), ("other", other, against)):
        if cfg is None:
            continue
        print(f"{label}: config {cfg.version} ({_display(where)}): "
              f"{len(cfg.triggers)} trigger(s)")
        records, notes = run_preview(cfg, files, s, horizon, fallback)
        for note in notes if label == "base" else ():
            print(note)
        summaries[label] = summarize(records, examples, cfg.triggers)
    print()
    if other is None:
        print_summary(summaries["base"])
    else:
        print_diff(diff(summaries["base"], summaries["other"]))
    _done(0)


@app.command()
def explain(ctx: typer.Context,
            customer: Annotated[str, typer.Option(help="The customer id.")],
            more: MoreEvents = None,
            events: Annotated[list[Path] | None, typer.Option(
                "--events", help="Recorded JSONL events (default: a run's ClickHouse rows).")
            ] = None,
            trigger: Annotated[str | None, typer.Option(help="Only this trigger.")] = None,
            horizon_ms: HorizonMs = None,
            no_redis: Annotated[bool, typer.Option(
                "--no-redis", help="Assume the customer reachable instead of reading Redis.")
            ] = False,
            clickhouse_url: ClickHouseUrl = None) -> None:
    """Why did a customer (not) get a message? Their timeline per trigger.

    From recorded events (--events), or from a run's ClickHouse rows."""
    s = _settings(ctx)
    files = [*(events or ()), *(more or ())]
    if files:
        from flows.app import open_profiles
        from flows.explain import explain_events
        from flows.sources import latest_event_ts

        missing = [p for p in files if not Path(p).is_file()]
        if missing:
            print(f"no such events file: {', '.join(map(str, missing))}", file=sys.stderr)
            _done(2)
        config = _config(s)
        horizon = horizon_ms if horizon_ms is not None else latest_event_ts(files)[0]
        store, _origin, note = open_profiles(s, "assume" if no_redis else "reachable")
        if note:
            print(note)
        lines = explain_events(config, files, customer, store.get, horizon)
        source = f"recorded events ({', '.join(Path(p).name for p in files)})"
    else:
        from flows.explain import explain_clickhouse

        url = _ch_url(s, clickhouse_url)[0]
        lines = _with_database("explain", s, clickhouse_url,
                               lambda b: explain_clickhouse(b, s.clickhouse_database, customer))
        source = f"ClickHouse {mask_url(url)} database {s.clickhouse_database}"
    if trigger:  # its lines, and the events that did something to it
        lines = [x for i, x in enumerate(lines) if x.trigger_id == trigger or (
            x.what == "event" and any(y.trigger_id == trigger for y in lines[i + 1:i + 4]
                                      if y.ts == x.ts))]
    triggers = sorted({x.trigger_id for x in lines if x.trigger_id})
    print(f"customer {customer}: {len(lines)} lines from {source}; "
          f"triggers: {', '.join(triggers) or 'none'}")
    if not lines:
        _done(1)
    print_table(["time (UTC)", "trigger", "what", "detail"],
                [(x.at, x.trigger_id, x.what, x.text) for x in lines])
    _done(0)


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


@app.command()
def schema(ctx: typer.Context,
           out: Annotated[Path | None, typer.Option(
               help="Directory (default: config/schema/).")] = None) -> None:
    """Write JSON Schemas of the config files (for editors)."""
    import json

    from config.loader import _display

    out = out or _settings(ctx).config_dir / "schema"
    out.mkdir(parents=True, exist_ok=True)
    for name, js in json_schemas().items():
        (out / name).write_text(json.dumps(js, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {_display(out / name)}")
    shown = _display(out)
    print(f"""
editors (VS Code with the YAML extension by Red Hat; any yaml-language-server editor):
  first line of a trigger file in config/triggers/:
    # yaml-language-server: $schema=../schema/trigger.schema.json
  first line of config/policy.yaml and config/templates.yaml:
    # yaml-language-server: $schema=./schema/policy.schema.json
    # yaml-language-server: $schema=./schema/templates.schema.json
  or once for the workspace, in .vscode/settings.json:
    "yaml.schemas": {{"{shown}/trigger.schema.json": "config/triggers/*.yaml",
                     "{shown}/policy.schema.json": "config/policy.yaml",
                     "{shown}/templates.schema.json": "config/templates.yaml"}}
the schema checks keys, types and durations as you type; `cdp-triggers validate` also checks
templates, channels, variables and unreachable steps across files.""")
    _done(0)


# ---- sql -------------------------------------------------------------------------------

Format = Literal["table", "csv", "json", "tsv"]

#: ClickHouse FORMAT names `sql` accepts at the end of a query → (format, header line).
_FORMATS: dict[str, tuple[Format, bool]] = {
    "csv": ("csv", False), "csvwithnames": ("csv", True),
    "tsv": ("tsv", False), "tabseparated": ("tsv", False),
    "tsvwithnames": ("tsv", True), "tabseparatedwithnames": ("tsv", True),
    "json": ("json", False), "jsoneachrow": ("json", False), "jsonlines": ("json", False),
    "ndjson": ("json", False),
}
_FORMAT_CLAUSE = re.compile(r"\s+FORMAT\s+([A-Za-z]+)\s*;?\s*$", re.IGNORECASE)


def split_format(query: str) -> tuple[str, tuple[Format, bool] | None, str | None]:
    """``(query without its FORMAT clause, (format, header) or None, the clause's name)``;
    Pretty* formats are the table."""
    m = _FORMAT_CLAUSE.search(query)
    if not m:
        return query, None, None
    name = m.group(1)
    key = name.lower()
    fmt = ("table", True) if key.startswith("pretty") else _FORMATS.get(key)
    return query[:m.start()], fmt, name


def _cell(v: Any) -> str:
    import orjson

    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return orjson.dumps(v).decode()
    return str(v)


def _tsv(v: Any) -> str:
    if v is None:
        return "\\N"
    return (_cell(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def write_rows(cols: list[str], rows: list[tuple[Any, ...]], fmt: Format, header: bool = True,
               out: TextIO | None = None) -> None:
    """Query results as a table, CSV, TSV (ClickHouse escaping, NULL as ``\\N``) or JSON
    lines (one object per row)."""
    import orjson

    out = out or sys.stdout
    if fmt == "table":
        print_table(cols, rows, out)
        return
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        if header:
            w.writerow(cols)
        w.writerows([_cell(v) for v in r] for r in rows)
    elif fmt == "tsv":
        lines = [[_tsv(c) for c in cols]] if header else []
        out.writelines("\t".join(x) + "\n" for x in [*lines, *([_tsv(v) for v in r]
                                                               for r in rows)])
    else:
        opt = orjson.OPT_NON_STR_KEYS
        out.writelines(orjson.dumps(dict(zip(cols, r, strict=True)), option=opt).decode() + "\n"
                       for r in rows)
    out.flush()


@app.command()
def sql(ctx: typer.Context,
        query: Annotated[str, typer.Argument(help="A ClickHouse query (tables of "
                                                  "CDP_CLICKHOUSE_DATABASE without a prefix).")],
        fmt: Annotated[Format | None, typer.Option(
            "--format", "-f", help="Output: table (default), csv and tsv (with a header "
                                   "line), json (one object per line). A trailing FORMAT "
                                   "CSV / CSVWithNames / TSV / TabSeparated[WithNames] / "
                                   "JSONEachRow / Pretty clause works too.")] = None,
        clickhouse_url: ClickHouseUrl = None) -> None:
    """Query ClickHouse (embedded chdb or a server) as a table, CSV, TSV or JSON.

    The database must exist: `cdp-triggers demo`, `replay` or `run` make it; `sql` never
    creates one. Errors (missing or busy database, bad SQL, unknown table) are one line on
    stderr, exit 2."""
    s = _settings(ctx)
    body, clause, name = split_format(query)
    if name and clause is None:
        _done(_err("sql", f"FORMAT {name} is not supported here; use --format "
                          f"table|csv|json|tsv (or FORMAT CSV, TSV, JSONEachRow, Pretty)"))
    if clause and fmt and clause[0] != fmt:
        _done(_err("sql", f"the query says FORMAT {name} and --format says {fmt}: use one"))
    out_fmt, header = clause or (fmt or "table", True)
    url, origin = _ch_url(s, clickhouse_url)
    db = s.clickhouse_database
    try:
        backend = open_existing(url, db, origin)
    except DatabaseError as e:
        _done(_err("sql", str(e)))
    try:
        backend.command(f"USE {db}")
        cols, rows = backend.query(body)
    except Exception as e:
        msg = server_message(e)
        if "UNKNOWN_TABLE" in msg:
            try:
                tables = [r[0] for r in backend.query_rows(
                    f"SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name")]
                msg += f"; tables in {db}: {', '.join(tables) or 'none'}"
            except Exception:  # the message is enough
                pass
        backend.close()
        _done(_err("sql", msg))
    backend.close()
    write_rows(cols, rows, out_fmt, header)
    if out_fmt == "table":
        print(f"({len(rows):,} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)
    _done(0)


# ---- delivery loop -----------------------------------------------------------------------


@app.command()
def report(ctx: typer.Context,
           out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")]
           = Path("report.html"),
           clickhouse_url: ClickHouseUrl = None) -> None:
    """A self-contained HTML report (charts and tables, no network needed to open it) from
    the same SQL as the Grafana dashboards."""
    from flows.report import build_report

    s = _settings(ctx)
    path = _with_database("report", s, clickhouse_url,
                          lambda b: build_report(b, s.clickhouse_database, out))
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    _done(0)


@app.command("rfm-boundaries")
def rfm_boundaries(ctx: typer.Context,
                   write: Annotated[bool, typer.Option(
                       "--write", help="Write them to the config's rfm.yaml.")] = False,
                   now_ms: Annotated[int | None, typer.Option(
                       "--now-ms", help="Score as of this time (default: now).")] = None,
                   clickhouse_url: ClickHouseUrl = None) -> None:
    """RFM score boundaries from the orders in ClickHouse (quintiles); run it on a schedule
    with --write, the flow reads them at its next start."""
    import time

    from flows.rfm import refresh_rfm

    s = _settings(ctx)
    at = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    _, text = _with_database("rfm-boundaries", s, clickhouse_url, lambda b: refresh_rfm(
        b, s.clickhouse_database, at, s.config_dir))
    print(text, end="")
    if write:
        path = s.config_dir / "rfm.yaml"
        path.write_text(text)
        print(f"written: {path}")
    _done(0)


@app.command("gateway-sim")
def gateway_sim(ctx: typer.Context,
                outcomes_topic: Annotated[str, typer.Option(
                    help="Topic the receipts go to.")] = "outcomes",
                seed: Annotated[int, typer.Option(help="Receipt randomness seed.")] = 7,
                time_scale: Annotated[float, typer.Option(
                    help="Compress receipt delays (60: a minute passes in a second).")] = 1.0,
                idle_exit: IdleExit = None) -> None:
    """Simulate channel gateways: sends topic → outcomes."""
    from cdp_triggers.gateway_sim import serve

    s = _settings(ctx)
    print(f"gateway-sim: {s.sends_topic} → {outcomes_topic} on {s.kafka_brokers} "
          f"(seed {seed}, time scale {time_scale:g})", flush=True)
    made = serve(s.kafka_brokers, s.sends_topic, outcomes_topic, seed, time_scale, idle_exit)
    print(f"gateway-sim: produced {made:,} receipts")
    _done(0)


@app.command()
def gateway(ctx: typer.Context, idle_exit: IdleExit = None) -> None:
    """Send commands to the providers: sends → e-mail/SMS/push → receipts on outcomes."""
    from cdp_triggers import metrics
    from flows.delivery import DeliveryError, run_gateway

    s = _settings(ctx)
    print(f"gateway: {s.sends_topic} → providers {s.providers} → {s.outcomes_topic} "
          f"on {s.kafka_brokers}", flush=True)
    if s.metrics_port is not None:  # the gateway is ready once it runs
        metrics.start_server(s.metrics_port, ready=lambda: True)
    try:
        stats = run_gateway(s, idle_exit_s=idle_exit)
    except DeliveryError as e:
        print(f"gateway: {e}", file=sys.stderr)
        _done(2)
    print(f"gateway: {stats.line()}")
    _done(0)


@app.command()
def webhooks(ctx: typer.Context,
             port: Annotated[int | None, typer.Option(
                 help="Listening port (default: CDP_WEBHOOK_PORT).")] = None) -> None:
    """Receive the providers' delivery webhooks → outcomes."""
    from flows.delivery import DeliveryError, run_webhooks

    s = _settings(ctx)
    if port is not None:
        s = s.model_copy(update={"webhook_port": port})
    print(f"webhooks: listening on {s.webhook_host}:{s.webhook_port} → {s.outcomes_topic}",
          flush=True)
    try:
        run_webhooks(s)
    except DeliveryError as e:
        print(f"webhooks: {e}", file=sys.stderr)
        _done(2)
    _done(0)


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


@app.command("send-test")
def send_test(ctx: typer.Context,
              template: Annotated[str, typer.Option(help="Template id (config/templates.yaml).")],
              channel: Annotated[Literal["email", "sms", "push"], typer.Option(
                  help="Channel.")],
              customer: Annotated[str, typer.Option(
                  help="Customer id (contacts read from Redis).")],
              var: Annotated[list[str] | None, typer.Option(
                  "--var", metavar="NAME=VALUE",
                  help="A template variable (VALUE may be JSON: items=[...]); repeat it.")
              ] = None,
              dry_run: Annotated[bool, typer.Option(
                  "--dry-run", help="Render and print, send nothing.")] = False) -> None:
    """Render one message and send it through its provider (--dry-run: print it).

    Exit 0 sent, 1 not sent (reason printed), 2 bad input."""
    from flows.delivery import DeliveryError
    from flows.delivery import send_test as deliver_test

    s = _settings(ctx)
    try:
        variables = _parse_vars(var or [])
        res = deliver_test(s, template, channel, customer, variables, dry_run=dry_run)
    except (DeliveryError, ValueError) as e:
        print(f"send-test: {e}", file=sys.stderr)
        _done(2)
    o = res.outcome
    m = o.message
    if m is not None:
        print(f"to: {channel} contact of {customer}" + (" (present)" if m.address else " (none)"))
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
    _done(0 if o.result == "accepted" else 1)


@profiles_app.command("import")
def profiles_import(ctx: typer.Context,
                    file: Annotated[Path, typer.Argument(help="FILE.jsonl or FILE.csv")],
                    chunk: Annotated[int, typer.Option(
                        help="Writes per pipelined round trip.")] = 1000) -> None:
    """Bulk load a JSONL or CSV file of profiles (with a progress bar)."""
    from flows.profiles_in import import_file
    from state.profiles import RedisProfileStore

    s = _settings(ctx)
    if not file.is_file():
        print(f"no such file: {file}", file=sys.stderr)
        _done(2)
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    if not store.ping():
        print(f"profiles import: Redis is not reachable at {mask_url(s.redis_url)}",
              file=sys.stderr)
        _done(2)
    print(f"profiles import: {file.name} → Redis at {mask_url(s.redis_url)}", flush=True)
    counts = _with_progress(file, lambda progress: import_file(
        file, store, chunk=chunk, progress=progress, every_s=0.2))
    print(f"profiles import: {counts.line()}")
    _done(0)


def _progress(*columns: Any, file: TextIO | None = None) -> Any:
    """A rich progress bar: description, bar, then ``columns`` (drawn on a terminal; off
    one, only its last state is printed)."""
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), *columns,
                    console=console(file or sys.stdout), transient=False)


def _with_progress(path: Path, work: Any) -> Any:
    """Run ``work(progress)`` under a progress bar over the file's records (lines; a CSV's
    header is not one)."""
    from rich.progress import MofNCompleteColumn, TextColumn, TimeRemainingColumn

    with path.open("rb") as f:
        total = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    total -= path.suffix.lower() == ".csv"
    with _progress(MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[line]}")) as bar:
        task = bar.add_task(path.name, total=max(total, 1), line="")
        result = work(lambda c, n: bar.update(task, completed=n, line=c.line()))
        bar.update(task, completed=max(total, 1), line=result.line())
    return result


@profiles_app.command("consume")
def profiles_consume(ctx: typer.Context,
                     group: Annotated[str, typer.Option(
                         help="Kafka consumer group.")] = "cdp-profiles",
                     idle_exit: IdleExit = None) -> None:
    """Apply the profiles topic (CDP_PROFILES_TOPIC) to Redis."""
    from flows.profiles_in import consume
    from state.profiles import RedisProfileStore

    s = _settings(ctx)
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    print(f"profiles consume: {s.profiles_topic} on {s.kafka_brokers} (group {group}) → "
          f"Redis at {mask_url(s.redis_url)}", flush=True)
    counts = consume(s.kafka_brokers, s.profiles_topic, store, group=group,
                     idle_exit_s=idle_exit)
    print(f"profiles consume: {counts.line()}")
    _done(0)


_SYN = SyntheticConfig()


@app.command()
def generate(customers: Annotated[int, typer.Option(help="Customers.")] = _SYN.customers,
             days: Annotated[float, typer.Option(help="Days of traffic.")] = _SYN.days,
             seed: Annotated[int, typer.Option(help="Seed (same seed, same bytes).")] = _SYN.seed,
             start_ms: Annotated[int, typer.Option(
                 help="Event time of the start (epoch ms, UTC).")] = _SYN.start_ms,
             sessions_per_day: Annotated[float, typer.Option(
                 help="Mean sessions per customer and day.")
             ] = _SYN.sessions_per_customer_per_day,
             bad_rate: Annotated[float, typer.Option(
                 help="Bad payloads per good event (dead-letter material).")
             ] = _SYN.bad_event_rate,
             dup_rate: Annotated[float, typer.Option(
                 help="Exact duplicates per good event.")] = _SYN.duplicate_rate,
             out: Annotated[str, typer.Option(
                 help="Output JSONL file, or - for stdout.")] = "-") -> None:
    """Write synthetic retail events as JSONL.

    A progress bar (event time) and the counts go to stderr."""
    from cdp_triggers.synthetic import generate_cli

    cfg = SyntheticConfig(customers=customers, days=days, seed=seed, start_ms=start_ms,
                          sessions_per_customer_per_day=sessions_per_day,
                          bad_event_rate=bad_rate, duplicate_rate=dup_rate)
    if out == "-":
        _done(generate_cli(cfg, out))
    from rich.progress import TaskProgressColumn, TextColumn, TimeElapsedColumn

    span = max(cfg.end_ms - cfg.start_ms, 1)
    with _progress(TaskProgressColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[events]:,} events"), file=sys.stderr) as bar:
        task = bar.add_task(f"{Path(out).name} (event time)", total=span, events=0)

        def progress(n: int, ts: int) -> None:
            bar.update(task, completed=min(max(ts - cfg.start_ms, 0), span), events=n)

        code = generate_cli(cfg, out, progress)
        bar.update(task, completed=span)
    _done(code)


# ---- printing what flows return (flows return data, the CLI prints) -------------------


def print_summary(s: Summary, out: TextIO | None = None) -> None:
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
    branches = [(tid, path, n) for tid, t in s.triggers.items()
                for path, n in sorted(t.branches.items())]
    if branches:
        print(file=out)
        print_table(["trigger", "branch (from→to)", "instances"], branches, out)
    if s.segments:
        print(file=out)
        print_table(["segment", "entered", "left"],
                    [(seg, c["entered"], c["left"]) for seg, c in sorted(s.segments.items())],
                    out)
    print("\nexamples", file=out)
    for tid, t in s.triggers.items():
        if t.examples:
            print(f"  {tid}", file=out)
            width = max(len(c) for c in t.examples)
            for cid, story in t.examples.items():
                print(f"    {cid.ljust(width)}  {story}", file=out)


def print_diff(d: Diff, out: TextIO | None = None) -> None:
    """The rows of every trigger with a changed count; unchanged triggers are named."""
    out = out or sys.stdout
    changed = {r.trigger for r in d.rows if r.delta}
    print_table(["trigger", "step", "metric", "base", "other", "delta"],
                [(r.trigger, r.step, r.metric.strip(), r.base, r.other,
                  f"{r.delta:+d}" if r.delta else "0") for r in d.rows if r.trigger in changed],
                out)
    same = sorted({r.trigger for r in d.rows} - changed)
    for label, ids in (("unchanged", same), ("only in base", d.only_base),
                       ("only in other", d.only_other)):
        if ids:
            print(f"{label}: {', '.join(ids)}", file=out)
    n = sum(1 for r in d.rows if r.delta)
    print(f"{n} of {len(d.rows)} counts differ", file=out)


def print_demo_summary(s: Any, out: TextIO | None = None) -> None:
    """The demo's closing tables (:class:`flows.summary.DemoSummary`): counts, balance, lift."""
    out = out or sys.stdout
    print(file=out)
    print_table(["summary", ""], s.rows, out)
    print(f"  {s.balance}", file=out)
    if s.lift:
        print("\nlift (conversions within the attribution window; each arm counts only its "
              "own; pp = percentage points, 95% CI)", file=out)
        print_table(["trigger", "arm", "customers", "converted", "rate", "vs control (pp)",
                     "vs holdout (pp)"],
                    [(x.trigger_id, x.arm, f"{x.customers:,}", f"{x.converted:,}",
                      f"{x.rate * 100:.2f}%", x.vs_control, x.vs_holdout) for x in s.lift], out)


# ---- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the command's exit code (2 for a usage error). A config error raises
    ``SystemExit(2)`` after printing its issues."""
    from typer.exceptions import Abort, TyperException

    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="cdp-triggers",
                   standalone_mode=False)
    except TyperException as e:  # a usage error: the message, as typer shows it
        from typer import rich_utils

        rich_utils.rich_format_error(e)  # type: ignore[arg-type]
        return e.exit_code
    except Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
