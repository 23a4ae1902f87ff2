"""The entry catalogue: every entry type's body schema, in one place.

Each entry type of DOMAIN.md ("Entry catalogue"), plus the enforcement types, is an
:class:`EntrySchema`: a map of named fields, each required or optional, each with a type, a unit
and its limits. The same schema

* checks a body (:meth:`EntrySchema.check`), raising :class:`CommandError` with the field's path
  (``body.lines[0].kg``) and why;
* describes itself as JSON Schema (:meth:`EntrySchema.json_schema`, for the OpenAPI description);
* is written out as markdown by :mod:`reledger.commands.catalogue_doc` (docs/CATALOGUE.md:
  ``python -m reledger.commands.catalogue_doc > docs/CATALOGUE.md``).

Value conventions (docs/FORMAT.md): quantities are decimal *text* in the normal form of
:func:`reledger.ledger.encoding.decimal_text` (``"12.5"``, never ``12.5`` nor ``"12.50"``); times are
RFC 3339 UTC text in the normal form of :func:`reledger.ledger.encoding.time_text`; party ids match
:data:`reledger.ledger.entry.CHAIN_RE`; binary (msgpack bin) only for public keys and digests (32 bytes).
Floats never appear. Absurd quantities (above the field's maximum) and negative ones are refused.

Reference data (products, REO factors, recovery bands) is versioned in one place,
:data:`reledger.projections.reference.REFERENCE_DATA` (re-exported here), shared with the rule engine.
Error classes live here too (the lowest module of the command API); ``reledger.commands.api`` re-exports
them.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

from reledger.ledger.encoding import EncodingError, parse_decimal, parse_time
from reledger.ledger.entry import CHAIN_RE
from reledger.ledger.keys import KEY_ID_RE, PURPOSES, key_id as compute_key_id
from reledger.projections.reference import (CALENDAR_PARAMETERS, INT_PARAMETERS, REFERENCE_DATA, RULE_PARAMETERS,
                                              calendar_dates, element_of, reo_factor_table)

# --- errors -------------------------------------------------------------------------------

#: Every error code of the command API and its HTTP status (RFC 9457 problem ``status``).
ERROR_CODES: dict[str, tuple[int, str]] = {
    # 400: the bytes or the body are wrong
    "malformed": (400, "the envelope or entry bytes are not a canonical signed entry"),
    "unknown_type": (400, "the entry type is not in the catalogue"),
    "missing_field": (400, "a required field is missing"),
    "unknown_field": (400, "a field that the type does not have"),
    "wrong_type": (400, "a value of the wrong type (text, integer, binary, list, map; floats never)"),
    "bad_value": (400, "a value that is not in its normal form (decimal, time, id, pattern)"),
    "out_of_range": (400, "a value below its minimum (e.g. negative) or absurdly large"),
    "bad_enum": (400, "a value that is not one of the allowed values"),
    "inconsistent": (400, "fields that contradict each other (e.g. dry mass above wet mass)"),
    "body": (400, "a registry body the key registry refuses"),
    # 403: who signs
    "signature": (403, "the signature is not valid for the named key"),
    "unregistered": (403, "the chain is not a registered party"),
    "unknown_key": (403, "the key is not authorized (yet)"),
    "foreign_key": (403, "the key belongs to another party than the chain"),
    "revoked_key": (403, "the key was revoked"),
    "expired_key": (403, "the key is outside its validity"),
    "forbidden": (403, "the party's roles never allow this entry type"),
    "genesis": (403, "a bad genesis entry"),
    # 404: what is cited does not exist (for this party)
    "unknown_reference": (404, "a cited shipment (to this party), batch, party or entry does not exist"),
    "not_found": (404, "no such entry or chain (reads)"),
    # 409: the ledger already holds something else
    "conflict": (409, "seq or prev does not continue the chain (a fork attempt or a stale head)"),
    "command_conflict": (409, "the command id was already used for other bytes"),
    "duplicate": (409, "an id (lot, transfer, batch, party, key) that is already recorded"),
    "already_received": (409, "the shipment was already received"),
    "reference_mismatch": (409, "a cited entry exists but has another hash or type"),
}


class CommandError(ValueError):
    """A refused command; nothing of its group was written.

    ``code`` (see :data:`ERROR_CODES`), ``field`` (``body.lines[0].kg``, ``seq``...),
    ``message`` (the full text, starting with the field), ``position`` (index of the entry in
    its group), ``status`` (HTTP status hint), and for ledger refusals ``chain``/``seq``;
    ``group`` is the index of the group in :meth:`CommandAPI.submit_groups`.
    """

    status = 400

    def __init__(self, code: str, message: str, *, field: str | None = None, position: int | None = None,
                 chain: str | None = None, seq: int | None = None, group: int | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.position, self.chain, self.seq, self.group = position, chain, seq, group
        self.status = ERROR_CODES.get(code, (type(self).status, ""))[0]

    @classmethod
    def make(cls, code: str, message: str, **kw: Any) -> "CommandError":
        """The error of the right subclass for ``code``."""
        status = ERROR_CODES.get(code, (400, ""))[0]
        klass = {400: InvalidCommand, 403: Forbidden, 404: UnknownReference, 409: Conflict}.get(status, cls)
        return klass(code, message, **kw)

    def at(self, position: int | None = None, chain: str | None = None, seq: int | None = None) -> "CommandError":
        if self.position is None:
            self.position = position
        self.chain = self.chain or chain
        self.seq = self.seq if self.seq is not None else seq
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "status": self.status, "message": self.message, "field": self.field,
                "position": self.position, "chain": self.chain, "seq": self.seq, "group": self.group}


class InvalidCommand(CommandError):
    """400: malformed bytes or an invalid body."""

    status = 400


class Forbidden(CommandError):
    """403: signature, key or role."""

    status = 403


class UnknownReference(CommandError):
    """404: the cited thing does not exist (for this party)."""

    status = 404


class Conflict(CommandError):
    """409: the ledger already holds something else."""

    status = 409


def fail(code: str, field: str, why: str) -> CommandError:
    return CommandError.make(code, f"{field}: {why}", field=field)


# --- reference data --------------------------------------------------------------------------

ROLES = ("MINE", "SEPARATION", "SMELTER", "RECYCLER", "EXPORTER", "MAGNET", "GROUP", "REGULATOR", "AUDITOR")
ORE_TYPES = ("ROCK", "IONIC")
IMPORT_ORE_TYPES = ("ROCK", "IONIC", "MONAZITE")
QUOTA_CATEGORIES = ("MINING_ROCK", "MINING_IONIC", "SEPARATION")
QUOTA_BASES = ("OUTPUT", "INPUT")
ELEMENTS = ("La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Y", "Sc")
IMPORT_FORMS = ("ORE", "CONCENTRATE", "MONAZITE", "MIXED_CARBONATE", "MIXED_OXIDE", "SEPARATED_OXIDE",
                "METAL", "ALLOY", "OTHER")
SCRAP_TYPES = ("MAGNET_SCRAP", "MAGNET_SLUDGE", "POLISHING_POWDER", "PHOSPHOR", "CATALYST", "BATTERY",
               "OTHER")
VIOLATION_RULES = ("DESIGNATION", "QUOTA", "STOCK", "MASS_BALANCE", "FLOW", "REPORTING", "TIMELINESS",
                   "RECYCLER_FEED", "OTHER")
INSPECTION_RESULTS = ("NO_ISSUES", "ISSUES_FOUND", "FOLLOW_UP")
CORRECTION_REASONS = ("INCORRECT_DATA", "DID_NOT_OCCUR", "DUPLICATE", "OTHER")
MEMBERSHIP_ACTIONS = ("JOINED", "LEFT")


# Reference data (products, REO factors, recovery bands) is versioned in one place,
# projections/reference.py, shared with the rule engine (projections may not import commands).
PRODUCTS = tuple(REFERENCE_DATA["products"])
PRODUCT_CLASSES = ("MINERAL", "SEPARATED", "METAL", "ALLOY")

# Absurdity limits (a single entry above these is an error of input, not a fact).
MAX_KG = Decimal(10) ** 9           # 1 Mt in one lot / line
MAX_T_REO = Decimal(10) ** 7        # national totals are ~3 * 10^5 t
MAX_CNY = Decimal(10) ** 11
MIN_YEAR, MAX_YEAR = 1990, 2099
MAX_TEXT = 200
MAX_LIST = 1000

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- field types ---------------------------------------------------------------------------

class Field:
    """One field's type. ``check`` returns the parsed value (Decimal, datetime, ...) or raises."""

    kind = "value"

    def __init__(self, doc: str = "", *, optional: bool = False):
        self.doc, self.optional = doc, optional

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        """Type and limits, for the markdown table."""
        raise NotImplementedError

    def children(self) -> Iterable[tuple[str, "Field"]]:
        return ()

    def _js(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.doc:
            schema["description"] = self.doc
        return schema


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if value is None:
        return "nil"
    return type(value).__name__


def _expect(value: Any, ok: bool, path: str, want: str) -> None:
    if ok:
        return
    if isinstance(value, float):
        raise fail("wrong_type", path, "floats are not allowed; write quantities as decimal text "
                                       f"(e.g. '12.5'), not {value!r}")
    raise fail("wrong_type", path, f"must be {want}, not {_kind_of(value)}")


class Text(Field):
    kind = "text"

    def __init__(self, doc: str = "", *, optional: bool = False, max_len: int = MAX_TEXT,
                 pattern: re.Pattern | None = None, example: str = ""):
        super().__init__(doc, optional=optional)
        self.max_len, self.pattern, self.example = max_len, pattern, example

    def check(self, value: Any, path: str) -> str:
        _expect(value, isinstance(value, str), path, "text")
        if not value:
            raise fail("bad_value", path, "must not be empty")
        if len(value) > self.max_len:
            raise fail("out_of_range", path, f"must be at most {self.max_len} characters, not {len(value)}")
        if _CONTROL.search(value):
            raise fail("bad_value", path, "must not contain control characters")
        if value != value.strip():
            raise fail("bad_value", path, "must not begin or end with white space")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise fail("bad_value", path, f"{value[:70]!r} is not {self.describe_pattern()}")
        return value

    def describe_pattern(self) -> str:
        return f"like {self.example!r}" if self.example else f"matching {self.pattern.pattern}"  # type: ignore

    def json_schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": self.max_len}
        if self.pattern is not None:
            # JSON Schema patterns are ECMA-262: Python's end-of-text anchor \Z becomes $
            s["pattern"] = self.pattern.pattern.replace("\\Z", "$")
        return self._js(s)

    def describe(self) -> str:
        if self.pattern is not None:
            return f"text {self.describe_pattern()}"
        return f"text, 1-{self.max_len} characters"


class PartyId(Text):
    kind = "party"

    def __init__(self, doc: str = "", *, optional: bool = False):
        super().__init__(doc, optional=optional, max_len=64, pattern=CHAIN_RE, example="91150200MA0Q1X2Y3Z")

    def describe(self) -> str:
        return "party id (unified social credit code or authority id: 2-64 of A-Z 0-9 . _ -)"


class Ident(Text):
    """A business identifier chosen by the party (lot, transfer, batch): 1-64 of A-Z a-z 0-9 . _ : / -."""

    kind = "id"

    def __init__(self, doc: str = "", *, optional: bool = False):
        super().__init__(doc, optional=optional, max_len=64, pattern=ID_RE, example="L-2024-0001")

    def describe(self) -> str:
        return "id: 1-64 of A-Z a-z 0-9 . _ : / - (first a letter or digit)"


class Enum(Field):
    kind = "enum"

    def __init__(self, values: Iterable[str], doc: str = "", *, optional: bool = False, name: str = "",
                 default: str | None = None):
        super().__init__(doc, optional=optional)
        self.values, self.name, self.default = tuple(values), name, default
        self._set = frozenset(self.values)

    def check(self, value: Any, path: str) -> str:
        _expect(value, isinstance(value, str), path, "text")
        if value not in self._set:
            allowed = ", ".join(self.values) if len(self.values) <= 20 else (
                f"the {self.name or 'list'} of reference data {REFERENCE_DATA['version']}")
            raise fail("bad_enum", path, f"{value[:70]!r} is not one of {allowed}")
        return value

    def json_schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "string", "enum": list(self.values)}
        if self.default is not None:
            s["default"] = self.default
        return self._js(s)

    def describe(self) -> str:
        if len(self.values) > 12:
            text = f"one of the {self.name or 'values'} ({len(self.values)}, see reference data)"
        else:
            text = "one of " + ", ".join(f"`{v}`" for v in self.values)
        if self.default is not None:
            text += f"; absent means `{self.default}`"
        return text


