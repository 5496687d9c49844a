"""Builders shared by the pure-engine tests: events, profiles and a replay/live driver."""

from __future__ import annotations

import functools
import shutil
import tempfile
from itertools import count
from pathlib import Path

from cdp_triggers.clock import MINUTE
from cdp_triggers.events import Event
from cdp_triggers.records import Decision, Lifecycle, Output, Send
from config.loader import DEFAULT_CONFIG_DIR, ConfigSet, load_config
from operators.engine import Engine
from state.customer import CustomerState
from state.profiles import DictProfileStore, Profile

T0 = 1_790_000_000_000  # a fixed moment in 2026
_ids = count()


def ev(type_: str, at_min: float, customer: str = "c1", **props) -> Event:
    return Event(f"e{next(_ids)}", type_, customer, T0 + int(at_min * MINUTE), props)


def cart(at_min: float, product: str = "p1", customer: str = "c1", cart_id: str = "k1",
         **props) -> Event:
    return ev("added_to_cart", at_min, customer, product_id=product, price=10.0,
              cart_id=cart_id, **props)


def order(at_min: float, customer: str = "c1", total: float = 20.0) -> Event:
    return ev("order_placed", at_min, customer, order_id=f"o{next(_ids)}", total=total,
              currency="EUR", items=[])


def reachable(customer: str = "c1") -> Profile:
    return Profile(customer, "Europe/Berlin", "de-DE", frozenset({"email", "push", "sms"}),
                   {"email:marketing": True, "push:marketing": True, "sms:marketing": True})


@functools.cache
def trigger_semantics_dir() -> Path:
    """The shipped triggers under a neutral policy (grace only: no caps, quiet hours or
    holdout), so trigger tests see trigger semantics whatever the wall clock says; the
    policy has its own tests."""
    root = Path(tempfile.mkdtemp(prefix="cdp-config-")) / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, root,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__", "schema"))
    (root / "policy.yaml").write_text("late_event_grace: 5m\n")
    return root


@functools.cache
def _trigger_semantics_config() -> ConfigSet:
    return load_config(trigger_semantics_dir())


def config_dir(root: Path, triggers: dict[str, str] | None = None,
               segments: dict[str, str] | None = None, rfm: str | None = None,
               only_segments: bool = False) -> Path:
    """A config dir under ``root``: the shipped config under the neutral policy, plus
    extra ``triggers/``/``segments/`` files (file stem → YAML text) and ``rfm.yaml``;
    ``only_segments``: ``segments`` replace the shipped segments."""
    out = root / "config"
    shutil.copytree(trigger_semantics_dir(), out)
    if only_segments:
        for path in (out / "segments").glob("*.y*ml"):
            path.unlink()
    for folder, files in (("triggers", triggers), ("segments", segments)):
        (out / folder).mkdir(exist_ok=True)
        for stem, text in (files or {}).items():
            (out / folder / f"{stem}.yaml").write_text(text)
    if rfm is not None:
        (out / "rfm.yaml").write_text(rfm)
    return out


def custom_engine(root: Path, **kw) -> Engine:
    """The engine on :func:`config_dir` (same arguments)."""
    return Engine(load_config(config_dir(root, **kw)))


def config_issues(root: Path) -> list[str]:
    """The messages `load_config` refuses ``root`` with (it must refuse it)."""
    import pytest

    from config.loader import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(root)
    return [str(i) for i in e.value.issues]


def engine(shipped_policy: bool = False) -> Engine:
    """The engine on the shipped triggers (with the shipped policy only when asked)."""
    return Engine(load_config() if shipped_policy else _trigger_semantics_config())


def replay(eng: Engine, events: list[Event], horizon: int,
           profiles: DictProfileStore | None = None) -> list[Output]:
    """Replay mode: `now` is each event's own time (never going back), then the horizon."""
    store = profiles or DictProfileStore([reachable(e.customer_id) for e in events])
    states: dict[str, CustomerState] = {}
    out: list[Output] = []
    for e in events:
        st = states.setdefault(e.customer_id, CustomerState(e.customer_id))
        out += eng.handle(st, e, max(st.high_water, e.ts), store.get)
    for st in states.values():
        out += eng.handle(st, None, horizon, store.get)
    return out


def live(eng: Engine, events: list[Event], horizon: int, lag_ms: int = 1500,
         profiles: DictProfileStore | None = None) -> list[Output]:
    """Live mode: a wall clock a little behind event time, plus notify_at wake-ups."""
    store = profiles or DictProfileStore([reachable(e.customer_id) for e in events])
    states: dict[str, CustomerState] = {}
    out: list[Output] = []
    arrivals = [(e.ts + lag_ms, i, e) for i, e in enumerate(events)]
    for wall, _, e in sorted(arrivals):
        # wake every key whose notify_at passed before this arrival, as Bytewax would
        for st in states.values():
            while (w := eng.next_wakeup(st)) is not None and w <= wall:
                out += eng.handle(st, None, w, store.get)
        st = states.setdefault(e.customer_id, CustomerState(e.customer_id))
        out += eng.handle(st, e, wall, store.get)
    for st in states.values():
        while (w := eng.next_wakeup(st)) is not None and w <= horizon:
            out += eng.handle(st, None, w, store.get)
    return out


def sends(out: list[Output]) -> list[Send]:
    return [o for o in out if isinstance(o, Send)]


def firsts(out: list[Output]) -> list[Send]:
    """The first send of each (instance, step): the message, before any cascade fallback."""
    seen: set[tuple[str, int]] = set()
    result = []
    for s in sends(out):
        if (s.instance_id, s.step) not in seen:
            seen.add((s.instance_id, s.step))
            result.append(s)
    return result


def decisions(out: list[Output]) -> list[Decision]:
    return [o for o in out if isinstance(o, Decision)]


def at(out: list[Output], trigger: str) -> list[Output]:
    """Only the records of one trigger."""
    return [o for o in out if getattr(o, "trigger_id", None) == trigger]


def lifecycle(out: list[Output], action: str) -> list[Lifecycle]:
    return [o for o in out if isinstance(o, Lifecycle) and o.action == action]
