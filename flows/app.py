"""The one place that builds a run from Settings: source, engine runtime, profiles, outputs,
schema and recovery. ``run`` (and ``python -m bytewax.run flows.live:flow``), ``demo``,
``replay``, ``preview`` and the benchmark all call :func:`build_run`.

Profiles follow one explicit fallback policy, said out loud when it applies:

=============  =======================================================================
``redis``      always the Redis store (an outage defers marketing, see the engine)
``generated``  Redis if it answers (seeded with the given profiles), else those profiles
``empty``      Redis if it answers, else nobody has a profile (everything ``no_profile``)
``reachable``  Redis if it answers, else everyone reachable on every channel (previews)
``assume``     everyone reachable, Redis not asked (``preview --no-redis``)
``memory``     the given profiles in memory, Redis not asked (benchmarks, tests)
=============  =======================================================================
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from cdp_triggers.clock import WatermarkClock
from cdp_triggers.logs import RetryPolicy, mask_url
from cdp_triggers.records import CATEGORIES, CHANNELS, Profile
from cdp_triggers.settings import Settings
from config.loader import ConfigSet, load_config
from flows.pipeline import Outputs, build_flow, engine_streams
from flows.sources import AlignedKafkaSource, AlignOptions, IteratorSource, JsonlSource
from operators.engine import Engine, ProfileLookup
from operators.interest import derives_events
from operators.keyed import EngineRuntime
from sinks.clickhouse import ensure_schema, has_dispatched, open_backend
from state.profiles import DictProfileStore, RedisProfileStore

Fallback = Literal["redis", "generated", "empty", "reachable", "assume", "memory"]
_ALL_CONSENTS = {f"{ch}:{cat}": True for ch in CHANNELS for cat in CATEGORIES}


class RunError(RuntimeError):
    """A run that must not start, with the reason a person can act on."""


def assume_reachable(customer_id: str) -> Profile:
    """Every customer has every contact and consent (previews without Redis;
    ``consent_changed`` events still apply)."""
    return Profile(customer_id, contacts=frozenset(CHANNELS), consents=_ALL_CONSENTS)


@dataclass
class Run:
    """A built run: the dataflow plus what the caller may report on."""

    flow: Dataflow
    runtime: EngineRuntime
    config: ConfigSet
    profiles_from: str
    notes: list[str] = field(default_factory=list)
    captured: list[Any] | None = None  # in-memory records (outputs="memory")
    source: Source | None = None


def open_profiles(s: Settings, fallback: Fallback, generated: Iterable[Profile] = (),
                  records: Iterable[dict[str, Any]] = ()) -> tuple[Any, str, str | None]:
    """(store with ``.get``, where profiles come from, a note to say or None). With
    ``records`` (CDP profile upserts), Redis is loaded through the profile import, the same
    checks and normalisation as the `profiles` topic."""
    if fallback == "memory":
        return DictProfileStore(generated), "memory", None
    if fallback == "assume":
        return _Reachable(), "assumed", None
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    url = mask_url(s.redis_url)
    if fallback == "redis":
        return store, "redis", None
    if store.ping():
        recs = list(records)
        if fallback == "generated" and recs:
            from flows.profiles_in import import_records

            store.forget(r["customer_id"] for r in recs)  # whole profiles, nothing stale
            counts = import_records(recs, store)
            return store, "redis", (f"profiles: loaded {counts.loaded:,} customers into Redis "
                                    f"at {url} through the CDP profile import "
                                    f"({counts.invalid_contact:,} invalid contacts)")
        profiles = list(generated)
        if fallback == "generated" and profiles:
            store.put_many(profiles)
            return store, "redis", f"profiles: seeded {len(profiles):,} customers into Redis " \
                                   f"at {url}"
        return store, "redis", f"profiles: Redis at {url}"
    if fallback == "generated":
        profiles = list(generated)
        return DictProfileStore(profiles), "generated", (
            f"profiles: Redis is NOT reachable at {url}; falling back to the {len(profiles):,} "
            "profiles generated with the events (in memory)")
    if fallback == "reachable":
        return _Reachable(), "assumed", (
            f"profiles: ASSUMED reachable: every customer has {', '.join(CHANNELS)} contacts "
            f"and consent (Redis not answering at {url}); consent_changed events still apply")
    return DictProfileStore(), "none", (
        f"profiles: Redis NOT reachable at {url}: every message will be suppressed as "
        "no_profile")


class _Reachable:
    get = staticmethod(assume_reachable)


def build_run(s: Settings, source: Literal["kafka", "files", "generator"] = "kafka", *,
              files: list[str | Path] | None = None,
              generator: Callable[[], Iterator[bytes]] | None = None,
              progress: Callable[[int], None] | None = None,
              config: ConfigSet | None = None,
              profiles: Fallback = "redis", generated: Iterable[Profile] = (),
              records: Iterable[dict[str, Any]] = (),
              outputs: Literal["full", "clickhouse", "memory"] = "full",
              loopback: bool | None = None, recovery: bool | None = None) -> Run:
    """Wire one run from settings (see the module doc). ``source``: the live topics, JSONL
    ``files`` or a ``generator`` of raw events; ``outputs``: ClickHouse + Kafka (+ profile
    updates), ClickHouse only, or records kept in memory (previews)."""
    from cdp_triggers.gateway_sim import simulate

    config = config or load_config(s.config_dir)
    notes: list[str] = []
    recovery = s.recovery_dir is not None if recovery is None else recovery
    live = s.clock == "live"
    clock = WatermarkClock(tick_ms=s.live_tick_ms)
    store, origin, note = open_profiles(s, profiles, generated, records)
    if note:
        notes.append(note)
    loop = s.simulate_gateways if loopback is None else loopback
    runtime = EngineRuntime(Engine(config), _lookup_factory(store), mode=s.clock, clock=clock,
                            horizon_ms=s.horizon_ms, loopback=simulate if loop else None,
                            copy_snapshots=recovery, idle_ttl_ms=s.idle_ttl_ms,
                            prefetch=getattr(store, "warm", None))
    opts = AlignOptions(s.max_out_of_orderness_ms, s.align_max_buffer, live=live,
                        copy_snapshots=recovery, clock=clock, interest=derives_events(config))
    if source == "kafka":
        kafka = AlignedKafkaSource(s.brokers, s.input_topics, s.kafka_tail,
                                   s.kafka_batch_size, opts, catalogue=s.catalogue_topics)
        try:  # before Bytewax starts: a missing broker or topic is a clear error, not a panic
            shards = kafka.shards()
        except RuntimeError as e:
            raise RunError(str(e)) from None
        notes.append(f"input: {len(shards)} shard(s) over {', '.join(s.input_topics)}")
        src: Source = kafka
    elif source == "files":
        src = JsonlSource(files or [], opts)
    else:
        if generator is None:
            raise ValueError("source='generator' needs a generator")
        src = IteratorSource(generator, progress=progress, opts=opts)
    if live:  # timers fire by what reached each worker (marks behind the events), from
        clock.follow_marks(src.list_parts())  # every shard of the run, here or elsewhere
    if outputs == "memory":
        from bytewax.operators import output
        from bytewax.testing import TestingSink

        flow = Dataflow("cdp_preview")
        records, _rejected = engine_streams(flow, src, runtime)
        captured: list[Any] = []
        output("capture", records, TestingSink(captured))
        return Run(flow, runtime, config, origin, notes, captured, src)
    backend = open_backend(s.clickhouse_url)
    try:
        ensure_schema(backend, s.clickhouse_database)
        if source == "kafka" and not recovery:
            _refuse_silent_reprocess(s, backend)
    finally:
        backend.close()
    out = Outputs(clickhouse=lambda: open_backend(s.clickhouse_url),
                  clickhouse_database=s.clickhouse_database,
                  clickhouse_batch_rows=s.clickhouse_batch_rows,
                  clickhouse_batch_seconds=s.clickhouse_batch_seconds,
                  clickhouse_shards=s.sink_partitions, profile_store=lambda: store,
                  clickhouse_trickle=live, keep_snapshots=recovery,
                  retry=RetryPolicy(cap_s=s.retry_cap_seconds,
                                    max_attempts=s.retry_max_attempts))
    if outputs == "full" and source == "kafka":
        out.kafka_brokers = s.brokers
        out.sends_topic, out.dead_letter_topic = s.sends_topic, s.dead_letter_topic
    tune_gc()
    return Run(build_flow(src, runtime, out), runtime, config, origin, notes, None, src)


#: young-generation threshold while a run goes: the flow allocates millions of short-lived,
#: acyclic objects (events, rows, ids) that reference counting frees; CPython's default (700)
#: ran a collection every few events, ~17 % of the flow's time (issue 10)
GC_THRESHOLD = (100_000, 50, 10)


def tune_gc() -> None:
    """Before a run: what exists now (modules, the config set, the engine's tables) lives
    as long as the process, so it is moved out of the cyclic collector's sight
    (``gc.freeze``), and young collections are made rare. Decision-neutral: only when
    cyclic garbage is collected changes; reference counting frees everything else at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _lookup_factory(store: Any) -> Callable[[], ProfileLookup]:
    return lambda: store.get


def _refuse_silent_reprocess(s: Settings, backend: Any) -> None:
    """Without recovery a run reads every topic from its beginning. The outbox keeps already
    dispatched sends from leaving again, but re-deciding everything is rarely what was
    meant: refuse unless asked for (CDP_ALLOW_REPROCESS=true)."""
    n = has_dispatched(backend, s.clickhouse_database)
    if n and not s.allow_reprocess:
        raise RunError(
            f"database {s.clickhouse_database!r} already has {n:,} dispatched sends and no "
            "recovery directory is set (CDP_RECOVERY_DIR): this run would read every topic "
            "from the beginning. Set CDP_RECOVERY_DIR to resume where the last run stopped, "
            "or CDP_ALLOW_REPROCESS=true to re-decide everything (already dispatched sends "
            "are not sent again).")


def prepare_recovery(s: Settings, say: Callable[[str], None] = print) -> Any:
    """The Bytewax RecoveryConfig for ``s.recovery_dir`` (initialised when empty), or None."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    if s.recovery_dir is None:
        return None
    if not any(Path(s.recovery_dir).glob("part-*.sqlite3")):
        Path(s.recovery_dir).mkdir(parents=True, exist_ok=True)
        init_db_dir(s.recovery_dir, s.recovery_partitions)
        say(f"recovery: initialised {s.recovery_partitions} partitions in {s.recovery_dir}")
    return RecoveryConfig(s.recovery_dir)


def check_bytewax_run_recovery(s: Settings, argv: list[str] | None = None) -> None:
    """``python -m bytewax.run flows.live:flow`` takes recovery from ``-r`` (or
    BYTEWAX_RECOVERY_DIRECTORY), not from CDP_RECOVERY_DIR: refuse a mismatch instead of
    running without the recovery the operator asked for."""
    argv = sys.argv if argv is None else argv
    given = os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    for i, a in enumerate(argv):
        if a in ("-r", "--recovery-directory") and i + 1 < len(argv):
            given = argv[i + 1]
        elif a.startswith("--recovery-directory="):
            given = a.split("=", 1)[1]
    want = s.recovery_dir
    if want is None and given is None:
        return
    if want is None or given is None or Path(given).resolve() != Path(want).resolve():
        raise RunError(
            f"recovery mismatch: CDP_RECOVERY_DIR={want or '(unset)'} but bytewax.run got "
            f"-r {given or '(none)'}. Pass the same directory to both "
            f"(python -m bytewax.run flows.live:flow -r DIR -s 10 -b 0 with CDP_RECOVERY_DIR=DIR)"
            ", or use `cdp-triggers run`, which sets it up from CDP_RECOVERY_DIR alone.")
