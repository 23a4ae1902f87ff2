"""Canonical msgpack: one byte string for one value, and strict decoding.

The rules (docs/FORMAT.md, "Canonical encoding") in short:

* allowed values: nil, true/false, integers in [-2**63, 2**64 - 1], UTF-8 text (str),
  binary (bin), arrays, and maps whose keys are text;
* no floats, no extension types, no duplicate map keys;
* every value uses the shortest msgpack form (what msgpack-python emits);
* map keys are sorted by their UTF-8 bytes, ascending.

Quantities and times are text in one normal form (see :func:`decimal_text` and
:func:`time_text`), so that two encoders following FORMAT.md produce the same bytes.

:func:`decode` refuses any input that does not re-encode to exactly itself.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack

MAX_INT = 2**64 - 1
MIN_INT = -(2**63)
MAX_DEPTH = 32


class EncodingError(ValueError):
    """A value or a byte string that is not canonical."""


def _normalise(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise EncodingError(f"nested deeper than {MAX_DEPTH} levels")
    if value is None or value is True or value is False or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EncodingError("text is not valid Unicode (a lone surrogate cannot be UTF-8)") from e
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise EncodingError(f"integer {value} out of range")
        return value
    if isinstance(value, float):
        raise EncodingError("floats are not allowed; write quantities as decimal text")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [_normalise(v, depth + 1) for v in value]
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise EncodingError(f"map key {k!r} is not text")
            try:
                kb = k.encode("utf-8")
            except UnicodeEncodeError as e:
                raise EncodingError("map key is not valid Unicode") from e
            items.append((kb, k, _normalise(v, depth + 1)))
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    raise EncodingError(f"type {type(value).__name__} cannot be encoded; use text, int, bytes, list or map")


def canonical(value: Any) -> bytes:
    """The canonical msgpack bytes of ``value``."""
    return msgpack.packb(_normalise(value), use_bin_type=True)


def refuse_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"extension type {code} is not allowed")


def _refuse_duplicates(pairs: list[tuple[Any, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise EncodingError("duplicate map key")
    return result


_SCALARS = frozenset({str, bytes, int, bool, type(None)})


def plain_canonical_tree(v: Any, depth: int = 0) -> bool:
    """True when every map of a decoded value has text keys in strictly ascending order,
    nothing is a float or an extension (code point order is UTF-8 byte order), and no value sits
    deeper than MAX_DEPTH (a non-empty container's items are one level below it)."""
    t = type(v)
    if depth > MAX_DEPTH or (depth == MAX_DEPTH and (t is dict or t is list) and v):
        return False
    if t is dict:
        keys = list(v)
        for k in keys:
            if type(k) is not str:
                return False
        if keys != sorted(keys):
            return False
        for x in v.values():
            if type(x) not in _SCALARS and not plain_canonical_tree(x, depth + 1):
                return False
        return True
    if t is list:
        for x in v:
            if type(x) not in _SCALARS and not plain_canonical_tree(x, depth + 1):
                return False
        return True
    return t in _SCALARS


def decode(data: bytes) -> Any:
    """Canonical bytes fast (unpacked in C without Python hooks, one walk, re-packed once;
    a duplicate key or a longer form cannot re-pack to the same bytes); anything else goes to
    the strict decoder, which names the problem."""
    if isinstance(data, bytes):
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=refuse_ext)
            if plain_canonical_tree(value) and msgpack.packb(value, use_bin_type=True) == data:
                return value
        except Exception:  # noqa: BLE001 - the strict path decides and explains
            pass
    return _decode_strict(data)


