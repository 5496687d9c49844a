"""Product fan-out: who is interested in a product, and what to tell them when it changes.

A product-keyed step (pure here, Bytewax glue in ``operators.keyed``) remembers which
customers viewed, carted or wished for (``wishlist_added``) each product in the last
``window`` (event time). When a ``product_updated`` event lowers the price or brings the
product back in stock, it emits one derived event per interested customer —
``price_dropped`` / ``back_in_stock``, with ``interest``: ``wishlist`` when the customer
wished for it within the window, else ``browse`` — which the customer-keyed engine consumes
like any other event (triggers price_drop, back_in_stock and their wishlist versions).
Derived event ids are deterministic, so replays and recovery dedupe them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cdp_triggers.clock import DAY
from cdp_triggers.events import Event
from cdp_triggers.ids import stable_id
from state.compact import Upgradable

if TYPE_CHECKING:
    from config.loader import ConfigSet

WISHLIST_ADDED = "wishlist_added"
INTEREST_TYPES = frozenset({"product_viewed", "added_to_cart", WISHLIST_ADDED})
PRODUCT_TYPES = INTEREST_TYPES | {"product_updated"}
PRICE_DROPPED = "price_dropped"
BACK_IN_STOCK = "back_in_stock"
DEFAULT_WINDOW = 14 * DAY


_NO_UPDATE = -(2**62)


@dataclass(slots=True)
class ProductState(Upgradable):
    """One product as one shard sees it. Catalogue facts (price, stock) come only from
    ``product_updated`` records, in event time; interest is per customer. So a customer's
    derived events do not depend on which other customers share the shard."""

    product_id: str
    price: float | None = None  # catalogue price (None until the catalogue says one)
    in_stock: bool | None = None
    interested: dict[str, int] = field(default_factory=dict)  # customer → last interest ts
    seen_price: dict[str, float] = field(default_factory=dict)  # customer → price they saw
    updated_at: int = _NO_UPDATE  # event time of the catalogue record applied last
    stale: int = 0  # catalogue records older than updated_at: ignored (counted)
    pruned_at: int = 0  # event time of the last sweep of `interested`
    wished: dict[str, int] = field(default_factory=dict)  # customer → last wishlist ts
    updates: dict[str, int] = field(default_factory=dict)  # catalogue record id → its ts


def derives_events(config: ConfigSet) -> bool:
    """Whether the config reads the events this step makes: when it names neither
    ``price_dropped`` nor ``back_in_stock``, they could change no decision, and the source
    skips remembering who viewed what (the product state of every view)."""
    return config.names_event(PRICE_DROPPED) or config.names_event(BACK_IN_STOCK)


def product_of(event: Event) -> str:
    return str(event.props["product_id"])


MAX_UPDATE_IDS = 256  # catalogue record ids remembered per product (duplicates)


def seen_update(state: ProductState, ev: Event, window: int = DEFAULT_WINDOW) -> bool:
    """Whether this ``product_updated`` record (by event id) was already applied; remembers
    it otherwise (ids within ``window`` of event time, at most MAX_UPDATE_IDS)."""
    if ev.event_id in state.updates:
        return True
    state.updates[ev.event_id] = ev.ts
    if len(state.updates) > MAX_UPDATE_IDS:
        horizon = ev.ts - window
        kept = [(k, t) for k, t in state.updates.items() if t >= horizon]
        state.updates = dict(kept[-MAX_UPDATE_IDS:])
    return False


def on_product_event(state: ProductState, ev: Event, window: int = DEFAULT_WINDOW) -> list[Event]:
    """Update the product's state; return the per-customer events a change causes."""
    p = ev.props
    if ev.type in INTEREST_TYPES:
        if ev.ts >= state.interested.get(ev.customer_id, 0):
            state.interested[ev.customer_id] = ev.ts
            if isinstance(p.get("price"), int | float):
                state.seen_price[ev.customer_id] = float(p["price"])
        if ev.type == WISHLIST_ADDED and ev.ts >= state.wished.get(ev.customer_id, 0):
            state.wished[ev.customer_id] = ev.ts
        _forget_before(state, ev.ts - window)
        return []
    if ev.type != "product_updated":
        return []
    if ev.ts < state.updated_at:  # a stale record read late never makes a false drop
        state.stale += 1
        return []
    state.updated_at = ev.ts
    out: list[Event] = []
    new_price = p.get("price")
    new_stock = p.get("in_stock")
    fans = sorted(c for c, ts in state.interested.items() if ev.ts - window <= ts <= ev.ts)
    kind = {c: "wishlist" if ev.ts - window <= state.wished.get(c, -(2**62)) <= ev.ts
            else "browse" for c in fans}
    if new_price is not None:
        for c in fans:  # the catalogue's previous price, else the price the customer saw
            old = state.price if state.price is not None else state.seen_price.get(c)
            if old is not None and new_price < old:
                out.append(_derived(ev, PRICE_DROPPED, c, {
                    "product_id": state.product_id, "price": new_price, "old_price": old,
                    "interest": kind[c]}))
    if new_stock is True and state.in_stock is False:
        out += [_derived(ev, BACK_IN_STOCK, c, {"product_id": state.product_id,
                                                "interest": kind[c]}) for c in fans]
    if new_price is not None:
        state.price = float(new_price)
    if new_stock is not None:
        state.in_stock = bool(new_stock)
    _forget_before(state, ev.ts - window)
    return out


def _derived(update: Event, type_: str, customer_id: str, props: dict) -> Event:
    return Event(stable_id(update.event_id, type_, customer_id), type_, customer_id, update.ts,
                 props, f"derived:{update.source}")


def forget_stale(state: ProductState, horizon: int) -> bool:
    """Sweep the product if it holds a customer older than ``horizon`` (whether it did).
    For the shard's daily sweep of every product (``Aligner``): a product no event touches
    any more (catalogue churn) kept its last 14 days of interest forever. Its catalogue
    facts (price, stock, record ids) stay: a later update is compared against them."""
    if not (any(ts < horizon for ts in state.interested.values())
            or any(ts < horizon for ts in state.wished.values())):
        return False
    _forget_before(state, horizon, every=0)
    return True


def is_blank(state: ProductState) -> bool:
    """Nothing in it that a new ``ProductState`` would not say alike: no catalogue fact, no
    record id, no customer. (``stale`` and ``pruned_at`` are a counter and a throttle.)"""
    return (state.price is None and state.in_stock is None and not state.updates
            and not state.interested and not state.wished and not state.seen_price
            and state.updated_at == _NO_UPDATE)


def _forget_before(state: ProductState, horizon: int, every: int = DAY) -> None:
    """Sweep out stale customers at most once per day of event time (O(n) per sweep); the
    fan-out itself checks each customer's time, so a late sweep never widens the window."""
    if horizon - state.pruned_at < every:
        return
    state.pruned_at = horizon
    state.interested = {c: ts for c, ts in state.interested.items() if ts >= horizon}
    state.seen_price = {c: v for c, v in state.seen_price.items() if c in state.interested}
    state.wished = {c: ts for c, ts in state.wished.items() if ts >= horizon}
