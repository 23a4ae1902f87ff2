"""The in-process command API: validate, authorize, reference-check, append.

    from reledger.commands.api import CommandAPI, CommandError
    api = CommandAPI(LedgerStore("sqlite:///./reledger.db"))
    receipts = api.submit([signed_entry, ...])          # one all-or-nothing group
    results = api.submit_groups([[...], [...]])          # group commit: receipts or CommandError each

A submission passes, entry by entry in order: parsing (400 ``malformed``), idempotency (the same
command id with the same bytes answers the original receipt, ``duplicate=True``; with other bytes
409 ``command_conflict``), the catalogue's schema (400), key validity and signature (403), chain
continuity (409 ``conflict``), the party's roles (403 ``forbidden``) and references (404/409).
Then ``store.append`` / ``store.append_groups`` writes it; the store checks keys, signatures,
chains and idempotency again under its own lock, and any refusal of the store is translated into
a :class:`CommandError` with the store's code and message.

The write state (:mod:`reledger.commands.state`) catches up from the log before each submission (so other
writers are seen) and keeps only what the store accepted. What of it grows with the log is rows
in the database (:mod:`reledger.commands.writerows`), read through a bounded cache and written
with their own position every few thousand entries: a new CommandAPI parses only the log's tail
since that position. Command ids: the state does not hold them. An entry the state refuses has
its command id looked up in the log (a retry of a recorded entry is always refused by the state:
its seq is taken), and the checks run again knowing it; an accepted entry whose command id is
recorded is refused by the store (the log's unique index). One lock serializes validate+append in
this process. Another process appending to the same database between the catch-up and the
append is still stopped by the store for chains, keys and command ids; its effect on reference
checks (a shipment received twice by two processes at once) is left to the projections.

Findings: each receipt has a ``findings`` list. The command API computes none itself; pass
``findings_hook(signed_entry, receipt) -> list[dict]`` (the rule engine's
``reledger.projections.hooks.ProjectionFindings``) and its answer for each newly accepted entry (not for
a duplicate) is put there (an exception of the hook is logged and
gives an empty list: the entry is already recorded). A hook that also has
``findings_of([(index, recorded_at, chain, seq, entry_hash, signed), ...]) -> {index: [...]}``
(``signed``: the SignedEntry, or its envelope bytes as the writer process sends them) is asked
that way instead, once for all the new entries of an answer; it may answer ``None`` (it cannot
say: the questions stay on the answer, for another hook).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from eventsourcing import persistence

from reledger.ledger.entry import CHAIN_RE, EntryError, SignedEntry
from reledger.ledger.registry import RegistryError
from reledger.projections.follow import ProjectionsUnavailable
from reledger.projections.snapshot import SnapshotError
from reledger.storage.reader import Record
from reledger.storage.store import AppendError, LedgerStore, LogMoved, Receipt, now_us

from .catalogue import (ERROR_CODES, SCHEMAS, CommandError, Conflict, Forbidden, InvalidCommand, UnknownReference,
                        catalogue_json_schema)
from .state import WriteState
from .validate import validate_entry
from .writerows import RowsMoved, WriteRows

log = logging.getLogger(__name__)

__all__ = ["CommandAPI", "CommandError", "CommandReceipt", "Conflict", "ERROR_CODES", "Forbidden",
           "InvalidCommand", "UnknownReference", "from_append_error"]

FindingsHook = Callable[[SignedEntry, "CommandReceipt"], list]


@dataclass(frozen=True)
class CommandReceipt(Receipt):
    """The store's receipt plus the findings the entry raised (see the module docstring)."""

    findings: tuple = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["findings"] = list(self.findings)
        return d


def from_append_error(err: AppendError, group: int | None = None) -> CommandError:
    """The command API's error for a store refusal: same code, message, field and position."""
    return CommandError.make(err.code, err.message, field=err.field, position=err.position, chain=err.chain,
                             seq=err.seq, group=group)


def _receipt(r: Receipt, findings: Sequence = ()) -> CommandReceipt:
    return CommandReceipt(r.index, r.chain, r.seq, r.entry_hash, r.recorded_at, r.duplicate, tuple(findings))


