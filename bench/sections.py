"""One way to keep a benchmark's section in docs/benchmarks.md: between its own markers,
replaced on a rerun (the rest of the file untouched), appended when missing."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, start: str, end: str, section: str) -> None:
    """Write ``section`` (which begins with ``start`` and ends with ``end``) into ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = section.rstrip("\n") + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
