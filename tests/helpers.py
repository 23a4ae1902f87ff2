"""Shared builders for the ledger tests: a ledger with its genesis, parties and keys, signed
entries, and raw SQL access to the database (as an attacker with DB access would have).

Import from tests as ``from helpers import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from reledger.ledger.checkpoint import NoteSigner
from reledger.ledger.encoding import time_text
from reledger.ledger.entry import SignedEntry, make_entry
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.storage.reader import DatabaseURL, Tables
from reledger.storage.store import LedgerStore

T0 = "2024-01-01T00:00:00Z"
ORIGIN = "reledger.test/log"
REGULATOR_ID = "MIIT"


def seeded_key(party: str, n: int, purpose: str = "entries") -> SigningKey:
    """A deterministic key (seed from ``n``) so that failures reproduce."""
    return SigningKey.from_seed(party, n.to_bytes(4, "big") * 8, purpose)


def future_time(days: int = 3650) -> str:
    return time_text(datetime.now(timezone.utc) + timedelta(days=days))


def past_time(days: int = 1) -> str:
    return time_text(datetime.now(timezone.utc) - timedelta(days=days))


@dataclass
class Ledger:
    """A store plus the keys of the people writing to it."""

    store: LedgerStore
    regulator: ChainSigner
    checkpoint_key: SigningKey
    note_signer: NoteSigner
    parties: dict[str, ChainSigner] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.store.url

    def close(self) -> None:
        self.store.close()

    # --- registry ------------------------------------------------------------------
    def register(self, party: str, roles: Sequence[str] = ("MINE",), *, key: SigningKey | None = None,
                 valid_until: str | None = None, valid_from: str = T0) -> ChainSigner:
        """Register ``party`` with ``roles`` and authorize a key for it (one group)."""
        key = key or SigningKey.generate(party)
        self.store.append([
            self.regulator.sign("PartyRegistered", {"party": party, "name": f"party {party}",
                                                    "roles": list(roles), "valid_from": valid_from}, T0),
            self.regulator.sign("KeyAuthorized", key_authorized_body(key, valid_from, valid_until=valid_until), T0),
        ])
        signer = ChainSigner(key)
        self.parties[party] = signer
        return signer

    def authorize(self, key: SigningKey, *, valid_from: str = T0, valid_until: str | None = None):
        return self.store.append([self.regulator.sign(
            "KeyAuthorized", key_authorized_body(key, valid_from, valid_until=valid_until), T0)])

    def revoke(self, party: str, key_id: str):
        return self.store.append([self.regulator.sign(
            "KeyRevoked", {"party": party, "key_id": key_id, "reason": "compromised"}, T0)])

    def checkpoint(self) -> bytes:
        return self.store.checkpoint(self.note_signer)

    # --- ordinary entries ------------------------------------------------------------
    def facts(self, party: str, n: int, type: str = "MiningOutput") -> list[SignedEntry]:
        """``n`` successive signed entries of ``party`` (the signer advances)."""
        s = self.parties[party]
        return [s.sign(type, {"qty": f"{i + 1}.5", "lot": f"L{s.seq + 1}"}, T0) for i in range(n)]

    def add(self, party: str, n: int = 1, type: str = "MiningOutput"):
        return self.store.append(self.facts(party, n, type))


def new_ledger(url: str, *, regulator_id: str = REGULATOR_ID, seed: int | None = None, clock=None) -> Ledger:
    """A fresh store at ``url`` holding only the genesis (3 entries); ``clock`` (microseconds)
    replaces the wall clock for record times."""
    if seed is None:
        rk = SigningKey.generate(regulator_id)
        ck = SigningKey.generate(regulator_id, "checkpoint")
    else:
        rk, ck = seeded_key(regulator_id, seed), seeded_key(regulator_id, seed + 1, "checkpoint")
    store = LedgerStore(url, clock=clock) if clock is not None else LedgerStore(url)
    reg = ChainSigner(rk)
    store.append(genesis_entries(reg, ck, name="Ministry", origin=ORIGIN, at=T0))
    return Ledger(store, reg, ck, NoteSigner(ORIGIN, ck.private_key))


def populated_ledger(url: str, parties: int = 2, per_party: int = 5) -> Ledger:
    """Genesis, ``parties`` registered mines with ``per_party`` entries each, interleaved."""
    led = new_ledger(url)
    names = [f"9111000000MINE{i:04d}" for i in range(parties)]
    for name in names:
        led.register(name)
    for _ in range(per_party):
        for name in names:
            led.add(name, 1)
    return led


def fact(signer: ChainSigner, type: str = "MiningOutput", body: dict | None = None, *,
         command_id: str | None = None, advance: bool = True) -> SignedEntry:
    body = body if body is not None else {"qty": "10"}
    if advance:
        return signer.sign(type, body, T0, command_id)
    return signer.peek(type, body, T0, command_id)


def entry_with(key: SigningKey, *, chain: str | None = None, seq: int = 1, prev: bytes = bytes(32),
               type: str = "MiningOutput", body: dict | None = None, command_id: str | None = None) -> SignedEntry:
    return make_entry(key, seq=seq, prev=prev, type=type, occurred_at=T0, body=body or {"qty": "1"},
                      command_id=command_id, chain=chain)


# --- raw SQL access ---------------------------------------------------------------------

def tables(url: str) -> Tables:
    u = DatabaseURL.parse(url)
    return Tables(u.backend, u.schema)


def is_pg(url: str) -> bool:
    return DatabaseURL.parse(url).backend == "postgres"


@contextmanager
def raw_connection(url: str) -> Iterator[Any]:
    """A raw autocommit DB-API connection (sqlite3 or psycopg)."""
    u = DatabaseURL.parse(url)
    if u.backend == "sqlite":
        conn = sqlite3.connect(u.path, isolation_level=None, timeout=30)
        try:
            yield conn
        finally:
            conn.close()
    else:
        import psycopg

        conn = psycopg.connect(u.conninfo(), autocommit=True)
        try:
            yield conn
        finally:
            conn.close()


def sql(url: str, statement: str, params: Sequence = ()) -> list[tuple]:
    """Run one statement; ``statement`` uses {events} {log} {checkpoints} and '?' placeholders."""
    t = tables(url)
    with raw_connection(url) as conn:
        cur = conn.cursor()
        cur.execute(t.q(statement), tuple(params))
        try:
            rows = cur.fetchall()
        except Exception:  # noqa: BLE001 - statements without a result set
            rows = []
        return [tuple(r) for r in rows]


def count(url: str, table: str) -> int:
    return sql(url, f"SELECT COUNT(*) FROM {{{table}}}")[0][0]


SQLITE_TRIGGERS = [f"{t}_no_{op}" for t in ("stored_events", "reledger_log", "reledger_checkpoints")
                   for op in ("update", "delete", "replace")] + ["reledger_log_gap_free"]


def drop_triggers(url: str) -> None:
    """What an attacker with DB access does first: remove the append-only triggers."""
    t = tables(url)
    with raw_connection(url) as conn:
        if t.backend == "sqlite":
            for trig in SQLITE_TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {trig}")
        else:
            for table in (t.events, t.log, t.checkpoints):
                conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
