"""Profiles from the CDP into the Redis profile store: records checked, contacts normalised,
written last-writer-wins by event time. Two ways in, one path:

- :func:`import_file`: a bulk load from JSONL or CSV, pipelined in chunks;
- :func:`consume`: the ``profiles`` topic (key = customer_id) in a consumer group; offsets
  are committed after the batch's Redis writes (at least once; a re-applied write is a
  no-op under last-writer-wins).

A bad record is refused with a reason (counted, logged rate-limited, never raised). An
invalid contact is recorded as ``invalid:CH`` = 1 and not kept. Log lines name customers
and reasons only: never an address, number or token.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cdp_triggers import calendar
from cdp_triggers.logs import RateLimited, StateLog, kafka_error_logger
from cdp_triggers.records import CATEGORIES, CHANNELS
from state.contacts import (
    normalise_email,
    normalise_phone,
    normalise_push_token,
    region_for,
    timezone_for_phone,
)
from state.profiles import CONTACT_FIELDS, ProfileWrite

log = logging.getLogger(__name__)

OPS = ("upsert", "delete")
MAX_ID = 256
_NORMALISE = {"email": normalise_email, "push": normalise_push_token}


class Refused(ValueError):
    """A record that is not a profile; ``reason`` is a stable code (no contact values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Counts:
    loaded: int = 0  # writes applied
    stale: int = 0  # older than what the profile holds: ignored (last writer wins)
    invalid_contact: int = 0  # records with at least one invalid contact (recorded as such)
    refused: Counter = field(default_factory=Counter)  # reason → records

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def line(self) -> str:
        why = ", ".join(f"{r} {n:,}" for r, n in self.refused.most_common())
        return (f"loaded {self.loaded:,}, invalid contact {self.invalid_contact:,}, "
                f"stale {self.stale:,}, refused {self.refused_total:,}"
                + (f" ({why})" if why else ""))


def _str(v: Any, name: str, limit: int = 4096) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise Refused(f"bad_{name}")
    return v


def to_write(rec: Any, key: str | None = None,
             default_ts: int | None = None) -> tuple[ProfileWrite, list[str]]:
    """(the write, channels whose contact was invalid) or :class:`Refused`.

    Fields absent (or empty in a CSV) are left as they are; ``null`` removes a contact.
    ``default_ts``: the event time of records without ``ts`` (bulk import), else refused."""
    if not isinstance(rec, dict):
        raise Refused("not_an_object")
    op = rec.get("op", "upsert" if default_ts is not None else None)
    if op not in OPS:
        raise Refused("bad_op")
    cid = rec.get("customer_id")
    if not isinstance(cid, str) or not cid.strip() or len(cid) > MAX_ID or cid.startswith("~"):
        raise Refused("bad_customer_id")
    if key is not None and key != cid:
        raise Refused("key_mismatch")
    ts = rec.get("ts", default_ts)
    if isinstance(ts, str) and ts.strip().isdigit():
        ts = int(ts)
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**53:
        raise Refused("bad_ts")
    if op == "delete":
        return ProfileWrite(cid, ts, "delete"), []
    sets: dict[str, str] = {}
    delete: list[str] = []
    add: list[str] = []
    drop: list[str] = []
    invalid: list[str] = []
    tz = _str(rec.get("tz"), "tz", 64)
    if tz:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise Refused("bad_tz") from None
        sets["tz"] = tz
    locale = _str(rec.get("locale"), "locale", 35)
    if locale:
        sets["locale"] = locale
    for name, parse in (("birthday", calendar.birthday), ("registered_at", calendar.date_ms)):
        value = rec.get(name)
        if value is None or value == "":
            continue
        good = parse(value)
        if good is None:  # a date triggers would read wrong: refused, named
            raise Refused(f"bad_{name}")
        sets[name] = str(good)
    consents = rec.get("consents") or {}
    if not isinstance(consents, dict):
        raise Refused("bad_consents")
    for k, v in consents.items():
        ch, _, cat = str(k).partition(":")
        if ch not in CHANNELS or cat not in CATEGORIES or not isinstance(v, bool):
            raise Refused("bad_consents")
        sets[f"consent:{k}"] = "1" if v else "0"
    raw = {ch: _str(rec.get(f), f) for ch, f in CONTACT_FIELDS.items()}
    region = region_for(locale)
    for ch, f in CONTACT_FIELDS.items():
        if f not in rec:
            continue
        value = raw[ch]
        if value is None:  # named as null: the contact is gone
            delete.append(f)
            drop.append(ch)
            continue
        good = (normalise_phone(value, region) if ch == "sms" else _NORMALISE[ch](value))
        if good is None:
            invalid.append(ch)
            delete.append(f)
            drop.append(ch)
            sets[f"invalid:{ch}"] = "1"
        else:
            sets[f] = good
            sets[f"invalid:{ch}"] = "0"  # a new contact from the CDP: valid again
            add.append(ch)
    if not tz and "phone" in sets:
        derived = timezone_for_phone(sets["phone"])
        if derived:
            sets["tz"] = derived
    return ProfileWrite(cid, ts, "upsert", sets, tuple(delete), tuple(add), tuple(drop)), invalid


class Ingest:
    """Checks, normalises and writes records in chunks; keeps the counts."""

    def __init__(self, store: Any, chunk: int = 1000) -> None:
        self.store = store
        self.chunk = chunk
        self.counts = Counts()
        self.warn = RateLimited(log, every_s=60.0)

    def refuse(self, reason: str, cid: Any = None) -> None:
        self.counts.refused[reason] += 1
        who = cid if isinstance(cid, str) and len(cid) <= MAX_ID else "?"
        self.warn.warning(f"refused:{reason}", "profile refused (customer %s): %s", who, reason)

    def prepare(self, rec: Any, key: str | None = None,
                default_ts: int | None = None) -> ProfileWrite | None:
        try:
            w, invalid = to_write(rec, key, default_ts)
        except Refused as e:
            self.refuse(e.reason, rec.get("customer_id") if isinstance(rec, dict) else None)
            return None
        if invalid:
            self.counts.invalid_contact += 1
            self.warn.log(logging.INFO, "invalid_contact", "customer %s: invalid %s contact "
                          "recorded, not kept", w.customer_id, ",".join(invalid))
        return w

    def write(self, writes: list[ProfileWrite]) -> None:
        if not writes:
            return
        for applied in self.store.write_profiles(writes):
            if applied:
                self.counts.loaded += 1
            else:
                self.counts.stale += 1


def read_records(path: Path) -> Iterator[Any]:
    """Records of a JSONL or CSV file; a JSON line that does not parse yields None."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield _from_csv(row)
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield None


def _from_csv(row: dict[str, str | None]) -> dict[str, Any]:
    """CSV columns: op, customer_id, ts, email, phone, push_token, tz, locale, birthday
    (MM-DD or YYYY-MM-DD), registered_at (epoch ms, RFC 3339 or a date) and one
    ``consent:CH:CAT`` column per consent (true/false/1/0). An empty cell names nothing."""
    rec: dict[str, Any] = {}
    consents: dict[str, Any] = {}
    for k, v in row.items():
        if k is None or v is None or not v.strip():
            continue
        if k.startswith("consent:"):
            b = v.strip().lower()
            consents[k[8:]] = {"true": True, "1": True, "false": False, "0": False}.get(b, b)
        else:
            rec[k.strip()] = v.strip() if k != "customer_id" else v
    if consents:
        rec["consents"] = consents
    return rec


def import_file(path: str | Path, store: Any, chunk: int = 1000,
                progress: Callable[[Counts, int], None] | None = None,
                every_s: float = 2.0) -> Counts:
    """Bulk load ``path`` (``.jsonl``/``.json`` or ``.csv``). Records without ``ts`` get 0:
    any topic upsert with an event time wins over them; a re-import overwrites them."""
    return import_records(read_records(Path(path)), store, chunk, progress, every_s)


def import_records(records: Iterable[Any], store: Any, chunk: int = 1000,
                   progress: Callable[[Counts, int], None] | None = None,
                   every_s: float = 2.0) -> Counts:
    """Bulk load profile records (None = a line that did not parse) through the same checks
    and normalisation as the topic; the demo loads its generated profiles this way."""
    ingest = Ingest(store, chunk)
    batch: list[ProfileWrite] = []
    last = time.monotonic()
    for read, rec in enumerate(records, 1):
        w = ingest.prepare(rec, default_ts=0) if rec is not None else ingest.refuse("bad_json")
        if w is not None:
            batch.append(w)
        if len(batch) >= chunk:
            ingest.write(batch)
            batch = []
        if progress is not None and time.monotonic() - last >= every_s:
            last = time.monotonic()
            progress(ingest.counts, read)
    ingest.write(batch)
    return ingest.counts


def consume(brokers: str, topic: str, store: Any, group: str = "cdp-profiles",
            idle_exit_s: float | None = None, batch: int = 500,
            stop: Callable[[], bool] | None = None) -> Counts:
    """Apply the ``topic`` to ``store`` until idle for ``idle_exit_s`` (None: forever).
    Offsets are committed after the Redis writes of each batch; a Redis outage is waited
    out (one log line when it starts, one when it ends)."""
    from confluent_kafka import Consumer, KafkaError

    klog = kafka_error_logger(log, f"Kafka {brokers}")
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                         **klog.config()})
    assigned: list[bool] = []
    last_seen = time.monotonic()

    def on_assign(_c, _partitions) -> None:  # idle time counts from the group join
        nonlocal last_seen
        if not assigned:
            assigned.append(True)
            last_seen = time.monotonic()

    consumer.subscribe([topic], on_assign=on_assign)
    ingest = Ingest(store)
    redis_state = StateLog(log, f"profile store {getattr(store, 'name', 'Redis')}")
    try:
        while not (stop and stop()):
            msgs = consumer.consume(batch, 0.5)
            writes: list[ProfileWrite] = []
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        ingest.warn.warning("kafka", "profiles topic: %s", m.error())
                    continue
                key = m.key().decode(errors="replace") if m.key() is not None else None
                try:
                    rec = orjson.loads(m.value() or b"")
                except orjson.JSONDecodeError:
                    ingest.refuse("bad_json", key)
                    continue
                w = ingest.prepare(rec, key)
                if w is not None:
                    writes.append(w)
            if msgs:
                last_seen = time.monotonic()
                while True:
                    try:
                        ingest.write(writes)
                        break
                    except Exception as e:
                        if not getattr(store, "is_outage", lambda _e: False)(e):
                            raise
                        redis_state.down(e)
                        time.sleep(1.0)
                if redis_state.is_down:
                    redis_state.up()
                try:
                    consumer.commit(asynchronous=False)
                except Exception as e:  # e.g. nothing to commit (only error messages)
                    log.debug("profiles topic: commit: %s", e)
            elif (idle_exit_s is not None and assigned
                  and time.monotonic() - last_seen > idle_exit_s):
                break
    finally:
        consumer.close()
    return ingest.counts
