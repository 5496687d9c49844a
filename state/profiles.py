"""The customer profile/consent store the flows read at decision time.

Redis layout, one hash per customer (``cdp:profile:{customer_id}``):

=====================  ==========================================================
field                  value
=====================  ==========================================================
``tz``                 IANA time zone, e.g. ``Europe/Berlin``
``locale``             e.g. ``de-DE``
``contacts``           comma list of channels with a contact present (``email,push``);
                       the flags the engine reads: values never leave the profile system
``email``              normalised address (CDP profiles only; never logged or exported)
``phone``              E.164 number, the ``sms`` channel's contact (same rule)
``push_token``         the ``push`` channel's device token (same rule)
``invalid:CH``         ``1``: the channel's contact is invalid (refused on the way in, or
                       hard-bounced); it wins over the flag. ``0``: valid again
``consent:CH:CAT``     ``1`` granted / ``0`` refused, e.g. ``consent:email:marketing``
``birthday``           ``MM-DD`` (the year is not kept): date triggers on profile.birthday
``registered_at``      epoch ms of the registration: date triggers on profile.registered_at
``ts``                 event time (epoch ms) of the last CDP upsert applied
=====================  ==========================================================

CDP profile writes (:meth:`RedisProfileStore.write_profiles`) are last-writer-wins by event
time, atomically per customer (a Lua script): an upsert older than the profile's ``ts`` is
ignored; a delete removes the hash and leaves a tombstone ``{prefix}~deleted:{id}`` = ts
(kept ``TOMBSTONE_TTL_S``) so that an older upsert read late does not bring it back.

Reads are pipelined (one round trip for many customers). The flow warms the profiles of
each input batch's customers in one round trip (:meth:`RedisProfileStore.warm`) before the
keyed step asks for them one by one: a decision reads the same profile, read a moment
earlier (at most ``PREFETCH_MAX_AGE_S``), instead of one round trip per customer.

When Redis is not reachable the caller decides what to do (the embedded demo falls back to
generated profiles, loudly); the store logs the outage once when it starts and once when it
ends, never per lookup, and never the URL's password.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cdp_triggers.logs import StateLog, mask_url

# defined in the ground layer (the engine reads them); re-exported here for the store's users
from cdp_triggers.records import CATEGORIES as CATEGORIES
from cdp_triggers.records import CHANNELS as CHANNELS
from cdp_triggers.records import Profile as Profile
from cdp_triggers.records import ProfileUnavailable as ProfileUnavailable
from cdp_triggers.records import _s

log = logging.getLogger(__name__)

KEY_PREFIX = "cdp:profile:"
FAIL_FAST_S = 1.0  # after a lookup failed: the next ones fail at once this long
PREFETCH_MAX_AGE_S = 1.0  # a warmed profile older than this is read again
# Warmed batches are kept while younger than PREFETCH_MAX_AGE_S, at most PREFETCH_MAX_IDS
# profiles in all: a fixed count of batches dropped answers still needed when the keyed step
# ran behind (after an epoch's snapshot stall the source hands over many small batches before
# the engine reads the first one's profiles), and each of those became a round trip alone.
PREFETCH_MAX_IDS = 200_000
PREFETCH_MERGE = 512  # a batch this small joins the newest one (fewer dicts for get to scan)
PREFETCH_MERGE_S = 0.05  # … when that one is this young (it keeps its older time: expires first)
# Warming pays when lookups use what it read: a config whose decisions are rare (only
# abandoned_cart: 6 % of warmed profiles were asked for) loses more reading every batch's
# customers than it saves. Below this share of use, only every PREFETCH_PROBE-th batch is
# warmed (to see whether the share has grown); the share counts the last ~20k warmed.
PREFETCH_MIN_USE = 0.25
PREFETCH_PROBE = 16
TOMBSTONE = "~deleted:"  # after the prefix: customer ids are not expected to start with ~
TOMBSTONE_TTL_S = 30 * 86400
ProfileLookup = Callable[[str], "Profile | None"]

# field of each channel's contact value in the hash
CONTACT_FIELDS = {"email": "email", "sms": "phone", "push": "push_token"}
# what a profile read asks for (Profile.from_redis reads no other field): consents and
# invalid flags of the channels a config can name (config.schema.Channel)
READ_FIELDS = ("tz", "locale", "contacts", "birthday", "registered_at",
               *(f"consent:{ch}:{cat}" for ch in CHANNELS for cat in CATEGORIES),
               *(f"invalid:{ch}" for ch in CHANNELS))


@dataclass(frozen=True, slots=True)
class Contact:
    """Where one message goes: the address (in memory only, never logged) or, when there
    is none, why (``no_profile``, ``no_contact``, ``contact_invalid``)."""

    customer_id: str
    channel: str
    address: str
    locale: str = "en"
    reason: str = ""

    def __repr__(self) -> str:  # an address must not reach a log line by accident
        return (f"Contact({self.customer_id!r}, {self.channel!r}, "
                f"address={'***' if self.address else ''!r}, reason={self.reason!r})")


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    """One CDP record, normalised: what to set and delete in the customer's hash.

    ``op`` is ``upsert`` or ``delete``; ``ts`` its event time (epoch ms). ``add``/``drop``:
    channels whose ``contacts`` flag to set / remove (channels not named keep theirs)."""

    customer_id: str
    ts: int
    op: str = "upsert"
    set: Mapping[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


_UPSERT = """
local op = cjson.decode(ARGV[1])
local ts = tonumber(op.ts)
local tomb = redis.call('GET', KEYS[2])
if tomb and tonumber(tomb) > ts then return 0 end
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > ts then return 0 end
for k, v in pairs(op.set) do redis.call('HSET', KEYS[1], k, v) end
for _, k in ipairs(op.delete) do redis.call('HDEL', KEYS[1], k) end
local flags = {}
local c = redis.call('HGET', KEYS[1], 'contacts')
if c then for ch in string.gmatch(c, '[^,]+') do flags[ch] = true end end
for _, ch in ipairs(op.add) do flags[ch] = true end
for _, ch in ipairs(op.drop) do flags[ch] = nil end
local list = {}
for ch, _ in pairs(flags) do table.insert(list, ch) end
table.sort(list)
redis.call('HSET', KEYS[1], 'contacts', table.concat(list, ','), 'ts', op.ts)
if tomb then redis.call('DEL', KEYS[2]) end
return 1
"""

_DELETE = """
local ts = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > ts then return 0 end
local tomb = redis.call('GET', KEYS[2])
if tomb and tonumber(tomb) > ts then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""


