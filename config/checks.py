"""Cross-file checks that one YAML document cannot make on its own.

* every step's ``template``, and each variant's replacement for it, is in ``templates.yaml``
  and has content for every channel of the step; the step's ``vars`` provide every variable
  it needs, and none is contact data (a raw e-mail address or phone number never goes into
  a send);
* no step after an unreachable one: with ``expire_after``, a step due (wait + delays up to
  and including it) at or after ``expire_after`` never sends, nor does any step after it;
* every event type is known (:mod:`config.events`: built in, derived or in ``events.yaml``)
  and every props path names a prop that event type has: in ``start``/``cancel_on``
  conditions, ``key``, ``same_key``, ``reset_on`` and ``vars``; a path into a list needs an
  ``any``/``all`` quantifier; a step's ``when`` has no event, so no props path there.

Each issue points at file:line:col and a field path such as ``steps[1].template``. The
checks work on the documents the loader parsed (no file is read again). Template checks run
only when the config set has a registry (``templates.yaml`` present and valid), event checks
only when it has ``events.yaml``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdp_triggers.durations import format_duration
from config.documents import ConfigIssue, Marks, field_path, position
from config.events import EVENTS_FILE, EventRegistry, describe, lookup
from config.schema import Condition, ItemCondition, Trigger
from config.templates import CONTACT_DATA, TEMPLATES_FILE, Template

if TYPE_CHECKING:
    from config.configset import ConfigSet

# Where a variable usually comes from (hint in the "missing variable" message).
_SOURCES = {"items": "cart.items", "cart_total": "cart.total", "status": "event.type"}


def check_config(config_dir: str | Path, config_set: ConfigSet) -> list[ConfigIssue]:
    """All cross-file issues of ``config_set`` (``config_dir``: kept for callers; the
    documents the loader parsed are used)."""
    return check_documents(config_set)


def check_documents(config_set: ConfigSet) -> list[ConfigIssue]:
    """All cross-file issues of ``config_set``, in file order."""
    issues: list[ConfigIssue] = []
    for trigger in config_set.triggers:
        doc = config_set.documents.get(trigger.id)
        if doc is None:
            continue
        name, marks = doc.name, doc.marks
        if config_set.events is not None:
            issues += _check_events(name, marks, trigger, config_set.events)
        issues += _check_templates(name, marks, trigger, config_set.templates)
        issues += _check_no_contact_data(name, marks, trigger)
        issues += _check_reachable(name, marks, trigger)
    return issues


def _at(marks: Marks, *path: Any) -> tuple[int, int]:
    return position(marks, *path)


def _unknown(template: str, templates: dict[str, Template]) -> str:
    near = difflib.get_close_matches(template, list(templates), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return f"unknown template '{template}' (not in {TEMPLATES_FILE}){hint}"


def _check_templates(name: str, marks: Marks, t: Trigger,
                     templates: dict[str, Template]) -> list[ConfigIssue]:
    if not templates:
        return []
    out = []
    for i, step in enumerate(t.steps):
        tpl = templates.get(step.template)
        if tpl is None:
            out.append(ConfigIssue(name, *_at(marks, "steps", i, "template"),
                                   f"steps[{i}].template", _unknown(step.template, templates)))
            continue
        for j, channel in enumerate(step.channels):
            if channel not in tpl.channels:
                out.append(ConfigIssue(name, *_at(marks, "steps", i, "channels", j),
                                       f"steps[{i}].channels[{j}]",
                                       f"template '{step.template}' has no {channel} content "
                                       f"(it has: {', '.join(tpl.channels)})"))
        missing = [v for v in tpl.vars if v not in step.vars]
        if missing:
            where = (_at(marks, "steps", i, "vars", "__key__")
                     if ("steps", i, "vars", "__key__") in marks
                     else _at(marks, "steps", i, "template"))
            example = f"{missing[0]}: {_SOURCES.get(missing[0], f'event.props.{missing[0]}')}"
            out.append(ConfigIssue(name, *where, f"steps[{i}].vars",
                                   f"template '{step.template}' needs "
                                   f"{', '.join(missing)} (add under vars, e.g. {example})"))
    return out + _check_variant_templates(name, marks, t, templates)


def _check_variant_templates(name: str, marks: Marks, t: Trigger,
                             templates: dict[str, Template]) -> list[ConfigIssue]:
    """A variant's template replaces a step's: it must exist and fit every such step."""
    out = []
    used = sorted({step.template for step in t.steps})
    for j, variant in enumerate(t.variants):
        for base, alt in variant.templates.items():
            path, field = ("variants", j, "templates", base), f"variants[{j}].templates.{base}"
            if base not in used:
                out.append(ConfigIssue(name, *_at(marks, *path, "__key__"), field,
                                       f"no step uses template '{base}' "
                                       f"(the steps use: {', '.join(used)})"))
                continue
            tpl = templates.get(alt)
            if tpl is None:
                out.append(ConfigIssue(name, *_at(marks, *path), field, _unknown(alt, templates)))
                continue
            for i, step in enumerate(t.steps):
                if step.template != base:
                    continue
                lacking = [c for c in step.channels if c not in tpl.channels]
                if lacking:
                    out.append(ConfigIssue(name, *_at(marks, *path), field,
                                           f"template '{alt}' has no {', '.join(lacking)} "
                                           f"content, which steps[{i}].channels need "
                                           f"(it has: {', '.join(tpl.channels)})"))
                missing = [v for v in tpl.vars if v not in step.vars]
                if missing:
                    out.append(ConfigIssue(name, *_at(marks, *path), field,
                                           f"template '{alt}' needs {', '.join(missing)}, "
                                           f"which steps[{i}].vars does not provide"))
    return out


def _check_no_contact_data(name: str, marks: Marks, t: Trigger) -> list[ConfigIssue]:
    return [ConfigIssue(name, *_at(marks, "steps", i, "vars", var), f"steps[{i}].vars.{var}",
                        f"'{source}' looks like contact data: sends never carry raw e-mail "
                        "addresses or phone numbers (gateways resolve them from the customer id)")
            for i, step in enumerate(t.steps) for var, source in step.vars.items()
            if CONTACT_DATA.search(var) or CONTACT_DATA.search(source.lower())]


def _check_reachable(name: str, marks: Marks, t: Trigger) -> list[ConfigIssue]:
    if t.expire_after is None:
        return []
    offset = t.wait.ms
    for i, step in enumerate(t.steps):
        offset += step.delay
        if offset < t.expire_after:
            continue
        later = [f"steps[{k}]" for k in range(i + 1, len(t.steps))]
        tail = f"; nor will {', '.join(later)} after it" if later else ""
        field = f"steps[{i}].delay" if ("steps", i, "delay") in marks else f"steps[{i}]"
        pos = marks.get(("steps", i, "delay")) or _at(marks, "steps", i)
        return [ConfigIssue(name, *pos, field,
                            f"unreachable: due {format_duration(offset)} after the start "
                            f"(wait + delays), not before expire_after "
                            f"{format_duration(t.expire_after)}, so it never sends{tail}")]
    return []


# ---- events: known types, props paths that exist -----------------------------------------

def _problem(spec: Any, parts: list[str], prefix: str, event: str,
             cond: Condition | ItemCondition | None = None) -> str | None:
    """Why ``prefix.parts`` (a props path, or a path inside a list item) names nothing in
    ``event`` whose props (at ``prefix``) are ``spec``; None when it names something. With
    ``cond``, its any/all item conditions are checked against the list's item type too."""
    found = lookup(spec, parts)
    full = ".".join([prefix, *parts])
    if found.kind == "missing":
        here = ".".join([prefix, *parts[:found.depth]])
        wrong = parts[found.depth]
        near = difflib.get_close_matches(wrong, found.known, n=1)
        hint = f"; did you mean {here}.{near[0]}?" if near else ""
        if found.known:
            has = f"{here} has: {', '.join(found.known)}"
        elif found.depth:
            has = f"{here} is {describe(lookup(spec, parts[:found.depth]).type or 'any')}"
        else:
            has = f"it has no props; declare them in {EVENTS_FILE}"
        return f"{event} has no {here}.{wrong} ({has}){hint}"
    if found.kind == "list":
        lst = ".".join([prefix, *parts[:found.depth]])
        rest = ".".join(parts[found.depth:])
        return (f"{lst} is a list in {event}, so {full} matches nothing: test its items with "
                f"{{field: {lst}, any: {{field: {rest}, op: …, value: …}}}} (or all:)")
    quantifier = cond.quantifier if cond is not None else None
    if quantifier is None:
        return None
    if isinstance(found.type, list):
        item = found.type[0]
    elif found.type == "any":
        item = "any"
    else:
        return (f"{full} is {describe(found.type or 'any')} in {event}, not a list: "
                f"'{quantifier[0]}' tests the items of a list")
    for sub in quantifier[1]:
        problem = _problem(item, sub.field.split(".") if sub.field else [], f"{full}[]",
                           event, sub)
        if problem:
            return problem
    return None


