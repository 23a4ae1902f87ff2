"""The projector's rule state as canonical msgpack: plain data that anyone can read.

A snapshot is read back by building plain values (and the few rule-state records listed in
``_RECORDS``) from msgpack: reading one never runs code named by the data, unlike a pickle
(DESIGN.md "Reads never write": nothing is ever unpickled from the database).

The form (one canonical msgpack map, ``reledger.ledger.encoding.canonical``)::

    {"format": "reledger-projector-state/1", "rules": <fingerprint of the rule code>,
     "state": {attribute name: value, ...}}

where a value is text, an integer, bytes, nil or a boolean as it is, and every container or
record is a two-item array ``[tag, payload]``:

``["l", [v...]]`` list, ``["t", [v...]]`` tuple, ``["s", [v...]]`` set, ``["f", [v...]]``
frozenset, ``["d", [[k, v]...]]`` map (keys of any of these kinds, in the map's order),
``["D", "1.25"]`` Decimal (as its text), ``["LotInfo", [fields...]]``,
``["Designation", [fields...]]``, ``["Ref", [fields...]]`` (the dataclasses of
``projections/model.py``, by their fields in declaration order), and likewise ``HeapQueue``,
``ChainHashes``, ``Timelines``, ``Lists`` (projections/queues.py).

The conversion walks the Projector's attributes generically, so a rule that adds state of
these kinds needs nothing here; a new kind of object is refused when the snapshot is made
(:class:`SnapshotError`, the snapshot is skipped) until it is added to ``_RECORDS``.

``rules`` fingerprints the source of the rule code (model.py, reference.py): a snapshot made
by other rules is not used (the state is rolled forward from the start instead), so a change
of the rules never mixes states.
"""

from __future__ import annotations

import dataclasses
import hashlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgpack

from reledger.ledger import encoding

from . import model, reference
from .model import Designation, LotInfo, Projector, Ref
from .queues import ChainHashes, HeapQueue, Lists, Timelines

FORMAT = "reledger-projector-state/1"
_RECORDS: dict[str, type] = {"LotInfo": LotInfo, "Designation": Designation, "Ref": Ref,
                             "HeapQueue": HeapQueue, "ChainHashes": ChainHashes, "Timelines": Timelines,
                             "Lists": Lists}
_FIELDS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in _RECORDS.items()}
_NAME_OF = {cls: name for name, cls in _RECORDS.items()}


class SnapshotError(ValueError):
    """The state cannot be written as plain data, or bytes are not a snapshot of this version."""


def _rules_fingerprint() -> str:
    h = hashlib.sha256()
    for mod in (model, reference):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:32]


RULES = _rules_fingerprint()
_SCALARS = (str, bytes, int, bool, type(None))


