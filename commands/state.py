"""The write path's state: what the command API must know to check references.

Built from the ledger's records in log order (``store.records(start)``), so it can start from
any position and catch up; nothing here reads or writes storage by itself.

* the key registry (a replica of :class:`reledger.ledger.registry.Registry`: keys, current roles);
* chain heads (seq, entry hash);
* parties and their designations over business time (roles, valid from/until; group
  membership is the projections' business: the write path checks nothing by it);
* shipments by (seller, transfer id): buyer, and whether (and where) received;
* quota batches by (year, batch no, holder);
* lots by id (the entry that created each lot) and production batch ids per chain;
* the command ids of the log, as a :class:`MaybeRecorded` filter: "certainly not recorded"
  (nothing to look up) or "maybe" (the caller asks the database).

Changes made while validating a submission are journaled (:meth:`WriteState.begin`):
:meth:`WriteState.mark` and :meth:`WriteState.rollback` undo a refused group,
:meth:`WriteState.commit` keeps what the store accepted, :meth:`WriteState.abort` undoes all. Applying is tolerant: an entry the catalogue would refuse (e.g. written through the
store directly) changes only what can be read from it.

Memory grows with parties, keys, chains, lots, shipments and production batches (a few hundred
bytes each: about 10^6 of them for a national year), and by 1.5 bytes per log entry for the
command id filter; catching up parses every entry once.
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


class MaybeRecorded:
    """The (chain, command id) pairs of the log, as a Bloom filter that grows: ``maybe(...)``
    is False only for a pair that was never added (no false negatives), and True for about 0.3%
    of the others at each size step (12 bits and 8 probes a pair; a new filter of twice the
    capacity when the last one is full). Pairs cannot be removed: one added for an entry that
    was then refused only makes its look-up happen. Hashes are per process (``hash``)."""

    BITS, PROBES = 12, 8

    def __init__(self, capacity: int = 1 << 14) -> None:
        self._filters: list[list] = []  # [bits, size in bits, capacity, count]
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        m = capacity * self.BITS
        self._filters.append([bytearray(m // 8 + 1), m, capacity, 0])

    def __len__(self) -> int:
        return sum(f[3] for f in self._filters)

    def add(self, chain: str, command_id: str) -> None:
        f = self._filters[-1]
        if f[3] >= f[2]:
            self._grow(f[2] * 2)
            f = self._filters[-1]
        bits, m = f[0], f[1]
        h = hash((chain, command_id))
        a, b = h & 0xFFFFFFFF, ((h >> 32) & 0xFFFFFFFF) | 1
        for i in range(self.PROBES):
            j = (a + i * b) % m
            bits[j >> 3] |= 1 << (j & 7)
        f[3] += 1

    def maybe(self, chain: str, command_id: str) -> bool:
        h = hash((chain, command_id))
        a, b = h & 0xFFFFFFFF, ((h >> 32) & 0xFFFFFFFF) | 1
        for bits, m, _, _ in self._filters:
            for i in range(self.PROBES):
                j = (a + i * b) % m
                if not bits[j >> 3] & (1 << (j & 7)):
                    break
            else:
                return True
        return False


class WriteState:
    """See the module docstring. Not thread-safe: the command API holds its lock around it."""

    def __init__(self) -> None:
        self.size = 0
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
        self.commands = MaybeRecorded()  # never rolled back (see MaybeRecorded)
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
    def catch_up(self, records: Iterable[Any]) -> int:
        """Apply stored records (``reledger.storage.reader.Record``) from position ``self.size`` on, in
        order. Returns how many were applied."""
        n = 0
        for rec in records:
            if rec.index < self.size:
                continue
            if rec.index != self.size:
                raise ValueError(f"state at {self.size} cannot apply log index {rec.index}")
            if rec.envelope is None:  # the events row is missing: the verifier reports it
                if rec.command_id is not None:
                    self.commands.add(rec.chain, rec.command_id)
                self.size = rec.index + 1
                self.registry.size = self.size
                continue
            signed = SignedEntry.parse(rec.envelope)
            self.apply(signed, rec.index, strict=False, recorded_us=rec.recorded_us)
            if rec.command_id is not None and (rec.chain, rec.command_id) != (signed.entry.chain,
                                                                            signed.entry.command_id):
                self.commands.add(rec.chain, rec.command_id)  # as the log row says (what a look-up finds)
            n += 1
        return n

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
        old_size = self.size
        if self._journal is not None:
            self._journal.append(lambda: setattr(self, "size", old_size))
            self.pending[(e.chain, e.seq)] = (signed.hash, e.type)
            key = (e.chain, e.seq)
            self._journal.append(lambda: self.pending.pop(key, None))
        self.size = index + 1
        self.commands.add(e.chain, e.command_id)
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
        if isinstance(b.get("batch"), str):
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
