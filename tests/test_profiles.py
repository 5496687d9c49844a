"""The Redis profile store against a real redis-server, and the demo's loud fallback."""

from __future__ import annotations

import pytest
from services import free_port

from cdp_triggers.settings import Settings
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from flows.app import open_profiles
from state.profiles import DictProfileStore, Profile, ProfileUnavailable, RedisProfileStore

pytestmark = pytest.mark.integration


def test_profiles_round_trip_in_one_pipelined_read(redis_server):
    store = RedisProfileStore(redis_server.url, prefix="t1:")
    a = Profile("a", "Europe/Berlin", "de-DE", frozenset({"email", "push"}),
                {"email:marketing": True, "push:marketing": False})
    b = Profile("b", "Asia/Tokyo", "ja-JP", frozenset(), {})
    assert store.put_many([a, b]) == 2
    got = store.get_many(["a", "b", "nobody"])
    assert got == {"a": a, "b": b}
    assert got["a"].consent("push", "marketing") is False
    assert got["a"].consent("sms", "marketing") is None
    store.set_consent("a", "email", "marketing", False)
    assert store.get("a").consent("email", "marketing") is False
    assert store.get("nobody") is None


def test_unreachable_redis_raises_profile_unavailable_not_none():
    store = RedisProfileStore(f"redis://127.0.0.1:{free_port()}/0")
    assert store.ping() is False
    with pytest.raises(ProfileUnavailable):
        store.get("a")


def test_demo_loads_redis_through_the_profile_import_when_it_answers(redis_server):
    gen = SyntheticRetail(SyntheticConfig(customers=50, days=1))
    stale = RedisProfileStore(redis_server.url)
    stale.set_consent("c000007", "push", "transactional", False)  # left by an earlier run
    store, origin, said = open_profiles(Settings(redis_url=redis_server.url), "generated",
                                        gen.profiles(), gen.profile_records())
    assert origin == "redis" and isinstance(store, RedisProfileStore)
    # loaded through the CDP profile import: the same profile comes back out of Redis
    assert [store.get(p.customer_id) for p in gen.profiles()] == gen.profiles()
    assert "loaded 50 customers into Redis" in said and "0 invalid contacts" in said


def test_demo_says_so_when_redis_is_absent():
    gen = SyntheticRetail(SyntheticConfig(customers=50, days=1))
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    store, origin, said = open_profiles(Settings(redis_url=url), "generated", gen.profiles())
    assert origin == "generated" and isinstance(store, DictProfileStore)
    assert "Redis is NOT reachable at redis://:***@127.0.0.1" in said
    assert "hunter2" not in said  # no secret in what is printed
    assert store.get("c000001") == gen.profiles()[0]


def _no_round_trips(store: RedisProfileStore, monkeypatch) -> None:
    def refuse(ids):
        raise AssertionError(f"a round trip for {list(ids)}")
    monkeypatch.setattr(store, "get_many", refuse)


def test_warmed_profiles_answer_lookups_without_a_round_trip(redis_server, monkeypatch):
    """One pipelined read warms a batch's customers; the engine's lookups that follow
    (those without a profile included) are answered from it."""
    store = RedisProfileStore(redis_server.url, prefix="warm1:")
    a = Profile("a", "Europe/Berlin", "de-DE", frozenset({"email"}), {"email:marketing": True})
    store.put_many([a])
    store.warm(["a", "nobody", "a"])
    _no_round_trips(store, monkeypatch)
    assert store.get("a") == a and store.get("nobody") is None
    assert store.warmed == 2


def test_a_warmed_profile_is_read_again_once_old_or_after_a_write(redis_server, monkeypatch):
    import state.profiles as profiles

    store = RedisProfileStore(redis_server.url, prefix="warm2:")
    a = Profile("a", "UTC", "en", frozenset({"email"}), {"email:marketing": True})
    store.put_many([a])
    store.warm(["a"])
    store.set_consent("a", "email", "marketing", False)  # this process wrote: read again
    assert store.get("a").consent("email", "marketing") is False
    store.warm(["a"])
    monkeypatch.setattr(profiles, "PREFETCH_MAX_AGE_S", -1.0)  # everything warmed is old
    RedisProfileStore.set_consent(RedisProfileStore(redis_server.url, prefix="warm2:"),
                                  "a", "email", "marketing", True)  # another writer
    assert store.get("a").consent("email", "marketing") is True
    assert store.warmed == 0


