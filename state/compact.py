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
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from functools import cache
from math import copysign
from operator import attrgetter
from typing import Any

# Field values (and the keys of dict/set fields) repeated across customers: one shared
# string each after a restore instead of one copy per customer and snapshot.
INTERNED = frozenset({"trigger_id", "channel", "variant", "arm", "kind", "event_type",
                      "last_entry", "consents", "invalid", "invalid_at", "misses"})

_FACTORY = object()  # marks a default made by a default_factory
_REQUIRED = object()  # marks a field without a default


@cache
def _layout(cls: type) -> tuple[tuple[str, Any, Any, bool, Codec | None], ...]:
    """Per field, in declaration order: (name, kind, default or factory, interned, the
    class's packing of it — ``__packed__``)."""
    packed: dict[str, Codec] = getattr(cls, "__packed__", {})
    out = []
    for f in fields(cls):
        if f.default is not MISSING:
            kind, default = None, f.default
        elif f.default_factory is not MISSING:
            kind, default = _FACTORY, f.default_factory
        else:
            kind, default = _REQUIRED, None
        out.append((f.name, kind, default, f.name in INTERNED, packed.get(f.name)))
    return tuple(out)


@cache
def _state_getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """``cls``'s ``__getstate__`` written out field by field (as ``dataclasses`` writes
    ``__init__``): a snapshot takes one of every customer an epoch touched, on the worker's
    path, and the unrolled form costs about half of a loop over the layout."""
    env: dict[str, Any] = {"copysign": copysign}
    lines = ["def getstate(self):", "    m = 0", "    out = [0]"]
    for i, (name, kind, default, _, codec) in enumerate(_layout(cls)):
        env[f"d{i}"], env[f"t{i}"] = default, type(default)
        put = f"out.append(p{i}(v))" if codec is not None else "out.append(v)"
        if codec is not None:
            env[f"p{i}"] = codec.pack
        lines.append(f"    v = self.{name}")
        if kind is _REQUIRED:
            lines.append(f"    m |= {1 << i}; {put}")
            continue
        if kind is _FACTORY:  # kept unless an empty container of the factory's type
            test = f"v or type(v) is not d{i}"
        else:  # kept unless the same type and value (-0.0 == 0.0, yet prints differently)
            test = f"v is not d{i} and (type(v) is not t{i} or v != d{i}"
            test += (f" or copysign(1.0, v) != copysign(1.0, d{i}))" if type(default) is float
                     else ")")
        lines.append(f"    if {test}:")
        lines.append(f"        m |= {1 << i}; {put}")
    lines += ["    out[0] = m", "    return tuple(out)"]
    exec("\n".join(lines), env)  # our own field names, nothing from input
    return env["getstate"]


def _intern(value: Any) -> Any:
    if type(value) is str:
        return sys.intern(value)
    if type(value) is dict:
        return {sys.intern(k) if type(k) is str else k: v for k, v in value.items()}
    if type(value) is set or type(value) is frozenset:
        return type(value)(sys.intern(k) if type(k) is str else k for k in value)
    return value


_set = object.__setattr__


class _Empty(dict):
    """THE shared empty default of a map field most customers never fill (``EMPTY``): it
    reads as ``{}`` and refuses writes; the field is given a dict of its own first
    (:func:`own`). One object for all instead of a 64-byte dict per customer and field."""

    __slots__ = ()
    __hash__ = object.__hash__  # immutable: a dataclass may take it as a default

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError("the shared empty map is read-only: write to own(obj, field)")

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> str:
        return "EMPTY"  # the module's singleton


EMPTY = _Empty()


def own(obj: Any, name: str) -> dict:
    """``obj.name`` to write into: a fresh dict in place of the shared ``EMPTY``."""
    d = getattr(obj, name)
    if d is EMPTY:
        d = {}
        _set(obj, name, d)
    return d


def own_list(obj: Any, name: str) -> list:
    """``obj.name`` to append to: a list of its own in place of the shared ``()``."""
    v = getattr(obj, name)
    if type(v) is not list:
        v = list(v)
        _set(obj, name, v)
    return v


