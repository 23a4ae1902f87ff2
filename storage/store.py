"""The event store: signed entries on ``eventsourcing``, with a gap-free Merkle log beside them.

Each party's chain is an eventsourcing stream: originator_id = chain, originator_version = seq,
topic = entry type, state = the envelope bytes. The library's primary key (originator_id,
originator_version) makes a fork impossible at the database: two appends for the same seq leave
exactly one. Beside the events table, in the same transaction and under the same lock, the
store writes the log (one row per entry: gap-free index, record time, entry hash, Merkle
nodes) and keeps the checkpoints (storage/schema.py: the tables, triggers and roles).

An append takes *groups* of envelopes: each group is all-or-nothing, the groups of one call
share one transaction (group commit). Signatures are checked before the write lock is taken
(storage/pool.py); chain, key validity, idempotency and the Merkle log are decided under the
lock by the append plan (storage/plan.py), on the caches this store keeps of the log, and
written by the dialect's recorder (storage/sqlite.py, storage/postgres.py).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError as ESIntegrityError

from reledger.ledger import heads as chain_heads, merkle
from reledger.ledger import rules
from reledger.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from reledger.ledger.entry import SignedEntry, ZERO_HASH
from reledger.ledger.registry import REGISTRY_TYPES, Registry

from . import postgres, sqlite
from .plan import AppendError, Caches, Checked, Plan, Receipt, plan, receipt
from .pool import PROCESS_THRESHOLD, Prepared, SignatureChecks
from .reader import DatabaseURL, MerkleProofs, Queries, Record, Tables

__all__ = ["AppendError", "LedgerApplication", "LedgerStore", "LogMoved", "PROCESS_THRESHOLD", "Receipt",
           "application_env", "now_us"]


class LogMoved(Exception):
    """``append_groups(..., expect_size=n)`` found ``size`` entries in the log, not n: nothing
    was written."""

    def __init__(self, size: int):
        super().__init__(f"the log holds {size} entries, not the expected number")
        self.size = size


class _ReadFirst(Exception):
    """A write without reading first (LedgerStore.finish) met a refusal its caches decided:
    rolled back, and run again the usual way."""


class LedgerApplication(Application):
    """The eventsourcing application whose recorder holds the ledger."""

    name = "Reledger"


def application_env(url: str, create: bool = True) -> dict[str, str]:
    """eventsourcing's settings for the ledger at ``url``."""
    u = DatabaseURL.parse(url)
    env = {"ORIGINATOR_ID_TYPE": "text", "CREATE_TABLE": "y" if create else "n"}
    env.update(sqlite.application_env(u) if u.backend == "sqlite" else postgres.application_env(u))
    return env


def now_us() -> int:
    return time.time_ns() // 1000