class Quantity(Field):
    """Decimal text in normal form with a unit, at most ``places`` decimals, within limits."""

    kind = "decimal"

    def __init__(self, unit: str, doc: str = "", *, optional: bool = False, places: int = 3,
                 maximum: Decimal = MAX_KG, minimum: Decimal = Decimal(0), positive: bool = False):
        super().__init__(doc, optional=optional)
        self.unit, self.places, self.maximum, self.minimum, self.positive = unit, places, maximum, minimum, positive

    def check(self, value: Any, path: str) -> Decimal:
        _expect(value, isinstance(value, str), path, f"decimal text in {self.unit} (e.g. '12.5')")
        try:
            d = parse_decimal(value, self.places)
        except EncodingError as e:
            raise fail("bad_value", path, f"{e}") from None
        if d < 0 and self.minimum >= 0:
            raise fail("out_of_range", path, f"must not be negative ({value} {self.unit})")
        if d < self.minimum:
            raise fail("out_of_range", path, f"must be at least {self.minimum} {self.unit}, not {value}")
        if self.positive and d == 0:
            raise fail("out_of_range", path, f"must be more than 0 {self.unit}")
        if d > self.maximum:
            raise fail("out_of_range", path, f"{value} {self.unit} is absurd: the most one entry may state is "
                                             f"{self.maximum:f} {self.unit}")
        return d

    def json_schema(self) -> dict[str, Any]:
        frac = rf"(\.[0-9]{{0,{self.places - 1}}}[1-9])?" if self.places else ""
        s: dict[str, Any] = {"type": "string", "pattern": rf"^(0|[1-9][0-9]*){frac}$", "x-unit": self.unit,
                             "x-minimum": f"{self.minimum:f}", "x-maximum": f"{self.maximum:f}",
                             "x-decimals": self.places}
        if self.positive:
            s["not"] = {"const": "0"}
        return self._js(s)

    def describe(self) -> str:
        low = "> 0" if self.positive else f">= {self.minimum:f}"
        return f"decimal text, {self.unit}, <= {self.places} decimals, {low}, <= {self.maximum:,f}"


