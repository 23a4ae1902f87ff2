"""The ``reledger`` command line (README.md, "Commands"; `reledger --help`).

Every command takes ``--db URL`` (default: $RELEDGER_DB or sqlite:///./reledger.db) and
``--json`` (one JSON document on stdout). Exit codes: 0 success, 1 a verification failure or
finding the command exists to report, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import functools
import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from reledger.ledger import merkle
from reledger.ledger.bundle import BundleError, verify_bundle
from reledger.ledger.checkpoint import Checkpoint
from reledger.ledger.cosignature import log_signer
from reledger.ledger.encoding import time_text
from reledger.ledger.entry import CHAIN_RE
from reledger.ledger.genesis import ChainSigner, genesis_entries
from reledger.ledger.keys import KeyError_, SigningKey
from reledger.storage.reader import DEFAULT_URL, DatabaseURL, DatabaseURLError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_UNANCHORED = 3  # verified, but not anchored to a pinned trust root (docs/AUDIT.md)


class UsageError(Exception):
    """Bad usage or input: exit 2 with the message."""


def _argument_number(convert, ok, what: str):
    """An argparse type: ``convert(text)``, refused with a message unless ``ok(value)``
    (argparse prints the message and exits 2)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if convert is int else 'a number'}") \
                from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_positive_float = _argument_number(float, lambda v: 0 < v < 1e6, "between 0 and 1000000")  # seconds, finite
_nonnegative_int = _argument_number(int, lambda v: v >= 0, ">= 0")
_positive_int = _argument_number(int, lambda v: v >= 1, ">= 1")


def default_db() -> str:
    return os.environ.get("RELEDGER_DB", DEFAULT_URL)


def emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        text()


class PlainConsole:
    """What the commands print with when rich (the server extra) is not installed: the text,
    without rich's markup."""

    MARKUP = re.compile(r"\[/?(?:bold|dim|italic|red|green|yellow|blue|cyan|magenta)(?: [a-z]+)*\]")

    def print(self, text: Any = "", *_, **__) -> None:
        print(self.MARKUP.sub("", str(text)))


def console():
    try:
        from rich.console import Console
    except ModuleNotFoundError:  # the base install (reledger verify-bundle): plain text
        return PlainConsole()
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def now_text() -> str:
    return time_text(datetime.now(timezone.utc).replace(microsecond=0))


def open_store(args: argparse.Namespace, create: bool = False):
    from reledger.storage.store import LedgerStore

    try:
        u = DatabaseURL.parse(args.db)
    except DatabaseURLError as e:
        raise UsageError(str(e)) from e
    if u.backend == "sqlite" and not create and not Path(u.path).exists():
        raise UsageError(f"no ledger at {u.path}: run `reledger init` (or `reledger demo`) first, or pass --db")
    if u.backend == "sqlite":
        Path(u.path).parent.mkdir(parents=True, exist_ok=True)
    return LedgerStore(args.db, create=True)


# --- what the user named: checked before anything is opened for writing ----------------------
#
# A typo must never give a clean answer: a database, schema, party, lot, year or time that the
# ledger does not know is exit 2 with a message (and the closest known name, when one is close).
# NOTE for the read-only opening of databases (storage/reader.py, another engineer's): the
# helpers here only read, through LogReader (SQLite mode=ro; PostgreSQL read-only), and check
# that the ledger exists before any command opens the store; they can be replaced by the
# reader's own "open read-only or fail" when it lands.

CST = timezone(timedelta(hours=8), "CST")
PG_CONNECT_TIMEOUT_S = 5


def suggest(name: str, known) -> str:
    """' (did you mean X?)' for the closest known name (case-insensitive), or ''."""
    import difflib

    known = sorted(set(known))
    same_case = [k for k in known if k.lower() == name.lower()]
    if same_case:
        return f" (did you mean {same_case[0]}?)"
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    if close:
        return " (did you mean " + " or ".join(lowered[c] for c in close) + "?)"
    return ""


def parse_when(text: str, option: str, *, end_of_day: bool) -> int:
    """A time given on the command line, in microseconds since the epoch (UTC).

    A date ``YYYY-MM-DD`` means that whole day in China Standard Time (UTC+8, DOMAIN.md's legal
    time, docs/OPERATIONS.md): its first microsecond (``end_of_day=False``, as ``--from``) or its
    last (as ``--until``, ``--valid-at``, ``--as-of``). Otherwise an RFC 3339 time with ``Z`` or
    an offset (``2024-06-30T00:00:00Z``, ``2024-06-30T08:00:00+08:00``). The one parser of times
    for every command."""
    import re

    from reledger.ledger.encoding import time_to_micros

    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=CST)
            start = time_to_micros(day)
            return start + 86_400_000_000 - 1 if end_of_day else start
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}:\d{2})", text):
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
            return time_to_micros(dt)
    except ValueError:
        pass
    raise UsageError(f"{option} {text!r} is not a date YYYY-MM-DD (a whole day in China Standard Time, UTC+8) "
                     "or an RFC 3339 time with Z or an offset, like 2024-06-30T00:00:00Z")


def when_text(micros: int) -> str:
    from reledger.ledger.encoding import micros_to_time_text

    return micros_to_time_text(micros)


class Ledger:
    """What the command line checked about the ledger at --db: it exists and is a ledger."""

    def __init__(self, url: str, size: int, last_us: int):
        self.url, self.size, self.last_us = url, size, last_us
        self._parties: set[str] | None = None

    def reader(self):
        from reledger.storage.reader import LogReader

        return LogReader(self.url)

    def has_chain(self, party: str) -> bool:
        with self.reader() as r:
            return r.queries.chain_head(r.cursor(), party) is not None

    def parties(self) -> set[str]:
        """Every party id the ledger knows: its chains and the parties the registry names."""
        if self._parties is None:
            from reledger.ledger.entry import SignedEntry

            with self.reader() as r:
                known = {c for c, _ in r.queries.chains(r.cursor())}
                for rec in r.queries.records_of_types(r.cursor(), ["PartyRegistered"], 0, self.size):
                    try:
                        body = SignedEntry.parse(rec.envelope).entry.body
                    except Exception:  # noqa: BLE001 - an unreadable entry names nobody (verify reports it)
                        continue
                    if isinstance(body, dict) and isinstance(body.get("party"), str):
                        known.add(body["party"])
            self._parties = known
        return self._parties

    def require_party(self, party: str | None, option: str = "--party") -> None:
        if party is None or self.has_chain(party) or party in self.parties():
            return
        raise UsageError(f"{option} {party}: no such party in the ledger at {self.url}"
                         f"{suggest(party, self.parties())}")


def reachable(args: argparse.Namespace) -> None:
    """Where a new ledger is to be made, --db can be reached (exit 2 in seconds otherwise, not
    after the connection pool's 30 s): a SQLite path that is not a directory and whose folder
    exists or can be made; a PostgreSQL server that answers."""
    from reledger.storage.reader import DatabaseURL, DatabaseURLError

    try:
        u = DatabaseURL.parse(args.db)
    except DatabaseURLError as e:
        raise UsageError(str(e)) from e
    if u.backend == "sqlite":
        p = Path(u.path)
        if p.is_dir():
            raise UsageError(f"--db {args.db}: {u.path} is a directory; name the ledger's database file")
        if p.exists() and p.stat().st_size and open(p, "rb").read(16) != b"SQLite format 3\x00":
            raise UsageError(f"--db {args.db}: {u.path} is not a reledger ledger (not a SQLite database)")
        return
    try:
        import psycopg

        with psycopg.connect(u.conninfo(), connect_timeout=PG_CONNECT_TIMEOUT_S, autocommit=True):
            pass
    except psycopg.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot reach the database at {args.db}: {first}") from e