class LedgerStore(MerkleProofs):
    """The writable ledger: append, read, prove, checkpoint."""

    def __init__(self, url: str, *, create: bool = True, workers: int | None = None,
                 clock: "Callable[[], int] | None" = None, processes: bool | None = None):
        """``clock`` returns the record time in microseconds (default: the wall clock). A
        simulation (the demo) may pass its own; record times never go backwards either way.

        ``processes`` (default: when there is more than one worker): a :meth:`prepare` of at
        least PROCESS_THRESHOLD envelopes parses and verifies them in ``workers`` processes
        (started once, from ``reledger.processes.start.context()``) instead of threads, so
        that the serial writer and the verifiers do not share one GIL (storage/pool.py)."""
        self.url = url
        self.clock = clock or now_us
        self.db = DatabaseURL.parse(url)
        if self.db.backend == "postgres" and create:
            postgres.ensure_schema(self.db)
        self.app = LedgerApplication(env=application_env(url, create))
        self.recorder = self.app.recorder
        self.recorder.bind(self.db)
        self.tables: Tables = self.recorder.tables
        self.queries = Queries(self.tables)
        self._lock = threading.Lock()  # one writer per process; the DB lock serializes processes
        self.checks = SignatureChecks(workers or os.cpu_count() or 2, processes)
        # What this store knows of the log, valid while the log's size in the database is
        # self._caches.size (-1: nothing yet).
        self._caches = Caches()
        self._heads: tuple[int, dict[str, tuple[int, bytes]]] | None = None  # (size, heads): heads_at
        self._heads_lock = threading.Lock()

    def close(self) -> None:
        self.checks.close()
        self.recorder.close_writer()
        self.app.close()

    def __enter__(self) -> "LedgerStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- reading --------------------------------------------------------------------
    def read_cursor(self):
        """A cursor for :class:`reledger.storage.reader.Queries` (each query on a pooled
        connection of its own)."""
        return self.recorder.read_cursor

    def size(self) -> int:
        return self.queries.size(self.read_cursor())[0]

    def records(self, start: int = 0, stop: int | None = None, page: int = 2000) -> Iterator[Record]:
        if stop is None:
            stop = self.size()
        i = start
        while i < stop:
            batch = self.queries.records(self.read_cursor(), i, min(stop, i + page))
            yield from batch
            i = min(stop, i + page)

    def registry_records(self, start: int, stop: int) -> list[Record]:
        """The key registry's entries (registrations, designations, keys) with ``start <= idx <
        stop``, through the log's partial index of them."""
        return self.queries.registry_records(self.read_cursor(), start, stop)

    def record(self, index: int) -> Record | None:
        rs = self.queries.records(self.read_cursor(), index, index + 1)
        return rs[0] if rs else None

    def entry(self, chain: str, seq: int) -> Record | None:
        return self.queries.record_of(self.read_cursor(), chain, seq)

    def chain_records(self, chain: str, start_seq: int = 1, stop_seq: int = 2**62) -> list[Record]:
        return self.queries.records_of_chain(self.read_cursor(), chain, start_seq, stop_seq)

    def chain_head(self, chain: str) -> tuple[int, bytes]:
        """(seq, entry hash) of the chain's last entry; (0, zero hash) for a new chain."""
        return self.queries.chain_head(self.read_cursor(), chain) or (0, ZERO_HASH)

    def chains(self) -> list[tuple[str, int]]:
        return self.queries.chains(self.read_cursor())

    def index_at_time(self, recorded_us: int) -> int:
        return self.queries.index_at_time(self.read_cursor(), recorded_us)

    def current_registry(self) -> Registry:
        """The live key registry (do not mutate): synced with the database, not copied."""
        with self._lock:
            self._sync_caches(self.read_cursor(), *self.queries.size(self.read_cursor()))
            return self._caches.registry

    def registry(self, size: int | None = None) -> Registry:
        """The key registry after the first ``size`` entries (default: all)."""
        if size is None:
            return self.current_registry().copy()
        reg = Registry()
        for rec in self.queries.records_of_types(self.read_cursor(), sorted(REGISTRY_TYPES), 0, size):
            reg.apply(SignedEntry.parse(rec.envelope), rec.index)
        reg.size = size
        return reg

    # --- Merkle ----------------------------------------------------------------------
    def get_nodes(self, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return self.queries.nodes(self.read_cursor(), coords)

    def leaf_hash(self, index: int) -> bytes:
        rec = self.record(index)
        if rec is None:
            raise LookupError(f"no entry at index {index}")
        return rec.nodes[:32]

    # --- checkpoints -------------------------------------------------------------------
    def checkpoint(self, signer: NoteSigner, cosign=None) -> bytes:
        """Sign and store a checkpoint of the current log; returns the note. Its origin is the
        signer's key name (a registered checkpoint key). A checkpoint of the same size is
        returned as stored. ``cosign(note, size)``, if given, returns the note with its witnesses'
        cosignatures, or raises, and then nothing is stored (commands/witness.py, cosign)."""
        size = self.size()
        latest = self.latest_checkpoint()
        if latest is not None and latest[0] == size:
            return latest[2]
        # the live registry: its key records carry the indices that authorized and revoked them,
        # so checkpoint_verifiers(.., size) gives the keys valid at ``size`` (not a log scan)
        registered = [v for v in rules.checkpoint_verifiers(self.current_registry(), size) if v == signer.verifier()]
        if not registered:
            raise ValueError(f"the checkpoint key {signer.name} is not a registered, unrevoked checkpoint key "
                             "of this ledger (KeyAuthorized with purpose 'checkpoint' and this name)")
        if registered[0].mldsa != (signer.mldsa.verifier() if signer.mldsa is not None else None):
            raise ValueError(f"the checkpoint key {signer.name} was registered "
                             + ("with an ML-DSA-44 key that this key file does not hold" if registered[0].mldsa
                                else "without an ML-DSA-44 key, and this key file holds one")
                             + " (FORMAT.md 5.4)")
        root = self.root(size)
        # and the head of every chain at that size (ledger/heads.py): what lets a bundle prove
        # that it holds the end of its party's chain
        line = chain_heads.line(self.heads_at(size))
        note = sign_checkpoint(Checkpoint(signer.name, size, root, (line,)), signer, max(1, self.clock() // 1_000_000))
        if cosign is not None:
            note = cosign(note, size)
        try:
            self.recorder.write_checkpoint(size, root, note, self.clock())
        except ESIntegrityError:
            # another writer checkpointed the same size first: answer what is stored
            stored = self.queries.checkpoint_at(self.read_cursor(), size)
            if stored is None:
                raise
            return stored[2]
        return note

    def heads_at(self, size: int) -> dict[str, tuple[int, bytes]]:
        """chain -> (seq, entry hash) of its last entry among the first ``size`` of the log (what a
        checkpoint commits to). The heads found last are moved on by the entries since, a page at
        a time (a chain's seq grows with the log index); the whole log is read (one GROUP BY)
        only the first time, or for a size below the last one."""
        with self._heads_lock:
            known = self._heads
            if known is None or known[0] > size:
                heads = self.queries.chain_heads(self.read_cursor(), size)
            else:
                heads = dict(known[1])
                for rec in self.records(known[0], size):
                    heads[rec.chain] = (rec.seq, rec.entry_hash)
            self._heads = (size, heads)
            return dict(heads)

    def latest_checkpoint(self) -> tuple[int, bytes, bytes] | None:
        return self.queries.latest_checkpoint(self.read_cursor())

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        return self.queries.checkpoints(self.read_cursor())

    def checkpoint_rows(self, after: int = 0, upto: int | None = None, page: int = 1000
                        ) -> Iterator[tuple[int, bytes, bytes]]:
        """The stored checkpoint rows (size, root, note) with ``after < size <= upto``, a page at
        a time (:meth:`Queries.checkpoint_pages`)."""
        return self.queries.checkpoint_pages(self.read_cursor, after, upto, page)

    # --- appending -----------------------------------------------------------------------
    def append(self, envelopes: Sequence[bytes | SignedEntry]) -> list[Receipt]:
        """Append one all-or-nothing group; raises AppendError (nothing written) on refusal."""
        result = self.append_groups([envelopes])[0]
        if isinstance(result, AppendError):
            raise result
        return result

    def append_groups(self, groups: Sequence[Sequence[bytes | SignedEntry]], *, expect_size: int | None = None,
                      new_commands: bool = False) -> list[list[Receipt] | AppendError]:
        """Append several independent groups in one transaction; each group is accepted whole
        or refused whole (its AppendError takes its place in the answer).

        ``expect_size``: write only if the log holds exactly that many entries when the lock
        is taken, else raise :class:`LogMoved` (nothing written). A caller that checked the
        entries against its own view of the log (the command API) learns that the view was
        stale, and how far the log is, in the same round trip as the write.

        ``new_commands`` (with ``expect_size``): the caller expects that no entry of the log's
        first ``expect_size`` holds any of these command ids (the command API: none of its
        entries is a retry it found recorded; a recorded one is still refused, below). On PostgreSQL, when this store's
        caches are of that size too, the transaction then reads nothing before it writes: one
        round trip instead of two. The log's own constraints (its gap-free index, the unique
        command ids and chain positions) refuse the rows if the log has moved meanwhile (or
        a command id is recorded after all); the
        transaction is then rolled back and run again the usual way (which raises LogMoved)."""
        return self.finish(self.prepare(groups), expect_size=expect_size, new_commands=new_commands)

    def prepare(self, groups: Sequence[Sequence[bytes | SignedEntry]]) -> Prepared:
        """Parse and check signatures in the pool (no lock held). Pass to :meth:`finish`.

        The check is a hint computed without the lock: a signature is checked with the key its
        key id names in the registry known now; :meth:`finish` decides under the lock whether
        that key was valid for the entry (and checks any signature not checked here)."""
        return self.checks.prepare(groups, self._caches.registry)

    def finish(self, prepared: Prepared, *, expect_size: int | None = None,
               new_commands: bool = False) -> list[list[Receipt] | AppendError]:
        checked = prepared.results()
        with self._lock:
            try:
                before = self._caches.size
                blind = (new_commands and self.recorder.WRITE_BLIND and expect_size is not None
                         and expect_size == before)
                try:
                    done = self.recorder.write(lambda cur: self._transaction(cur, checked, expect_size, blind))
                except (ESIntegrityError, _ReadFirst):
                    if not blind:
                        raise
                    # the log's constraints refused the rows (it moved under the caches: another
                    # writer), or the plan refused a group: nothing was written; the caches are
                    # reloaded and the log read under the lock first, as usual
                    self._forget_caches()
                    done = self.recorder.write(lambda cur: self._transaction(cur, checked, expect_size, False))
                after = done.caches
                after.registry.size = after.size
                self._caches = after
                if self.db.backend == "postgres" and before >= 0 and after.size // 50_000 > before // 50_000:
                    self._analyze()  # a bulk load outruns autovacuum: keep the planner's statistics fresh
                return done.results
            except LogMoved:
                raise  # read under the lock, nothing changed: the caches are still right
            except ESIntegrityError as e:
                self._forget_caches()  # another writer got there first: reload caches next time
                raise AppendError("conflict", f"conflict with a concurrent append: {e}") from e
            except BaseException:
                self._forget_caches()
                raise

    def _transaction(self, cur, checked: list[list[Checked] | AppendError], expect_size: int | None,
                     blind: bool) -> tuple[list[tuple], list[tuple], Plan]:
        """The append transaction's reads and its plan: (event rows, log rows, the plan).

        ``blind`` (finish: the caller vouches for the log's size and its command ids, and the
        caches are of that size): nothing is read but the heads of chains not cached, and a
        group the plan refuses makes the transaction run again the usual way (_ReadFirst)."""
        accepted = [c for g in checked if type(g) is list for c in g]
        recorded: dict[tuple[str, str], Receipt] = {}
        if not blind:
            # The command ids already recorded and the log head: on PostgreSQL both queries wait
            # in the pipeline and are answered together (with BEGIN and the lock) in one round trip.
            command_ids = [c.command_id for c in accepted]
            side = cur.side() if command_ids and hasattr(cur, "side") else None
            if side is not None:
                self.queries.send_commands(side.cur, command_ids)
            size, last_us = self.queries.size(cur)
            commands = (self.queries.fetch_commands(side.cur) if side is not None
                        else self.queries.commands(cur, command_ids))
            if expect_size is not None and size != expect_size:
                raise LogMoved(size)
            self._sync_caches(cur, size, last_us)
            if commands:  # (a retry: the receipts of the entries its command ids recorded)
                for key in {(c.chain, c.command_id) for c in accepted} & commands.keys():
                    index = commands[key][0]
                    rec = self.queries.records(cur, index, index + 1)[0]
                    recorded[key] = receipt(rec.index, rec.chain, rec.seq, rec.entry_hash, rec.recorded_at, True)
        caches = self._caches
        # Chain heads not cached (usually none: the caches follow this store's own commits).
        heads = caches.heads
        for chain in {c.chain for c in accepted} - heads.keys():
            heads[chain] = self.queries.chain_head(cur, chain) or (0, ZERO_HASH)
        p = plan(caches, checked, recorded, max(self.clock(), caches.last_us), self.recorder.ROW_BLOB)
        if blind and p.refused:  # decided on caches the log may have outrun: decide it the usual way
            raise _ReadFirst()
        return p.events, p.rows, p

    def _forget_caches(self) -> None:
        self._caches = Caches()

    def append_pipelined(self, batches: Iterable[Sequence[bytes | SignedEntry]], *,
                         ahead: int = 2) -> Iterator[list[Receipt]]:
        """Append many all-or-nothing batches, checking the signatures of the next ``ahead``
        batches while the current one is being written (one batch ahead is not enough: the
        verifying threads would sit idle whenever they finish it before the write does).
        Raises at the first refused batch."""
        it = iter(batches)
        pending: collections.deque = collections.deque()
        for batch in it:
            pending.append(self.prepare([batch]))
            if len(pending) > ahead:
                break
        while pending:
            result = self.finish(pending.popleft())[0]
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.prepare([nxt]))
            if isinstance(result, AppendError):
                for p in pending:  # do not leave work behind in the pool
                    p.cancel()
                raise result
            yield result

    def _sync_caches(self, cur, size: int, last_us: int) -> None:
        """The caches (registry, Merkle frontier, chain heads, record time of the last entry)
        for a log of ``size`` entries whose last was recorded at ``last_us``."""
        known = self._caches
        if size == known.size:
            return
        if size < known.size or known.size < 0:
            registry, start = Registry(), 0
        else:
            registry, start = known.registry, known.size
        for rec in self.queries.registry_records(cur, start, size):
            registry.apply(SignedEntry.parse(rec.envelope), rec.index)
        registry.size = size
        coords = merkle.range_nodes(0, size) if size else []
        nodes = self.queries.nodes(cur, coords) if coords else {}
        frontier = merkle.Frontier.from_nodes(size, lambda level, index: nodes[(level, index)])
        self._caches = Caches(size, last_us, frontier, {}, registry)

    def _analyze(self) -> None:
        try:
            with self.recorder.datastore.get_connection() as conn:
                conn.execute(f"ANALYZE {self.tables.log}")
        except Exception:  # noqa: BLE001 - statistics are an optimisation, never a failure
            pass

    # --- PostgreSQL roles ---------------------------------------------------------------
    def grant_checkpointer_role(self, role: str = "reledger_checkpointer") -> None:
        """Create (if needed) the PostgreSQL role of the checkpointer (processes/checkpointer.py):
        SELECT on the events and the log, SELECT and INSERT on the checkpoints, nothing else."""
        if self.db.backend != "postgres":
            raise ValueError("checkpointer roles exist on PostgreSQL only")
        self.recorder.grant_checkpointer_role(role)

    def grant_serving_role(self, role: str = "reledger_serve") -> None:
        """Create (if needed) the PostgreSQL role the server runs as: INSERT and SELECT on the
        events and the log (and the notification sequence), SELECT only on the checkpoints
        (checkpoints come from the operator's checkpoint key, never from the server), and
        nothing that alters a ledger table (not the owner: it cannot drop or disable the
        triggers). A role it creates may log in (set its password with ALTER ROLE)."""
        if self.db.backend != "postgres":
            raise ValueError("serving roles exist on PostgreSQL only")
        self.recorder.grant_serving_role(role)
