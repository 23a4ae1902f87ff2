"""A tamper corpus: small logs, each the valid sample log with ONE mutation, named by the
mutation (in the style of transparency-dev's test vectors), and the problems every verifier of
reledger must name for it (``PROBES``, the table at the end).

The sample log (deterministic keys, record times T0 + index seconds):

    0 MIIT:1 KeyAuthorized   the genesis (MIIT's own key)
    1 MIIT:2 PartyRegistered MIIT
    2 MIIT:3 KeyAuthorized   the checkpoint key, named ORIGIN
    3 MIIT:4 PartyRegistered MINE
    4 MIIT:5 KeyAuthorized   MINE's key
    5 MINE:1 MiningOutput
    6 MINE:2 MiningOutput
    7 MINE:3 MiningOutput
    checkpoints of size 5 and 8 (with chain heads), signed by the checkpoint key

A probe builds its log from that script (entries, record times, checkpoints) with its mutation
applied, and recomputes everything the mutation does not aim at (entry hashes, leaves, stored
Merkle nodes, the checkpoints' roots and chain heads), so that exactly one rule is broken.
``Log`` holds such a log as the rows a database would hold, and can write them into a database
(raw SQL, as an attacker with database access would) and cut a party's bundle from them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from reledger.ledger import heads as chain_heads, merkle
from reledger.ledger.bundle import encode_bundle
from reledger.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint, sign_note
from reledger.ledger.encoding import micros_to_time_text, parse_time, time_to_micros
from reledger.ledger.entry import SignedEntry, make_entry
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.ledger.registry import REGISTRY_TYPES
from reledger.storage.reader import Record

T0 = "2024-01-01T00:00:00Z"
T0_US = time_to_micros(parse_time(T0))
ORIGIN = "reledger.corpus/log"
MIIT, MINE = "MIIT", "9111000000MINE0001"


def _key(party: str, n: int, purpose: str = "entries") -> SigningKey:
    return SigningKey.from_seed(party, bytes([n]) * 32, purpose)


REG_KEY = _key(MIIT, 1)
CP_KEY = _key(MIIT, 2, "checkpoint")
CP_KEY_2 = _key(MIIT, 3, "checkpoint")
MINE_KEY = _key(MINE, 4)
MINE_KEY_2 = _key(MINE, 5)
WITNESS = NoteSigner("witness.example/w1", _key("W", 6, "checkpoint").private_key)


def note_signer(key: SigningKey = CP_KEY) -> NoteSigner:
    return NoteSigner(ORIGIN, key.private_key)


def vkey(key: SigningKey = CP_KEY) -> str:
    return note_signer(key).verifier().vkey()


@dataclass
class Script:
    """What a probe writes: signed entries with their record times, then checkpoints."""

    entries: list[SignedEntry] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    # (size, how to sign its note: body bytes -> note bytes; None = the checkpoint key)
    checkpoints: list[tuple[int, Callable[[Checkpoint], bytes] | None]] = field(default_factory=list)

    def add(self, s: SignedEntry, at: int | None = None) -> None:
        self.entries.append(s)
        self.times.append(at if at is not None else T0_US + len(self.times) * 1_000_000)


def sample(mine_entries: int = 3) -> tuple[Script, ChainSigner, ChainSigner]:
    """The sample log's script up to MINE's entries (the caller adds the checkpoints)."""
    reg = ChainSigner(REG_KEY)
    sc = Script()
    for s in genesis_entries(reg, CP_KEY, name="Ministry", origin=ORIGIN, at=T0):
        sc.add(s)
    sc.add(reg.sign("PartyRegistered", {"party": MINE, "name": "a mine", "roles": ["MINE"], "valid_from": T0}, T0))
    sc.add(reg.sign("KeyAuthorized", key_authorized_body(MINE_KEY, T0), T0))
    mine = ChainSigner(MINE_KEY)
    for i in range(mine_entries):
        sc.add(mine.sign("MiningOutput", {"qty": f"{i + 1}.5"}, T0, _command(i)))
    return sc, reg, mine


def _command(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def resign(s: SignedEntry, key: SigningKey = MINE_KEY, **change) -> SignedEntry:
    """``s`` with fields of its content changed and signed again by ``key``."""
    e = s.entry
    fields = dict(seq=e.seq, prev=e.prev, type=e.type, occurred_at=e.occurred_at, body=e.body,
                  command_id=e.command_id, chain=e.chain)
    fields.update(change)
    return make_entry(key, **fields)


# --- a log as a database holds it --------------------------------------------------------------

@dataclass
class Log:
    records: list[Record]
    checkpoints: list[tuple[int, bytes, bytes]]  # (size, root, note) rows

    def write(self, url: str) -> None:
        """Write the rows into a fresh ledger database at ``url`` (tables made by the store,
        rows inserted raw with the append-only triggers off)."""
        from helpers import drop_triggers, raw_connection, tables

        from reledger.storage.store import LedgerStore

        LedgerStore(url).close()
        drop_triggers(url)
        t = tables(url)
        with raw_connection(url) as conn:
            cur = conn.cursor()
            for r in self.records:
                cur.execute(t.q("INSERT INTO {events} (originator_id, originator_version, topic, state) "
                                "VALUES (?, ?, ?, ?)"), (r.chain, r.seq, r.type, r.envelope))
                cur.execute(t.q("INSERT INTO {log} (idx, chain, seq, type, command_id, entry_hash, recorded_us, "
                                "nodes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                            (r.index, r.chain, r.seq, r.type, r.command_id, r.entry_hash, r.recorded_us, r.nodes))
            for size, root, note in self.checkpoints:
                cur.execute(t.q("INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, ?)"),
                            (size, root, note, T0_US))

    def leaves(self) -> list[bytes]:
        return [r.nodes[:32] for r in self.records]

    def bundle(self, party: str) -> bytes:
        """The party's bundle against the largest checkpoint, as ``reledger export`` cuts it."""
        size, _, note = max(self.checkpoints, key=lambda c: c[0])
        nodes = _perfect_nodes(self.leaves()[:size])
        get = lambda level, index: nodes[(level, index)]  # noqa: E731
        chosen = [r for r in self.records[:size] if r.chain == party or r.type in REGISTRY_TYPES]
        entries = [{"index": r.index, "recorded_at": r.recorded_at, "envelope": r.envelope,
                    "proof": merkle.inclusion_proof(r.index, size, get)} for r in chosen]
        consistency = [{"note": n, "proof": merkle.consistency_proof(s, size, get) if s else []}
                       for s, _, n in sorted(self.checkpoints) if s < size]
        heads = _heads(self.records[:size])
        position, count, proof = chain_heads.proof(heads, party)
        return encode_bundle(party, note, entries, consistency, {"position": position, "count": count,
                                                                 "proof": proof})