def test_warming_an_unreachable_store_never_raises_and_lookups_still_say_so():
    store = RedisProfileStore(f"redis://127.0.0.1:{free_port()}/0")
    store.warm(["a", "b"])
    with pytest.raises(ProfileUnavailable):
        store.get("a")
    store.warm(["a"])  # while failing fast: not even tried
    with pytest.raises(ProfileUnavailable):
        store.get("b")


def _decided(s: Settings, events, prefetch: bool, loopback: bool = False) -> tuple:
    """One replay of the flow with Redis profiles, reading ahead or each profile when
    asked: (send ids, decisions, lookups answered ahead, profiles read alone)."""
    from bytewax.testing import run_main

    from cdp_triggers.records import Decision, Send
    from flows.app import build_run

    run = build_run(s, "generator", generator=events, profiles="redis", outputs="memory",
                    loopback=loopback)
    store = run.runtime.prefetch.__self__
    alone = []
    real = store.get_many
    store.get_many = lambda ids: (alone.append(1) if len(ids) == 1 else None) or real(ids)
    if not prefetch:
        run.runtime.prefetch = None
    run_main(run.flow)
    got = run.captured or []
    return ({r.send_id for r in got if isinstance(r, Send)},
            {(r.decision_id, r.status, r.reason) for r in got if isinstance(r, Decision)},
            store.warmed, len(alone))


def test_prefetching_profiles_changes_no_decision(redis_server):
    """The shipped config over generated traffic with Redis profiles: the same sends and
    decisions with the batch prefetch as with one read per customer, and the prefetch
    really answered the lookups."""
    gen = SyntheticRetail(SyntheticConfig(customers=400, days=3, seed=23))
    s = Settings(redis_url=redis_server.url, redis_key_prefix="warm3:", clock="replay",
                 horizon_ms=gen.end_ms)
    RedisProfileStore(redis_server.url, prefix="warm3:").put_many(gen.profiles())
    *one_by_one, _, _ = _decided(s, gen.events, prefetch=False, loopback=True)
    *batched, warmed, _ = _decided(s, gen.events, prefetch=True, loopback=True)
    assert one_by_one[0] and batched == one_by_one
    assert warmed > 100


def test_a_config_with_rare_decisions_reads_its_deciding_customers_ahead(redis_server, tmp_path):
    """abandoned_cart alone over generated traffic with Redis profiles: warming whole
    batches steps aside (few customers decide), yet the customers whose timers fire are
    read ahead, with the batch that fires them or, at the end of input, a chunk at a time
    in Bytewax's key order: few lookups go to Redis alone, and every decision is that of
    a run that reads each profile when asked."""
    import shutil

    from config.loader import DEFAULT_CONFIG_DIR

    root = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for f in (root / "triggers").glob("*.yaml"):
        if f.stem != "abandoned_cart":
            f.unlink()
    gen = SyntheticRetail(SyntheticConfig(customers=1500, days=3, seed=29))
    s = Settings(redis_url=redis_server.url, redis_key_prefix="warm8:", clock="replay",
                 horizon_ms=gen.end_ms, config_dir=root)
    RedisProfileStore(redis_server.url, prefix="warm8:").put_many(gen.profiles())
    *one_by_one, _, asked = _decided(s, gen.events, prefetch=False)
    *ahead, warmed, alone = _decided(s, gen.events, prefetch=True)
    assert one_by_one[0] and ahead == one_by_one
    assert asked > 150 and warmed > 0.8 * asked and alone < 0.2 * asked, (asked, warmed, alone)


def test_warming_that_lookups_do_not_use_is_mostly_skipped(redis_server, monkeypatch):
    """A config whose decisions are rare asks for few warmed profiles: below the minimum
    share of use, only one batch in PREFETCH_PROBE is read (to notice when use grows)."""
    import state.profiles as profiles

    store = RedisProfileStore(redis_server.url, prefix="warm4:")
    reads = []
    real = store.get_many
    monkeypatch.setattr(store, "get_many", lambda ids: reads.append(len(ids)) or real(ids))
    for b in range(4):  # 2,000 warmed, none asked for
        store.warm([f"c{b}-{i}" for i in range(500)])
    assert len(reads) == 4
    for b in range(32):
        store.warm([f"d{b}-{i}" for i in range(10)])
    assert len(reads) == 4 + 32 // profiles.PREFETCH_PROBE
    warmed = len(reads)
    for b in range(200):  # now every profile is asked for: probes are used, warming resumes
        ids = [f"e{b}-{i}" for i in range(100)]
        store.warm(ids)
        for cid in ids:
            store.get(cid)
        if b >= 190:  # every batch warmed again: one read, no lookup goes alone
            assert reads[-1] == 100 and len(reads) == warmed + 1
        warmed = len(reads)