def _decode_strict(data: bytes) -> Any:
    """Decode canonical bytes; refuse anything that is not canonical.

    The rules that re-encoding cannot see are checked while decoding (in the unpacker's hooks,
    container by container): map keys are text, strictly ascending by UTF-8 bytes (so no
    duplicates), no floats, nesting within MAX_DEPTH. The value is then packed again as is (in
    the order it was read) and must give exactly the input: that refuses every non-shortest
    form. This is the same judgement as ``canonical(decode(x)) == x``, without walking the value
    in Python a second time.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError("expected bytes")
    data = bytes(data)
    heights: dict[int, int] = {}  # id(container) -> nesting height (empty or scalars only: 0)

    def height_of(children: Any) -> int:
        h = 0
        for v in children:
            t = type(v)
            if t is list or t is dict:
                c = heights[id(v)] + 1
                if c > h:
                    h = c
            elif t is float:
                raise EncodingError("not canonical: floats are not allowed; write quantities as decimal text")
            elif t is msgpack.Timestamp:
                raise EncodingError("extension type -1 (timestamp) is not allowed")
            elif h == 0:
                h = 1
        if h > MAX_DEPTH:
            raise EncodingError(f"not canonical: nested deeper than {MAX_DEPTH} levels")
        return h

    def list_hook(items: list) -> list:
        heights[id(items)] = height_of(items)
        return items

    def pairs_hook(pairs: list[tuple[Any, Any]]) -> dict:
        h = height_of(v for _, v in pairs)  # floats first: the most useful message
        # UTF-8 preserves code point order, so comparing the decoded text compares the bytes
        previous = None
        for k, _ in pairs:
            if type(k) is not str:
                raise EncodingError("not canonical: map key is not text")
            if previous is not None and k <= previous:
                raise EncodingError("not canonical: duplicate map key" if k == previous
                                    else "not canonical: map keys are not sorted by their UTF-8 bytes")
            previous = k
        result = dict(pairs)
        heights[id(result)] = h
        return result

    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=refuse_ext,
            object_pairs_hook=pairs_hook,
            list_hook=list_hook,
        )
    except EncodingError:
        raise
    except msgpack.ExtraData as e:
        raise EncodingError("trailing bytes after the value") from e
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise EncodingError(f"malformed msgpack: {e}") from e
    if type(value) is float:
        raise EncodingError("not canonical: floats are not allowed; write quantities as decimal text")
    if type(value) is msgpack.Timestamp:
        raise EncodingError("extension type -1 (timestamp) is not allowed")
    if msgpack.packb(value, use_bin_type=True) != data:
        raise EncodingError("not canonical: the bytes do not re-encode to themselves")
    return value


# --- normal forms for text-encoded values -------------------------------------------------

_DECIMAL_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")


def decimal_text(value: Decimal | int | str, places: int | None = None) -> str:
    """The normal form of a decimal: no exponent, no leading zeros, no trailing fractional
    zeros, no '+', no '-0'. ``places`` caps the number of fractional digits (refused, never
    rounded)."""
    if isinstance(value, float) or isinstance(value, bool):
        raise EncodingError("floats are not allowed; write quantities as decimal text")
    try:
        d = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError) as e:
        raise EncodingError(f"{value!r} is not a decimal number") from e
    if not d.is_finite():
        raise EncodingError(f"{value!r} is not a finite number")
    if d == 0:
        d = Decimal(0)
    sign, digits, exponent = d.normalize().as_tuple()
    if places is not None and exponent < 0 and -exponent > places:
        raise EncodingError(f"{value!r} has more than {places} decimals")
    text = format(d.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def is_decimal_text(text: str) -> bool:
    return isinstance(text, str) and text != "-0" and bool(_DECIMAL_RE.fullmatch(text))


def parse_decimal(text: str, places: int | None = None) -> Decimal:
    """Parse a decimal that must already be in normal form."""
    if not is_decimal_text(text):
        raise EncodingError(f"{text!r} is not a decimal in normal form (e.g. '12.5', '0', '-3')")
    if places is not None and "." in text and len(text.split(".")[1]) > places:
        raise EncodingError(f"{text!r} has more than {places} decimals")
    return Decimal(text)


_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,6})?Z")


def time_text(value: datetime) -> str:
    """RFC 3339 UTC in normal form: ``YYYY-MM-DDTHH:MM:SS[.f]Z``, the fraction present only
    when non-zero, without trailing zeros, at most 6 digits."""
    if value.tzinfo is None:
        raise EncodingError("times must be timezone-aware")
    value = value.astimezone(timezone.utc)
    if value.year < 1000:
        raise EncodingError("times before the year 1000 have no normal form here")
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += ("." + f"{value.microsecond:06d}").rstrip("0")
    return text + "Z"


def parse_time(text: str) -> datetime:
    """Parse a time that must already be in normal form."""
    if not isinstance(text, str):
        raise EncodingError(f"{text!r} is not an RFC 3339 UTC time in normal form (e.g. '2024-03-01T08:00:00Z')")
    return _parse_time(text)


@functools.lru_cache(maxsize=4096)
def _parse_time(text: str) -> datetime:
    if not _TIME_RE.fullmatch(text):
        raise EncodingError(f"{text!r} is not an RFC 3339 UTC time in normal form (e.g. '2024-03-01T08:00:00Z')")
    try:
        value = datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                         int(text[17:19]), int(text[20:-1].ljust(6, "0")) if len(text) > 20 else 0,
                         tzinfo=timezone.utc)
    except ValueError as e:
        raise EncodingError(f"{text!r} is not a valid time: {e}") from e
    if time_text(value) != text:
        raise EncodingError(f"{text!r} is not in normal form (expected {time_text(value)!r})")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@functools.lru_cache(maxsize=1024)
def micros_to_time_text(micros: int) -> str:
    """The normal-form text of a time given in microseconds since the Unix epoch."""
    return time_text(_EPOCH + timedelta(microseconds=micros))


def time_to_micros(value: datetime) -> int:
    value = value.astimezone(timezone.utc)
    return int(value.replace(microsecond=0).timestamp()) * 1_000_000 + value.microsecond