def check_ledger(args: argparse.Namespace, *, allow_empty: bool = False) -> Ledger:
    """The ledger at ``args.db`` exists and is one (exit 2 otherwise): a SQLite file that is a
    reledger database, or a PostgreSQL database and schema (connect timeout 5 s) that holds
    the ledger's tables. Only reads; writes nothing, creates nothing."""
    import sqlite3

    from reledger.storage.reader import DatabaseURL, DatabaseURLError, LogReader

    try:
        u = DatabaseURL.parse(args.db)
    except DatabaseURLError as e:
        raise UsageError(str(e)) from e
    where = args.db
    if u.backend == "sqlite":
        p = Path(u.path)
        if not p.exists():
            raise UsageError(f"no ledger at {u.path}: run `reledger init` (or `reledger demo`) first, or pass --db")
        if not p.is_file():
            raise UsageError(f"--db {args.db}: {u.path} is not a file (a directory?); name the ledger's database file")
        try:
            with open(p, "rb") as f:
                magic = f.read(16)
        except OSError as e:
            raise UsageError(f"--db {args.db}: cannot read {u.path}: {e.strerror}") from e
        if magic != b"SQLite format 3\x00":
            raise UsageError(f"--db {args.db}: {u.path} is not a reledger ledger (not a SQLite database)")
    else:
        os.environ.setdefault("PGCONNECT_TIMEOUT", str(PG_CONNECT_TIMEOUT_S))
        try:
            import psycopg

            with psycopg.connect(u.conninfo(), connect_timeout=PG_CONNECT_TIMEOUT_S, autocommit=True) as conn:
                row = conn.execute("SELECT to_regclass(%s), to_regnamespace(%s)",
                                   (f"{u.schema}.reledger_log", u.schema)).fetchone()
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"cannot reach the ledger at {args.db}: {first}") from e
        if row[1] is None:
            raise UsageError(f"--db {args.db}: no schema {u.schema!r} in database {u.dbname!r} "
                             "(run `reledger init --db ...` to create a ledger there)")
        if row[0] is None:
            raise UsageError(f"--db {args.db}: schema {u.schema!r} holds no reledger ledger")
    try:
        with LogReader(args.db) as r:
            size, last_us = r.queries.size(r.cursor())
    except (sqlite3.Error, OSError) as e:
        raise UsageError(f"--db {where} is not a reledger ledger ({e})") from e
    except Exception as e:  # noqa: BLE001 - psycopg errors: the message, never a traceback
        raise UsageError(f"cannot read the ledger at {where}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
    if size == 0 and not allow_empty:
        raise UsageError(f"the ledger at {where} is empty (no entries): run `reledger init` or `reledger demo` first")
    return Ledger(args.db, size, last_us)


class Ticker:
    """Progress lines on stderr for work that can take more than two seconds, on a terminal or
    not (a log keeps them): the first after 2 s, then one every ``every`` seconds."""

    def __init__(self, label: str, total: int | None = None, every: float = 3.0, first: float = 2.0):
        import time

        self.label, self.total, self.every = label, total, every
        self._clock = time.monotonic
        self.start = self._clock()
        self.next = self.start + first

    def __call__(self, done: int, total: int | None = None, what: str = "entries") -> None:
        now = self._clock()
        if now < self.next:
            return
        self.next = now + self.every
        total = total if total is not None else self.total
        of = f" of {total:,}" if total else ""
        pct = f" ({100 * done / total:.0f} %)" if total else ""
        print(f"reledger: {self.label}: {done:,}{of} {what}{pct}, {now - self.start:.0f} s", file=sys.stderr, flush=True)


class heartbeat:
    """``with heartbeat("rebuilding the projections"):`` a line on stderr every ``every``
    seconds while the block runs: how far it is when ``status()`` says (it runs in the line's
    thread: it must only read what the work publishes), else "still working"."""

    def __init__(self, label: str, every: float = 5.0, status: Callable[[], str] | None = None):
        import threading

        self.label, self.every, self.status = label, every, status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            try:
                how = self.status() if self.status is not None else "still working"
            except Exception:  # noqa: BLE001 - a progress line never stops the work
                how = "still working"
            print(f"reledger: {self.label}: {how}, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    def __enter__(self) -> "heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def point_of(args: argparse.Namespace, ledger: Ledger):
    """The point in time asked for (--as-of, --valid-at), checked against the ledger."""
    from reledger.projections.queries import Point

    n = valid = None
    as_of = getattr(args, "as_of", None)
    if as_of:
        if as_of.strip().isdigit():
            n = int(as_of)
            if n > ledger.size:
                raise UsageError(f"--as-of {n}: the log has only {ledger.size} entries (0 <= N <= {ledger.size})")
        else:
            t = parse_when(as_of, "--as-of", end_of_day=True)
            with ledger.reader() as r:
                n = r.queries.index_at_time(r.cursor(), t)
    if getattr(args, "valid_at", None):
        valid = parse_when(args.valid_at, "--valid-at", end_of_day=True)
    return Point(n, valid)


def open_readonly(args: argparse.Namespace):
    """The ledger for a command that only reads: a read-only connection, no DDL (DESIGN.md
    "Reads never write"); no ledger there (a missing file, a foreign file, a missing schema)
    is a usage error."""
    from reledger.storage.reader import DatabaseURLError, NoLedger, open_ledger_readonly

    try:
        return open_ledger_readonly(args.db)
    except (NoLedger, DatabaseURLError) as e:
        raise UsageError(str(e)) from e


# --- init / keygen -------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    reachable(args)
    if args.serving_role and not args.db.startswith(("postgresql:", "postgres:")):
        raise UsageError("--serving-role needs a PostgreSQL --db")
    if args.checkpointer_role and not args.db.startswith(("postgresql:", "postgres:")):
        raise UsageError("--checkpointer-role needs a PostgreSQL --db")
    keys_dir = Path(args.keys)
    if keys_dir.exists() and not keys_dir.is_dir():
        raise UsageError(f"--keys {args.keys} is a file, not a directory")
    keys_dir.mkdir(parents=True, exist_ok=True)
    reg_path, op_path = keys_dir / f"{args.regulator}.key", keys_dir / "operator.key"
    for p in (reg_path, op_path):
        if p.exists() and not args.force:
            raise UsageError(f"{p} exists: refusing to overwrite a key (use another --keys dir, or --force)")
    with open_store(args, create=True) as store:
        if store.size() != 0:
            raise UsageError(f"the ledger at {args.db} is not empty ({store.size()} entries)")
        reg = SigningKey.generate(args.regulator)
        op = SigningKey.generate(args.regulator, "checkpoint", name=args.origin, mldsa=not args.no_ml_dsa)
        at = now_text()
        receipts = store.append(genesis_entries(ChainSigner(reg), op, name=args.name, origin=args.origin, at=at))
        reg.write(reg_path, overwrite=args.force)
        op.write(op_path, overwrite=args.force)
        signer = log_signer(op)
        note = store.checkpoint(signer)
        from reledger.projections.store import ProjectionStore

        ps = ProjectionStore(args.db)  # the projection tables, made here by the owner (reads never make them)
        try:
            ps.catch_up()
            from reledger.commands import writerows

            writerows.create(args.db)  # the writer's state rows (commands/writerows.py), made by the owner
            if args.serving_role:
                store.grant_serving_role(args.serving_role)
                ps.grant_serving_role(args.serving_role)
                writerows.grant_serving_role(args.db, args.serving_role)  # its writer keeps them
                from reledger.storage.nonces import grant_nonces

                grant_nonces(args.db, args.serving_role)  # the signed reads' nonces: SELECT, INSERT, DELETE
            if args.checkpointer_role:
                store.grant_checkpointer_role(args.checkpointer_role)  # SELECT the log, INSERT checkpoints
        finally:
            ps.close()
    data = {"db": args.db, "regulator": args.regulator, "genesis": receipts[0].entry_hash.hex(),
            "regulator_key": str(reg_path), "checkpoint_key": str(op_path), "checkpoint_vkey": signer.verifier().vkey(),
            "checkpoint_mldsa_vkey": signer.mldsa.verifier().vkey() if signer.mldsa else None,
            "origin": args.origin, "checkpoint": note.decode()}

    def text() -> None:
        c = console()
        c.print(f"[bold]New ledger[/bold] at {args.db}")
        c.print(f"  genesis entry hash  {data['genesis']}   (pin it: reledger verify --genesis ...)")
        c.print(f"  regulator key       {reg_path} (key id {reg.key_id})")
        c.print(f"  checkpoint key      {op_path}")
        c.print(f"  checkpoint vkey     {data['checkpoint_vkey']}")
        if data["checkpoint_mldsa_vkey"]:
            c.print(f"  ML-DSA-44 vkey      {data['checkpoint_mldsa_vkey']}", soft_wrap=True)
    emit(args, data, text)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    if not CHAIN_RE.match(args.party):
        raise UsageError(f"--party {args.party!r} is not a party id (2-64 characters A-Z 0-9 . _ -)")
    if args.no_ml_dsa and args.purpose != "checkpoint":
        raise UsageError("--no-ml-dsa is for checkpoint keys (entry keys are Ed25519 alone)")
    key = SigningKey.generate(args.party, args.purpose, name=args.name,
                              mldsa=args.purpose == "checkpoint" and not args.no_ml_dsa)
    out = writable(args.out or f"{args.party}.key")
    try:
        key.write(out, overwrite=args.force)
    except FileExistsError as e:
        raise UsageError(f"{out} exists: refusing to overwrite a key (use --force)") from e
    data = {"party": key.party, "purpose": key.purpose, "key_id": key.key_id,
            "public_key": base64.b64encode(key.public_key).decode(), "file": str(out),
            "mldsa44_public_key": base64.b64encode(key.mldsa_public_key).decode() if key.mldsa_seed else None}
    emit(args, data, lambda: console().print(
        f"wrote {out} (mode 0600)\nparty       {key.party}\nkey id      {key.key_id}\n"
        f"public key  {data['public_key']}"))
    return EXIT_OK


# --- verify / checkpoint / prove ----------------------------------------------------------

def cmd_verify_party(args: argparse.Namespace) -> int:
    """One party's chain: its bundle built from the database and checked as an auditor would
    offline (signatures with the key valid at each position, the chain, every inclusion proof,
    the checkpoint signature, consistency with every earlier checkpoint)."""
    from reledger.replay.export import ExportError, build_bundle

    ledger = check_ledger(args)
    ledger.require_party(args.party)
    notes = read_files(args.checkpoint, "--checkpoint")
    try:
        data, summary = build_bundle(args.db, args.party)
    except ExportError as e:
        raise UsageError(str(e)) from e
    rep = verify_bundle(data, trusted_checkpoint_keys=args.checkpoint_key, trusted_genesis=args.genesis, older=notes)
    out = {**rep.to_dict(), "after_checkpoint": summary["after_checkpoint"]}

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if rep.ok else "[red]FAILED[/red]"
        c.print(f"verify {status}: party {args.party}: {rep.chain_length} chain entries, {rep.registry_entries} "
                f"registry entries, {rep.proofs} "
                f"inclusion proofs against checkpoint {rep.origin} size {rep.size}; consistent with "
                f"{len(rep.consistency_checked)} earlier checkpoints")
        if summary["after_checkpoint"]:
            c.print(f"{summary['after_checkpoint']} later entries are not checkpointed yet (reledger checkpoint)")
        for p in rep.problems[:20]:
            c.print(f"[red]problem:[/red] {p}")
    emit(args, out, text)
    return EXIT_OK if rep.ok else EXIT_FAILED


def cmd_verify_projections(args: argparse.Namespace) -> int:
    """Recompute the derived rows from the log (streaming, read-only) and name every row of the
    projection tables that differs."""
    from reledger.projections.check import verify_projections
    from reledger.storage.reader import DatabaseURLError, NoLedger

    try:
        with progress_of(args, "recomputing the projections", None) as progress:
            check = verify_projections(args.db, progress=progress)
    except (NoLedger, DatabaseURLError) as e:
        raise UsageError(str(e)) from e
    out = check.to_dict()

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if check.ok else "[red]FAILED[/red]"
        c.print(f"verify --projections {status}: recomputed the derived rows of {check.entries} log entries "
                f"(projections at {check.position} of the log's {check.log_size}); {check.count} rows differ")
        for p in check.problems:
            print(f"differs: {p}")
        if out["problems_left_out"]:
            c.print(f"... and {out['problems_left_out']} more")
    emit(args, out, text)
    return EXIT_OK if check.ok else EXIT_FAILED


@contextlib.contextmanager
def progress_of(args: argparse.Namespace, label: str, otherwise):
    """A ``progress(done, total)`` callback: a bar on a terminal (not under --json), else
    ``otherwise`` (progress lines, or None)."""
    if args.json or not sys.stderr.isatty():
        yield otherwise
        return
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=None)
    bar.start()
    try:
        yield lambda done, total: bar.update(task, completed=done, total=total)
    finally:
        bar.stop()


def cmd_verify(args: argparse.Namespace) -> int:
    from reledger.storage.verify import verify_database

    if args.party:
        return cmd_verify_party(args)
    if args.projections:
        return cmd_verify_projections(args)

    check_ledger(args)  # a missing or empty ledger is exit 2, never "verify OK: 0 entries"
    notes = read_files(args.checkpoint, "--checkpoint")
    trust_path, trust = load_trust(args)
    genesis, keys = pinned_roots(args, trust, notes)
    try:
        with progress_of(args, "verifying", Ticker("verifying")) as progress:
            rep = verify_database(args.db, workers=args.workers, trusted_genesis=genesis,
                                  trusted_checkpoint_keys=keys, checkpoint_notes=notes,
                                  progress=progress)
    except ValueError as e:
        raise UsageError(str(e)) from e

    latest = None
    if rep.ok and trust is not None:
        from reledger.storage.verify import latest_signed_checkpoint

        with open_readonly(args) as store:
            signed = latest_signed_checkpoint(store)  # judged by their notes, never by a size column
        latest = signed[2] if signed else None
    anchor = anchored(trust_path, trust, genesis, rep.ok, latest)

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if rep.ok and anchor["anchored"] else (
            "[yellow]OK, NOT ANCHORED[/yellow]" if rep.ok else "[red]FAILED[/red]")
        c.print(f"verify {status}: {rep.entries} entries, {rep.chains} chains, {rep.keys} keys, "
                f"{rep.checkpoints} checkpoints; log size {rep.size}, root {rep.root.hex()}")
        print_anchor(c, anchor, rep.genesis)
        if not rep.ok:
            c.print(f"[red]first bad entry:[/red] {rep.first}")
            for p in rep.problems[1:10]:
                c.print(f"  also: {p}")
            if len(rep.problems) > 10:
                c.print(f"  ... {len(rep.problems) - 10} more")
    emit(args, {**rep.to_dict(), **anchor}, text)
    return anchor_exit(rep.ok, anchor)


# --- pinned trust (ledger/trust.py, docs/AUDIT.md) ----------------------------------------------

def load_trust(args: argparse.Namespace):
    """(path, Trust) from --trust or $RELEDGER_TRUST, or (None, None)."""
    from reledger.ledger.trust import Trust, TrustError

    path = getattr(args, "trust", None) or os.environ.get("RELEDGER_TRUST")
    if not path:
        return None, None
    try:
        return path, Trust.read(path)
    except TrustError as e:
        raise UsageError(f"--trust: {e}") from None


def pinned_roots(args: argparse.Namespace, trust, notes: list[bytes]) -> tuple[str | None, list[str]]:
    """The genesis and checkpoint keys to verify against: the trust file's, or the options'. The
    trust file's pinned checkpoint joins the notes the log must be consistent with."""
    genesis, keys = args.genesis, list(args.checkpoint_key)
    if trust is None:
        return genesis, keys
    if genesis and genesis != trust.genesis:
        raise UsageError(f"--genesis {genesis} is not the trust file's pinned genesis {trust.genesis}")
    if trust.checkpoint:
        notes.append(trust.checkpoint.encode("utf-8"))
    return trust.genesis, keys + trust.vkeys


def anchored(trust_path, trust, genesis: str | None, ok: bool, latest: bytes | None) -> dict:
    """Whether a verification is anchored to a pinned root, and the trust file moved forward to
    ``latest`` (the verified checkpoint) when it is. Nothing pinned: not anchored."""
    from reledger.ledger.trust import TrustError

    out = {"anchored": False, "trust": trust_path, "pinned_genesis": genesis, "pinned_checkpoint_size": None,
           "anchor": "nothing pinned: the log vouches for itself (pin with `reledger trust init`, or --genesis)"}
    if trust is None:
        if genesis:
            out.update(anchored=True, anchor=f"the genesis pinned with --genesis ({genesis})")
        return out
    pinned = trust.pinned
    out["pinned_checkpoint_size"] = pinned.size if pinned else None
    if not ok:
        out["anchor"] = "verification failed: the trust file is left as it was"
        return out
    if latest is None:
        out.update(anchored=True, anchor=f"the trust file {trust_path} (genesis pinned; no checkpoint to move to)")
        return out
    try:
        moved = trust.advanced(latest)
    except TrustError as e:
        out["anchor"] = f"not anchored: {e}"
        return out
    try:
        moved.write(trust_path)
    except TrustError as e:
        raise UsageError(str(e)) from None
    size = moved.pinned.size
    was = f"from size {pinned.size} " if pinned else ""
    out.update(anchored=True, pinned_checkpoint_size=size,
               anchor=f"the trust file {trust_path}: genesis pinned, checkpoint consistent and moved {was}to size {size}")
    return out


def print_anchor(c, anchor: dict, genesis: str | None) -> None:
    if anchor["anchored"]:
        c.print(f"anchored: {anchor['anchor']}")
    else:
        c.print(f"[yellow]NOT ANCHORED[/yellow]: {anchor['anchor']}; genesis of this log: {genesis}")


def anchor_exit(ok: bool, anchor: dict) -> int:
    if not ok:
        return EXIT_FAILED
    return EXIT_OK if anchor["anchored"] else EXIT_UNANCHORED


def cmd_trust(args: argparse.Namespace) -> int:
    from reledger.ledger.trust import Trust, TrustError

    try:
        if args.action == "init":
            if not (args.genesis and args.log_vkey):
                raise UsageError("trust init needs --genesis HASH and --log-vkey VKEY, from a source you trust "
                                 "(the operator's publication, not the ledger itself)")
            policy = Path(args.policy).read_text(encoding="utf-8") if args.policy else None
            note = Path(args.checkpoint).read_text(encoding="utf-8") if args.checkpoint else None
            trust = Trust(args.genesis.lower(), args.log_vkey, policy, note, args.log_mldsa_vkey)
            trust.write(writable(args.trust, "--trust"), new=True)
        else:
            trust = Trust.read(args.trust)
    except OSError as e:
        raise UsageError(f"{e.filename}: {e.strerror or e}") from None
    except TrustError as e:
        raise UsageError(str(e)) from None
    pinned = trust.pinned
    data = {"trust": args.trust, "genesis": trust.genesis, "log_vkey": trust.log_vkey,
            "log_mldsa_vkey": trust.log_mldsa_vkey,
            "policy": trust.policy, "checkpoint_size": pinned.size if pinned else None}
    emit(args, data, lambda: print(f"trust file {args.trust}\n  genesis    {trust.genesis}\n  log vkey   "
                                   f"{trust.log_vkey}\n  ML-DSA-44  "
                                   f"{trust.log_mldsa_vkey[:60] + '... (required)' if trust.log_mldsa_vkey else 'not pinned'}"
                                   f"\n  witnesses  "
                                   f"{'a policy of ' + str(len(trust.policy.splitlines())) + ' lines' if trust.policy else 'none pinned'}"
                                   f"\n  checkpoint {('size ' + str(pinned.size)) if pinned else 'none yet'}"))
    return EXIT_OK


def cmd_verify_proof(args: argparse.Namespace) -> int:
    """A tlog-proof, offline: the checkpoint against the pinned (or given) log key and witness
    policy, the entry's inclusion in it."""
    from reledger.ledger.checkpoint import NoteError
    from reledger.ledger.tlogproof import ProofFormatError, verify

    data = read_files([args.proof], "PROOF")[0]
    trust_path, trust = load_trust(args)
    policy = load_policy(args.policy) if args.policy else None
    vkeys = list(args.checkpoint_key) + (trust.vkeys if trust else [])
    if trust and trust.policy and policy is None:
        from reledger.ledger.cosignature import Policy

        policy = Policy.parse(trust.policy.encode("utf-8"))
    if not vkeys:
        raise UsageError("verify-proof needs the log's key: --trust FILE (pinned) or --checkpoint-key VKEY")
    try:  # Ed25519 log keys, each with its pinned ML-DSA-44 half (a 0x06 vkey of the same name)
        from reledger.ledger import rules
        from reledger.ledger.registry import Registry

        logs = rules.checkpoint_verifiers(Registry(), 0, vkeys)
    except NoteError as e:
        raise UsageError(f"--checkpoint-key: {e}") from None
    try:
        v = verify(data, logs, policy)
    except ProofFormatError as e:
        why = str(e)
        emit(args, {"ok": False, "problems": [why]}, lambda: print(f"verify-proof FAILED: {why}"))
        return EXIT_FAILED
    e = v.entry.entry
    out = {"ok": True, "entry": f"{e.chain}:{e.seq}", "type": e.type, "index": v.index, "entry_hash": v.entry.hash.hex(),
           "checkpoint": {"origin": v.checkpoint.origin, "size": v.checkpoint.size, "root": v.checkpoint.root.hex()},
           "cosigned_by": v.cosigned_by}
    emit(args, out, lambda: print(f"verify-proof OK: {e.chain}:{e.seq} ({e.type}) is entry {v.index} of the log "
                                  f"{v.checkpoint.origin} at size {v.checkpoint.size}"
                                  + (f", cosigned by {', '.join(sorted(v.cosigned_by))}" if v.cosigned_by else "")))
    return EXIT_OK


def cmd_vkey(args: argparse.Namespace) -> int:
    signer = load_checkpoint_signer(args)
    vkey = signer.verifier().vkey()
    pq = signer.mldsa.verifier().vkey() if signer.mldsa is not None else None
    emit(args, {"vkey": vkey, "mldsa_vkey": pq, "origin": signer.name},
         lambda: print("\n".join([vkey] + ([pq] if pq else []))))
    return EXIT_OK


def read_files(paths: list[str], option: str) -> list[bytes]:
    out = []
    for p in paths:
        try:
            out.append(Path(p).read_bytes())
        except OSError as e:
            raise UsageError(f"{option} {p}: {e.strerror or e}") from e
    return out


def writable(path: str, option: str = "--out") -> Path:
    """A file the command may write: its folder exists and it is not a folder."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {path} is a directory: name a file")
    if not p.parent.is_dir():
        raise UsageError(f"{option} {path}: there is no directory {str(p.parent)!r}")
    return p


def load_checkpoint_signer(args: argparse.Namespace):
    path = Path(args.key)
    if not path.is_file():
        raise UsageError(f"--key {args.key}: no such key file (`reledger init` writes reledger-keys/operator.key, "
                         "`reledger demo` reledger-demo/keys/operator.key)")
    try:
        key = SigningKey.read(path)
    except (KeyError_, OSError, ValueError) as e:
        raise UsageError(f"--key {args.key}: {e}") from e
    if key.purpose != "checkpoint" or not key.name:
        raise UsageError(f"{path} is not a checkpoint key (purpose 'checkpoint' with a name)")
    return log_signer(key)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    check_ledger(args)
    signer = load_checkpoint_signer(args)
    policy = load_policy(args.policy) if args.policy else None
    from reledger.commands import witness

    with open_store(args) as store:
        try:
            note, report = witness.publish(store, signer, policy, timeout=args.witness_timeout)
        except ValueError as e:  # a key not registered, or not in the policy
            raise UsageError(str(e)) from None
        except witness.NotPublished as e:
            for r in e.report:
                print(f"witness {r.witness}: {'cosigned' if r.ok else 'refused'} ({r.detail})", file=sys.stderr)
            print(f"reledger {'checkpoint' if e.stale else 'checkpoint: checkpoint not published'}: {e}",
                  file=sys.stderr)
            return EXIT_FAILED

    cp = Checkpoint.parse(note.split(b"\n\n", 1)[0] + b"\n")
    data = {"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "note": note.decode(),
            "witnesses": [{"witness": r.witness, "cosigned": r.ok, "detail": r.detail} for r in report]}
    emit(args, data, lambda: sys.stdout.write(note.decode()))
    return EXIT_OK


def load_policy(path: str):
    from reledger.ledger.cosignature import CosignatureError, Policy

    try:
        return Policy.parse(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read the witness policy {path}: {e.strerror or e}") from None
    except CosignatureError as e:
        raise UsageError(f"{path}: {e}") from None


# --- witness ------------------------------------------------------------------------------------

def cmd_witness(args: argparse.Namespace) -> int:
    from reledger.commands import witness
    from reledger.ledger.checkpoint import NoteError, NoteVerifier
    from reledger.ledger.cosignature import COSIG_ED25519, COSIG_MLDSA44, CosignatureSigner

    try:
        if args.action == "keygen":
            signers = [CosignatureSigner.generate(args.name, COSIG_ED25519)]
            if not args.no_ml_dsa:
                signers.append(CosignatureSigner.generate(args.name, COSIG_MLDSA44))
            witness.write_key_file(args.key, signers, force=args.force)
            emit(args, {"key": args.key, "vkeys": [s.verifier().vkey() for s in signers]},
                 lambda: print("\n".join([f"wrote {args.key}"] + [s.verifier().vkey() for s in signers])))
            return EXIT_OK
        signers = witness.read_key_file(args.key)
        if args.action == "vkey":
            vkeys = [s.verifier().vkey() for s in signers]
            emit(args, {"name": signers[0].name, "vkeys": vkeys}, lambda: print("\n".join(vkeys)))
            return EXIT_OK
        try:
            logs = [NoteVerifier.from_vkey(v) for v in args.log]
        except NoteError as e:
            raise UsageError(f"--log: {e}") from None
        state = witness.WitnessState(args.state)
        try:
            server = witness.make_server(witness.Witness(signers, logs, state), args.host, args.port)
        except OSError as e:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
        print(f"witness {signers[0].name} listening on http://{args.host}:{server.server_address[1]} "
              f"for {', '.join(v.name for v in logs)}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            state.close()
        return EXIT_OK
    except witness.WitnessError as e:
        raise UsageError(str(e)) from None


def parse_entry_ref(text: str, option: str) -> tuple[str, int]:
    chain, _, seq = text.rpartition(":")
    if not chain or not seq.isdigit() or int(seq) < 1:
        raise UsageError(f"{option} {text!r}: give CHAIN:SEQ, e.g. MIIT:1 (seq counts from 1)")
    return chain, int(seq)


def cmd_prove(args: argparse.Namespace) -> int:
    ledger = check_ledger(args)
    if args.size is not None and not 1 <= args.size <= ledger.size:
        raise UsageError(f"--size {args.size}: the log has {ledger.size} entries (1 <= N <= {ledger.size})")
    if args.entry:
        chain, seq = parse_entry_ref(args.entry, "--entry")
        if not ledger.has_chain(chain):
            raise UsageError(f"--entry {args.entry}: no chain {chain} in the ledger{suggest(chain, ledger.parties())}")

    from reledger.storage.verify import latest_signed_checkpoint

    with open_readonly(args) as store:
        # judged by their notes: a junk or altered row is no checkpoint
        latest = latest_signed_checkpoint(store)
        size = args.size or (latest[0] if latest else store.size())
        note = latest[2].decode() if latest and latest[0] == size else None
        root = store.root(size)
        if args.entry:
            rec = store.entry(chain, seq)
            if rec is None:
                head = store.chain_head(chain)[0]
                raise UsageError(f"--entry {args.entry}: chain {chain} has entries 1..{head}")
            if rec.index >= size:
                raise UsageError(f"entry {args.entry} (index {rec.index}) is not in a tree of size {size}; "
                                 "make a checkpoint first or pass --size")
            proof = store.inclusion_proof(rec.index, size)
            leaf = rec.nodes[:32]
            merkle.verify_inclusion(leaf, rec.index, size, proof, root)
            data = {"kind": "inclusion", "entry": args.entry, "index": rec.index, "size": size,
                    "leaf_hash": leaf.hex(), "entry_hash": rec.entry_hash.hex(), "recorded_at": rec.recorded_at,
                    "root": root.hex(), "proof": [h.hex() for h in proof], "checkpoint": note}
            if args.tlog_proof:
                from reledger.ledger.tlogproof import TlogProof

                if note is None:
                    raise UsageError(f"--tlog-proof: no checkpoint of size {size} is stored: a tlog-proof carries "
                                     "the signed checkpoint (run `reledger checkpoint`, or leave out --size)")
                out = TlogProof(rec.envelope, rec.recorded_at, rec.index, tuple(proof), note.encode()).text()
                sys.stdout.write(out.decode("utf-8"))
                return EXIT_OK
        elif args.from_ is not None and args.to is not None:
            if not 0 <= args.from_ <= args.to <= store.size():
                raise UsageError(f"need 0 <= --from <= --to <= {store.size()}")
            root1, root2 = store.root(args.from_), store.root(args.to)
            if args.from_ == 0:  # every log extends the empty one: RFC 9162 has no proof for it
                proof = []
            else:
                proof = store.consistency_proof(args.from_, args.to)
                merkle.verify_consistency(args.from_, args.to, proof, root1, root2)
            data = {"kind": "consistency", "from": args.from_, "to": args.to, "root_from": root1.hex(),
                    "root_to": root2.hex(), "proof": [h.hex() for h in proof]}
        else:
            raise UsageError("prove needs --entry CHAIN:SEQ, or --from N --to M")
        if args.tlog_proof:
            raise UsageError("--tlog-proof proves one entry: give --entry CHAIN:SEQ")
    def text() -> None:
        for k, v in data.items():
            if k == "proof":
                print("proof:")
                for h in v:
                    print(f"  {h}")
            elif k == "checkpoint" and v:
                print("checkpoint:\n  " + v.replace("\n", "\n  "))
            else:
                print(f"{k}: {v}")
        print("(proof verified against the root before printing)")
    emit(args, data, text)
    return EXIT_OK


# --- projections ----------------------------------------------------------------------------

def open_projections(args: argparse.Namespace, parties: tuple[str, ...] = ("party",)):
    """The projections of the ledger, read-only (the tables as they stand: no catch-up, no DDL),
    and the point in time asked for. The ledger, the parties named (``args.<name>``) and the
    times are checked first (exit 2)."""
    from reledger.projections.store import ProjectionReader
    from reledger.storage.reader import DatabaseURLError, NoLedger

    ledger = check_ledger(args)
    for name in parties:
        ledger.require_party(getattr(args, name, None), "--" + name.replace("_", "-"))
    point = point_of(args, ledger)
    try:
        ps = ProjectionReader(args.db)
    except (NoLedger, DatabaseURLError) as e:
        raise UsageError(str(e)) from e
    return ps, point


def reflects_text(r: dict | None) -> str:
    """One line: what a projection answer reflects (log position, log size, checkpoint)."""
    if not r:
        return ""
    cp = r["checkpoint"]
    return (f"answer from the projections at log position {r['projections_position']} of {r['log_size']} entries"
            + (f"; latest checkpoint: size {cp['size']}, root {cp['root'][:16]}…" if cp else "; no checkpoint yet"))


def warn_behind(r: dict | None) -> None:
    if r and r["behind"]:
        print(f"reledger: warning: the projections reflect {r['projections_position']} of the log's "
              f"{r['log_size']} entries ({r['behind']} not projected yet): keep `reledger serve` running "
              "(it follows the log) or run `reledger rebuild`", file=sys.stderr)


def grouped(value: Any) -> str:
    """A decimal quantity for people: thousands separators, its decimals kept ("1,325,500",
    "2,501.82"); anything else as it is."""
    import re

    text = "" if value is None else str(value)
    m = re.fullmatch(r"(-?)(\d+)(\.\d+)?( [A-Z]+)?", text)  # a flag may follow: "-12.5 NEGATIVE"
    if not m:
        return text
    return f"{m.group(1)}{int(m.group(2)):,}{m.group(3) or ''}{m.group(4) or ''}"


def _table(args: argparse.Namespace, title: str, columns: list[str], rows: list[list[Any]],
           numeric: tuple[int, ...] = ()) -> None:
    """A table on stdout: rich (numbers right-aligned with thousands separators), or CSV under
    ``--format csv`` (a "# title" line before each table; numbers as recorded, no separators)."""
    if getattr(args, "format", None) == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        sys.stdout.write(f"# {title}\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if v is None else v for v in r])
        return
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in numeric else "left", overflow="fold")
    for r in rows:
        t.add_row(*[(grouped(v) if i in numeric else ("" if v is None else str(v))) for i, v in enumerate(r)])
    console().print(t)


def cmd_quota(args: argparse.Namespace) -> int:
    from reledger.projections import queries
    from reledger.projections.store import P

    ps, point = open_projections(args)
    try:
        # one index look-up (quota_year leads with the year); the years are listed only to say
        # which exist when this one does not (a scan of the index)
        if not ps.execute(f"SELECT 1 FROM {P}quota WHERE year = ? LIMIT 1", (args.year,)):
            years = sorted({int(y) for (y,) in ps.execute(f"SELECT DISTINCT year FROM {P}quota")})
            raise UsageError(f"--year {args.year}: the ledger records no quota for that year"
                             + (f" (years with quota: {', '.join(map(str, years))})" if years else " (nor any year)"))
        q = queries.quota(ps, args.year, point)
    finally:
        ps.close()
    if args.party:
        q["enterprises"] = [e for e in q["enterprises"] if e["party"] == args.party]
        q["groups"] = [g for g in q["groups"] if g["group"] == args.party]

    def text() -> None:
        _table(args, f"Quota {args.year}: enterprises (t REO)", ["party", "category", "direct", "sub-allocated",
               "reduced", "allocated", "used", "remaining", "% used"],
               [[e["party"], e["category"], e["issued_direct_t"], e["sub_allocated_in_t"], e["reduced_t"],
                 e["allocated_t"], e["used_t"], e["remaining_t"], (e["percent_used"] or "-") + (" OVER" if e["over"] else "")]
                for e in q["enterprises"]], numeric=(2, 3, 4, 5, 6, 7, 8))
        _table(args, f"Quota {args.year}: groups (t REO)", ["group", "category", "issued", "reduced", "sub-allocated", "used",
               "remaining", "% used"],
               [[g["group"], g["category"], g["issued_t"], g["reduced_t"], g["sub_allocated_t"], g["used_t"],
                 g["remaining_t"], g["percent_used"] or "-"] for g in q["groups"]], numeric=(2, 3, 4, 5, 6, 7))
        _table(args, f"Quota {args.year}: nation (t REO)", ["category", "issued", "reduced", "used", "remaining", "% used"],
               [[n["category"], n["issued_t"], n["reduced_t"], n["used_t"], n["remaining_t"], n["percent_used"] or "-"]
                for n in q["nation"]], numeric=(1, 2, 3, 4, 5))
        if args.format == "csv":
            return
        console().print(f"as of log size {q['as_of_size']}" + (f", valid at {q['point']['valid_at']}"
                                                                  if q["point"]["valid_at"] else ""))
        console().print(reflects_text(q["reflects"]))
    warn_behind(q["reflects"])
    emit(args, q, text)
    return EXIT_OK


def stream_json(out, head: dict[str, Any], key: str, items: Iterator[Any], tail: Callable[[], dict[str, Any]]) -> None:
    """``{**head, key: [*items], **tail()}`` written as ``json.dump(..., indent=2, default=str)``
    and a newline write it, byte for byte, an item at a time (the list is never held)."""
    def value(v: Any, indent: str) -> str:
        return json.dumps(v, indent=2, default=str).replace("\n", "\n" + indent)

    out.write("{\n" + "".join(f"  {json.dumps(k)}: {value(v, '  ')},\n" for k, v in head.items()))
    out.write(f"  {json.dumps(key)}: ")
    n = 0
    for item in items:
        out.write(("[\n    " if n == 0 else ",\n    ") + value(item, "    "))
        n += 1
    out.write("\n  ]" if n else "[]")
    out.write("".join(f",\n  {json.dumps(k)}: {value(v, '  ')}" for k, v in tail().items()) + "\n}\n")


class TableStream:
    """A table written a page of rows at a time: CSV as :func:`_table` writes it (one header);
    a rich table a page (the title on the first)."""

    def __init__(self, args: argparse.Namespace, title: str, columns: list[str], numeric: tuple[int, ...] = ()):
        self.args, self.title, self.columns, self.numeric = args, title, columns, numeric
        self.pages = 0

    def rows(self, rows: list[list[Any]]) -> None:
        if getattr(self.args, "format", None) == "csv":
            import csv

            if not self.pages:
                sys.stdout.write(f"# {self.title}\n")
                csv.writer(sys.stdout, lineterminator="\n").writerow(self.columns)
            csv.writer(sys.stdout, lineterminator="\n").writerows([["" if v is None else v for v in r] for r in rows])
        elif rows or not self.pages:
            _table(self.args, self.title if not self.pages else f"{self.title} (continued)", self.columns, rows,
                   self.numeric)
        self.pages += 1


def paged(query: Callable[..., dict[str, Any]], point) -> Iterator[dict[str, Any]]:
    """The pages of a paged query (``query(point, after)``), the first at ``point``, the others at
    the log size the first reflected (the projections may move on meanwhile)."""
    from reledger.projections.queries import Point

    page = query(point, None)
    yield page
    pinned = Point(page["as_of_size"], point.valid_at_us)
    while page["next"] is not None:
        page = query(pinned, page["next"])
        yield page


def cmd_stock(args: argparse.Namespace) -> int:
    from reledger.projections import queries

    ps, point = open_projections(args)
    try:
        # a page of lots at a time, written as it is read (a regulator's answer may be millions of lots)
        def page(pt, after: str | None) -> dict[str, Any]:
            return queries.stock(ps, args.party, pt, limit=queries.PAGE_DEFAULT,
                                 after=None if after is None else queries.parse_stock_after(after))
        pages = paged(page, point)
        first = next(pages)
        warn_behind(first["reflects"])
        if getattr(args, "json", False):
            stream_json(sys.stdout, {k: first[k] for k in ("party", "point", "as_of_size", "reflects")}, "lots",
                        (x for page in itertools.chain((first,), pages) for x in page["lots"]),
                        lambda: {"by_product": first["by_product"]})
            return EXIT_OK
        table = TableStream(args, f"Stock of {args.party or 'every party'} by lot", ["party", "lot", "product", "kg",
                            "kg REO", "moved by (log indices)"], numeric=(3, 4))
        for page in itertools.chain((first,), pages):
            table.rows([[x["party"], x["lot"], x["product"], x["kg"] + (" NEGATIVE" if x["negative"] else ""),
                         x["reo_kg"], ",".join(map(str, x["moved_by"][:8])) + ("…" if x["moves"] > 8 else "")]
                        for x in page["lots"]])
    finally:
        ps.close()
    _table(args, "by product", ["party", "product", "kg", "kg REO"],
           [[x["party"], x["product"], x["kg"], x["reo_kg"]] for x in first["by_product"]], numeric=(2, 3))
    console().print(reflects_text(first["reflects"]))
    return EXIT_OK


def cmd_findings(args: argparse.Namespace) -> int:
    from reledger.projections import queries

    ps, point = open_projections(args)
    count = 0
    try:
        # a page of findings at a time, written as it is read
        pages = paged(lambda pt, after: queries.findings(ps, args.party, args.rule, pt, limit=queries.PAGE_DEFAULT,
                                                         after=after), point)
        first = next(pages)
        warn_behind(first["reflects"])

        def every() -> Iterator[dict[str, Any]]:
            nonlocal count
            for page in itertools.chain((first,), pages):
                count += len(page["findings"])
                yield from page["findings"]
        if getattr(args, "json", False):
            stream_json(sys.stdout, {k: first[k] for k in ("point", "as_of_size", "reflects")}, "findings", every(),
                        dict)
        else:
            table = TableStream(args, "Findings", ["index", "occurred", "rule", "code", "party", "message", "evidence"],
                                numeric=(0,))
            for page in itertools.chain((first,), pages):
                count += len(page["findings"])
                table.rows([[x["index"], x["occurred_at"], x["rule"], x["code"], x["party"], x["message"],
                             "; ".join(f"{e['chain']}:{e['seq']} {e['hash'][:12]}" for e in x["evidence"][:3])]
                            for x in page["findings"]])
            if args.format != "csv":
                console().print(f"{count} finding{'' if count == 1 else 's'}")
            console().print(reflects_text(first["reflects"]))
    finally:
        ps.close()
    return EXIT_FAILED if count else EXIT_OK


def cmd_flow(args: argparse.Namespace) -> int:
    from reledger.projections import flowgraph

    if args.out:
        writable(args.out)
    if args.lot:
        require_lot(args, args.lot)
    ps, point = open_projections(args, parties=())
    try:
        if args.lot:
            g = flowgraph.trace(ps, args.lot, args.direction, point)
            if len(g["nodes"]) <= 1 and not g["edges"]:
                raise UsageError(f"no lot {args.lot} in the flow graph")
            if args.party:
                if not any(n.get("party") == args.party for n in g["nodes"]):
                    raise UsageError(f"party {args.party} held no lot of this trace")
                g = flowgraph.drill_down(g, args.party)
            elif args.detail == "auto":
                g = flowgraph.aggregate(g)
        else:
            g = flowgraph.party_graph(ps, point, party=args.party)
            if args.party and not g["edges"]:
                raise UsageError(f"no flows touch party {args.party}")
    finally:
        ps.close()
    title = f"lot {args.lot} {'upstream' if args.direction == 'up' else 'downstream'}" if args.lot else "flows"
    if args.party:
        title += f" at {args.party}" if args.lot else f" of {args.party}, by month"
    if args.format == "dot":
        text = flowgraph.to_dot(g, title)
    elif args.format == "svg":
        try:
            text = flowgraph.to_svg(g, title)
        except (flowgraph.GraphvizMissing, flowgraph.GraphvizFailed) as e:
            raise UsageError(str(e)) from e
    else:
        text = json.dumps(g, indent=2)
    if args.out:
        try:
            writable(args.out).write_text(text)
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from e
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from reledger.projections.store import ProjectionStore

    check_ledger(args)
    print("reledger: rebuilding the projections from the log (this reads every entry) ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    ps = ProjectionStore(args.db)
    try:
        def status() -> str:
            at, of = getattr(ps, "progress", (0, 0))
            return f"{at:,} of {of:,} entries ({100 * at / of:.0f} %)" if of else "dropping the tables"

        with heartbeat("rebuilding the projections", status=status):
            n = ps.rebuild()
    finally:
        ps.close()
    dt = time.perf_counter() - t
    data = {"entries": n, "seconds": round(dt, 3), "entries_per_second": round(n / dt) if dt else None}
    emit(args, data, lambda: console().print(f"rebuilt the projections from {n} entries in {dt:.2f} s"))
    return EXIT_OK


# --- replay and audit -----------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    from reledger.commands.catalogue import ENTRY_TYPES
    from reledger.replay.history import iter_csv, iter_json, iter_text, stream_party

    ledger = check_ledger(args)
    ledger.require_party(args.party)
    ledger.require_party(args.counterparty, "--counterparty")
    for t in args.type or []:
        if t not in ENTRY_TYPES:
            raise UsageError(f"--type {t}: no such entry type{suggest(t, ENTRY_TYPES)} (reledger types lists them)")
    point = point_of(args, ledger)
    since = parse_when(args.from_, "--from", end_of_day=False) if args.from_ else None
    until = parse_when(args.until, "--until", end_of_day=True) if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--from {args.from_} is after --until {args.until}")
    if point.valid_at_us is not None:
        until = point.valid_at_us if until is None else min(until, point.valid_at_us)
    if args.lot:
        require_lot(args, args.lot)
    tick = Ticker(f"replaying the log for {args.party}")
    # streamed: the header as soon as it is known, each step as it is read (a page of rows at a
    # time), the counts at the end; flushed after the header and the first step, so that a pipe
    # sees them at once
    with stream_party(args.db, args.party, as_of=point.as_of, since_us=since, until_us=until,
                      types=set(args.type) if args.type else None, lot=args.lot, counterparty=args.counterparty,
                      progress=lambda done, total: tick(done, total),
                      notice=lambda what: print(f"reledger: replay: {what}", file=sys.stderr, flush=True)) as r:
        if args.json:
            chunks = iter_json(r)
        elif args.format == "csv":
            chunks = iter_csv(r)
        elif args.step and sys.stdin.isatty():
            lines = iter_text(r)
            print(next(lines), flush=True)
            block: list[str] = []
            for line in lines:
                if line.startswith("\n#") and block:
                    print("\n".join(block))
                    if input("[Enter] next, q quit > ").strip().lower() == "q":
                        return EXIT_OK
                    block = []
                block.append(line)
            print("\n".join(block))
            chunks = iter(())
        else:
            chunks = (line + "\n" for line in iter_text(r))
        for k, chunk in enumerate(chunks):
            sys.stdout.write(chunk)
            if k < 2:
                sys.stdout.flush()
    return EXIT_FAILED if r.signatures_invalid else EXIT_OK


def require_lot(args: argparse.Namespace, lot: str) -> None:
    """The lot is in the ledger's lots (the projection tables, read-only)."""
    from reledger.projections.store import P, ProjectionReader
    from reledger.storage.reader import DatabaseURLError, NoLedger

    check_ledger(args)
    try:
        ps = ProjectionReader(args.db)
    except (NoLedger, DatabaseURLError) as e:
        raise UsageError(str(e)) from e
    try:
        if ps.execute(f"SELECT 1 FROM {P}lots WHERE lot = ? LIMIT 1", (lot,)):
            return
        same = ps.execute(f"SELECT lot FROM {P}lots WHERE lower(lot) = lower(?) LIMIT 3", (lot,))
    finally:
        ps.close()
    hint = f" (did you mean {' or '.join(r[0] for r in same)}?)" if same else ""
    raise UsageError(f"--lot {lot}: no such lot in the ledger{hint}")


def cmd_export(args: argparse.Namespace) -> int:
    from reledger.replay.export import ExportError, export_bundle

    ledger = check_ledger(args)
    ledger.require_party(args.party)
    writable(args.out)
    try:
        summary = export_bundle(args.db, args.party, args.out)
    except ExportError as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from e
    emit(args, summary, lambda: console().print(
        f"wrote {summary['file']}: {summary['chain_length']} entries of {args.party} and "
        f"{summary['registry_entries']} registry entries, each with its inclusion proof against the checkpoint "
        f"of size {summary['checkpoint_size']}"
        + (", and the proof that the last is the chain's head" if summary["chain_end_proven"] else "")
        + f"; consistency proofs from {summary['earlier_checkpoints']} earlier checkpoints ({summary['bytes']} bytes)"))
    return EXIT_OK


def cmd_investigate(args: argparse.Namespace) -> int:
    from reledger.replay.report import ReportError, write_report

    ledger = check_ledger(args)
    ledger.require_party(args.party)
    point = point_of(args, ledger)
    writable(args.out)
    print(f"reledger: investigating {args.party}: replaying {point.as_of or ledger.size:,} entries and proving the "
          "evidence (this can take a while on a large ledger) ...", file=sys.stderr, flush=True)
    try:
        doing = ["opening the ledger"]
        with heartbeat(f"investigating {args.party}", status=lambda: doing[0]):
            summary = write_report(args.db, args.party, args.out, as_of=point.as_of,
                                   progress=lambda what: doing.__setitem__(0, what))
    except (ReportError, ValueError) as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e}") from e
    emit(args, summary, lambda: console().print(
        f"wrote {summary['file']}: {summary['steps']} steps, {summary['findings']} findings, "
        f"{summary['proofs_verified']} of {summary['evidence']} evidence entries proven against the checkpoint"
        + (f" of size {summary['checkpoint']['size']}" if summary["checkpoint"] else " (no checkpoint)")
        + (f", {summary['not_yet_checkpointed']} not yet checkpointed" if summary["not_yet_checkpointed"] else "")))
    return EXIT_OK


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    """Offline: needs only ledger/ (no database, no network)."""
    trust_path, trust = load_trust(args)
    try:
        data = Path(args.bundle).read_bytes()
        older = [Path(p).read_bytes() for p in (args.older or [])] + [Path(p).read_bytes() for p in args.checkpoint]
        genesis, keys = pinned_roots(args, trust, older)
        rep = verify_bundle(data, trusted_checkpoint_keys=keys, trusted_genesis=genesis, older=older)
    except OSError as e:
        raise UsageError(str(e)) from e
    except BundleError as e:
        why = str(e)
        emit(args, {"ok": False, "problems": [why]}, lambda: console().print(f"[red]FAILED[/red]: {why}"))
        return EXIT_FAILED

    from reledger.ledger.bundle import decode_bundle

    anchor = anchored(trust_path, trust, genesis, rep.ok, decode_bundle(data)["checkpoint"] if rep.ok else None)

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if rep.ok and anchor["anchored"] else (
            "[yellow]OK, NOT ANCHORED[/yellow]" if rep.ok else "[red]FAILED[/red]")
        c.print(f"verify-bundle {status}: party {rep.party}, {rep.chain_length} chain entries and "
                f"{rep.registry_entries} registry entries, {rep.proofs} inclusion proofs against the checkpoint "
                f"{rep.origin} size {rep.size} root {rep.root.hex()}")
        if rep.complete:
            c.print(f"the chain is complete: seq {rep.chain_length} is the head of {rep.party} the checkpoint signs")
        elif rep.ok:
            c.print("[yellow]the end of the chain is not proven[/yellow]: the checkpoint (written before chain heads "
                    "were committed) signs no chain heads, so later entries could have been left out")
        if rep.consistency_checked:
            c.print(f"consistent with earlier checkpoints of sizes {', '.join(map(str, rep.consistency_checked))}")
        print_anchor(c, anchor, rep.genesis)
        for p in rep.problems[:20]:
            c.print(f"[red]problem:[/red] {p}")
    emit(args, {**rep.to_dict(), **anchor}, text)
    return anchor_exit(rep.ok, anchor)


