""""Why did customer X (not) get this?": one customer's timeline per trigger.

Two sources, one shape (:class:`Line`):

* recorded events (:func:`explain_events`): the customer's events (plus the catalogue, for
  price drops) replayed through the same aligner and pure engine as every run, and for each
  event that could start a trigger, why it did or did not: its conditions, its count, an
  instance already running, the instance limit; then every decision with its reason,
  receipt and conversion;
* a live run's ClickHouse (:func:`explain_clickhouse`): the rows recorded for the customer
  (start misses counted per day, lifecycle, decisions, outcomes, conversions).

Flows return data; the CLI prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdp_triggers.clock import iso
from cdp_triggers.durations import format_duration
from cdp_triggers.events import Event, parse_event
from cdp_triggers.records import Conversion, Decision, Lifecycle, Outcome, Profile
from config.loader import ConfigSet
from operators.align import Aligner
from operators.conditions import key_of, matches
from operators.engine import Engine
from operators.interest import derives_events
from state.customer import CustomerState


@dataclass(frozen=True, slots=True)
class Line:
    """One thing that happened to the customer, for one trigger ("" = not about one)."""

    ts: int
    trigger_id: str
    what: str  # event | start | decision | receipt | conversion | lifecycle
    text: str

    @property
    def at(self) -> str:
        return iso(self.ts)[:19]


def _customer_events(paths: list[str | Path], customer_id: str,
                     interest: bool = True) -> list[Event]:
    """The customer's valid events and the catalogue's, in the aligned order."""
    al = Aligner(["files"], interest=interest)
    for path in paths:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if customer_id.encode() not in raw and b"product_updated" not in raw:
                    continue  # cheap pre-filter; parsing decides
                e = parse_event(raw.rstrip(b"\r\n"), f"{Path(path).name}:{n}")
                if isinstance(e, Event) and (e.customer_id == customer_id
                                             or e.type == "product_updated"):
                    al.offer("files", e)
    al.end("files")
    return [e for e in al.release() if isinstance(e, Event) and e.customer_id == customer_id]


def explain_events(config: ConfigSet, paths: list[str | Path], customer_id: str,
                   profiles: Callable[[str], Profile | None], horizon: int) -> list[Line]:
    """Replay one customer's recorded events and say, per trigger, what happened and why."""
    engine = Engine(config)
    state = CustomerState(customer_id)
    lines: list[Line] = []
    starts = [t for t in config.triggers if t.enabled]
    for ev in _customer_events(paths, customer_id, derives_events(config)):
        mark = len(lines)
        candidates = [t for t in starts if ev.type in t.start.types]
        before = {t.id: matches(t.start, ev, state, ev.ts) for t in candidates}
        slots = {t.id: f"{t.id}\x1f{key_of(t.key, ev) or ''}" for t in candidates}
        running = {t.id for t in candidates if slots[t.id] in state.instances}
        out = engine.handle(state, ev, max(state.high_water, ev.ts), profiles)
        started = {r.trigger_id for r in out if isinstance(r, Lifecycle)
                   and r.action == "started"}
        for t in candidates:
            _add(lines, Line(ev.ts, t.id, "start", _why_start(
                t, before[t.id], t.id in started, t.id in running, state, slots[t.id], out)))
        lines += [x for r in out if (x := _line(r)) is not None]
        if len(lines) > mark:  # the event did something: name it (repeats are only counted)
            lines.insert(mark, Line(ev.ts, "", "event", f"{ev.type} ({ev.event_id})"))
    lines += [x for r in engine.handle(state, None, horizon, profiles)
              if (x := _line(r)) is not None]
    lines.sort(key=lambda x: x.ts)  # timers decide at their due time: put them there
    return lines


def _add(lines: list[Line], line: Line) -> None:
    """Consecutive identical "not started" lines of a trigger become one, counted."""
    for i in range(len(lines) - 1, -1, -1):
        prev = lines[i]
        if prev.trigger_id != line.trigger_id:
            continue
        base = prev.text.split(" ×", 1)[0]
        if prev.what == "start" and base == line.text and line.text != "started":
            n = int(prev.text.split(" ×", 1)[1].split()[0]) if " ×" in prev.text else 1
            lines[i] = Line(prev.ts, prev.trigger_id, "start",
                            f"{base} ×{n + 1} (last {line.at[11:]})")
            return
        break
    lines.append(line)


