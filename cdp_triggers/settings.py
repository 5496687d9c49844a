"""Runtime settings from the environment (prefix ``CDP_``) or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The packaged config/ directory, found without importing the config layer (settings are
# ground: they import nothing above them).
DEFAULT_PROVIDERS = {"email": "unisender_go", "sms": "twilio", "push": "fcm"}
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class Settings(BaseSettings):
    """Every knob of a run. Defaults are the embedded, single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="CDP_", env_file=".env", extra="ignore",
                                      env_nested_delimiter="__")

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
    dead_letter_ttl_days: int = 30  # dead letters (rejected_events) are dropped after this
    raw_ttl_days: int | None = None  # their raw payloads cleared after this (None: with them)
    sink_partitions: int = 2  # partitions of the effects sink: at least the total workers
    retry_cap_seconds: float = 30.0  # outages: backoff doubles from 0.2 s up to this
    retry_max_attempts: int | None = None  # None: wait an outage out however long it lasts
    clock: Literal["live", "replay"] = "live"
    live_tick_ms: int = 20  # live: an input shard with nothing to release tells every
    # worker how far it has got this often (timers of customers fire by what reached them)
    max_out_of_orderness_ms: int = 2000  # how far one input partition may go back in time
    align_max_buffer: int = 200_000  # events held for alignment per shard (then pause reads)
    idle_ttl_ms: int | None = 60_000  # a customer idle this long (wall) is compacted/evicted
    allow_reprocess: bool = False  # no recovery dir but sends already dispatched: start anyway
    horizon_ms: int | None = None  # replay: fire timers due up to here at end of input
    simulate_gateways: bool = False  # feed simulated receipts back per send (no gateway)
    recovery_dir: Path | None = None  # Bytewax recovery: state + offsets snapshotted per epoch
    recovery_partitions: int = 4  # created on first start when the directory is empty
    epoch_seconds: float = 10.0  # snapshot interval; also the longest a row waits in a buffer
    # SIGTERM (cdp_triggers.shutdown): end_input = flush and snapshot every customer held
    # (~45 µs each); settle (recovery on) = stop reading, interrupt after two epochs close
    stop_mode: Literal["end_input", "settle"] = "end_input"
    profiles_topic: str = "profiles"
    # the gateway (sends → providers) and the webhook receiver (providers → outcomes)
    outcomes_topic: str = "outcomes"
    send_dead_letter_topic: str = "send_dead_letters"  # commands that cannot be sent
    gateway_group: str = "cdp-gateway"
    gateway_batch: int = 500  # commands per consumer poll (offsets committed per batch)
    gateway_concurrency: int = 64  # provider calls in flight per gateway process
    gateway_max_attempts: int = 6  # calls per send on 5xx/429/timeouts, then dead letter
    gateway_timeout_s: float = 10.0  # one provider call
    gateway_backoff_s: float = 0.5  # first retry wait; doubles up to retry_cap_seconds
    send_ledger_prefix: str = "cdp:send:"
    send_ledger_lease_ms: int = 60_000  # a claim older than this was left by a crash
    send_ledger_ttl_s: int = 14 * 86400
    # provider per channel; their options (keys, URLs, sender ids) by env, e.g.
    # CDP_PROVIDER_OPTIONS__UNISENDER_GO__API_KEY=…  (secrets: never in the image)
    providers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROVIDERS))
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    provider_rate_limits: dict[str, float] = Field(default_factory=dict)  # name → calls/s
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 8081
    webhook_public_url: str = ""  # what providers call, when a proxy is in front
    # operations: JSON log lines (ts, level, logger, message) instead of text; Prometheus
    # /metrics, /healthz, /readyz on this port (Bytewax process i: metrics_port + i)
    log_json: bool = False
    metrics_port: int | None = None

    @field_validator("providers")
    @classmethod
    def _default_providers(cls, v: dict[str, str]) -> dict[str, str]:
        """CDP_PROVIDERS__SMS=… changes one channel; the others keep their default."""
        return {**DEFAULT_PROVIDERS, **{k.lower(): x for k, x in v.items()}}

    @property
    def brokers(self) -> list[str]:
        return [b.strip() for b in self.kafka_brokers.split(",") if b.strip()]
