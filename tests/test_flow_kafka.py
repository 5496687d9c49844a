"""Integration: real Tansu broker + real redis-server → the live flow module → chdb + sends
topic."""

from __future__ import annotations

import uuid

import orjson
import pytest
from bytewax.testing import cluster_main, run_main
from services import consume_all, produce

from cdp_triggers.events import Event, parse_event
from cdp_triggers.records import Send
from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from flows.live import build_live_flow
from sinks.clickhouse import open_backend
from state.profiles import DictProfileStore, RedisProfileStore
from tests.engine_helpers import engine, replay, trigger_semantics_dir
from tests.flow_helpers import kafka_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(own_kafka):
    """This module's own broker (see ``own_kafka``): its flows run several producers."""
    return own_kafka

TOPIC_OF = {"order_placed": "orders", "order_paid": "orders", "order_shipped": "orders",
            "order_delivered": "orders", "order_cancelled": "orders",
            "consent_changed": "consents"}


def _settings(kafka, redis_server, chdb_url, topics, **over) -> Settings:
    """Shipped triggers under a neutral policy (no caps, quiet hours or holdout): these
    tests check trigger semantics, whatever time of day CI runs them."""
    run = uuid.uuid4().hex[:8]
    over.setdefault("config_dir", trigger_semantics_dir())
    return Settings(kafka_brokers=kafka.bootstrap, input_topics=topics,
                    sends_topic=f"sends_{run}", dead_letter_topic=f"dead_{run}",
                    redis_url=redis_server.url, clickhouse_url=chdb_url,
                    clickhouse_database=f"it_{run}", kafka_tail=False, **over)



@pytest.mark.parametrize("workers", [1, 2])
def test_kafka_to_bytewax_to_clickhouse_and_sends_topic(kafka, redis_server, chdb_url, workers):
    # no catalogue updates: the pure replay below has no product step (see test_interest.py)
    gen = SyntheticRetail(SyntheticConfig(customers=400, days=2, seed=11,
                                          price_change_rate=0, stockout_rate=0))
    profiles = gen.profiles()
    RedisProfileStore(redis_server.url).put_many(profiles)
    raws = list(gen.events())
    topic = f"clickstream_{uuid.uuid4().hex[:8]}"
    # one effects partition, so one producer, whatever the workers (see ``own_kafka``)
    s = _settings(kafka, redis_server, chdb_url, [topic], clock="replay", horizon_ms=gen.end_ms,
                  sink_partitions=1)
    kafka.create_topics([topic, s.sends_topic, s.dead_letter_topic], partitions=4)
    produce(kafka.bootstrap, topic, [(kafka_key(r), r) for r in raws])

    flow = build_live_flow(s)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)

    # the same events through the pure engine (one partition per customer keeps their order)
    events = [e for r in raws if isinstance(e := parse_event(r), Event)]
    expected = [o for o in replay(engine(), events, gen.end_ms,
                                  DictProfileStore(profiles)) if isinstance(o, Send)]
    assert len(expected) > 10

    db = open_backend(chdb_url)
    try:
        rows = db.query_rows(f"SELECT send_id, channel FROM {s.clickhouse_database}.sends")
        assert sorted(r[0] for r in rows) == sorted(x.send_id for x in expected)
        [(rejected, dups)] = db.query_rows(
            f"SELECT countIf(reason != 'duplicate_event_id'),"
            f" countIf(reason = 'duplicate_event_id')"
            f" FROM {s.clickhouse_database}.rejected_events")
        assert (rejected, dups) == (gen.stats.bad, gen.stats.duplicates)
        statuses = dict(db.query_rows(
            f"SELECT status, count() FROM {s.clickhouse_database}.decisions GROUP BY status"))
        assert statuses["sent"] == len(expected) and statuses.get("cancelled", 0) > 0
    finally:
        db.close()

    sent = consume_all(kafka.bootstrap, s.sends_topic, expected=len(expected), timeout=30)
    assert sorted(k.decode() for k, _ in sent) == sorted(x.send_id for x in expected)
    body = orjson.loads(sent[0][1])
    assert body["send_id"] == sent[0][0].decode() and body["channel"] in ("push", "email", "sms")

    dead = consume_all(kafka.bootstrap, s.dead_letter_topic, expected=gen.stats.bad, timeout=30)
    assert len(dead) == gen.stats.bad
    assert all(orjson.loads(v)["reason"] and orjson.loads(v)["source"].startswith(topic)
               for _, v in dead)


