"""Kafka outputs: send commands for channel gateways, and dead letters for producers."""

from __future__ import annotations

from dataclasses import asdict

import orjson
from bytewax.connectors.kafka import KafkaSinkMessage

from cdp_triggers.events import Rejected
from cdp_triggers.records import Send


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
