"""Profile dates for date triggers: birthday and registration time through the CDP import
(file and checks), the Redis store and back; profiles written before them still load."""

from __future__ import annotations

import uuid

import pytest
import redis
from engine_helpers import T0, at, engine, ev, replay, sends

from cdp_triggers.clock import DAY
from cdp_triggers.records import Profile
from flows.profiles_in import Refused, import_file, to_write
from state.profiles import DictProfileStore, RedisProfileStore


def test_to_write_checks_dates() -> None:
    w, _ = to_write({"customer_id": "c1", "birthday": "1990-07-04",
                     "registered_at": "2021-05-01T10:00:00Z"}, default_ts=0)
    assert w.set["birthday"] == "07-04"  # the year is not kept
    assert w.set["registered_at"] == "1619863200000"
    w, _ = to_write({"customer_id": "c1", "registered_at": 1_600_000_000_000}, default_ts=0)
    assert w.set["registered_at"] == "1600000000000" and "birthday" not in w.set
    for bad in ({"birthday": "31.12."}, {"birthday": "1990-02-30"},
                {"registered_at": "last year"}, {"registered_at": True}):
        with pytest.raises(Refused) as e:
            to_write({"customer_id": "c1", **bad}, default_ts=0)
        assert e.value.reason == f"bad_{next(iter(bad))}"


def test_profile_redis_fields_round_trip_and_old_profiles_load() -> None:
    p = Profile("c1", "Europe/Berlin", "de-DE", frozenset({"email"}), {"email:marketing": True},
                "02-29", 1_600_000_000_000)
    h = p.to_redis()
    assert h["birthday"] == "02-29" and h["registered_at"] == "1600000000000"
    assert Profile.from_redis("c1", h) == p
    old = {b"tz": b"UTC", b"locale": b"en", b"contacts": b"push"}  # before these fields
    q = Profile.from_redis("c2", old)
    assert (q.birthday, q.registered_at, q.contacts) == ("", 0, frozenset({"push"}))
    junk = Profile.from_redis("c3", {"birthday": "someday", "registered_at": "x"})
    assert (junk.birthday, junk.registered_at) == ("", 0)


def test_dict_store_updates_keep_the_dates() -> None:
    s = DictProfileStore([Profile("c1", birthday="05-05", contacts=frozenset({"email"}))])
    s.apply_updates([("c1", "consent:email:marketing", "0"), ("c1", "invalid:email", "1")])
    s.set_consent("c1", "push", "marketing", True)
    assert s.get("c1").birthday == "05-05"


@pytest.mark.integration
def test_imported_birthday_reaches_the_birthday_trigger(redis_server, tmp_path) -> None:
    """CSV import → Redis → the engine's first plan reads it → a greeting on the day."""
    store = RedisProfileStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:6]}:")
    f = tmp_path / "p.csv"
    f.write_text("customer_id,email,push_token,tz,birthday,consent:email:marketing,"
                 "consent:push:marketing\n"
                 "c1,c1@example.com,tok-1,Europe/Berlin,1988-10-01,true,true\n"
                 "c2,c2@example.com,,UTC,10/01/1988,true,\n")
    counts = import_file(f, store)
    assert counts.loaded == 1 and dict(counts.refused) == {"bad_birthday": 1}
    raw = redis.Redis.from_url(store.url, decode_responses=True).hgetall(store.prefix + "c1")
    assert raw["birthday"] == "10-01"
    out = replay(engine(), [ev("product_viewed", 0, "c1", product_id="p")], T0 + 20 * DAY,
                 store)
    got = sends(at(out, "birthday"))
    assert [(s.channel, s.variables["key"]) for s in got] == [("email", "2026-10-01"),
                                                              ("push", "2026-10-01")]


def test_synthetic_customers_have_birthdays() -> None:
    from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail, birthday_of

    gen = SyntheticRetail(SyntheticConfig(customers=300, days=3, new_customer_rate=0.3))
    profiles = gen.profiles()
    given = [p for p in profiles if p.birthday]
    assert 0.6 < len(given) / len(profiles) < 0.8  # 30 % do not give one
    assert all(p.birthday == (birthday_of(p.customer_id) or "") for p in profiles)
    for rec in gen.profile_records()[:50]:  # through the import's checks unchanged
        w, _ = to_write(rec, default_ts=0)
        assert w.set.get("birthday") == (birthday_of(rec["customer_id"]) or None)
    import orjson

    signups = []
    for raw in gen.events():  # (the stream holds some deliberately bad payloads)
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(e, dict) and e.get("type") == "signed_up":
            signups.append(e)
    assert signups and all(e["props"].get("birthday") == birthday_of(e["customer_id"])
                           for e in signups)
