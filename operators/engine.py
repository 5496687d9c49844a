"""The pure trigger engine: ``(CustomerState, event | None, now) → decisions``.

No I/O, no wall clock: ``now`` is passed in and profiles come through a lookup callable,
so the same input replays to the same decisions, and tests need no dataflow.

One call to :meth:`Engine.handle` first fires the customer's timers that are due (a step is
due at ``Instance.due`` in event time and fires once ``now >= due + late_event_grace``, so
a cancel event arriving a little late still wins), then applies the event, if any:
dedup → customer facts (cart, consents, conversions) → cancels → resets → starts.
Live runs pass the wall clock as ``now``; replay runs pass the events' own time.
"""

from __future__ import annotations

from collections.abc import Callable

from cdp_triggers.events import Event
from cdp_triggers.ids import stable_id
from cdp_triggers.records import (
    CANCEL_EVENT,
    CANCELLED,
    NO_CONSENT,
    NO_CONTACT,
    NO_PROFILE,
    PROFILE_UNAVAILABLE,
    REENTRY_COOLDOWN,
    REENTRY_ONCE,
    SENT,
    SUPPRESSED,
    TRIGGER_DISABLED,
    Conversion,
    Decision,
    Duplicate,
    Lifecycle,
    Output,
    Send,
)
from config.loader import ConfigSet
from config.schema import Trigger
from operators.conditions import key_of, matches
from state.customer import CustomerState, Instance, Touch
from state.profiles import Profile, ProfileUnavailable

ProfileLookup = Callable[[str], Profile | None]


class _Lazy:
    """Fetch a customer's profile at most once per call, and only if a decision needs it."""

    __slots__ = ("_cid", "_got", "_lookup", "_profile", "unavailable")

    def __init__(self, lookup: ProfileLookup, customer_id: str) -> None:
        self._lookup, self._cid, self._got, self._profile = lookup, customer_id, False, None
        self.unavailable = False

    def get(self) -> Profile | None:
        if not self._got:
            self._got = True
            try:
                self._profile = self._lookup(self._cid)
            except ProfileUnavailable:
                self.unavailable = True
        return self._profile