def _a_write(method: Callable[..., Any]) -> Callable[..., Any]:
    """A write of this process: nothing warmed before it is read again, nor a warm read
    that overlapped it (its count moves before and after the write)."""
    @functools.wraps(method)
    def write(self: RedisProfileStore, *args: Any, **kwargs: Any) -> Any:
        self._writes += 1
        self._warm = ()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._writes += 1
            self._warm = ()
    return write


class RedisProfileStore:
    """Profiles in Redis. One per process: redis-py's connection pool is thread-safe and
    every call builds its own pipeline, so the worker threads of a process share it."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = KEY_PREFIX) -> None:
        import redis

        self.url = url
        self.name = f"Redis {mask_url(url)}"  # for log lines: no password
        self.prefix = prefix
        self._r = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.lookups = StateLog(log, f"profile store {self.name}")
        self._fail_until = 0.0  # monotonic: lookups fail fast until then (an outage)
        self._upsert = self._r.register_script(_UPSERT)
        self._delete = self._r.register_script(_DELETE)
        # warmed batches, newest last: (monotonic time, customer → profile or None, whether
        # its use counts toward the share below: not for reads sure to be asked). Rebound,
        # never mutated, so the worker threads of the process read it without a lock.
        self._warm: tuple[tuple[float, dict[str, Profile | None], bool], ...] = ()
        self.warmed = 0  # lookups answered from a warmed batch
        self._writes = 0  # this process's writes: a warm read before one is not kept
        self._use = [0, 0]  # recent (profiles warmed, lookups answered by them), decayed
        self._skipped = 0  # batches not warmed in a row (low use)

    def ping(self) -> bool:
        """True when the server answers; False (never raises) when it does not."""
        try:
            return bool(self._r.ping())
        except Exception as e:  # connection refused, timeout, auth…
            log.debug("redis ping to %s failed: %s", self.name, mask_url(str(e)))
            return False

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        """True for errors that pass with time (connection, timeout, loading, read-only
        replica); False for wrong credentials, wrong types and programming errors."""
        from redis import exceptions as rx

        if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
            return False
        return isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError
                          | rx.TryAgainError | rx.MasterDownError | rx.ClusterDownError
                          | rx.OutOfMemoryError | OSError)

    def get(self, customer_id: str) -> Profile | None:
        """One customer's profile; raises ProfileUnavailable when Redis does not answer.

        An outage is logged once when it starts and once when it ends (not per lookup).
        After a failed lookup the next ones fail at once for FAIL_FAST_S, then one tries
        the server again: an outage costs one socket timeout per FAIL_FAST_S, not one per
        customer (every customer's decision would wait it out and the flow would crawl).
        """
        now = time.monotonic()
        for at, batch, counted in reversed(self._warm):
            if now - at > PREFETCH_MAX_AGE_S:
                break
            if customer_id in batch:
                self.warmed += 1
                self._use[1] += counted
                return batch[customer_id]
        if self._fail_until and now < self._fail_until:
            raise ProfileUnavailable(f"{self.name} is down (next try within {FAIL_FAST_S} s)")
        try:
            profile = self.get_many([customer_id]).get(customer_id)
        except Exception as e:
            import redis

            if isinstance(e, redis.RedisError):
                self.lookups.down(e)
                self._fail_until = time.monotonic() + FAIL_FAST_S
                raise ProfileUnavailable(mask_url(str(e))) from e
            raise
        self._fail_until = 0.0
        if self.lookups.is_down:
            self.lookups.up()
        return profile

    def warm(self, customer_ids: Iterable[str], sure: Iterable[str] = ()) -> None:
        """Read these customers' profiles in one round trip for the :meth:`get` calls that
        follow within ``PREFETCH_MAX_AGE_S`` (customers without a profile are remembered as
        such). While lookups use under ``PREFETCH_MIN_USE`` of what is warmed, only the
        ``sure`` ones are read (those the caller knows will be asked: customers whose
        timers fire) and, every ``PREFETCH_PROBE``-th batch, all (to see the share grow);
        the share counts the others only. Never raises: while the store is failing, or
        when this read fails, nothing is warmed and :meth:`get` asks (and reports the
        outage) as before."""
        ids = list(dict.fromkeys(customer_ids))
        if not ids or (self._fail_until and time.monotonic() < self._fail_until):
            return
        use = self._use
        counted = True
        if use[0] >= 2_000 and use[1] < PREFETCH_MIN_USE * use[0] \
                and self._skipped < PREFETCH_PROBE - 1:
            self._skipped += 1  # lookups hardly use it: read one by one, when asked
            ids, counted = list(dict.fromkeys(sure)), False
            if not ids:
                return
        else:
            self._skipped = 0
            use[0] += len(ids)
            if use[0] > 20_000:
                use[0] //= 2
                use[1] //= 2
        writes = self._writes
        try:
            got = self.get_many(ids)
        except Exception as e:
            log.debug("profile prefetch from %s failed: %s", self.name, mask_url(str(e)))
            return
        if writes != self._writes:
            return  # this process wrote while it was read: the answer may be older
        now = time.monotonic()
        batch = {cid: got.get(cid) for cid in ids}
        gens = [g for g in self._warm if now - g[0] <= PREFETCH_MAX_AGE_S]
        if (gens and gens[-1][2] == counted and len(gens[-1][1]) + len(batch) <= PREFETCH_MERGE
                and now - gens[-1][0] <= PREFETCH_MERGE_S):
            gens[-1] = (gens[-1][0], {**gens[-1][1], **batch}, counted)
        else:
            gens.append((now, batch, counted))
        total = sum(len(b) for _, b, _ in gens)
        while len(gens) > 1 and total > PREFETCH_MAX_IDS:
            total -= len(gens.pop(0)[1])
        self._warm = tuple(gens)

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Profile]:
        """One pipelined round trip; customers without a profile are absent from the result.

        Only the fields the engine reads are asked for (:data:`READ_FIELDS`, by name): a
        profile's contact values never reach the flow, and a CDP hash with many more
        fields costs no more to read. A hash holding none of them (other fields only) is
        still a profile, with the defaults: the rare customers that answer nothing are
        asked whether they exist, in a second round trip."""
        ids = list(dict.fromkeys(customer_ids))
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.hmget(self.prefix + cid, READ_FIELDS)
        found: dict[str, dict[str, bytes]] = {}
        blank: list[str] = []
        for cid, values in zip(ids, pipe.execute(), strict=True):
            h = {k: v for k, v in zip(READ_FIELDS, values, strict=True) if v is not None}
            if h:
                found[cid] = h
            else:
                blank.append(cid)
        if blank:
            pipe = self._r.pipeline(transaction=False)
            for cid in blank:
                pipe.exists(self.prefix + cid)
            found.update((cid, {}) for cid, n in zip(blank, pipe.execute(), strict=True) if n)
        return {cid: Profile.from_redis(cid, found[cid]) for cid in ids if cid in found}

    def contacts_for(self, wanted: Iterable[tuple[str, str]]) -> list[Contact]:
        """The address each ``(customer_id, channel)`` is sent to, read at send time in one
        pipelined round trip (the gateway's only read of contact values)."""
        wanted = list(wanted)
        pipe = self._r.pipeline(transaction=False)
        for cid, channel in wanted:
            pipe.hmget(self.prefix + cid, CONTACT_FIELDS.get(channel, "-"), f"invalid:{channel}",
                       "locale", "contacts")
        out = []
        for (cid, channel), (addr, invalid, locale, flags) in zip(
                wanted, pipe.execute(), strict=True):
            address, reason = _s(addr or b""), ""
            if invalid is not None and _s(invalid) == "1":
                address, reason = "", "contact_invalid"
            elif not address:
                reason = "no_profile" if flags is None and locale is None else "no_contact"
            out.append(Contact(cid, channel, address, _s(locale or b"") or "en", reason))
        return out

    @_a_write
    def put_many(self, profiles: Iterable[Profile], chunk: int = 1000) -> int:
        n = 0
        pipe = self._r.pipeline(transaction=False)
        for p in profiles:
            key = self.prefix + p.customer_id
            pipe.delete(key)
            pipe.hset(key, mapping=p.to_redis())
            n += 1
            if n % chunk == 0:
                pipe.execute()
        pipe.execute()
        return n

    @_a_write
    def apply_updates(self, updates: Iterable[tuple[str, str, str]]) -> int:
        """(customer_id, field, value) writes from the engine (unsubscribes, hard bounces),
        one pipelined round trip. Fields: ``consent:CH:CAT`` and ``invalid:CH``."""
        pipe = self._r.pipeline(transaction=False)
        n = 0
        for cid, field_, value in updates:
            pipe.hset(self.prefix + cid, field_, value)
            n += 1
        pipe.execute()
        return n

    @_a_write
    def forget(self, customer_ids: Iterable[str], chunk: int = 1000) -> None:
        """Remove these customers' profiles and tombstones outright (a demo re-seeding its
        own customers; not for CDP deletes, which keep a tombstone)."""
        pipe = self._r.pipeline(transaction=False)
        for n, cid in enumerate(customer_ids, 1):
            pipe.delete(self.prefix + cid, self.prefix + TOMBSTONE + cid)
            if n % chunk == 0:
                pipe.execute()
        pipe.execute()

    @_a_write
    def write_profiles(self, writes: Iterable[ProfileWrite]) -> list[bool]:
        """CDP upserts/deletes in one pipelined round trip, last writer wins by event time:
        True per write applied, False when the profile already holds a newer one."""
        pipe = self._r.pipeline(transaction=False)
        for w in writes:
            keys = [self.prefix + w.customer_id, self.prefix + TOMBSTONE + w.customer_id]
            if w.op == "delete":
                self._delete(keys=keys, args=[str(w.ts), TOMBSTONE_TTL_S], client=pipe)
            else:
                arg = json.dumps({"ts": str(w.ts), "set": dict(w.set),
                                  "delete": list(w.delete), "add": list(w.add),
                                  "drop": list(w.drop)})
                self._upsert(keys=keys, args=[arg], client=pipe)
        return [bool(r) for r in pipe.execute()]

    @_a_write
    def set_consent(self, customer_id: str, channel: str, category: str, granted: bool) -> None:
        self._r.hset(self.prefix + customer_id, f"consent:{channel}:{category}",
                     "1" if granted else "0")


class DictProfileStore:
    """Profiles held in memory: the demo's fallback when Redis is absent, and unit tests."""

    def apply_updates(self, updates: Iterable[tuple[str, str, str]]) -> int:
        n = 0
        for cid, field_, value in updates:
            p = self._p.get(cid)
            n += 1
            if p is None:
                continue
            if field_.startswith("consent:"):
                consents = {**p.consents, field_[8:]: value == "1"}
                self._p[cid] = replace(p, consents=consents)
            elif field_.startswith("invalid:") and value == "1":
                self._p[cid] = replace(p, contacts=p.contacts - {field_[8:]})
        return n

    def __init__(self, profiles: Iterable[Profile] = ()) -> None:
        self._p = {p.customer_id: p for p in profiles}

    def get(self, customer_id: str) -> Profile | None:
        return self._p.get(customer_id)

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Profile]:
        return {c: self._p[c] for c in customer_ids if c in self._p}

    def put_many(self, profiles: Iterable[Profile]) -> int:
        n = 0
        for p in profiles:
            self._p[p.customer_id] = p
            n += 1
        return n

    def set_consent(self, customer_id: str, channel: str, category: str, granted: bool) -> None:
        p = self._p.get(customer_id)
        if p is not None:
            self._p[customer_id] = replace(
                p, consents={**p.consents, f"{channel}:{category}": granted})
