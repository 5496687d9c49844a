"""Synthetic retail traffic: a seedable, deterministic clickstream + order generator.

Used by the demo, the benchmarks and the tests. Same config (seed included) → byte-identical
output. The stream is lazy: each customer has one "next session" entry in a heap; popping it
expands the session (views, cart, checkout, order and its follow-ups) into a second heap of
pending events and schedules the customer's next session. Memory is O(customers + in-flight
events), and events come out in non-decreasing event time.

Funnel (defaults, close to public e-commerce figures): ~2.5 % of product views lead to an
``added_to_cart``, a cart in ~10 % of sessions, ~60 % of carts abandoned; of the ordered
carts ~2/3 order within minutes, ~1/3 come back hours later (so a 30-minute reminder is
sometimes cancelled in time, sometimes not). Orders are followed by ``order_paid``,
``order_shipped`` (hours later), ``order_delivered`` (days later) or ``order_cancelled``.

A small share of deliberately bad payloads (each refused by :func:`parse_event`) and of exact
duplicates (same bytes, same ``event_id``) is mixed in; :class:`SyntheticStats` counts them.

CLI: ``python -m cdp_triggers.synthetic --customers 20000 --days 3 --out events.jsonl``.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from cdp_triggers.clock import DAY, HOUR, MINUTE, SECOND
from cdp_triggers.events import MAX_EVENT_BYTES
from cdp_triggers.ids import stable_fraction
from state.profiles import Profile

DEFAULT_START_MS = 1_793_577_600_000  # 2026-11-02T00:00:00Z (after EU and US DST ends)
CURRENCY = "EUR"

# (IANA zone, locale, weight): a European shop with some overseas customers.
TIMEZONES: tuple[tuple[str, str, float], ...] = (
    ("Europe/Berlin", "de-DE", 0.28),
    ("Europe/Vienna", "de-AT", 0.04),
    ("Europe/Zurich", "de-CH", 0.03),
    ("Europe/Paris", "fr-FR", 0.10),
    ("Europe/Madrid", "es-ES", 0.06),
    ("Europe/Rome", "it-IT", 0.05),
    ("Europe/Amsterdam", "nl-NL", 0.05),
    ("Europe/Warsaw", "pl-PL", 0.04),
    ("Europe/London", "en-GB", 0.12),
    ("America/New_York", "en-US", 0.08),
    ("America/Chicago", "en-US", 0.03),
    ("America/Los_Angeles", "en-US", 0.05),
    ("Asia/Tokyo", "ja-JP", 0.03),
    ("Australia/Sydney", "en-AU", 0.02),
    ("Asia/Kolkata", "en-IN", 0.02),
)

# Relative session intensity per local hour (night trough, lunch bump, evening peak).
DIURNAL: tuple[float, ...] = (
    0.6, 0.35, 0.2, 0.15, 0.15, 0.2, 0.4, 0.8, 1.1, 1.3, 1.4, 1.5,
    1.6, 1.5, 1.4, 1.4, 1.5, 1.7, 2.0, 2.3, 2.5, 2.3, 1.7, 1.1,
)

# category → (median price in EUR, spread of the log-normal)
CATEGORIES: dict[str, tuple[float, float]] = {
    "apparel": (39.0, 0.5),
    "shoes": (79.0, 0.4),
    "electronics": (149.0, 0.9),
    "home": (45.0, 0.7),
    "beauty": (19.0, 0.5),
    "toys": (29.0, 0.6),
    "sports": (49.0, 0.7),
    "books": (14.0, 0.3),
    "grocery": (6.0, 0.5),
    "garden": (35.0, 0.7),
}

_DIURNAL_MAX = max(DIURNAL)
_GAP_DAY_MS = DAY * (sum(DIURNAL) / 24) / _DIURNAL_MAX  # candidate gap at 1 session/day

BAD_KINDS = (
    "invalid_json",
    "json_array",
    "missing_customer_id",
    "garbage_ts",
    "epoch_seconds_ts",
    "oversize",
    "wrong_prop_type",
)

# channel, P(contact), marketing key, P(granted | answered), transactional key, P(granted)
_CONTACT_MODEL = tuple(
    (ch, p_contact, f"{ch}:marketing", p_mkt, f"{ch}:transactional", p_trx)
    for ch, p_contact, p_mkt, p_trx in (("email", 0.92, 0.82, 0.98),
                                         ("push", 0.55, 0.60, 0.90),
                                         ("sms", 0.35, 0.40, 0.90))
)


CATALOGUE_ID = "catalogue"  # customer_id of catalogue events (the envelope requires one)


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """Knobs of the generator; every default is a realistic mid-size shop."""

    customers: int = 2000
    days: float = 2.0
    start_ms: int = DEFAULT_START_MS
    seed: int = 7
    products: int = 500
    sessions_per_customer_per_day: float = 0.5  # mean; per-customer activity varies
    views_per_session: float = 5.5  # mean product views of a session (heavy-tailed)
    add_to_cart_rate: float = 0.022  # per view, until the session has a cart
    add_more_rate: float = 0.05  # per view, once the session has a cart
    remove_rate: float = 0.12  # carts where a product is removed (emptying 1-product carts)
    order_now_rate: float = 0.30  # carts ordered a few minutes after the last cart event
    order_later_rate: float = 0.14  # carts ordered when the customer returns (15 min … 1 day)
    checkout_abandon_rate: float = 0.25  # abandoned carts that still started a checkout
    payment_fail_rate: float = 0.03  # orders never paid → cancelled
    cancel_rate: float = 0.02  # paid orders cancelled by the customer before shipping
    new_customer_rate: float = 0.04  # customers whose first session starts with signed_up
    consent_change_rate: float = 0.01  # per session
    price_change_rate: float = 0.03  # per product and day: a catalogue price update
    stockout_rate: float = 0.01  # per product and day: out of stock, back 6–48 h later
    bad_event_rate: float = 0.002  # per good event: a bad payload follows
    duplicate_rate: float = 0.002  # per good event: the same bytes are resent

    @property
    def end_ms(self) -> int:
        """Horizon: every event has ``start_ms <= ts < end_ms``."""
        return self.start_ms + int(self.days * DAY)


@dataclass
class SyntheticStats:
    """What one pass of :meth:`SyntheticRetail.events` yielded."""

    good: int = 0
    bad: int = 0
    duplicates: int = 0
    sessions: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    bad_by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def read(self) -> int:
        """Payloads yielded: must equal accepted + rejected + duplicates downstream."""
        return self.good + self.bad + self.duplicates


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    category: str
    price_cents: int


class _Customer:
    __slots__ = ("cid", "consents", "contacts", "is_new", "rate", "tz")

    def __init__(self, cid: str, tz: str, rate: float, is_new: bool,
                 contacts: frozenset[str], consents: dict[str, bool]) -> None:
        self.cid = cid
        self.tz = tz
        self.rate = rate  # sessions per day
        self.is_new = is_new  # signed_up still to come
        self.contacts = contacts
        self.consents = consents  # live copy: consent_changed events flip it


class SyntheticRetail:
    """The generator. ``profiles()`` and ``events()`` are pure functions of the config."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()
        self.stats = SyntheticStats()
        self.catalogue = _catalogue(self.config.seed, self.config.products)
        self._zones = {tz: ZoneInfo(tz) for tz, _, _ in TIMEZONES}

    @property
    def end_ms(self) -> int:
        """Horizon for replay: no event has ``ts >= end_ms``."""
        return self.config.end_ms

    # ---- profiles ---------------------------------------------------------------------------

    def profiles(self) -> list[Profile]:
        """One profile per customer (the profile store's state at ``start_ms``)."""
        return [Profile(c.cid, c.tz, locale, c.contacts, dict(c.consents),
                        birthday_of(c.cid) or "")
                for c, locale in self._customers()]

    def profile_records(self) -> list[dict[str, Any]]:
        """The same profiles as CDP profile upserts (the `profiles` topic contract), with
        made-up contacts: ``<id>@example.com``, a German mobile number, a push token."""
        out = []
        for p in self.profiles():
            rec: dict[str, Any] = {"op": "upsert", "customer_id": p.customer_id, "ts": 0,
                                   "tz": p.timezone, "locale": p.locale,
                                   "consents": dict(p.consents)}
            digits = "".join(ch for ch in p.customer_id if ch.isdigit())[-8:].rjust(8, "0")
            if "email" in p.contacts:
                rec["email"] = f"{p.customer_id}@example.com"
            if "sms" in p.contacts:
                rec["phone"] = f"+49151{digits}"
            if "push" in p.contacts:
                rec["push_token"] = f"push-{p.customer_id}"
            if p.birthday:
                rec["birthday"] = p.birthday
            out.append(rec)
        return out

    def _customers(self) -> Iterator[tuple[_Customer, str]]:
        """Customers in id order with their locale; the same draws for profiles and events."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}/customers")
        rand = rng.random
        zones = [(tz, loc) for tz, loc, _ in TIMEZONES]
        cum = list(itertools.accumulate(w for _, _, w in TIMEZONES))
        activity = _lognormal_table(-0.9**2 / 2, 0.9)  # mean 1: many quiet, a few very active
        base_rate = cfg.sessions_per_customer_per_day
        channel_sets: dict[tuple[str, ...], frozenset[str]] = {}  # shared: 8 combinations
        for i in range(1, cfg.customers + 1):
            cid = f"c{i:06d}"
            tz, locale = zones[min(bisect.bisect(cum, rand() * cum[-1]), len(zones) - 1)]
            contacts = []
            consents: dict[str, bool] = {}
            for ch, p_contact, mkt_key, p_mkt, trx_key, p_trx in _CONTACT_MODEL:
                if rand() < p_contact:
                    contacts.append(ch)
                    if rand() < 0.97:  # a few customers never answered: consent unknown
                        consents[mkt_key] = rand() < p_mkt
                    consents[trx_key] = rand() < p_trx
            rate = base_rate * activity[int(rand() * _TABLE)]
            is_new = rand() < cfg.new_customer_rate
            key = tuple(contacts)
            chans = channel_sets.get(key)
            if chans is None:
                chans = channel_sets[key] = frozenset(contacts)
            yield _Customer(cid, tz, rate, is_new, chans, consents), locale

    # ---- events -----------------------------------------------------------------------------

    def events(self) -> Iterator[bytes]:
        """Raw wire payloads (``Event.to_json()`` for good ones), non-decreasing in event time.

        Resets and fills :attr:`stats` as it goes (final once exhausted).
        """
        cfg = self.config
        st = self.stats = SyntheticStats()
        rng = random.Random(f"{cfg.seed}/events")
        noise = random.Random(f"{cfg.seed}/noise")  # separate: noise rates don't shift behaviour
        seq = itertools.count()  # tie-breaker: heap entries never compare beyond it
        # Two heaps: every customer's next session start (large, popped once per session) and
        # the scheduled events of started sessions (small: in-flight only, popped per event).
        sessions: list[tuple[int, int, _Customer]] = []
        for cust, _ in self._customers():
            t = self._next_session(rng, cust, cfg.start_ms)
            if t is not None:
                sessions.append((t, next(seq), cust))
        heapq.heapify(sessions)
        pending: list[tuple[int, int, str, str, dict[str, Any]]] = []
        for t, props in self._catalogue_updates():
            pending.append((t, next(seq), "product_updated", CATALOGUE_ID, props))
        heapq.heapify(pending)
        builder = _SessionBuilder(self, rng)
        end = cfg.end_ms
        pop, push = heapq.heappop, heapq.heappush
        dumps = orjson.dumps
        prefix = f"e{cfg.seed}-"
        dup_rate = cfg.duplicate_rate
        noise_rate = dup_rate + cfg.bad_event_rate
        by_type = st.by_type
        n = 0
        while sessions or pending:
            next_session = sessions[0][0] if sessions else end
            while pending and pending[0][0] <= next_session:
                ts, _, etype, cid, props = pop(pending)
                n += 1
                obj = {"event_id": f"{prefix}{n:09d}", "type": etype, "customer_id": cid,
                       "ts": ts, "props": props}
                raw = dumps(obj)
                st.good += 1
                by_type[etype] += 1
                yield raw
                r = noise.random()
                if r < noise_rate:
                    if r < dup_rate:
                        st.duplicates += 1
                        yield raw
                    else:
                        kind = BAD_KINDS[st.bad % len(BAD_KINDS)]
                        st.bad += 1
                        st.bad_by_kind[kind] += 1
                        yield _bad_payload(kind, obj, f"{prefix}bad{st.bad}")
            if sessions:
                ts, _, cust = pop(sessions)
                st.sessions += 1
                evs, active_until = builder.build(cust, ts)
                cid = cust.cid
                for t, etype, props in evs:
                    if t < end:
                        push(pending, (t, next(seq), etype, cid, props))
                t = self._next_session(rng, cust, active_until + 10 * MINUTE)
                if t is not None:
                    push(sessions, (t, next(seq), cust))

    def _catalogue_updates(self) -> list[tuple[int, dict[str, Any]]]:
        """Catalogue stream: price changes (mostly drops) and stock-outs with restocks.

        Sessions keep quoting the catalogue's base price; only the update stream moves.
        """
        cfg = self.config
        rng = random.Random(f"{cfg.seed}/catalogue")
        out: list[tuple[int, dict[str, Any]]] = []
        span = cfg.end_ms - cfg.start_ms
        days = span / _GAP_DAY_MS
        for p in self.catalogue:
            price = p.price_cents
            changes = sorted(cfg.start_ms + int(rng.random() * span)
                             for _ in range(_poisson(rng, cfg.price_change_rate * days)))
            for t in changes:
                factor = rng.uniform(0.7, 0.9) if rng.random() < 0.6 else rng.uniform(1.05, 1.15)
                price = max(1, int(price * factor))
                out.append((t, {"product_id": p.product_id, "price": price / 100}))
            for _ in range(_poisson(rng, cfg.stockout_rate * days)):
                t = cfg.start_ms + int(rng.random() * span)
                back = t + int(rng.uniform(6, 48) * 3_600_000)
                out.append((t, {"product_id": p.product_id, "in_stock": False}))
                if back < cfg.end_ms:
                    out.append((back, {"product_id": p.product_id, "in_stock": True}))
        return out

    def _next_session(self, rng: random.Random, cust: _Customer, after: int) -> int | None:
        """Next session start after ``after``: Poisson, thinned by the local diurnal curve."""
        if cust.rate <= 0:
            return None
        mean_gap_ms = _GAP_DAY_MS / cust.rate
        end = self.config.end_ms
        rand = rng.random
        t = float(after)
        while True:
            t -= math.log(1.0 - rand()) * mean_gap_ms
            if t >= end:
                return None
            ti = int(t)
            if rand() * _DIURNAL_MAX < DIURNAL[self._local_hour(cust.tz, ti)]:
                return ti

    def _local_hour(self, tz: str, ts: int) -> int:
        key = (tz, ts // HOUR)
        off = _OFFSETS.get(key)
        if off is None:
            dt = datetime.fromtimestamp(ts // HOUR * 3600, tz=self._zones[tz])
            off = _OFFSETS[key] = int(dt.utcoffset().total_seconds() * 1000)  # type: ignore[union-attr]
        return (ts + off) // HOUR % 24


_OFFSETS: dict[tuple[str, int], int] = {}  # (zone, UTC hour) → offset ms; pure, shareable


class _SessionBuilder:
    """Expands one session of one customer into timed events (and their order follow-ups)."""

    def __init__(self, gen: SyntheticRetail, rng: random.Random) -> None:
        cfg = gen.config
        self.cfg = cfg
        self.rng = rng
        self.cat = gen.catalogue
        self.seed = cfg.seed
        self.carts = itertools.count(1)
        self.orders = itertools.count(1)
        # popularity: Zipf-like over the whole catalogue and within each category
        self.cum_all = list(itertools.accumulate(1 / (i + 1) ** 0.9 for i in range(len(self.cat))))
        self.by_cat: dict[str, tuple[list[Product], list[float]]] = {}
        for i, p in enumerate(self.cat):
            prods, w = self.by_cat.setdefault(p.category, ([], []))
            prods.append(p)
            w.append((w[-1] if w else 0.0) + 1 / (i + 1) ** 0.9)
        # log-normal draws through quantile tables (fast, deterministic)
        sigma = 1.0  # views per session: 1 + log-normal, mean ≈ views_per_session
        mu = math.log(max(cfg.views_per_session - 0.5, 0.1)) - sigma**2 / 2
        self.n_views = [1 + int(x) for x in _lognormal_table(mu, sigma)]
        self.dwell = [int(x * SECOND) for x in _lognormal_table(3.4, 0.8)]  # median ~30 s

    def _pick(self, category: str | None) -> Product:
        """A product by popularity; within ``category`` when given."""
        if category is not None:
            prods, cum = self.by_cat[category]
        else:
            prods, cum = self.cat, self.cum_all
        i = bisect.bisect(cum, self.rng.random() * cum[-1])
        return prods[i] if i < len(prods) else prods[-1]

    def build(self, cust: _Customer, t0: int) -> tuple[list[tuple[int, str, dict[str, Any]]], int]:
        """Events caused by a session starting at ``t0`` (unsorted, follow-ups included) and
        the end of the customer's activity (return visit included, follow-ups not)."""
        rng, cfg = self.rng, self.cfg
        out: list[tuple[int, str, dict[str, Any]]] = []
        t = t0
        if cust.is_new:
            cust.is_new = False
            props = {"method": rng.choice(("email", "google", "apple"))}
            bday = birthday_of(cust.cid)
            if bday:  # the sign-up form asks for it (the birthday trigger reads it)
                props["birthday"] = bday
            out.append((t, "signed_up", props))
            t += rng.randint(5, 60) * SECOND
        if cust.contacts and rng.random() < cfg.consent_change_rate:
            ch = rng.choice(sorted(cust.contacts))
            key = f"{ch}:marketing"
            granted = not cust.consents.get(key, rng.random() < 0.5)
            cust.consents[key] = granted
            out.append((t, "consent_changed",
                        {"channel": ch, "category": "marketing", "granted": granted}))
            t += rng.randint(5, 60) * SECOND
        rand = rng.random
        n_views = self.n_views[int(rand() * _TABLE)]
        dwell = self.dwell
        focus: str | None = None
        cart_id: str | None = None
        items: dict[str, list] = {}  # product_id → [product, quantity]
        last_cart_t = t
        for _ in range(n_views):
            t += dwell[int(rand() * _TABLE)]
            p = self._pick(focus if focus is not None and rand() < 0.6 else None)
            focus = p.category
            price = p.price_cents / 100
            out.append((t, "product_viewed",
                        {"product_id": p.product_id, "category": p.category, "price": price}))
            if rand() < (cfg.add_more_rate if cart_id else cfg.add_to_cart_rate):
                if cart_id is None:
                    cart_id = f"cart-{self.seed}-{next(self.carts)}"
                qty = 1 if rng.random() < 0.85 else rng.choice((2, 2, 3))
                t += rng.randint(3, 40) * SECOND
                out.append((t, "added_to_cart", {"product_id": p.product_id, "cart_id": cart_id,
                                                 "price": price, "quantity": qty}))
                if p.product_id in items:
                    items[p.product_id][1] += qty
                else:
                    items[p.product_id] = [p, qty]
                last_cart_t = t
        if cart_id is None:
            return out, t
        if rng.random() < cfg.remove_rate:
            pid = rng.choice(sorted(items))
            p, qty = items.pop(pid)
            t += rng.randint(10, 120) * SECOND
            out.append((t, "removed_from_cart", {"product_id": pid, "cart_id": cart_id,
                                                 "price": p.price_cents / 100, "quantity": qty}))
            last_cart_t = t
            if not items:  # emptied: nothing left to buy or to remind of
                return out, t
        total = sum(p.price_cents * q for p, q in items.values()) / 100
        r = rng.random()
        if r < cfg.order_now_rate:  # buys right away: minutes after the last cart event
            t = last_cart_t + rng.randint(30, 180) * SECOND
            out.append((t, "checkout_started", {"cart_id": cart_id, "value": total}))
            t += rng.randint(60, 420) * SECOND
            self._order(out, t, cart_id, items, total)
        elif r < cfg.order_now_rate + cfg.order_later_rate:  # comes back later to buy
            if rng.random() < 0.3:
                out.append((last_cart_t + rng.randint(30, 180) * SECOND, "checkout_started",
                            {"cart_id": cart_id, "value": total}))
            if rng.random() < 0.25:  # soon-ish: around a 30-minute reminder
                delay = rng.randint(15, 60) * MINUTE
            else:  # hours later, up to a day
                delay = int(min(rng.lognormvariate(math.log(3 * HOUR), 0.9), 26 * HOUR))
                delay = max(delay, 61 * MINUTE)
            t = last_cart_t + delay
            for _ in range(rng.choice((0, 1, 1, 2))):  # looks at the cart items again
                p = rng.choice([p for p, _ in items.values()])
                out.append((t, "product_viewed", {"product_id": p.product_id,
                                                  "category": p.category,
                                                  "price": p.price_cents / 100}))
                t += rng.randint(10, 90) * SECOND
            out.append((t, "checkout_started", {"cart_id": cart_id, "value": total}))
            t += rng.randint(60, 420) * SECOND
            self._order(out, t, cart_id, items, total)
        elif rng.random() < cfg.checkout_abandon_rate:  # abandoned at checkout
            t = last_cart_t + rng.randint(30, 180) * SECOND
            out.append((t, "checkout_started", {"cart_id": cart_id, "value": total}))
        return out, max(t, last_cart_t)

    def _order(self, out: list, t: int, cart_id: str, items: dict[str, list],
               total: float) -> None:
        rng, cfg = self.rng, self.cfg
        order_id = f"ord-{self.seed}-{next(self.orders)}"
        out.append((t, "order_placed", {
            "order_id": order_id, "cart_id": cart_id, "total": total, "currency": CURRENCY,
            "items": [{"product_id": p.product_id, "quantity": q, "price": p.price_cents / 100}
                      for p, q in items.values()],
        }))
        if rng.random() < cfg.payment_fail_rate:
            out.append((t + rng.randint(30, 90) * MINUTE, "order_cancelled",
                        {"order_id": order_id, "reason": "payment_failed"}))
            return
        t += rng.randint(5, 120) * SECOND
        out.append((t, "order_paid", {"order_id": order_id, "amount": total,
                                      "method": rng.choice(("card", "paypal", "klarna"))}))
        if rng.random() < cfg.cancel_rate:
            out.append((t + rng.randint(1, 6) * HOUR, "order_cancelled",
                        {"order_id": order_id, "reason": "customer_request"}))
            return
        t += int(rng.uniform(3, 30) * HOUR)
        out.append((t, "order_shipped", {"order_id": order_id,
                                         "carrier": rng.choice(("DHL", "DPD", "UPS", "GLS"))}))
        t += int(rng.uniform(1, 4) * DAY)
        out.append((t, "order_delivered", {"order_id": order_id}))


