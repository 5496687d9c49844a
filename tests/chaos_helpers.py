"""Shared pieces of the chaos suite: traffic split over the README's topic layout, runs of
the real flow (in-process or as `cdp-triggers run` processes), and send-id sets from
ClickHouse and the sends topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import orjson
from services import consume_all, produce

from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from sinks.clickhouse import open_backend
from state.profiles import RedisProfileStore

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ("clickstream", "orders", "outcomes", "consents", "product_updates")


def topic_of(raw: bytes) -> tuple[str, bytes | None]:
    """(README topic, Kafka key) of a raw event: customers by customer_id, the catalogue by
    product_id; unreadable payloads go to clickstream without a key."""
    try:
        obj = orjson.loads(raw)
        typ, props = obj.get("type", ""), obj.get("props") or {}
        cid = obj.get("customer_id")
    except Exception:
        return "clickstream", None
    if typ == "product_updated":
        return "product_updates", str(props.get("product_id", "")).encode()
    key = cid.encode() if isinstance(cid, str) else None
    if isinstance(typ, str) and typ.startswith("order_"):
        return "orders", key
    if isinstance(typ, str) and typ.startswith("message_"):
        return "outcomes", key
    if typ == "consent_changed":
        return "consents", key
    return "clickstream", key


class Traffic:
    """Generated events, their profiles in Redis under a private prefix, and a JSONL copy."""

    def __init__(self, tmp: Path, redis_url: str, customers: int = 600, days: float = 2,
                 seed: int = 23) -> None:
        self.gen = SyntheticRetail(SyntheticConfig(customers=customers, days=days, seed=seed))
        self.raws = list(self.gen.events())
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}:"
        RedisProfileStore(redis_url, self.prefix).put_many(self.gen.profiles())
        self.file = tmp / "events.jsonl"
        self.file.write_bytes(b"".join(r + b"\n" for r in self.raws))
        self.horizon = self.gen.end_ms

    def produce(self, kafka, names: dict[str, str], order: Iterable[str]) -> None:
        """Every event to its topic (keyed), topics produced in ``order``."""
        by_topic: dict[str, list] = {t: [] for t in TOPICS}
        for r in self.raws:
            t, key = topic_of(r)
            by_topic[t].append((key, r))
        for t in order:
            produce(kafka.bootstrap, names[t], by_topic[t])


def topic_names(run: str) -> dict[str, str]:
    return {t: f"{t}_{run}" for t in TOPICS}


def settings(kafka, redis_url: str, chdb_url: str, run: str, traffic: Traffic,
             **over) -> Settings:
    names = topic_names(run)
    return Settings(kafka_brokers=kafka.bootstrap, input_topics=list(names.values()),
                    catalogue_topics=[names["product_updates"]],
                    sends_topic=f"sends_{run}", dead_letter_topic=f"dead_{run}",
                    redis_url=redis_url, redis_key_prefix=traffic.prefix,
                    clickhouse_url=chdb_url, clickhouse_database=f"db_{run}",
                    kafka_tail=False, clock="replay", horizon_ms=traffic.horizon, **over)


def ids(chdb_url: str, database: str, sql: str) -> set:
    db = open_backend(chdb_url)
    try:
        return {r[0] for r in db.query_rows(sql.format(db=database))}
    finally:
        db.close()


def outcome(chdb_url: str, database: str) -> dict[str, set]:
    """What a run decided: send ids, decision ids and conversion ids (deduplicated views)."""
    return {"sends": ids(chdb_url, database, "SELECT send_id FROM {db}.sends"),
            "decisions": ids(chdb_url, database, "SELECT decision_id FROM {db}.decisions"),
            "conversions": ids(chdb_url, database,
                               "SELECT conversion_id FROM {db}.conversions")}


def topic_send_ids(kafka, topic: str, idle: float = 3.0, expected: int | None = None,
                   timeout: float = 90.0) -> list[str]:
    """Every send id on the sends topic, duplicates kept. With ``expected`` (the count the
    test knows is there), read until that many came (or ``timeout``) and then ``idle``
    seconds more for duplicates: an idle gap alone ends early when the broker is slow."""
    if expected is None:
        got = consume_all(kafka.bootstrap, topic, idle=idle)
    else:
        got = consume_all(kafka.bootstrap, topic, expected=expected, timeout=timeout,
                          linger=idle)
    return [k.decode() for k, _ in got if k]


def assert_sends_on_topic_once(kafka, topic: str, expected: set[str],
                               outbox: set[str] | None = None) -> list[str]:
    """Each of ``expected`` is on ``topic`` exactly once, and nothing else is. A shortfall
    is read again after a pause, and the failure says whether the missing commands are in
    the ``outbox`` (the flow had every delivery report: the broker acknowledged them) and
    what each partition's watermarks hold."""
    on_topic = topic_send_ids(kafka, topic, expected=len(expected))
    if set(on_topic) != expected:
        time.sleep(5)
        again = set(topic_send_ids(kafka, topic, expected=len(expected), timeout=30))
        missing = expected - again
        acked = "" if outbox is None else f"; of them in the outbox (acked): " \
                                         f"{len(missing & outbox)}"
        raise AssertionError(
            f"{len(expected)} sends decided; on the topic {len(set(on_topic))} distinct "
            f"({len(expected - set(on_topic))} missing, {len(set(on_topic) - expected)} "
            f"extra), re-read after 5 s: {len(missing)} missing{acked}; "
            f"watermarks {watermarks(kafka, topic)}")
    assert len(on_topic) == len(set(on_topic)), "duplicate send commands on the topic"
    return on_topic


def watermarks(kafka, topic: str) -> dict[int, tuple[int, int]]:
    """Partition → (low, high) watermark offsets, as the broker reports them."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"wm-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
    finally:
        c.close()


def env_of(s: Settings) -> dict[str, str]:
    """The CDP_* environment that makes `cdp-triggers run` use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"CDP_{name.upper()}"] = text
    return env


def cdp_run(s: Settings, *args: str) -> subprocess.Popen:
    """`cdp-triggers run` as its own process (its own chdb engine)."""
    return subprocess.Popen([sys.executable, "-m", "cdp_triggers.cli", "run", *args],
                            env=env_of(s), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