def _plain(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bytes or v is None or t is bool:
        return v
    if t is list:
        return ["l", [_plain(x) for x in v]]
    if t is tuple:
        return ["t", [_plain(x) for x in v]]
    if t is dict:
        return ["d", [[_plain(k), _plain(x)] for k, x in v.items()]]
    if t is set:
        return ["s", [_plain(x) for x in v]]
    if t is frozenset:
        return ["f", [_plain(x) for x in v]]
    if t is Decimal:
        return ["D", str(v)]
    name = _NAME_OF.get(t)
    if name is not None:
        return [name, [_plain(getattr(v, f)) for f in _FIELDS[name]]]
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise SnapshotError(f"the rule state holds a {t.__name__}, which has no plain-data form "
                        "(add it to projections/snapshot.py)")


_LEAF = frozenset(_SCALARS)


def _value(v: Any) -> Any:
    """The value of one plain-data item (scalars inline: most of a state is leaves)."""
    if type(v) is not list:
        if type(v) in _LEAF:
            return v
        raise SnapshotError(f"a snapshot holds a value of type {type(v).__name__}")
    if len(v) != 2 or type(v[0]) is not str:
        raise SnapshotError("a snapshot value is not [tag, payload]")
    tag, payload = v
    if tag == "D":
        if type(payload) is not str:
            raise SnapshotError("a decimal in a snapshot is not text")
        try:
            return Decimal(payload)
        except InvalidOperation as e:
            raise SnapshotError(f"bad decimal {payload!r} in a snapshot") from e
    if type(payload) is not list:
        raise SnapshotError(f"the payload of {tag!r} is not an array")
    leaf = _LEAF
    if tag == "t":
        return tuple([x if type(x) in leaf else _value(x) for x in payload])
    if tag == "l":
        return [x if type(x) in leaf else _value(x) for x in payload]
    if tag == "d":
        out = {}
        for pair in payload:
            if type(pair) is not list or len(pair) != 2:
                raise SnapshotError("a map entry in a snapshot is not [key, value]")
            k, x = pair
            out[k if type(k) in leaf else _value(k)] = x if type(x) in leaf else _value(x)
        return out
    if tag == "s":
        return {x if type(x) in leaf else _value(x) for x in payload}
    if tag == "f":
        return frozenset([x if type(x) in leaf else _value(x) for x in payload])
    cls = _RECORDS.get(tag)
    if cls is None:
        raise SnapshotError(f"unknown tag {tag!r} in a snapshot")
    fields = _FIELDS[tag]
    if len(payload) != len(fields):
        raise SnapshotError(f"{tag} in a snapshot has {len(payload)} fields, not {len(fields)}")
    return cls(**{f: _value(x) for f, x in zip(fields, payload)})


def to_plain(proj: Projector) -> dict[str, Any]:
    """The projector's state as plain data (canonical-msgpack-ready)."""
    return {"format": FORMAT, "rules": RULES,
            "state": {k: _plain(v) for k, v in sorted(vars(proj).items())}}


def from_plain(data: Any, check_only: bool = False) -> Projector | None:
    """A Projector from :func:`to_plain`'s form; SnapshotError for anything else (including
    a snapshot made by other rules). ``check_only``: the format and rules only."""
    if type(data) is not dict or data.get("format") != FORMAT:
        raise SnapshotError("not a projector state of this format")
    if data.get("rules") != RULES:
        raise SnapshotError("a projector state made by other rules")
    if check_only:
        return None
    state = data.get("state")
    if type(state) is not dict:
        raise SnapshotError("a projector state without its attributes")
    proj = Projector()
    known = set(vars(proj))
    values = {}
    for k, v in state.items():
        if k not in known and not k.startswith("_"):
            raise SnapshotError(f"a projector state with an unknown attribute {k!r}")
        values[k] = _value(v)
    if not known <= set(values) or type(values.get("position")) is not int:
        raise SnapshotError("a projector state that lacks attributes")
    vars(proj).update(values)
    return proj


def dumps(proj: Projector) -> bytes:
    """Canonical msgpack bytes of the projector's state: exactly
    ``encoding.canonical(to_plain(proj))`` (the tests hold them equal), written piece by piece
    as the state is walked, so that no plain copy of the whole state is ever held (a snapshot
    of a large log costs its bytes, not two more copies of the state)."""
    # autoreset=False: every pack appends to the packer's one buffer (no object per piece)
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    try:
        packer.pack_map_header(3)
        for k, v in (("format", FORMAT), ("rules", RULES)):
            packer.pack(k)
            packer.pack(v)
        packer.pack("state")
        attrs = sorted(vars(proj).items(), key=lambda kv: kv[0].encode("utf-8"))
        packer.pack_map_header(len(attrs))
        for k, v in attrs:
            packer.pack(k)
            _pack(v, packer)
    except (OverflowError, ValueError, TypeError) as e:
        raise SnapshotError(f"the rule state cannot be encoded: {e}") from e
    return packer.bytes()


_TAG = {list: "l", tuple: "t", set: "s", frozenset: "f"}


def _pack(v: Any, packer: msgpack.Packer) -> None:
    """``_plain(v)`` packed as it is made (into the packer's buffer).

    Most of the rule state is short lists and tuples of scalars (refs, timeline events, a lot's
    contributions): those go to msgpack in one call (``(tag, v)`` packs as ``[tag, [v...]]``:
    the same bytes as packing its pieces one by one, several times cheaper). msgpack refuses
    what the explicit checks of the scalar case refuse (an integer outside
    [MIN_INT, MAX_INT]: OverflowError; a lone surrogate: UnicodeEncodeError)."""
    t = type(v)
    if t is str or t is int or t is bytes or v is None or t is bool:
        if t is int and not encoding.MIN_INT <= v <= encoding.MAX_INT:
            raise SnapshotError(f"integer {v} out of range")
        if t is str:
            v.encode("utf-8")  # a lone surrogate is refused (UnicodeEncodeError is a ValueError)
        packer.pack(v)
        return
    tag = _TAG.get(t)
    if tag is not None:
        if _LEAF.issuperset(map(type, v)):  # scalars only: one call (set/frozenset: the same order)
            packer.pack((tag, v if t is list or t is tuple else list(v)))
            return
        packer.pack_array_header(2)
        packer.pack(tag)
        packer.pack_array_header(len(v))
        for x in v:
            _pack(x, packer)
        return
    if t is dict:
        packer.pack_array_header(2)
        packer.pack("d")
        packer.pack_array_header(len(v))
        for k, x in v.items():
            packer.pack_array_header(2)
            _pack(k, packer)
            _pack(x, packer)
        return
    if t is Decimal:
        packer.pack(("D", str(v)))
        return
    name = _NAME_OF.get(t)
    if name is not None:
        fields = _FIELDS[name]
        packer.pack_array_header(2)
        packer.pack(name)
        packer.pack_array_header(len(fields))
        for f in fields:
            _pack(getattr(v, f), packer)
        return
    if isinstance(v, (bytearray, memoryview)):
        packer.pack(bytes(v))
        return
    raise SnapshotError(f"the rule state holds a {t.__name__}, which has no plain-data form "
                        "(add it to projections/snapshot.py)")


def loads(data: bytes) -> Projector:
    """The projector a snapshot holds (plain data only: nothing named by the bytes runs). The
    state is read one attribute at a time (the plain form of one attribute is held while it is
    converted, never that of the whole state)."""
    try:
        up = msgpack.Unpacker(None, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
                              max_buffer_size=max(len(data), 1))
        up.feed(bytes(data))
        if up.read_map_header() != 3:
            raise SnapshotError("not a projector state of this format")
        head: dict[str, Any] = {}
        for _ in range(2):
            k = up.unpack()
            head[k] = up.unpack()
        if up.unpack() != "state":
            raise SnapshotError("not a projector state of this format")
        from_plain({**head, "state": {"position": 0}}, check_only=True)
        proj = Projector()
        known = set(vars(proj))
        seen = set()
        for _ in range(up.read_map_header()):
            k = up.unpack()
            if type(k) is not str or (k not in known and not k.startswith("_")):
                raise SnapshotError(f"a projector state with an unknown attribute {k!r}")
            setattr(proj, k, _value(up.unpack()))
            seen.add(k)
        try:
            up.unpack()
        except msgpack.OutOfData:
            pass
        else:
            raise SnapshotError("bytes after the projector state")
    except SnapshotError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed bytes
        raise SnapshotError(f"not a readable projector state: {e}") from e
    if not known <= seen or type(proj.position) is not int:
        raise SnapshotError("a projector state that lacks attributes")
    return proj


def pack_value(v: Any, packer: msgpack.Packer) -> None:
    """One value in its plain-data form, packed into ``packer`` (projections/state.py's rows)."""
    packer.pack(packable(v))


def packable(v: Any) -> Any:
    """What msgpack packs into ``_plain(v)``'s bytes, made with as few Python steps as
    possible: tuples stand for the ``[tag, payload]`` arrays (msgpack packs a tuple as an
    array), and a list, tuple or set of scalars is used as it is (no copy, no step per item).
    The scalars are not checked here: msgpack refuses what :func:`_pack` refuses (an integer
    outside [MIN_INT, MAX_INT]: OverflowError; a lone surrogate: UnicodeEncodeError)."""
    t = type(v)
    if t is str or t is int or t is bytes or v is None or t is bool:
        return v
    tag = _TAG.get(t)
    if tag is not None:
        if _LEAF.issuperset(map(type, v)):
            return (tag, v if t is list or t is tuple else list(v))
        return (tag, [packable(x) for x in v])
    if t is dict:
        return ("d", [(packable(k), packable(x)) for k, x in v.items()])
    if t is Decimal:
        return ("D", str(v))
    name = _NAME_OF.get(t)
    if name is not None:
        return (name, [packable(getattr(v, f)) for f in _FIELDS[name]])
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    raise SnapshotError(f"the rule state holds a {t.__name__}, which has no plain-data form "
                        "(add it to projections/snapshot.py)")


def read_value(data: bytes) -> Any:
    """A value back from :func:`pack_value`'s bytes: plain data only (nothing in it runs);
    SnapshotError for anything else."""
    try:
        return _value(msgpack.unpackb(bytes(data), raw=False, use_list=True, ext_hook=_refuse_ext))
    except SnapshotError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed bytes
        raise SnapshotError(f"not a readable value: {e}") from e


def _refuse_ext(code: int, data: bytes) -> Any:
    raise SnapshotError(f"extension type {code} in a snapshot")


def copy(proj: Projector) -> Projector:
    """An independent copy of the rule state (through its plain form)."""
    return from_plain({"format": FORMAT, "rules": RULES,
                       "state": {k: _plain(v) for k, v in vars(proj).items()}})
