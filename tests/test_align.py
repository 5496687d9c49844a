"""The aligner: one canonical per-customer event order whatever the read order or sharding."""

from __future__ import annotations

import pickle
import random
from collections import defaultdict

from cdp_triggers.events import Event, parse_event
from cdp_triggers.synthetic import SyntheticConfig, SyntheticRetail
from operators.align import Aligner


def generated(customers: int = 300, days: float = 2, seed: int = 3) -> list[Event]:
    gen = SyntheticRetail(SyntheticConfig(customers=customers, days=days, seed=seed))
    return [e for e in (parse_event(r) for r in gen.events()) if isinstance(e, Event)]


def split(events: list[Event], shards: int) -> dict[str, list[Event]]:
    """Like Kafka topics keyed by customer: per topic and partition; the catalogue stream in
    a stream of its own (every shard reads it)."""
    streams: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.type == "product_updated":
            streams["product_updates:0"].append(e)
            continue
        topic = "orders" if e.type.startswith("order_") else \
            "outcomes" if e.type.startswith("message_") else "clickstream"
        streams[f"{topic}:{hash(e.customer_id) % shards}"].append(e)
    return streams


def run_shard(streams: dict[str, list[Event]], rng: random.Random,
              lateness: int = 0) -> list[Event]:
    """Read the streams in random-sized chunks in random order, releasing as we go."""
    al = Aligner(sorted(streams), lateness)
    pos = dict.fromkeys(streams, 0)
    out: list[Event] = []
    while any(pos[s] < len(v) for s, v in streams.items()) or not al.finished():
        open_ = [s for s in streams if pos[s] <= len(streams[s]) and not al.marks[s].done]
        if not open_:
            out += al.release()
            break
        s = rng.choice(open_)
        n = rng.randint(1, 50)
        chunk = streams[s][pos[s]:pos[s] + n]
        pos[s] += n
        for e in chunk:
            al.offer(s, e)
        if not chunk:
            al.end(s)
        out += al.release()
        if pos[s] >= len(streams[s]):
            al.end(s)
    out += al.release()
    return [e for e in out if isinstance(e, Event)]


def per_customer(events: list[Event]) -> dict[str, list[tuple[int, str, str]]]:
    seq: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for e in events:
        if e.type != "product_updated":  # every shard passes the catalogue on; not a customer's
            seq[e.customer_id].append((e.ts, e.event_id, e.type))
    return dict(seq)