def cmd_report(args: argparse.Namespace) -> int:
    import re

    from reledger.replay.monthly import ReportError, build_monthly_report

    ledger = check_ledger(args)
    ledger.require_party(args.party)
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", args.month):
        raise UsageError(f"--month {args.month!r}: give YYYY-MM, e.g. 2024-11")
    try:
        rep = build_monthly_report(args.db, args.party, args.month)
    except ReportError as e:
        raise UsageError(str(e)) from e
    submitted = None
    if args.sign_with:
        submitted = _sign_and_submit_report(args, rep)
    shown = json.loads(json.dumps(rep, default=lambda v: base64.b64encode(v).decode() if isinstance(v, bytes)
                                  else str(v)))
    if submitted is not None:
        shown["submitted"] = submitted

    def text() -> None:
        c = console()
        flow = shown["MonthlyFlowReportSubmitted"]
        c.print(f"Monthly flow report of {args.party} for {args.month} (due {rep['due']}): covers seqs "
                f"{flow['first_seq']}..{flow['last_seq']} ({rep['covered_entries']} entries), digest "
                f"{rep['MonthlyFlowReportSubmitted']['digest'].hex()}")
        for k, v in flow["totals"].items():
            c.print(f"  {k:24} {v}")
        if rep["QuotaExecutionReported"]:
            for line in rep["QuotaExecutionReported"]["lines"]:
                c.print(f"  quota {line['category']:14} used {line['used_t_reo']} t of {line['allocated_t_reo']} t")
        if submitted:
            c.print(f"signed and submitted: {submitted}")
        else:
            c.print("(not submitted: pass --sign-with KEYFILE to sign and append it)")
    emit(args, shown, text)
    return EXIT_OK


