"""One place builds the delivery services from Settings: the gateway (``sends`` →
providers → receipts), the webhook receiver (providers → ``outcomes``) and ``send-test``.

Providers are chosen per channel (``CDP_PROVIDERS__EMAIL=unisender_go``…) with their
options from the environment (``CDP_PROVIDER_OPTIONS__UNISENDER_GO__API_KEY=…``); the
message text comes from ``config/templates.yaml``, parsed and compiled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdp_triggers.clock import Clock, WallClock
from cdp_triggers.ids import stable_id
from cdp_triggers.logs import RetryPolicy, kafka_error_logger, mask_url
from cdp_triggers.records import Send
from cdp_triggers.settings import Settings
from config.loader import ConfigSet, load_config
from config.templates import render
from flows.gateway import Gateway, GatewayStats, Outcome, _Stop, run_service
from sinks.providers import make_provider
from sinks.providers.base import Message, Provider
from state.profiles import Contact, RedisProfileStore
from state.send_ledger import LedgerConfig, SendLedger

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A setting or dependency the delivery services cannot start without."""


def build_providers(s: Settings, channels: tuple[str, ...] | None = None
                    ) -> dict[str, Provider]:
    """The provider of each channel. A channel whose provider is ``none``, or has no
    options at all, is not served (its sends are dead-lettered ``no_provider``, and the
    start-up log says so); options given but incomplete or wrong stop the start."""
    out: dict[str, Provider] = {}
    for channel, name in s.providers.items():
        if not name or name == "none" or (channels and channel not in channels):
            continue
        if not s.provider_options.get(name):
            log.warning("%s: provider %s is not configured (no CDP_PROVIDER_OPTIONS__%s__…): "
                        "%s sends will be dead-lettered", channel, name, name.upper(), channel)
            continue
        try:
            out[channel] = make_provider(name, s.provider_options.get(name, {}))
        except (KeyError, ValueError) as e:
            raise DeliveryError(f"provider {name!r} for {channel}: {e}") from e
    return out


def providers_by_name(s: Settings) -> dict[str, Provider]:
    """The webhook receiver's view: one route per configured provider name."""
    return {p.name: p for p in build_providers(s).values()}


def make_renderer(config: ConfigSet) -> Any:
    """(send, contact) → the provider-ready :class:`Message` (Jinja2 sandbox)."""

    def render_send(send: Send, contact: Contact) -> Message:
        common = {"customer_id": send.customer_id, "send_id": send.send_id,
                  "locale": contact.locale, "trigger_id": send.trigger_id,
                  "variant": send.variant, "channel": send.channel}
        r = render(config.templates, send.template, send.channel,
                   {**send.variables, **common}, contact.locale)
        return Message(send.send_id, send.customer_id, send.channel, send.template,
                       contact.address, contact.locale,
                       subject=r.subject or r.title, text=r.text,
                       provider_template_id=r.provider_template_id,
                       substitutions=dict(r.substitutions),
                       metadata={"send_id": send.send_id, "customer_id": send.customer_id,
                                 "trigger_id": send.trigger_id})

    return render_send


def build_gateway(s: Settings, config: ConfigSet | None = None, clock: Clock | None = None,
                  dry_run: bool = False, channels: tuple[str, ...] | None = None) -> Gateway:
    """The gateway of a run; ``channels``: only those providers (``send-test``)."""
    config = config or load_config(s.config_dir)
    store = RedisProfileStore(s.redis_url, s.redis_key_prefix)
    ledger = SendLedger(s.redis_url, LedgerConfig(s.send_ledger_prefix, s.send_ledger_lease_ms,
                                                  s.send_ledger_ttl_s))
    return Gateway(build_providers(s, channels), make_renderer(config), store.contacts_for,
                   ledger,
                   clock=clock or WallClock(), concurrency=s.gateway_concurrency,
                   max_attempts=s.gateway_max_attempts, backoff_s=s.gateway_backoff_s,
                   backoff_cap_s=s.retry_cap_seconds, rate_limits=s.provider_rate_limits,
                   timeout_s=s.gateway_timeout_s, dry_run=dry_run)