def _props_parts(path: str, head: str = "props") -> list[str] | None:
    first, _, rest = path.partition(".")
    return rest.split(".") if first == head and rest else None


def _check_events(name: str, marks: Marks, t: Trigger, reg: EventRegistry) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []

    def issue(path: tuple[Any, ...], message: str) -> None:
        out.append(ConfigIssue(name, *_at(marks, *path), field_path(path), message))

    def known(event: str | list[str], at: tuple[Any, ...]) -> list[str]:
        names = [event] if isinstance(event, str) else event
        ok = []
        for j, ty in enumerate(names):
            if ty in reg:
                ok.append(ty)
            else:
                issue(at if isinstance(event, str) else (*at, j), reg.unknown(ty))
        return ok

    def first_problem(types: Iterable[str], parts: list[str],
                      cond: Condition | None = None) -> Iterator[str]:
        for ty in types:
            event = reg.get(ty)
            problem = event and _problem(event.props, parts, "props", ty, cond)
            if problem:
                yield problem

    def conditions(conds: list[Condition], types: list[str], at: tuple[Any, ...]) -> None:
        for i, cond in enumerate(conds):
            parts = _props_parts(cond.field)
            problem = next(first_problem(types, parts, cond), None) if parts else None
            if problem:
                issue((*at, i, "field"), problem)

    starts = known(t.start.event, ("start", "event"))
    conditions(t.start.where, starts, ("start", "where"))
    key = _props_parts(t.key) if t.key else None
    if key:
        problem = next(first_problem(starts, key), None)
        if problem:
            issue(("key",), f"the key must be in every start event: {problem}")
    resets = known(t.wait.reset_on, ("wait", "reset_on"))
    for c, cancel in enumerate(t.cancel_on):
        types = known(cancel.event, ("cancel_on", c, "event"))
        conditions(cancel.where, types, ("cancel_on", c, "where"))
        problem = next(first_problem(types, key), None) if key and cancel.same_key else None
        if problem:
            issue(("cancel_on", c, "same_key"), f"with same_key it never cancels: {problem}")
    context = starts + (resets if t.wait.inactivity is not None else [])
    for i, step in enumerate(t.steps):
        for j, cond in enumerate(step.when):
            if cond.field.startswith("props.") or cond.field in ("type", "customer_id"):
                issue(("steps", i, "when", j, "field"),
                      f"a step's when is checked at send time, with no event: {cond.field} is "
                      "never set (use customer.<metric> or instance.<field>)")
        for var, source in step.vars.items():
            parts = _props_parts(source.removeprefix("event."))
            if not parts or not source.startswith("event.props.") or not context:
                continue
            problems = list(first_problem(context, parts))
            if len(problems) == len(context):
                issue(("steps", i, "vars", var),
                      f"always null: {problems[0]} (event.props is the props of the "
                      f"instance's latest event: {', '.join(context)})")
    return out
