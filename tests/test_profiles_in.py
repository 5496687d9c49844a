"""Profiles from the CDP: contacts normalised, bulk import, the profiles topic (real
redis-server and Tansu broker), and no contact value in any log line."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import redis
from services import produce

from flows.profiles_in import consume, import_file, to_write
from state.contacts import normalise_email, normalise_phone, timezone_for_phone
from state.profiles import RedisProfileStore

pytestmark = pytest.mark.integration


def _store(redis_server) -> RedisProfileStore:
    return RedisProfileStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:6]}:")


def _hash(store: RedisProfileStore, cid: str) -> dict[str, str]:
    r = redis.Redis.from_url(store.url, decode_responses=True)
    return r.hgetall(store.prefix + cid)


def test_contacts_normalised():
    assert normalise_phone("0151 2345 6789", "DE") == "+4915123456789"
    assert normalise_phone("+49 (0)151-23456789") == "+4915123456789"
    assert normalise_phone("0151 2345 6789", None) is None  # no region: cannot read it
    assert normalise_phone("12", "DE") is None
    assert normalise_email("  John.Doe@Example.COM ") == "john.doe@example.com"
    assert normalise_email("john@@example.com") is None
    assert normalise_email("no-at-sign") is None
    assert timezone_for_phone("+4915123456789") == "Europe/Berlin"
    assert timezone_for_phone("+12025550143") is None  # +1 is shared by many countries


def test_record_normalised_on_the_way_in(monkeypatch):
    monkeypatch.delenv("CDP_DEFAULT_PHONE_REGION", raising=False)
    w, invalid = to_write({"op": "upsert", "customer_id": "c1", "ts": 5, "locale": "de-DE",
                           "phone": "0151 23456789", "email": " A.B@Example.de "})
    assert invalid == []
    assert w.set["phone"] == "+4915123456789" and w.set["tz"] == "Europe/Berlin"
    assert w.set["email"] == "a.b@example.de" and sorted(w.add) == ["email", "sms"]
    monkeypatch.setenv("CDP_DEFAULT_PHONE_REGION", "US")
    w, _ = to_write({"op": "upsert", "customer_id": "c2", "ts": 5, "phone": "202-555-0143"})
    assert w.set["phone"] == "+12025550143" and "tz" not in w.set
    w, invalid = to_write({"op": "upsert", "customer_id": "c3", "ts": 5, "phone": "123",
                           "email": "nope@", "tz": "Asia/Tokyo"})
    assert sorted(invalid) == ["email", "sms"]
    assert "phone" not in w.set and "email" not in w.set
    assert w.set["invalid:sms"] == "1" and w.set["invalid:email"] == "1"
    assert w.set["tz"] == "Asia/Tokyo"


def test_invalid_contacts_recorded_not_kept(redis_server):
    store = _store(redis_server)
    import_path_records = [
        {"op": "upsert", "customer_id": "a", "ts": 1, "email": "a@example.com",
         "phone": "+4915123456789", "push_token": "tok-a"},
    ]
    store.write_profiles([to_write(r)[0] for r in import_path_records])
    assert store.get("a").contacts == {"email", "sms", "push"}
    w, _ = to_write({"op": "upsert", "customer_id": "a", "ts": 2, "phone": "not a phone",
                     "email": "bad@@x"})
    assert store.write_profiles([w]) == [True]
    h = _hash(store, "a")
    assert h["invalid:sms"] == "1" and h["invalid:email"] == "1"
    assert "phone" not in h and "email" not in h and h["push_token"] == "tok-a"
    assert store.get("a").contacts == {"push"}


def test_import_csv_and_jsonl_with_counts(redis_server, tmp_path):
    store = _store(redis_server)
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(
        "customer_id,email,phone,locale,tz,consent:email:marketing,consent:sms:marketing\n"
        "c1,C1@Example.com,0151 23456789,de-DE,,true,false\n"
        "c2,c2@example.com,,en-US,America/Chicago,1,\n"
        "c3,broken@,+1 202 555 0143,en-US,,false,\n"
        "c4,c4@example.com,,en-GB,Not/AZone,,\n"
        ",nobody@example.com,,,,,\n")
    counts = import_file(csv_file, store, chunk=2)
    assert (counts.loaded, counts.invalid_contact, counts.refused_total) == (3, 1, 2)
    assert dict(counts.refused) == {"bad_tz": 1, "bad_customer_id": 1}
    got = store.get_many(["c1", "c2", "c3", "c4"])
    assert set(got) == {"c1", "c2", "c3"}
    assert got["c1"].timezone == "Europe/Berlin" and got["c1"].contacts == {"email", "sms"}
    assert got["c1"].consent("email", "marketing") is True
    assert got["c1"].consent("sms", "marketing") is False
    assert got["c3"].contacts == {"sms"} and got["c3"].timezone == ""
    assert _hash(store, "c1")["email"] == "c1@example.com"

    jsonl = tmp_path / "p.jsonl"
    lines = [json.dumps({"op": "upsert", "customer_id": f"j{i}", "ts": 10,
                         "email": f"j{i}@example.com", "push_token": f"tok{i}",
                         "consents": {"push:marketing": True}}) for i in range(250)]
    lines += ["{not json", json.dumps({"op": "merge", "customer_id": "x", "ts": 1}),
              json.dumps({"op": "upsert", "customer_id": "j0", "ts": 10,
                          "consents": {"fax:marketing": True}}),
              json.dumps({"op": "upsert", "customer_id": "j1", "ts": 11, "phone": "999"})]
    jsonl.write_text("\n".join(lines) + "\n")
    counts = import_file(jsonl, store, chunk=100)
    assert (counts.loaded, counts.invalid_contact, counts.refused_total) == (251, 1, 3)
    assert dict(counts.refused) == {"bad_json": 1, "bad_op": 1, "bad_consents": 1}
    assert store.get("j7").contacts == {"email", "push"}
    assert _hash(store, "j1")["invalid:sms"] == "1"


def test_topic_consumer_last_writer_wins_by_event_time(redis_server, kafka, caplog):
    store = _store(redis_server)
    topic = f"profiles-{uuid.uuid4().hex[:6]}"
    kafka.create_topics([topic], partitions=2)

    def rec(**kw) -> tuple[bytes, bytes]:
        return kw["customer_id"].encode(), json.dumps(kw).encode()

    produce(kafka.bootstrap, topic, [
        rec(op="upsert", customer_id="u1", ts=200, email="new@example.com", locale="fr-FR",
            phone="06 12 34 56 78", consents={"email:marketing": True}),
        rec(op="upsert", customer_id="u1", ts=100, email="old@example.com",
            consents={"email:marketing": False}),  # older, read late: ignored
        rec(op="upsert", customer_id="u2", ts=100, email="u2@example.com"),
        rec(op="delete", customer_id="u2", ts=300),
        rec(op="upsert", customer_id="u2", ts=250, email="zombie@example.com"),  # before delete
        rec(op="upsert", customer_id="u3", ts=100, push_token="tok"),
        rec(op="upsert", customer_id="u3", ts=150, push_token=None),  # the token is gone
        (b"u4", b"{broken"),
        (b"u5", json.dumps({"op": "upsert", "customer_id": "u6", "ts": 1}).encode()),
        rec(op="upsert", customer_id="u7", email="u7@example.com"),  # no ts on the topic
        rec(op="upsert", customer_id="u8", ts=1, phone="+49 151 00000000000000"),
    ])
    with caplog.at_level(logging.DEBUG):
        counts = consume(kafka.bootstrap, topic, store, group=f"g-{topic}", idle_exit_s=3.0)
    assert counts.refused == {"bad_json": 1, "key_mismatch": 1, "bad_ts": 1}
    assert (counts.loaded, counts.stale, counts.invalid_contact) == (6, 2, 1)
    u1 = _hash(store, "u1")
    assert u1["email"] == "new@example.com" and u1["consent:email:marketing"] == "1"
    assert u1["phone"] == "+33612345678" and u1["tz"] == "Europe/Paris" and u1["ts"] == "200"
    assert store.get("u2") is None
    assert store.get("u3").contacts == frozenset() and "push_token" not in _hash(store, "u3")
    assert store.get("u8").contacts == frozenset()
    # committed after the writes: the same group reads nothing again
    again = consume(kafka.bootstrap, topic, store, group=f"g-{topic}", idle_exit_s=1.0)
    assert again.loaded == again.stale == again.refused_total == 0

    # no contact value in any log line (customer ids and reasons only)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text and "u4" in text
    for secret in ("@example.com", "0612345678", "+336", "06 12 34", "tok", "151 0000"):
        assert secret not in text, secret
