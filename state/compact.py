"""Slotted state classes that survive upgrades and pickle small.

The one base every keyed-state dataclass shares (``state/customer.py``): owns how a state
object is restored from an older snapshot and how it is pickled.

Pickled form: ``(mask, value, …)`` — bit ``i`` of ``mask`` set when field ``i`` (declaration
order) is stored, only fields that differ from their default are, in order. No field names,
so a state pickles to a fraction of the default ``{name: value}`` form (Bytewax snapshots
and dormant customers are these pickles). Positions are the layout: fields may only be
appended (``tests/test_compact.py`` pins the order); a field a snapshot does not hold reads
as its default, and snapshots of the former forms still restore: ``(None, {name: value})``
of a slotted class, ``[value, …]`` of a frozen one.

A frozen dataclass opts in by naming these methods in its body, since
``@dataclass(frozen=True, slots=True)`` installs its own otherwise::

    __getstate__ = Upgradable.__getstate__
    __setstate__ = Upgradable.__setstate__
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from functools import cache
from math import copysign
from typing import Any

# Field values (and the keys of dict/set fields) repeated across customers: one shared
# string each after a restore instead of one copy per customer and snapshot.
INTERNED = frozenset({"trigger_id", "channel", "variant", "arm", "kind", "event_type",
                      "last_entry", "consents", "invalid", "invalid_at", "misses"})

_FACTORY = object()  # marks a default made by a default_factory
_REQUIRED = object()  # marks a field without a default


@cache
def _layout(cls: type) -> tuple[tuple[str, Any, Any, bool], ...]:
    """Per field, in declaration order: (name, kind, default or factory, interned)."""
    out = []
    for f in fields(cls):
        if f.default is not MISSING:
            kind, default = None, f.default
        elif f.default_factory is not MISSING:
            kind, default = _FACTORY, f.default_factory
        else:
            kind, default = _REQUIRED, None
        out.append((f.name, kind, default, f.name in INTERNED))
    return tuple(out)


def _intern(value: Any) -> Any:
    if type(value) is str:
        return sys.intern(value)
    if type(value) is dict:
        return {sys.intern(k) if type(k) is str else k: v for k, v in value.items()}
    if type(value) is set:
        return {sys.intern(k) if type(k) is str else k for k in value}
    return value


_set = object.__setattr__


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

    def __getstate__(self) -> tuple[Any, ...]:
        """``(mask, values of the non-default fields…)``: see the module docstring. A
        default is one of the same type and value (``0`` is not ``0.0``, ``False`` not
        ``0``, ``-0.0`` not ``0.0``), and an empty container of the factory's type: restoring
        is exact."""
        mask, bit, values = 0, 1, [0]
        for name, kind, default, _ in _layout(type(self)):
            value = getattr(self, name)
            if kind is _FACTORY:
                keep = value or type(value) is not default
            elif kind is _REQUIRED:
                keep = True
            else:  # -0.0 == 0.0, yet it prints differently: kept
                keep = (type(value) is not type(default) or value != default
                        or (type(value) is float
                            and copysign(1.0, value) != copysign(1.0, default)))
            if keep:
                mask |= bit
                values.append(value)
            bit <<= 1
        values[0] = mask
        return tuple(values)

    def __setstate__(self, state: Any) -> None:
        """Restore the compact form, or the former ``(None | dict, {slot: value})`` and
        ``{name: value}`` forms; fields the snapshot lacks get their defaults."""
        layout = _layout(type(self))
        if type(state) is not tuple or not state or type(state[0]) is not int:
            return self._restore_named(layout, state)
        mask, j = state[0], 1
        if mask >> len(layout):
            raise ValueError(f"{type(self).__name__} snapshot holds {mask.bit_length()} "
                             f"fields, this version knows {len(layout)}: written by a newer "
                             "version")
        for name, kind, default, interned in layout:
            if mask & 1:
                value = state[j]
                j += 1
                _set(self, name, _intern(value) if interned else value)
            elif kind is _FACTORY:
                _set(self, name, default())
            elif kind is None:
                _set(self, name, default)
            else:
                raise ValueError(f"{type(self).__name__} snapshot lacks {name}")
            mask >>= 1
        return None

    def _restore_named(self, layout: tuple, state: Any) -> None:
        """The default pickle of a slotted (or a plain) object of an older layout, or the
        ``[value, …]`` of a frozen slotted dataclass (the fields it had, in order)."""
        items: dict[str, Any] = {}
        if type(state) is list:
            if len(state) > len(layout):
                raise ValueError(f"{type(self).__name__} snapshot holds {len(state)} fields, "
                                 f"this version knows {len(layout)}: written by a newer "
                                 "version")
            items = {name: value for (name, *_), value in zip(layout, state, strict=False)}
        for part in (state if type(state) is tuple else (state,) if type(state) is dict
                     else ()):
            if part:
                items.update(part)
        for name, kind, default, interned in layout:
            if name in items:
                value = items[name]
                _set(self, name, _intern(value) if interned else value)
            elif kind is _FACTORY:
                _set(self, name, default())
            elif kind is None:
                _set(self, name, default)
            else:
                raise ValueError(f"{type(self).__name__} snapshot lacks {name}")
