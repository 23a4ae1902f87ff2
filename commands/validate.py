"""Write-path checks: authorization (who may assert which type) and reference checks.

Everything DESIGN.md "Write path rules" says is refused is refused here (or by the store) with
a :class:`~commands.catalogue.CommandError` naming the field and the reason; rule violations of
the regulation (over quota, negative stock, yield out of band, late report, designation expired,
lines of a receipt differing from the shipment, untraceable lots) are accepted and left to the
projections to flag.
"""

from __future__ import annotations

from typing import Callable

from reledger.ledger import rules
from reledger.ledger.authority import AUTHORIZED_ROLES, REGULATOR_TYPES as AUTHORITY_TYPES, who_may
from reledger.ledger.entry import SignedEntry
from reledger.ledger.registry import RegistryError

from .catalogue import SCHEMAS, CommandError, MAX_YEAR, MIN_YEAR, check_body, fail
from .state import WriteState

# who may assert which type: one table and one rule, in the auditor's folder (ledger/authority.py,
# rules.authorized), shared with `reledger verify` and the rule engine (which counts no entry
# that its chain's role may not assert: DOMAIN.md "Authority")
assert set(AUTHORIZED_ROLES) == set(SCHEMAS), "every catalogue type needs an authorization rule"

AUTHORIZATION_DOC = """
Every entry is on the chain of the party that signs it (the store refuses a key of another
party: `foreign_key`). On top of the key checks, the command API decides by role, with the one
rule of `ledger/authority.py` (`rules.authorized`, FORMAT.md 4.5) that `reledger verify` applies
to every entry of a log (an entry that breaks it was written below the API: verify fails naming
it, problem `authority`) and by which the projections count such an entry nowhere
(`UNAUTHORIZED_ENTRY`):

* **Refused** (`forbidden`, 403) when the type is not allowed for any role of the party.
  For regulator-only types (registry, keys, membership, totals, quota batches and cuts,
  inspections, violations, penalties) the party's *current* roles count (the latest
  PartyRegistered/PartyDesignationChanged in log order), and only while that designation is in
  force at the time the entry is recorded: a party that lost the REGULATOR role, or whose
  designation has not begun, has ended (`valid_until`) or is suspended, asserts none of them. For every other type, every role the party *has ever been
  designated with* counts, so that a late entry about a period when it was designated is
  recorded. Designations count from the entry after the one that records them (log order).
* **Accepted and flagged** (by projections, rule 1 of DOMAIN.md) when the party holds the role
  but is not designated for it at the entry's business time (`occurred_at` before `valid_from`,
  at or after `valid_until`, or while its roles were suspended): the fact is recorded, never
  hidden. The state's `PartyInfo.roles_at(t)` answers designation at a business time.
* Enterprise roles are MINE, SEPARATION, SMELTER, RECYCLER, EXPORTER, MAGNET ("any obliged
  enterprise"; magnet makers are obliged since 2025). AUDITOR asserts nothing. CorrectionRecorded is also open to GROUP and REGULATOR
  (a party corrects its own entries only: the corrected entry must be on its own chain).
* Reference checks (404/409) come after the role check: a receipt must cite a shipment
  (seller, transfer id) shipped to the receiving party and not yet received (an unknown
  shipment and one shipped to another party get the same answer, so that nobody learns what a
  seller shipped to others); a sub-allocation
  must cite a batch (year, batch no) issued to the group; cited entries ({chain, seq, hash})
  must exist with that hash and, for penalties, cuts and corrections, be of the right type or
  chain; new lot ids, transfer ids, batch ids, parties, keys and quota batches must be new.
""".strip()