def _sign_and_submit_report(args: argparse.Namespace, rep: dict) -> list[dict]:
    from reledger.commands.api import CommandAPI, CommandError

    try:
        key = SigningKey.read(args.sign_with)
    except KeyError_ as e:
        raise UsageError(str(e)) from e
    if key.party != args.party:
        raise UsageError(f"{args.sign_with} is a key of {key.party}, not of {args.party}")
    with open_store(args) as store:
        api = CommandAPI(store)
        seq, head = store.chain_head(args.party)
        signer = ChainSigner(key, seq=seq, head=head)
        entries = [signer.sign("MonthlyFlowReportSubmitted", rep["MonthlyFlowReportSubmitted"], now_text())]
        if rep["QuotaExecutionReported"]:
            entries.append(signer.sign("QuotaExecutionReported", rep["QuotaExecutionReported"], now_text()))
        try:
            return [r.to_dict() for r in api.submit(entries)]
        except CommandError as e:
            raise UsageError(f"the report was refused: {e}") from e


def cmd_append(args: argparse.Namespace) -> int:
    """Sign one entry with a key file and append it: over HTTP (--server) with the client, or
    in-process through the command API on --db."""
    from reledger.commands.catalogue import body_from_json

    try:
        key = SigningKey.read(args.key)
        body = json.loads(Path(args.body[1:]).read_text() if args.body.startswith("@") else args.body)
    except (KeyError_, OSError, ValueError) as e:
        raise UsageError(str(e)) from e
    try:
        body = body_from_json(args.type, body)
    except Exception:  # noqa: BLE001 - an unknown type is refused below with the API's message
        pass
    occurred = args.occurred_at or now_text()
    if args.server:
        from reledger.commands.client import ClientError, LedgerClient, Refused

        with LedgerClient(args.server, key) as client:
            try:
                result = client.append_many([(args.type, body, occurred, args.command_id)])
            except ValueError as e:
                raise UsageError(f"cannot build that entry: {e}") from e
            except Refused as e:
                print(f"reledger append: refused: {e}", file=sys.stderr)
                emit(args, {"refused": e.problem}, lambda: None)
                return EXIT_USAGE
            except ClientError as e:
                raise UsageError(str(e)) from e
        data = {"receipts": result.receipts, "findings": result.findings}
    else:
        from reledger.commands.api import CommandAPI, CommandError
        from reledger.projections.hooks import ProjectionFindings
        from reledger.projections.store import ProjectionStore

        check_ledger(args)
        with open_store(args) as store:
            ps = ProjectionStore(args.db)
            try:
                api = CommandAPI(store, findings_hook=ProjectionFindings(ps))
                seq, head = store.chain_head(key.party)
                try:
                    signed = ChainSigner(key, seq=seq, head=head).sign(args.type, body, occurred, args.command_id)
                except ValueError as e:  # floats, bad times, bad ids: refused before signing
                    raise UsageError(f"cannot build that entry: {e}") from e
                receipts = api.submit([signed])
            except CommandError as e:
                print(f"reledger append: refused ({e.code}): {e}", file=sys.stderr)
                emit(args, {"refused": e.to_dict()}, lambda: None)
                return EXIT_USAGE
            finally:
                ps.close()
        data = {"receipts": [r.to_dict() for r in receipts], "findings": [f for r in receipts for f in r.findings]}

    def text() -> None:
        for r in data["receipts"]:
            console().print(f"appended {r['chain']}:{r['seq']} at log index {r['index']}, entry hash "
                            f"{r['entry_hash']}" + (" (already recorded)" if r.get("duplicate") else ""))
        for f in data["findings"]:
            console().print(f"[yellow]finding[/yellow] {f['code']}: {f['message']}")
    emit(args, data, text)
    return EXIT_OK