def test_events_across_topics_in_live_mode(kafka, redis_server, chdb_url):
    """Live clock: carts older than the wait fire at once; an order on another topic cancels."""
    from cdp_triggers.clock import MINUTE, WallClock
    from state.profiles import Profile

    now = WallClock().now_ms()
    t0 = now - 3 * 60 * MINUTE
    run = uuid.uuid4().hex[:6]
    topics = {"clickstream": f"cs_{run}", "orders": f"or_{run}", "consents": f"co_{run}"}
    store = RedisProfileStore(redis_server.url)
    store.put_many([Profile(c, "Europe/Berlin", "de", frozenset({"email"}),
                            {"email:marketing": True})
                    for c in ("k1", "k2", "k3")])

    def ev(i, type_, cid, at_min, **props):
        return Event(f"{run}-{i}", type_, cid, t0 + at_min * MINUTE, props)

    events = [
        ev(1, "added_to_cart", "k1", 0, product_id="p1", price=5.0),
        ev(2, "added_to_cart", "k2", 0, product_id="p2", price=7.0),
        ev(3, "order_placed", "k2", 10, order_id="o2", total=7.0, currency="EUR", items=[]),
        ev(4, "added_to_cart", "k3", 0, product_id="p3", price=9.0),
        ev(5, "consent_changed", "k3", 5, channel="email", category="marketing", granted=False),
    ]
    s = _settings(kafka, redis_server, chdb_url, list(topics.values()), clock="live")
    kafka.create_topics([*topics.values(), s.sends_topic, s.dead_letter_topic], partitions=4)
    for e in events:
        topic = topics["orders"] if e.type == "order_placed" else (
            topics["consents"] if e.type == "consent_changed" else topics["clickstream"])
        produce(kafka.bootstrap, topic, [(e.customer_id.encode(), e.to_json())])
    produce(kafka.bootstrap, topics["clickstream"], [(b"k9", b'{"broken')])
    # one more event per customer after the others, so every key wakes with its facts known
    produce(kafka.bootstrap, topics["clickstream"],
            [(c.encode(), ev(10 + i, "product_viewed", c, 170, product_id="x").to_json())
             for i, c in enumerate(("k1", "k2", "k3"))])
    run_main(build_live_flow(s))

    db = open_backend(chdb_url)
    try:
        got = set(db.query_rows(
            f"SELECT customer_id, channel, concat(status, ':', reason)"
            f" FROM {s.clickhouse_database}.decisions WHERE trigger_id = 'abandoned_cart'"))
        rows = sorted(db.query_rows(f"SELECT customer_id, toString(trigger_id) "
                                    f"FROM {s.clickhouse_database}.sends"))
    finally:
        db.close()
    # k1: no push contact, so the reminder goes by e-mail (the discount is due a day later);
    # k2: the order on the other topic cancelled it although k2's later click was read too
    # (the clock waits for the slowest input partition); k3 revoked consent.
    assert got == {("k1", "push", "suppressed:no_contact"), ("k1", "email", "sent:"),
                   ("k2", "push", "cancelled:cancel_event:order_placed"),
                   ("k3", "push", "suppressed:no_contact"),
                   ("k3", "email", "suppressed:no_consent"),
                   ("k3", "sms", "suppressed:no_contact")}
    # k2's order 3 h ago is also unpaid (payment_reminder, 1 h) and its first (first_order_thanks,
    # 2 h): those go too; every command on the topic has its row, one each
    assert ("k1", "abandoned_cart") in rows and ("k2", "payment_reminder") in rows
    assert not {c for c, t in rows if t == "abandoned_cart"} - {"k1"}
    sent = consume_all(kafka.bootstrap, s.sends_topic, expected=len(rows), timeout=20)
    assert sorted((orjson.loads(v)["customer_id"], orjson.loads(v)["trigger_id"])
                  for _, v in sent) == rows