_MUTABLE_OF = {tuple: list, frozenset: set, _Empty: dict}


def _restored(value: Any, kind: Any, default: Any, interned: bool) -> Any:
    """A snapshot's value as the field holds it now: an empty list or set of a field whose
    default became the shared ``()`` / ``frozenset()`` reads as that default."""
    if (kind is None and not value and type(value) is _MUTABLE_OF.get(type(default))
            and not default):
        return default
    return _intern(value) if interned else value


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
        return _state_getter(type(self))(self)

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
        for name, kind, default, interned, codec in layout:
            if mask & 1:
                value = state[j]
                j += 1
                if codec is not None:
                    value = codec.unpack(value)
                _set(self, name, _restored(value, kind, default, interned))
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
        for name, kind, default, interned, _ in layout:
            if name in items:
                _set(self, name, _restored(items[name], kind, default, interned))
            elif kind is _FACTORY:
                _set(self, name, default())
            elif kind is None:
                _set(self, name, default)
            else:
                raise ValueError(f"{type(self).__name__} snapshot lacks {name}")


# ---- packed fields ---------------------------------------------------------------------------
# A class may pickle some fields in a smaller form (``__packed__``). Only cheap packings
# belong here: a snapshot is taken of every customer an epoch touched, on the worker's path.


class Codec:
    """How a class packs one field (``__packed__ = {"field": Codec(...)}``): ``pack`` gives
    a value of type ``packed`` (or the value itself when it cannot pack it exactly),
    ``unpack`` turns it back and passes anything else (an unpacked value, an older
    snapshot's) through. The field's values must never be of type ``packed`` themselves."""

    def __init__(self, pack: Callable[[Any], Any], unpack: Callable[[Any], Any],
                 packed: type = tuple) -> None:
        self.pack, self._unpack, self.packed = pack, unpack, packed

    def unpack(self, value: Any) -> Any:
        return self._unpack(value) if type(value) is self.packed else value


def _pack_hex(value: Any) -> Any:
    """A lowercase hex id (``cdp_triggers.ids``) as its bytes: half the size."""
    if type(value) is not str or len(value) % 2:
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return value
    return raw if raw.hex() == value else value


HEX = Codec(_pack_hex, bytes.hex, packed=bytes)


def nested(cls: type) -> Codec:
    """An object of ``cls`` (an Upgradable) as its compact state alone, without the class
    reference its own pickle would carry; anything else stays as it is."""

    def pack(value: Any) -> Any:
        return value.__getstate__() if type(value) is cls else value

    def unpack(value: tuple) -> Any:
        obj = object.__new__(cls)
        obj.__setstate__(value)
        return obj

    return Codec(pack, unpack)


def positional(cls: type) -> type:
    """Class decorator for a slotted dataclass moved between processes or kept in state
    (records: :func:`record`): pickle it as its constructor's arguments,
    ``cls(*values)``, instead of the generic dataclass form (which calls ``fields()`` on
    every object) — about half the cost. Pickles of the generic form still load (its
    ``__setstate__`` stays); a field appended later needs a default."""
    get = attrgetter(*(f.name for f in fields(cls)))

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, get(self)

    cls.__reduce__ = __reduce__  # type: ignore[attr-defined]
    return cls


def record(cls: type) -> type:
    """Class decorator for a record (an event, a decision, …): a slotted dataclass compared
    and hashed by value, pickled positionally (:func:`positional`). Records are made once
    and never changed, but not declared frozen: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, 0.99 µs for an ``Event`` against 0.29 µs, paid
    for every input event and every record (4 % of the abandoned-cart flow went to it).
    Pickles of the generic frozen form (field values in order) still load."""
    cls = dataclass(slots=True, unsafe_hash=True)(cls)
    names = [f.name for f in fields(cls)]

    def __setstate__(self: Any, state: Any) -> None:
        for name, value in zip(names, state, strict=False):
            object.__setattr__(self, name, value)

    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]
    return positional(cls)