# --- show one entry; the entry types -------------------------------------------------------

def cmd_show(args: argparse.Namespace) -> int:
    """One entry as a person wants to see it: what it says (decoded body), who signed it with
    which key and whether the signature holds, where it sits in the log, and its inclusion proof
    against the latest checkpoint (verified before printing)."""
    from reledger.ledger import merkle
    from reledger.ledger.entry import EntryError, SignedEntry
    from reledger.ledger.registry import Registry, RegistryError
    from reledger.replay.history import json_body, says

    ledger = check_ledger(args)
    chain, seq = parse_entry_ref(args.entry, "entry")
    if not ledger.has_chain(chain):
        raise UsageError(f"{args.entry}: no chain {chain} in the ledger{suggest(chain, ledger.parties())}")
    with ledger.reader() as r:
        rec = r.queries.record_of(r.cursor(), chain, seq)
        if rec is None:
            head = r.queries.chain_head(r.cursor(), chain)
            raise UsageError(f"{args.entry}: chain {chain} has entries 1..{head[0] if head else 0}")
        problems: list[str] = []
        signed = None
        try:
            if rec.envelope is None:
                raise EntryError("the entry is missing from the events table")
            signed = SignedEntry.parse(rec.envelope)
        except Exception as e:  # noqa: BLE001 - a damaged entry is shown as damaged, never hidden
            problems.append(f"unreadable entry: {e}")
        signature = "not checked"
        if signed is not None:
            if (signed.entry.chain, signed.entry.seq, signed.hash) != (rec.chain, rec.seq, rec.entry_hash):
                problems.append(f"the stored entry ({signed.entry.chain}:{signed.entry.seq}) is not the one the log "
                                f"recorded at index {rec.index}")
            registry = Registry()
            for reg in r.queries.records_of_types(r.cursor(), ["PartyRegistered", "PartyDesignationChanged",
                                                                "KeyAuthorized", "KeyRevoked"], 0, rec.index):
                try:
                    registry.apply(SignedEntry.parse(reg.envelope), reg.index)
                except Exception:  # noqa: BLE001 - verify reports broken registry entries
                    pass
            try:
                pub = registry.key_for(signed, rec.index, rec.recorded_us)
                signature = "valid" if signed.signature_valid(pub) else "INVALID: not a signature by that key"
            except RegistryError as e:
                signature = f"INVALID: {e}"
            if signature != "valid":
                problems.append(f"signature {signature}")
    with open_readonly(args) as store:
        latest = store.latest_checkpoint()
        proof_doc: dict[str, Any] | None = None
        if latest and rec.index < latest[0]:
            size = latest[0]
            root = store.root(size)
            proof = store.inclusion_proof(rec.index, size)
            merkle.verify_inclusion(rec.nodes[:32], rec.index, size, proof, root)
            proof_doc = {"checkpoint_size": size, "root": root.hex(), "path": [h.hex() for h in proof],
                         "checkpoint": latest[2].decode(), "verified": True}
    e = signed.entry if signed else None
    data = {
        "entry": f"{chain}:{seq}", "chain": chain, "seq": seq, "type": rec.type, "index": rec.index,
        "recorded_at": rec.recorded_at, "occurred_at": e.occurred_at if e else None,
        "entry_hash": rec.entry_hash.hex(), "leaf_hash": rec.nodes[:32].hex(),
        "prev": e.prev.hex() if e else None, "key_id": e.key_id if e else None,
        "command_id": e.command_id if e else None,
        "signature": signed.signature.hex() if signed else None, "signature_check": signature,
        "says": says(rec.type, e.body) if e else "", "body": json_body(e.body) if e else None,
        "inclusion_proof": proof_doc, "problems": problems,
    }

    def text() -> None:
        c = console()
        c.print(f"[bold]{data['entry']}[/bold]  {data['type']}")
        if data["says"]:
            c.print(f"  says          {data['says']}")
        c.print(f"  occurred at   {data['occurred_at']}   (business time)")
        c.print(f"  recorded at   {data['recorded_at']}   (log index {rec.index:,} of {ledger.size:,})")
        c.print(f"  signed with   key {data['key_id']}: signature {signature}")
        c.print(f"  signature     {data['signature']}")
        c.print(f"  entry hash    {data['entry_hash']}")
        c.print(f"  previous      {data['prev']}")
        c.print(f"  leaf hash     {data['leaf_hash']}")
        c.print(f"  command id    {data['command_id']}")
        c.print("  body:")
        for line in json.dumps(data["body"], indent=2, ensure_ascii=False).splitlines():
            c.print("    " + line, markup=False)
        if proof_doc:
            c.print(f"  inclusion proof against the latest checkpoint (size {proof_doc['checkpoint_size']:,}, root "
                    f"{proof_doc['root']}), verified:")
            for h in proof_doc["path"]:
                c.print(f"    {h}")
        else:
            c.print("  [yellow]not yet covered by a checkpoint[/yellow] (reledger checkpoint signs one)")
        for p in problems:
            c.print(f"  [red]problem:[/red] {p}")
    emit(args, data, text)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_types(args: argparse.Namespace) -> int:
    """The entry types of the catalogue; with a TYPE, its fields (type, unit, limits, meaning)
    and who may assert it."""
    from reledger.commands.catalogue import SCHEMAS
    from reledger.commands.validate import role_rule_text

    if not args.type:
        data = {"types": [{"type": t, "group": s.group, "asserted_by": role_rule_text(t), "doc": s.doc}
                          for t, s in SCHEMAS.items()]}

        def text() -> None:
            if args.format == "csv":
                _table(args, "entry types", ["type", "group", "asserted by", "meaning"],
                       [[x["type"], x["group"], x["asserted_by"], x["doc"]] for x in data["types"]])
                return
            _table(args, f"Entry types ({len(SCHEMAS)}): `reledger types TYPE` for a type's fields",
                   ["type", "group", "asserted by"], [[x["type"], x["group"], x["asserted_by"]] for x in data["types"]])
        emit(args, data, text)
        return EXIT_OK
    name = args.type
    if name not in SCHEMAS:
        same = [t for t in SCHEMAS if t.lower() == name.lower()]
        if len(same) == 1:
            name = same[0]
        else:
            raise UsageError(f"no entry type {args.type}{suggest(args.type, SCHEMAS)} (reledger types lists them)")
    s = SCHEMAS[name]
    fields: list[dict[str, Any]] = []

    def walk(prefix: str, f: Any, required: bool) -> None:
        fields.append({"field": prefix, "required": required, "type": f.describe(), "meaning": f.doc})
        for suffix, child in f.children():
            walk(prefix + suffix, child, not child.optional)

    for fname, f in s.body.fields.items():
        walk(fname, f, not f.optional)
    data = {"type": name, "group": s.group, "doc": s.doc, "asserted_by": role_rule_text(name), "fields": fields}

    def text() -> None:
        if args.format != "csv":
            c = console()
            c.print(f"[bold]{name}[/bold] ({s.group}): {s.doc}")
            c.print(f"asserted by: {data['asserted_by']}")
        _table(args, f"{name}: body fields", ["field", "required", "type, unit and limits", "meaning"],
               [[x["field"], "yes" if x["required"] else "no", x["type"], x["meaning"]] for x in fields])
    emit(args, data, text)
    return EXIT_OK