def _perfect_nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    f = merkle.Frontier()
    out = {}
    for leaf in leaves:
        for level, index, h in f.append(leaf):
            out[(level, index)] = h
    return out


def _heads(records: list[Record]) -> dict[str, tuple[int, bytes]]:
    heads: dict[str, tuple[int, bytes]] = {}
    for r in records:
        if r.seq > heads.get(r.chain, (0, b""))[0]:
            heads[r.chain] = (r.seq, r.entry_hash)
    return heads


def build(sc: Script) -> Log:
    """The rows of the log the script writes: leaves, stored nodes, signed checkpoints."""
    records, tree = [], []
    for i, (s, at) in enumerate(zip(sc.entries, sc.times)):
        leaf = merkle.leaf_hash(_leaf(s, i, at))
        nodes = merkle.append_leaf(tree, i, leaf)
        e = s.entry
        records.append(Record(i, e.chain, e.seq, e.type, s.hash, at, nodes, s.envelope, e.command_id))
    cps = []
    for size, sign in sc.checkpoints:
        root = merkle.fold(_frontier(records[:size]).hashes)
        cp = Checkpoint(ORIGIN, size, root, (chain_heads.line(_heads(records[:size])),))
        note = sign(cp) if sign is not None else sign_checkpoint(cp, note_signer())
        cps.append((size, cp.root, note))
    return Log(records, cps)


def _leaf(s: SignedEntry, index: int, at: int) -> bytes:
    from reledger.ledger.entry import leaf_bytes

    return leaf_bytes(s.hash, index, micros_to_time_text(at))


def _frontier(records: list[Record]) -> merkle.Frontier:
    f = merkle.Frontier()
    for r in records:
        f.append(r.nodes[:32])
    return f