def effective(s: Settings) -> str:
    """The start-up line: what the service runs with, secrets masked."""
    opts = {n: {k: ("***" if any(w in k for w in ("key", "token", "secret", "password"))
                    else v) for k, v in o.items()} for n, o in s.provider_options.items()}
    return (f"providers {s.providers}, options {opts}, Kafka {s.kafka_brokers}, "
            f"Redis {mask_url(s.redis_url)}")


def run_gateway(s: Settings, idle_exit_s: float | None = None,
                clock: Clock | None = None) -> GatewayStats:
    """The gateway service until SIGTERM (the batch in hand finishes and is committed)."""
    from confluent_kafka import Consumer

    from sinks.kafka_out import KafkaOut

    gateway = build_gateway(s, clock=clock)
    klog = kafka_error_logger(log, f"Kafka {s.kafka_brokers}")
    consumer = Consumer({"bootstrap.servers": s.kafka_brokers, "group.id": s.gateway_group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 10_000, **klog.config()})
    out = KafkaOut(s.brokers, policy=RetryPolicy(cap_s=s.retry_cap_seconds,
                                                 max_attempts=s.retry_max_attempts))
    stop = _Stop()
    log.info("gateway: %s → providers → %s; %s", s.sends_topic, s.outcomes_topic, effective(s))

    async def main() -> GatewayStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # not the main thread (tests): stopped by idle_exit_s instead
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: setattr(stop, "set", True))
        return await run_service(gateway, consumer, out, sends_topic=s.sends_topic,
                                 outcomes_topic=s.outcomes_topic,
                                 dead_letter_topic=s.send_dead_letter_topic,
                                 batch=s.gateway_batch, idle_exit_s=idle_exit_s, stop=stop)

    try:
        return asyncio.run(main())
    finally:
        consumer.close()
        out.close()


def run_webhooks(s: Settings) -> None:
    """The webhook receiver until SIGTERM."""
    from flows.webhooks import KafkaBatcher, serve
    from sinks.kafka_out import KafkaOut

    providers = providers_by_name(s)
    if not providers:
        raise DeliveryError("no providers configured (CDP_PROVIDERS__…)")
    out = KafkaOut(s.brokers, policy=RetryPolicy(cap_s=s.retry_cap_seconds, max_attempts=3))
    log.info("webhooks: http://%s:%d/webhooks/{%s} → %s; %s", s.webhook_host, s.webhook_port,
             ",".join(providers), s.outcomes_topic, effective(s))
    try:
        serve(providers, KafkaBatcher(out.deliver, s.outcomes_topic), s.webhook_host,
              s.webhook_port, s.webhook_public_url)
    finally:
        out.close()


@dataclass(frozen=True)
class TestSend:
    outcome: Outcome
    provider: str


def send_test(s: Settings, template: str, channel: str, customer_id: str,
              variables: Mapping[str, Any] | None = None, dry_run: bool = False,
              clock: Clock | None = None) -> TestSend:
    """Render and send one message through the configured provider (``dry_run``: render
    only). Same path as the gateway: contacts from Redis, the sandbox, the ledger (a test
    send id is new each time: it includes the current time)."""
    clock = clock or WallClock()
    config = load_config(s.config_dir)
    if template not in config.templates:
        raise DeliveryError(f"no template {template!r} in {s.config_dir}/templates.yaml")
    gateway = build_gateway(s, config, clock=clock, dry_run=dry_run, channels=(channel,))
    if channel not in gateway.providers and not dry_run:
        raise DeliveryError(f"no provider configured for {channel} "
                            f"(CDP_PROVIDERS__{channel.upper()}, CDP_PROVIDER_OPTIONS__…)")
    now = clock.now_ms()
    send = Send(stable_id("send-test", customer_id, template, channel, now), customer_id,
                "send_test", "transactional", "test", "send-test", 0, channel, template, "a",
                dict(variables or {}), now, now)

    async def one() -> Outcome:
        async with gateway:
            [o] = await gateway.process([send])
            await gateway.finish([o])
            return o

    provider = gateway.providers.get(channel)
    outcome = asyncio.run(one())
    if outcome.dead_letter is not None:  # cannot be sent: say why, like any bad input
        raise DeliveryError(f"{outcome.reason}: {outcome.dead_letter['detail']}")
    if outcome.result == "dead_letter":  # dry run: the rendering failed
        raise DeliveryError(outcome.reason)
    return TestSend(outcome, provider.name if provider else "-")