def test_cli_run_with_two_workers_and_recovery(kafka, redis_server, tmp_path):
    """`cdp-triggers run -w 2` as a platform team starts it: env settings, recovery dir."""
    import os
    import subprocess
    import sys

    gen = SyntheticRetail(SyntheticConfig(customers=150, days=2, seed=4))
    RedisProfileStore(redis_server.url).put_many(gen.profiles())
    raws = list(gen.events())
    run = uuid.uuid4().hex[:8]
    topic, sends = f"cli_in_{run}", f"cli_sends_{run}"
    kafka.create_topics([topic, sends, f"cli_dead_{run}"], partitions=4)
    produce(kafka.bootstrap, topic, [(kafka_key(r), r) for r in raws])
    env = {**os.environ, "CDP_KAFKA_BROKERS": kafka.bootstrap, "CDP_INPUT_TOPICS": f'["{topic}"]',
           "CDP_SENDS_TOPIC": sends, "CDP_DEAD_LETTER_TOPIC": f"cli_dead_{run}",
           "CDP_REDIS_URL": redis_server.url, "CDP_CLICKHOUSE_URL": f"chdb://{tmp_path}/ch",
           "CDP_KAFKA_TAIL": "false", "CDP_CLOCK": "replay", "CDP_HORIZON_MS": str(gen.end_ms),
           "CDP_RECOVERY_DIR": str(tmp_path / "recovery"),
           # one effects partition, so one producer: with two producers writing the same
           # partitions at once, Tansu (memory storage) was seen to lose acknowledged
           # messages now and then (rows 50, outbox 50, topic 41); under investigation
           "CDP_SINK_PARTITIONS": "1"}
    exe = [sys.executable, "-m", "cdp_triggers.cli"]
    done = subprocess.run([*exe, "run", "-w", "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "initialised 4 partitions" in done.stdout
    assert len(list((tmp_path / "recovery").glob("part-*.sqlite3"))) == 4
    q = subprocess.run([*exe, "sql", "SELECT count() AS n FROM sends"], env=env,
                       capture_output=True, text=True, timeout=60)
    n = int(q.stdout.split()[-1])
    assert n > 0
    got = consume_all(kafka.bootstrap, sends, expected=n, timeout=90)  # a loaded CI machine
    if len(got) != n:  # diagnose: rows vs outbox vs topic
        d = subprocess.run([*exe, "sql", "SELECT count() FROM dispatched"], env=env,
                           capture_output=True, text=True, timeout=60)
        again = consume_all(kafka.bootstrap, sends, expected=n, timeout=30)
        raise AssertionError(f"rows {n}, dispatched {d.stdout.split()[-1]}, on the topic "
                             f"{len(got)} then {len(again)}; stderr: {done.stderr[-1500:]}")


def test_catalogue_end_to_end_on_the_real_broker_with_two_workers(kafka, redis_server, chdb_url,
                                                                   tmp_path):
    """Every catalogue trigger through Kafka → 2 Bytewax workers → chdb. Customer events are
    read first; the flow stops and resumes from its recovery snapshot when the catalogue
    updates arrive (so the product step has seen the views: topics are not ordered)."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    from cdp_triggers.clock import DAY, MINUTE
    from tests.engine_helpers import reachable

    run = uuid.uuid4().hex[:6]
    t0 = 1_790_000_000_000
    n = iter(range(10_000))

    def ev(type_, cid, at_min, **props):
        return Event(f"{run}-{next(n)}", type_, cid, t0 + int(at_min * MINUTE), props)

    customers = ["cart", "ordered", "browse", "new", "ship", "vip", "fan"]
    RedisProfileStore(redis_server.url).put_many([reachable(c) for c in customers])
    first = [
        ev("added_to_cart", "cart", 0, product_id="p1", price=10.0, cart_id="k1"),
        ev("added_to_cart", "ordered", 0, product_id="p2", price=5.0, cart_id="k2"),
        ev("order_placed", "ordered", 10, order_id="o1", total=5.0, currency="EUR", items=[]),
        ev("product_viewed", "browse", 0, product_id="p7", price=3.0),
        ev("product_viewed", "browse", 10, product_id="p7", price=3.0),
        ev("signed_up", "new", 0),
        ev("order_shipped", "ship", 0, order_id="o9"),
        ev("segment_entered", "vip", 0, segment="vip"),
        ev("product_viewed", "fan", 0, product_id="p5", price=20.0),
    ]
    later = [ev("product_updated", "catalogue", 120, product_id="p5", in_stock=False),
             ev("product_updated", "catalogue", 130, product_id="p5", price=15.0),
             ev("product_updated", "catalogue", 180, product_id="p5", in_stock=True)]
    topics = {t: f"{t}_{run}" for t in ("clickstream", "orders", "product_updates")}
    s = _settings(kafka, redis_server, chdb_url, list(topics.values()), clock="replay",
                  catalogue_topics=[topics["product_updates"]],
                  recovery_dir=tmp_path)  # snapshots are copies when recovery is on
    kafka.create_topics([*topics.values(), s.sends_topic, s.dead_letter_topic], partitions=4)

    def topic_of(e):
        return topics["orders"] if e.type.startswith("order_") else topics["clickstream"]

    for e in first:
        produce(kafka.bootstrap, topic_of(e), [(e.customer_id.encode(), e.to_json())])
    init_db_dir(tmp_path, 2)
    recovery = RecoveryConfig(tmp_path)
    cluster_main(build_live_flow(s), addresses=[], proc_id=0, worker_count_per_proc=2,
                 recovery_config=recovery)  # no horizon yet: nothing fires at end of input
    produce(kafka.bootstrap, topics["product_updates"], [(b"p5", e.to_json()) for e in later])
    s2 = s.model_copy(update={"horizon_ms": t0 + 70 * DAY})
    cluster_main(build_live_flow(s2), addresses=[], proc_id=0, worker_count_per_proc=2,
                 recovery_config=recovery)

    db = open_backend(chdb_url)
    try:
        got = sorted(db.query_rows(f"SELECT trigger_id, customer_id, template, channel "
                                   f"FROM {s.clickhouse_database}.sends"))
        cancelled = db.query_rows(
            f"SELECT trigger_id, customer_id FROM {s.clickhouse_database}.decisions "
            f"WHERE status = 'cancelled'")
    finally:
        db.close()
    from operators.policy import assign_variant
    ac = engine().config.trigger("abandoned_cart")
    reminder = ("abandoned_cart_reminder_b" if assign_variant(ac, "cart").id == "b"
                else "abandoned_cart_reminder")
    assert got == sorted([  # no receipts in this run: the reminder cascades push → email → sms
        ("abandoned_cart", "cart", reminder, "push"),
        ("abandoned_cart", "cart", reminder, "email"),
        ("abandoned_cart", "cart", reminder, "sms"),
        ("abandoned_cart", "cart", "abandoned_cart_last_call", "push"),  # reminder not opened
        ("back_in_stock", "fan", "back_in_stock", "push"),
        ("browse_abandonment", "browse", "browse_abandonment", "push"),
        ("delivery_delayed", "ship", "delivery_delayed", "email"),  # never delivered
        ("first_order_thanks", "ordered", "first_order_thanks", "email"),
        ("order_status", "ship", "order_status", "email"),
        ("payment_reminder", "ordered", "payment_reminder", "email"),  # never paid …
        ("payment_reminder", "ordered", "payment_reminder", "sms"),  # … nor the e-mail opened
        ("post_purchase_cross_sell", "ordered", "cross_sell", "email"),
        ("second_order_nudge", "ordered", "second_order", "email"),
        ("price_drop", "fan", "price_drop", "push"),
        ("vip_welcome", "vip", "vip_welcome", "email"),
        ("welcome_series", "new", "welcome_1", "email"),
        ("welcome_series", "new", "welcome_2", "email"),
        ("welcome_series", "new", "welcome_3", "email"),
        ("win_back", "ordered", "win_back", "email"),
    ])
    assert cancelled == [("abandoned_cart", "ordered")]
    assert assign_variant(ac, "ordered").control is False


def test_a_backfill_shard_takes_what_is_queued_and_stops_asking_once_its_streams_ended(kafka):
    """Backfill reading (``_KafkaShard.next_batch``): a poll takes what librdkafka has
    queued without waiting for a full batch (it waits, 50 ms at most, only when nothing is
    queued), and once every stream of the shard has reported its end the broker is not
    asked again: the shard releases what it holds and ends. Every event is read once."""
    from flows.sources import AlignedKafkaSource

    topic = f"shard-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([topic], partitions=1)
    events = [Event(f"e{i}", "product_viewed", f"c{i % 7}", 1_790_000_000_000 + i * 1000,
                    {"product_id": "p1"}) for i in range(2500)]
    produce(kafka.bootstrap, topic, [(e.customer_id.encode(), e.to_json()) for e in events])
    source = AlignedKafkaSource([kafka.bootstrap], [topic], tail=False, batch=1000,
                                catalogue=[])
    [part] = source.list_parts()
    shard = source.build_part("in", part, None)

    class Counting:  # the consumer, its polls recorded: (timeout, messages, end reported)
        def __init__(self, consumer) -> None:
            self.consumer, self.polls = consumer, []

        def consume(self, n: int, timeout: float) -> list:
            msgs = self.consumer.consume(n, timeout)
            self.polls.append((timeout, len(msgs), any(m.error() for m in msgs)))
            return msgs

        def __getattr__(self, name: str):
            return getattr(self.consumer, name)

    shard.consumer = spy = Counting(shard.consumer)
    read: list[Event] = []
    try:
        while True:
            read += shard.next_batch()
    except StopIteration:
        pass
    finally:
        shard.close()
    assert [e.event_id for e in read] == [e.event_id for e in events]
    ended = next(i for i, p in enumerate(spy.polls) if p[2])
    assert ended == len(spy.polls) - 1  # nothing asked after the end was reported
    # a blocking poll only ever follows an immediate one that found nothing queued
    for i, (timeout, _, _) in enumerate(spy.polls):
        if timeout > 0:
            assert spy.polls[i - 1][:2] == (0, 0)
