"""The pure trigger engine: ``(CustomerState, event | None, now) → decisions``.

No I/O, no wall clock: ``now`` is passed in and profiles come through a lookup callable,
so the same input replays to the same decisions, and tests need no dataflow.

One call to :meth:`Engine.handle` fires the customer's timers that are due (a step is due
at ``Instance.due`` in event time and fires once ``now >= due + grace``, so a cancel event
arriving a little late still wins), applies the event, if any (dedup → customer facts →
cancels → resets → starts), then fires what the event made due at once (delay-0 steps).
Live runs pass the wall clock as ``now``; replay runs pass the events' own time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdp_triggers.events import Event
from cdp_triggers.ids import stable_id
from cdp_triggers.records import (
    CANCEL_EVENT,
    CANCELLED,
    CONDITION_NOT_MET,
    EXPIRED,
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
from config.schema import Step, Trigger
from operators.conditions import (
    MISSING,
    Scope,
    all_hold,
    cart_items,
    cart_total,
    key_of,
    matches,
    value_of,
)
from state.customer import CustomerState, Instance, Touch
from state.profiles import Profile, ProfileUnavailable

ProfileLookup = Callable[[str], Profile | None]
PRUNE_EVERY = 3_600_000  # sweep a customer's bounded state at most hourly (event time)


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
        policy = config.policy
        self._by_id: dict[str, Trigger] = {t.id: t for t in config.triggers}
        self._grace = {t.id: policy.late_event_grace if t.grace is None else t.grace
                       for t in config.triggers}
        self._starts: dict[str, list[Trigger]] = {}
        for t in config.triggers:
            if t.enabled:
                for typ in t.start.types:
                    self._starts.setdefault(typ, []).append(t)
        for lst in self._starts.values():
            lst.sort(key=lambda t: (-t.priority, t.id))
        self._max_window = max((t.attribution_window for t in config.triggers), default=0)
        self._max_cooldown = max((t.reentry.cooldown or 0 for t in config.triggers), default=0)
        self._max_count_window = max((t.start.count.within for t in config.triggers
                                      if t.start.count), default=0)
        self._once = frozenset(t.id for t in config.triggers if t.reentry.once)

    # ---- public API -------------------------------------------------------------------

    def handle(self, state: CustomerState, event: Event | None, now: int,
               profiles: ProfileLookup) -> list[Output]:
        """Fire due timers at ``now``, apply ``event``, fire what it made due. Mutates."""
        out: list[Output] = []
        lazy = _Lazy(profiles, state.customer_id)
        self._fire_due(state, now, lazy, out)
        if event is not None:
            self._apply(state, event, now, out)
            self._fire_due(state, now, lazy, out)
        return out

    def next_wakeup(self, state: CustomerState) -> int | None:
        """When the next timer of this customer fires (epoch ms), or None."""
        if not state.instances:
            return None
        return min(self._fires_at(i) for i in state.instances.values())

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
        if len(state.counts) > 32:  # each slot is windowed when used; sweep only the idle
            state.counts = {k: v for k, v in state.counts.items()
                            if v and v[-1] + self._max_count_window >= now}

    # ---- timers -----------------------------------------------------------------------

    def _fires_at(self, inst: Instance) -> int:
        return inst.due + self._grace.get(inst.trigger_id, self.config.policy.late_event_grace)

    def _fire_due(self, state: CustomerState, now: int, lazy: _Lazy, out: list[Output]) -> None:
        while state.instances:
            slot, inst = min(state.instances.items(),
                             key=lambda kv: (self._fires_at(kv[1]),
                                             -self._priority(kv[1].trigger_id), kv[0]))
            if self._fires_at(inst) > now:
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
            self._end(state, slot, inst, "expired", TRIGGER_DISABLED, t, now, out)
            return
        step = trig.steps[inst.step]
        if trig.expire_after is not None and t - inst.started_at >= trig.expire_after:
            out.append(self._decision(state, trig, inst, step, step.channels[0], SUPPRESSED,
                                      EXPIRED, t, now))
            self._end(state, slot, inst, "expired", EXPIRED, t, now, out)
            return
        blocked = self._reentry_block(state, trig, inst, t)
        if blocked:
            out.append(self._decision(state, trig, inst, step, step.channels[0], SUPPRESSED,
                                      blocked, t, now))
            self._end(state, slot, inst, "completed", blocked, t, now, out)
            return
        if not all_hold(step.when, Scope(None, state, inst, t)):
            out.append(self._decision(state, trig, inst, step, step.channels[0], SUPPRESSED,
                                      CONDITION_NOT_MET, t, now))
        else:
            self._send_first_eligible(state, trig, inst, step, t, now, lazy, out)
        inst.step += 1
        if inst.step < len(trig.steps):
            inst.due = t + trig.steps[inst.step].delay
        else:
            self._end(state, slot, inst, "completed", "", t, now, out)

    def _send_first_eligible(self, state: CustomerState, trig: Trigger, inst: Instance,
                             step: Step, t: int, now: int, lazy: _Lazy,
                             out: list[Output]) -> None:
        for channel in step.channels:
            profile = lazy.get()
            reason = (PROFILE_UNAVAILABLE if lazy.unavailable
                      else self._ineligible(state, profile, trig, channel, t))
            if reason:
                out.append(self._decision(state, trig, inst, step, channel, SUPPRESSED,
                                          reason, t, now))
                continue
            d = self._decision(state, trig, inst, step, channel, SENT, "", t, now)
            out.append(d)
            out.append(Send(d.send_id, state.customer_id, trig.id, trig.kind,
                            self.config.version, inst.instance_id, inst.step, channel,
                            step.template, d.variant, self._variables(state, inst, step, t),
                            t, now))
            state.touches.append(Touch(d.send_id, trig.id, d.variant, channel, t,
                                       trig.attribution_window))
            if inst.step == 0:
                state.last_entry[trig.id] = t
            return

    def _end(self, state: CustomerState, slot: str, inst: Instance, action: str, reason: str,
             t: int, now: int, out: list[Output]) -> None:
        del state.instances[slot]
        out.append(self._life(state, inst, action, reason, "", t, now))

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
        if override and override[1] <= t:
            granted = override[0]
        else:
            granted = profile.consent(channel, trig.kind)
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
            cancel = next((c for c in trig.cancel_on if matches(c, ev, state, ev.ts)), None)
            if cancel is not None and (not cancel.same_key or key_of(trig.key, ev) == inst.key):
                self._cancel(state, slot, inst, trig, ev, now, out)
            elif trig.wait.inactivity is not None and inst.step == 0 and (
                ev.type in trig.wait.reset_on or matches(trig.start, ev, state, ev.ts)
            ):
                k = key_of(trig.key, ev)
                if k is None or k == inst.key:
                    inst.activity_at = max(inst.activity_at, ev.ts)
                    inst.due = inst.activity_at + trig.wait.inactivity + trig.steps[0].delay
                    inst.context, inst.event_type = dict(ev.props), ev.type
        for trig in self._starts.get(ev.type, ()):
            if matches(trig.start, ev, state, ev.ts):
                self._maybe_start(state, trig, ev, now, out)
        if (len(state.seen) > self.config.policy.dedup_max_ids
                or state.high_water - state.pruned_at >= PRUNE_EVERY):
            state.pruned_at = state.high_water
            self.prune(state, max(now, state.high_water))

    def _maybe_start(self, state: CustomerState, trig: Trigger, ev: Event, now: int,
                     out: list[Output]) -> None:
        k = key_of(trig.key, ev)
        k = "" if k is None else k
        slot = f"{trig.id}\x1f{k}"
        if slot in state.instances:
            return  # a live instance: the event was applied to it as activity
        count = trig.start.count
        if count is not None:
            recent = [ts for ts in state.counts.get(slot, ()) if ts > ev.ts - count.within]
            recent.append(ev.ts)
            if len(recent) < count.at_least:
                state.counts[slot] = recent
                return
            state.counts.pop(slot, None)
        inst = Instance(trig.id, k, stable_id(state.customer_id, trig.id, k, ev.event_id),
                        ev.event_id, ev.ts, ev.ts, ev.ts + trig.wait.ms + trig.steps[0].delay,
                        context=dict(ev.props), event_type=ev.type)
        state.instances[slot] = inst
        out.append(self._life(state, inst, "started", "", ev.event_id, ev.ts, now))

    def _cancel(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                ev: Event, now: int, out: list[Output]) -> None:
        step = trig.steps[inst.step]
        out.append(self._decision(state, trig, inst, step, step.channels[0], CANCELLED,
                                  f"{CANCEL_EVENT}:{ev.type}", ev.ts, now))
        del state.instances[slot]
        out.append(self._life(state, inst, "cancelled", ev.type, ev.event_id, ev.ts, now))

    def _facts(self, state: CustomerState, ev: Event, out: list[Output]) -> None:
        """Customer facts the triggers read: cart lines, consents, orders, conversions."""
        p = ev.props
        if ev.type == "added_to_cart":
            pid = str(p["product_id"])
            line = state.cart.setdefault(pid, {"quantity": 0, "price": p.get("price")})
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
            state.orders_count += 1
            state.total_spent += float(p["total"])
            state.last_order_at = max(state.last_order_at, ev.ts)
            touch = max((t for t in state.touches if t.ts <= ev.ts <= t.ts + t.window),
                        key=lambda t: (t.ts, t.send_id), default=None)
            if touch is not None:
                out.append(Conversion(stable_id("conv", p["order_id"], touch.send_id),
                                      state.customer_id, str(p["order_id"]), float(p["total"]),
                                      str(p["currency"]), touch.send_id, touch.trigger_id,
                                      touch.variant, touch.channel, touch.ts, ev.ts))

    # ---- record builders ----------------------------------------------------------------

    def _variables(self, state: CustomerState, inst: Instance, step: Step,
                   t: int) -> dict[str, Any]:
        """Template data named by the step's ``vars`` (never contact details)."""
        variables: dict[str, Any] = {"key": inst.key}
        scope = Scope(None, state, inst, t)
        for name, source in step.vars.items():
            if source == "cart.items":
                value: Any = cart_items(state)
            elif source == "cart.total":
                value = cart_total(state)
            else:
                value = value_of(source, scope)
            variables[name] = None if value is MISSING else value
        return variables

    def _decision(self, state: CustomerState, trig: Trigger, inst: Instance, step: Step,
                  channel: str, status: str, reason: str, t: int, now: int) -> Decision:
        send_id = stable_id(trig.id, self.config.version, state.customer_id, inst.instance_id,
                            inst.step, channel)
        return Decision(stable_id(send_id, status, reason, t), send_id, state.customer_id,
                        trig.id, trig.kind, self.config.version, inst.instance_id, inst.step,
                        channel, step.template, "", status, reason, t, now)

    def _life(self, state: CustomerState, inst: Instance, action: str, reason: str,
              event_id: str, t: int, now: int) -> Lifecycle:
        return Lifecycle(stable_id(inst.instance_id, action), state.customer_id,
                         inst.trigger_id, inst.instance_id, inst.key, action, reason, event_id,
                         t, now)
