"""Runtime settings from the environment (prefix ``CDP_``) or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The packaged config/ directory, found without importing the config layer (settings are
# ground: they import nothing above them).
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class Settings(BaseSettings):
    """Every knob of a run. Defaults are the embedded, single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="CDP_", env_file=".env", extra="ignore")

    config_dir: Path = PACKAGED_CONFIG_DIR
    kafka_brokers: str = "127.0.0.1:9092"
    input_topics: list[str] = Field(
        default_factory=lambda: ["clickstream", "orders", "outcomes", "consents",
                                 "product_updates"])
    # keyed by product, not customer: every input shard reads all of their partitions
    catalogue_topics: list[str] = Field(default_factory=lambda: ["product_updates"])
    sends_topic: str = "sends"
    dead_letter_topic: str = "dead_letters"
    kafka_tail: bool = True  # False: stop at the end of the topics (tests, backfills)
    kafka_batch_size: int = 1000
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "cdp:profile:"
    clickhouse_url: str = "chdb://data/clickhouse"  # or http://user:pass@host:8123
    clickhouse_database: str = "cdp"
    clickhouse_batch_rows: int = 20_000
    clickhouse_batch_seconds: float = 2.0
    sink_partitions: int = 2  # partitions of the effects sink: at least the total workers
    retry_cap_seconds: float = 30.0  # outages: backoff doubles from 0.2 s up to this
    retry_max_attempts: int | None = None  # None: wait an outage out however long it lasts
    clock: Literal["live", "replay"] = "live"
    live_idle_ms: int = 5000  # live, multi-process: a partition read by another process
    # holds this process's clock back only while it sent something in the last live_idle_ms
    max_out_of_orderness_ms: int = 2000  # how far one input partition may go back in time
    align_max_buffer: int = 200_000  # events held for alignment per shard (then pause reads)
    idle_ttl_ms: int | None = 60_000  # a customer idle this long (wall) is compacted/evicted
    allow_reprocess: bool = False  # no recovery dir but sends already dispatched: start anyway
    horizon_ms: int | None = None  # replay: fire timers due up to here at end of input
    simulate_gateways: bool = False  # feed simulated receipts back per send (no gateway)
    recovery_dir: Path | None = None  # Bytewax recovery: state + offsets snapshotted per epoch
    recovery_partitions: int = 4  # created on first start when the directory is empty
    epoch_seconds: float = 10.0  # snapshot interval; also the longest a row waits in a buffer
    profiles_topic: str = "profiles"

    @property
    def brokers(self) -> list[str]:
        return [b.strip() for b in self.kafka_brokers.split(",") if b.strip()]