def test_reads_sure_to_be_asked_are_made_while_warming_steps_aside(redis_server, monkeypatch):
    """Below the minimum share of use, a batch still reads the customers its caller is
    sure will be asked (their timers fire), and those reads do not count toward the share
    (else they would turn warming every whole batch back on)."""
    store = RedisProfileStore(redis_server.url, prefix="warm7:")
    reads = []
    real = store.get_many
    monkeypatch.setattr(store, "get_many", lambda ids: reads.append(list(ids)) or real(ids))
    for b in range(4):  # 2,000 warmed, none asked for: use is under the minimum
        store.warm([f"c{b}-{i}" for i in range(500)])
    reads.clear()
    for b in range(1, 15):
        ids = [f"d{b}-{i}" for i in range(100)]
        store.warm(ids, sure=ids[:b])
        for cid in ids[:b]:
            store.get(cid)
    assert [len(r) for r in reads] == list(range(1, 15))  # the sure ones only, each in one read
    assert store.warmed == sum(range(1, 15)) and store._use[1] == 0
    store.warm([f"e-{i}" for i in range(100)], sure=[])  # none sure: nothing read
    assert len(reads) == 14
    store.warm([f"f-{i}" for i in range(100)], sure=[])  # the 16th batch: a probe, read whole
    assert len(reads) == 15 and len(reads[-1]) == 100


def test_a_warm_read_that_overlaps_a_write_of_this_process_is_not_kept(redis_server):
    store = RedisProfileStore(redis_server.url, prefix="warm5:")
    store.put_many([Profile("a", "UTC", "en", frozenset({"email"}), {"email:marketing": True})])
    real = store.get_many

    def read_then_someone_writes(ids):
        got = real(ids)  # the answer from before the write below
        store.set_consent("a", "email", "marketing", False)
        return got

    store.get_many = read_then_someone_writes
    store.warm(["a"])
    store.get_many = real
    assert store.get("a").consent("email", "marketing") is False and store.warmed == 0


def test_many_batches_warmed_before_their_lookups_still_answer_them(redis_server, monkeypatch):
    """After a stall the source hands over many small batches, each warmed by the step
    before the engine, before the engine looks up the first one's customers: every one of
    them is answered from what was warmed (not only the last few batches)."""
    import state.profiles as profiles

    store = RedisProfileStore(redis_server.url, prefix="warm5:")
    store.put_many([Profile(f"c{i}", "UTC", "en", frozenset({"email"}), {})
                    for i in range(0, 3000, 7)])
    monkeypatch.setattr(profiles, "PREFETCH_MERGE", 40)  # batches of 10 merged by fours
    monkeypatch.setattr(profiles, "PREFETCH_MIN_USE", 0.0)  # (no lookups yet: warm anyway)
    for b in range(300):
        store.warm([f"c{b * 10 + i}" for i in range(10)])
    _no_round_trips(store, monkeypatch)
    for i in range(3000):
        assert (store.get(f"c{i}") is not None) is (i % 7 == 0)
    assert store.warmed == 3000
    assert len(store._warm) < 300  # small batches were merged into fewer dicts


def test_warmed_profiles_are_bounded_in_number(redis_server, monkeypatch):
    import state.profiles as profiles

    store = RedisProfileStore(redis_server.url, prefix="warm6:")
    monkeypatch.setattr(profiles, "PREFETCH_MAX_IDS", 1000)
    monkeypatch.setattr(profiles, "PREFETCH_MERGE", 0)
    monkeypatch.setattr(profiles, "PREFETCH_MIN_USE", 0.0)
    for b in range(10):
        store.warm([f"c{b}-{i}" for i in range(300)])
    assert sum(len(g) for _, g, _ in store._warm) <= 1000
    assert "c9-299" in store._warm[-1][1]  # the newest kept, the oldest gone


