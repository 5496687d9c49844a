"""The pure trigger engine: ``(CustomerState, event | None, now) → decisions``.

No I/O, no wall clock: ``now`` is passed in and profiles come through a lookup callable,
so the same input replays to the same decisions, and tests need no dataflow.

One call to :meth:`Engine.handle` fires the customer's timers that are due (a step is due
at ``Instance.due`` in event time and fires once ``now >= due + grace``, so a cancel event
arriving a little late still wins), applies the event, if any (dedup → customer facts →
cancels → resets → starts), then fires what the event made due at once (delay-0 steps).
Live runs pass the wall clock as ``now``; replay runs pass the events' own time.
Timers are steps, the daily segment check and the planned occurrences of scheduled and
date starts (:mod:`operators.schedule`): all in ``next_wakeup``, decided in time order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from cdp_triggers.clock import DAY, local_hour
from cdp_triggers.events import MAX_QUANTITY, OUTCOME_TYPES, Event
from cdp_triggers.ids import stable_id
from cdp_triggers.records import (
    BRANCHED,
    CANCEL_EVENT,
    CANCELLED,
    CAPPED,
    CONDITION_NOT_MET,
    CONTACT_INVALID,
    CONTROL_GROUP,
    COUNT_NOT_REACHED,
    DEFERRED,
    EXPIRED,
    INSTANCE_LIMIT,
    NO_CONSENT,
    NO_CONTACT,
    NO_PROFILE,
    PROFILE_UNAVAILABLE,
    QUIET_HOURS_DEFERRED,
    REENTRY_COOLDOWN,
    REENTRY_ONCE,
    SEND_TIME_DEFERRED,
    SENT,
    START_CONDITION_NOT_MET,
    SUPPRESSED,
    TRIGGER_DISABLED,
    Conversion,
    Decision,
    Duplicate,
    Lifecycle,
    Outcome,
    Output,
    Profile,
    ProfileUnavailable,
    ProfileUpdate,
    SegmentChange,
    Send,
    StartMiss,
)
from cdp_triggers.records import HOLDOUT as HOLDOUT_REASON
from config.loader import ConfigSet
from config.schema import Step, Trigger
from operators import metrics
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
from operators.metrics import Tracking
from operators.policy import (
    CONTROL,
    HOLDOUT,
    Sent,
    assign_variant,
    cap_check,
    in_holdout,
    max_cap_window,
    quiet_until,
    zone,
)
from operators.schedule import DATE_EVENTS, Timed
from operators.segments import Segments
from operators.sendtime import READ_HALF_LIFE, READ_KINDS, Reads, send_time
from state.compact import EMPTY, own, own_list
from state.customer import CustomerState, Instance, Touch

ProfileLookup = Callable[[str], Profile | None]
_PLAN_EVENTS = frozenset({*DATE_EVENTS, "order_placed"})  # may move a timed start's plan
_UNAVAILABLE = object()  # the profile store did not answer and no fallback applies
CONVERTED = "converted"
EXIT_MEMORY = 24 * 3_600_000  # how far back an exit read early still cancels a late start
PRUNE_EVERY = 3_600_000  # sweep a customer's bounded state at most hourly (event time)
MAX_REFUSED = 256  # instance keys remembered as refused (instance_limit) per customer
NOT_STARTED = "not_started"  # lifecycle action of a start refused by a per-customer limit
SEGMENT_SOURCE = "segments"  # Event.source of the segment_entered/left events the engine makes


# a receipt implies the lesser ones: clicked ⇒ opened ⇒ delivered
IMPLIED = {"clicked": ("clicked", "opened", "delivered"), "opened": ("opened", "delivered"),
           "delivered": ("delivered",)}
RECEIPT_RANK = {"": 0, "delivered": 1, "opened": 2, "clicked": 3}  # instance.previous_outcome


def _set_consent(state: CustomerState, key: str, granted: bool, ts: int) -> bool:
    """Record a consent fact (``channel:category``) if it is the newest in event time,
    whatever its source; at the same instant a revoke wins (so read order never matters).
    True when it was recorded."""
    prev = state.consents.get(key)
    if prev is not None and (prev[1] > ts or (prev[1] == ts and (granted or not prev[0]))):
        return False
    own(state, "consents")[key] = (granted, ts)
    return True


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
        self._rank = {t.id: -t.priority for t in config.triggers}  # timer order: higher first
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
        self._exit_types = frozenset(typ for t in config.triggers for c in t.cancel_on
                                     for typ in c.types)
        # event types that can cancel or reset a running instance of each trigger
        self._touching = {t.id: frozenset([*(typ for c in t.cancel_on for typ in c.types),
                                           *t.wait.reset_on, *t.start.types])
                          for t in config.triggers}
        self._templates = {(t.id, v.id): v.templates for t in config.triggers
                           for v in t.variants if v.templates}
        self._max_sent_window = max_cap_window(policy)
        self._metrics = Tracking.from_config(config.triggers, config.segments, config.rfm)
        self._segments = Segments(config.segments, self._metrics)
        self._timed = Timed(config.triggers, policy.default_timezone, config.version)
        # triggers with a cancel condition on the instance (e.g. instance.repurchased)
        self._cancel_reads_instance = frozenset(
            t.id for t in config.triggers for c in t.cancel_on for w in c.where
            if w.field.startswith("instance."))
        # (no starred list display: Cython, which compiles this module, refuses it here)
        self._max_grace = max(policy.late_event_grace,
                              max(self._grace.values(), default=policy.late_event_grace))
        # smart send time: reads are kept only when a step holds to the customer's hour
        self._reads = any(s.send_at for t in config.triggers for s in t.steps)

    # ---- public API -------------------------------------------------------------------

    def handle(self, state: CustomerState, event: Event | None, now: int,
               profiles: ProfileLookup) -> list[Output]:
        """Fire due timers at ``now``, apply ``event``, fire what it made due. Mutates."""
        due, caused = self.handle_split(state, event, now, profiles)
        return due + caused

    def handle_split(self, state: CustomerState, event: Event | None, now: int,
                     profiles: ProfileLookup) -> tuple[list[Output], list[Output]]:
        """:meth:`handle` as (what timers due before the event decided, what the event
        caused, delay-0 steps it made due included), for callers that record the event's
        effect (the keyed step's stored inputs)."""
        due: list[Output] = []
        if state.misses:
            self._close_misses(state, now, due)
        lazy = _Lazy(profiles, state.customer_id)
        # the plan the last call left holds unless the config changed since (a restore):
        # zone, dates and segments change only with an event or a timer, which replan
        self._fire_due(state, now, lazy, due,
                       replan=not state.sched_basis.startswith(self._timed.tag))
        if event is None:
            return due, []
        out: list[Output] = []
        segments, profile = state.segments, state.profile
        self._apply(state, event, now, out)
        # a plan changes with the zone, the dates, the first order or the segments:
        # after an event that touched none of them, the plan just made still holds
        replan = (not state.sched_basis or event.type in _PLAN_EVENTS
                  or state.segments is not segments or state.profile is not profile)
        self._fire_due(state, now, lazy, out, replan)
        return due, out

    def next_wakeup(self, state: CustomerState) -> int | None:
        """When the next timer of this customer fires (epoch ms), or None: a step, the
        daily segment check, or a scheduled/date start's occurrence."""
        seg = state.seg_due + self.config.policy.late_event_grace if state.seg_due else None
        if state.sched:
            timed = self._sched_head(state)
            if timed is not None:
                at = timed[0] + self._grace.get(timed[1], self.config.policy.late_event_grace)
                seg = at if seg is None else min(seg, at)
        if not state.instances:
            return seg
        step = self._fires_at(self._head(state)[1])
        return step if seg is None else min(step, seg)

    def prune(self, state: CustomerState, now: int, sweep: bool = False) -> list[Output]:
        """Forget what can no longer matter at ``now`` (bounded state per customer);
        ``sweep`` also clears every idle count slot and the exits no later start can use
        (a customer going dormant). Returns the records forgetting writes: the final count
        of a day's start misses it closes (else when pruning ran would change the count)."""
        out: list[Output] = []
        policy = self.config.policy
        horizon = now - policy.dedup_window
        if state.seen and (len(state.seen) > policy.dedup_max_ids
                           or state.seen.oldest_ts() < horizon):
            state.seen.keep(horizon, policy.dedup_max_ids)
        if state.touches and state.touches[0].ts + self._max_window < now:
            state.touches = [t for t in state.touches if t.ts + t.window >= now] or ()
        if state.last_entry and min(state.last_entry.values()) + self._max_cooldown < now:
            state.last_entry = {k: v for k, v in state.last_entry.items()
                                if k in self._once or v + self._max_cooldown >= now} or EMPTY
        if state.sent_log and state.sent_log[0].ts + self._max_sent_window < now:
            state.sent_log = [x for x in state.sent_log
                              if x.ts + self._max_sent_window >= now] or ()
        if sweep and state.exits:  # a start at or after `now` only looks at exits after it
            state.exits = [x for x in state.exits if x.ts >= now] or ()
        if state.counts:
            # a slot whose latest start is out of every count's window counts nothing
            # again (about half of a customer's slots, swept at the hourly prune)
            horizon = now - self._max_count_window
            counts = {k: v for k, v in state.counts.items()
                      if v and (v if type(v) is int else v[-1]) >= horizon}
            if len(counts) < len(state.counts):
                state.counts = counts or EMPTY
        if state.misses:
            self._close_misses(state, now, out)
        if state.refused:  # a key refused a day ago may be recorded again
            state.refused = {k: v for k, v in state.refused.items() if v + EXIT_MEMORY >= now}
        metrics.prune(self._metrics, state, now - self._max_grace)
        return out

    def empty_by(self, state: CustomerState) -> int:
        """An event time at which :meth:`prune` would have forgotten every part of the
        state that expires with time: ids seen (dedupe), touches, the cap log, count
        slots, re-entry cooldowns, refusals, start-miss days. Whether anything is left
        then (an order, a consent, a cart, a once-only entry, ...) is for the caller to
        try (on a copy). A dormant customer with no timer is woken at it, to be discarded
        when nothing is left, instead of being kept for good."""
        ends = [state.high_water]
        if state.seen:
            ends.append(max(state.seen.ts) + self.config.policy.dedup_window)
        ends += [t.ts + t.window for t in state.touches]
        ends += [x.ts + self._max_sent_window for x in state.sent_log]
        ends += [(v if type(v) is int else v[-1]) + self._max_count_window
                 for v in state.counts.values()]
        ends += [v + self._max_cooldown for v in state.last_entry.values()]
        ends += [v + EXIT_MEMORY for v in state.refused.values()]
        ends += [(m[0] + 1) * DAY for m in state.misses.values()]
        return max(ends) + 1

    # ---- timers -----------------------------------------------------------------------

    def _fires_at(self, inst: Instance) -> int:
        return inst.due + self._grace.get(inst.trigger_id, self.config.policy.late_event_grace)

    def _head(self, state: CustomerState) -> tuple[str, Instance]:
        """The timer decided next: the earliest due in event time, ties by priority."""
        items = state.instances.items()
        if len(items) == 1:  # the common case
            return next(iter(items))
        rank = self._rank
        return min(items, key=lambda kv: (kv[1].due, rank.get(kv[1].trigger_id, 0), kv[0]))

    def _fire_due(self, state: CustomerState, now: int, lazy: _Lazy, out: list[Output],
                  replan: bool = True) -> None:
        """Decide due timers in (due, -priority, slot) order. Grace only delays a decision:
        a timer whose grace has run out waits behind an earlier-due (or equally due,
        higher-priority) one still in its grace, so grace never changes who wins a cap slot.
        The daily segment check (at ``seg_due``, with the policy's grace) goes before a
        scheduled/date start due at the same instant, which goes before a step."""
        after = state.high_water
        while True:
            if replan and (self._timed or state.sched):  # (re)plan: zone, dates, segments
                self._plan(state, after, lazy)
            replan = True  # after a timer fired
            timed = self._sched_head(state) if state.sched else None
            if not (state.instances or state.seg_due or timed):
                return
            first = self._head(state) if state.instances else None
            head = first[1].due if first is not None else None
            if state.seg_due and (head is None or state.seg_due <= head) and (
                    timed is None or state.seg_due <= timed[0]):
                if state.seg_due + self.config.policy.late_event_grace > now:
                    return
                after = max(after, state.seg_due)
                self._segment_check(state, state.seg_due, now, out)
                continue
            if timed is not None and (head is None or timed[0] <= head):
                if timed[0] + self._grace.get(timed[1], self.config.policy.late_event_grace) > now:
                    return
                after = max(after, timed[0])
                self._sched_fire(state, timed[1], now, out)
                continue
            slot, inst = first  # not None: without instances a branch above was taken
            if self._fires_at(inst) > now:
                return
            after = max(after, inst.due)
            self._run_step(state, slot, inst, now, lazy, out)

    # ---- scheduled and date starts (operators/schedule.py) -----------------------------

    def _sched_head(self, state: CustomerState) -> tuple[int, str] | None:
        """(due, trigger id) of the earliest planned occurrence, ties by priority."""
        best: tuple[int, str] | None = None  # (a loop: called several times per event)
        for tid, (d, _) in state.sched.items():
            if d and (best is None or d < best[0] or (d == best[0] and (
                    self._rank.get(tid, 0), tid) < (self._rank.get(best[1], 0), best[1]))):
                best = (d, tid)
        return best

    def _plan(self, state: CustomerState, after: int, lazy: _Lazy) -> None:
        """Plan each timed trigger's next occurrence for this customer (from event time
        ``after``), again when the zone, dates, segments or config changed. A first plan
        reads the profile when a start needs the zone or a profile date."""
        timed = self._timed
        if not state.high_water:
            return  # no event yet: nothing to plan from
        if timed.needs_profile and state.profile is None and not state.sched_basis:
            profile = lazy.get()
            if profile is not None:
                state.profile = profile
        if state.profile is not None:
            timed.adopt(state, state.profile)
        zone = self._zone_name(state)
        basis = timed.basis(state, zone)
        if basis != state.sched_basis:
            state.sched_basis, state.sched = basis, EMPTY
            if len(state.sched_done) > len(timed.triggers):  # of triggers no longer there
                state.sched_done = {t.id: state.sched_done[t.id] for t in timed.triggers
                                    if t.id in state.sched_done}
        for trig in timed.triggers:
            if trig.id not in state.sched:
                own(state, "sched")[trig.id] = timed.occurrence(trig, state, after, zone)

    def _sched_fire(self, state: CustomerState, trigger_id: str, now: int,
                    out: list[Output]) -> None:
        """An occurrence is due: plan the next one, then start an instance keyed by it
        when the customer passes ``where`` (a start miss otherwise)."""
        due, key = state.sched[trigger_id]
        trig = self._by_id.get(trigger_id)
        if trig is None or not trig.enabled or not trig.start.timed:  # config changed
            del state.sched[trigger_id]
            return
        zone = self._zone_name(state)
        own(state, "sched_done")[trigger_id] = key
        state.sched[trigger_id] = self._timed.occurrence(trig, state, due, zone)
        if not all_hold(trig.start.where, Scope(None, state, None, due, self._metrics)):
            self._miss(state, trigger_id, START_CONDITION_NOT_MET, due, out)
            return
        kind = "scheduled" if trig.start.schedule is not None else "date"
        ev = Event(stable_id(kind, state.customer_id, trigger_id, key), kind,
                   state.customer_id, due, self._timed.props(trig, state, key, zone), kind)
        self._maybe_start(state, trig, ev, now, out, key)

    # ---- segments ---------------------------------------------------------------------

    def _segment_check(self, state: CustomerState, t: int, now: int, out: list[Output],
                       event_type: str | None = None) -> None:
        """Re-evaluate segment membership at event time ``t`` (after an event: only the
        segments it can move); each change is a SegmentChange record and a
        segment_entered/left event applied like a real one. A time-based check due by
        ``t`` (an event read within its grace) makes it a check of every segment."""
        pending, state.seg_due = state.seg_due, 0
        if not self._segments:
            return
        if event_type is not None and pending and pending <= t:
            event_type = None
        members = self._segments.members(state, t, event_type)
        before = state.segments
        state.segments = members
        for seg, action in [*((s, "left") for s in before if s not in members),
                            *((s, "entered") for s in members if s not in before)]:
            change_id = stable_id("segment", state.customer_id, seg, action, t)
            out.append(SegmentChange(change_id, state.customer_id, seg, action, t, now,
                                     self.config.version))
            ev = Event(change_id, f"segment_{action}", state.customer_id, t,
                       {"segment": seg}, SEGMENT_SOURCE)
            metrics.observe(self._metrics, state, ev)
            self._route(state, ev, now, out)
        due = self._segments.next_check(state, t)
        if pending > t and (not due or pending < due):
            due = pending  # (a check of some segments keeps a time-based one still ahead)
        state.seg_due = due

    def _run_step(self, state: CustomerState, slot: str, inst: Instance, now: int,
                  lazy: _Lazy, out: list[Output]) -> None:
        """The instance's timer fired at its due time ``t``: a step to start, a channel to
        (re)try after a deferral, or a cascade wait that ran out."""
        trig = self._by_id.get(inst.trigger_id)
        t = inst.due
        if trig is None or not trig.enabled:
            self._end(state, slot, inst, "expired", TRIGGER_DISABLED, t, now, out)
            return
        step = trig.steps[inst.step]
        if inst.branching:  # the step is done and its branch is due: which step next
            self._branch(state, slot, inst, trig, step, t, now, out)
            return
        if inst.awaiting:  # no receipt in time: the cascade moves on to the next channel
            inst.earlier = (*inst.earlier, inst.awaiting)
            inst.awaiting = ""
            inst.channel_idx += 1
        elif inst.channel_idx == 0 and (
                not self._step_may_run(state, slot, inst, trig, step, t, now, out)
                or self._send_later(state, inst, trig, step, t, now, lazy, out)):
            return
        self._try_channels(state, slot, inst, trig, step, t, now, lazy, out)

    def _send_later(self, state: CustomerState, inst: Instance, trig: Trigger, step: Step,
                    t: int, now: int, lazy: _Lazy, out: list[Output]) -> bool:
        """``send_at``: once per step, hold its message to the customer's best local hour
        (or the fallback hour) when that comes within the window; True when held. At the
        held time the step runs as usual (its checks, quiet hours and caps included)."""
        if step.send_at is None or inst.timed == inst.step:
            return False
        inst.timed = inst.step
        self._profile(state, lazy, trig)  # the customer's zone, when the store answers
        tz = self._zone_name(state)
        at, why = send_time(t, tz, Reads(state.read_hours, state.read_last),
                            step.send_at.within, step.send_at.fallback_hour)
        if at <= t:
            return False
        self._hold(state, trig, inst, step, step.channels[0], SEND_TIME_DEFERRED, at, t, now,
                   out, f"{why}:{local_hour(at, tz):02d}")
        return True

    def _step_may_run(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                      step: Step, t: int, now: int, out: list[Output]) -> bool:
        """Checks made once when a step comes due: expiry, re-entry, its `when`."""
        first = step.channels[0]
        if trig.expire_after is not None and t - inst.started_at >= trig.expire_after:
            out.append(self._decision(state, trig, inst, step, first, SUPPRESSED, EXPIRED, t,
                                      now))
            self._end(state, slot, inst, "expired", EXPIRED, t, now, out)
            return False
        blocked = self._reentry_block(state, trig, inst, t)
        if blocked:
            out.append(self._decision(state, trig, inst, step, first, SUPPRESSED, blocked, t,
                                      now))
            self._end(state, slot, inst, "completed", blocked, t, now, out)
            return False
        if not all_hold(step.when, Scope(None, state, inst, t, self._metrics)):
            out.append(self._decision(state, trig, inst, step, first, SUPPRESSED,
                                      CONDITION_NOT_MET, t, now))
            self._next_step(state, slot, inst, trig, t, now, out)
            return False
        return True

    def _try_channels(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                      step: Step, t: int, now: int, lazy: _Lazy, out: list[Output]) -> None:
        """From the cascade position on: the first channel that passes every check is sent
        (or, for control/holdout, recorded as "would have sent"); holds defer the instance."""
        while inst.channel_idx < len(step.channels):
            channel = step.channels[inst.channel_idx]
            profile = self._profile(state, lazy, trig)
            if profile is _UNAVAILABLE:
                self._hold(state, trig, inst, step, channel, PROFILE_UNAVAILABLE,
                           self._retry_at(trig, t, now), t, now, out)
                return
            reason = self._ineligible(state, profile, trig, channel, t)
            if reason:
                inst.held = ""
                out.append(self._decision(state, trig, inst, step, channel, SUPPRESSED,
                                          reason, t, now))
                inst.channel_idx += 1
                continue
            hold = self._quiet(profile, trig, channel, t)
            if hold is not None:
                self._hold(state, trig, inst, step, channel, QUIET_HOURS_DEFERRED, hold, t, now,
                           out)
                return
            capped = cap_check(self.config.policy.caps, state.sent_log, t, trig.id, channel,
                               trig.kind)
            if capped is not None:
                rule, free_at = capped
                # a channel cap moves the cascade on; only global/trigger caps may defer
                if rule.scope != "channel" and trig.on_cap == "defer" and free_at < 2**62:
                    self._hold(state, trig, inst, step, channel, CAPPED, free_at, t, now, out,
                               rule.id)
                    return
                inst.held = ""
                out.append(self._decision(state, trig, inst, step, channel, SUPPRESSED, CAPPED,
                                          t, now, rule.id))
                if rule.scope == "channel":
                    inst.channel_idx += 1
                    continue
                break
            inst.held = ""
            self._deliver(state, inst, trig, step, channel, t, now, out)
            wait = step.cascade.get(channel)  # type: ignore[call-overload]
            if wait is not None and not inst.arm and inst.channel_idx + 1 < len(step.channels):
                inst.awaiting = out[-1].send_id  # the Send just made
                inst.due = t + wait.wait
                return
            break
        self._next_step(state, slot, inst, trig, t, now, out)

    def _hold(self, state: CustomerState, trig: Trigger, inst: Instance, step: Step,
              channel: str, reason: str, until: int, t: int, now: int, out: list[Output],
              detail: str = "") -> None:
        """Defer the instance to ``until``. The ``deferred`` row is written when the hold
        begins; a retry that finds the very same hold (step, channel, reason, rule) again is
        silent, so an outage writes one row per message, not one per retry."""
        mark = f"{inst.step}\x1f{channel}\x1f{reason}\x1f{detail}"
        if inst.held != mark:
            inst.held = mark
            out.append(self._decision(state, trig, inst, step, channel, DEFERRED, reason, t,
                                      now, detail))
        inst.due = until

    def _retry_at(self, trig: Trigger, t: int, now: int) -> int:
        """The first retry (every ``profile_retry`` from ``t``) that fires after ``now``:
        within one call the store's answer is cached, so earlier retries would find it down
        again (same decisions, without looping once per retry over a long outage)."""
        every = max(1, self.config.policy.profile_retry)
        grace = self._grace.get(trig.id, self.config.policy.late_event_grace)
        return t + every * max(1, (now - grace - t) // every + 1)

    def _deliver(self, state: CustomerState, inst: Instance, trig: Trigger, step: Step,
                 channel: str, t: int, now: int, out: list[Output]) -> None:
        """Send (or record "would have sent" for control/holdout), and count it."""
        if inst.arm:
            reason = CONTROL_GROUP if inst.arm == CONTROL else HOLDOUT_REASON
            d = self._decision(state, trig, inst, step, channel, SUPPRESSED, reason, t, now)
            out.append(d)
        else:
            d = self._decision(state, trig, inst, step, channel, SENT, "", t, now)
            out.append(d)
            out.append(Send(d.send_id, state.customer_id, trig.id, trig.kind,
                            self.config.version, inst.instance_id, inst.step, channel,
                            d.template, d.variant, self._variables(state, inst, step, t), t,
                            now, d.tz))
        own_list(state, "sent_log").append(Sent(t, trig.id, channel, trig.kind))
        if inst.sent_step != inst.step:  # instance.previous_*: this step's messages now
            inst.sent_step, inst.sent_outcome = inst.step, ""
        inst.sent_channel = channel
        own_list(state, "touches").append(Touch(
            d.send_id, trig.id, d.variant, channel, t, trig.attribution_window,
            inst.instance_id, inst.step, inst.arm or "treated", trig.kind))
        if not inst.entered:
            inst.entered = True
            own(state, "last_entry")[trig.id] = t

    def _next_step(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                   t: int, now: int, out: list[Output]) -> None:
        """The step is done: on to the next one, or (a step with a ``branch``) wait until
        the earliest of its targets is due, so the receipts of its message count, and
        decide there (:meth:`_branch`)."""
        inst.channel_idx = 0
        inst.awaiting = ""
        inst.held = ""
        inst.earlier = ()
        if trig.steps[inst.step].branch:
            inst.branching = True
            delays = [trig.steps[j].delay for j in trig.next_steps(inst.step) if j is not None]
            inst.due = max(inst.step_base + min(delays, default=0), t)
            return
        self._go(state, slot, inst, trig, inst.step + 1, t, now, out)

    def _go(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
            target: int | None, t: int, now: int, out: list[Output]) -> None:
        """Make step ``target`` the next (its delay counts from the step before), or end."""
        if target is None or target >= len(trig.steps):
            self._end(state, slot, inst, "completed", "", t, now, out)
            return
        inst.step = target
        inst.step_base += trig.steps[target].delay
        inst.due = max(inst.step_base, t)  # a cascade or hold that ran long: at once

    def _branch(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                step: Step, t: int, now: int, out: list[Output]) -> None:
        """Decide a done step's branch at ``t``: the first entry whose conditions hold (the
        last has none) names the next step; recorded as a ``branched`` lifecycle row."""
        inst.branching = False
        if not step.branch:  # a new config took the branch away: the next step in order
            self._go(state, slot, inst, trig, inst.step + 1, t, now, out)
            return
        scope = Scope(None, state, inst, t, self._metrics)
        entry = next((b for b in step.branch if all_hold(b.when, scope)), step.branch[-1])
        out.append(Lifecycle(stable_id(inst.instance_id, BRANCHED, inst.step),
                             state.customer_id, trig.id, inst.instance_id, inst.key, BRANCHED,
                             f"{step.id or inst.step}→{entry.goto}", "", t, now))
        self._go(state, slot, inst, trig, trig.step_index(entry.goto), t, now, out)

    def _profile(self, state: CustomerState, lazy: _Lazy, trig: Trigger) -> Any:
        """The profile, or the last known one for transactional when the store is down."""
        profile = lazy.get()
        if not lazy.unavailable:
            if profile is not None:
                state.profile = profile
            return profile
        if trig.kind == "transactional" and state.profile is not None:
            return state.profile
        return _UNAVAILABLE

    def _quiet(self, profile: Profile | None, trig: Trigger, channel: str, t: int) -> int | None:
        qh = trig.quiet_hours or self.config.policy.quiet_hours
        if qh is None or channel not in qh.channels or trig.kind not in qh.kinds:
            return None
        default = self.config.policy.default_timezone
        tz = zone((profile.timezone if profile else "") or default, default)  # none: default
        return quiet_until(qh, tz, t)


    def _end(self, state: CustomerState, slot: str, inst: Instance, action: str, reason: str,
             t: int, now: int, out: list[Output], event_id: str = "") -> None:
        del state.instances[slot]
        if not state.instances:
            state.instances = EMPTY  # (the shared empty map, not an empty dict of its own)
        out.append(self._life(state, inst, action, reason, event_id, t, now))

    def _reentry_block(self, state: CustomerState, trig: Trigger, inst: Instance, t: int) -> str:
        if inst.step != 0 or inst.entered or trig.id not in state.last_entry:
            return ""
        if trig.reentry.once:
            return REENTRY_ONCE
        cooldown = trig.reentry.cooldown
        if cooldown is not None and t - state.last_entry[trig.id] < cooldown:
            return REENTRY_COOLDOWN
        return ""

    def _ineligible(self, state: CustomerState, profile: Profile | None, trig: Trigger,
                    channel: str, t: int) -> str:
        if channel in state.invalid:  # first: the store may or may not have dropped it yet
            return CONTACT_INVALID
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
        policy = self.config.policy
        if not state.seen.add(ev.event_id, ev.ts, policy.dedup_max_ids):  # oldest id goes
            out.append(Duplicate(ev.event_id, ev.customer_id, ev.type, ev.source, ev.ts))
            return
        state.high_water = max(state.high_water, ev.ts)
        self._facts(state, ev, now, out)
        if ev.type in OUTCOME_TYPES:
            self._outcome(state, ev, out)
        if ev.type in self._segments.by_type:
            # membership as of this event, so the event's own conditions see it
            self._segment_check(state, state.high_water, now, out, ev.type)
        self._route(state, ev, now, out)
        if state.high_water - state.pruned_at >= PRUNE_EVERY:
            state.pruned_at = state.high_water
            out += self.prune(state, max(now, state.high_water))

    def _route(self, state: CustomerState, ev: Event, now: int, out: list[Output]) -> None:
        """What an event does to the triggers: cancels, resets, starts, remembered exits."""
        policy = self.config.policy
        # what the event means for a trigger is the same for each of its instances: once
        # (unless a cancel condition reads the instance: then per instance)
        per_trigger: dict[str, tuple[Any, bool, str | None]] = {}
        tracking = self._metrics
        for slot, inst in list(state.instances.items()):
            trig = self._by_id.get(inst.trigger_id)
            if (trig is None or ev.type not in self._touching[trig.id]
                    or ev.ts < inst.started_at or ev.ts > self._fires_at(inst)):
                continue  # (after its timer's grace: it is decided as if it had fired)
            meaning = per_trigger.get(trig.id)
            if meaning is None:
                meaning = per_trigger[trig.id] = (
                    next((c for c in trig.cancel_on if matches(c, ev, state, ev.ts, tracking)),
                         None),
                    trig.wait.inactivity is not None and (
                        ev.type in trig.wait.reset_on
                        or matches(trig.start, ev, state, ev.ts, tracking)),
                    key_of(trig.key, ev))
            cancel, resets, k = meaning
            if trig.id in self._cancel_reads_instance:
                scope = Scope(ev, state, inst, ev.ts, tracking)
                cancel = next((c for c in trig.cancel_on
                               if ev.type in c.types and all_hold(c.where, scope)), None)
            if cancel is not None and (not cancel.same_key or k == inst.key):
                self._cancel(state, slot, inst, trig, ev, now, out)
            elif (resets and inst.step == 0 and not inst.entered and not inst.branching
                  and (k is None or k == inst.key)):
                inst.activity_at = max(inst.activity_at, ev.ts)
                inst.due = inst.activity_at + trig.wait.inactivity + trig.steps[0].delay
                inst.step_base = inst.due
                inst.context, inst.event_type = dict(ev.props), ev.type
        for trig in self._starts.get(ev.type, ()):
            if matches(trig.start, ev, state, ev.ts, tracking):
                self._maybe_start(state, trig, ev, now, out)
            else:
                self._miss(state, trig.id, START_CONDITION_NOT_MET, ev.ts, out)
        if ev.type in self._exit_types:  # kept a while: it may cancel an instance whose
            # start event is read after it (out of order); kept without its source (where
            # it was read) and with the state's customer id: what a cancel reads of it
            kept = Event(ev.event_id, ev.type, state.customer_id, ev.ts, ev.props)
            state.exits = [x for x in (*state.exits, kept)
                           if x.ts >= ev.ts - EXIT_MEMORY][-policy.max_exits:]

    def _maybe_start(self, state: CustomerState, trig: Trigger, ev: Event, now: int,
                     out: list[Output], key: str | None = None) -> None:
        k = key_of(trig.key, ev) if key is None else key
        k = "" if k is None else k
        slot = sys.intern(f"{trig.id}\x1f{k}")  # one string per slot across customers
        if slot in state.instances:
            return  # a live instance: the event was applied to it as activity
        policy = self.config.policy
        count = trig.start.count
        if count is not None:
            recent = [ts for ts in state.starts(slot) if ts > ev.ts - count.within]
            counts = own(state, "counts")
            counts.pop(slot, None)
            recent.append(ev.ts)
            if len(recent) < count.at_least:  # (re)inserted last: the oldest slot goes first;
                # a lone start as the int itself (most slots: a tuple would double its size)
                counts[slot] = recent[0] if len(recent) == 1 else tuple(recent)
                if len(counts) > policy.max_count_slots:
                    del counts[next(iter(counts))]
                self._miss(state, trig.id, COUNT_NOT_REACHED, ev.ts, out)
                return
        if sum(i.trigger_id == trig.id for i in state.instances.values()) >= (
                policy.max_instances_per_trigger):
            self._refuse(state, trig, slot, k, ev, now, out)
            return
        if state.refused:
            state.refused.pop(slot, None)
        due = ev.ts + trig.wait.ms + trig.steps[0].delay
        variant = assign_variant(trig, state.customer_id)
        arm = ""
        if trig.kind == "marketing":
            if in_holdout(self.config.policy, state.customer_id):
                arm = HOLDOUT
            elif variant is not None and variant.control:
                arm = CONTROL
        inst = Instance(trig.id, k, stable_id(state.customer_id, trig.id, k, ev.event_id),
                        ev.event_id, ev.ts, ev.ts, due, context=dict(ev.props),
                        event_type=ev.type, variant=variant.id if variant else "", arm=arm,
                        step_base=due)
        own(state, "instances")[slot] = inst
        out.append(self._life(state, inst, "started", "", ev.event_id, ev.ts, now))
        for x in state.exits:  # an exit already read, but later in event time than the start
            cancel = next((c for c in trig.cancel_on
                           if matches(c, x, state, x.ts, self._metrics)), None)
            if x.ts >= ev.ts and cancel is not None and (
                    not cancel.same_key or key_of(trig.key, x) == k):
                self._cancel(state, slot, inst, trig, x, now, out)
                break

    def _refuse(self, state: CustomerState, trig: Trigger, slot: str, key: str, ev: Event,
                now: int, out: list[Output]) -> None:
        """A start over ``max_instances_per_trigger``: not started, recorded once per key
        (its id is the key's, so a replay or a forgotten key writes the same row again)."""
        refused = own(state, "refused")
        if slot in refused:
            refused[slot] = max(refused[slot], ev.ts)
            return
        refused[slot] = ev.ts
        if len(refused) > MAX_REFUSED:
            del refused[next(iter(refused))]
        out.append(Lifecycle(stable_id(state.customer_id, trig.id, key, INSTANCE_LIMIT),
                             state.customer_id, trig.id, "", key, NOT_STARTED, INSTANCE_LIMIT,
                             ev.event_id, ev.ts, now))

    def _miss(self, state: CustomerState, trigger_id: str, reason: str, ts: int,
              out: list[Output]) -> None:
        """Count a start that did not happen: a row at counts 1, 2, 4, … of a day, and the
        day's final count when a later day's miss closes it (see records.StartMiss)."""
        key = sys.intern(f"{trigger_id}\x1f{reason}")
        day = ts // DAY
        m = state.misses.get(key)
        if m is not None and m[0] != day:
            if m[1] & (m[1] - 1):  # its last row was not the final count: write it
                out.append(self._miss_record(state, trigger_id, reason, m))
            m = None
        if m is None:
            m = own(state, "misses")[key] = [day, 0, ts, ts]
        m[1] += 1
        m[3] = max(m[3], ts)
        if not m[1] & (m[1] - 1):  # a power of two
            out.append(self._miss_record(state, trigger_id, reason, m))

    def _close_misses(self, state: CustomerState, now: int, out: list[Output]) -> None:
        """Write the final count of every day of start misses over by ``now`` (unless its
        last row was it) and forget the day: the count then does not depend on when the
        customer is next woken, by its own event, a timer, the end of input or a sweep."""
        today = now // DAY
        for m in state.misses.values():  # (a loop: before every call with misses)
            if m[0] < today:
                break
        else:
            return
        for k, m in state.misses.items():
            if m[0] < today and m[1] & (m[1] - 1):
                out.append(self._miss_record(state, *k.split("\x1f"), m))
        state.misses = {k: m for k, m in state.misses.items() if m[0] >= today} or EMPTY

    def _miss_record(self, state: CustomerState, trigger_id: str, reason: str,
                     m: list[int]) -> StartMiss:
        return StartMiss(stable_id("miss", state.customer_id, trigger_id, reason, m[0]),
                         state.customer_id, trigger_id, reason, m[0], m[1], m[2], m[3])

    def _cancel(self, state: CustomerState, slot: str, inst: Instance, trig: Trigger,
                ev: Event, now: int, out: list[Output]) -> None:
        step = trig.steps[inst.step]
        if not inst.branching:  # (a branch not yet decided has no next message to cancel)
            out.append(self._decision(state, trig, inst, step, step.channels[0], CANCELLED,
                                      f"{CANCEL_EVENT}:{ev.type}", ev.ts, now))
        self._end(state, slot, inst, "cancelled", ev.type, ev.ts, now, out, ev.event_id)

    def _facts(self, state: CustomerState, ev: Event, now: int, out: list[Output]) -> None:
        """Customer facts the triggers read: cart lines, consents, orders, conversions."""
        p = ev.props
        if ev.type == "added_to_cart":
            pid = str(p["product_id"])
            line = state.cart.get(pid)
            if line is None and len(state.cart) < self.config.policy.max_cart_lines:
                line = own(state, "cart")[pid] = {"quantity": 0, "price": p.get("price")}
            if line is not None:  # else: a product past max_cart_lines, ignored
                line["quantity"] = min(line["quantity"] + int(p.get("quantity") or 1),
                                       MAX_QUANTITY)
        elif ev.type == "removed_from_cart":
            if state.cart:
                state.cart.pop(str(p["product_id"]), None)
        elif ev.type in DATE_EVENTS and self._timed:
            self._timed.remember(state, ev)
        elif ev.type == "consent_changed":
            ch = str(p["channel"])
            if (_set_consent(state, f"{ch}:{p['category']}", bool(p["granted"]), ev.ts)
                    and p["granted"] and ch in state.invalid
                    and state.invalid_at.get(ch, 0) < ev.ts):
                # confirmed again after its hard bounce: the latest fact in event time wins
                state.invalid = state.invalid - {ch}  # shared empty default: no in-place
                out.append(ProfileUpdate(state.customer_id, f"invalid:{ch}", "0", ev.ts))
        elif ev.type == "order_placed":
            state.cart = EMPTY
            state.orders_count += 1
            state.total_spent += float(p["total"])
            state.last_order_at = max(state.last_order_at, ev.ts)
            # last MARKETING touch: a transactional message is not credited as marketing;
            # a control/holdout touch credits its own arm (the Conversion carries it)
            touch = max((t for t in state.touches if t.kind != "transactional"
                         and t.ts <= ev.ts <= t.ts + t.window),
                        key=lambda t: (t.ts, t.send_id), default=None)
            if touch is not None:
                out.append(Conversion(stable_id("conv", p["order_id"], touch.send_id),
                                      state.customer_id, str(p["order_id"]), float(p["total"]),
                                      str(p["currency"]), touch.send_id, touch.trigger_id,
                                      touch.variant, touch.channel, touch.ts, ev.ts,
                                      touch.arm))
                for slot, inst in list(state.instances.items()):  # a conversion ends a cascade
                    if inst.instance_id == touch.instance_id and inst.awaiting:
                        self._end(state, slot, inst, "completed", CONVERTED, ev.ts, now, out,
                                  ev.event_id)
        metrics.observe(self._metrics, state, ev)

    def _outcome(self, state: CustomerState, ev: Event, out: list[Output]) -> None:
        """A receipt: recorded; it may end a cascade wait (success) or skip it (failure);
        a hard bounce invalidates the contact, an unsubscribe revokes marketing consent."""
        p = ev.props
        send_id, channel, kind = str(p["send_id"]), str(p["channel"]), ev.type[8:]
        touch = next((t for t in reversed(state.touches) if t.send_id == send_id), None)
        out.append(Outcome(stable_id("outcome", send_id, kind, ev.event_id), send_id,
                           state.customer_id, channel, kind,
                           touch.trigger_id if touch else "", touch.variant if touch else "",
                           touch.step if touch else -1, touch.ts if touch else 0, ev.ts))
        if kind == "bounced" and p.get("hard", True) is not False and not any(
                granted and ts > ev.ts for key, (granted, ts) in state.consents.items()
                if key.startswith(f"{channel}:")):  # not if confirmed again after it
            if ev.ts >= state.invalid_at.get(channel, ev.ts):
                state.invalid = state.invalid | {channel}
                own(state, "invalid_at")[channel] = ev.ts
                out.append(ProfileUpdate(state.customer_id, f"invalid:{channel}", "1", ev.ts))
        elif kind == "unsubscribed" and _set_consent(state, f"{channel}:marketing", False,
                                                     ev.ts):  # written back if newest only
            out.append(ProfileUpdate(state.customer_id, f"consent:{channel}:marketing", "0",
                                     ev.ts))
        if touch is not None and kind in RECEIPT_RANK:
            for inst in state.instances.values():  # instance.previous_outcome
                if (inst.instance_id == touch.instance_id and inst.sent_step == touch.step
                        and ev.ts <= self._fires_at(inst)
                        and RECEIPT_RANK[kind] > RECEIPT_RANK.get(inst.sent_outcome, 0)):
                    inst.sent_outcome = kind
        if self._reads and kind in READ_KINDS:  # smart send time: the hour they read in
            reads = Reads(state.read_hours, state.read_last).observe(
                ev.ts, self._zone_name(state), READ_HALF_LIFE)
            state.read_hours, state.read_last = reads.weights, reads.last
        success = IMPLIED.get(kind, ())
        for inst in state.instances.values():
            awaited = inst.awaiting == send_id
            if not (awaited or send_id in inst.earlier) or ev.ts > self._fires_at(inst):
                continue  # not this instance's, or after its timer's grace (as if it fired)
            trig = self._by_id.get(inst.trigger_id)
            wait = trig.steps[inst.step].cascade.get(channel) if trig else None  # type: ignore[call-overload]
            if wait is not None and any(k in wait.until for k in success):
                # the step succeeded (also by a late receipt for a channel the cascade has
                # moved on from): a later channel, held or awaited, does not go out
                inst.awaiting, inst.channel_idx = "", len(trig.steps[inst.step].channels)
                inst.due = ev.ts  # done with this step: _fire_due moves on to the next
            elif awaited and kind in ("bounced", "failed"):
                inst.due = ev.ts  # no point waiting: the next channel at once

    # ---- record builders ----------------------------------------------------------------

    def _variables(self, state: CustomerState, inst: Instance, step: Step,
                   t: int) -> dict[str, Any]:
        """Template data named by the step's ``vars`` (never contact details)."""
        variables: dict[str, Any] = {"key": inst.key}
        scope = Scope(None, state, inst, t, self._metrics)
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
                  channel: str, status: str, reason: str, t: int, now: int,
                  detail: str = "") -> Decision:
        send_id = stable_id(trig.id, self.config.version, state.customer_id, inst.instance_id,
                            inst.step, channel)
        template = self._templates.get((trig.id, inst.variant), {}).get(step.template,
                                                                          step.template)
        return Decision(stable_id(send_id, status, reason, t), send_id, state.customer_id,
                        trig.id, trig.kind, self.config.version, inst.instance_id, inst.step,
                        channel, template, inst.variant, status, reason, t, now, detail,
                        self._zone_name(state))

    def _zone_name(self, state: CustomerState) -> str:
        """The zone the customer's local time is read in (last profile read, else the
        policy's default): stored on rows for local-time reports."""
        p = state.profile
        return (p.timezone if p is not None else "") or self.config.policy.default_timezone

    def _life(self, state: CustomerState, inst: Instance, action: str, reason: str,
              event_id: str, t: int, now: int) -> Lifecycle:
        return Lifecycle(stable_id(inst.instance_id, action), state.customer_id,
                         inst.trigger_id, inst.instance_id, inst.key, action, reason, event_id,
                         t, now)