def sharded(events: list[Event], shards: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    streams = split(events, shards)
    catalogue = streams.pop("product_updates:0", [])
    got: list[Event] = []
    for i in range(shards):
        mine = {s: v for s, v in streams.items() if s.endswith(f":{i}")}
        mine["product_updates:0"] = catalogue  # every shard reads the catalogue
        got += run_shard(mine, rng)
    return per_customer(got)


def test_per_customer_order_is_the_same_for_any_read_order_and_shard_count():
    events = generated()
    reference = sharded(events, 1, seed=0)
    assert sum(t == "price_dropped" for s in reference.values() for _, _, t in s) > 0
    for shards, seed in ((1, 1), (2, 2), (4, 3), (4, 4), (7, 5)):
        assert sharded(events, shards, seed) == reference, (shards, seed)


def test_release_is_sorted_and_nothing_is_lost():
    events = generated(100, 1)
    got = run_shard(split(events, 1), random.Random(9))
    regular = [e for e in got if not e.source.startswith("derived:")]
    assert [(e.ts, e.event_id) for e in got] == sorted((e.ts, e.event_id) for e in got)
    assert len(regular) == len(events)


def test_a_stream_out_of_order_within_the_lateness_is_released_in_order():
    ev = [Event(f"e{i}", "product_viewed", "c1", 1000 * t, {"product_id": "p"})
          for i, t in enumerate([5, 3, 4, 9, 7, 8, 12])]
    al = Aligner(["a"], lateness=3000)
    out = []
    for e in ev:
        al.offer("a", e)
        out += al.release()
    al.end("a")
    out += al.release()
    assert [e.ts for e in out] == sorted(e.ts for e in ev) and al.stats.late == 0


def test_an_event_later_than_the_lateness_is_released_at_once_and_counted():
    al = Aligner(["a", "b"], lateness=0)
    al.offer("a", Event("a1", "x", "c", 10_000))
    al.offer("b", Event("b1", "x", "c", 20_000))
    assert al.release() == []  # a may still bring something at 10 s
    al.offer("a", Event("a2", "x", "c", 25_000))
    assert [e.event_id for e in al.release()] == ["a1"]  # released up to 20 s
    al.offer("b", Event("b0", "x", "c", 5_000))  # far behind what b already sent
    assert [e.event_id for e in al.release()] == ["b0"] and al.stats.late == 1


def test_live_a_caught_up_stream_does_not_hold_the_watermark():
    al = Aligner(["clicks", "consents"], lateness=0)
    al.offer("clicks", Event("k1", "x", "c", 1_000))
    al.offer("clicks", Event("k2", "x", "c", 2_000))
    assert al.release(wall=2_500) == []  # consents never read yet: it may hold older ones
    al.caught_up("consents")  # the broker says: nothing unread there
    assert [e.event_id for e in al.release(wall=2_500)] == ["k1"]  # k2 waits for clicks' next
    al.caught_up("clicks")
    assert [e.event_id for e in al.release(wall=2_500)] == ["k2"]


def test_snapshot_round_trip_continues_identically():
    events = generated(80, 1)
    streams = split(events, 1)
    a = run_shard(streams, random.Random(1))
    al = Aligner(sorted(streams), 0)
    out: list = []
    half = {s: len(v) // 2 for s, v in streams.items()}
    for s, v in streams.items():
        for e in v[:half[s]]:
            al.offer(s, e)
    out += al.release()
    al = pickle.loads(pickle.dumps(al))
    for s, v in streams.items():
        for e in v[half[s]:]:
            al.offer(s, e)
        al.end(s)
    out += al.release()
    assert per_customer([e for e in out if isinstance(e, Event)]) == per_customer(a)


def test_a_resent_catalogue_record_is_a_counted_duplicate_and_applied_once():
    """No customer state dedupes product_updated: the product step does, so the counts
    balance (read = accepted + rejected + duplicates) and no drop is told twice."""
    from cdp_triggers.events import DUPLICATE, Rejected

    al = Aligner(["a"], lateness=0)
    view = Event("v1", "product_viewed", "c1", 1_000, {"product_id": "p", "price": 20.0})
    drop = Event("u1", "product_updated", "catalogue", 2_000, {"product_id": "p", "price": 15.0})
    for e in (view, drop, drop):
        al.offer("a", e)
    al.end("a")
    out = al.release()
    dups = [r for r in out if isinstance(r, Rejected)]
    assert [(r.reason, r.event_id) for r in dups] == [(DUPLICATE, "u1")]
    assert sorted(e.type for e in out if isinstance(e, Event)) == [
        "price_dropped", "product_updated", "product_viewed"]  # one drop told, once


def test_a_snapshot_holds_the_waiting_events_exactly_as_json_and_older_ones_restore():
    """The held-back events pickle as one JSON document (a live shard snapshots ~lateness
    worth of them at every epoch): the same events come back, in the same heap order."""
    al = Aligner(["s"], lateness=10_000)
    props = [{"product_id": "p1", "price": 0.1 + 0.2, "items": [{"q": 2, "x": None}]},
             {"text": "ünïcödé \x1f", "big": 2**63 - 1, "neg": -0.0, "flag": True}, {}]
    for i, p in enumerate(props * 3):
        al.offer("s", Event(f"e{i % 4}", "product_viewed", f"c{i}", 1_000 + (i * 7) % 5, p,
                            f"clickstream:0:{i}"))
    back = pickle.loads(pickle.dumps(al, pickle.HIGHEST_PROTOCOL))
    assert back.buffer == al.buffer and back.__dict__ == al.__dict__
    assert str(back.buffer[[e.customer_id for *_, e in back.buffer].index("c4")][3]
               .props["neg"]) == "-0.0"
    assert b"cdp_triggers.events" not in pickle.dumps(al)  # no pickled Event objects
    before = Aligner.__new__(Aligner)  # a snapshot from before: the heap as a pickled list
    before.__setstate__(pickle.loads(pickle.dumps(al.__dict__.copy())))
    assert before.buffer == al.buffer


def test_a_snapshot_pickles_again_only_the_products_changed_since_the_previous_one():
    """The catalogue state (who showed interest in each product) is snapshotted at every
    epoch's close: an unchanged product keeps its pickle, and every form restores."""
    al = Aligner(["s"], lateness=0)

    def view(i: int, product: str, ts: int) -> Event:
        return Event(f"v{i}", "product_viewed", f"c{i}", ts, {"product_id": product,
                                                              "price": 10.0 + i})

    for i in range(9):
        al.offer("s", view(i, f"p{i % 3}", 1_000 + i))
    al.offer("s", view(99, "p9", 5_000))  # moves the watermark past the nine
    al.release()
    assert sorted(al.products) == ["p0", "p1", "p2"]
    first = pickle.loads(pickle.dumps(al, pickle.HIGHEST_PROTOCOL))
    assert first.products == al.products
    packed = dict(al._packed)
    al.offer("s", view(100, "p9", 6_000))
    al.release()  # releases p9's first view: p9 is new, p0-p2 untouched
    second = pickle.loads(pickle.dumps(al, pickle.HIGHEST_PROTOCOL))
    assert second.products == al.products and sorted(al.products) == ["p0", "p1", "p2", "p9"]
    assert all(al._packed[pid] is packed[pid] for pid in packed)  # not pickled again
    al.offer("s", view(101, "p1", 7_000))
    al.offer("s", view(102, "p0", 8_000))
    al.release()  # p9's second view and p1's: p0 and p2 untouched
    third = pickle.loads(pickle.dumps(second, pickle.HIGHEST_PROTOCOL))  # a restored one
    assert third.products == second.products
    before = dict(al._packed)
    pickle.dumps(al)
    assert sorted(pid for pid in before if al._packed[pid] is not before[pid]) == ["p1", "p9"]
    old = Aligner.__new__(Aligner)  # a snapshot from before: products as objects
    old.__setstate__({**al.__dict__, "products": dict(al.products)})
    assert old.products == al.products and old._dirty == set(al.products)


def test_interest_no_event_touches_any_more_is_swept_daily_and_bare_products_dropped():
    """Catalogue churn: a product viewed for a while and then by nobody kept its 14 days of
    interest, and itself, for ever (a product swept itself only at its own events: 60
    days of 200 new products × 50 viewers grew a shard's snapshot to 16 MB). The shard now
    sweeps every product once a day of released time: interest stays within the window, a
    product with nothing left is dropped, catalogue facts stay."""
    day, t0 = 86_400_000, 1_780_000_000_000
    al = Aligner(["s"], lateness=0)
    al.offer("s", Event("u0", "product_updated", "catalogue", t0,
                        {"product_id": "old", "price": 20.0, "in_stock": False}))
    n = 0
    for d in range(40):
        for c in range(5):
            n += 1
            al.offer("s", Event(f"v{n}", "product_viewed", f"c{c}", t0 + d * day + c,
                                {"product_id": f"d{d}", "price": 20.0}))
        if d == 0:
            al.offer("s", Event("v0", "product_viewed", "c9", t0 + 9,
                                {"product_id": "old", "price": 20.0}))
        al.release()
    interest = sum(len(p.interested) for p in al.products.values())
    assert interest <= 16 * 5  # the window (14 days) and a day of sweep granularity
    assert "d0" not in al.products and "d39" in al.products
    old = al.products["old"]  # its viewer is forgotten, its catalogue facts are not
    assert not old.interested and old.price == 20.0 and old.in_stock is False
    again = pickle.loads(pickle.dumps(al))
    assert again.products == al.products


def test_the_daily_sweep_of_every_product_changes_no_released_event(monkeypatch):
    import operators.align as align

    events = generated(customers=150, days=20, seed=5)
    streams = split(events, 1)
    swept = []

    def counted(state, horizon):
        changed = align_forget(state, horizon)
        swept.append(changed)
        return changed

    align_forget = align.forget_stale
    monkeypatch.setattr(align, "forget_stale", counted)
    with_sweep = run_shard(streams, random.Random(1))
    assert sum(swept) > 0  # stale interest was forgotten
    monkeypatch.setattr(Aligner, "_sweep", lambda self: None)
    without = run_shard(streams, random.Random(1))
    assert sum(e.type in ("price_dropped", "back_in_stock") for e in with_sweep) > 0
    assert [(e.ts, e.event_id, e.type, e.customer_id, e.props) for e in with_sweep] == \
        [(e.ts, e.event_id, e.type, e.customer_id, e.props) for e in without]
