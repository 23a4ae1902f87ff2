"""Projection tables: follow the log with tracking, keep the rule state as rows, answer queries
at any point in time.

Tables (prefix ``reledger_p_``, beside the ledger's own in the same database):

``quota``, ``stock``, ``flow``, ``lots``, ``parties``, ``credit``, ``findings``
    delta rows, each with the log index ``idx`` of the entry that caused it and its business
    time ``occurred_us``. "As of log index N" is ``idx < N``; "valid at T" is
    ``occurred_us <= T``. An answer at a past point is therefore exactly what a rebuild of the
    log cut at that point gives, and costs a filtered aggregate, not a replay.
``tracking``  the number of log entries applied, written in the same transaction as the rows.
``state``, ``due``, ``events`` the projector's rule state as rows (projections/state.py: canonical
    msgpack keys and values, due items indexed by due time; projections/rowevents.py: the
    timelines and lists that grow with the log, one row per event), read on demand through a bounded cache and
    written in the same transaction as the rows and the tracking position: a process starts
    answering at once, and holds its working set, never the whole state.

On PostgreSQL :func:`reledger.projections.follow.follow` wakes up on each append's NOTIFY (LISTEN on the
channel of eventsourcing's events table); on SQLite it polls.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import sqlite3
import threading
from typing import Any, Callable, Iterable

from reledger.ledger.encoding import parse_time, time_to_micros
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.storage.reader import DatabaseURL, LogReader, NoLedger, Record, ledger_tables_missing, open_ledger_readonly

from . import snapshot
from . import state as rowstate
from .model import Deltas, Finding, Projector

log = logging.getLogger(__name__)

PAGE = 2_000  # entries per transaction when following the log
SQLITE_CACHE_KB = 65_536  # the store's SQLite page cache
REBUILD_PAGE = 10_000  # entries per transaction of a full rebuild (secondary indexes built at the end)
QUOTA_SUMS_EVERY = 10_000  # the quota totals are kept at every multiple of this many entries
P = "reledger_p_"
TABLES = ("quota", "stock", "flow", "lots", "parties", "credit", "findings", "quota_sums", "quota_marks", "tracking",
          "state", "due", "events")
STATE_TABLES = ("state", "due", "events")  # the rule state as rows (projections/state.py, rowevents.py)
LEGACY_TABLES = ("snapshots",)  # the whole-state snapshots of earlier versions: dropped by a rebuild
# the columns of each table of delta rows, in the order the rows are made
COLUMNS = {
    "quota": ("idx", "occurred_us", "year", "party", "category", "kind", "g", "grp"),
    "stock": ("idx", "occurred_us", "party", "lot", "product", "g", "reo_g"),
    "flow": ("idx", "occurred_us", "kind", "src_party", "src_lot", "dst_party", "dst_lot", "product", "g", "reo_g",
             "ref"),
    "lots": ("lot", "party", "product", "origin", "idx"),
    "parties": ("idx", "party", "name", "roles", "province", "grp", "valid_from_us", "valid_until_us"),
    "credit": ("idx", "occurred_us", "party", "kind", "article", "fine", "cut_g", "detail"),
    "findings": ("idx", "occurred_us", "rule", "code", "party", "message", "evidence", "params"),
    "quota_sums": ("position", "year", "party", "category", "kind", "grp", "g"),
}
# the PostgreSQL types of those columns (binary COPY sends each value in its column's type)
PG_TYPES = {
    "quota": ("int8", "int8", "int4", "text", "text", "text", "int8", "text"),
    "stock": ("int8", "int8", "text", "text", "text", "int8", "int8"),
    "flow": ("int8", "int8", "text", "text", "text", "text", "text", "text", "int8", "int8", "text"),
    "lots": ("text", "text", "text", "text", "int8"),
    "parties": ("int8", "text", "text", "text", "text", "text", "int8", "int8"),
    "credit": ("int8", "int8", "text", "text", "text", "text", "int8", "text"),
    "findings": ("int8", "int8", "text", "text", "text", "text", "text", "text"),
    "quota_sums": ("int8", "int4", "text", "text", "text", "text", "int8"),
}
ROW_TABLES = ("quota", "stock", "flow", "lots", "parties", "credit", "findings")


def _tables_ddl(blob: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {P}quota (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, year INTEGER NOT NULL,"
        " party TEXT NOT NULL, category TEXT NOT NULL, kind TEXT NOT NULL, g BIGINT NOT NULL, grp TEXT)",
        f"CREATE TABLE IF NOT EXISTS {P}stock (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, party TEXT NOT NULL,"
        " lot TEXT NOT NULL, product TEXT, g BIGINT NOT NULL, reo_g BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {P}flow (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, kind TEXT NOT NULL,"
        " src_party TEXT, src_lot TEXT, dst_party TEXT, dst_lot TEXT, product TEXT, g BIGINT NOT NULL,"
        " reo_g BIGINT NOT NULL, ref TEXT)",
        f"CREATE TABLE IF NOT EXISTS {P}lots (lot TEXT PRIMARY KEY, party TEXT NOT NULL, product TEXT,"
        " origin TEXT NOT NULL, idx BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {P}parties (idx BIGINT NOT NULL, party TEXT NOT NULL, name TEXT, roles TEXT,"
        " province TEXT, grp TEXT, valid_from_us BIGINT, valid_until_us BIGINT)",
        f"CREATE TABLE IF NOT EXISTS {P}credit (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, party TEXT NOT NULL,"
        " kind TEXT NOT NULL, article TEXT, fine TEXT, cut_g BIGINT, detail TEXT)",
        f"CREATE TABLE IF NOT EXISTS {P}findings (idx BIGINT NOT NULL, occurred_us BIGINT NOT NULL, rule TEXT NOT NULL,"
        " code TEXT NOT NULL, party TEXT NOT NULL, message TEXT NOT NULL, evidence TEXT NOT NULL, params TEXT NOT NULL)",
        # the sum of the quota rows of entries below ``position`` (a multiple of QUOTA_SUMS_EVERY),
        # per (year, party, category, kind, grp); quota_marks says which positions have them and
        # the latest business time among the rows summed (NULL: none)
        f"CREATE TABLE IF NOT EXISTS {P}quota_sums (position BIGINT NOT NULL, year INTEGER NOT NULL,"
        " party TEXT NOT NULL, category TEXT NOT NULL, kind TEXT NOT NULL, grp TEXT, g BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {P}quota_marks (position BIGINT PRIMARY KEY, max_occurred_us BIGINT)",
        f"CREATE TABLE IF NOT EXISTS {P}tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    ] + rowstate.ddl(blob == "BYTEA")


# secondary indexes: kept up row by row when following the log, built once at the end of a
# full rebuild (cheaper than maintaining them through the bulk load)
INDEXES = {
    # covering: a point-in-time quota query reads the index alone
    "quota_year": "quota (year, idx, occurred_us, party, category, kind, grp, g)",
    "quota_party": "quota (party, idx)",  # a party's quota rows (replay, investigate)
    "stock_party": "stock (party, idx)",
    "stock_lot": "stock (lot, idx)",
    "flow_src": "flow (src_lot)",
    "flow_dst": "flow (dst_lot)",
    "flow_src_party": "flow (src_party, idx)",  # a party's flow rows (the party graph's drill-down, investigate)
    "flow_dst_party": "flow (dst_party, idx)",
    "findings_party": "findings (party, idx)",
    "findings_idx": "findings (idx)",
    # the RESOLVED rows by the log index of the finding they resolve (params.resolves.index):
    # a page of findings reads its resolutions alone (queries.findings)
    "findings_resolves": {"sqlite": "findings ({resolves_sqlite}) WHERE code = 'RESOLVED'",
                          "postgres": "findings (({resolves_pg})) WHERE code = 'RESOLVED'"},
    "credit_party": "credit (party, idx)",
    "quota_sums_pos": "quota_sums (position, year)",
    "quota_grp": "quota (grp, idx)",  # a group's members (queries.group_membership: the server's group reads)
    "stock_party_lot": "stock (party, lot, idx)",  # the stock a page of (party, lot) at a time (queries.stock)
}
# the index of the finding a RESOLVED row resolves, as SQL (the index above is on this very text;
# SQLite uses an index on an expression only for the same expression)
RESOLVES_SQL = {"sqlite": "json_extract(params, '$.resolves.index')",
                "postgres": "(params::jsonb #>> '{resolves,index}')"}


def _indexes_ddl(pg: bool) -> list[str]:
    backend = "postgres" if pg else "sqlite"
    out = []
    for name, spec in INDEXES.items():
        if isinstance(spec, dict):
            spec = spec[backend].format(resolves_sqlite=RESOLVES_SQL["sqlite"], resolves_pg=RESOLVES_SQL["postgres"])
        out.append(f"CREATE INDEX IF NOT EXISTS {P}{name} ON {P}{spec}")
    return out


def _ddl(blob: str) -> list[str]:
    return _tables_ddl(blob) + _indexes_ddl(blob == "BYTEA")


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
        self.progress: tuple[int, int] = (0, 0)  # (position, target) of the catch-up under way
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
            # this build of SQLite overwrites freed pages with zeros (SQLITE_SECURE_DELETE): a
            # rebuild's DROP would write the old projections out again, page by page. Projection
            # rows are derived from the log kept in the same file: there is nothing to erase.
            self.conn.execute("PRAGMA secure_delete=OFF")
            # the rule state's rows are read and written at random keys: a page cache of 64 MB
            # (instead of 2) keeps the B-trees' inner pages in memory
            self.conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KB}")
        self.projector: Projector | None = None
        self._scratch: rowstate.ScratchState | None = None  # a rebuild's rule state (see rebuild)
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

    def _missing(self) -> tuple[int, int]:
        """(tables missing, secondary indexes missing)."""
        tables = [P + t for t in TABLES]
        indexes = [P + i for i in INDEXES]
        marks = ",".join("?" * (len(tables) + len(indexes)))
        if self.pg:
            sql = (f"SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename IN ({marks}) "
                   f"UNION ALL SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                   f"AND indexname IN ({marks})")
            params = (tables + indexes) * 2
        else:
            sql = f"SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name IN ({marks})"
            params = tables + indexes
        found = {r[0] for r in self.execute(sql, params)}
        return len(set(tables) - found), len(set(indexes) - found)

    def create(self, indexes: bool = True) -> None:
        """The tables (and, unless told otherwise, their secondary indexes) when missing."""
        with self._lock:
            tables_missing, indexes_missing = self._missing()
            # DDL only when needed (it locks, and costs on PostgreSQL); an interrupted rebuild
            # leaves its indexes missing: they are made here, the next time a store opens
            if tables_missing:
                for stmt in _tables_ddl("BYTEA" if self.pg else "BLOB"):
                    self.conn.execute(stmt)
            if indexes and indexes_missing:
                try:
                    self._create_indexes()
                except Exception as e:
                    # an index this version added, on a ledger opened by the serving role (it
                    # may not make one): the owner's next open or rebuild makes it; the queries
                    # give the same answers without it (by a scan)
                    if not self.pg:
                        raise
                    import psycopg

                    if not isinstance(e, psycopg.errors.InsufficientPrivilege):
                        raise
                    log.warning("the projections lack %d index(es) and this role may not make them (%s): "
                                "open the ledger once as its owner (reledger rebuild, or serve) to make them",
                                indexes_missing, str(e).strip())
            # the tracking row exists before any follower writes: the row lock (PostgreSQL FOR
            # UPDATE) then serializes followers from the first page on, instead of two of them
            # both seeing no row and colliding on its INSERT
            self.conn.execute(self.q(f"INSERT INTO {P}tracking (name, position) VALUES (?, 0) "
                                     "ON CONFLICT (name) DO NOTHING"), (self.name,))

    def _create_indexes(self) -> None:
        for stmt in _indexes_ddl(self.pg):
            self.conn.execute(stmt)

    def drop(self) -> None:
        with self._lock:
            for t in TABLES + LEGACY_TABLES:
                self.conn.execute(f"DROP TABLE IF EXISTS {P}{t}")
            self.projector = None

    def grant_serving_role(self, role: str) -> None:
        """PostgreSQL: what the server's role needs on the projection tables (the role itself is
        made by LedgerStore.grant_serving_role): SELECT and INSERT on the rows, UPDATE of the
        tracking position; no DELETE, no DDL (``reledger rebuild`` is the operator's)."""
        if not self.pg:
            raise ValueError("serving roles exist on PostgreSQL only")
        from psycopg import sql

        who = sql.Identifier(role)
        with self._lock:
            for t in TABLES:
                table = sql.Identifier(P + t)
                self.conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, who))
                # the rule state's rows are updated and deleted as the rules change them
                rights = ("SELECT, INSERT, UPDATE" if t == "tracking" else
                          "SELECT, INSERT, UPDATE, DELETE" if t in STATE_TABLES else "SELECT, INSERT")
                self.conn.execute(sql.SQL(f"GRANT {rights} ON {{}} TO {{}}").format(table, who))

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()
            self._reader = None
        self.conn.close()

    def position(self) -> int:
        rows = self.execute(f"SELECT position FROM {P}tracking WHERE name = ?", (self.name,))
        return int(rows[0][0]) if rows else 0

    def reflects(self) -> dict[str, Any]:
        """The projections' position, the log's size and latest checkpoint (see :func:`reflects`)."""
        with self._lock:
            return reflects(self._log_reader(), self.position())

    def quota_base(self, n: int, valid_at_us: int) -> int:
        """The latest position <= ``n`` whose quota totals are kept and count only rows that
        occurred by ``valid_at_us`` (0: none; answer from the rows alone)."""
        rows = self.execute(f"SELECT MAX(position) FROM {P}quota_marks WHERE position <= ? "
                            "AND (max_occurred_us IS NULL OR max_occurred_us <= ?)", (n, valid_at_us))
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    # --- following the log ---------------------------------------------------------------
    def _load_projector(self, reader: LogReader) -> Projector:
        """The rule state at the tracked position: its rows (projections/state.py), read on
        demand; nothing is loaded here. A state made by other rules, or missing (a ledger
        projected by an earlier version), is folded again from the log first (state only:
        the derived rows exist), page by page, each page its own transaction."""
        pos = self.position()
        if self.projector is not None and self.projector.position == pos:
            return self.projector
        self.projector = None
        proj = Projector(rowstate.RowState(self.conn, self.pg))
        if proj.position != pos or proj.row_state.stored_rules not in (None, snapshot.RULES):
            proj = self._refold_state(reader, pos)
        self.projector = proj
        return proj

    def _refold_state(self, reader: LogReader, pos: int, damaged: bool = False) -> Projector:
        """The rule state deleted and folded again from the log up to ``pos`` (state only: the
        derived rows exist). ``damaged``: the stored state has a row this version cannot read
        (deleted whatever it says of itself)."""
        with self._transaction() as cur:
            # the state is deleted only if the projections are still at ``pos`` and (unless it is
            # damaged) no state of ``pos`` by these rules arrived meanwhile (a rebuild's, moved in
            # at its end)
            cur.execute(self.q(f"SELECT position FROM {P}tracking WHERE name = ?") + (" FOR UPDATE" if self.pg else ""),
                        (self.name,))
            row = cur.fetchone()
            if (int(row[0]) if row else 0) != pos:
                raise TrackingError("the projections moved on while their rule state was to be folded again: "
                                    "another follower (or a rebuild) is running")
            cur.execute(self.q(f"SELECT k, v FROM {P}state WHERE ns = ? AND k IN (?, ?)"),
                        (rowstate.META, rowstate.encode("position"), rowstate.encode("_rules")))
            try:
                stored = {rowstate.decode(bytes(k)): rowstate.decode(bytes(v)) for k, v in cur.fetchall()}
            except snapshot.SnapshotError:
                stored = {}
            if not damaged and stored.get("position") == pos and stored.get("_rules") == snapshot.RULES:
                stored = None
            else:
                for t in STATE_TABLES:
                    cur.execute(self.q(f"DELETE FROM {P}{t}"))
        if stored is None:
            return Projector(rowstate.RowState(self.conn, self.pg))
        proj = Projector(rowstate.RowState(self.conn, self.pg))
        while proj.position < pos:
            start = proj.position
            for rec in reader.queries.records(reader.cursor(), start, min(pos, start + REBUILD_PAGE)):
                apply_record(proj, rec)  # state only: the rows exist
            if proj.position == start:
                raise TrackingError(f"the log has no entry at index {start} (a gap: run reledger verify)")
            with self._transaction() as cur:
                cur.execute(self.q(f"SELECT position FROM {P}tracking WHERE name = ?"), (self.name,))
                row = cur.fetchone()
                if row is None or int(row[0]) != pos:
                    raise TrackingError("the projections moved on while their rule state was folded: "
                                        "another follower is running")
                proj.row_state.flush(cur)
            proj.row_state.trim()
        return proj

    def _transaction(self):
        """A write transaction on the store's connection (a context manager giving a cursor)."""
        import contextlib

        @contextlib.contextmanager
        def tx():
            if self.pg:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    yield cur
            else:
                cur = self.conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        return tx()

    def _log_reader(self) -> LogReader:
        """One read-only connection to the log, kept open (opening one costs milliseconds, and
        the command API's findings hook catches up after every commit)."""
        if getattr(self, "_reader", None) is None:
            self._reader = LogReader(self.url)
        return self._reader

    def catch_up(self, limit: int | None = None, on_findings: Callable[[list[Finding]], None] | None = None,
                 page: int | None = None) -> int:
        """Apply every entry not yet projected (at most ``limit``), ``page`` entries (default
        PAGE) a transaction; returns how many."""
        with self._lock:
            try:
                try:
                    return self._catch_up(self._log_reader(), limit, on_findings, page or PAGE)
                except snapshot.SnapshotError as e:
                    # a state row this version cannot read (damaged, or not plain data: never
                    # unpickled nor run): the state is folded again from the log (its rows exist)
                    log.warning("the projections' rule state has an unreadable row (%s): folded again from the log", e)
                    self.projector = self._refold_state(self._log_reader(), self.position(), damaged=True)
                    return self._catch_up(self._log_reader(), limit, on_findings, page or PAGE)
            except Exception:
                reader, self._reader = self._reader, None  # a broken connection is not reused
                if reader is not None:
                    try:
                        reader.close()
                    except Exception:  # noqa: BLE001
                        pass
                raise

    def _catch_up(self, reader: LogReader, limit: int | None, on_findings, page_size: int) -> int:
        proj = self._load_projector(reader)
        size = reader.queries.size(reader.cursor())[0]
        stop = size if limit is None else min(size, proj.position + limit)
        self.progress = (proj.position, stop)  # (position, target): read by a progress line's thread
        done = 0
        while proj.position < stop:
            start = proj.position
            # pages end at every multiple of QUOTA_SUMS_EVERY, where the quota totals are kept
            end = min(stop, start + page_size, (start // QUOTA_SUMS_EVERY + 1) * QUOTA_SUMS_EVERY)
            page = reader.queries.records(reader.cursor(), start, end)
            if not page:
                break
            try:
                rows, findings = self._apply_page(proj, page)
                self._write(start, proj.position, rows, proj)
            except BaseException:
                self.projector = None  # the cache may hold changes never written: read the rows again
                raise
            proj.row_state.trim()
            done += len(page)
            self.progress = (proj.position, stop)
            if on_findings and findings:
                on_findings(findings)
        return done

    def _apply_page(self, proj: Projector, page: list[Record]) -> tuple[dict[str, list], list[Finding]]:
        return page_rows(proj, page)

    def _write(self, start: int, stop: int, rows: dict[str, list], proj: Projector) -> None:
        """Rows and the new position in ONE transaction; refuses if the position moved."""
        conn = self.conn
        if self.pg:
            for copy in (True, False):
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute(f"SELECT position FROM {P}tracking WHERE name = %s FOR UPDATE", (self.name,))
                        self._advance(cur, start, stop, rows, proj, copy)
                    return
                except TypeError:
                    # binary COPY takes only values of the column's type; an entry written past
                    # the command API may put, say, a number where a name belongs: the page is
                    # written again with INSERTs, which convert it as PostgreSQL's assignment
                    # casts do (and as SQLite's text affinity does)
                    if not copy:
                        raise
        else:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._advance(cur, start, stop, rows, proj)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _insert(self, cur, table: str, rows: list[tuple], copy: bool = True) -> None:
        cols = COLUMNS[table]
        if self.pg and copy:  # binary COPY: an order of magnitude cheaper than INSERTs, even pipelined
            with cur.copy(f"COPY {P}{table} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(PG_TYPES[table])
                write = copy.write_row
                for r in rows:
                    write(r)
        else:
            cur.executemany(self.q(f"INSERT INTO {P}{table} ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})"),
                            rows)

    def _advance(self, cur, start: int, stop: int, rows: dict[str, list], proj: Projector, copy: bool = True) -> None:
        cur.execute(self.q(f"SELECT position FROM {P}tracking WHERE name = ?"), (self.name,))
        row = cur.fetchone()
        current = int(row[0]) if row else 0
        if current != start:
            raise TrackingError(f"projections are at {current}, expected {start}: another follower is running")
        for table in ROW_TABLES:
            if rows[table]:
                self._insert(cur, table, rows[table], copy)
        st = proj.row_state
        scratch = self._scratch
        scur = None
        if scratch is not None:  # a rebuild: the state's rows go to its scratch file (see rebuild)
            scur = scratch.conn.cursor()
            scur.execute("BEGIN")
        st.begin(cur if scur is None else scur)
        try:
            st.flush_maps()  # the rule state's changes, in this transaction
            sums = ([(stop, *k, g) for k, g in proj.quota_sums.items()]
                    if stop % QUOTA_SUMS_EVERY == 0 and proj.quota_sums is not None else None)
        except BaseException:
            if scur is not None:
                scur.execute("ROLLBACK")
            raise
        finally:
            st.end()
        if scur is not None:
            # before the page's own commit: should that fail, the rebuild stops and the scratch
            # file goes with it (the ledger's state rows are written only by _move_state)
            scur.execute("COMMIT")
        if sums is not None:
            # INSERTs, never COPY: the rule state was flushed above, so a TypeError from here
            # would send _write's retry round with the state's changes already taken as written
            # (a few hundred rows, once every QUOTA_SUMS_EVERY entries)
            self._insert(cur, "quota_sums", sums, copy=False)
            cur.execute(self.q(f"INSERT INTO {P}quota_marks (position, max_occurred_us) VALUES (?, ?)"),
                        (stop, proj.quota_max_occ))
        if row is None:
            cur.execute(self.q(f"INSERT INTO {P}tracking (name, position) VALUES (?, ?)"), (self.name, stop))
        else:
            cur.execute(self.q(f"UPDATE {P}tracking SET position = ? WHERE name = ? AND position = ?"),
                        (stop, self.name, start))

    def rebuild(self) -> int:
        """Drop every projection table and rebuild from the log: large pages, and the secondary
        indexes built once at the end instead of row by row.

        The cyclic garbage collector is paused meanwhile (and restored after): the rule state
        grows with the log and holds no reference cycles, but every full collection traverses
        all of it, so that on a large log the collector alone would cost a good part of the
        rebuild (objects without cycles are freed as usual, by reference counting)."""
        with self._lock:
            paused = gc.isenabled()
            if paused:
                gc.disable()
            try:
                self.drop()
                self.create(indexes=False)
                scratch = rowstate.ScratchState()
                try:
                    self.projector, self._scratch = Projector(scratch.state), scratch
                    n = self.catch_up(page=REBUILD_PAGE)
                    self._move_state(scratch)
                except BaseException:
                    try:
                        self._create_indexes()
                    except Exception:  # noqa: BLE001 - the first error is the one to report
                        pass
                    raise
                finally:
                    # the follower's next catch-up reads the state's rows where they now are
                    self.projector, self._scratch = None, None
                    scratch.close()
                self._create_indexes()
                return n
            finally:
                if paused:
                    gc.enable()

    def _move_state(self, scratch: "rowstate.ScratchState") -> None:
        """A rebuild's rule state, from its scratch file into the ledger's state tables, in one
        transaction that checks the position the state belongs to."""
        pos = self.projector.position
        src = scratch.conn.cursor()
        with self._transaction() as cur:
            cur.execute(self.q(f"SELECT position FROM {P}tracking WHERE name = ?") + (" FOR UPDATE" if self.pg else ""),
                        (self.name,))
            row = cur.fetchone()
            if pos and (row is None or int(row[0]) != pos):
                raise TrackingError("the projections moved on while they were rebuilt: another follower is running")
            for table in rowstate.STATE_COLUMNS:  # what another process folded meanwhile (refolds): replaced
                cur.execute(f"DELETE FROM {table}")
            for table, cols in rowstate.STATE_COLUMNS.items():
                src.execute(f"SELECT {', '.join(cols)} FROM {table}")
                if self.pg:
                    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(rowstate.STATE_PG_TYPES[table])
                        while rows := src.fetchmany(10_000):
                            for r in rows:
                                copy.write_row(r)
                else:
                    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                    while rows := src.fetchmany(10_000):
                        cur.executemany(sql, rows)


class NoProjections(NoLedger):
    """The ledger has no projection tables (they are made by ``reledger init``, ``rebuild``,
    ``serve`` and ``demo``)."""


class ProjectionReader:
    """The projection tables for a command that only reads: the ledger's read-only connection
    (:func:`reledger.storage.reader.open_ledger_readonly`), SELECTs only, no catch-up, no DDL.
    The answers reflect the tables as they stand: :meth:`reflects` says at which log position,
    against the log's size and latest checkpoint."""

    def __init__(self, url: str):
        self.url = url
        self.reader = open_ledger_readonly(url)
        self.db = self.reader.url
        self.pg = self.db.backend == "postgres"
        try:
            if self.pg:  # the projection SQL names its tables without the schema
                self.reader.cursor().execute(f'SET search_path TO "{self.db.schema}"')
            # the derived rows (a read never needs the rule state's tables)
            missing = ledger_tables_missing(self.reader, tuple(P + t for t in TABLES if t not in STATE_TABLES))
        except BaseException:
            self.reader.close()
            raise
        if missing:
            self.reader.close()
            raise NoProjections(f"this ledger has no projections (missing tables: {', '.join(missing)}): run "
                                "`reledger rebuild` once (or `reledger serve`, which keeps them up to date)")

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        cur = self.reader.cursor()
        cur.execute(self.q(sql), tuple(params))
        return [tuple(r) for r in cur.fetchall()]

    def position(self) -> int:
        rows = self.execute(f"SELECT position FROM {P}tracking WHERE name = ?", (ProjectionStore.name,))
        return int(rows[0][0]) if rows else 0

    quota_base = ProjectionStore.quota_base

    def reflects(self) -> dict[str, Any]:
        return reflects(self.reader, self.position())

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "ProjectionReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def reflects(reader: LogReader, position: int) -> dict[str, Any]:
    """What a projection answer reflects: the projections' log position, the log's size, and
    the latest checkpoint (size and root) the operator signed."""
    cur = reader.cursor()
    size = reader.queries.size(cur)[0]
    cp = reader.queries.latest_checkpoint(cur)
    return {"projections_position": position, "log_size": size, "behind": max(size - position, 0),
            "checkpoint": None if cp is None else {"size": cp[0], "root": cp[1].hex()}}


def page_rows(proj: Projector, page: list[Record]) -> tuple[dict[str, list], list[Finding]]:
    """A page of log records folded into ``proj``: the delta rows of each table (in COLUMNS
    order) and the findings raised (what the follower writes, and ``verify --projections``
    recomputes)."""
    quota: list[tuple] = []
    stock: list[tuple] = []
    flow: list[tuple] = []
    lots: list[tuple] = []
    parties: list[tuple] = []
    credit: list[tuple] = []
    found: list[tuple] = []
    findings: list[Finding] = []
    apply = apply_record
    for rec in page:
        d = apply(proj, rec)
        i, occ = rec.index, d.occurred_us
        for r in d.stock:
            stock.append((i, occ, *r))
        for r in d.flow:
            flow.append((i, occ, *r[:8], None if r[8] is None else str(r[8])))
        for r in d.quota:
            quota.append((i, occ, *r[:6]))
        if d.lots:
            lots += d.lots  # (lot, party, product, origin, idx)
        if d.parties:
            parties += [(i, *r) for r in d.parties]
        if d.credit:
            credit += [(i, occ, *r) for r in d.credit]
        if d.findings:
            for f in d.findings:
                found.append((f.index, f.occurred_us, f.rule, f.code, f.party, f.message,
                              json.dumps([r.to_dict() for r in f.evidence]), json.dumps(f.params, default=str)))
            findings += d.findings
    return ({"quota": quota, "stock": stock, "flow": flow, "lots": lots, "parties": parties, "credit": credit,
             "findings": found}, findings)


@functools.lru_cache(maxsize=64)
def record_micros(recorded_at: str) -> int:
    """A receipt's record time (RFC 3339 text) in microseconds, as the log stores it (the
    entries of one commit share one record time: cached)."""
    return time_to_micros(parse_time(recorded_at))


def apply_record(proj: Projector, rec: Record) -> Deltas:
    """One log record folded into ``proj`` (an entry that cannot be read is flagged where it
    stands)."""
    if rec.index != proj.position:
        raise TrackingError(f"the log has no entry at index {proj.position} (a gap: run reledger verify)")
    try:
        signed = SignedEntry.parse(rec.envelope) if rec.envelope is not None else None
    except EntryError as e:
        return proj.unreadable(rec.index, rec.recorded_us, rec.chain, rec.seq, rec.entry_hash, str(e))
    if signed is None:
        return proj.unreadable(rec.index, rec.recorded_us, rec.chain, rec.seq, rec.entry_hash,
                               "the entry is missing from the events table")
    return proj.apply(rec.index, rec.recorded_us, signed)
