"""Slotted state classes that survive upgrades and pickle small.

The one base every keyed-state dataclass shares (``state/customer.py``): owns how a state
object is restored from an older snapshot and how it is pickled.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


class Upgradable:
    """A field a snapshot written before it existed left unset reads as its default, so a
    restart after an upgrade restores old snapshots. Costs nothing on the normal path:
    Python calls ``__getattr__`` only when the slot is empty."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == name:
                if f.default is not MISSING:
                    value = f.default
                elif f.default_factory is not MISSING:
                    value = f.default_factory()
                else:
                    break
                object.__setattr__(self, name, value)
                return value
        raise AttributeError(name)