def test_customers_due_at_once_in_a_live_run_read_their_profiles_ahead(redis_server, tmp_path):
    """A live run in which 300 customers' reminders fall due at the same instant (one wave
    of notifications, like a date campaign at 10:00): Bytewax wakes them in key order and
    their profiles are read ahead in that order, a few round trips for all of them, with
    the decisions of a run that reads each profile alone. (Wall clock: the policy is
    neutral, so the hour does not matter.)"""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from cdp_triggers.clock import WallClock, WatermarkClock
    from cdp_triggers.events import Event
    from cdp_triggers.records import Decision
    from config.loader import load_config
    from flows.pipeline import engine_streams
    from flows.sources import RawEvent
    from operators.engine import Engine
    from operators.keyed import EngineRuntime
    from tests.engine_helpers import cart, reachable
    from tests.flow_helpers import IdleSource, short_wait_config

    root = short_wait_config(tmp_path, inactivity="4s")
    (root / "policy.yaml").write_text("late_event_grace: 0s\n")
    cfg = load_config(root)
    ids = [f"w{i:04d}" for i in range(300)]
    RedisProfileStore(redis_server.url, prefix="wave:").put_many([reachable(c) for c in ids])

    def run(prefetch: bool) -> tuple[list, int]:
        now = WallClock().now_ms()  # each run's carts now: due together 4 s later
        raws = [RawEvent(Event(f"e-{c}", "added_to_cart", c, now, cart(0, customer=c).props)
                         .to_json(), "t") for c in ids]
        store = RedisProfileStore(redis_server.url, prefix="wave:")
        alone = []
        real = store.get_many
        store.get_many = lambda ids: (alone.append(1) if len(ids) == 1 else None) or real(ids)
        runtime = EngineRuntime(Engine(cfg), lambda: store.get, mode="live",
                                clock=WatermarkClock(),
                                prefetch=store.warm if prefetch else None)
        flow = Dataflow("wave")
        records, _ = engine_streams(flow, IdleSource(raws, idle_s=5.5), runtime)
        got: list = []
        op.output("out", records, TestingSink(got))
        run_main(flow)
        return sorted((d.customer_id, d.step, d.channel, d.status, d.reason) for d in got
                      if isinstance(d, Decision)), len(alone)

    plain, asked = run(False)
    ahead, alone = run(True)
    assert {d[0] for d in plain} == set(ids) and ahead == plain
    assert asked >= 300 and alone <= 10, (asked, alone)