WRITE_PATH_DOC = """
`reledger.commands.api.CommandAPI(store)` checks each entry of a submission in this order and stops at
the first refusal (the whole group is refused, nothing is written):

1. parsing: canonical msgpack envelope and content (`malformed`, 400; floats, non-canonical bytes);
2. idempotency: the same command id with the same bytes answers the original receipt
   (`duplicate: true`); with other bytes `command_conflict` (409);
3. schema: type known (`unknown_type`), body as this catalogue says (`missing_field`,
   `unknown_field`, `wrong_type`, `bad_value`, `out_of_range`, `bad_enum`, `inconsistent`; 400),
   business time within 1990..2099;
4. key and signature: registered party, key authorized for the chain, not revoked, within its
   validity, registry types by a regulator, valid signature (403: `unregistered`, `unknown_key`,
   `foreign_key`, `revoked_key`, `expired_key`, `forbidden`, `signature`);
5. chain: seq and prev continue the party's chain (`conflict`, 409);
6. role: see "Authorization" (`forbidden`, 403);
7. references (404 `unknown_reference`; 409 `duplicate`, `already_received`, `reference_mismatch`).

Then the store appends (and checks keys, signatures, chains and command ids again under its
lock; its refusals keep their code and message). An error carries `code`, `status`, `message`
(starting with the field), `field` (`body.lines[0].kg`), `position` (entry in its group),
`chain`, `seq`, and `group` (in a group commit). A receipt carries `index`, `chain`, `seq`,
`entry_hash`, `recorded_at`, `duplicate` and `findings` (filled by the projections' rule engine
through the API's `findings_hook`; empty without one).
""".strip()


def role_rule_text(type_name: str) -> str:
    return who_may(type_name)


# --- checks --------------------------------------------------------------------------------

def check_schema(signed: SignedEntry, params: dict | None = None) -> dict:
    """Type known, body valid (with the rule parameters ``params`` in force: the tolerance of
    declared REO), business time sane; the parsed body."""
    e = signed.entry
    parsed = check_body(e.type, e.body, params)
    year = int(e.occurred_at[:4])
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise fail("out_of_range", "occurred_at", f"year {year} is absurd (must be {MIN_YEAR}..{MAX_YEAR})")
    return parsed


SignatureCheck = Callable[[SignedEntry, bytes], bool]


def check_key(state: WriteState, signed: SignedEntry, index: int, recorded_us: int,
              signature_valid: SignatureCheck | None = None) -> None:
    """Key valid for the chain at ``index`` (registered party, authorized, not revoked, not
    expired, registry types by a regulator), and the signature (``signature_valid(signed,
    public_key)``, e.g. answered from a check made in parallel beforehand)."""
    try:
        public_key = state.registry.key_for(signed, index, recorded_us)
    except RegistryError as err:
        raise CommandError.make(err.code, str(err), field=err.field) from None
    ok = signature_valid(signed, public_key) if signature_valid else signed.signature_valid(public_key)
    if not ok:
        raise CommandError.make("signature", f"sig: not a valid signature by key {signed.entry.key_id}",
                                field="sig")


def authorize(state: WriteState, signed: SignedEntry, recorded_us: int, index: int | None = None) -> None:
    """Refuse a type that the party's roles may not assert at ``index`` (default: the next
    position) recorded at ``recorded_us``: ledger/rules.py ``authorized``, the rule `reledger
    verify` applies (see AUTHORIZATION_DOC)."""
    try:
        state.registry.authorized(signed.entry, state.size if index is None else index, recorded_us)
    except rules.Invalid as err:
        raise fail("forbidden", "type", err.message) from None


def check_chain(state: WriteState, signed: SignedEntry) -> None:
    """seq and prev continue the chain (same messages as the store)."""
    e = signed.entry
    head_seq, head_hash = state.head(e.chain)
    if e.seq != head_seq + 1:
        raise CommandError.make("conflict", f"seq: chain {e.chain} is at seq {head_seq}; the next entry must "
                                            f"have seq {head_seq + 1}, not {e.seq}", field="seq")
    if e.prev != head_hash:
        raise CommandError.make("conflict", f"prev: does not match the hash of {e.chain} seq {head_seq} "
                                            f"({head_hash.hex()[:16]}...)", field="prev")


EntryLookup = Callable[[str, int], "tuple[bytes, str] | None"]