# --- the probes ---------------------------------------------------------------------------------

def _standard(sc: Script) -> Script:
    sc.checkpoints += [(5, None), (len(sc.entries), None)]
    return sc


def p_clean() -> Log:
    return build(_standard(sample()[0]))


def p_sig_flipped_bit() -> Log:
    sc = _standard(sample()[0])
    s = sc.entries[7]
    sig = bytearray(s.signature)
    sig[10] ^= 0x01
    sc.entries[7] = SignedEntry.from_parts(s.content, bytes(sig))
    return build(sc)


def p_prev_wrong() -> Log:
    sc = _standard(sample()[0])
    sc.entries[7] = resign(sc.entries[7], prev=hashlib.sha256(b"another entry").digest())
    return build(sc)


def p_seq_skipped() -> Log:
    sc = _standard(sample()[0])
    sc.entries[7] = resign(sc.entries[7], seq=4)
    return build(sc)


def p_recorded_at_backwards() -> Log:
    sc = _standard(sample()[0])
    sc.times[7] = sc.times[6] - 1
    return build(sc)


def p_duplicate_command_id() -> Log:
    sc = _standard(sample()[0])
    sc.entries[7] = resign(sc.entries[7], command_id=sc.entries[5].entry.command_id)
    return build(sc)


def p_key_revoked_before_use() -> Log:
    sc, reg, mine = sample(2)
    sc.add(reg.sign("KeyRevoked", {"party": MINE, "key_id": MINE_KEY.key_id, "reason": "lost"}, T0))
    sc.add(mine.sign("MiningOutput", {"qty": "3.5"}, T0, _command(2)))
    return build(_standard(sc))


def p_key_used_before_authorized() -> Log:
    sc, reg, mine = sample(2)
    mine.key = MINE_KEY_2
    sc.add(mine.sign("MiningOutput", {"qty": "3.5"}, T0, _command(2)))
    sc.add(reg.sign("KeyAuthorized", key_authorized_body(MINE_KEY_2, T0), T0))
    return build(_standard(sc))


def p_checkpoint_origin_mismatch() -> Log:
    sc = sample()[0]
    other = lambda cp: sign_checkpoint(Checkpoint("other.example/log", cp.size, cp.root, cp.extensions),  # noqa
                                       note_signer())
    sc.checkpoints += [(5, None), (8, other)]
    return build(sc)


def p_checkpoint_size0_nonempty_root() -> Log:
    sc = _standard(sample()[0])
    sc.checkpoints.insert(0, (0, lambda cp: sign_checkpoint(
        Checkpoint(ORIGIN, 0, hashlib.sha256(b"not empty").digest()), note_signer())))
    return build(sc)


def p_checkpoint_signed_before_its_key() -> Log:
    sc = _standard(sample()[0])
    sc.checkpoints.insert(0, (2, None))  # the checkpoint key is authorized at index 2: not before size 2
    return build(sc)


def p_checkpoint_key_rotated() -> Log:
    sc, reg, mine = sample()
    sc.add(reg.sign("KeyAuthorized", key_authorized_body(CP_KEY_2, T0, name=ORIGIN, reason="rotation"), T0))
    sc.add(reg.sign("KeyRevoked", {"party": MIIT, "key_id": CP_KEY.key_id, "reason": "rotation"}, T0))
    sc.add(mine.sign("MiningOutput", {"qty": "4.5"}, T0, _command(3)))
    sc.checkpoints += [(5, None), (8, None), (len(sc.entries), lambda cp: sign_checkpoint(cp, note_signer(CP_KEY_2)))]
    return build(sc)


def p_note_unknown_signature_line() -> Log:
    sc = sample()[0]
    sc.checkpoints += [(5, None), (8, lambda cp: sign_note(cp.body(), [note_signer(), WITNESS]))]
    return build(sc)


def p_note_repeated_signature_line() -> Log:
    sc = sample()[0]
    sc.checkpoints += [(5, None), (8, lambda cp: sign_note(cp.body(), [note_signer(), note_signer()]))]
    return build(sc)