def Kg(doc: str = "", *, optional: bool = False, positive: bool = True) -> Quantity:
    return Quantity("kg", doc, optional=optional, positive=positive)


def KgReo(doc: str = "", *, optional: bool = False, positive: bool = False) -> Quantity:
    return Quantity("kg REO", doc, optional=optional, positive=positive)


def Pct(doc: str = "", *, optional: bool = False) -> Quantity:
    return Quantity("%", doc, optional=optional, places=4, maximum=Decimal(100))


def TReo(doc: str = "", *, optional: bool = False) -> Quantity:
    return Quantity("t REO", doc, optional=optional, places=3, maximum=MAX_T_REO)


class Int(Field):
    kind = "integer"

    def __init__(self, doc: str = "", *, optional: bool = False, minimum: int = 0, maximum: int = 2**62):
        super().__init__(doc, optional=optional)
        self.minimum, self.maximum = minimum, maximum

    def check(self, value: Any, path: str) -> int:
        _expect(value, type(value) is int, path, "an integer")
        if not self.minimum <= value <= self.maximum:
            raise fail("out_of_range", path, f"must be between {self.minimum} and {self.maximum}, not {value}")
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._js({"type": "integer", "minimum": self.minimum, "maximum": self.maximum})

    def describe(self) -> str:
        return f"integer {self.minimum}..{'2^62' if self.maximum == 2**62 else self.maximum}"


def Year(doc: str = "", *, optional: bool = False) -> Int:
    return Int(doc or "calendar year", optional=optional, minimum=MIN_YEAR, maximum=MAX_YEAR)


class Bool(Field):
    kind = "boolean"

    def __init__(self, doc: str = "", *, optional: bool = False, default: bool | None = None):
        super().__init__(doc, optional=optional)
        self.default = default

    def check(self, value: Any, path: str) -> bool:
        _expect(value, isinstance(value, bool), path, "true or false")
        return value

    def json_schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "boolean"}
        if self.default is not None:
            s["default"] = self.default
        return self._js(s)

    def describe(self) -> str:
        return "boolean" + (f"; absent means {str(self.default).lower()}" if self.default is not None else "")


class Time(Field):
    kind = "time"

    def check(self, value: Any, path: str) -> datetime:
        _expect(value, isinstance(value, str), path, "an RFC 3339 UTC time as text")
        try:
            t = parse_time(value)
        except EncodingError as e:
            raise fail("bad_value", path, str(e)) from None
        if not MIN_YEAR <= t.year <= MAX_YEAR:
            raise fail("out_of_range", path, f"year {t.year} is absurd (must be {MIN_YEAR}..{MAX_YEAR})")
        return t

    def json_schema(self) -> dict[str, Any]:
        return self._js({"type": "string", "format": "date-time",
                         "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"})

    def describe(self) -> str:
        return "time, RFC 3339 UTC normal form (`2024-03-01T08:00:00Z`)"


_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_PERIOD_RE = re.compile(r"^(\d{4})(-(0[1-9]|1[0-2]))?$")


class Month(Text):
    kind = "month"

    def __init__(self, doc: str = "", *, optional: bool = False, year_allowed: bool = False):
        super().__init__(doc, optional=optional, max_len=7, pattern=_PERIOD_RE if year_allowed else _MONTH_RE,
                         example="2024-03" if not year_allowed else "2024-03' or '2024")

    def check(self, value: Any, path: str) -> str:
        v = super().check(value, path)
        if not MIN_YEAR <= int(v[:4]) <= MAX_YEAR:
            raise fail("out_of_range", path, f"year {v[:4]} is absurd (must be {MIN_YEAR}..{MAX_YEAR})")
        return v

    def describe(self) -> str:
        return "year or month, `YYYY` or `YYYY-MM`" if self.pattern is _PERIOD_RE else "month, `YYYY-MM`"


