"""The embedded demo: synthetic retail traffic → engine (replay clock) → chdb. No servers.

Channel gateways are simulated (``cdp_triggers.gateway_sim``): each send's receipts are fed
back to that customer's engine state in event time, so cascades and conversions play out.

Profiles come from Redis when it answers (the demo seeds it); otherwise the demo says so
and uses the profiles generated with the events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bytewax.testing import run_main

from cdp_triggers.gateway_sim import simulate
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from config.loader import ConfigSet
from flows.pipeline import Outputs, build_flow
from flows.sources import IteratorSource, Progress
from operators.engine import Engine
from operators.keyed import EngineRuntime
from sinks.clickhouse import ensure_schema, open_backend
from state.profiles import DictProfileStore, RedisProfileStore


@dataclass
class DemoResult:
    read: int
    generated_bad: int
    generated_duplicates: int
    seconds: float
    profiles_from: str


def pick_profile_store(gen: SyntheticRetail, redis_url: str | None, say=print):
    """Redis if it answers (seeded with the demo's customers), else the generated profiles."""
    profiles = gen.profiles()
    if redis_url:
        store = RedisProfileStore(redis_url)
        if store.ping():
            store.put_many(profiles)
            say(f"profiles: seeded {len(profiles):,} customers into Redis at {redis_url}")
            return store, "redis"
        say(f"profiles: Redis is NOT reachable at {redis_url}; falling back to the "
            f"{len(profiles):,} profiles generated with the events (in memory)")
    else:
        say("profiles: no Redis configured; using the profiles generated with the events")
    return DictProfileStore(profiles), "generated"


def run_demo(config: ConfigSet, clickhouse_url: str, database: str,
             synthetic: SyntheticConfig, redis_url: str | None, say=print) -> DemoResult:
    gen = SyntheticRetail(synthetic)
    store, origin = pick_profile_store(gen, redis_url, say)
    schema = open_backend(clickhouse_url)
    ensure_schema(schema, database)
    schema.close()
    # gateways are simulated per send and their receipts fed back to the customer's state,
    # so cascades (push → email → sms) run without a server
    runtime = EngineRuntime(Engine(config), lambda: store.get, mode="replay",
                            horizon_ms=gen.end_ms,
                            loopback=simulate, copy_snapshots=False)  # no recovery here
    source = IteratorSource(gen.events, name="synthetic", progress=Progress("read", out=say))
    flow = build_flow(source, runtime, Outputs(clickhouse=lambda: open_backend(clickhouse_url),
                                               clickhouse_database=database,
                                               profile_store=lambda: store))
    t0 = time.perf_counter()
    run_main(flow)
    st = gen.stats
    return DemoResult(st.read, st.bad, st.duplicates, time.perf_counter() - t0, origin)
