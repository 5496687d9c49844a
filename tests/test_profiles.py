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
