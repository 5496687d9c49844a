"""Cross-file checks that one YAML document cannot make on its own.

* every step's ``template``, and each variant's replacement for it, is in ``templates.yaml``
  and has content for every channel of the step; the step's ``vars`` provide every variable
  it needs, and none is contact data (a raw e-mail address or phone number never goes into
  a send);
* no step after an unreachable one: with ``expire_after``, a step due (wait + delays up to
  and including it) at or after ``expire_after`` never sends, nor does any step after it.

Each issue points at file:line:col and a field path such as ``steps[1].template``. Template
checks run only when the config set has a registry (``templates.yaml`` present and valid).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from cdp_triggers.durations import format_duration
from config.loader import ConfigIssue, ConfigSet, _display, _marks
from config.schema import Trigger
from config.templates import CONTACT_DATA, TEMPLATES_FILE, Template

Marks = dict[tuple[Any, ...], tuple[int, int]]

# Where a variable usually comes from (hint in the "missing variable" message).
_SOURCES = {"items": "cart.items", "cart_total": "cart.total", "status": "event.type"}


def check_config(config_dir: str | Path, config_set: ConfigSet) -> list[ConfigIssue]:
    """All cross-file issues of ``config_set`` (loaded from ``config_dir``), in file order."""
    issues: list[ConfigIssue] = []
    for name, marks, trigger in _located_triggers(Path(config_dir), config_set):
        issues += _check_templates(name, marks, trigger, config_set.templates)
        issues += _check_no_contact_data(name, marks, trigger)
        issues += _check_reachable(name, marks, trigger)
    return issues


def _located_triggers(root: Path, config_set: ConfigSet):
    """(display name, YAML marks, trigger) for each loaded trigger, by its file's ``id``."""
    done: set[str] = set()
    paths = sorted((root / "triggers").glob("*.yaml")) + sorted((root / "triggers").glob("*.yml"))
    for path in paths:
        try:
            node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        tid = next((v.value for k, v in node.value
                    if k.value == "id" and isinstance(v, yaml.ScalarNode)), None)
        trigger = config_set.trigger(tid) if tid else None
        if trigger is None or tid in done:
            continue
        done.add(tid)
        marks: Marks = {}
        _marks(node, (), marks)
        yield _display(path), marks, trigger


def _at(marks: Marks, *path: Any) -> tuple[int, int]:
    for n in range(len(path), -1, -1):
        if path[:n] in marks:
            return marks[path[:n]]
    return (1, 1)


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
