"""The write path's state: what the command API must know to check references.

Built from the ledger's records in log order (``store.records(start)``), so it can start from
any position and catch up; nothing here reads or writes storage by itself, but the rows of a
row-backed state (below).

* the key registry (a replica of :class:`reledger.ledger.registry.Registry`: keys, current roles);
* chain heads (seq, entry hash);
* parties and their designations over business time (roles, valid from/until; group
  membership is the projections' business: the write path checks nothing by it);
* shipments by (seller, transfer id): buyer, and whether (and where) received;
* quota batches by (year, batch no, holder);
* lots by id (the entry that created each lot) and production batch ids per chain.

The command ids of the log are not kept here: the command API looks up in the log (its unique
index on (command id, chain)) the command ids of an entry this state refuses (a retry always
is: its seq is taken), and the store refuses an accepted entry whose command id is recorded.

Changes made while validating a submission are journaled (:meth:`WriteState.begin`):
:meth:`WriteState.mark` and :meth:`WriteState.rollback` undo a refused group,
:meth:`WriteState.commit` keeps what the store accepted, :meth:`WriteState.abort` undoes all. Applying is tolerant: an entry the catalogue would refuse (e.g. written through the
store directly) changes only what can be read from it.

``WriteState()`` keeps everything in memory (the reference, as the tests hold it): it grows
with the log (a few hundred bytes per lot, shipment and production batch) and is built by
parsing every entry. ``WriteState(rows)`` (:mod:`reledger.commands.writerows`, what the command
API uses) keeps the lots, shipments and production batches as rows read through a bounded
cache, and the small parts (registry, heads, parties, parameters, quota batches) in memory,
written beside them: it starts from the rows' position and parses only the log's tail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from reledger.ledger import encoding
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import SignedEntry, ZERO_HASH
from reledger.ledger.registry import REGISTRY_TYPES, Registry, RegistryError
from reledger.ledger.rules import Invalid

_MISSING = object()
LOT_CREATORS = {"MineralProductProduced": "lot", "ImportReceived": "lot", "SecondaryFeedReceived": "lot"}
BATCH_TYPES = ("SeparationBatchRecorded", "MetalSmelted")


def time_us(text: Any) -> int | None:
    """Microseconds of a normal-form time text, or None when it is not one."""
    try:
        return encoding.time_to_micros(encoding.parse_time(text))
    except (EncodingError, TypeError):
        return None


def _dec(text: Any) -> Decimal | None:
    try:
        return encoding.parse_decimal(text) if isinstance(text, str) else None
    except (EncodingError, InvalidOperation):
        return None


@dataclass(frozen=True)
class Designation:
    """A party's designation from ``since_us`` (business time) on, as recorded at log ``index``."""

    since_us: int
    roles: frozenset[str]
    valid_until_us: int | None
    index: int


@dataclass(frozen=True)
class PartyInfo:
    party: str
    name: str
    designations: tuple[Designation, ...]  # in log order
    registered_at: int  # log index of PartyRegistered

    @property
    def roles_ever(self) -> frozenset[str]:
        """Every role the party has been designated with, at any time."""
        out: frozenset[str] = frozenset()
        for d in self.designations:
            out |= d.roles
        return out

    @property
    def current(self) -> Designation:
        return self.designations[-1]

    def designation_at(self, t_us: int) -> Designation | None:
        """The designation in force at business time ``t_us``: the one with the latest
        ``since_us <= t_us`` (a later log entry wins a tie); None before the first."""
        best: Designation | None = None
        for d in self.designations:
            if d.since_us <= t_us and (best is None or d.since_us >= best.since_us):
                best = d
        return best

    def roles_at(self, t_us: int) -> frozenset[str]:
        """Roles the party is designated with at business time ``t_us`` (empty outside)."""
        d = self.designation_at(t_us)
        if d is None or (d.valid_until_us is not None and t_us >= d.valid_until_us):
            return frozenset()
        return d.roles

    def designated(self, role: str, t_us: int) -> bool:
        return role in self.roles_at(t_us)


