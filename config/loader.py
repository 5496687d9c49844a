"""Load and validate the config set, with errors that name file, line, column and field.

``load_config(dir)`` reads ``policy.yaml``, ``templates.yaml``, ``events.yaml`` and
``triggers/*.yaml`` (each file read and parsed once), runs the cross-file checks
(:mod:`config.checks`) on those parsed documents and returns a :class:`ConfigSet` with a
content-hash ``version`` that every decision row carries. All problems in all files are
collected and raised together as :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from config.configset import ConfigSet
from config.documents import (
    ConfigIssue,
    Document,
    display_path,
    field_path,
    parse_document,
    yaml_marks,
)
from config.events import EVENTS_FILE, EventRegistry, EventsFile, build_registry
from config.schema import Policy, Rfm, Segment, Trigger, bare_durations
from config.templates import TEMPLATES_FILE, Template, TemplateRegistry

__all__ = ["DEFAULT_CONFIG_DIR", "ConfigError", "ConfigIssue", "ConfigSet", "display_path",
           "load_config", "validate_document", "yaml_marks"]

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent

_display = display_path  # the old name (cdp_triggers/cli.py imports it)


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def _locate(loc: tuple[Any, ...], kind: str, doc: Document) -> tuple[int, int]:
    """Best position for a pydantic error: an unknown key at the key, a missing field at its
    parent's key, a bad value at the value; else the deepest enclosing thing that exists."""
    if kind == "extra_forbidden" and (*loc, "__key__") in doc.marks:
        return doc.marks[(*loc, "__key__")]
    if kind == "missing" and (*loc[:-1], "__key__") in doc.marks:
        return doc.marks[(*loc[:-1], "__key__")]
    return doc.at(*loc)


def _clean(msg: str) -> str:
    return re.sub(r" or instance of \w+", "", msg.removeprefix("Value error, "))


def bare_number_message(value: Any) -> str:
    n = value if isinstance(value, int) else f"{value:g}"
    return (f"a bare number is not a duration (it would be {n} milliseconds): "
            f"write {n}d, {n}h or {n}m (or {n}s, {n}w, {n}ms)")


def validate_parsed(doc: Document, model: type[BaseModel]) -> tuple[Any, list[ConfigIssue]]:
    """Validate a parsed document against ``model``; returns (model or None, issues)."""
    bare = [doc.issue(loc, field_path(loc), bare_number_message(_get(doc.data, loc)))
            for loc in bare_durations(model, doc.data)]
    try:
        parsed = model.model_validate(doc.data)
    except ValidationError as e:
        issues = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if any(i.field == field_path(loc) for i in bare):
                continue
            msg = _clean(err["msg"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see `cdp-triggers schema`)"
            elif err["type"] == "missing":
                msg = "required"
            issues.append(ConfigIssue(doc.name, *_locate(loc, err["type"], doc),
                                      field_path(loc), msg))
        return None, sorted(bare + issues, key=lambda i: (i.line, i.column))
    return (None if bare else parsed), bare


def _get(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        data = data[part]
    return data


def validate_document(text: str, filename: str,
                      model: type[BaseModel]) -> tuple[Any, list[ConfigIssue]]:
    """Parse one YAML document into ``model``; returns (model or None, issues)."""
    doc, issues = parse_document(text, filename)
    return (None, issues) if doc is None else validate_parsed(doc, model)


M = TypeVar("M", Trigger, Segment)  # a file-per-item model with an ``id``


class _Reader:
    """Reads each file once: its text feeds the version hash, its parse the models."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digest = hashlib.blake2b(digest_size=6)
        self.files: list[str] = []
        self.issues: list[ConfigIssue] = []

    def read(self, path: Path, model: type[BaseModel]) -> tuple[Any, Document | None]:
        text = path.read_text()
        rel = path.relative_to(self.root).as_posix()
        self.digest.update(f"{rel}\0".encode() + text.encode())
        name = display_path(path)
        self.files.append(name)
        doc, found = parse_document(text, name)
        if doc is None:
            self.issues += found
            return None, None
        parsed, found = validate_parsed(doc, model)
        self.issues += found
        return parsed, doc


RFM_FILE = "rfm.yaml"


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))


def _load_each(reader: _Reader, paths: list[Path], model: type[M],
               kind: str) -> tuple[list[M], dict[str, Document]]:
    """One ``model`` per file (triggers, segments), ids unique across the files: a repeated
    id is an issue on the later file's ``id``."""
    items: list[M] = []
    documents: dict[str, Document] = {}
    for path in paths:
        item, doc = reader.read(path, model)
        if item is None or doc is None:
            continue
        if item.id in documents:
            reader.issues.append(doc.issue(
                ("id",), "id",
                f"duplicate {kind} id '{item.id}' (also in {documents[item.id].name})"))
            continue
        documents[item.id] = doc
        items.append(item)
    return items, documents


def _unknown_segments(triggers: list[Trigger], documents: dict[str, Document],
                      known: set[str]) -> list[ConfigIssue]:
    """A schedule/date start's ``segment`` names a segment of ``segments/``."""
    out = []
    for t in triggers:
        seg = t.start.segment
        if seg is not None and seg not in known:
            near = difflib.get_close_matches(seg, sorted(known), n=1)
            out.append(documents[t.id].issue(
                ("start", "segment"), "start.segment",
                f"unknown segment '{seg}'" + (f"; did you mean '{near[0]}'?" if near else "")
                + f" (segments: {', '.join(sorted(known)) or 'none in segments/'})"))
    return out


def load_config(config_dir: str | Path = DEFAULT_CONFIG_DIR) -> ConfigSet:
    """Load ``policy.yaml``, ``templates.yaml``, ``events.yaml`` and ``rfm.yaml`` (when
    present), every ``triggers/*.yaml`` and ``segments/*.yaml``, run the cross-file checks;
    raise ConfigError listing all issues."""
    from config.checks import check_documents
    from config.metric_checks import check_metrics

    root = Path(config_dir)
    reader = _Reader(root)
    policy = Policy()
    if (root / "policy.yaml").exists():
        policy = reader.read(root / "policy.yaml", Policy)[0] or policy
    templates: dict[str, Template] = {}
    if (root / TEMPLATES_FILE).exists():
        registry = reader.read(root / TEMPLATES_FILE, TemplateRegistry)[0]
        templates = dict(registry.templates) if registry else {}
    events: EventRegistry | None = None
    if (root / EVENTS_FILE).exists():
        decls, doc = reader.read(root / EVENTS_FILE, EventsFile)
        if decls is not None and doc is not None:
            events, found = build_registry(decls, doc)
            reader.issues += found
    paths = _yaml_files(root / "triggers")
    if not paths:
        reader.issues.append(ConfigIssue(display_path(root / "triggers"), 1, 1, "",
                                         "no trigger files (*.yaml) found"))
    triggers, documents = _load_each(reader, paths, Trigger, "trigger")
    rfm = Rfm()
    if (root / RFM_FILE).exists():
        rfm = reader.read(root / RFM_FILE, Rfm)[0] or rfm
    segments, segment_docs = _load_each(reader, _yaml_files(root / "segments"), Segment,
                                        "segment")
    reader.issues += _unknown_segments(triggers, documents, {s.id for s in segments})
    config = ConfigSet(tuple(triggers), policy, reader.digest.hexdigest(), tuple(reader.files),
                       templates, events, documents, tuple(segments), rfm, segment_docs)
    issues = reader.issues + check_documents(config) + check_metrics(config)
    if issues:
        raise ConfigError(issues)
    return config