class References:
    """Reference checks of one entry against the state (and, for cited entries, the log)."""

    def __init__(self, state: WriteState, lookup: EntryLookup):
        self.state, self.lookup = state, lookup

    def check(self, signed: SignedEntry, body: dict) -> None:
        fn = getattr(self, "_" + signed.entry.type, None)
        if fn is not None:
            fn(signed.entry, body)

    # helpers
    def _party(self, party: str, field: str, role: str | None = None) -> None:
        if party not in self.state.registry.roles:
            raise fail("unknown_reference", field, f"party {party} is not registered")
        if role is not None and role not in self.state.roles_ever(party):
            raise fail("reference_mismatch", field, f"party {party} is not a {role} party "
                                                    f"(roles: {', '.join(sorted(self.state.roles_ever(party))) or 'none'})")

    def _entry(self, ref: dict, field: str, types: tuple[str, ...] = (), chain: str | None = None) -> None:
        if chain is not None and ref["chain"] != chain:
            raise fail("reference_mismatch", f"{field}.chain",
                       f"a party cites here entries of its own chain ({chain}), not of {ref['chain']}")
        found = self.lookup(ref["chain"], ref["seq"])
        if found is None:
            raise fail("unknown_reference", field, f"no entry {ref['chain']}:{ref['seq']} in the ledger")
        entry_hash, type_name = found
        if entry_hash != ref["hash"]:
            raise fail("reference_mismatch", f"{field}.hash",
                       f"entry {ref['chain']}:{ref['seq']} has hash {entry_hash.hex()[:16]}..., not "
                       f"{ref['hash'].hex()[:16]}...")
        if types and type_name not in types:
            raise fail("reference_mismatch", field, f"entry {ref['chain']}:{ref['seq']} is a {type_name}, "
                                                    f"not a {' or '.join(types)}")

    def _new_lot(self, lot: str, field: str, chain: str) -> None:
        origin = self.state.lots.get(lot)
        if origin is None:
            return
        if origin.chain == chain:
            raise fail("duplicate", field, f"lot {lot} was already created by {origin.chain}:{origin.seq} "
                                           f"({origin.type}); lot ids are unique in the ledger")
        # another party's lot: say no more than that the id is taken
        raise fail("duplicate", field, f"lot id {lot} is already taken; lot ids are unique in the ledger "
                                       f"(prefix them with your party id)")

    def _new_batch(self, chain: str, batch: str, field: str) -> None:
        if (chain, batch) in self.state.batches:
            raise fail("duplicate", field, f"batch {batch} was already recorded by {chain}")

    # registry
    def _PartyRegistered(self, e, b: dict) -> None:
        if b["party"] in self.state.parties or (b["party"] in self.state.registry.roles
                                                  and b["party"] != self.state.registry.root):
            raise fail("duplicate", "body.party", f"party {b['party']} is already registered")
        if "group" in b:
            self._party(b["group"], "body.group", "GROUP")

    def _PartyDesignationChanged(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        if "group" in b:
            self._party(b["group"], "body.group", "GROUP")

    def _KeyAuthorized(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        if b["key_id"] in self.state.registry.keys:
            raise fail("duplicate", "body.key_id", f"key {b['key_id']} is already authorized")

    def _KeyRevoked(self, e, b: dict) -> None:
        rec = self.state.registry.keys.get(b["key_id"])
        if rec is None or rec.party != b["party"]:
            raise fail("unknown_reference", "body.key_id", f"party {b['party']} has no key {b['key_id']}")
        if rec.revoked_at is not None:
            raise fail("duplicate", "body.key_id", f"key {b['key_id']} is already revoked")

    def _GroupMembershipChanged(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        self._party(b["group"], "body.group", "GROUP")

    # quota
    def _QuotaBatchIssued(self, e, b: dict) -> None:
        self._party(b["holder"], "body.holder")
        if self.state.quota_batches.get((b["year"], b["batch_no"], b["holder"])) is not None:
            raise fail("duplicate", "body.batch_no", f"batch {b['batch_no']} of {b['year']} was already issued "
                                                     f"to {b['holder']}")

    def _QuotaSubAllocated(self, e, b: dict) -> None:
        y, n = b["batch"]["year"], b["batch"]["batch_no"]
        if self.state.quota_batches.get((y, n, e.chain)) is None:
            raise fail("unknown_reference", "body.batch", f"{e.chain} holds no batch {n} of {y}")
        self._party(b["enterprise"], "body.enterprise")

    def _QuotaReduced(self, e, b: dict) -> None:
        self._party(b["holder"], "body.holder")
        self._entry(b["penalty"], "body.penalty", ("PenaltyImposed",))

    # flow
    def _MineralProductProduced(self, e, b: dict) -> None:
        self._new_lot(b["lot"], "body.lot", e.chain)

    _ImportReceived = _MineralProductProduced
    _SecondaryFeedReceived = _MineralProductProduced

    def _SeparationBatchRecorded(self, e, b: dict) -> None:
        self._new_batch(e.chain, b["batch"], "body.batch")
        for i, out in enumerate(b["outputs"]):
            self._new_lot(out["lot"], f"body.outputs[{i}].lot", e.chain)

    _MetalSmelted = _SeparationBatchRecorded

    def _TransferShipped(self, e, b: dict) -> None:
        if b["buyer"] == e.chain:
            raise fail("inconsistent", "body.buyer", "a party does not ship to itself")
        self._party(b["buyer"], "body.buyer")
        if (e.chain, b["transfer_id"]) in self.state.shipments:
            raise fail("duplicate", "body.transfer_id", f"transfer {b['transfer_id']} was already shipped by "
                                                        f"{e.chain}")

    def _TransferReceived(self, e, b: dict) -> None:
        s = self.state.shipments.get((b["seller"], b["transfer_id"]))
        if s is None or s.buyer != e.chain:
            # one answer for "unknown" and "shipped to another party": a buyer must not learn
            # what a seller shipped to others (reads are authorized, errors too)
            raise fail("unknown_reference", "body.transfer_id",
                       f"no shipment {b['transfer_id']} from {b['seller']} to {e.chain} in the ledger")
        if s.received_index is not None:
            raise fail("already_received", "body.transfer_id",
                       f"shipment {b['transfer_id']} from {b['seller']} was already received "
                       f"(log index {s.received_index})")

    # reporting
    def _MonthlyFlowReportSubmitted(self, e, b: dict) -> None:
        if b.get("last_seq", 0) >= e.seq:
            raise fail("unknown_reference", "body.last_seq", f"a report covers earlier entries of its chain: "
                                                             f"last_seq must be below {e.seq}")

    # enforcement
    def _InspectionRecorded(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        for i, ref in enumerate(b.get("evidence", ())):
            self._entry(ref, f"body.evidence[{i}]")

    def _ViolationFound(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        for i, ref in enumerate(b["evidence"]):
            self._entry(ref, f"body.evidence[{i}]")
        if "inspection" in b:
            self._entry(b["inspection"], "body.inspection", ("InspectionRecorded",))

    def _PenaltyImposed(self, e, b: dict) -> None:
        self._party(b["party"], "body.party")
        self._entry(b["violation"], "body.violation", ("ViolationFound",))

    def _CorrectionRecorded(self, e, b: dict) -> None:
        self._entry(b["corrects"], "body.corrects", chain=e.chain)
        for i, ref in enumerate(b.get("replaced_by", ())):
            self._entry(ref, f"body.replaced_by[{i}]", chain=e.chain)


def validate_entry(state: WriteState, signed: SignedEntry, index: int, recorded_us: int,
                   lookup: EntryLookup, signature_valid: SignatureCheck | None = None) -> dict:
    """Every write-path check of one new entry, in order: schema (400), key and signature (403),
    chain continuity (409), role (403), references (404/409). Returns the parsed body. The
    caller applies the entry to ``state`` when it passes."""
    body = check_schema(signed, state.params)
    check_key(state, signed, index, recorded_us, signature_valid)
    check_chain(state, signed)
    if index == 0:  # the genesis: the key registry's own rule (a self-authorized regulator key)
        return body
    authorize(state, signed, recorded_us, index)
    References(state, lookup).check(signed, body)
    return body


__all__ = ["AUTHORIZED_ROLES", "AUTHORITY_TYPES", "AUTHORIZATION_DOC", "WRITE_PATH_DOC", "References", "authorize", "check_chain",
           "check_key", "check_schema", "role_rule_text", "validate_entry"]
