"""A channel-gateway simulator: what push/email/SMS providers answer to a send.

``simulate(send)`` is a pure, seeded function of the send: the same send id always gets
the same receipts (delivered → opened → clicked, or bounced/failed, sometimes an
unsubscribe), with realistic rates and delays per channel. It is used two ways:

* ``cdp-triggers gateway-sim``: a service that consumes the ``sends`` topic and produces
  the receipts to the ``outcomes`` topic when they are due (optionally time-compressed);
* the embedded demo's loopback: receipts fed straight back to the customer's own engine
  state, so cascades run end to end without any server.

Opens follow a reading habit: each customer reads at one local hour of the day
(:func:`reading_hour`, seeded from the customer id, 07–22 h, in the send's ``tz``). A
message delivered in that hour or the hour before is opened more often and within minutes;
one delivered at another time is opened less often, and then in the customer's next reading
hour. So opens land in the reading hour (what smart send time learns) and a message held to
it is opened more (what it gains).
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from dataclasses import dataclass, replace

import orjson

from cdp_triggers.clock import HOUR, MINUTE, SECOND, local_hour
from cdp_triggers.clock import next_local_hour as hold_until
from cdp_triggers.events import Event
from cdp_triggers.ids import stable_fraction, stable_id
from cdp_triggers.records import Send

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChannelModel:
    deliver: float  # share delivered (the rest: bounce or fail)
    bounce: float  # share of the undelivered that hard-bounce (else: failed)
    deliver_delay: tuple[int, int]
    open: float  # share of delivered that are opened (× the reading habit, see above)
    click: float  # share of opened that are clicked
    click_delay: tuple[int, int]
    unsubscribe: float  # share of delivered that unsubscribe


# Rates in the range public benchmarks report for retail (push opens are low, e-mail opens
# ~20 %, SMS has no open receipt; clicks are a share of opens).
MODELS: dict[str, ChannelModel] = {
    "push": ChannelModel(0.88, 0.5, (2 * SECOND, 60 * SECOND), 0.10,
                         0.30, (5 * SECOND, 2 * MINUTE), 0.002),
    "email": ChannelModel(0.97, 0.6, (10 * SECOND, 5 * MINUTE), 0.22,
                          0.15, (10 * SECOND, 10 * MINUTE), 0.003),
    "sms": ChannelModel(0.96, 0.5, (2 * SECOND, 30 * SECOND), 0.0, 0.0, (0, 0), 0.004),
}


IN_HABIT = 1.8  # open probability × this when delivered in (or just before) the reading hour
OUT_OF_HABIT = 0.7  # … × this otherwise (opened later, in the next reading hour)


def reading_hour(customer_id: str, seed: int = 7) -> int:
    """The local hour (7–22) this simulated customer reads messages in."""
    return 7 + int(stable_fraction(f"read/{seed}", customer_id) * 16)


def _open_at(send: Send, model: ChannelModel, delivered: int, rng: random.Random,
             seed: int) -> int | None:
    """When the delivered message is opened (None: never), by the customer's habit."""
    hour = reading_hour(send.customer_id, seed)
    tz = send.tz or "UTC"
    h = local_hour(delivered, tz)
    if h == hour or (h + 1) % 24 == hour:
        if rng.random() >= min(0.95, model.open * IN_HABIT):
            return None
        start = hold_until(delivered, tz, hour, 2 * HOUR) or delivered
        return max(delivered, start) + rng.randint(MINUTE, 40 * MINUTE)
    if rng.random() >= model.open * OUT_OF_HABIT:
        return None
    start = hold_until(delivered, tz, hour, 2 * 24 * HOUR)
    return (start or delivered) + rng.randint(MINUTE, 59 * MINUTE)


def simulate(send: Send, seed: int = 7) -> list[Event]:
    """The receipts a gateway would produce for ``send``, in time order (pure, seeded)."""
    model = MODELS.get(send.channel)
    if model is None:
        return []
    rng = random.Random(f"{seed}/{send.send_id}")
    out: list[Event] = []

    def receipt(kind: str, at: int, **extra: object) -> None:
        out.append(Event(stable_id("sim", send.send_id, kind), f"message_{kind}",
                         send.customer_id, at,
                         {"send_id": send.send_id, "channel": send.channel, **extra},
                         "gateway-sim"))

    t = send.ts + rng.randint(*model.deliver_delay)
    if rng.random() >= model.deliver:
        if rng.random() < model.bounce:
            receipt("bounced", t, hard=True)
        else:
            receipt("failed", t)
        return out
    receipt("delivered", t)
    if rng.random() < model.unsubscribe:
        receipt("unsubscribed", t + rng.randint(MINUTE, HOUR))
        return out
    opened = _open_at(send, model, t, rng, seed) if model.open else None
    if opened is not None:
        receipt("opened", opened)
        if rng.random() < model.click:
            receipt("clicked", opened + rng.randint(*model.click_delay))
    return out


def serve(brokers: str, sends_topic: str, outcomes_topic: str, seed: int = 7,
          time_scale: float = 1.0, idle_exit_s: float | None = None) -> int:
    """Consume sends, produce receipts when due (wall clock; ``time_scale`` > 1 compresses
    the delays for demos, event times alike). Returns the number of receipts produced."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "gateway-sim",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
    consumer.subscribe([sends_topic])
    due: list[tuple[float, int, Event]] = []
    n = made = 0
    last_seen = time.monotonic()
    try:
        while True:
            msg = consumer.poll(0.1)
            now = time.monotonic()
            if msg is not None and not msg.error():
                last_seen = now
                send = Send(**orjson.loads(msg.value()))
                for e in simulate(send, seed):
                    delay_ms = max(0, e.ts - send.ts) / time_scale
                    n += 1  # event time compressed like the wall time, so both agree
                    e = replace(e, ts=send.ts + int(delay_ms))
                    heapq.heappush(due, (now + delay_ms / 1000, n, e))
            while due and due[0][0] <= now:
                _, _, e = heapq.heappop(due)
                producer.produce(outcomes_topic, key=e.customer_id.encode(), value=e.to_json())
                made += 1
            producer.poll(0)
            if idle_exit_s is not None and not due and now - last_seen > idle_exit_s:
                break
    finally:
        producer.flush(10)
        consumer.close()
    return made