def p_merkle_node_altered() -> Log:
    log = build(_standard(sample()[0]))
    r = log.records[6]
    log.records[6] = Record(r.index, r.chain, r.seq, r.type, r.entry_hash, r.recorded_us,
                            r.nodes[:32] + bytes(32), r.envelope, r.command_id)
    return log


def p_unauthorized_type() -> Log:
    """The mine signs a QuotaBatchIssued (a regulator's type) for itself, with its own valid key,
    chain and Merkle leaf all proper: written below the command API (which refuses it)."""
    sc, reg, mine = sample(2)
    sc.add(mine.sign("QuotaBatchIssued", {"year": 2024, "batch_no": 9, "document_no": "FAKE", "holder": MINE,
                                          "mining_rock_t_reo": "1000000", "mining_ionic_t_reo": "0",
                                          "separation_t_reo": "0"}, T0, _command(2)))
    return build(_standard(sc))


def p_unauthorized_regulator_expired() -> Log:
    """MIIT's own designation (index 1) ends before the record time of its last entry, a
    PartyRegistered: a regulator whose designation has ended asserts no regulator type."""
    sc, reg, mine = sample()
    sc.entries[1] = reg_resign(sc.entries[1], body={**sc.entries[1].entry.body, "valid_until": "2024-01-01T00:00:06Z"})
    for i in range(2, 5):  # MIIT's later entries link to the changed entry
        sc.entries[i] = reg_resign(sc.entries[i], prev=sc.entries[i - 1].hash)
    sc.add(reg_resign(sc.entries[3], seq=6, prev=sc.entries[4].hash, command_id=_command(90),
                      body={**sc.entries[3].entry.body, "party": "9111000000MINE0002", "name": "a second mine"}))
    return build(_standard(sc))


def reg_resign(s: SignedEntry, **change) -> SignedEntry:
    return resign(s, REG_KEY, **change)


@dataclass(frozen=True)
class Probe:
    name: str
    build: Callable[[], Log]
    problems: tuple[tuple[str, int], ...]  # (code, log index) every whole-log verifier names
    append: str | None = None  # the store's refusal code when the mutated entry is appended
    in_bundle: bool = True  # the mutation is visible in MINE's bundle
    trusted: bool = False  # verify with the checkpoint key pinned (vkey) instead of the registry's
    in_database: bool = True  # False: the log table's own constraints refuse the rows


PROBES = [
    Probe("clean", p_clean, ()),
    Probe("sig-flipped-bit", p_sig_flipped_bit, (("signature", 7),), append="signature"),
    Probe("prev-wrong", p_prev_wrong, (("chain", 7),), append="conflict"),
    Probe("seq-skipped", p_seq_skipped, (("chain", 7),), append="conflict"),
    Probe("recorded-at-backwards", p_recorded_at_backwards, (("time", 7),)),
    # the log table's UNIQUE (command_id, chain) refuses the row itself
    Probe("duplicate-command-id", p_duplicate_command_id, (("command", 7),), append="command_conflict",
          in_database=False),
    Probe("key-revoked-before-use", p_key_revoked_before_use, (("key", 8),), append="revoked_key"),
    Probe("key-used-before-authorized", p_key_used_before_authorized, (("key", 7),), append="unknown_key"),
    Probe("checkpoint-origin-mismatch", p_checkpoint_origin_mismatch, (("checkpoint", 7),)),
    Probe("checkpoint-size0-nonempty-root", p_checkpoint_size0_nonempty_root, (("checkpoint", 0),), trusted=True),
    Probe("checkpoint-signed-before-its-key", p_checkpoint_signed_before_its_key, (("checkpoint", 1),)),
    Probe("checkpoint-key-rotated", p_checkpoint_key_rotated, ()),
    Probe("note-unknown-signature-line", p_note_unknown_signature_line, ()),
    Probe("note-repeated-signature-line", p_note_repeated_signature_line, (("checkpoint", 7),)),
    Probe("merkle-node-altered", p_merkle_node_altered, (("merkle", 6),), in_bundle=False),
    # DOMAIN.md "Authority" (FORMAT.md 4.5): the store checks keys, not roles (the command API
    # refuses these with `forbidden`); every verifier names the entry
    Probe("unauthorized-type", p_unauthorized_type, (("authority", 7),)),
    Probe("unauthorized-regulator-expired", p_unauthorized_regulator_expired, (("authority", 8),)),
]
