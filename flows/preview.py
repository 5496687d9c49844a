"""Preview a config set on recorded events: what would these triggers have done?

:func:`run_preview` replays a JSONL file through the production path (the same Bytewax
``engine_streams`` as every run, replay clock) and keeps the records in memory: no Kafka, no
ClickHouse. :func:`summarize` and :func:`diff` are pure; printing is separate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cdp_triggers.records import (
    BRANCHED,
    CANCELLED,
    CONDITION_NOT_MET,
    SENT,
    Conversion,
    Decision,
    Lifecycle,
    SegmentChange,
)
from cdp_triggers.settings import Settings
from config.loader import ConfigSet
from config.schema import Trigger
from flows.app import Fallback, build_run


def run_preview(config: ConfigSet, paths: list[str | Path], settings: Settings,
                horizon_ms: int, profiles: Fallback = "reachable") -> tuple[list, list[str]]:
    """Replay ``paths`` through the production dataflow (the one run builder, replay clock,
    records kept in memory); return (the engine's records, notes on where profiles came
    from)."""
    from bytewax.testing import run_main

    s = settings.model_copy(update={"clock": "replay", "horizon_ms": horizon_ms,
                                    "recovery_dir": None})
    run = build_run(s, "files", files=list(paths), config=config, profiles=profiles,
                    outputs="memory")
    run_main(run.flow)
    return run.captured or [], run.notes


# ---- summary (pure) ---------------------------------------------------------------------


@dataclass
class StepStats:
    template: str = ""
    sent: Counter[str] = field(default_factory=Counter)  # by channel
    suppressed: Counter[str] = field(default_factory=Counter)  # by reason
    skipped: int = 0  # `when` was false
    cancelled: int = 0  # the instance was cancelled while waiting for this step


@dataclass
class TriggerStats:
    lifecycle: Counter[str] = field(default_factory=Counter)  # started/cancelled/completed/…
    conversions: int = 0
    revenue: float = 0.0
    steps: dict[int, StepStats] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # customer → what happened
    # branches taken: "<from step id>→<to step id | end>" → instances
    branches: Counter[str] = field(default_factory=Counter)


@dataclass
class Summary:
    triggers: dict[str, TriggerStats] = field(default_factory=dict)
    # dynamic segments (config/segments): segment → changes by action (entered / left)
    segments: dict[str, Counter[str]] = field(default_factory=dict)


def summarize(records: Iterable[object], examples: int = 3,
              triggers: Iterable[Trigger | str] = ()) -> Summary:
    """Count what each trigger and step did; pick ``examples`` customers per trigger whose
    stories differ (a customer's records arrive in order, so a story reads in time order).
    ``triggers``: the configured ones (or their ids), listed even when they did nothing;
    a step is named by its configured template, whatever variant template was sent."""
    s = Summary()
    for t in triggers:
        s.triggers[t if isinstance(t, str) else t.id] = TriggerStats(steps={} if isinstance(
            t, str) else {i: StepStats(step.template) for i, step in enumerate(t.steps)})
    # trigger → customer → instance → words
    stories: dict[str, dict[str, dict[str, list[str]]]] = {}
    instance_of: dict[str, str] = {}  # send id → instance id (to place conversions)

    def trig(tid: str) -> TriggerStats:
        return s.triggers.setdefault(tid, TriggerStats())

    for r in records:
        if isinstance(r, Decision):
            st = trig(r.trigger_id).steps.setdefault(r.step, StepStats(r.template))
            instance = r.instance_id
            if r.status == SENT:
                st.sent[r.channel] += 1
                instance_of[r.send_id] = instance
                word = f"step {r.step} {r.channel} sent"
            elif r.status == CANCELLED:
                st.cancelled += 1
                continue  # the lifecycle record tells the story
            elif r.reason == CONDITION_NOT_MET:
                st.skipped += 1
                word = f"step {r.step} skipped (when)"
            else:
                st.suppressed[r.reason] += 1
                word = f"step {r.step} {r.channel} {r.reason}"
        elif isinstance(r, Lifecycle):
            trig(r.trigger_id).lifecycle[r.action] += 1
            instance = r.instance_id
            word = f"{r.action} by {r.reason}" if r.action == "cancelled" else r.action
            if r.action == BRANCHED:
                trig(r.trigger_id).branches[r.reason] += 1
                word = f"branched {r.reason}"
        elif isinstance(r, SegmentChange):
            s.segments.setdefault(r.segment, Counter())[r.action] += 1
            continue
        elif isinstance(r, Conversion):
            t = trig(r.trigger_id)
            if r.arm == "treated":  # control and holdout orders are not the messages' doing
                t.conversions += 1
                t.revenue += r.revenue
            instance = instance_of.get(r.send_id, r.send_id)
            word = f"ordered {r.revenue:.2f} {r.currency}" + (
                f" ({r.arm}, not credited)" if r.arm != "treated" else "")
        else:
            continue
        by_instance = stories.setdefault(r.trigger_id, {}).setdefault(r.customer_id, {})
        by_instance.setdefault(instance, []).append(word)
    for tid, by_customer in stories.items():
        trig(tid).examples = _pick_examples(by_customer, examples)
    return s


_ENDS = ("completed", "cancelled", "expired")


def _pick_examples(stories: dict[str, dict[str, list[str]]], n: int) -> dict[str, str]:
    """First customers (by id) whose first instance's story is new, then more to fill ``n``."""
    seen: set[tuple[str, ...]] = set()
    picked: list[str] = []
    for cid in sorted(stories):
        first = next(iter(stories[cid].values()))
        key = tuple(w.split(" by ")[0] for w in first)
        if key not in seen and len(picked) < n:
            seen.add(key)
            picked.append(cid)
    picked += [c for c in sorted(stories) if c not in picked][: n - len(picked)]
    return {c: _render(list(stories[c].values())) for c in sorted(picked)}


def _render(instances: list[list[str]], most: int = 2) -> str:
    """``started → step 0 email sent → completed | started → …`` (+ how many more)."""
    parts = []
    for words in instances[:most]:
        running = not any(w.startswith(_ENDS) for w in words)
        parts.append(" → ".join(words) + (" (still running)" if running else ""))
    more = f"  (+{len(instances) - most} more)" if len(instances) > most else ""
    return " | ".join(parts) + more


# ---- diff (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffRow:
    trigger: str
    step: str  # "" for trigger-level rows, else "0 template"
    metric: str
    base: int
    other: int

    @property
    def delta(self) -> int:
        return self.other - self.base


@dataclass
class Diff:
    rows: list[DiffRow]
    only_base: list[str]
    only_other: list[str]


def branch_rows(s: Summary) -> list[tuple[str, str, str, int]]:
    """(trigger, from step, to step, instances) for every branch taken, by trigger."""
    return [(tid, *way.split("→", 1), n) for tid, t in s.triggers.items()
            for way, n in sorted(t.branches.items())]


def _metrics(t: TriggerStats | None) -> dict[tuple[str, str], int]:
    if t is None:
        return {}
    m = {("", a): t.lifecycle[a] for a in ("started", "cancelled", "completed", "expired")}
    m[("", "conversions")] = t.conversions
    m.update({("", f"branch {way}"): n for way, n in t.branches.items()})
    for i, st in t.steps.items():
        label = f"{i} {st.template}"
        m[(label, "sent")] = sum(st.sent.values())
        m[(label, "suppressed")] = sum(st.suppressed.values())
        m.update({(label, f"  {reason}"): n for reason, n in st.suppressed.items()})
        m[(label, "skipped (when)")] = st.skipped
        m[(label, "cancelled")] = st.cancelled
    return m


def diff(a: Summary, b: Summary) -> Diff:
    """Per trigger and step: base vs other counts (rows where both are 0 are left out)."""
    rows = []
    for tid in sorted(a.triggers.keys() | b.triggers.keys()):
        ma, mb = _metrics(a.triggers.get(tid)), _metrics(b.triggers.get(tid))
        keys = list(dict.fromkeys([*ma, *mb]))
        keys.sort(key=lambda k: (k[0] != "", k[0]))  # trigger rows first, then steps
        rows += [DiffRow(tid, step, metric, ma.get((step, metric), 0), mb.get((step, metric), 0))
                 for step, metric in keys if ma.get((step, metric)) or mb.get((step, metric))]
    for seg in sorted(a.segments.keys() | b.segments.keys()):  # as "segment <id>" rows
        ca, cb = a.segments.get(seg, Counter()), b.segments.get(seg, Counter())
        rows += [DiffRow(f"segment {seg}", "", action, ca[action], cb[action])
                 for action in ("entered", "left") if ca[action] or cb[action]]
    return Diff(rows, sorted(a.triggers.keys() - b.triggers.keys()),
                sorted(b.triggers.keys() - a.triggers.keys()))
