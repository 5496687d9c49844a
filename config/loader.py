"""Load and validate the config set, with errors that name file, line, column and field.

``load_config(dir)`` reads ``policy.yaml``, ``templates.yaml`` and ``triggers/*.yaml``, runs
the cross-file checks (:mod:`config.checks`) and returns a :class:`ConfigSet` with a
content-hash ``version`` that every decision row carries. All problems in all files are
collected and raised together as :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from config.schema import Policy, Trigger
from config.templates import TEMPLATES_FILE, Template, TemplateRegistry

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where} {self.field}: {self.message}" if self.field else f"{where} {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class ConfigSet:
    triggers: tuple[Trigger, ...]
    policy: Policy
    version: str
    files: tuple[str, ...] = field(default=())
    templates: dict[str, Template] = field(default_factory=dict)  # empty: no registry

    def trigger(self, trigger_id: str) -> Trigger | None:
        return next((t for t in self.triggers if t.id == trigger_id), None)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _marks(node: yaml.Node, path: tuple[Any, ...],
           out: dict[tuple[Any, ...], tuple[int, int]]) -> None:
    """Record (line, column), 1-based, of every value in the YAML node tree by its path."""
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[(*path, key, "__key__")] = (k.start_mark.line + 1, k.start_mark.column + 1)
            _marks(v, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _marks(v, (*path, i), out)


def _locate(loc: tuple[Any, ...], kind: str,
            marks: dict[tuple[Any, ...], tuple[int, int]]) -> tuple[int, int]:
    """Best position for a pydantic error: an unknown key at the key, a missing field at its
    parent's key, a bad value at the value; else the deepest enclosing thing that exists."""
    if kind == "extra_forbidden" and (*loc, "__key__") in marks:
        return marks[(*loc, "__key__")]
    if kind == "missing" and (*loc[:-1], "__key__") in marks:
        return marks[(*loc[:-1], "__key__")]
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return (1, 1)


def _clean(msg: str) -> str:
    return re.sub(r" or instance of \w+", "", msg.removeprefix("Value error, "))


def validate_document(text: str, filename: str,
                      model: type[BaseModel]) -> tuple[Any, list[ConfigIssue]]:
    """Parse one YAML document into ``model``; returns (model or None, issues)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [ConfigIssue(filename, line, col, "", f"YAML syntax: {e.problem or e}")]
    if not isinstance(data, dict) or node is None:
        return None, [ConfigIssue(filename, 1, 1, "", "expected a mapping at the top level")]
    marks: dict[tuple[Any, ...], tuple[int, int]] = {}
    _marks(node, (), marks)
    try:
        return model.model_validate(data), []
    except ValidationError as e:
        issues = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line, col = _locate(loc, err["type"], marks)
            msg = _clean(err["msg"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see `cdp-triggers schema`)"
            elif err["type"] == "missing":
                msg = "required"
            issues.append(ConfigIssue(filename, line, col, _field_path(loc), msg))
        return None, issues


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(config_dir: str | Path = DEFAULT_CONFIG_DIR) -> ConfigSet:
    """Load ``policy.yaml``, ``templates.yaml`` (when present) and every ``triggers/*.yaml``,
    run the cross-file checks; raise ConfigError listing all issues."""
    from config.checks import check_config

    root = Path(config_dir)
    issues: list[ConfigIssue] = []
    digest = hashlib.blake2b(digest_size=6)
    policy_path = root / "policy.yaml"
    policy = Policy()
    files: list[str] = []
    if policy_path.exists():
        text = policy_path.read_text()
        digest.update(b"policy.yaml\0" + text.encode())
        parsed, found = validate_document(text, _display(policy_path), Policy)
        issues += found
        policy = parsed or policy
        files.append(_display(policy_path))
    templates: dict[str, Template] = {}
    templates_path = root / TEMPLATES_FILE
    if templates_path.exists():
        text = templates_path.read_text()
        digest.update(f"{TEMPLATES_FILE}\0".encode() + text.encode())
        registry, found = validate_document(text, _display(templates_path), TemplateRegistry)
        issues += found
        templates = dict(registry.templates) if registry else {}
        files.append(_display(templates_path))
    triggers: list[Trigger] = []
    seen: dict[str, str] = {}
    paths = sorted((root / "triggers").glob("*.yaml")) + sorted((root / "triggers").glob("*.yml"))
    if not paths:
        issues.append(ConfigIssue(_display(root / "triggers"), 1, 1, "",
                                  "no trigger files (*.yaml) found"))
    for path in paths:
        text = path.read_text()
        digest.update(f"triggers/{path.name}\0".encode() + text.encode())
        name = _display(path)
        files.append(name)
        trigger, found = validate_document(text, name, Trigger)
        issues += found
        if trigger is None:
            continue
        if trigger.id in seen:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            marks: dict[tuple[Any, ...], tuple[int, int]] = {}
            _marks(node, (), marks)
            line, col = marks.get(("id",), (1, 1))
            issues.append(ConfigIssue(
                name, line, col, "id",
                f"duplicate trigger id '{trigger.id}' (also in {seen[trigger.id]})"))
            continue
        seen[trigger.id] = name
        triggers.append(trigger)
    config = ConfigSet(tuple(triggers), policy, digest.hexdigest(), tuple(files), templates)
    issues += check_config(root, config)
    if issues:
        raise ConfigError(issues)
    return config