def _why_start(trig, held: bool, started: bool, running: bool, state: CustomerState,
               slot: str, out: list) -> str:
    if started:
        return "started"
    if not held:
        return "not started: start condition not met (start.where)"
    limit = [r for r in out if isinstance(r, Lifecycle) and r.trigger_id == trig.id
             and r.action == "not_started"]
    if limit:
        return f"not started: {limit[0].reason}"
    if running:
        return "already running: applied to the live instance as activity"
    if trig.start.count is not None:
        c = trig.start.count
        return (f"not started: count not reached ({len(state.starts(slot))} of "
                f"{c.at_least} within {format_duration(c.within)})")
    return "not started"


def _line(r: object) -> Line | None:
    if isinstance(r, Decision):
        why = f" ({r.reason}{', ' + r.detail if r.detail else ''})" if r.reason else ""
        return Line(r.ts, r.trigger_id, "decision",
                    f"step {r.step} {r.channel} {r.template}: {r.status}{why}"
                    + (f" [variant {r.variant}]" if r.variant else ""))
    if isinstance(r, Lifecycle) and r.action != "started":
        return Line(r.ts, r.trigger_id, "lifecycle",
                    f"{r.action}{' (' + r.reason + ')' if r.reason else ''}")
    if isinstance(r, Outcome):
        return Line(r.ts, r.trigger_id, "receipt", f"{r.channel} {r.outcome} (step {r.step})")
    if isinstance(r, Conversion):
        return Line(r.ts, r.trigger_id, "conversion",
                    f"order {r.order_id} {r.revenue:.2f} {r.currency} via {r.channel} "
                    f"[{r.arm}]")
    return None


def explain_clickhouse(backend, database: str, customer_id: str) -> list[Line]:
    """The rows a run recorded for the customer, in time order."""
    cid = customer_id.replace("'", "''")
    q = {
        "lifecycle": f"SELECT toUnixTimestamp64Milli(ts), trigger_id, action, reason "
                     f"FROM {database}.lifecycle WHERE customer_id = '{cid}'",
        "decision": f"SELECT toUnixTimestamp64Milli(ts), trigger_id, step, channel, template, "
                    f"status, reason, detail, variant FROM {database}.decisions "
                    f"WHERE customer_id = '{cid}'",
        "receipt": f"SELECT toUnixTimestamp64Milli(ts), trigger_id, channel, outcome, step "
                   f"FROM {database}.outcomes WHERE customer_id = '{cid}'",
        "conversion": f"SELECT toUnixTimestamp64Milli(ts), trigger_id, order_id, revenue, "
                      f"currency, channel, arm FROM {database}.conversions "
                      f"WHERE customer_id = '{cid}'",
    }
    lines: list[Line] = []
    for ts, tid, action, reason in backend.query_rows(q["lifecycle"]):
        lines.append(Line(ts, tid, "lifecycle", f"{action}{' (' + reason + ')' if reason else ''}"))
    for ts, tid, step, ch, tpl, status, reason, detail, variant in backend.query_rows(
            q["decision"]):
        why = f" ({reason}{', ' + detail if detail else ''})" if reason else ""
        lines.append(Line(ts, tid, "decision", f"step {step} {ch} {tpl}: {status}{why}"
                          + (f" [variant {variant}]" if variant else "")))
    for ts, tid, ch, outcome, step in backend.query_rows(q["receipt"]):
        lines.append(Line(ts, tid, "receipt", f"{ch} {outcome} (step {step})"))
    for ts, tid, order, revenue, cur, ch, arm in backend.query_rows(q["conversion"]):
        lines.append(Line(ts, tid, "conversion", f"order {order} {float(revenue):.2f} {cur} "
                                                 f"via {ch} [{arm or 'treated'}]"))
    misses = (f"SELECT toUnixTimestamp64Milli(first_ts), trigger_id, reason, count, "
              f"toUnixTimestamp64Milli(last_ts) FROM {database}.start_misses "
              f"WHERE customer_id = '{cid}'")
    for ts, tid, reason, n, last in backend.query_rows(misses):
        lines.append(Line(ts, tid, "start", f"not started: {reason.replace('_', ' ')} ×{n} "
                                            f"(last {iso(last)[11:19]})"))
    order = {"start": 0, "lifecycle": 0, "decision": 1, "receipt": 2, "conversion": 3}
    return sorted(lines, key=lambda x: (x.ts, order.get(x.what, 9)))
