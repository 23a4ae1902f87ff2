"""Projection tables: follow the log with tracking, snapshot the rule state, answer queries
at any point in time.

Tables (prefix ``reledger_p_``, beside the ledger's own in the same database):

``quota``, ``stock``, ``flow``, ``lots``, ``parties``, ``credit``, ``findings``
    delta rows, each with the log index ``idx`` of the entry that caused it and its business
    time ``occurred_us``. "As of log index N" is ``idx < N``; "valid at T" is
    ``occurred_us <= T``. An answer at a past point is therefore exactly what a rebuild of the
    log cut at that point gives, and costs a filtered aggregate, not a replay.
``tracking``  the number of log entries applied, written in the same transaction as the rows.
``snapshots`` the projector's rule state (pickled) at ``SNAPSHOT_EVERY`` x 1, 2, 4, 8 ... entries,
    so a restart rolls forward from the nearest snapshot instead of replaying the whole log.

On PostgreSQL :meth:`ProjectionStore.follow` wakes up on eventsourcing's subscription
(LISTEN/NOTIFY on the events table); on SQLite it polls.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable

from ledger.entry import EntryError, SignedEntry
from ledger.reader import DatabaseURL, LogReader, Record

from .model import Deltas, Finding, Projector

SNAPSHOT_EVERY = 20_000
PAGE = 2_000
P = "reledger_p_"
TABLES = ("quota", "stock", "flow", "lots", "parties", "credit", "findings", "tracking", "snapshots")


def _ddl(blob: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {P}quota (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, year INTEGER NOT NULL,"
        " party TEXT NOT NULL, category TEXT NOT NULL, kind TEXT NOT NULL, g BIGINT NOT NULL, grp TEXT)",
        # covering: a point-in-time quota query reads the index alone
        f"CREATE INDEX IF NOT EXISTS {P}quota_year ON {P}quota (year, idx, occurred_us, party, category, kind, grp, g)",
        f"CREATE TABLE IF NOT EXISTS {P}stock (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, party TEXT NOT NULL,"
        " lot TEXT NOT NULL, product TEXT, g BIGINT NOT NULL, reo_g BIGINT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {P}stock_party ON {P}stock (party, idx)",
        f"CREATE INDEX IF NOT EXISTS {P}stock_lot ON {P}stock (lot, idx)",
        f"CREATE TABLE IF NOT EXISTS {P}flow (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, kind TEXT NOT NULL,"
        " src_party TEXT, src_lot TEXT, dst_party TEXT, dst_lot TEXT, product TEXT, g BIGINT NOT NULL,"
        " reo_g BIGINT NOT NULL, ref TEXT)",
        f"CREATE INDEX IF NOT EXISTS {P}flow_src ON {P}flow (src_lot)",
        f"CREATE INDEX IF NOT EXISTS {P}flow_dst ON {P}flow (dst_lot)",
        f"CREATE TABLE IF NOT EXISTS {P}lots (lot TEXT PRIMARY KEY, party TEXT NOT NULL, product TEXT,"
        " origin TEXT NOT NULL, idx BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {P}parties (idx BIGINT NOT NULL, party TEXT NOT NULL, name TEXT, roles TEXT,"
        " province TEXT, grp TEXT, valid_from_us BIGINT, valid_until_us BIGINT)",
        f"CREATE TABLE IF NOT EXISTS {P}credit (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, party TEXT NOT NULL,"
        " kind TEXT NOT NULL, article TEXT, fine TEXT, cut_g BIGINT, detail TEXT)",
        f"CREATE TABLE IF NOT EXISTS {P}findings (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, rule TEXT NOT NULL,"
        " code TEXT NOT NULL, party TEXT NOT NULL, message TEXT NOT NULL, evidence TEXT NOT NULL, params TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {P}findings_party ON {P}findings (party, idx)",
        f"CREATE INDEX IF NOT EXISTS {P}findings_idx ON {P}findings (idx)",
        f"CREATE TABLE IF NOT EXISTS {P}tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {P}snapshots (position BIGINT PRIMARY KEY, state {blob} NOT NULL)",
    ]


class TrackingError(RuntimeError):
    """Another process moved the projections on meanwhile (the position did not match)."""


class ProjectionStore:
    """Projection tables in the ledger's database, and the follower that fills them."""

    name = "projections"

    def __init__(self, url: str):
        self.url = url
        self.db = DatabaseURL.parse(url)
        self.pg = self.db.backend == "postgres"
        self._lock = threading.RLock()
        if self.pg:
            import psycopg

            self.conn = psycopg.connect(self.db.conninfo(), autocommit=True)
            self.conn.execute(f'SET search_path TO "{self.db.schema}"')
            # Projections are rebuildable from the log and their tracking position commits with
            # their rows: a crash may lose the last projected pages (re-projected on restart),
            # never make them inconsistent. So they need not wait for the disk.
            self.conn.execute("SET synchronous_commit TO OFF")
        else:
            self.conn = sqlite3.connect(self.db.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # as above: durable enough for a rebuildable view
        self.projector: Projector | None = None
        self.create()

    # --- plumbing ---------------------------------------------------------------------
    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            cur = self.conn.cursor()
            cur.execute(self.q(sql), tuple(params))
            try:
                return [tuple(r) for r in cur.fetchall()]
            except Exception:  # noqa: BLE001 - statements without rows
                return []

    def _existing_tables(self) -> int:
        names = [P + t for t in TABLES]
        marks = ",".join("?" * len(names))
        if self.pg:
            sql = f"SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename IN ({marks})"
        else:
            sql = f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})"
        return int(self.execute(sql, names)[0][0])

    def create(self) -> None:
        with self._lock:
            if self._existing_tables() < len(TABLES):  # DDL only when needed (it locks, and costs on PostgreSQL)
                for stmt in _ddl("BYTEA" if self.pg else "BLOB"):
                    self.conn.execute(stmt)
            # the tracking row exists before any follower writes: the row lock (PostgreSQL FOR
            # UPDATE) then serializes followers from the first page on, instead of two of them
            # both seeing no row and colliding on its INSERT
            self.conn.execute(self.q(f"INSERT INTO {P}tracking (name, position) VALUES (?, 0) "
                                     "ON CONFLICT (name) DO NOTHING"), (self.name,))

    def drop(self) -> None:
        with self._lock:
            for t in TABLES:
                self.conn.execute(f"DROP TABLE IF EXISTS {P}{t}")
            self.projector = None

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()
            self._reader = None
        self.conn.close()

    def position(self) -> int:
        rows = self.execute(f"SELECT position FROM {P}tracking WHERE name = ?", (self.name,))
        return int(rows[0][0]) if rows else 0

    # --- following the log ---------------------------------------------------------------
    def _load_projector(self, reader: LogReader) -> Projector:
        """The rule state at the tracked position: the nearest snapshot, rolled forward."""
        pos = self.position()
        if self.projector is not None and self.projector.position == pos:
            return self.projector
        rows = self.execute(f"SELECT position, state FROM {P}snapshots WHERE position <= ? "
                            "ORDER BY position DESC LIMIT 1", (pos,))
        proj = pickle.loads(bytes(rows[0][1])) if rows else Projector()
        for rec in reader.iter_records(proj.position, pos):
            _apply_record(proj, rec)  # state only: the rows exist
        self.projector = proj
        return proj

    def _log_reader(self) -> LogReader:
        """One read-only connection to the log, kept open (opening one costs milliseconds, and
        the command API's findings hook catches up after every commit)."""
        if getattr(self, "_reader", None) is None:
            self._reader = LogReader(self.url)
        return self._reader

    def catch_up(self, limit: int | None = None, on_findings: Callable[[list[Finding]], None] | None = None) -> int:
        """Apply every entry not yet projected (at most ``limit``); returns how many."""
        with self._lock:
            try:
                return self._catch_up(self._log_reader(), limit, on_findings)
            except Exception:
                reader, self._reader = self._reader, None  # a broken connection is not reused
                if reader is not None:
                    try:
                        reader.close()
                    except Exception:  # noqa: BLE001
                        pass
                raise

    def _catch_up(self, reader: LogReader, limit: int | None, on_findings) -> int:
        proj = self._load_projector(reader)
        size = reader.queries.size(reader.cursor())[0]
        stop = size if limit is None else min(size, proj.position + limit)
        done = 0
        while proj.position < stop:
            start = proj.position
            page = reader.queries.records(reader.cursor(), start, min(stop, start + PAGE))
            if not page:
                break
            try:
                rows, findings = self._apply_page(proj, page)
                self._write(start, proj.position, rows, proj)
            except Exception:
                self.projector = None  # reload from tables + snapshot next time
                raise
            done += len(page)
            if on_findings and findings:
                on_findings(findings)
        return done

    def _apply_page(self, proj: Projector, page: list[Record]) -> tuple[dict[str, list], list[Finding]]:
        rows: dict[str, list] = {t: [] for t in ("quota", "stock", "flow", "lots", "parties", "credit", "findings")}
        findings: list[Finding] = []
        for rec in page:
            d, signed = _apply_record(proj, rec)
            occ = _occ(signed, rec.recorded_us) if signed is not None else rec.recorded_us
            i = rec.index
            rows["quota"] += [(i, occ, *r[:6]) for r in d.quota]
            rows["stock"] += [(i, occ, *r) for r in d.stock]
            rows["flow"] += [(i, occ, *r[:8], None if r[8] is None else str(r[8])) for r in d.flow]
            rows["lots"] += [(lot, party, product, origin, idx) for lot, party, product, origin, idx in d.lots]
            rows["parties"] += [(i, *r) for r in d.parties]
            rows["credit"] += [(i, occ, *r) for r in d.credit]
            for f in d.findings:
                rows["findings"].append((f.index, f.occurred_us, f.rule, f.code, f.party, f.message,
                                         json.dumps([r.to_dict() for r in f.evidence]), json.dumps(f.params, default=str)))
            findings += d.findings
        return rows, findings

    _INSERTS = {
        "quota": "INSERT INTO {P}quota (idx, occurred_us, year, party, category, kind, g, grp) VALUES (?,?,?,?,?,?,?,?)",
        "stock": "INSERT INTO {P}stock (idx, occurred_us, party, lot, product, g, reo_g) VALUES (?,?,?,?,?,?,?)",
        "flow": "INSERT INTO {P}flow (idx, occurred_us, kind, src_party, src_lot, dst_party, dst_lot, product, g, reo_g,"
                " ref) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        "lots": "INSERT INTO {P}lots (lot, party, product, origin, idx) VALUES (?,?,?,?,?)",
        "parties": "INSERT INTO {P}parties (idx, party, name, roles, province, grp, valid_from_us, valid_until_us)"
                   " VALUES (?,?,?,?,?,?,?,?)",
        "credit": "INSERT INTO {P}credit (idx, occurred_us, party, kind, article, fine, cut_g, detail)"
                  " VALUES (?,?,?,?,?,?,?,?)",
        "findings": "INSERT INTO {P}findings (idx, occurred_us, rule, code, party, message, evidence, params)"
                    " VALUES (?,?,?,?,?,?,?,?)",
    }

    def _write(self, start: int, stop: int, rows: dict[str, list], proj: Projector) -> None:
        """Rows and the new position in ONE transaction; refuses if the position moved."""
        conn = self.conn
        if self.pg:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"SELECT position FROM {P}tracking WHERE name = %s FOR UPDATE", (self.name,))
                self._advance(cur, start, stop, rows, proj)
        else:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._advance(cur, start, stop, rows, proj)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _advance(self, cur, start: int, stop: int, rows: dict[str, list], proj: Projector) -> None:
        cur.execute(self.q(f"SELECT position FROM {P}tracking WHERE name = ?"), (self.name,))
        row = cur.fetchone()
        current = int(row[0]) if row else 0
        if current != start:
            raise TrackingError(f"projections are at {current}, expected {start}: another follower is running")
        for table, sql in self._INSERTS.items():
            if rows[table]:
                cur.executemany(self.q(sql.format(P=P)), rows[table])
        if row is None:
            cur.execute(self.q(f"INSERT INTO {P}tracking (name, position) VALUES (?, ?)"), (self.name, stop))
        else:
            cur.execute(self.q(f"UPDATE {P}tracking SET position = ? WHERE name = ? AND position = ?"),
                        (stop, self.name, start))
        # snapshots at SNAPSHOT_EVERY x 1, 2, 4, 8 ...: the state grows with the log, so evenly
        # spaced snapshots would cost O(n^2) bytes; doubling keeps them O(n), and a restart
        # rolls forward at most half the log in state-only mode
        units = stop // SNAPSHOT_EVERY
        mark = SNAPSHOT_EVERY << (units.bit_length() - 1) if units else 0
        if mark and start < mark <= stop:
            cur.execute(self.q(f"INSERT INTO {P}snapshots (position, state) VALUES (?, ?)"),
                        (stop, pickle.dumps(proj, protocol=pickle.HIGHEST_PROTOCOL)))

    def rebuild(self) -> int:
        """Drop every projection table and rebuild from the log."""
        self.drop()
        self.create()
        return self.catch_up()

    def follow(self, stop: threading.Event, poll: float = 0.2, on_findings=None) -> None:
        """Keep up with the log until ``stop`` is set (subscription on PostgreSQL, polling on
        SQLite; see projections/follow.py)."""
        from ledger.store import LedgerStore

        from .follow import Follower

        store = LedgerStore(self.url, create=False)
        try:
            self.catch_up(on_findings=on_findings)
            Follower(store, lambda: self.catch_up(on_findings=on_findings), poll=poll).run_until(stop)
        finally:
            store.close()


def _apply_record(proj: Projector, rec: Record) -> tuple[Deltas, SignedEntry | None]:
    if rec.index != proj.position:
        raise TrackingError(f"the log has no entry at index {proj.position} (a gap: run reledger verify)")
    try:
        signed = SignedEntry.parse(rec.envelope) if rec.envelope is not None else None
    except EntryError as e:
        return proj.unreadable(rec.index, rec.recorded_us, rec.chain, rec.seq, rec.entry_hash, str(e)), None
    if signed is None:
        return proj.unreadable(rec.index, rec.recorded_us, rec.chain, rec.seq, rec.entry_hash,
                               "the entry is missing from the events table"), None
    return proj.apply(rec.index, rec.recorded_us, signed), signed


def _occ(signed: SignedEntry, recorded_us: int) -> int:
    from .model import time_us

    return time_us(signed.entry.occurred_at) or recorded_us
