"""RFM boundaries refreshed from ClickHouse: quintiles of recency, frequency and monetary
over the stored orders, written to ``config/rfm.yaml`` (run on a schedule, e.g. nightly
from cron or a Kubernetes CronJob; a flow reads its config once, at start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.loader import DEFAULT_CONFIG_DIR, load_config
from config.schema import Rfm
from operators.metrics import rfm_boundaries_from_clickhouse, rfm_yaml

HEADER = ("# RFM scoring (customer.rfm_* in conditions; README \"Customer metrics, RFM and "
          "segments\").\n# Written by `cdp-triggers rfm-boundaries --write` from the orders in "
          "ClickHouse (quintiles).\n")


def refresh_rfm(backend: Any, database: str, now_ms: int,
                config_dir: Path = DEFAULT_CONFIG_DIR) -> tuple[Rfm, str]:
    """The boundaries the stored orders give at ``now_ms`` (the config's own window and
    order cap kept; no orders: the config's boundaries) and the ``rfm.yaml`` text."""
    base = load_config(config_dir).rfm
    rfm = rfm_boundaries_from_clickhouse(backend, database, now_ms,
                                         window_days=base.window // 86_400_000, base=base)
    return rfm, HEADER + rfm_yaml(rfm)