_TABLE = 4096


def birthday_of(cid: str) -> str | None:
    """The customer's birthday (MM-DD) or None (30 % do not give one): a hash of the id, so
    the event stream's other draws stay as they were."""
    if stable_fraction("birthday-given", cid) < 0.3:
        return None
    day = int(stable_fraction("birthday", cid) * 365)
    d = datetime(2001, 1, 1) + timedelta(days=day)  # (2001: no 29 February)
    return f"{d.month:02d}-{d.day:02d}"


def _lognormal_table(mu: float, sigma: float) -> list[float]:
    """``_TABLE`` mid-quantiles of a log-normal: ``table[int(random() * _TABLE)]`` samples it."""
    nd = NormalDist(mu, sigma)
    return [math.exp(nd.inv_cdf((i + 0.5) / _TABLE)) for i in range(_TABLE)]


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; fine for the small means used here."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _catalogue(seed: int, n: int) -> list[Product]:
    """``n`` products with categories and log-normal prices ending in .99/.49/.95."""
    rng = random.Random(f"{seed}/catalogue")
    cats = sorted(CATEGORIES)
    out = []
    for i in range(1, n + 1):
        cat = rng.choice(cats)
        median, sigma = CATEGORIES[cat]
        euros = max(1, round(rng.lognormvariate(math.log(median), sigma)))
        cents = euros * 100 - rng.choice((1, 1, 1, 51, 5))
        out.append(Product(f"p{i:05d}", cat, cents))
    return out


