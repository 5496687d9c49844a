"""Kafka outputs: send commands for channel gateways, dead letters, and the producer that
delivers them or blocks trying.

:class:`KafkaOut` produces a batch and waits for every delivery report. Messages that fail
(broker away past ``message.timeout.ms``, leader moves, topic not yet there) are produced
again with exponential backoff, blocking the worker (back-pressure), until delivered or
``policy.max_attempts`` is reached; errors that retrying cannot fix (message too large,
not authorised, fatal producer errors) raise at once. librdkafka's errors and logs go
through :func:`cdp_triggers.logs.kafka_error_logger`: one line per broker state change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSinkMessage
from confluent_kafka import KafkaException, Producer

from cdp_triggers import metrics
from cdp_triggers.events import Rejected
from cdp_triggers.logs import DEFAULT_RETRY, RetryPolicy, kafka_error_logger, wait_out
from cdp_triggers.records import Send

log = logging.getLogger(__name__)

Message = tuple[bytes | None, bytes]

# Delivery errors no retry fixes: too large, invalid, not authorised, bad config.
PERMANENT_ERRORS = frozenset({10, 17, 18, 21, 29, 31, 35, 87, -186, -161, -162})

#: Producer settings the sink uses unless ``config`` overrides them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30_000,  # one attempt's bound; KafkaOut produces again after it
}


def send_message(send: Send) -> KafkaSinkMessage[bytes, bytes]:
    """Keyed by send_id: a gateway that sees the same key twice must send once."""
    return KafkaSinkMessage(key=send.send_id.encode(), value=orjson.dumps(asdict(send)))


def dead_letter_message(rej: Rejected) -> KafkaSinkMessage[bytes | None, bytes]:
    """The reason, where it came from, and the (truncated) payload as text."""
    body = {
        "reason": rej.reason,
        "detail": rej.detail,
        "source": rej.source,
        "customer_id": rej.customer_id,
        "event_id": rej.event_id,
        "event_type": rej.event_type,
        "raw": rej.raw.decode("utf-8", "replace"),
    }
    return KafkaSinkMessage(key=rej.customer_id.encode() or None, value=orjson.dumps(body))


class DeliveryFailed(Exception):
    """Some messages of a batch got a failed delivery report."""

    def __init__(self, topic: str, failed: int, error: Any) -> None:
        super().__init__(f"{failed} message(s) to {topic!r} not delivered: {error}")
        self.error = error
        self.retriable = not (error.fatal() or error.code() in PERMANENT_ERRORS)


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, DeliveryFailed) and exc.retriable


class KafkaOut:
    """A producer whose :meth:`deliver` returns only once every message is acknowledged.

    One per sink partition (a partition runs on one worker thread); the log state is shared
    by the process's producers of the same brokers, so an outage is reported once.
    """

    def __init__(self, brokers: Sequence[str], config: dict[str, Any] | None = None,
                 policy: RetryPolicy = DEFAULT_RETRY) -> None:
        self.policy = policy
        self.klog = kafka_error_logger(log, f"Kafka {','.join(brokers)}", policy.repeat_s,
                                       shared=True)
        self.producer = Producer({"bootstrap.servers": ",".join(brokers), **PRODUCER_DEFAULTS,
                                  **self.klog.config(), **(config or {})})
        self.delivered = 0
        self.attempts = 0
        self.retries = metrics.sink_retries("kafka")

    @property
    def is_down(self) -> bool:
        """The brokers are unreachable, or a delivery is being retried through an outage."""
        return self.klog.state.is_down

    def deliver(self, topic: str, messages: Sequence[Message]) -> int:
        """Produce ``messages`` to ``topic`` and wait for all delivery reports; failed ones
        are produced again (backoff, state-change logs) until delivered. Returns the count."""
        todo = list(messages)

        def attempt() -> int:
            nonlocal todo
            failed, first = self._produce_and_wait(topic, todo)
            if failed:
                todo = failed
                raise DeliveryFailed(topic, len(failed), first)
            return len(messages)

        if todo:
            wait_out(metrics.counting_retries(attempt, self.retries), self.klog.state,
                     _is_outage, self.policy,
                     detail=lambda n: f"{n} message(s) delivered to {topic}")
            self.klog.ok()
            self.delivered += len(messages)
        return len(messages)

    def _produce_and_wait(self, topic: str, messages: list[Message]) -> tuple[list[Message], Any]:
        """One attempt: (messages whose delivery failed, the first error)."""
        self.attempts += 1
        failed: list[Message] = []
        errors: list[Any] = []

        def report(err: Any, _msg: Any, m: Message) -> None:
            if err is not None:
                failed.append(m)
                errors.append(err)

        for m in messages:
            while True:
                try:
                    self.producer.produce(topic, key=m[0], value=m[1],
                                          on_delivery=lambda e, msg, m=m: report(e, msg, m))
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    self.producer.poll(0.1)
                except KafkaException as e:  # refused at once (e.g. unknown topic)
                    report(e.args[0], None, m)
                    break
        while self.producer.flush(1.0) > 0:  # every message is reported by message.timeout.ms
            continue
        return failed, errors[0] if errors else None

    def close(self) -> None:
        self.producer.flush(5.0)