# --- the rest -------------------------------------------------------------------------------

# demo and serve run above this room (the demo, the server's processes): the top-level
# dispatcher, reledger.cli, passes their implementations to main (``upper``)
UPPER = ("demo", "serve")


def cmd_demo(args: argparse.Namespace, run_demo: Callable[[argparse.Namespace], int]) -> int:
    return run_demo(args)


def cmd_serve(args: argparse.Namespace, serve: Callable[..., None]) -> int:
    import socket

    check_ledger(args)  # a missing, empty or unreachable ledger: exit 2 before anything starts
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} "
                         "(is another server using that port? pass --port)") from e
    checkpointer = serve_checkpointer(args)
    print(f"reledger serve: starting on {args.host}:{args.port} (the write state: its rows and the log since them) ...",
          file=sys.stderr, flush=True)
    serve(args.db, host=args.host, port=args.port, log_level=args.log_level, max_queued_entries=args.max_queued_entries,
          header_timeout=args.header_timeout, body_timeout=args.body_timeout, max_connections=args.max_connections,
          max_client_connections=args.max_client_connections,
          **({"checkpointer": checkpointer} if checkpointer else {}))
    return EXIT_OK


def serve_checkpointer(args: argparse.Namespace) -> dict | None:
    """The checkpointer's settings from serve's options (processes/checkpointer.py), or None."""
    given = [o for o, v in (("--policy", args.policy), ("--checkpoint-every", args.checkpoint_every),
                            ("--checkpoint-interval", args.checkpoint_interval),
                            ("--checkpoint-retry", args.checkpoint_retry),
                            ("--checkpointer-db", args.checkpointer_db)) if v is not None]
    if args.checkpoint_key is None:
        if given:
            raise UsageError(f"{given[0]} is for the checkpointer: give its --checkpoint-key FILE too")
        return None
    if not Path(args.checkpoint_key).is_file():
        raise UsageError(f"--checkpoint-key {args.checkpoint_key}: no such key file")
    if args.checkpoint_every is None and args.checkpoint_interval is None:
        raise UsageError("--checkpoint-key: say when to checkpoint (--checkpoint-every N, --checkpoint-interval S)")
    if args.policy is not None:
        load_policy(args.policy)  # a bad policy: exit 2 now (the checkpointer reads it again)
    if args.checkpointer_db is not None:
        try:
            DatabaseURL.parse(args.checkpointer_db)
        except DatabaseURLError as e:
            raise UsageError(f"--checkpointer-db: {e}") from None
    return {"url": args.checkpointer_db or args.db, "key": args.checkpoint_key, "policy": args.policy,
            "every": args.checkpoint_every, "interval": args.checkpoint_interval, "timeout": args.witness_timeout,
            **({"retry": args.checkpoint_retry} if args.checkpoint_retry is not None else {})}


EXIT_CODES_HELP = """exit codes:
  0  success
  1  {one}
  2  bad usage or input (an unknown party, lot, year, schema or database; a bad time; a missing file):
     nothing is written, and the message says why"""