@dataclass(frozen=True, slots=True)
class Shipment:
    """What the write path needs of a shipment (its lines are the projections' business)."""

    seller: str
    transfer_id: str
    buyer: str
    index: int  # log index of TransferShipped
    received_index: int | None = None  # log index of the TransferReceived


@dataclass(frozen=True, slots=True)
class QuotaBatch:
    year: int
    batch_no: int
    holder: str
    basis: str
    reserve: bool
    amounts: dict  # category -> Decimal t REO
    index: int


@dataclass(frozen=True, slots=True)
class LotOrigin:
    lot: str
    chain: str
    seq: int
    type: str
    index: int


def write_keys(e: Any) -> list[tuple[str, Any]]:
    """The keys of the growing maps (namespace, key) that applying or checking entry ``e`` reads:
    what a row-backed state reads for a page or a submission in one query."""
    b = e.body
    if not isinstance(b, dict):
        return []
    t = e.type
    out: list[tuple[str, Any]] = []
    if t in LOT_CREATORS:
        if isinstance(b.get("lot"), str):
            out.append(("lots", b["lot"]))
    elif t in BATCH_TYPES:
        if isinstance(b.get("batch"), str):
            out.append(("batches", (e.chain, b["batch"])))
        for o in b.get("outputs") or () if isinstance(b.get("outputs"), list) else ():
            if isinstance(o, dict) and isinstance(o.get("lot"), str):
                out.append(("lots", o["lot"]))
    elif t == "TransferShipped":
        if isinstance(b.get("transfer_id"), str):
            out.append(("shipments", (e.chain, b["transfer_id"])))
    elif t == "TransferReceived":
        if isinstance(b.get("transfer_id"), str) and isinstance(b.get("seller"), str):
            out.append(("shipments", (b["seller"], b["transfer_id"])))
    return out


class RowDict:
    """One growing map of a row-backed WriteState, as the dict the reference keeps: values are
    rows of plain tuples carrying the log index that made them, and a value made at or after
    the state's position (written by a writer that is ahead) is not seen (a received index
    there reads as not received)."""

    __slots__ = ("m", "state", "kind")

    def __init__(self, m: Any, state: "WriteState", kind: str):
        self.m, self.state, self.kind = m, state, kind

    def _obj(self, k: Any, v: Any) -> Any:
        size = self.state.size
        kind = self.kind
        if kind == "lots":
            chain, seq, type_, index = v
            return LotOrigin(k, chain, seq, type_, index) if index < size else None
        if kind == "shipments":
            buyer, index, received = v
            if index >= size:
                return None
            return Shipment(k[0], k[1], buyer, index, received if received is not None and received < size else None)
        return v if v < size else None  # batches: the index

    @staticmethod
    def _row(kind: str, obj: Any) -> Any:
        if kind == "lots":
            return (obj.chain, obj.seq, obj.type, obj.index)
        if kind == "shipments":
            return (obj.buyer, obj.index, obj.received_index)
        return obj

    def get(self, k: Any, default: Any = None) -> Any:
        v = self.m.peek(k, _MISSING)
        if v is _MISSING:
            return default
        obj = self._obj(k, v)
        return default if obj is None else obj

    def __getitem__(self, k: Any) -> Any:
        obj = self.get(k, _MISSING)
        if obj is _MISSING:
            raise KeyError(k)
        return obj

    def __contains__(self, k: Any) -> bool:
        return self.get(k, _MISSING) is not _MISSING

    def __setitem__(self, k: Any, obj: Any) -> None:
        self.m[k] = self._row(self.kind, obj)

    def pop(self, k: Any, *default: Any) -> Any:  # (the journal's undo of a new key)
        obj = self.get(k, _MISSING)
        self.m.pop(k, None)
        if obj is _MISSING:
            if default:
                return default[0]
            raise KeyError(k)
        return obj

    def to_dict(self) -> dict:
        """Every value the state sees (a scan of the rows and the cache: for tests and checks,
        not for the write path)."""
        from reledger.projections.state import decode

        raw = {decode(kb): decode(vb) for kb, vb in self.state.rows.scan(self.kind)}
        for k, exists, v in self.m.cached():
            if exists:
                raw[k] = v
            else:
                raw.pop(k, None)
        out = {}
        for k, v in raw.items():
            obj = self._obj(k, v)
            if obj is not None:
                out[k] = obj
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowDict):
            other = other.to_dict()
        return isinstance(other, dict) and self.to_dict() == other

    __hash__ = None  # type: ignore[assignment]