class Engine:
    """Holds the config set; all customer data lives in the CustomerState passed in."""

    def __init__(self, config: ConfigSet) -> None:
        self.config = config
        self.grace = config.policy.late_event_grace
        self._by_id: dict[str, Trigger] = {t.id: t for t in config.triggers}
        live = [t for t in config.triggers if t.enabled]
        self._starts: dict[str, list[Trigger]] = {}
        for t in live:
            self._starts.setdefault(t.start.event, []).append(t)
        self._max_window = max((t.attribution_window for t in config.triggers), default=0)
        self._max_cooldown = max((t.reentry.cooldown or 0 for t in config.triggers), default=0)
        self._once = frozenset(t.id for t in config.triggers if t.reentry.once)

    # ---- public API -------------------------------------------------------------------

    def handle(self, state: CustomerState, event: Event | None, now: int,
               profiles: ProfileLookup) -> list[Output]:
        """Fire due timers at ``now``, then apply ``event``. Mutates and returns outputs."""
        out: list[Output] = []
        lazy = _Lazy(profiles, state.customer_id)
        self._fire_due(state, now, lazy, out)
        if event is not None:
            self._apply(state, event, now, out)
        return out

    def next_wakeup(self, state: CustomerState) -> int | None:
        """When the next timer of this customer fires (epoch ms), or None."""
        if not state.instances:
            return None
        return min(i.due for i in state.instances.values()) + self.grace

    def prune(self, state: CustomerState, now: int) -> None:
        """Forget what can no longer matter at ``now`` (bounded state per customer)."""
        policy = self.config.policy
        horizon = now - policy.dedup_window
        if state.seen and (len(state.seen) > policy.dedup_max_ids
                           or next(iter(state.seen.values())) < horizon):
            keep = [(k, v) for k, v in state.seen.items() if v >= horizon]
            state.seen = dict(keep[-policy.dedup_max_ids:])
        if state.touches and state.touches[0].ts + self._max_window < now:
            state.touches = [t for t in state.touches if t.ts + t.window >= now]
        if state.last_entry and min(state.last_entry.values()) + self._max_cooldown < now:
            state.last_entry = {k: v for k, v in state.last_entry.items()
                                if k in self._once or v + self._max_cooldown >= now}

    # ---- timers -----------------------------------------------------------------------

    def _fire_due(self, state: CustomerState, now: int, lazy: _Lazy, out: list[Output]) -> None:
        while state.instances:
            slot, inst = min(state.instances.items(),
                             key=lambda kv: (kv[1].due, -self._priority(kv[1].trigger_id), kv[0]))
            if inst.due + self.grace > now:
                return
            self._run_step(state, slot, inst, now, lazy, out)

    def _priority(self, trigger_id: str) -> int:
        t = self._by_id.get(trigger_id)
        return t.priority if t else 0

    def _run_step(self, state: CustomerState, slot: str, inst: Instance, now: int,
                  lazy: _Lazy, out: list[Output]) -> None:
        trig = self._by_id.get(inst.trigger_id)
        t = inst.due
        if trig is None or not trig.enabled:
            del state.instances[slot]
            out.append(self._life(state, inst, "expired", TRIGGER_DISABLED, "", t, now))
            return
        step = trig.steps[inst.step]
        blocked = self._reentry_block(state, trig, inst, t)
        if blocked:
            out.append(self._decision(state, trig, inst, step.channels[0], step.template,
                                      SUPPRESSED, blocked, t, now))
            del state.instances[slot]
            out.append(self._life(state, inst, "completed", blocked, "", t, now))
            return
        for channel in step.channels:
            profile = lazy.get()
            reason = (PROFILE_UNAVAILABLE if lazy.unavailable
                      else self._ineligible(state, profile, trig, channel, t))
            if reason:
                out.append(self._decision(state, trig, inst, channel, step.template,
                                          SUPPRESSED, reason, t, now))
                continue
            d = self._decision(state, trig, inst, channel, step.template, SENT, "", t, now)
            out.append(d)
            out.append(Send(d.send_id, state.customer_id, trig.id, trig.kind,
                            self.config.version, inst.instance_id, inst.step, channel,
                            step.template, d.variant, self._variables(state, inst), t, now))
            state.touches.append(Touch(d.send_id, trig.id, d.variant, channel, t,
                                       trig.attribution_window))
            if inst.step == 0:
                state.last_entry[trig.id] = t
            break
        inst.step += 1
        if inst.step < len(trig.steps):
            inst.due = t + trig.steps[inst.step].delay
        else:
            del state.instances[slot]
            out.append(self._life(state, inst, "completed", "", "", t, now))

    def _reentry_block(self, state: CustomerState, trig: Trigger, inst: Instance, t: int) -> str:
        if inst.step != 0 or trig.id not in state.last_entry:
            return ""
        if trig.reentry.once:
            return REENTRY_ONCE
        cooldown = trig.reentry.cooldown
        if cooldown is not None and t - state.last_entry[trig.id] < cooldown:
            return REENTRY_COOLDOWN
        return ""

    def _ineligible(self, state: CustomerState, profile: Profile | None, trig: Trigger,
                    channel: str, t: int) -> str:
        if profile is None:
            return NO_PROFILE
        if not profile.has_contact(channel):
            return NO_CONTACT
        override = state.consents.get(f"{channel}:{trig.kind}")
        granted = (override[0] if override and override[1] <= t
                   else profile.consent(channel, trig.kind))
        if trig.kind == "marketing":
            return "" if granted is True else NO_CONSENT
        return "" if granted is not False else NO_CONSENT

    # ---- events -----------------------------------------------------------------------

    def _apply(self, state: CustomerState, ev: Event, now: int, out: list[Output]) -> None:
        if ev.event_id in state.seen:
            out.append(Duplicate(ev.event_id, ev.customer_id, ev.type, ev.source, ev.ts))
            return
        state.seen[ev.event_id] = ev.ts
        state.high_water = max(state.high_water, ev.ts)
        self._facts(state, ev, out)
        for slot, inst in list(state.instances.items()):
            trig = self._by_id.get(inst.trigger_id)
            if trig is None or ev.ts < inst.started_at:
                continue
            if any(matches(m, ev) for m in trig.cancel_on):
                self._cancel(state, slot, inst, trig, ev, now, out)
            elif trig.wait.inactivity is not None and inst.step == 0 and (
                ev.type in trig.wait.reset_on or matches(trig.start, ev)
            ):
                k = key_of(trig.key, ev)
                if k is None or k == inst.key:
                    inst.activity_at = max(inst.activity_at, ev.ts)
                    inst.due = inst.activity_at + trig.wait.inactivity + trig.steps[0].delay
                    inst.context = dict(ev.props)
        for trig in self._starts.get(ev.type, ()):
            if not matches(trig.start, ev):
                continue
            k = key_of(trig.key, ev)
            k = "" if k is None else k
            slot = f"{trig.id}\x1f{k}"
            if slot in state.instances:
                continue  # a live instance: the event was applied as activity above
            inst = Instance(trig.id, k, stable_id(state.customer_id, trig.id, k, ev.event_id),
                            ev.event_id, ev.ts, ev.ts, ev.ts + trig.wait.ms + trig.steps[0].delay,
                            context=dict(ev.props))
            state.instances[slot] = inst
            out.append(self._life(state, inst, "started", "", ev.event_id, ev.ts, now))
        self.prune(state, max(now, state.high_water))

    def _cancel(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                ev: Event, now: int, out: list[Output]) -> None:
        step = trig.steps[inst.step]
        out.append(self._decision(state, trig, inst, step.channels[0], step.template,
                                  CANCELLED, f"{CANCEL_EVENT}:{ev.type}", ev.ts, now))
        del state.instances[slot]
        out.append(self._life(state, inst, "cancelled", ev.type, ev.event_id, ev.ts, now))

    def _facts(self, state: CustomerState, ev: Event, out: list[Output]) -> None:
        """Customer facts the triggers read: cart lines, consents, conversions."""
        p = ev.props
        if ev.type == "added_to_cart":
            line = state.cart.setdefault(str(p["product_id"]),
                                         {"quantity": 0, "price": p.get("price")})
            line["quantity"] += int(p.get("quantity") or 1)
        elif ev.type == "removed_from_cart":
            state.cart.pop(str(p["product_id"]), None)
        elif ev.type == "consent_changed":
            key = f"{p['channel']}:{p['category']}"
            prev = state.consents.get(key)
            if prev is None or prev[1] <= ev.ts:
                state.consents[key] = (bool(p["granted"]), ev.ts)
        elif ev.type == "order_placed":
            state.cart.clear()
            touch = max((t for t in state.touches if t.ts <= ev.ts <= t.ts + t.window),
                        key=lambda t: (t.ts, t.send_id), default=None)
            if touch is not None:
                out.append(Conversion(stable_id("conv", p["order_id"], touch.send_id),
                                      state.customer_id, str(p["order_id"]), float(p["total"]),
                                      str(p["currency"]), touch.send_id, touch.trigger_id,
                                      touch.variant, touch.channel, touch.ts, ev.ts))

    # ---- record builders ----------------------------------------------------------------

    def _variables(self, state: CustomerState, inst: Instance) -> dict:
        variables: dict = {"key": inst.key, "trigger_event": inst.context}
        if state.cart:
            items = [{"product_id": pid, **line} for pid, line in sorted(state.cart.items())]
            variables["items"] = items
            variables["cart_total"] = round(
                sum((i["price"] or 0) * i["quantity"] for i in items), 2)
        return variables

    def _decision(self, state: CustomerState, trig: Trigger, inst: Instance, channel: str,
                  template: str, status: str, reason: str, t: int, now: int) -> Decision:
        send_id = stable_id(trig.id, self.config.version, state.customer_id, inst.instance_id,
                            inst.step, channel)
        return Decision(stable_id(send_id, status, reason, t), send_id, state.customer_id, trig.id,
                        trig.kind, self.config.version, inst.instance_id, inst.step, channel,
                        template, "", status, reason, t, now)

    def _life(self, state: CustomerState, inst: Instance, action: str, reason: str,
              event_id: str, t: int, now: int) -> Lifecycle:
        return Lifecycle(stable_id(inst.instance_id, action), state.customer_id, inst.trigger_id,
                         inst.instance_id, inst.key, action, reason, event_id, t, now)
