"""The production flow: Kafka in, Redis profiles, ClickHouse + Kafka out.

Run it with ``cdp-triggers run`` or with Bytewax's runner (any number of processes/workers)::

    python -m bytewax.run flows.live:flow -w 2
    python -m bytewax.run flows.live:flow -w 2 -i 0 -a "host0:2101;host1:2101"   # per host

Settings come from ``CDP_*`` environment variables. With ``CDP_RECOVERY_DIR`` set, bytewax.run
must get the same directory (``-r DIR -s 10 -b 0``): a mismatch is refused, never ignored.
"""

from __future__ import annotations

import logging

from bytewax.dataflow import Dataflow

from cdp_triggers.settings import Settings
from flows.app import build_run, check_bytewax_run_recovery, prepare_recovery


def build_live_flow(settings: Settings | None = None) -> Dataflow:
    """The live flow from settings (see :func:`flows.app.build_run`)."""
    s = settings or Settings()
    return build_run(s, "kafka").flow


def __getattr__(name: str) -> Dataflow:
    """``flows.live:flow`` is built on first access (by ``python -m bytewax.run``), so
    importing this module stays cheap."""
    if name == "flow":
        from cdp_triggers import shutdown

        s = Settings()
        check_bytewax_run_recovery(s)
        prepare_recovery(s)
        flow = build_live_flow(s)
        shutdown.install()  # bytewax.run builds the flow in its main thread
        if s.stop_mode == "settle":  # (its entry point reports an interrupt as an error)
            logging.getLogger(__name__).warning(
                "CDP_STOP_MODE=settle applies to `cdp-triggers run`; under bytewax.run a "
                "stop ends the input")
        return flow
    raise AttributeError(name)
