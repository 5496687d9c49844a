"""One parsed YAML config document and where each of its values is: shared by the loader
(:mod:`config.loader`) and the cross-file checks (:mod:`config.checks`), so every file is
read and parsed exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Marks = dict[tuple[Any, ...], tuple[int, int]]


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


@dataclass(frozen=True, eq=False)
class Document:
    """A parsed YAML file: its display name, plain data and the (line, column) of every value
    by path (``(*path, "__key__")`` for the position of a mapping key)."""

    name: str
    data: Any
    marks: Marks

    def at(self, *path: Any) -> tuple[int, int]:
        """Position of ``path``, else of the deepest enclosing value that exists."""
        return position(self.marks, *path)

    def issue(self, path: tuple[Any, ...], field: str, message: str) -> ConfigIssue:
        return ConfigIssue(self.name, *self.at(*path), field, message)


def display_path(path: Path | str) -> str:
    """``path`` relative to the working directory when it is under it (for messages)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def position(marks: Marks, *path: Any) -> tuple[int, int]:
    for n in range(len(path), -1, -1):
        if path[:n] in marks:
            return marks[path[:n]]
    return (1, 1)


def yaml_marks(node: yaml.Node, path: tuple[Any, ...] = (), out: Marks | None = None) -> Marks:
    """(line, column), 1-based, of every value in the YAML node tree by its path."""
    out = {} if out is None else out
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[(*path, key, "__key__")] = (k.start_mark.line + 1, k.start_mark.column + 1)
            yaml_marks(v, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            yaml_marks(v, (*path, i), out)
    return out


def field_path(loc: tuple[Any, ...]) -> str:
    """``("steps", 0, "vars", "x")`` → ``steps[0].vars.x``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_document(text: str, name: str) -> tuple[Document | None, list[ConfigIssue]]:
    """One YAML parse: the node tree gives the marks, the same tree gives the data."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [ConfigIssue(name, line, col, "", f"YAML syntax: {e.problem or e}")]
    finally:
        loader.dispose()
    if not isinstance(data, dict) or node is None:
        return None, [ConfigIssue(name, 1, 1, "", "expected a mapping at the top level")]
    return Document(name, data, yaml_marks(node)), []