def test_a_lone_timer_does_not_pay_for_a_scan_of_every_customer():
    """Which customers are due is found by scanning the timers; the scan is made only once
    the lone reads since the last one would have cost more than it (a burst), then each
    due customer in key order reads the next chunk ahead, and a later timer of a customer
    on that list is not taken as covered by it."""
    from config.loader import load_config
    from operators.engine import Engine
    from operators.keyed import READ_AHEAD, READ_COST, SCAN_COST, EngineRuntime

    reads: list[list[str]] = []
    rt = EngineRuntime(Engine(load_config()), lambda: lambda cid: None,
                       prefetch=lambda ids, sure: reads.append(list(sure)))
    rt.timers = {f"c{i:06d}": 1_000 + i for i in range(100_000)}
    scan_after = -(-len(rt.timers) * SCAN_COST // READ_COST)  # lone reads a scan is worth
    for i in range(scan_after - 1):
        rt.read_ahead(f"c{i:06d}", 2_000)
    assert reads == []  # a few timers: one read each, no scan
    rt.read_ahead(f"c{scan_after - 1:06d}", 2_000)  # a burst: the scan pays
    assert reads[0] == [f"c{i:06d}" for i in range(scan_after - 1, scan_after - 1 + READ_AHEAD)]
    for i in range(scan_after, 1_001):  # the rest of the wave, in key order
        rt.read_ahead(f"c{i:06d}", 2_000)
    assert sum(map(len, reads)) == 1_001 - (scan_after - 1) and len(reads) <= 5
    rt.timers["c000500"] = 90_000  # fired, then due again later: not covered any more
    before = len(reads)
    rt.read_ahead("c000500", 90_000)
    assert len(reads) == before and rt._unplanned == 1  # counts toward the next scan


def test_profiles_read_share_their_parts_across_customers():
    """A profile is kept in each customer's state: read from Redis (or restored from a
    snapshot), its zone, locale, contact set and consent map are one object for all the
    customers that have equal ones (a private copy each was ~900 B a customer), and the
    shared consent map refuses writes and still pickles as a plain dict."""
    import pickle

    from cdp_triggers.records import ReadOnlyMap
    from state.customer import CustomerState

    h = {b"tz": b"Europe/Berlin", b"locale": b"de-DE", b"contacts": b"email,push",
         b"consent:email:marketing": b"1", b"consent:push:marketing": b"0"}
    a, b = Profile.from_redis("a", dict(h)), Profile.from_redis("b", dict(h))
    assert a.consents == {"email:marketing": True, "push:marketing": False}
    for part in ("timezone", "locale", "contacts", "consents"):
        assert getattr(a, part) is getattr(b, part), part
    with pytest.raises(TypeError):
        a.consents["sms:marketing"] = True  # type: ignore[index]
    st = CustomerState("a")
    st.profile = a
    back = CustomerState.from_bytes(st.to_bytes())
    assert back.profile == a and back.profile.consents is a.consents
    assert type(pickle.loads(pickle.dumps(a.consents))) is dict
    assert isinstance(a.consents, ReadOnlyMap)


def test_customers_with_nothing_due_never_make_the_read_ahead_scan():
    """The end of input wakes every customer, most with nothing due: those read nothing
    and count toward no scan (they once did, and a replay's end rescanned the registry
    every few customers: the cart-only flow ran at less than half its speed)."""
    from config.loader import load_config
    from operators.engine import Engine
    from operators.keyed import EngineRuntime

    reads: list[list[str]] = []
    rt = EngineRuntime(Engine(load_config()), lambda: lambda cid: None,
                       prefetch=lambda ids, sure: reads.append(list(sure)))
    rt.timers = {f"c{i:06d}": (1_000 if i % 1000 == 0 else 10**12) for i in range(20_000)}
    for i in range(20_000):
        if i % 1000:
            rt.read_ahead(f"c{i:06d}", 2_000)
    assert reads == [] and rt._unplanned == 0 and rt._ahead is None
    for i in range(0, 20_000, 1000):  # the 20 due ones: lone reads, then one scan pays
        rt.read_ahead(f"c{i:06d}", 2_000)
    assert rt._ahead is not None and rt._ahead[1] == [f"c{i:06d}" for i in range(0, 20_000, 1000)]


def test_a_read_asks_only_for_what_the_engine_reads_and_gives_the_same_profile(redis_server):
    """``get_many`` asks for the engine's fields by name (never the contact values, nor a
    CDP's other fields) and builds the same profile as from the whole hash; a hash with
    none of those fields is a profile with the defaults, a missing one is no profile."""
    import redis

    store = RedisProfileStore(redis_server.url, prefix="t9:")
    r = redis.Redis.from_url(redis_server.url)
    full = {"tz": "Europe/Berlin", "locale": "de-DE", "contacts": "email,sms,push",
            "email": "anna@example.com", "phone": "+4915112345678", "push_token": "tok",
            "invalid:sms": "1", "invalid:push": "0", "consent:email:marketing": "1",
            "consent:sms:transactional": "0", "birthday": "02-29",
            "registered_at": "1790000000000", "ts": "1790000000001", "loyalty_tier": "gold"}
    r.hset("t9:full", mapping=full)
    r.hset("t9:other", mapping={"email": "bob@example.com", "loyalty_tier": "none"})
    r.hset("t9:bounced", mapping={"invalid:email": "1"})
    got = store.get_many(["full", "other", "bounced", "nobody"])
    assert list(got) == ["full", "other", "bounced"]
    for cid in got:
        assert got[cid] == Profile.from_redis(cid, r.hgetall(f"t9:{cid}"))
    assert got["full"].contacts == frozenset({"email", "push"})  # sms invalid
    assert got["other"] == Profile("other")


def test_a_profile_read_covers_every_channel_a_config_can_name():
    """``READ_FIELDS`` asks for consents and invalid flags of ``records.CHANNELS``: the
    channels a trigger config may name are exactly those."""
    import typing

    from cdp_triggers.records import CHANNELS
    from config.schema import Channel
    from state.profiles import READ_FIELDS

    assert set(typing.get_args(Channel)) == set(CHANNELS)
    assert {f"invalid:{ch}" for ch in CHANNELS} <= set(READ_FIELDS)
