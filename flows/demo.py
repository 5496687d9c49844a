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

from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from config.loader import ConfigSet
from flows.app import build_run
from flows.sources import Progress


@dataclass
class DemoResult:
    read: int
    generated_bad: int
    generated_duplicates: int
    seconds: float
    profiles_from: str


def run_demo(config: ConfigSet, settings: Settings, synthetic: SyntheticConfig,
             use_redis: bool = True, say=print) -> DemoResult:
    """Generator → engine (replay clock, simulated gateways) → ClickHouse, built by the one
    run builder; profiles from Redis when it answers, else the generated ones (said)."""
    gen = SyntheticRetail(synthetic)
    s = settings.model_copy(update={"clock": "replay", "horizon_ms": gen.end_ms,
                                    "recovery_dir": None})
    run = build_run(s, "generator", generator=gen.events, progress=Progress("read", out=say),
                    config=config, profiles="generated" if use_redis else "memory",
                    generated=gen.profiles(), records=gen.profile_records(),
                    outputs="clickhouse", loopback=True)
    for note in run.notes:
        say(note)
    if not use_redis:
        say("profiles: Redis not asked (--no-redis); using the profiles generated with the "
            "events")
    t0 = time.perf_counter()
    run_main(run.flow)
    st = gen.stats
    return DemoResult(st.read, st.bad, st.duplicates, time.perf_counter() - t0,
                      "redis" if run.profiles_from == "redis" else "generated")