def _bad_payload(kind: str, good: dict[str, Any], event_id: str) -> bytes:
    """A payload that :func:`parse_event` must reject, shaped after a good event."""
    obj = {**good, "event_id": event_id}
    if kind == "invalid_json":
        return orjson.dumps(obj)[:-9]  # truncated mid-object
    if kind == "json_array":
        return orjson.dumps([obj])
    if kind == "missing_customer_id":
        del obj["customer_id"]
    elif kind == "garbage_ts":
        obj["ts"] = "yesterday at noon"
    elif kind == "epoch_seconds_ts":
        obj["ts"] = good["ts"] // 1000
    elif kind == "oversize":
        obj["props"] = {**good["props"], "blob": "x" * (MAX_EVENT_BYTES + 1)}
    elif kind == "wrong_prop_type":
        obj["type"] = "added_to_cart"
        obj["props"] = {"product_id": 10042, "cart_id": "cart-x", "price": "19.99", "quantity": 1}
    else:
        raise ValueError(f"unknown bad kind {kind!r}")
    return orjson.dumps(obj)


def generate(config: SyntheticConfig | None = None) -> tuple[list[Profile], Iterator[bytes]]:
    """Shortcut: ``(profiles, events)`` of a fresh :class:`SyntheticRetail`."""
    gen = SyntheticRetail(config)
    return gen.profiles(), gen.events()