class Binary(Field):
    kind = "binary"

    def __init__(self, length: int, doc: str = "", *, optional: bool = False):
        super().__init__(doc, optional=optional)
        self.length = length

    def check(self, value: Any, path: str) -> bytes:
        _expect(value, isinstance(value, bytes), path, f"binary ({self.length} bytes)")
        if len(value) != self.length:
            raise fail("bad_value", path, f"must be {self.length} bytes, not {len(value)}")
        return value

    def json_schema(self) -> dict[str, Any]:
        n = 4 * ((self.length + 2) // 3)
        return self._js({"type": "string", "contentEncoding": "base64", "minLength": n, "maxLength": n,
                         "x-msgpack": "bin", "x-bytes": self.length})

    def describe(self) -> str:
        return f"binary, {self.length} bytes (msgpack bin; base64 in JSON)"


class ListOf(Field):
    kind = "list"

    def __init__(self, item: Field, doc: str = "", *, optional: bool = False, min_items: int = 1,
                 max_items: int = MAX_LIST, unique: Callable[[Any], Any] | None = None, unique_what: str = ""):
        super().__init__(doc, optional=optional)
        self.item, self.min_items, self.max_items = item, min_items, max_items
        self.unique, self.unique_what = unique, unique_what

    def check(self, value: Any, path: str) -> list:
        _expect(value, isinstance(value, list), path, "a list")
        if len(value) < self.min_items:
            raise fail("out_of_range", path, f"must have at least {self.min_items} item(s)")
        if len(value) > self.max_items:
            raise fail("out_of_range", path, f"must have at most {self.max_items} items, not {len(value)}")
        out = [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if self.unique is not None:
            seen: dict[Any, int] = {}
            for i, v in enumerate(out):
                k = self.unique(v)
                if k in seen:
                    raise fail("inconsistent", f"{path}[{i}]",
                               f"repeats {self.unique_what or 'the value'} {k!r} of item {seen[k]}")
                seen[k] = i
        return out

    def json_schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "array", "items": self.item.json_schema(), "minItems": self.min_items,
                             "maxItems": self.max_items}
        if self.unique is not None and self.item.kind != "struct":
            s["uniqueItems"] = True
        return self._js(s)

    def describe(self) -> str:
        what = "maps" if isinstance(self.item, Struct) else self.item.describe()
        extra = f", {self.unique_what} unique" if self.unique is not None else ""
        return f"list of {self.min_items}-{self.max_items} {what}{extra}"

    def children(self) -> Iterable[tuple[str, Field]]:
        if isinstance(self.item, Struct):
            return [(f"[].{k}", f) for k, f in self.item.fields.items()]
        return ()


class MapOf(Field):
    """A map from enumerated text keys to values of one type."""

    kind = "map"

    def __init__(self, keys: Enum, value: Field, doc: str = "", *, optional: bool = False):
        super().__init__(doc, optional=optional)
        self.keys, self.value = keys, value

    def check(self, value: Any, path: str) -> dict:
        _expect(value, isinstance(value, dict), path, "a map")
        if not value:
            raise fail("out_of_range", path, "must not be empty")
        return {self.keys.check(k, f"{path}.{k}" if isinstance(k, str) else path): self.value.check(v, f"{path}.{k}")
                for k, v in value.items()}

    def json_schema(self) -> dict[str, Any]:
        return self._js({"type": "object", "minProperties": 1, "propertyNames": {"enum": list(self.keys.values)},
                         "additionalProperties": self.value.json_schema()})

    def describe(self) -> str:
        return f"map of {', '.join(self.keys.values)} to {self.value.describe()}"


Check = Callable[[dict, str], None]


class Struct(Field):
    """A map with named fields (each required unless optional), nothing else, then checks
    across fields (``checks``: functions of the parsed map and the path)."""

    kind = "struct"

    def __init__(self, fields: dict[str, Field], doc: str = "", *, optional: bool = False,
                 checks: Iterable[Check] = ()):
        super().__init__(doc, optional=optional)
        self.fields, self.checks = fields, tuple(checks)
        self.required = tuple(k for k, f in fields.items() if not f.optional)

    def check(self, value: Any, path: str) -> dict:
        _expect(value, isinstance(value, dict), path, "a map")
        prefix = f"{path}." if path else ""
        missing = [k for k in self.required if k not in value]
        if missing:
            raise fail("missing_field", prefix + missing[0],
                       f"missing (required: {', '.join(missing)})" if len(missing) > 1 else "missing")
        extra = sorted(str(k) for k in value if k not in self.fields)
        if extra:
            raise fail("unknown_field", prefix + extra[0],
                       f"is not a field of this map (allowed: {', '.join(self.fields)})")
        out = {k: self.fields[k].check(v, prefix + k) for k, v in value.items()}
        for c in self.checks:
            c(out, path)
        return out

    def json_schema(self) -> dict[str, Any]:
        return self._js({"type": "object", "properties": {k: f.json_schema() for k, f in self.fields.items()},
                         "required": list(self.required), "additionalProperties": False})

    def describe(self) -> str:
        return "map"

    def children(self) -> Iterable[tuple[str, Field]]:
        return [(f".{k}", f) for k, f in self.fields.items()]


def Ref(doc: str = "", *, optional: bool = False) -> Struct:
    """A citation of one entry: its chain, seq and entry hash (SHA-256 of its envelope)."""
    return Struct({"chain": PartyId("chain of the cited entry"),
                   "seq": Int("seq of the cited entry", minimum=1),
                   "hash": Binary(32, "entry hash of the cited entry (SHA-256 of its envelope)")},
                  doc or "a cited entry {chain, seq, hash}", optional=optional)


# --- cross-field checks --------------------------------------------------------------------

def _doc(text: str) -> Callable[[Check], Check]:
    def wrap(check: Check) -> Check:
        check.doc = text  # type: ignore[attr-defined]
        return check
    return wrap


def _le(small: str, big: str, what: str = "") -> Check:
    @_doc(f"`{small}` above `{big}`")
    def check(m: dict, path: str) -> None:
        if small in m and big in m and m[small] > m[big]:
            raise fail("inconsistent", f"{path}.{small}", f"must not exceed {big} ({what or 'impossible'})")
    return check


def _before(first: str, second: str) -> Check:
    @_doc(f"`{second}` not later than `{first}`")
    def check(m: dict, path: str) -> None:
        if first in m and second in m and not m[first] < m[second]:
            raise fail("inconsistent", f"{path}.{second}", f"must be later than {first}")
    return check


def _product_class(*classes: str) -> Check:
    """The ``product`` of this map is of one of ``classes`` (a smelter does not output oxides)."""
    @_doc(f"a `product` of another class than {' or '.join(classes)}")
    def check(m: dict, path: str) -> None:
        p = m.get("product")
        if p is not None and REFERENCE_DATA["products"][p]["class"] not in classes:
            raise fail("inconsistent", f"{path}.product", f"{p} is a {REFERENCE_DATA['products'][p]['class']} "
                                                          f"product; here it must be {' or '.join(classes)}")
    return check


def _one_of(*names: str) -> Check:
    @_doc(f"none of {', '.join(f'`{n}`' for n in names)}")
    def check(m: dict, path: str) -> None:
        if not any(n in m for n in names):
            raise fail("missing_field", f"{path}.{names[0]}", f"missing: give at least one of {', '.join(names)}")
    return check


#: the rule parameters in force for the body being checked (as the regulator's RuleParameterSet
#: entries set them, the write state keeps them); DOMAIN.md's defaults when none are given
_IN_FORCE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("reledger_rule_parameters", default=None)


@contextmanager
def parameters_in_force(params: dict | None) -> Iterator[None]:
    """Check bodies with ``params`` (name -> value; missing names take the defaults)."""
    token = _IN_FORCE.set(params)
    try:
        yield
    finally:
        _IN_FORCE.reset(token)


def _tolerance_pct() -> Decimal:
    """reo_tolerance_pct in force (a value the regulator set that is no number: the default)."""
    value = (_IN_FORCE.get() or {}).get("reo_tolerance_pct", RULE_PARAMETERS["reo_tolerance_pct"])
    try:
        pct = Decimal(str(value))
    except ArithmeticError:
        pct = Decimal(RULE_PARAMETERS["reo_tolerance_pct"])
    return pct if pct.is_finite() and pct >= 0 else Decimal(RULE_PARAMETERS["reo_tolerance_pct"])


def _reo_tolerance(computed: Decimal) -> Decimal:
    return computed * _tolerance_pct() / 100


def _reo_of(mass: str, pct: str) -> Check:
    """Declared quantities are checked, not trusted (DOMAIN.md): ``reo_kg`` = ``mass`` x ``pct`` / 100
    within ``reo_tolerance_pct`` % of the computed value."""
    @_doc(f"`reo_kg` differing from `{mass}` x `{pct}` / 100 by more than reo_tolerance_pct "
          f"(default {RULE_PARAMETERS['reo_tolerance_pct']} %, as the regulator's RuleParameterSet sets it) of that")
    def check(m: dict, path: str) -> None:
        if "reo_kg" in m and mass in m and pct in m:
            computed = m[mass] * m[pct] / 100
            if abs(m["reo_kg"] - computed) > _reo_tolerance(computed):
                raise fail("inconsistent", f"{path}.reo_kg",
                           f"{m['reo_kg']} kg REO is not {mass} x {pct} / 100 = {computed.quantize(Decimal('0.001'))} "
                           f"kg REO (tolerance reo_tolerance_pct {_tolerance_pct()} % of the computed value)")
    return check


@_doc("a `factor` other than the REO factor table's for the metal's element; `reo_kg` differing from "
      "`kg` x factor by more than reo_tolerance_pct of that")
def _metal_reo(m: dict, path: str) -> None:
    el = element_of(m.get("product"))
    version, table = reo_factor_table()
    factor = m.get("factor")
    if el is not None and el in table:
        if factor is not None and factor != Decimal(table[el]):
            raise fail("inconsistent", f"{path}.factor", f"{factor} is not the REO factor of {el} in reference table "
                                                         f"{version}: {table[el]}")
        factor = Decimal(table[el])
    if factor is not None and "kg" in m and "reo_kg" in m:
        computed = m["kg"] * factor
        if abs(m["reo_kg"] - computed) > _reo_tolerance(computed):
            raise fail("inconsistent", f"{path}.reo_kg",
                       f"{m['reo_kg']} kg REO is not kg x factor = {computed.quantize(Decimal('0.001'))} kg REO "
                       f"(tolerance reo_tolerance_pct {_tolerance_pct()} % of the computed value)")


@_doc("a `value` that is not a number (a whole number for days, hours and the due day), or not a calendar "
      "for holidays and makeup_workdays")
def _parameter_value(m: dict, path: str) -> None:
    name, value = m.get("name"), m.get("value")
    if name is None or value is None:
        return
    if name == "export_control_since":
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise fail("bad_value", f"{path}.value", "must be a date YYYY-MM-DD")
        return
    if name in CALENDAR_PARAMETERS:
        try:
            calendar_dates(value)
        except ValueError as e:
            raise fail("bad_value", f"{path}.value", f"a calendar: {e}") from None
        return
    if name == "controlled_elements":
        bad = [e for e in value.split(",") if e not in ELEMENTS]
        if bad:
            raise fail("bad_value", f"{path}.value", f"not elements: {', '.join(bad)}")
        return
    try:
        d = Decimal(value)
    except Exception:
        d = None
    if d is None or not d.is_finite() or d < 0 or (name in INT_PARAMETERS and d != d.to_integral_value()):
        raise fail("bad_value", f"{path}.value", f"must be a {'whole ' if name in INT_PARAMETERS else ''}"
                                                 "non-negative number")


@_doc("a `key_id` that is not the key id of `public_key`")
def _key_id_matches(m: dict, path: str) -> None:
    if "public_key" in m and "key_id" in m and compute_key_id(m["public_key"]) != m["key_id"]:
        raise fail("inconsistent", f"{path}.key_id", "does not match the public key (first 8 bytes of "
                                                     "SHA-256(public_key) as hex)")


@_doc("`mldsa44_public_key` on a key whose purpose is not `checkpoint`")
def _mldsa_checkpoint_only(m: dict, path: str) -> None:
    if "mldsa44_public_key" in m and m.get("purpose", "entries") != "checkpoint":
        raise fail("inconsistent", f"{path}.mldsa44_public_key", "only a checkpoint key has an ML-DSA-44 key "
                                                                "(entries are signed with Ed25519 alone)")


@_doc("only one of `first_seq`, `last_seq`; `last_seq` below `first_seq`")
def _seq_range(m: dict, path: str) -> None:
    if ("first_seq" in m) != ("last_seq" in m):
        raise fail("missing_field", f"{path}.{'last_seq' if 'first_seq' in m else 'first_seq'}",
                   "missing: first_seq and last_seq come together (both absent: no entries this month)")
    if "first_seq" in m and m["first_seq"] > m["last_seq"]:
        raise fail("inconsistent", f"{path}.last_seq", "must not be below first_seq")


# --- the catalogue ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EntrySchema:
    """One entry type: its body and what it means."""

    type: str
    group: str  # registry, quota, flow, reporting, enforcement
    doc: str
    body: Struct

    def check(self, body: Any) -> dict:
        """Check ``body``; returns it parsed (Decimals, datetimes); raises CommandError."""
        return self.body.check(body, "body")

    def json_schema(self) -> dict[str, Any]:
        s = self.body.json_schema()
        s["title"] = self.type
        s["description"] = self.doc
        return s


def _kg_line(extra: dict[str, Field] | None = None, *, product_required: bool = True) -> Struct:
    fields: dict[str, Field] = {
        "lot": Ident("lot id"),
        "product": Enum(PRODUCTS, "product code", optional=not product_required, name="products"),
        "kg": Kg("mass"),
        "reo_kg": KgReo("rare earth content", optional=True),
    }
    fields.update(extra or {})
    return Struct(fields)


_VALIDITY = {"valid_from": Time("start of validity"),
             "valid_until": Time("end of validity (exclusive); absent: open-ended", optional=True)}
_PARTY_DETAILS: dict[str, Field] = {
    "county": Text("county (or district) department responsible", optional=True),
    "group": PartyId("the quota group the party belongs to", optional=True),
    "licence": Text("licence number (mining licence, export licence...)", optional=True),
    "capacity_t_reo": TReo("capacity per year", optional=True),
}

_SCHEMAS: list[EntrySchema] = [
    # --- registry ---
    EntrySchema("PartyRegistered", "registry", "A party enters the system: its roles (designation) and "
                "their validity.", Struct({
                    "party": PartyId("the party registered"),
                    "name": Text("legal name"),
                    "roles": ListOf(Enum(ROLES), "roles (designation)", unique=lambda r: r, unique_what="role",
                                    max_items=len(ROLES)),
                    "province": Text("province"),
                    **_PARTY_DETAILS, **_VALIDITY,
                }, checks=[_before("valid_from", "valid_until")])),
    EntrySchema("PartyDesignationChanged", "registry", "A party's designation changes from `valid_from` on: "
                "the given fields replace the previous ones (absent fields are kept). Empty `roles` suspends "
                "every role; `valid_until` ends the designation.", Struct({
                    "party": PartyId("the party whose designation changes"),
                    "roles": ListOf(Enum(ROLES), "roles from valid_from on", unique=lambda r: r, unique_what="role",
                                    min_items=0, max_items=len(ROLES), optional=True),
                    "name": Text("legal name", optional=True),
                    "province": Text("province", optional=True),
                    **_PARTY_DETAILS,
                    "valid_from": Time("when the change takes effect"),
                    "valid_until": Time("end of the designation (exclusive)", optional=True),
                    "reason": Text("why (decision number...)", optional=True),
                }, checks=[_before("valid_from", "valid_until")])),
    EntrySchema("KeyAuthorized", "registry", "A key may sign for a party (purpose `entries`) or sign "
                "checkpoints (purpose `checkpoint`), from `valid_from`.", Struct({
                    "party": PartyId("the key's party"),
                    "key_id": Text("key id: first 8 bytes of SHA-256(public_key), hex", pattern=KEY_ID_RE,
                                   example="0123456789abcdef"),
                    "public_key": Binary(32, "Ed25519 public key: a point of the curve, not of small order "
                                                 "(FORMAT.md 4.1)"),
                    "purpose": Enum(PURPOSES, "what the key signs", optional=True, default="entries"),
                    "name": Text("key name (for checkpoint keys: the log's origin)", optional=True),
                    "mldsa44_public_key": Binary(1312, "checkpoint keys only: the log's ML-DSA-44 (FIPS 204, "
                                                       "post-quantum) public key; every checkpoint then carries "
                                                       "its signature too (FORMAT.md 5.4)", optional=True),
                    "reason": Text("why (registration, rotation...)"),
                    **_VALIDITY,
                }, checks=[_key_id_matches, _mldsa_checkpoint_only, _before("valid_from", "valid_until")])),
    EntrySchema("KeyRevoked", "registry", "A key signs nothing more from this log position on.", Struct({
        "party": PartyId("the key's party"),
        "key_id": Text("key id", pattern=KEY_ID_RE, example="0123456789abcdef"),
        "reason": Text("why (compromised, rotated...)"),
    })),
    EntrySchema("GroupMembershipChanged", "registry", "An enterprise joins or leaves a quota group.", Struct({
        "party": PartyId("the member enterprise"),
        "group": PartyId("the quota group"),
        "action": Enum(MEMBERSHIP_ACTIONS, "joined or left"),
        "effective_from": Time("effective date"),
        "reason": Text("decision or reason", optional=True),
    })),
    # --- quota ---
    EntrySchema("AnnualTotalApproved", "quota", "The State Council's approved national totals for a year.",
                Struct({
                    "year": Year(),
                    "mining_rock_t_reo": TReo("mining, rock-type (light)"),
                    "mining_ionic_t_reo": TReo("mining, ion-adsorption (medium/heavy)"),
                    "separation_t_reo": TReo("smelting separation"),
                    "approval_ref": Text("approval document"),
                })),
    EntrySchema("QuotaBatchIssued", "quota", "One batch of a year's control indicators for one holder "
                "(a quota group or an enterprise). (year, batch_no, holder) is unique.", Struct({
                    "year": Year(),
                    "batch_no": Int("batch number in the year", minimum=1, maximum=100),
                    "document_no": Text("issuing document number"),
                    "holder": PartyId("the group or enterprise receiving the indicator"),
                    "mining_rock_t_reo": TReo("mining, rock-type"),
                    "mining_ionic_t_reo": TReo("mining, ion-adsorption"),
                    "separation_t_reo": TReo("smelting separation"),
                    "basis": Enum(QUOTA_BASES, "separation counted on output or input REO", optional=True,
                                  default="OUTPUT"),
                    "reserve": Bool("a reserve (held back) indicator", optional=True, default=False),
                })),
    EntrySchema("QuotaSubAllocated", "quota", "A quota group passes part of a batch it holds to a member "
                "enterprise.", Struct({
                    "batch": Struct({"year": Year(), "batch_no": Int("batch number", minimum=1, maximum=100)},
                                    "the batch (issued to this group)"),
                    "enterprise": PartyId("the member enterprise"),
                    "category": Enum(QUOTA_CATEGORIES, "quota category"),
                    "t_reo": TReo("amount allocated", ),
                })),
    EntrySchema("QuotaReduced", "quota", "A holder's indicator is cut (Decree 71 Art. 14: a penalty cuts "
                "the next year's indicator).", Struct({
                    "year": Year("the year whose indicator is cut"),
                    "holder": PartyId("the holder"),
                    "category": Enum(QUOTA_CATEGORIES, "quota category"),
                    "t_reo": TReo("amount cut"),
                    "penalty": Ref("the PenaltyImposed entry that causes the cut"),
                    "reason": Text("explanation", optional=True),
                })),
    # --- material flow ---
    EntrySchema("MineralProductProduced", "flow", "A mine's output lot. REO = dry mass x TREO %.", Struct({
        "lot": Ident("new lot id (unique in the ledger)"),
        "ore_type": Enum(ORE_TYPES, "rock-type or ion-adsorption"),
        "product": Enum(PRODUCTS, "mineral product (default RE_CONCENTRATE)", optional=True, name="products"),
        "wet_kg": Kg("wet mass"),
        "dry_kg": Kg("dry mass"),
        "treo_pct": Pct("total rare earth oxide grade, % of dry mass"),
        "reo_kg": KgReo("rare earth oxide content"),
        "element_distribution": MapOf(Enum(ELEMENTS), Pct(), "element distribution, % of TREO", optional=True),
        "site": Text("mining site", optional=True),
    }, checks=[_le("dry_kg", "wet_kg", "dry mass above wet mass"), _le("reo_kg", "dry_kg", "REO above dry mass"),
               _product_class("MINERAL"), _reo_of("dry_kg", "treo_pct")])),
    EntrySchema("ImportReceived", "flow", "An imported lot enters (counts against separation quota when "
                "separated, monazite included).", Struct({
                    "lot": Ident("new lot id"),
                    "customs_declaration_no": Text("customs import declaration number"),
                    "hs_code": Text("HS code", pattern=re.compile(r"^[0-9]{6,10}$"), example="2846901100"),
                    "origin_country": Text("ISO 3166-1 alpha-2", pattern=re.compile(r"^[A-Z]{2}$"), example="MM"),
                    "form": Enum(IMPORT_FORMS, "physical form"),
                    "ore_type": Enum(IMPORT_ORE_TYPES, "ore type of mineral product (decides its recovery band; "
                                     "absent: ROCK, MONAZITE for the MONAZITE form)", optional=True),
                    "product": Enum(PRODUCTS, "product code if known", optional=True, name="products"),
                    "dry_kg": Kg("dry mass"),
                    "treo_pct": Pct("TREO grade, % of dry mass"),
                    "reo_kg": KgReo("rare earth content", optional=True),
                }, checks=[_le("reo_kg", "dry_kg", "REO above dry mass"), _reo_of("dry_kg", "treo_pct")])),
    EntrySchema("SecondaryFeedReceived", "flow", "A recycler's scrap feed lot (recorded apart, not counted "
                "against quota).", Struct({
                    "lot": Ident("new lot id"),
                    "scrap_type": Enum(SCRAP_TYPES, "kind of scrap"),
                    "source": Text("where the scrap comes from (supplier, collection point)"),
                    "kg": Kg("mass"),
                    "treo_pct": Pct("TREO grade, % of mass"),
                    "reo_kg": KgReo("rare earth content", optional=True),
                }, checks=[_le("reo_kg", "kg", "REO above mass"), _reo_of("kg", "treo_pct")])),
    EntrySchema("SeparationBatchRecorded", "flow", "A separation plant's batch: input lots consumed (REO), "
                "output lots produced, losses. Outputs are attributed to inputs in proportion (mass "
                "balance), not lot to lot.", Struct({
                    "batch": Ident("batch id (unique for the plant)"),
                    "period_start": Time("batch start"),
                    "period_end": Time("batch end"),
                    "inputs": ListOf(Struct({"lot": Ident("input lot"), "reo_kg": KgReo("REO consumed", positive=True),
                                             "kg": Kg("mass consumed", optional=True)}), "input lots",
                                     unique=lambda i: i["lot"], unique_what="lot"),
                    "outputs": ListOf(Struct({"lot": Ident("new output lot"),
                                              "product": Enum(PRODUCTS, "product", name="products"),
                                              "kg": Kg("mass"), "purity_pct": Pct("purity, % of total RE content"),
                                              "reo_kg": KgReo("REO content", positive=True)},
                                             checks=[_le("reo_kg", "kg", "REO above mass"),
                                                     _product_class("SEPARATED", "MINERAL")]),
                                      "output lots", unique=lambda o: o["lot"], unique_what="lot"),
                    "losses_reo_kg": KgReo("REO lost in the process"),
                }, checks=[_before("period_start", "period_end")])),
    EntrySchema("MetalSmelted", "flow", "A metal smelter's batch: oxide lots in, metal or alloy lots out "
                "(REO = metal mass x factor).", Struct({
                    "batch": Ident("batch id (unique for the smelter)"),
                    "inputs": ListOf(Struct({"lot": Ident("input oxide lot"), "kg": Kg("mass consumed"),
                                             "reo_kg": KgReo("REO consumed", optional=True)}),
                                     "input lots", unique=lambda i: i["lot"], unique_what="lot"),
                    "outputs": ListOf(Struct({"lot": Ident("new metal or alloy lot"),
                                              "product": Enum(PRODUCTS, "product", name="products"),
                                              "kg": Kg("mass"),
                                              "factor": Quantity("kg REO/kg", "REO factor used", places=4,
                                                                 maximum=Decimal(2), positive=True),
                                              "reo_kg": KgReo("REO equivalent", positive=True)},
                                             checks=[_product_class("METAL", "ALLOY"), _metal_reo]),
                                      "output lots", unique=lambda o: o["lot"], unique_what="lot"),
                })),
    EntrySchema("TransferShipped", "flow", "The seller ships lots to a buyer. (seller, transfer_id) is "
                "unique; the buyer's TransferReceived cites it.", Struct({
                    "transfer_id": Ident("transfer id (unique for the seller)"),
                    "buyer": PartyId("the buyer"),
                    "lines": ListOf(_kg_line(), "lines shipped", unique=lambda l: (l["lot"], l["product"]),
                                    unique_what="lot and product"),
                    "vat_invoice_no": Text("VAT invoice number"),
                    "shipped_at": Time("time of shipment"),
                })),
    EntrySchema("TransferReceived", "flow", "The buyer receives a shipment addressed to it, once. Lines that "
                "differ from the shipment are accepted and flagged.", Struct({
                    "transfer_id": Ident("the seller's transfer id"),
                    "seller": PartyId("the seller"),
                    "lines": ListOf(_kg_line(), "lines received", unique=lambda l: (l["lot"], l["product"]),
                                    unique_what="lot and product"),
                    "received_at": Time("time of receipt"),
                })),
    EntrySchema("ExportDeclared", "flow", "An exporter's customs export declaration for a lot.", Struct({
        "lot": Ident("lot exported"),
        "product": Enum(PRODUCTS, "product", name="products"),
        "kg": Kg("mass"),
        "reo_kg": KgReo("REO content", optional=True),
        "customs_declaration_no": Text("customs export declaration number"),
        "export_licence_no": Text("export licence number"),
        "licence_valid_from": Time("first day of the licence's validity (dual-use licence for controlled "
                                   "elements since 2025)", optional=True),
        "licence_valid_until": Time("end of the licence's validity (exclusive)", optional=True),
        "end_user": Text("end user", optional=True),
        "end_use": Text("end use", optional=True),
        "destination_country": Text("ISO 3166-1 alpha-2", pattern=re.compile(r"^[A-Z]{2}$"), example="JP"),
    }, checks=[_before("licence_valid_from", "licence_valid_until")])),
    EntrySchema("StockCounted", "flow", "A physical stock count of a lot or a product (a difference from the "
                "book stock becomes a finding).", Struct({
                    "lot": Ident("lot counted", optional=True),
                    "product": Enum(PRODUCTS, "product counted", optional=True, name="products"),
                    "counted_kg": Kg("counted mass", positive=False),
                    "counted_reo_kg": KgReo("counted REO", optional=True),
                    "location": Text("warehouse", optional=True),
                }, checks=[_one_of("lot", "product")])),
    # --- reporting ---
    EntrySchema("MonthlyFlowReportSubmitted", "reporting", "The previous month's flow report (Decree 71 "
                "Art. 10: due before the 10th). It covers seqs first_seq..last_seq of the reporter's own "
                "chain (both absent: no entries that month); digest = SHA-256 of the concatenated entry "
                "hashes of those seqs, in order (`reledger.commands.catalogue.report_digest`).", Struct({
                    "month": Month("the month reported"),
                    "first_seq": Int("first seq covered", minimum=1, optional=True),
                    "last_seq": Int("last seq covered (below the report's own seq)", minimum=1, optional=True),
                    "totals": Struct({
                        "produced_reo_kg": KgReo("mined / produced", optional=True),
                        "received_reo_kg": KgReo("received and imported", optional=True),
                        "consumed_reo_kg": KgReo("consumed as input", optional=True),
                        "output_reo_kg": KgReo("separated / smelted output", optional=True),
                        "shipped_reo_kg": KgReo("shipped", optional=True),
                        "exported_reo_kg": KgReo("exported", optional=True),
                        "losses_reo_kg": KgReo("losses", optional=True),
                        "closing_stock_reo_kg": KgReo("stock at month end", optional=True),
                    }, "totals of the month"),
                    "digest": Binary(32, "SHA-256 of the covered entry hashes"),
                }, checks=[_seq_range])),
    EntrySchema("QuotaExecutionReported", "reporting", "Quota used vs allocated for a month or a year "
                "(Decree 71 Art. 9).", Struct({
                    "period": Month("the month or year reported", year_allowed=True),
                    "lines": ListOf(Struct({"category": Enum(QUOTA_CATEGORIES, "quota category"),
                                            "used_t_reo": TReo("used"), "allocated_t_reo": TReo("allocated")}),
                                    "one line per category", unique=lambda l: l["category"],
                                    unique_what="category", max_items=3),
                })),
    # --- enforcement ---
    EntrySchema("RuleParameterSet", "enforcement", "The regulator sets a rule parameter (tolerance, day count, "
                "band, deadline) from this entry's record time on; findings cite the parameters they used. "
                "Absent: DOMAIN.md's defaults.", Struct({
                    "name": Enum(tuple(RULE_PARAMETERS), "the parameter"),
                    "value": Text("its new value (a number; a date YYYY-MM-DD for export_control_since; "
                                  "element symbols separated by commas for controlled_elements; for holidays "
                                  "and makeup_workdays, legal dates YYYY-MM-DD, ranges YYYY-MM-DD..YYYY-MM-DD "
                                  "or bare years YYYY separated by commas, replacing the calendar of the years "
                                  "named)", max_len=4000),
                    "reason": Text("decision or reason", optional=True),
                }, checks=[_parameter_value])),
    EntrySchema("InspectionRecorded", "enforcement", "A regulator's inspection of a party.", Struct({
        "party": PartyId("the inspected party"),
        "inspection_no": Text("inspection record number"),
        "inspected_at": Time("time of inspection"),
        "result": Enum(INSPECTION_RESULTS, "outcome"),
        "notes": Text("notes", optional=True, max_len=4000),
        "evidence": ListOf(Ref(), "entries examined", optional=True, max_items=500),
    })),
    EntrySchema("ViolationFound", "enforcement", "A regulator finds a violation, citing ledger entries as "
                "evidence.", Struct({
                    "party": PartyId("the party in violation"),
                    "rule": Enum(VIOLATION_RULES, "rule broken"),
                    "article": Text("article of the regulation (e.g. 'Decree 785 Art. 21')"),
                    "description": Text("what was found", max_len=4000),
                    "evidence": ListOf(Ref(), "entries cited as evidence", max_items=500),
                    "inspection": Ref("the InspectionRecorded entry", optional=True),
                })),
    EntrySchema("PenaltyImposed", "enforcement", "A penalty for a violation: fine, article, next-year cut.",
                Struct({
                    "party": PartyId("the penalized party"),
                    "violation": Ref("the ViolationFound entry"),
                    "decision_no": Text("penalty decision number"),
                    "article": Text("article applied"),
                    "fine_cny": Quantity("CNY", "fine", places=2, maximum=MAX_CNY),
                    "confiscated_kg": Kg("product confiscated", optional=True),
                    "next_year_cut_t_reo": TReo("cut of the next year's indicator"),
                })),
    EntrySchema("CorrectionRecorded", "enforcement", "A party corrects one of its own entries (never deletes "
                "it): cites it, says why, and may cite the entries that replace it.", Struct({
                    "corrects": Ref("the entry corrected (of the same chain)"),
                    "reason": Enum(CORRECTION_REASONS, "kind of error"),
                    "explanation": Text("what was wrong", max_len=4000),
                    "replaced_by": ListOf(Ref(), "entries that replace it", optional=True, max_items=100),
                })),
]

SCHEMAS: dict[str, EntrySchema] = {s.type: s for s in _SCHEMAS}
ENTRY_TYPES: tuple[str, ...] = tuple(SCHEMAS)


def schema_of(type_name: str) -> EntrySchema:
    s = SCHEMAS.get(type_name)
    if s is None:
        raise fail("unknown_type", "type", f"{str(type_name)[:70]!r} is not an entry type of the catalogue "
                                           f"({len(SCHEMAS)} types: see docs/CATALOGUE.md)")
    return s


def check_body(type_name: str, body: Any, params: dict | None = None) -> dict:
    """Check a body against its type's schema, with the rule parameters ``params`` in force
    (DOMAIN.md's defaults for those not given); the parsed body, or CommandError."""
    with parameters_in_force(params):
        return schema_of(type_name).check(body)


from reledger.projections import model as _model  # noqa: E402

report_digest = _model.report_digest  # one definition (the rules'), named here for the catalogue's users

# --- JSON <-> body (binary as base64 in JSON) -----------------------------------------------

def _walk_binary(f: Field, value: Any, conv: Callable[[Any], Any]) -> Any:
    if isinstance(f, Binary):
        return conv(value)
    if isinstance(f, Struct) and isinstance(value, dict):
        return {k: (_walk_binary(f.fields[k], v, conv) if k in f.fields else v) for k, v in value.items()}
    if isinstance(f, ListOf) and isinstance(value, list):
        return [_walk_binary(f.item, v, conv) for v in value]
    return value


def body_to_json(type_name: str, body: dict) -> dict:
    """A body with its binary fields as base64 text (the JSON form)."""
    return _walk_binary(schema_of(type_name).body, body,
                        lambda v: base64.b64encode(v).decode() if isinstance(v, bytes) else v)


def body_from_json(type_name: str, obj: Any) -> Any:
    """The msgpack form of a JSON body: base64 text of binary fields becomes bytes (anything
    else is left for :func:`check_body` to judge)."""
    def conv(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                return v
        return v

    return _walk_binary(schema_of(type_name).body, obj, conv)


# --- documents ---------------------------------------------------------------------------

def catalogue_json_schema() -> dict[str, Any]:
    """JSON Schema of every body, keyed by type (for the OpenAPI components)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"reledger entry bodies (reference data {REFERENCE_DATA['version']})",
            "$defs": {t: s.json_schema() for t, s in SCHEMAS.items()}}