TIMES_HELP = """times: a date YYYY-MM-DD is that whole day in China Standard Time (UTC+8): --from includes the
day from 00:00 CST, --until, --valid-at and --as-of include it to 24:00 CST; or an RFC 3339 time with
Z or an offset (2024-06-30T00:00:00Z). --as-of N is a log size (0..the log's size)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default shown (unless it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" not in text and action.default not in (None, False, [], argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def _epilog(examples: list[str], one: str = "-", times: bool = False) -> str:
    out = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n"
    if times:
        out += TIMES_HELP + "\n\n"
    one, _, three = (one if one != "-" else "(not used by this command)").partition("\n  3  ")
    return out + EXIT_CODES_HELP.format(one=one) + (f"\n  3  {three}" if three else "")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reledger")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (importlib.metadata costs
    tens of milliseconds, which every command's start would pay)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser._print_message(f"reledger {package_version()}\n", sys.stdout)
        parser.exit()


def parser() -> argparse.ArgumentParser:
    """The command line's parser, built once a process (reledger.cli asks it which commands
    exist before main parses with it), again if $RELEDGER_DB changed (the default of --db)."""
    return _parser(os.environ.get("RELEDGER_DB"))


@functools.lru_cache(maxsize=2)
def _parser(_db: str | None) -> argparse.ArgumentParser:
    return build_parser()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reledger", formatter_class=HelpFormatter,
        description="reledger: a signed, append-only traceability ledger for rare earth total quantity control.\n"
                    "`reledger COMMAND --help` describes each command, with examples and exit codes.",
        epilog="start here:\n  reledger demo                      a simulated control year, end to end\n"
               "  reledger findings --db sqlite:///reledger-demo/ledger.db\n"
               "  reledger types                     the entry types (and `reledger types TYPE`)\n\n"
               "every command takes --db URL (default: $RELEDGER_DB, else sqlite:///./reledger.db) and --json;\n"
               "exit 0 success, 1 a verification failure or finding the command exists to report, 2 bad usage or input")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser

    def sub_add_parser(name: str, parents=(), description: str = "", examples: list[str] = (), one: str = "-",
                       times: bool = False, **kw) -> argparse.ArgumentParser:
        import textwrap

        s = add(name, formatter_class=HelpFormatter, description=textwrap.fill(description or kw.get("help", ""), 100),
                epilog=_epilog(list(examples), one, times) if examples else None, **kw)
        if parents:  # every subcommand gets its own --db/--json actions (defaults differ)
            s.add_argument("--db", default=default_db(), metavar="URL",
                           help="the ledger: sqlite:///FILE or postgresql://USER@HOST:PORT/DB[?schema=NAME] "
                                "(default: $RELEDGER_DB, else %(default)s)")
            s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return s

    sub.add_parser = sub_add_parser  # type: ignore[method-assign]
    common = object()

    def formats(s: argparse.ArgumentParser) -> None:
        s.add_argument("--format", choices=["table", "json", "csv"], default="table",
                       help="table for people, json (as --json) or csv for scripts")

    s = sub.add_parser("init", parents=[common], help="create a ledger with its regulator genesis",
                       description="Create a new, empty ledger at --db with its genesis (the root regulator's key "
                                   "and registration, and the operator's checkpoint key), write both key files "
                                   "(mode 0600) and sign the first checkpoint. Refuses a ledger that is not empty.",
                       examples=["reledger init --db sqlite:///national.db --keys keys/",
                                 "reledger init --db 'postgresql://postgres@127.0.0.1:5432/ledger?schema=national' "
                                 "--serving-role reledger_server"])
    s.add_argument("--regulator", default="MIIT", help="the root regulator's party id")
    s.add_argument("--name", default="Ministry of Industry and Information Technology", help="the regulator's name")
    s.add_argument("--origin", default="reledger.example/national", help="checkpoint origin (signed-note key name)")
    s.add_argument("--keys", default="reledger-keys", metavar="DIR", help="where to write the key files")
    s.add_argument("--force", action="store_true", help="overwrite existing key files")
    s.add_argument("--serving-role", metavar="ROLE", help="PostgreSQL: create this role with INSERT and SELECT only")
    s.add_argument("--checkpointer-role", metavar="ROLE", help="PostgreSQL: create this role for the checkpointer "
                   "(serve --checkpointer-db): SELECT on the log, INSERT on the checkpoints only")
    s.add_argument("--no-ml-dsa", action="store_true", help="a checkpoint key without its ML-DSA-44 (post-quantum) "
                   "half: checkpoints signed with Ed25519 alone")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("keygen", parents=[common], help="write a new Ed25519 key file (mode 0600)",
                       description="Write a new Ed25519 key for a party (its public half is registered by the "
                                   "regulator with a KeyAuthorized entry). Never overwrites a file unless --force.",
                       examples=["reledger keygen --party 9115020011BAYANOBO --out bayanobo.key"])
    s.add_argument("--party", required=True, help="the party id the key signs for")
    s.add_argument("--purpose", choices=["entries", "checkpoint"], default="entries",
                   help="entries (a party's chain) or checkpoint (the operator's)")
    s.add_argument("--name", help="signed-note key name (checkpoint keys)")
    s.add_argument("--no-ml-dsa", action="store_true", help="checkpoint keys: without the ML-DSA-44 (post-quantum) "
                   "half that every checkpoint is otherwise signed with too")
    s.add_argument("--out", metavar="FILE", help="key file (default: PARTY.key)")
    s.add_argument("--force", action="store_true", help="overwrite an existing key file")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("verify", parents=[common], help="verify signatures, keys, chains, Merkle log, checkpoints",
                       description="Verify the whole log: every signature with the key valid when it was recorded, "
                                   "every chain's seq and prev links, the Merkle log and every stored checkpoint; "
                                   "name the first bad entry. With --party, one party's chain as an auditor checks "
                                   "it offline (its bundle, with inclusion proofs). An empty or missing ledger is "
                                   "an error (exit 2), never \"OK\".",
                       examples=["reledger verify", "reledger verify --genesis HASH --checkpoint-key VKEY",
                                 "reledger verify --party 9136070022GANZHOUS --checkpoint checkpoint.txt"],
                       one="the ledger fails verification (the first bad entry is named)"
                           "\n  3  verified, but not anchored to a pinned trust root (nothing pinned, or the log moved off it)")
    s.add_argument("--party", help="verify one party's chain (with inclusion proofs), not the whole log")
    s.add_argument("--workers", type=_positive_int, default=None, help="processes for signatures (default: all cores)")
    s.add_argument("--genesis", metavar="HASH", help="trusted genesis entry hash (hex)")
    s.add_argument("--checkpoint-key", action="append", default=[], metavar="VKEY",
                   help="trusted checkpoint vkey (repeatable)")
    s.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="a checkpoint note kept outside the database (repeatable)")
    s.add_argument("--trust", metavar="FILE", help="the auditor's trust file (`reledger trust init`): pinned genesis, "
                                                   "log key, witness policy and last checkpoint, moved forward when "
                                                   "the log verifies (default: $RELEDGER_TRUST)")
    s.add_argument("--projections", action="store_true",
                   help="recompute the projection tables from the log and name every row that differs (exit 1 if any)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("trust", help="pin an auditor's trust roots, or show them",
                       description="An auditor pins, once, from a source it trusts (the operator's publication, not "
                                   "the ledger): the ledger's genesis entry hash, the log's checkpoint vkey and "
                                   "optionally a C2SP tlog-policy of witnesses. verify and verify-bundle --trust then "
                                   "check every checkpoint against them and keep the last one verified "
                                   "(docs/AUDIT.md).",
                       examples=["reledger trust init --trust audit.trust --genesis HASH --log-vkey VKEY",
                                 "reledger trust init --trust audit.trust --genesis HASH --log-vkey VKEY "
                                 "--policy witnesses.policy",
                                 "reledger trust show --trust audit.trust"])
    s.add_argument("action", choices=["init", "show"], help="init: write a new trust file; show: print one")
    s.add_argument("--trust", required=True, metavar="FILE", help="the trust file (init never overwrites one)")
    s.add_argument("--genesis", metavar="HASH", help="init: the genesis entry hash (64 hex)")
    s.add_argument("--log-vkey", metavar="VKEY", help="init: the log's checkpoint vkey (`reledger vkey`)")
    s.add_argument("--log-mldsa-vkey", metavar="VKEY", help="init: the log's ML-DSA-44 vkey (`reledger vkey`, "
                   "second line): every checkpoint must then carry the log's post-quantum signature")
    s.add_argument("--policy", metavar="FILE", help="init: a C2SP tlog-policy file every checkpoint must meet")
    s.add_argument("--checkpoint", metavar="FILE", help="init: a checkpoint note already verified")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.set_defaults(func=cmd_trust)

    s = sub.add_parser("verify-proof", help="check an entry's tlog-proof offline",
                       description="Check a C2SP tlog-proof (from `reledger prove --entry X --tlog-proof` or the "
                                   "client's wait_for_proof) with no database and no network: the checkpoint's "
                                   "signature by the pinned log key (and the pinned witness policy), and the "
                                   "entry's inclusion in it.",
                       examples=["reledger verify-proof entry.tlog-proof --trust audit.trust",
                                 "reledger verify-proof entry.tlog-proof --checkpoint-key VKEY"],
                       one="the proof does not verify")
    s.add_argument("proof", metavar="PROOF", help="the tlog-proof file")
    s.add_argument("--trust", metavar="FILE", help="the auditor's trust file (its log key and witness policy)")
    s.add_argument("--checkpoint-key", action="append", default=[], metavar="VKEY", help="a trusted log vkey")
    s.add_argument("--policy", metavar="FILE", help="a C2SP tlog-policy the checkpoint's cosignatures must meet")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.set_defaults(func=cmd_verify_proof)

    s = sub.add_parser("vkey", help="print the C2SP verifier key (vkey) of a checkpoint key file",
                       description="Print the signed-note verifier key of the operator's checkpoint key: what an "
                                   "auditor pins (`reledger trust init --log-vkey`) and witnesses trust "
                                   "(`reledger witness serve --log`).",
                       examples=["reledger vkey --key reledger-demo/keys/operator.key"])
    s.add_argument("--key", required=True, metavar="FILE", help="the checkpoint key file")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.set_defaults(func=cmd_vkey)

    s = sub.add_parser("checkpoint", parents=[common], help="sign and store a checkpoint of the log",
                       description="Sign the current tree head with the operator's checkpoint key (C2SP "
                                   "tlog-checkpoint), store it and print the note. With --policy, the checkpoint "
                                   "is first submitted to the witnesses of a C2SP tlog-policy file and published "
                                   "only once their quorum cosigned it (docs/FORMAT.md 7a).",
                       examples=["reledger checkpoint --key reledger-demo/keys/operator.key > checkpoint.txt",
                                 "reledger checkpoint --key reledger-keys/operator.key --policy witnesses.policy"],
                       one="the witnesses' quorum was not met: nothing was published")
    s.add_argument("--key", required=True, metavar="FILE",
                   help="the checkpoint key file: `reledger init` writes reledger-keys/operator.key, "
                        "`reledger demo` reledger-demo/keys/operator.key")
    s.add_argument("--policy", metavar="FILE", help="a C2SP tlog-policy file: publish only once its witnesses' "
                                                    "quorum cosigned (default: no witnesses)")
    s.add_argument("--witness-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for each witness (default %(default)s)")
    s.set_defaults(func=cmd_checkpoint)

    s = sub.add_parser("witness", help="run a transparency-log witness (C2SP tlog-witness), or make its key",
                       description="A witness cosigns a log's checkpoints once it has checked that each is "
                                   "consistent with the last one it cosigned (C2SP tlog-witness, tlog-cosignature; "
                                   "docs/FORMAT.md 7a). keygen writes its key file (Ed25519 and ML-DSA-44), vkey "
                                   "prints its verifier keys for a policy, serve runs it.",
                       examples=["reledger witness keygen --key w1.key --name witness.example/w1",
                                 "reledger witness vkey --key w1.key",
                                 "reledger witness serve --key w1.key --state w1.db --log \"$LOG_VKEY\" --port 8090"])
    s.add_argument("action", choices=["keygen", "vkey", "serve"],
                   help="keygen: write a witness key file; vkey: print its verifier keys; serve: run the witness")
    s.add_argument("--key", required=True, help="the witness key file")
    s.add_argument("--name", help="keygen: the witness's key name (a schema-less URL, e.g. witness.example/w1)")
    s.add_argument("--no-ml-dsa", action="store_true", help="keygen: an Ed25519 key only, no ML-DSA-44 key")
    s.add_argument("--force", action="store_true", help="keygen: overwrite an existing key file")
    s.add_argument("--state", default="witness.db", help="serve: the witness's SQLite state (default %(default)s)")
    s.add_argument("--log", action="append", default=[], metavar="VKEY",
                   help="serve: the checkpoint vkey of a log to witness (repeatable; its name is the origin)")
    s.add_argument("--host", default="127.0.0.1", help="serve: address (default %(default)s)")
    s.add_argument("--port", type=int, default=8090, help="serve: port, 0 for any free one (default %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(func=cmd_witness)

    s = sub.add_parser("prove", parents=[common], help="inclusion proof of an entry, or consistency proof",
                       description="Print an inclusion proof of one entry (against the latest checkpoint, or a "
                                   "tree of --size entries), or a consistency proof between two tree sizes. Every "
                                   "proof is verified against the root before it is printed.",
                       examples=["reledger prove --entry 9136070022GANZHOUS:1",
                                 "reledger prove --from 100 --to 900"])
    s.add_argument("--entry", metavar="CHAIN:SEQ", help="the entry to prove, e.g. MIIT:1")
    s.add_argument("--size", type=_positive_int, metavar="N", help="tree size (default: the latest checkpoint's)")
    s.add_argument("--from", dest="from_", type=int, metavar="N", help="consistency proof: the older tree size")
    s.add_argument("--to", type=int, metavar="M", help="consistency proof: the newer tree size")
    s.add_argument("--tlog-proof", action="store_true",
                   help="with --entry: print the proof in C2SP tlog-proof form (the entry, its inclusion proof "
                        "and the signed checkpoint, docs/FORMAT.md 7c); check it with `reledger verify-proof`")
    s.set_defaults(func=cmd_prove)

    s = sub.add_parser("show", parents=[common], help="one entry: what it says, its signature, its proof",
                       description="Show one entry: its type and decoded body (quantities with their units), "
                                   "business and record times, the key that signed it and whether the signature "
                                   "holds, its log index, leaf and entry hashes, and its inclusion proof against "
                                   "the latest checkpoint (verified).",
                       examples=["reledger show 9136070022GANZHOUS:12", "reledger show MIIT:1 --json"],
                       one="the entry is damaged (unreadable, not the one the log recorded, or a bad signature)")
    s.add_argument("entry", metavar="CHAIN:SEQ", help="the entry, e.g. MIIT:1")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("types", help="the entry types; a type's fields, units and who may assert it",
                       description="List the entry types of the catalogue, or with TYPE its body fields (type, "
                                   "unit and limits, meaning) and which roles may assert it (docs/CATALOGUE.md).",
                       examples=["reledger types", "reledger types SeparationBatchRecorded",
                                 "reledger types QuotaBatchIssued --json"])
    s.add_argument("type", nargs="?", metavar="TYPE", help="an entry type (case-insensitive)")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    formats(s)
    s.set_defaults(func=cmd_types)

    def point_options(s: argparse.ArgumentParser) -> None:
        s.add_argument("--as-of", metavar="N|TIME", help="what the ledger knew: a log size N, or a record time "
                                                         "(a date: the end of that day, CST)")
        s.add_argument("--valid-at", metavar="TIME", help="business time: a date (the end of that day, CST) or "
                                                          "an RFC 3339 time")

    s = sub.add_parser("quota", parents=[common], help="quota usage per enterprise, group and nation",
                       description="Quota issued, sub-allocated, reduced and used (t REO) per enterprise, group "
                                   "and for the nation, for one year, at any point in time.",
                       examples=["reledger quota --year 2024", "reledger quota --year 2024 --as-of 2024-06-30",
                                 "reledger quota --year 2025 --party 9136070022GANZHOUS --format csv"], times=True)
    s.add_argument("--year", type=int, required=True, help="the quota year (one the ledger records quota for)")
    s.add_argument("--party", help="one enterprise or group")
    point_options(s)
    formats(s)
    s.set_defaults(func=cmd_quota)

    s = sub.add_parser("stock", parents=[common], help="stock per party, product and lot",
                       description="Stock (kg and kg REO) per party, product and lot, with the log indices that "
                                   "moved it, at any point in time.",
                       examples=["reledger stock --party 9136070022GANZHOUS --valid-at 2024-06-30",
                                 "reledger stock --format csv > stock.csv"], times=True)
    s.add_argument("--party", help="one party (default: every party)")
    point_options(s)
    formats(s)
    s.set_defaults(func=cmd_stock)

    s = sub.add_parser("findings", parents=[common], help="rule findings with evidence (exit 1 if any)",
                       description="What the rules found (over quota, negative stock, yields out of band, "
                                   "shipments never received, late reports...), each with its evidence entries.",
                       examples=["reledger findings", "reledger findings --party 9136070022GANZHOUS --rule quota",
                                 "reledger findings --format csv"],
                       one="there are findings (the command exists to report them)", times=True)
    s.add_argument("--party", help="findings about one party")
    s.add_argument("--rule", choices=["designation", "quota", "stock", "mass_balance", "flow", "reporting",
                                      "timeliness"], help="findings of one rule")
    point_options(s)
    formats(s)
    s.set_defaults(func=cmd_findings)

    s = sub.add_parser("flow", parents=[common], help="the flow graph, or a lot traced up or down",
                       description="The flow graph between parties, or one lot traced upstream (to its mines) or "
                                   "downstream (to its buyers), as JSON, Graphviz dot or SVG laid out by Graphviz.",
                       examples=["reledger flow --lot LOT --direction up --format svg --out lot.svg",
                                 "reledger flow --lot LOT --party PARTY --format svg --out detail.svg"], times=True)
    s.add_argument("--lot", help="trace this lot (default: the whole flow graph between parties)")
    s.add_argument("--direction", choices=["up", "down"], default="up", help="up to the sources, down to the buyers")
    s.add_argument("--format", choices=["json", "dot", "svg"], default="json",
                   help="json, Graphviz dot, or svg laid out by Graphviz's dot (needs graphviz installed)")
    s.add_argument("--party", help="drill down: with --lot, the lots this party held, lot by lot; without, "
                                   "this party's flows month by month")
    s.add_argument("--detail", choices=["auto", "lot"], default="auto",
                   help="with --lot: auto folds a trace of more than 60 movements by holder, product and "
                        "month; lot keeps every lot (default auto)")
    s.add_argument("--out", metavar="FILE", help="write to a file instead of stdout")
    point_options(s)
    s.set_defaults(func=cmd_flow)

    s = sub.add_parser("rebuild", parents=[common], help="drop and rebuild the projections from the log",
                       description="Drop the projection tables and rebuild them from the log (they are a pure "
                                   "function of it).", examples=["reledger rebuild"])
    s.set_defaults(func=cmd_rebuild)

    s = sub.add_parser("replay", parents=[common], help="a party's history, entry by entry, with state and findings",
                       description="Replay the log and show a party's history entry by entry: what each entry "
                                   "says (quantities with units), its hash and signature check, the party's stock "
                                   "and quota used after it, and the findings it raised.",
                       examples=["reledger replay --party 9136070022GANZHOUS --from 2024-11-01",
                                 "reledger replay --party 9136070022GANZHOUS --type SeparationBatchRecorded "
                                 "--format csv"],
                       one="a signature of the party's entries does not hold", times=True)
    s.add_argument("--party", required=True, help="the party to replay")
    s.add_argument("--from", dest="from_", metavar="TIME", help="business time from (a date: from 00:00 CST)")
    s.add_argument("--until", metavar="TIME", help="business time until (a date: to 24:00 CST)")
    s.add_argument("--type", action="append", metavar="TYPE", help="only these entry types (repeatable)")
    s.add_argument("--lot", help="only entries naming this lot")
    s.add_argument("--counterparty", metavar="PARTY", help="only entries with this counterparty")
    s.add_argument("--step", action="store_true", help="step through it in the terminal")
    point_options(s)
    formats(s)
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("export", parents=[common], help="write a party's evidence bundle (one file)",
                       description="Write one file holding a party's chain, the registry entries its keys need, "
                                   "an inclusion proof of each against the latest checkpoint and consistency "
                                   "proofs from the earlier ones: `reledger verify-bundle` checks it offline.",
                       examples=["reledger export --party 9136070022GANZHOUS --out ganzhou.bundle"])
    s.add_argument("--party", required=True, help="the party whose chain to export")
    s.add_argument("--out", required=True, metavar="FILE", help="the bundle file to write")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("investigate", parents=[common], help="one self-contained HTML report on a party",
                       description="Write one self-contained HTML investigation report on a party: its timeline, "
                                   "findings with their evidence and proofs, quota burn-down and flows.",
                       examples=["reledger investigate --party 9136070022GANZHOUS --out ganzhou.html"], times=True)
    s.add_argument("--party", required=True, help="the party to investigate")
    s.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    s.add_argument("--as-of", metavar="N|TIME", help="what the ledger knew: a log size N, or a record time")
    s.set_defaults(func=cmd_investigate)

    s = sub.add_parser("verify-bundle", help="check a bundle offline (no database, no network)",
                       description="Check a bundle written by `reledger export` with no database and no network: "
                                   "every signature, the chain, every inclusion proof, the checkpoint signature, "
                                   "consistency with earlier checkpoints or bundles given.",
                       examples=["reledger verify-bundle ganzhou.bundle --trust audit.trust",
                                 "reledger verify-bundle ganzhou.bundle --checkpoint checkpoint.txt --genesis HASH"],
                       one="the bundle fails verification"
                           "\n  3  verified, but not anchored to a pinned trust root (nothing pinned, or the log moved off it)")
    s.add_argument("bundle", metavar="BUNDLE", help="the bundle file")
    s.add_argument("older", nargs="*", metavar="OLDER", help="earlier bundles or checkpoint notes it must be consistent with")
    s.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="an earlier checkpoint note (repeatable)")
    s.add_argument("--checkpoint-key", action="append", default=[], metavar="VKEY", help="trusted checkpoint vkey")
    s.add_argument("--genesis", metavar="HASH", help="trusted genesis entry hash")
    s.add_argument("--trust", metavar="FILE", help="the auditor's trust file (`reledger trust init`), moved forward "
                                                   "to the bundle's checkpoint when it verifies (default: "
                                                   "$RELEDGER_TRUST)")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.set_defaults(func=cmd_verify_bundle)

    s = sub.add_parser("report", parents=[common], help="build (and optionally sign and submit) a monthly report",
                       description="Build a party's monthly flow report (and quota execution report) from the "
                                   "ledger; with --sign-with, sign it with the party's key and append it.",
                       examples=["reledger report --party 9115020011BAYANOBO --month 2025-01",
                                 "reledger report --party 9115020011BAYANOBO --month 2025-01 --sign-with KEYFILE"])
    s.add_argument("--party", required=True, help="the reporting party")
    s.add_argument("--month", required=True, help="the month reported, YYYY-MM")
    s.add_argument("--sign-with", metavar="KEYFILE", help="the party's key file: sign and append the report")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("append", parents=[common], help="sign one entry with a key file and append it",
                       description="Sign one entry with a party's key file and append it, in-process through the "
                                   "command API on --db, or over HTTP with --server. Refused input writes nothing.",
                       examples=["reledger append --key bayanobo.key --type StockCounted --body "
                                 "'{\"product\": \"BASTNAESITE_CONCENTRATE\", \"counted_kg\": \"0\"}'",
                                 "reledger append --key bayanobo.key --type StockCounted --body @count.json "
                                 "--server http://127.0.0.1:8080"])
    s.add_argument("--key", required=True, metavar="FILE", help="the party's key file")
    s.add_argument("--type", required=True, help="entry type (reledger types lists them)")
    s.add_argument("--body", required=True, help="the body as JSON, or @FILE")
    s.add_argument("--occurred-at", metavar="TIME", help="business time (RFC 3339 UTC; default: now)")
    s.add_argument("--command-id", metavar="UUID", help="a UUID: a retry with the same id is recorded once")
    s.add_argument("--server", metavar="URL", help="append over HTTP to this server instead of --db")
    s.set_defaults(func=cmd_append)

    s = sub.add_parser("demo", parents=[common], help="run a demonstration year end to end",
                       description="Simulate the 2024 control year through the command API with real signatures "
                                   "(six seeded violations), then print quota, stock, findings and verification. "
                                   "The same --seed gives the same ledger (keys, times, root). It writes a NEW "
                                   "ledger: it refuses a --db or --out that already holds a ledger or key files, "
                                   "and never deletes anything.",
                       examples=["reledger demo", "reledger demo --seed 7 --out demo7",
                                 "reledger demo --db 'postgresql://postgres@127.0.0.1:5432/test?schema=demo' "
                                 "--out demo-pg", "reledger demo --scale year --out year"],
                       one="the demo's own checks failed (a seeded violation not found, or verification)")
    s.add_argument("--seed", type=int, default=2024, help="the simulation's seed (keys and times derive from it)")
    s.add_argument("--scale", choices=["small", "year"], default="small",
                   help="small (about 1,000 entries, seconds) or year (a national year, minutes)")
    s.add_argument("--out", default="reledger-demo", metavar="DIR",
                   help="where the keys, reports, summary.json and (without --db) ledger.db go")
    s.set_defaults(func=cmd_demo)
    for action in s._actions:
        if action.dest == "db":
            action.default = os.environ.get("RELEDGER_DB")  # demo: its own ledger unless told
            action.help = "the new ledger (default: $RELEDGER_DB, else sqlite:///OUT/ledger.db)"

    s = sub.add_parser("serve", parents=[common], help="serve the command API over HTTP",
                       description="Serve the command API and queries over HTTP (docs/HTTP.md); the OpenAPI "
                                   "pages at /docs work offline. Prints its address when it listens.",
                       examples=["reledger serve --port 8080", "reledger serve --host 0.0.0.0 --port 8443"])
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    s.add_argument("--port", type=int, default=8080, help="the port to listen on")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="the server's log level")
    s.add_argument("--max-queued-entries", type=_positive_int, default=50_000, metavar="N",
                   help="appended entries that may wait for their answer before an append is answered 503 "
                        "overloaded (default %(default)s; docs/HTTP.md, Admission)")
    s.add_argument("--header-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="seconds a request's head may take to arrive (default %(default)s; docs/HTTP.md, Limits)")
    s.add_argument("--body-timeout", type=_positive_float, default=60.0, metavar="S",
                   help="seconds a request's body may take to arrive, else 408 (default %(default)s)")
    s.add_argument("--max-connections", type=_positive_int, default=None, metavar="N",
                   help="connections held at once (default: from the open-file limit, at most 4096)")
    s.add_argument("--max-client-connections", type=_nonnegative_int, default=128, metavar="N",
                   help="connections per client address, 0 for no limit (default %(default)s; behind a "
                        "reverse proxy raise it or let the proxy limit its clients)")
    s.add_argument("--checkpoint-key", metavar="FILE", help="start the checkpointer process with this checkpoint "
                   "key file (only that process reads it; docs/OPERATIONS.md, Checkpointer)")
    s.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="checkpointer: a checkpoint once N entries were appended since the last one")
    s.add_argument("--checkpoint-interval", type=_positive_float, metavar="S",
                   help="checkpointer: a checkpoint S seconds after the last one, if the log grew")
    s.add_argument("--policy", metavar="FILE", help="checkpointer: the C2SP tlog-policy whose witnesses (their URLs) "
                   "must cosign; nothing is published until its quorum is met")
    s.add_argument("--checkpointer-db", metavar="URL", help="checkpointer: its own database URL (a role made by "
                   "`reledger init --checkpointer-role`; default: --db)")
    s.add_argument("--witness-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="checkpointer: seconds per witness request")
    s.add_argument("--checkpoint-retry", type=_positive_float, metavar="S",
                   help="checkpointer: seconds before trying again after a checkpoint was not published "
                        "(default 10)")
    s.set_defaults(func=cmd_serve)

    # (listed for --help; reledger.cli hands "bench ..." to the benchmark before parsing)
    s = sub.add_parser("bench", help="run the benchmarks (see bench/; also reledger-bench)", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None, upper: dict[str, Callable] | None = None) -> int:
    """The command line. ``upper``: the implementations of the commands that live above this
    room (:data:`UPPER`), given by the top-level dispatcher (:func:`reledger.cli.main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    if getattr(args, "format", None) == "json" and args.command != "flow":
        args.json = True
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(PG_CONNECT_TIMEOUT_S))  # libpq: no long hang on a dead host
    if args.command == "bench" or (args.command in UPPER and args.command not in (upper or {})):
        print(f"reledger {args.command}: run it through the reledger command (reledger.cli)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command in UPPER:
            return args.func(args, upper[args.command])
        return args.func(args)
    except UsageError as e:
        print(f"reledger {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - never a traceback for the user: what failed, and how to see more
        if os.environ.get("RELEDGER_DEBUG"):
            raise
        name = type(e).__module__.split(".")[0]
        what = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if name in ("psycopg", "sqlite3", "eventsourcing"):
            print(f"reledger {args.command}: the database failed: {what}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"reledger {args.command}: {e.strerror or what}" + (f": {e.filename}" if e.filename else ""),
                  file=sys.stderr)
        else:
            print(f"reledger {args.command}: unexpected error ({type(e).__name__}: {what}); "
                  "RELEDGER_DEBUG=1 shows where", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