def write_jsonl(path: str | Path, config: SyntheticConfig | None = None) -> SyntheticStats:
    """Write the event stream to ``path``, one payload a line; returns the counts.

    Payloads never contain a raw newline (orjson escapes them), so lines = payloads.
    """
    gen = SyntheticRetail(config)
    with open(path, "wb") as f:
        buf: list[bytes] = []
        for raw in gen.events():
            buf.append(raw)
            if len(buf) >= 4096:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return gen.stats


def generate_cli(cfg: SyntheticConfig, out: str = "-",
                 progress: Callable[[int, int], None] | None = None) -> int:
    """Write the events of ``cfg`` to ``out`` (a JSONL file, or stdout for ``-``) and report the
    counts on stderr. ``progress(events written, event time ms)`` is called every few
    thousand events."""
    t0 = time.perf_counter()
    gen = SyntheticRetail(cfg)
    f = sys.stdout.buffer if out == "-" else open(out, "wb")  # noqa: SIM115
    try:
        buf: list[bytes] = []
        n = 0
        for raw in gen.events():
            buf.append(raw)
            if len(buf) >= 4096:
                f.write(b"\n".join(buf) + b"\n")
                n += len(buf)
                buf.clear()
                if progress is not None:
                    progress(n, _event_ts(raw, cfg.start_ms))
        if buf:
            f.write(b"\n".join(buf) + b"\n")
        f.flush()
    finally:
        if f is not sys.stdout.buffer:
            f.close()
    stats = gen.stats
    dt = time.perf_counter() - t0
    print(f"read={stats.read} good={stats.good} bad={stats.bad} duplicates={stats.duplicates} "
          f"in {dt:.2f}s ({stats.read / max(dt, 1e-9):,.0f}/s) end_ms={cfg.end_ms}",
          file=sys.stderr)
    return 0


def _event_ts(raw: bytes, default: int) -> int:
    """The ``ts`` of a payload, or ``default`` for a bad one."""
    try:
        ts = orjson.loads(raw)["ts"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return default
    return ts if isinstance(ts, int) else default


def main(argv: list[str] | None = None) -> int:
    """``python -m cdp_triggers.synthetic``: the options of ``cdp-triggers generate``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SyntheticConfig()
    ap.add_argument("--customers", type=int, default=d.customers)
    ap.add_argument("--days", type=float, default=d.days)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--start-ms", type=int, default=d.start_ms)
    ap.add_argument("--sessions-per-day", type=float, default=d.sessions_per_customer_per_day)
    ap.add_argument("--bad-rate", type=float, default=d.bad_event_rate)
    ap.add_argument("--dup-rate", type=float, default=d.duplicate_rate)
    ap.add_argument("--out", default="-")
    a = ap.parse_args(argv)
    return generate_cli(SyntheticConfig(
        customers=a.customers, days=a.days, seed=a.seed, start_ms=a.start_ms,
        sessions_per_customer_per_day=a.sessions_per_day, bad_event_rate=a.bad_rate,
        duplicate_rate=a.dup_rate), a.out)


if __name__ == "__main__":
    raise SystemExit(main())
