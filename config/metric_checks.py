"""Cross-file checks of customer metrics in conditions (:mod:`operators.metrics`).

* ``customer.events.<type>`` names a known event type (built in, derived or in
  ``events.yaml``), and its ``key`` a props path that type has;
* ``since``/``key`` and ``instance.<field>`` need an instance: only in a step's ``when``;
* one ``key`` path per counted event type in the whole config (the engine keeps one key
  per remembered event);
* a segment reads ``customer.<metric>``/``customer.events.<type>`` only (not
  ``customer.segments``: membership does not depend on other segments).

Each issue points at file:line:col and a field path such as ``steps[0].when[1].key``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from config.documents import ConfigIssue, Document, field_path
from config.events import EventRegistry, lookup
from config.schema import Condition

if TYPE_CHECKING:
    from config.configset import ConfigSet


def _conditions(config: ConfigSet) -> Iterator[tuple[Document, tuple[Any, ...], Condition,
                                                     bool]]:
    """(document, path, condition, has an instance) for every condition of the config."""
    for t in config.triggers:
        doc = config.documents.get(t.id)
        if doc is None:
            continue
        for i, c in enumerate(t.start.where):
            yield doc, ("start", "where", i), c, False
        for j, cancel in enumerate(t.cancel_on):
            for i, c in enumerate(cancel.where):
                yield doc, ("cancel_on", j, "where", i), c, False
        for k, step in enumerate(t.steps):
            for i, c in enumerate(step.when):
                yield doc, ("steps", k, "when", i), c, True
    for seg in config.segments:
        doc = config.segment_documents.get(seg.id)
        if doc is None:
            continue
        for i, c in enumerate(seg.conditions):
            yield doc, ("conditions", i), c, False


def check_metrics(config: ConfigSet) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    keys: dict[str, tuple[str, str]] = {}  # counted type → (key path, where first used)
    reg: EventRegistry | None = config.events
    segment_docs = set(map(id, config.segment_documents.values()))

    def issue(doc: Document, path: tuple[Any, ...], message: str) -> None:
        issues.append(doc.issue(path, field_path(path), message))

    for doc, path, c, has_instance in _conditions(config):
        in_segment = id(doc) in segment_docs
        if in_segment and (not c.field.startswith("customer.")
                           or c.field == "customer.segments"):
            issue(doc, (*path, "field"), f"a segment reads customer.<metric> or "
                  f"customer.events.<type> only, not {c.field}")
            continue
        for name in ("since", "key"):
            if getattr(c, name) is not None and not has_instance:
                where = "a segment has" if in_segment else "start and cancel_on conditions have"
                issue(doc, (*path, name), f"'{name}' needs a trigger instance, which {where} "
                      "none: use it in a step's when (or count within a duration)")
        if c.field.startswith("instance.") and in_segment:
            issue(doc, (*path, "field"), f"a segment has no instance: {c.field} is never set")
        typ = c.counted
        if typ is None or reg is None:
            continue
        event = reg.get(typ)
        if event is None:
            issue(doc, (*path, "field"), reg.unknown(typ))
            continue
        if c.key is not None:
            found = lookup(event.props, c.key.split(".")[1:])
            if found.kind != "ok":
                issue(doc, (*path, "key"), f"{typ} has no {c.key} (it has: "
                      f"{', '.join(event.props) or 'no props'})")
                continue
            first = keys.setdefault(typ, (c.key, doc.name))
            if first[0] != c.key:
                issue(doc, (*path, "key"), f"{typ} is already counted by {first[0]} (in "
                      f"{first[1]}): one key path per event type")
    for t in config.triggers:
        doc = config.documents.get(t.id)
        if doc is None or reg is None:
            continue
        for k, step in enumerate(t.steps):
            for var, source in step.vars.items():
                if source.startswith("customer.events.") and source[16:] not in reg:
                    issue(doc, ("steps", k, "vars", var), reg.unknown(source[16:]))
    return issues
