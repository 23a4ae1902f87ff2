"""The ``reledger`` command line (DESIGN.md, "Command line").

Every command takes ``--db URL`` (default: $RELEDGER_DB or sqlite:///./reledger.db) and
``--json`` (one JSON document on stdout). Exit codes: 0 success, 1 a verification failure or
finding the command exists to report, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from reledger.storage.reader import DEFAULT_URL

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or input: exit 2 with the message."""


def _positive_float(text: str) -> float:
    """An argparse type: a number of seconds > 0 (and finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1000000")
    return value


def _nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse prints the message and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def default_db() -> str:
    return os.environ.get("RELEDGER_DB", DEFAULT_URL)


def emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        text()


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def now_text() -> str:
    from reledger.ledger.encoding import time_text

    return time_text(datetime.now(timezone.utc).replace(microsecond=0))


def open_store(args: argparse.Namespace, create: bool = False):
    from reledger.storage.reader import DatabaseURL, DatabaseURLError
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


# --- init / keygen -------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from reledger.ledger.checkpoint import NoteSigner
    from reledger.ledger.genesis import ChainSigner, genesis_entries
    from reledger.ledger.keys import SigningKey

    keys_dir = Path(args.keys)
    keys_dir.mkdir(parents=True, exist_ok=True)
    reg_path, op_path = keys_dir / f"{args.regulator}.key", keys_dir / "operator.key"
    for p in (reg_path, op_path):
        if p.exists() and not args.force:
            raise UsageError(f"{p} exists: refusing to overwrite a key (use another --keys dir, or --force)")
    with open_store(args, create=True) as store:
        if store.size() != 0:
            raise UsageError(f"the ledger at {args.db} is not empty ({store.size()} entries)")
        reg = SigningKey.generate(args.regulator)
        op = SigningKey.generate(args.regulator, "checkpoint", name=args.origin)
        at = now_text()
        receipts = store.append(genesis_entries(ChainSigner(reg), op, name=args.name, origin=args.origin, at=at))
        reg.write(reg_path, overwrite=args.force)
        op.write(op_path, overwrite=args.force)
        signer = NoteSigner(args.origin, op.private_key)
        note = store.checkpoint(signer)
        if args.serving_role:
            if store.db.backend != "postgres":
                raise UsageError("--serving-role needs a PostgreSQL --db")
            store.grant_serving_role(args.serving_role)
            from reledger.storage.nonces import grant_nonces

            grant_nonces(args.db, args.serving_role)  # the signed reads' nonces: SELECT, INSERT, DELETE
    data = {"db": args.db, "regulator": args.regulator, "genesis": receipts[0].entry_hash.hex(),
            "regulator_key": str(reg_path), "checkpoint_key": str(op_path), "checkpoint_vkey": signer.verifier().vkey(),
            "origin": args.origin, "checkpoint": note.decode()}

    def text() -> None:
        c = console()
        c.print(f"[bold]New ledger[/bold] at {args.db}")
        c.print(f"  genesis entry hash  {data['genesis']}   (pin it: reledger verify --genesis ...)")
        c.print(f"  regulator key       {reg_path} (key id {reg.key_id})")
        c.print(f"  checkpoint key      {op_path}")
        c.print(f"  checkpoint vkey     {data['checkpoint_vkey']}")
    emit(args, data, text)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from reledger.ledger.entry import CHAIN_RE
    from reledger.ledger.keys import SigningKey

    if not CHAIN_RE.match(args.party):
        raise UsageError(f"--party {args.party!r} is not a party id (2-64 characters A-Z 0-9 . _ -)")
    key = SigningKey.generate(args.party, args.purpose, name=args.name)
    out = Path(args.out or f"{args.party}.key")
    try:
        key.write(out, overwrite=args.force)
    except FileExistsError as e:
        raise UsageError(f"{out} exists: refusing to overwrite a key (use --force)") from e
    data = {"party": key.party, "purpose": key.purpose, "key_id": key.key_id,
            "public_key": base64.b64encode(key.public_key).decode(), "file": str(out)}
    emit(args, data, lambda: console().print(
        f"wrote {out} (mode 0600)\nparty       {key.party}\nkey id      {key.key_id}\n"
        f"public key  {data['public_key']}"))
    return EXIT_OK


# --- verify / checkpoint / prove ----------------------------------------------------------

def cmd_verify_party(args: argparse.Namespace) -> int:
    """One party's chain: its bundle built from the database and checked as an auditor would
    offline (signatures with the key valid at each position, the chain, every inclusion proof,
    the checkpoint signature, consistency with every earlier checkpoint)."""
    from reledger.ledger.bundle import verify_bundle
    from reledger.replay.export import ExportError, build_bundle

    open_store(args).close()
    notes = [Path(p).read_bytes() for p in args.checkpoint]
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


def cmd_verify(args: argparse.Namespace) -> int:
    from reledger.storage.reader import DatabaseURL
    from reledger.ledger.verify import verify_database

    if args.party:
        return cmd_verify_party(args)

    u = DatabaseURL.parse(args.db)
    if u.backend == "sqlite" and not Path(u.path).exists():
        raise UsageError(f"no ledger at {u.path}")
    notes = [Path(p).read_bytes() for p in args.checkpoint]
    progress = None
    bar = None
    if not args.json and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("verifying", total=None)
        bar.start()
        progress = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
    try:
        rep = verify_database(args.db, workers=args.workers, trusted_genesis=args.genesis,
                              trusted_checkpoint_keys=args.checkpoint_key, checkpoint_notes=notes,
                              progress=progress)
    except ValueError as e:
        raise UsageError(str(e)) from e
    finally:
        if bar:
            bar.stop()

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if rep.ok else "[red]FAILED[/red]"
        c.print(f"verify {status}: {rep.entries} entries, {rep.chains} chains, {rep.keys} keys, "
                f"{rep.checkpoints} checkpoints; log size {rep.size}, root {rep.root.hex()}")
        c.print(f"trust anchor: genesis {rep.genesis}" + ("" if args.genesis else " (the log's own; pin with --genesis)"))
        if not rep.ok:
            c.print(f"[red]first bad entry:[/red] {rep.first}")
            for p in rep.problems[1:10]:
                c.print(f"  also: {p}")
            if len(rep.problems) > 10:
                c.print(f"  ... {len(rep.problems) - 10} more")
    emit(args, rep.to_dict(), text)
    return EXIT_OK if rep.ok else EXIT_FAILED


def load_checkpoint_signer(args: argparse.Namespace):
    from reledger.ledger.checkpoint import NoteSigner
    from reledger.ledger.keys import KeyError_, SigningKey

    path = Path(args.key)
    try:
        key = SigningKey.read(path)
    except KeyError_ as e:
        raise UsageError(str(e)) from e
    if key.purpose != "checkpoint" or not key.name:
        raise UsageError(f"{path} is not a checkpoint key (purpose 'checkpoint' with a name)")
    return NoteSigner(key.name, key.private_key)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    signer = load_checkpoint_signer(args)
    with open_store(args) as store:
        note = store.checkpoint(signer)
    from reledger.ledger.checkpoint import Checkpoint

    cp = Checkpoint.parse(note.split(b"\n\n", 1)[0] + b"\n")
    data = {"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "note": note.decode()}
    emit(args, data, lambda: sys.stdout.write(note.decode()))
    return EXIT_OK


def cmd_prove(args: argparse.Namespace) -> int:
    from reledger.ledger import merkle

    with open_store(args) as store:
        latest = store.latest_checkpoint()
        size = args.size or (latest[0] if latest else store.size())
        note = latest[2].decode() if latest and latest[0] == size else None
        root = store.root(size)
        if args.entry:
            chain, _, seq = args.entry.rpartition(":")
            if not chain or not seq.isdigit():
                raise UsageError("--entry takes CHAIN:SEQ, e.g. --entry MIIT:1")
            rec = store.entry(chain, int(seq))
            if rec is None:
                raise UsageError(f"no entry {args.entry}")
            if rec.index >= size:
                raise UsageError(f"entry {args.entry} (index {rec.index}) is not in a tree of size {size}; "
                                 "make a checkpoint first or pass --size")
            proof = store.inclusion_proof(rec.index, size)
            leaf = rec.nodes[:32]
            merkle.verify_inclusion(leaf, rec.index, size, proof, root)
            data = {"kind": "inclusion", "entry": args.entry, "index": rec.index, "size": size,
                    "leaf_hash": leaf.hex(), "entry_hash": rec.entry_hash.hex(), "recorded_at": rec.recorded_at,
                    "root": root.hex(), "proof": [h.hex() for h in proof], "checkpoint": note}
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

def open_projections(args: argparse.Namespace):
    """The projections of the ledger, brought up to date, and the point in time asked for."""
    from reledger.projections.queries import parse_point
    from reledger.projections.store import ProjectionStore

    open_store(args).close()  # a missing ledger is a usage error
    ps = ProjectionStore(args.db)
    ps.catch_up()
    try:
        point = parse_point(args.db, getattr(args, "as_of", None), getattr(args, "valid_at", None))
    except ValueError as e:
        ps.close()
        raise UsageError(str(e)) from e
    return ps, point


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[("" if v is None else str(v)) for v in r])
    console().print(t)


def cmd_quota(args: argparse.Namespace) -> int:
    from reledger.projections import queries

    ps, point = open_projections(args)
    try:
        q = queries.quota(ps, args.year, point)
    finally:
        ps.close()
    if args.party:
        q["enterprises"] = [e for e in q["enterprises"] if e["party"] == args.party]
        q["groups"] = [g for g in q["groups"] if g["group"] == args.party]

    def text() -> None:
        _table(f"Quota {args.year}: enterprises (t REO)", ["party", "category", "direct", "sub-allocated",
               "reduced", "allocated", "used", "remaining", "% used"],
               [[e["party"], e["category"], e["issued_direct_t"], e["sub_allocated_in_t"], e["reduced_t"],
                 e["allocated_t"], e["used_t"], e["remaining_t"], (e["percent_used"] or "-") + (" OVER" if e["over"] else "")]
                for e in q["enterprises"]])
        _table(f"Quota {args.year}: groups (t REO)", ["group", "category", "issued", "reduced", "sub-allocated", "used",
               "remaining", "% used"],
               [[g["group"], g["category"], g["issued_t"], g["reduced_t"], g["sub_allocated_t"], g["used_t"],
                 g["remaining_t"], g["percent_used"] or "-"] for g in q["groups"]])
        _table(f"Quota {args.year}: nation (t REO)", ["category", "issued", "reduced", "used", "remaining", "% used"],
               [[n["category"], n["issued_t"], n["reduced_t"], n["used_t"], n["remaining_t"], n["percent_used"] or "-"]
                for n in q["nation"]])
        console().print(f"as of log size {q['as_of_size']}" + (f", valid at {q['point']['valid_at']}"
                                                                  if q["point"]["valid_at"] else ""))
    emit(args, q, text)
    return EXIT_OK


def cmd_stock(args: argparse.Namespace) -> int:
    from reledger.projections import queries

    ps, point = open_projections(args)
    try:
        st = queries.stock(ps, args.party, point)
    finally:
        ps.close()

    def text() -> None:
        _table(f"Stock of {args.party or 'every party'} by lot", ["party", "lot", "product", "kg", "kg REO",
               "moved by (log indices)"],
               [[x["party"], x["lot"], x["product"], x["kg"] + (" NEGATIVE" if x["negative"] else ""), x["reo_kg"],
                 ",".join(map(str, x["moved_by"][:8])) + ("…" if x["moves"] > 8 else "")] for x in st["lots"]])
        _table("by product", ["party", "product", "kg", "kg REO"],
               [[x["party"], x["product"], x["kg"], x["reo_kg"]] for x in st["by_product"]])
    emit(args, st, text)
    return EXIT_OK


def cmd_findings(args: argparse.Namespace) -> int:
    from reledger.projections import queries

    ps, point = open_projections(args)
    try:
        f = queries.findings(ps, args.party, args.rule, point)
    finally:
        ps.close()

    def text() -> None:
        _table(f"Findings ({len(f['findings'])})", ["index", "occurred", "rule", "code", "party", "message",
               "evidence"],
               [[x["index"], x["occurred_at"], x["rule"], x["code"], x["party"], x["message"],
                 "; ".join(f"{e['chain']}:{e['seq']} {e['hash'][:12]}" for e in x["evidence"][:3])]
                for x in f["findings"]])
    emit(args, f, text)
    return EXIT_FAILED if f["findings"] else EXIT_OK


def cmd_flow(args: argparse.Namespace) -> int:
    from reledger.projections import flowgraph

    ps, point = open_projections(args)
    try:
        if args.lot:
            g = flowgraph.trace(ps, args.lot, args.direction, point)
            if len(g["nodes"]) <= 1 and not g["edges"]:
                raise UsageError(f"no lot {args.lot} in the flow graph")
        else:
            g = flowgraph.party_graph(ps, point)
    finally:
        ps.close()
    title = f"lot {args.lot} {'upstream' if args.direction == 'up' else 'downstream'}" if args.lot else "flows"
    if args.format == "dot":
        text = flowgraph.to_dot(g, title)
    elif args.format == "svg":
        text = flowgraph.to_svg(g, title)
    else:
        text = json.dumps(g, indent=2)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    import time as _time

    from reledger.projections.store import ProjectionStore

    open_store(args).close()
    t = _time.perf_counter()
    ps = ProjectionStore(args.db)
    try:
        n = ps.rebuild()
    finally:
        ps.close()
    dt = _time.perf_counter() - t
    data = {"entries": n, "seconds": round(dt, 3), "entries_per_second": round(n / dt) if dt else None}
    emit(args, data, lambda: console().print(f"rebuilt the projections from {n} entries in {dt:.2f} s"))
    return EXIT_OK


# --- replay and audit -----------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    from reledger.projections.queries import _parse_when, parse_point
    from reledger.replay.history import iter_text, replay_party

    open_store(args).close()
    try:
        point = parse_point(args.db, args.as_of, None)
        since = _parse_when(args.from_, "--from") if args.from_ else None
        until = _parse_when(args.until, "--until") if args.until else None
        valid_at = _parse_when(args.valid_at, "--valid-at") if args.valid_at else None
    except ValueError as e:
        raise UsageError(str(e)) from e
    if valid_at is not None:
        until = valid_at if until is None else min(until, valid_at)
    r = replay_party(args.db, args.party, as_of=point.as_of, since_us=since, until_us=until,
                     types=set(args.type) if args.type else None, lot=args.lot, counterparty=args.counterparty)
    if not r.steps and r.name is None:
        raise UsageError(f"party {args.party} has no history in this ledger")
    if args.json:
        emit(args, r.to_dict(), lambda: None)
    elif args.step and sys.stdin.isatty():
        lines = list(iter_text(r))
        print(lines[0])
        block: list[str] = []
        for line in lines[1:]:
            if line.startswith("\n#") and block:
                print("\n".join(block))
                if input("[Enter] next, q quit > ").strip().lower() == "q":
                    return EXIT_OK
                block = []
            block.append(line)
        print("\n".join(block))
    else:
        for line in iter_text(r):
            print(line)
    return EXIT_FAILED if r.signatures_invalid else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from reledger.replay.export import ExportError, export_bundle

    open_store(args).close()
    try:
        summary = export_bundle(args.db, args.party, args.out)
    except ExportError as e:
        raise UsageError(str(e)) from e
    emit(args, summary, lambda: console().print(
        f"wrote {summary['file']}: {summary['chain_length']} entries of {args.party} and "
        f"{summary['registry_entries']} registry entries, each with its inclusion proof against the checkpoint "
        f"of size {summary['checkpoint_size']}"
        + (", and the proof that the last is the chain's head" if summary["chain_end_proven"] else "")
        + f"; consistency proofs from {summary['earlier_checkpoints']} earlier checkpoints ({summary['bytes']} bytes)"))
    return EXIT_OK


def cmd_investigate(args: argparse.Namespace) -> int:
    from reledger.projections.queries import parse_point
    from reledger.replay.report import ReportError, write_report

    open_store(args).close()
    try:
        point = parse_point(args.db, args.as_of, None)
        summary = write_report(args.db, args.party, args.out, as_of=point.as_of)
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
    from reledger.ledger.bundle import BundleError, verify_bundle

    try:
        data = Path(args.bundle).read_bytes()
        older = [Path(p).read_bytes() for p in (args.older or [])] + [Path(p).read_bytes() for p in args.checkpoint]
        rep = verify_bundle(data, trusted_checkpoint_keys=args.checkpoint_key, trusted_genesis=args.genesis,
                            older=older)
    except OSError as e:
        raise UsageError(str(e)) from e
    except BundleError as e:
        why = str(e)
        emit(args, {"ok": False, "problems": [why]}, lambda: console().print(f"[red]FAILED[/red]: {why}"))
        return EXIT_FAILED

    def text() -> None:
        c = console()
        status = "[green]OK[/green]" if rep.ok else "[red]FAILED[/red]"
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
        c.print(f"trust anchor: genesis {rep.genesis}" + ("" if args.genesis else " (pin with --genesis)"))
        for p in rep.problems[:20]:
            c.print(f"[red]problem:[/red] {p}")
    emit(args, rep.to_dict(), text)
    return EXIT_OK if rep.ok else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from reledger.replay.monthly import ReportError, build_monthly_report

    open_store(args).close()
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
    from reledger.ledger.genesis import ChainSigner
    from reledger.ledger.keys import KeyError_, SigningKey

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
    from reledger.ledger.keys import KeyError_, SigningKey

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
        from reledger.ledger.genesis import ChainSigner
        from reledger.projections.hooks import ProjectionFindings
        from reledger.projections.store import ProjectionStore

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


# --- the rest -------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from reledger.demo.run import run_demo

    return run_demo(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from reledger.commands.server import serve

    open_store(args).close()  # refuse a missing SQLite file with a clear message
    serve(args.db, host=args.host, port=args.port, log_level=args.log_level, max_queued_entries=args.max_queued_entries,
          header_timeout=args.header_timeout, body_timeout=args.body_timeout, max_connections=args.max_connections,
          max_client_connections=args.max_client_connections)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from reledger.bench.run import main as bench_main

    argv = list(args.rest)
    if args.json:
        argv.append("--json")
    return bench_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reledger", description="Signed, append-only rare earth traceability ledger")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser

    def sub_add_parser(name: str, parents=(), **kw) -> argparse.ArgumentParser:
        s = add(name, **kw)
        if parents:  # every subcommand gets its own --db/--json actions (defaults differ)
            s.add_argument("--db", default=default_db(), help="database URL (default: $RELEDGER_DB or %(default)s)")
            s.add_argument("--json", action="store_true", help="print one JSON document")
        return s

    sub.add_parser = sub_add_parser  # type: ignore[method-assign]
    common = object()

    s = sub.add_parser("init", parents=[common], help="create a ledger with its regulator genesis")
    s.add_argument("--regulator", default="MIIT", help="the root regulator's party id (default %(default)s)")
    s.add_argument("--name", default="Ministry of Industry and Information Technology")
    s.add_argument("--origin", default="reledger.example/national", help="checkpoint origin (signed-note key name)")
    s.add_argument("--keys", default="reledger-keys", help="where to write the key files (default %(default)s)")
    s.add_argument("--force", action="store_true", help="overwrite existing key files")
    s.add_argument("--serving-role", help="PostgreSQL: create this role with INSERT and SELECT only")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("keygen", parents=[common], help="write a new Ed25519 key file (mode 0600)")
    s.add_argument("--party", required=True)
    s.add_argument("--purpose", choices=["entries", "checkpoint"], default="entries")
    s.add_argument("--name", help="signed-note key name (checkpoint keys)")
    s.add_argument("--out", help="key file (default PARTY.key)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("verify", parents=[common], help="verify signatures, keys, chains, Merkle log, checkpoints")
    s.add_argument("--party", help="verify one party's chain (with inclusion proofs), not the whole log")
    s.add_argument("--workers", type=int, default=None, help="processes for signatures (default: all cores)")
    s.add_argument("--genesis", help="trusted genesis entry hash (hex)")
    s.add_argument("--checkpoint-key", action="append", default=[], help="trusted checkpoint vkey (repeatable)")
    s.add_argument("--checkpoint", action="append", default=[], help="a checkpoint note kept outside the database")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("checkpoint", parents=[common], help="sign and store a checkpoint of the log")
    s.add_argument("--key", default="reledger-keys/operator.key", help="checkpoint key file (default %(default)s)")
    s.set_defaults(func=cmd_checkpoint)

    s = sub.add_parser("prove", parents=[common], help="inclusion proof of an entry, or consistency proof")
    s.add_argument("--entry", help="CHAIN:SEQ")
    s.add_argument("--size", type=int, help="tree size (default: the latest checkpoint's)")
    s.add_argument("--from", dest="from_", type=int)
    s.add_argument("--to", type=int)
    s.set_defaults(func=cmd_prove)

    def point_options(s: argparse.ArgumentParser) -> None:
        s.add_argument("--as-of", help="what the ledger knew: a log size N, or a record time (RFC 3339)")
        s.add_argument("--valid-at", help="business time: YYYY-MM-DD (end of day) or RFC 3339")

    s = sub.add_parser("quota", parents=[common], help="quota usage per enterprise, group and nation")
    s.add_argument("--year", type=int, required=True)
    s.add_argument("--party", help="one enterprise or group")
    point_options(s)
    s.set_defaults(func=cmd_quota)

    s = sub.add_parser("stock", parents=[common], help="stock per party, product and lot")
    s.add_argument("--party")
    point_options(s)
    s.set_defaults(func=cmd_stock)

    s = sub.add_parser("findings", parents=[common], help="rule findings with evidence (exit 1 if any)")
    s.add_argument("--party")
    s.add_argument("--rule", choices=["designation", "quota", "stock", "mass_balance", "flow", "reporting",
                                      "timeliness"])
    point_options(s)
    s.set_defaults(func=cmd_findings)

    s = sub.add_parser("flow", parents=[common], help="the flow graph, or a lot traced up or down")
    s.add_argument("--lot")
    s.add_argument("--direction", choices=["up", "down"], default="up")
    s.add_argument("--format", choices=["json", "dot", "svg"], default="json")
    s.add_argument("--out", help="write to a file instead of stdout")
    point_options(s)
    s.set_defaults(func=cmd_flow)

    s = sub.add_parser("rebuild", parents=[common], help="drop and rebuild the projections from the log")
    s.set_defaults(func=cmd_rebuild)

    s = sub.add_parser("replay", parents=[common], help="a party's history, entry by entry, with state and findings")
    s.add_argument("--party", required=True)
    s.add_argument("--from", dest="from_", help="business time from (date or RFC 3339)")
    s.add_argument("--until", help="business time until (date or RFC 3339)")
    s.add_argument("--type", action="append", help="only these entry types (repeatable)")
    s.add_argument("--lot", help="only entries naming this lot")
    s.add_argument("--counterparty", help="only entries with this counterparty")
    s.add_argument("--step", action="store_true", help="step through it in the terminal")
    point_options(s)
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("export", parents=[common], help="write a party's evidence bundle (one file)")
    s.add_argument("--party", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("investigate", parents=[common], help="one self-contained HTML report on a party")
    s.add_argument("--party", required=True)
    s.add_argument("--out", required=True, help="the HTML file to write")
    s.add_argument("--as-of", help="what the ledger knew: a log size N, or a record time (RFC 3339)")
    s.set_defaults(func=cmd_investigate)

    s = sub.add_parser("verify-bundle", help="check a bundle offline (no database, no network)")
    s.add_argument("bundle")
    s.add_argument("older", nargs="*", help="earlier bundles or checkpoint notes it must be consistent with")
    s.add_argument("--checkpoint", action="append", default=[], help="an earlier checkpoint note (repeatable)")
    s.add_argument("--checkpoint-key", action="append", default=[], help="trusted checkpoint vkey")
    s.add_argument("--genesis", help="trusted genesis entry hash")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify_bundle)

    s = sub.add_parser("report", parents=[common], help="build (and optionally sign and submit) a monthly report")
    s.add_argument("--party", required=True)
    s.add_argument("--month", required=True, help="YYYY-MM")
    s.add_argument("--sign-with", help="the party's key file: sign and append the report")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("append", parents=[common], help="sign one entry with a key file and append it")
    s.add_argument("--key", required=True, help="the party's key file")
    s.add_argument("--type", required=True, help="entry type (docs/CATALOGUE.md)")
    s.add_argument("--body", required=True, help="the body as JSON, or @FILE")
    s.add_argument("--occurred-at", help="business time (RFC 3339 UTC; default now)")
    s.add_argument("--command-id", help="a UUID: a retry with the same id is recorded once")
    s.add_argument("--server", help="append over HTTP to this server instead of --db")
    s.set_defaults(func=cmd_append)

    s = sub.add_parser("demo", parents=[common], help="run a demonstration year end to end")
    s.add_argument("--seed", type=int, default=2024)
    s.add_argument("--scale", choices=["small", "year"], default="small")
    s.add_argument("--out", default="reledger-demo", help="where keys and reports go (default %(default)s)")
    s.set_defaults(func=cmd_demo)
    for action in s._actions:
        if action.dest == "db":
            action.default = os.environ.get("RELEDGER_DB")  # demo: its own ledger unless told

    s = sub.add_parser("serve", parents=[common], help="serve the command API over HTTP")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--log-level", default="warning")
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
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("bench", help="run the benchmarks (see bench/)", add_help=False)
    s.add_argument("--json", action="store_true")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        # bench owns its own options
        from reledger.bench.run import main as bench_main

        return bench_main(argv[1:])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
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


if __name__ == "__main__":
    sys.exit(main())
