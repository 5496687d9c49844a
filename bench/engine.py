"""The pure engine on the shipped config: events/s and the top self-time functions.

``python -m bench.engine [--customers 3000] [--days 3] [--profile]``: synthetic traffic
(no catalogue stream: the product step is not part of the engine), replay clock, in-memory
profiles, one process. Prints events/s; ``--profile`` adds a cProfile table (top 20 by
self time). A quick check of per-event engine cost as the catalogue grows.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from cdp_triggers.events import Event, parse_event
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from config.loader import load_config
from operators.engine import Engine
from state.customer import CustomerState
from state.profiles import DictProfileStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    gen = SyntheticRetail(SyntheticConfig(customers=a.customers, days=a.days, seed=7,
                                          price_change_rate=0, stockout_rate=0))
    events = [e for r in gen.events() if isinstance(e := parse_event(r, "bench"), Event)]
    store = DictProfileStore(gen.profiles())
    engine = Engine(load_config())

    def run() -> None:
        states: dict[str, CustomerState] = {}
        for e in events:
            st = states.get(e.customer_id)
            if st is None:
                st = states[e.customer_id] = CustomerState(e.customer_id)
            engine.handle(st, e, max(st.high_water, e.ts), store.get)
        for st in states.values():
            engine.handle(st, None, gen.end_ms, store.get)

    t0 = time.perf_counter()
    run()
    dt = time.perf_counter() - t0
    print(f"engine, shipped config ({len(engine.config.triggers)} triggers): "
          f"{len(events):,} events in {dt:.2f} s = {len(events) / dt:,.0f} events/s")
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