class Answer(list):
    """What submit_groups answers (receipts or an error per group), and the entries whose
    findings the hook has yet to be asked about: (receipts, position, signed entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.findings_asks: list[tuple[list, int, SignedEntry]] = []


class _Checked:
    """One group after validation: its entries, those to hand to the store (``send``: all but
    repeats of an entry of an earlier group of the same call), or the group's error."""

    __slots__ = ("entries", "send", "repeats", "new", "error", "parse_error")

    def __init__(self) -> None:
        self.parse_error: CommandError | None = None
        self.entries: list[SignedEntry] = []
        self.send: list[SignedEntry] = []
        self.repeats: dict[int, tuple[int, int]] = {}  # position -> (group, position) of the first
        self.new: list[SignedEntry] = []  # entries that are not duplicates, in order
        self.error: CommandError | None = None


_WORKERS = max(2, os.cpu_count() or 2)
MAX_ATTEMPTS = 20  # checks against a state the log outran (another process appended), then 409
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def verify_pool() -> ThreadPoolExecutor:
    """One pool per process: Ed25519 verification releases the GIL, so the signatures of a
    submission are checked in parallel before the (sequential) checks that need the state."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="reledger-command-verify")
        return _pool


class CommandAPI:
    """See the module docstring. Thread-safe."""

    def __init__(self, store: LedgerStore, *, findings_hook: FindingsHook | None = None, rows: bool = True,
                 cache_entries: int | None = None, flush_every: int | None = None):
        """``rows``: keep the write state's growing parts as rows (the default; False: all in
        memory, built from the whole log, as the tests' reference). ``cache_entries``,
        ``flush_every``: the rows' cache bound and how often they are written (writerows.py)."""
        self.store = store
        self.findings_hook = findings_hook
        self.rows = rows
        self._rows_options = {"cache_entries": cache_entries, "flush_every": flush_every}
        self._state: WriteState | None = None  # opened on first use (a server's parent may never)
        self._lock = threading.RLock()

    @property
    def state(self) -> WriteState:
        """The write state (read from the rows when first asked, or again after they moved)."""
        if self._state is None:
            rows = WriteRows.open(self.store, **self._rows_options) if self.rows else None
            try:
                self._state = WriteState(rows)
            except SnapshotError as e:  # a small part that cannot be read: the rows are built again
                if rows is None:
                    raise
                log.warning("the write state's rows hold a value that cannot be read (%s): built again from the log", e)
                rows.reset()
                rows.close()
                self._state = WriteState(WriteRows.open(self.store, **self._rows_options))
        return self._state

    @state.setter
    def state(self, value: WriteState) -> None:
        self._drop_state()
        self._state = value

    def _drop_state(self) -> None:
        """Forget the state (read again from the rows when next asked)."""
        old, self._state = self._state, None
        if old is not None and old.rows is not None:
            old.rows.close()

    def _flush(self, always: bool = False) -> None:
        """Write the state's rows if due (``always``: now); if they moved or could not be
        written, the state is read again from them when next asked (entries already committed
        are never affected: the rows are derived from the log)."""
        st = self._state
        if st is None or st.rows is None or not (always or st.flush_due()):
            return
        try:
            st.flush()
        except RowsMoved:
            self._drop_state()

    def close(self) -> None:
        """Write the state's rows and close their connection (the store is the caller's to
        close; the verification threads are shared by every CommandAPI of the process)."""
        with self._lock:
            try:
                self._flush(always=True)
            except Exception:  # noqa: BLE001 - rows are rebuilt from the log's tail anyway
                log.exception("the write state's rows could not be written at close")
            self._drop_state()

    # --- writing -------------------------------------------------------------------------
    def submit(self, envelopes: Sequence[bytes | SignedEntry]) -> list[CommandReceipt]:
        """Append one all-or-nothing group; raises CommandError (nothing written)."""
        result = self.submit_groups([envelopes])[0]
        if isinstance(result, CommandError):
            raise result
        return result

    def submit_groups(self, groups: Sequence[Sequence[bytes | SignedEntry]], *, defer_findings: bool = False
                      ) -> list[list[CommandReceipt] | CommandError]:
        """Group commit: each group accepted whole or refused whole (its CommandError in its
        place), all accepted groups written in one transaction.

        With ``defer_findings`` the findings hook is not asked yet: the answer's new receipts
        list no findings, and ``add_findings(answer)`` (called later, from any thread, once per
        answer and in commit order) asks the hook and puts each new entry's findings into its
        receipt, in place. The server does so in another thread while the next group commit
        is written."""
        with self._lock:
            out = self._readable(lambda: self._submit_locked(groups))
        if not defer_findings:
            self.add_findings(out)
        return out

    def _submit_locked(self, groups: Sequence[Sequence[bytes | SignedEntry]]) -> list:
        """Check against the write state and write, optimistically: the state is taken to be
        up to date with the log, and the store writes only if the log holds exactly as many
        entries as the state when its lock is taken (``expect_size``). Otherwise nothing is
        written: the state catches up to the size the store found and the groups are checked
        again. So the usual case costs no extra round trip, and every check ran against the
        log as it was when the entries were written (another process may append too)."""
        fresh = False  # whether the state is known to match the log now
        for _ in range(MAX_ATTEMPTS):
            base = self.state.size
            self.state.begin()
            try:
                checked = self._check_groups(groups)
            except BaseException:
                self.state.abort()
                raise
            passed = [c for c in checked if c.error is None and c.send]
            if not passed:
                if not fresh and any(c.error is not None for c in checked):
                    # a refusal decided on the state alone: make sure it was the log's state
                    size = self.store.size()
                    if size != base:
                        self.state.abort()
                        self._catch_up(size)
                        fresh = True
                        continue
                return self._finish(checked, [], [])
            try:
                # new_commands: no entry sent is a retry of a recorded one (an accepted entry's
                # command id is expected to be new: the log's unique index refuses it otherwise)
                stored = self.store.append_groups([c.send for c in passed], expect_size=base,
                                                  new_commands=all(len(c.send) == len(c.new) for c in passed))
            except LogMoved as moved:
                self.state.abort()
                self._catch_up(moved.size)
                fresh = True
                continue
            except AppendError as err:
                self.state.abort()
                raise from_append_error(err) from None
            except BaseException:
                self.state.abort()
                raise
            return self._finish(checked, passed, stored)
        raise Conflict("conflict", f"the log kept moving under appends from other writers ({MAX_ATTEMPTS} "
                       "attempts): nothing was written, send the same request again")

    def add_findings(self, answer: list) -> bool:
        """Ask the findings hook about each new entry of a :meth:`submit_groups` answer (see
        there); a second call does nothing. False when a batch hook could not say (it answered
        ``None``) or failed: the questions then stay on the answer, for another hook."""
        asks: list = getattr(answer, "findings_asks", ())
        if not asks:
            return True
        answer.findings_asks = []
        hook = self.findings_hook
        batch = getattr(hook, "findings_of", None)
        if batch is not None:  # one question for all, with the entries (the hook need not read them back)
            try:
                found = batch([(r.index, r.recorded_at, r.chain, r.seq, r.entry_hash, signed)
                               for r, signed in ((receipts[pos], signed) for receipts, pos, signed in asks)])
            except Exception:  # noqa: BLE001 - the entries are recorded whatever the hook does
                log.exception("findings hook failed for log indexes %s-%s", asks[0][0][asks[0][1]].index,
                              asks[-1][0][asks[-1][1]].index)
                found = None
            if found is None:
                answer.findings_asks = asks
                return False
            for receipts, pos, _ in asks:
                findings = found.get(receipts[pos].index)
                if findings:
                    receipts[pos] = replace(receipts[pos], findings=tuple(findings))
            return True
        for receipts, pos, signed in asks:
            r = receipts[pos]
            try:
                if isinstance(signed, bytes):  # (the writer process sends envelopes, not parsed entries)
                    signed = SignedEntry.parse(signed)
                findings = list(hook(signed, r) or ())
            except Exception:  # noqa: BLE001 - the entry is recorded whatever the hook does
                log.exception("findings hook failed for %s:%s", r.chain, r.seq)
                continue
            if findings:
                receipts[pos] = replace(r, findings=tuple(findings))
        return True

    def prepare(self, envelopes: Sequence[bytes | SignedEntry]) -> list[bytes | SignedEntry]:
        """Parse and check signatures ahead of :meth:`submit`, without the API's lock (a server
        does it in a pool while the writer is busy): each envelope parsed (one that does not
        parse is returned as it is, for submit to refuse with its message), each signature
        checked against the key its key id names now. Only a cache: a success is remembered on
        the entry (SignedEntry.signature_valid), and submit still checks every signature
        against the key that decides at the entry's position."""
        st = self._state  # (not opened here: prepare runs outside the lock, in other threads)
        keys = st.registry.keys if st is not None else {}
        out: list[bytes | SignedEntry] = []
        for item in envelopes:
            try:
                signed = item if isinstance(item, SignedEntry) else SignedEntry.parse(item)
            except (EntryError, ValueError):
                out.append(item)
                continue
            rec = keys.get(signed.entry.key_id)
            if rec is not None:
                signed.signature_valid(rec.public_key)
            out.append(signed)
        return out

    def check(self, envelopes: Sequence[bytes | SignedEntry]) -> None:
        """Every check of :meth:`submit` without writing (a dry run); raises CommandError."""
        def dry_run():
            self._catch_up()
            self.state.begin()
            try:
                return self._check_groups([envelopes], lookup_all=True)[0]
            finally:
                self.state.abort()

        with self._lock:
            c = self._readable(dry_run)
            if c.error is not None:
                raise c.error

    def catch_up(self) -> None:
        """Bring the write state up to the log now (each submission does it anyway)."""
        with self._lock:
            self._readable(self._catch_up)

    def _readable(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (under the lock); if it met a row of the write state that cannot be read (a
        damaged or foreign value: nothing read back runs, projections/snapshot.py), the rows are
        deleted, the state is built again from the log, and ``fn()`` runs once more (the rows
        are derived: the log is the truth)."""
        try:
            return fn()
        except SnapshotError as e:
            st = self._state
            if st is None or st.rows is None:
                raise
            log.warning("the write state's rows hold a value that cannot be read (%s): built again from the log", e)
            st.rows.reset()
            self._drop_state()
            return fn()

    def _catch_up(self, size: int | None = None) -> None:
        """The write state up to the log's ``size`` entries (asked of the store if not given)."""
        if size is None:
            size = self.store.size()
        if size < self.state.size:  # a different (e.g. restored) database: start again
            self._drop_state()
            if size < self.state.size:  # (the rows are checked against the log when read)
                self.state = WriteState()
        if size > self.state.size:
            try:
                self.state.catch_up(self.store.records(self.state.size, size))
            except RowsMoved:  # another writer wrote the rows past this state: read them again
                self._drop_state()
                if size > self.state.size:
                    self.state.catch_up(self.store.records(self.state.size, size))
        self._flush()

    def _lookup(self, chain: str, seq: int) -> tuple[bytes, str] | None:
        pending = self.state.pending.get((chain, seq))
        if pending is not None:
            return pending
        if not CHAIN_RE.fullmatch(chain):
            return None
        rec = self.store.entry(chain, seq)
        return None if rec is None else (rec.entry_hash, rec.type)

    def _check_groups(self, groups: Sequence[Sequence[bytes | SignedEntry]], lookup_all: bool = False
                      ) -> list[_Checked]:
        """Parse and check the groups against the state (applying what passes, journaled).
        ``lookup_all``: look up the command ids of every entry, not only of refused groups (a
        dry run, which has no store to refuse a recorded one)."""
        parsed: list[_Checked] = []
        for gi, group in enumerate(groups):
            c = _Checked()
            parsed.append(c)
            if isinstance(group, (bytes, bytearray, SignedEntry)) or not isinstance(group, (list, tuple)):
                c.parse_error = InvalidCommand("malformed", "group: must be a list of envelopes", field="group",
                                               group=gi)
                continue
            if not group:
                c.parse_error = InvalidCommand("malformed", "group: must not be empty", field="group", group=gi)
                continue
            for pos, item in enumerate(group):
                try:
                    c.entries.append(item if isinstance(item, SignedEntry) else SignedEntry.parse(item))
                except EntryError as e:
                    c.parse_error = InvalidCommand("malformed", str(e), field=e.field, position=pos, group=gi)
                    break
                except ValueError as e:  # a ledger parser that slipped (e.g. a time it half-accepts)
                    c.parse_error = InvalidCommand("malformed", f"entry: {e}", field="entry", position=pos, group=gi)
                    break
        valid = [s for c in parsed if c.parse_error is None for s in c.entries]
        self.state.prefetch(s.entry for s in valid)  # the rows the checks will read, in one query
        signature_valid = self._verify_in_parallel(valid)
        recorded_us = getattr(self.store, "clock", now_us)()
        # Command ids are looked up only for the entries of refused groups (a retry of a recorded
        # entry is always refused by the state: its seq is taken); when one is recorded, the
        # checks run again knowing it (a retry then answers its original receipt)
        recorded: dict[tuple[str, str], tuple[int, bytes]] = {}
        looked: set[tuple[str, str]] = set()
        while True:
            self._check_parsed(parsed, recorded, recorded_us, signature_valid)
            ask = {(s.entry.chain, s.entry.command_id) for c in parsed if c.parse_error is None
                   and (c.error is not None or lookup_all) for s in c.entries} - looked
            if not ask:
                return parsed
            looked |= ask
            found = self.store.queries.commands(self.store.recorder.read_cursor, sorted({cid for _, cid in ask}))
            found = {k: v for k, v in found.items() if k in ask}
            if not found:
                return parsed
            recorded.update(found)
            self.state.rollback(0)

    def _check_parsed(self, parsed: list[_Checked], recorded: dict, recorded_us: int, signature_valid) -> None:
        first: dict[tuple[str, str], tuple[bytes, int, int]] = {}  # earlier groups: hash, group, position
        index = self.state.size
        for gi, c in enumerate(parsed):
            c.error, c.send, c.new, c.repeats = c.parse_error, [], [], {}
            if c.error is not None:
                continue
            mark = self.state.mark()
            group_seen: dict[tuple[str, str], tuple[bytes, int, int]] = {}
            start_index = index
            try:
                for pos, signed in enumerate(c.entries):
                    e = signed.entry
                    ckey = (e.chain, e.command_id)
                    try:
                        earlier = group_seen.get(ckey) or first.get(ckey)
                        if earlier is None:
                            group_seen[ckey] = (signed.hash, gi, pos)
                        else:
                            if earlier[0] != signed.hash:
                                raise Conflict("command_conflict", f"command_id: {e.command_id} is used in this "
                                                                   f"submission for two different entries of chain "
                                                                   f"{e.chain}", field="command_id")
                            c.repeats[pos] = earlier[1:]  # the same command again: its first receipt
                            continue
                        old = recorded.get(ckey)
                        if old is not None:
                            if old[1] == signed.hash:
                                c.send.append(signed)  # a retry: the store answers the original receipt
                                continue
                            raise Conflict("command_conflict", f"command_id: {e.command_id} was already used on "
                                                               f"chain {e.chain} for another entry (log index "
                                                               f"{old[0]})", field="command_id")
                        validate_entry(self.state, signed, index, recorded_us, self._lookup, signature_valid)
                        try:
                            self.state.apply(signed, index)
                        except RegistryError as err:  # a registry body the key registry refuses
                            raise InvalidCommand("body", str(err), field=err.field) from None
                        c.send.append(signed)
                        c.new.append(signed)
                        index += 1
                    except CommandError as err:
                        err.group = gi
                        raise err.at(pos, e.chain, e.seq)
            except CommandError as err:
                self.state.rollback(mark)
                c.error, c.send, c.new, c.repeats, index = err, [], [], {}, start_index
                continue
            for ckey, v in group_seen.items():
                first.setdefault(ckey, v)

    def _verify_in_parallel(self, entries: list[SignedEntry]):
        """Check, in the pool, each signature against the key its key id names now; returns
        ``signature_valid(signed, public_key)`` answering from those checks (or checking anew
        when the key that decides is another one, e.g. authorized in the same submission)."""
        keys = self.state.registry.keys
        jobs = [(s, k.public_key) for s in entries if (k := keys.get(s.entry.key_id)) is not None
                and s.__dict__.get("_verified_with") != k.public_key]  # not checked already (prepare)
        if len(jobs) < 8:
            return None
        step = max(16, len(jobs) // (4 * _WORKERS))
        chunks = [jobs[i:i + step] for i in range(0, len(jobs), step)]
        results: dict[int, tuple[bytes, bool]] = {}
        for chunk, oks in zip(chunks, verify_pool().map(lambda ch: [s.signature_valid(k) for s, k in ch], chunks)):
            for (s, k), ok in zip(chunk, oks):
                results[id(s)] = (k, ok)

        def signature_valid(signed: SignedEntry, public_key: bytes) -> bool:
            done = results.get(id(signed))
            if done is not None and done[0] == public_key:
                return done[1]
            return signed.signature_valid(public_key)

        return signature_valid

    def _finish(self, checked: list[_Checked], passed: list[_Checked], stored: list
                ) -> list[list[CommandReceipt] | CommandError]:
        expected = self.state.size - sum(len(c.new) for c in passed)
        consistent = True
        by_group: dict[int, list[Receipt] | CommandError] = {}
        position = {id(c): gi for gi, c in enumerate(checked)}
        for c, result in zip(passed, stored):
            gi = position[id(c)]
            if isinstance(result, AppendError):
                consistent = False
                by_group[gi] = from_append_error(result, gi)
                continue
            for r in result:
                if r.duplicate:
                    continue
                if r.index != expected:
                    consistent = False
                expected += 1
            by_group[gi] = result
        if consistent and expected == self.state.size:
            self.state.commit()
            self._flush()
        else:  # the store decided otherwise (another writer): rebuild from the log
            self.state.abort()
            self._catch_up()

        out: Answer = Answer()
        for gi, c in enumerate(checked):
            res = c.error or by_group.get(gi, [])
            if isinstance(res, CommandError):
                out.append(res)
                continue
            stored_receipts = iter(res)
            receipts: list[CommandReceipt] = []
            for pos, signed in enumerate(c.entries):
                if pos in c.repeats:
                    g0, p0 = c.repeats[pos]
                    earlier = receipts if g0 == gi else out[g0]
                    if isinstance(earlier, CommandError):
                        receipts = Conflict("command_conflict", f"command_id: {signed.entry.command_id} was "
                                                                f"submitted in group {g0} of this submission, "
                                                                f"which was refused", field="command_id",
                                            position=pos, chain=signed.entry.chain, seq=signed.entry.seq,
                                            group=gi)
                        break
                    receipts.append(replace(earlier[p0], duplicate=True, findings=()))
                    continue
                r = next(stored_receipts)
                if self.findings_hook is not None and not r.duplicate:
                    out.findings_asks.append((receipts, len(receipts), signed))  # in log order
                receipts.append(_receipt(r))
            out.append(receipts)
        return out

    # --- reading -------------------------------------------------------------------------
    def size(self) -> int:
        return self.store.size()

    def head(self, chain: str) -> tuple[int, bytes]:
        """(seq, entry hash) of the chain's last entry; (0, 32 zero bytes) for a new chain."""
        self.check_chain_id(chain)
        return self.store.chain_head(chain)

    def entry(self, chain: str, seq: int) -> Record:
        """The stored record of chain:seq (envelope, index, record time); 404 ``not_found``."""
        self.check_chain_id(chain)
        if type(seq) is not int or seq < 1:
            raise InvalidCommand("wrong_type", "seq: must be an integer >= 1", field="seq")
        rec = self.store.entry(chain, seq)
        if rec is None:
            raise UnknownReference("not_found", f"entry: no entry {chain}:{seq} in the ledger", field="seq")
        return rec

    @staticmethod
    def check_chain_id(chain: str) -> None:
        if not isinstance(chain, str) or not CHAIN_RE.fullmatch(chain):
            raise InvalidCommand("bad_value", "chain: must be a party id of 2-64 characters A-Z 0-9 . _ -",
                                 field="chain")

    # --- description ---------------------------------------------------------------------
    @staticmethod
    def entry_types() -> list[str]:
        return list(SCHEMAS)

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """JSON Schema of every body (for the OpenAPI components)."""
        return catalogue_json_schema()


# --- the commit pipeline's answers (a group commit in threads or in the writer process) --------

# Admission: what may wait in the pipeline (accepted by HTTP, not answered yet) before an
# append is turned away with 503 (some seconds of work at the measured rates; docs/HTTP.md)
MAX_QUEUED_ENTRIES = 50_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024


class Overloaded(Exception):
    """Admission refused a group (503 ``overloaded``): nothing was queued or written."""


class WriterFailed(Exception):
    """The transaction of a group commit failed, or the writer process ended, before the
    group's answer: nothing of it was acknowledged. ``transient`` (503: send the same request
    again; a command id makes that safe) or not (500). ``name``: the error's type."""

    def __init__(self, name: str, message: str, transient: bool):
        super().__init__(message)
        self.name, self.transient = name, transient


def transient_errors() -> tuple[type[BaseException], ...]:
    """Database errors that say "not now" (lost connection, lock timeout, pool exhausted): 503."""
    errors: list[type[BaseException]] = [sqlite3.OperationalError, persistence.OperationalError,
                                         persistence.InterfaceError, ProjectionsUnavailable]
    try:
        import psycopg
        import psycopg_pool

        errors += [psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout]
    except ImportError:  # SQLite only
        pass
    return tuple(errors)