class WriteState:
    """See the module docstring. Not thread-safe: the command API holds its lock around it."""

    def __init__(self, rows: Any = None) -> None:
        self.size = 0
        self.last_hash = ZERO_HASH  # the entry hash of log index size - 1 (what the rows' position names)
        self.registry = Registry()
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.parties: dict[str, PartyInfo] = {}
        self.shipments: dict[tuple[str, str], Shipment] = {}
        self.quota_batches: dict[tuple[int, int, str], QuotaBatch] = {}
        self.lots: dict[str, LotOrigin] = {}
        self.batches: dict[tuple[str, str], int] = {}
        # the rule parameters the regulator's RuleParameterSet entries set so far (name -> value;
        # the write path checks declared REO with them)
        self.params: dict[str, Any] = {}
        self.rows = rows  # a reledger.commands.writerows.WriteRows, or None (all in memory)
        self.parsed = 0  # entries parsed by catch_up (what a restart had to read of the log)
        if rows is not None:
            rows.load(self)
        # entries applied since the last commit: (chain, seq) -> (entry hash, type)
        self.pending: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._journal: list[Callable[[], None]] | None = None
        self._registry_copied_at: int | None = None
        self._last_mark = 0

    # --- journal -------------------------------------------------------------------------
    def begin(self) -> None:
        """Start journaling changes (until commit or rollback(0))."""
        self._journal = []
        self._registry_copied_at = None
        self._last_mark = 0

    def mark(self) -> int:
        assert self._journal is not None, "begin() first"
        self._last_mark = len(self._journal)
        return self._last_mark

    def rollback(self, mark: int) -> None:
        """Undo every change journaled after ``mark`` (journaling goes on)."""
        assert self._journal is not None, "begin() first"
        while len(self._journal) > mark:
            self._journal.pop()()
        if self._registry_copied_at is not None and self._registry_copied_at > mark:
            self._registry_copied_at = None

    def abort(self) -> None:
        """Undo everything since :meth:`begin` and stop journaling."""
        if self._journal is not None:
            self.rollback(0)
        self._journal = None
        self.pending.clear()

    def commit(self) -> None:
        self._journal = None
        self.pending.clear()
        self.registry.size = self.size

    # --- rows ------------------------------------------------------------------------------
    def flush_due(self) -> bool:
        """Whether the rows should be written now (entries applied since the last write, or a
        cache grown past its bound)."""
        rows = self.rows
        return rows is not None and self._journal is None and (
            self.size - rows.position >= rows.flush_every or rows.cached() > 2 * rows.cache_entries)

    def flush(self) -> None:
        """Write the rows up to this state's position (not while journaling: only what the log
        holds is written). Raises writerows.RowsMoved: read the state again from the rows."""
        if self.rows is not None and self._journal is None and (self.size != self.rows.position
                                                                or self.rows.cached()):
            self.rows.flush(self)

    def prefetch(self, entries: Iterable[Any]) -> None:
        """Read the growing maps' rows that these entries (SignedEntry.entry-likes) will ask
        for, in one query (row-backed state only)."""
        if self.rows is not None:
            keys = [k for e in entries for k in write_keys(e)]
            if keys:
                self.rows.prefetch(keys)

    def _put(self, d: dict, key: Any, value: Any) -> None:
        if self._journal is not None:
            old = d.get(key, _MISSING)
            self._journal.append(lambda: d.pop(key) if old is _MISSING else d.__setitem__(key, old))
        d[key] = value

    def _registry_for_write(self) -> Registry:
        if self._journal is not None and (self._registry_copied_at is None
                                          or self._registry_copied_at <= self._last_mark):
            old = self.registry
            self._journal.append(lambda: setattr(self, "registry", old))
            self._registry_copied_at = len(self._journal)
            self.registry = old.copy()
        return self.registry

    # --- reading -------------------------------------------------------------------------
    def head(self, chain: str) -> tuple[int, bytes]:
        return self.heads.get(chain, (0, ZERO_HASH))

    def current_roles(self, party: str) -> frozenset[str]:
        return self.registry.roles.get(party, frozenset())

    def roles_ever(self, party: str) -> frozenset[str]:
        info = self.parties.get(party)
        return (info.roles_ever if info else frozenset()) | self.current_roles(party)

    # --- applying ------------------------------------------------------------------------
    def catch_up(self, records: Iterable[Any], page: int = 2000) -> int:
        """Apply stored records (``reledger.storage.reader.Record``) from position ``self.size`` on, in
        order. Returns how many were applied. A row-backed state reads the rows a page of
        records needs in one query, and writes its rows every ``flush_every`` entries (so that
        a long catch-up holds no more than that in memory)."""
        n = 0
        batch: list = []
        it = iter(records)
        while True:
            batch.clear()
            for rec in it:
                batch.append(rec)
                if len(batch) >= page:
                    break
            if not batch:
                return n
            parsed = []
            for rec in batch:
                if rec.index < self.size or rec.envelope is None:
                    parsed.append((rec, None))
                    continue
                parsed.append((rec, SignedEntry.parse(rec.envelope)))
            if self.rows is not None:
                self.prefetch(s.entry for _, s in parsed if s is not None)
            for rec, signed in parsed:
                if rec.index < self.size:
                    continue
                if rec.index != self.size:
                    raise ValueError(f"state at {self.size} cannot apply log index {rec.index}")
                self.parsed += 1
                if signed is None:  # the events row is missing: the verifier reports it
                    self.size = rec.index + 1
                    self.last_hash = rec.entry_hash
                    self.registry.size = self.size
                    continue
                self.apply(signed, rec.index, strict=False, recorded_us=rec.recorded_us)
                n += 1
                if self.flush_due():
                    self.flush()

    def apply(self, signed: SignedEntry, index: int, strict: bool = True, recorded_us: int | None = None) -> None:
        """Apply an entry at log ``index``. Raises RegistryError (before changing anything else)
        for a registry body the key registry refuses, unless ``strict`` is false (catching up
        with what the store accepted: the rest of the state still follows the log).
        ``recorded_us``: its record time when it comes from the log (it was not validated here:
        an entry its chain's role may not assert then changes no rule parameter)."""
        e = signed.entry
        counted = True
        if e.type == "RuleParameterSet" and recorded_us is not None:
            try:
                self.registry.authorized(e, index, recorded_us)
            except Invalid:
                counted = False  # counted nowhere (DOMAIN.md "Authority")
        if e.type in REGISTRY_TYPES or index == 0:
            try:
                self._registry_for_write().apply(signed, index)
            except RegistryError:
                if strict:
                    raise
                self.registry.size = index + 1
        elif self._journal is None:
            self.registry.size = index + 1  # (while journaling: set on commit)
        old_size, old_hash = self.size, self.last_hash
        if self._journal is not None:
            self._journal.append(lambda: (setattr(self, "size", old_size), setattr(self, "last_hash", old_hash)))
            self.pending[(e.chain, e.seq)] = (signed.hash, e.type)
            key = (e.chain, e.seq)
            self._journal.append(lambda: self.pending.pop(key, None))
        self.size = index + 1
        self.last_hash = signed.hash
        self._put(self.heads, e.chain, (e.seq, signed.hash))
        handler = _HANDLERS.get(e.type) if counted else None
        if handler is not None:
            try:
                handler(self, e, signed, index)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # an odd body (not written through the catalogue): nothing more to learn

    # --- handlers (the body was checked by the catalogue when written through the API) -----
    def _party_registered(self, e, signed, index) -> None:
        b = e.body
        party = b["party"]
        if party in self.parties:
            return
        d = Designation(time_us(b.get("valid_from")) or 0, frozenset(b.get("roles") or ()),
                        time_us(b.get("valid_until")), index)
        self._put(self.parties, party, PartyInfo(party, str(b.get("name", "")), (d,), index))

    def _designation_changed(self, e, signed, index) -> None:
        b = e.body
        info = self.parties.get(b["party"])
        if info is None:
            return
        prev = info.current
        since = time_us(b.get("valid_from"))
        d = Designation(
            since if since is not None else prev.since_us,
            frozenset(b["roles"]) if isinstance(b.get("roles"), list) else prev.roles,
            time_us(b["valid_until"]) if "valid_until" in b else prev.valid_until_us, index)
        self._put(self.parties, info.party, replace(info, name=str(b.get("name", info.name)),
                                                    designations=info.designations + (d,)))

    def _batch_issued(self, e, signed, index) -> None:
        b = e.body
        key = (b["year"], b["batch_no"], b["holder"])
        if key in self.quota_batches:
            return
        amounts = {"MINING_ROCK": _dec(b.get("mining_rock_t_reo")), "MINING_IONIC": _dec(b.get("mining_ionic_t_reo")),
                   "SEPARATION": _dec(b.get("separation_t_reo"))}
        self._put(self.quota_batches, key, QuotaBatch(b["year"], b["batch_no"], b["holder"],
                                                      b.get("basis", "OUTPUT"), bool(b.get("reserve", False)),
                                                      amounts, index))

    def _parameter_set(self, e, signed, index) -> None:
        b = e.body
        if isinstance(b.get("name"), str) and isinstance(b.get("value"), str):
            self._put(self.params, b["name"], b["value"])

    def _lot(self, lot: Any, e, index: int) -> None:
        if isinstance(lot, str) and lot not in self.lots:
            self._put(self.lots, lot, LotOrigin(lot, e.chain, e.seq, e.type, index))

    def _lot_created(self, e, signed, index) -> None:
        self._lot(e.body[LOT_CREATORS[e.type]], e, index)

    def _batch_recorded(self, e, signed, index) -> None:
        b = e.body
        if isinstance(b.get("batch"), str) and (e.chain, b["batch"]) not in self.batches:  # (the first)
            self._put(self.batches, (e.chain, b["batch"]), index)
        for out in b.get("outputs") or ():
            if isinstance(out, dict):
                self._lot(out.get("lot"), e, index)

    def _shipped(self, e, signed, index) -> None:
        b = e.body
        key = (e.chain, b["transfer_id"])
        if key in self.shipments or not isinstance(b.get("buyer"), str):
            return
        self._put(self.shipments, key, Shipment(e.chain, b["transfer_id"], b["buyer"], index))

    def _received(self, e, signed, index) -> None:
        b = e.body
        key = (b["seller"], b["transfer_id"])
        s = self.shipments.get(key)
        if s is not None and s.buyer == e.chain and s.received_index is None:
            self._put(self.shipments, key, replace(s, received_index=index))


_HANDLERS: dict[str, Callable[[WriteState, Any, SignedEntry, int], None]] = {
    "PartyRegistered": WriteState._party_registered,
    "PartyDesignationChanged": WriteState._designation_changed,
    "QuotaBatchIssued": WriteState._batch_issued,
    "RuleParameterSet": WriteState._parameter_set,
    "MineralProductProduced": WriteState._lot_created,
    "ImportReceived": WriteState._lot_created,
    "SecondaryFeedReceived": WriteState._lot_created,
    "SeparationBatchRecorded": WriteState._batch_recorded,
    "MetalSmelted": WriteState._batch_recorded,
    "TransferShipped": WriteState._shipped,
    "TransferReceived": WriteState._received,
}
