"""Every subcommand against broken inputs: exit 2 with a message that says what is wrong (and
the closest name, when one is close), never a clean answer, never a traceback, nothing written.

One small demo ledger (SQLite) is built once for the module; each case runs the command line
in-process (``main``) and reads what it printed. A few cases run ``python -m reledger`` as a user
does, to see the whole output. PostgreSQL cases (a missing schema, a server that does not
answer, a database that does not exist) use the real server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reledger.cli import main  # the whole command line, demo and serve included
from reledger.storage.reader import LogReader
from tests.conftest import PG_URL, drop_schema, require_pg

ROOT = Path(__file__).resolve().parents[1]
PLANT = "9136070022GANZHOUS"
MINE = "9115020011BAYANOBO"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo ledger: (url, folder, summary)."""
    d = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{d / 'ledger.db'}"
    out = d / "demo"
    assert main(["demo", "--db", url, "--out", str(out), "--json"]) in (0, 1)
    summary = json.loads((out / "summary.json").read_text())
    return url, d, summary


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv: str, says: str = "") -> str:
    """The command exits 2 with a message on stderr (containing ``says``), no traceback."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, code, out[-500:], err[-500:])
    assert "Traceback" not in out + err and "unexpected error" not in err, err
    assert err.startswith("reledger ") or err.startswith("usage:"), err
    assert says.lower() in err.lower(), (says, err)
    return err


def size(url: str) -> int:
    with LogReader(url) as r:
        return r.queries.size(r.cursor())[0]


# --- names the ledger does not know -----------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["findings", "--party", PLANT.lower()],
    ["stock", "--party", PLANT.lower()],
    ["quota", "--year", "2024", "--party", PLANT.lower()],
    ["replay", "--party", PLANT.lower()],
    ["investigate", "--party", PLANT.lower(), "--out", "{d}/r.html"],
    ["export", "--party", PLANT.lower(), "--out", "{d}/b.bundle"],
    ["report", "--party", PLANT.lower(), "--month", "2024-05"],
    ["verify", "--party", PLANT.lower()],
    ["replay", "--party", PLANT, "--counterparty", MINE.lower()],
])
def test_an_unknown_party_is_refused_with_the_closest_name(capsys, demo, argv):
    url, d, _ = demo
    argv = [a.replace("{d}", str(d)) for a in argv]
    err = refused(capsys, *argv, "--db", url, says="no such party")
    assert "did you mean" in err and (PLANT in err or MINE in err)
    assert not (d / "r.html").exists() and not (d / "b.bundle").exists()


def test_a_typo_far_from_any_name_gets_no_suggestion_but_is_still_refused(capsys, demo):
    url, _, _ = demo
    err = refused(capsys, "findings", "--party", "NOBODY-AT-ALL", "--db", url, says="no such party")
    assert "did you mean" not in err


def test_a_short_name_suggests_the_full_id(capsys, demo):
    url, _, _ = demo
    err = refused(capsys, "findings", "--party", "GANZHOUS", "--db", url, says="no such party")
    assert PLANT in err


def test_known_parties_still_answer(capsys, demo):
    url, _, _ = demo
    code, out, _ = run(capsys, "findings", "--party", PLANT, "--db", url, "--json")
    assert code == 1 and json.loads(out)["findings"]  # the seeded over-quota plant
    code, out, _ = run(capsys, "findings", "--party", "NAO-AUDIT", "--db", url, "--json")  # registered, no chain
    assert code == 0 and json.loads(out)["findings"] == []


def test_unknown_year_lot_type_chain_entry(capsys, demo):
    url, _, s = demo
    err = refused(capsys, "quota", "--year", "2023", "--db", url, says="no quota for that year")
    assert "2024" in err
    lot = s["export_lot"]
    err = refused(capsys, "replay", "--party", PLANT, "--lot", lot.lower(), "--db", url, says="no such lot")
    assert lot in err
    err = refused(capsys, "flow", "--lot", lot.lower(), "--db", url, says="no such lot")
    assert lot in err
    err = refused(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecord", "--db", url,
                  says="no such entry type")
    assert "SeparationBatchRecorded" in err
    err = refused(capsys, "prove", "--entry", "MIIX:1", "--db", url, says="no chain")
    assert "MIIT" in err
    refused(capsys, "prove", "--entry", "MIIT:99999", "--db", url, says="has entries 1..")
    refused(capsys, "prove", "--entry", "MIIT", "--db", url, says="CHAIN:SEQ")
    refused(capsys, "show", "MIIT:0", "--db", url, says="CHAIN:SEQ")
    refused(capsys, "show", "miit:1", "--db", url, says="did you mean MIIT")
    refused(capsys, "show", f"{PLANT}:99999", "--db", url, says="has entries 1..")
    refused(capsys, "types", "QuotaBatch", says="did you mean QuotaBatchIssued")


# --- times -----------------------------------------------------------------------------------

def test_bad_inverted_and_out_of_range_times(capsys, demo):
    url, _, _ = demo
    n = size(url)
    refused(capsys, "replay", "--party", PLANT, "--from", "2024-12-01", "--until", "2024-11-01", "--db", url,
            says="is after --until")
    refused(capsys, "replay", "--party", PLANT, "--as-of", "999999", "--db", url, says=f"only {n} entries")
    refused(capsys, "quota", "--year", "2024", "--as-of", str(n + 1), "--db", url, says=f"only {n} entries")
    refused(capsys, "stock", "--valid-at", "2024-13-01", "--db", url, says="not a date")
    refused(capsys, "findings", "--as-of", "yesterday", "--db", url, says="not a date")
    refused(capsys, "replay", "--party", PLANT, "--from", "2024-11-28T13:00:00", "--db", url, says="offset")
    code, _, _ = run(capsys, "quota", "--year", "2024", "--as-of", str(n), "--db", url)
    assert code == 0


def test_from_a_date_includes_that_whole_cst_day(capsys, demo):
    """The over-quota batch of 28 November 2024 (recorded in the afternoon, UTC) is in a replay
    --from 2024-11-28 and in one --until 2024-11-28; a CST day runs 16:00 UTC to 16:00 UTC."""
    url, _, s = demo
    code, out, _ = run(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecorded", "--json",
                       "--db", url)
    steps = [x for x in json.loads(out)["steps"] if x["kind"] == "entry"]
    over = [x for x in steps if any(f["code"] == "OVER_QUOTA" for f in x["findings"])][0]
    occurred = over["occurred_at"]  # e.g. 2024-11-28T13:00:00Z
    from datetime import datetime, timedelta, timezone

    t = datetime.fromisoformat(occurred.replace("Z", "+00:00"))
    cst_day = (t + timedelta(hours=8)).date().isoformat()
    for opts in (["--from", cst_day], ["--until", cst_day], ["--from", cst_day, "--until", cst_day]):
        code, out, _ = run(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecorded", "--json",
                           "--db", url, *opts)
        assert code == 0
        assert over["index"] in [x["index"] for x in json.loads(out)["steps"]], opts
    day_after = (t + timedelta(hours=8) + timedelta(days=1)).date().isoformat()
    code, out, _ = run(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecorded", "--json",
                       "--db", url, "--from", day_after)
    assert over["index"] not in [x["index"] for x in json.loads(out)["steps"]]
    # an explicit UTC time and an offset name the same instant
    code, out, _ = run(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecorded", "--json",
                       "--db", url, "--from", occurred, "--until", t.astimezone(timezone(timedelta(hours=8)))
                       .isoformat())
    assert [x["index"] for x in json.loads(out)["steps"] if x["kind"] == "entry"] == [over["index"]]


# --- databases and files ----------------------------------------------------------------------

def test_databases_that_are_not_ledgers(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a database")
    (tmp_path / "empty.db").write_bytes(b"")
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    for cmd in (["verify"], ["findings"], ["quota", "--year", "2024"], ["show", "MIIT:1"],
                ["replay", "--party", PLANT], ["prove", "--entry", "MIIT:1"], ["rebuild"],
                ["export", "--party", PLANT, "--out", str(tmp_path / "b")]):
        refused(capsys, *cmd, "--db", f"sqlite:///{tmp_path}", says="not a file")
        refused(capsys, *cmd, "--db", f"sqlite:///{tmp_path / 'notes.txt'}", says="not a reledger ledger")
        refused(capsys, *cmd, "--db", f"sqlite:///{tmp_path / 'missing.db'}", says="no ledger at")
        refused(capsys, *cmd, "--db", f"sqlite:///{other}", says="not a reledger ledger")
        refused(capsys, *cmd, "--db", "mysql://x/y", says="unsupported database URL")
    assert not (tmp_path / "missing.db").exists()
    assert (tmp_path / "notes.txt").read_text() == "not a database"


def test_verify_on_an_empty_ledger_is_not_ok(capsys, tmp_path):
    from reledger.storage.store import LedgerStore

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    LedgerStore(url, create=True).close()  # the tables, no entry
    err = refused(capsys, "verify", "--db", url, says="empty")
    assert "OK" not in err


def test_missing_and_unwritable_files(capsys, demo, tmp_path):
    url, d, _ = demo
    refused(capsys, "verify", "--checkpoint", str(tmp_path / "missing.txt"), "--db", url, says="missing.txt")
    refused(capsys, "export", "--party", PLANT, "--out", str(tmp_path / "nodir" / "x"), "--db", url,
            says="no directory")
    refused(capsys, "investigate", "--party", PLANT, "--out", str(tmp_path), "--db", url, says="is a directory")
    refused(capsys, "flow", "--format", "svg", "--out", str(tmp_path / "nodir" / "x.svg"), "--db", url,
            says="no directory")
    refused(capsys, "checkpoint", "--key", str(tmp_path / "missing.key"), "--db", url, says="no such key file")
    refused(capsys, "verify-bundle", str(tmp_path / "missing.bundle"), says="missing.bundle")
    refused(capsys, "append", "--key", str(tmp_path / "missing.key"), "--type", "StockCounted", "--body", "{}",
            "--db", url)
    refused(capsys, "report", "--party", PLANT, "--month", "2024-13", "--db", url, says="YYYY-MM")
    assert not (tmp_path / "nodir").exists()


def test_usage_errors_are_exit_2(capsys, demo):
    url, _, _ = demo
    for argv in (["nosuchcommand"], ["quota"], ["quota", "--year", "twenty"], ["prove", "--size", "0"],
                 ["serve", "--port", "x"], ["demo", "--scale", "huge"]):
        code, out, err = run(capsys, *argv, "--db", url)
        assert code == 2 and "Traceback" not in out + err and "usage:" in err, argv


def test_the_demo_never_overwrites_a_ledger(capsys, demo, tmp_path):
    url, d, _ = demo
    before = size(url)
    mtime = Path(url[len("sqlite:///"):]).stat().st_mtime_ns
    refused(capsys, "demo", "--db", url, "--out", str(tmp_path / "new"), says="never deletes or overwrites")
    assert size(url) == before and Path(url[len("sqlite:///"):]).stat().st_mtime_ns == mtime
    # its default ledger, and its key files, are refused just the same
    refused(capsys, "demo", "--out", str(d / "demo"), says="never")
    keys = sorted((d / "demo" / "keys").iterdir())
    assert keys
    refused(capsys, "demo", "--db", f"sqlite:///{tmp_path / 'fresh.db'}", "--out", str(d / "demo"),
            says="never overwrites keys")
    assert sorted((d / "demo" / "keys").iterdir()) == keys
    assert not (tmp_path / "fresh.db").exists()


def test_serve_on_a_busy_port_exits_2(capsys, demo):
    url, _, _ = demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused(capsys, "serve", "--port", str(port), "--db", url, says="cannot listen")


def test_help_version_and_types(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("reledger ")
    from reledger.commands.cli import build_parser

    parser = build_parser()
    sub = [a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)][0]
    for name, p in sub.choices.items():
        if name == "bench":
            continue
        text = p.format_help()
        assert p.description, name
        assert "examples:" in text and "exit codes:" in text, name
        assert "FROM_" not in text, name
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, (name, a.dest)
    code, out, _ = run(capsys, "types", "--json")
    types = {t["type"]: t for t in json.loads(out)["types"]}
    assert code == 0 and "SeparationBatchRecorded" in types and types["QuotaBatchIssued"]["asserted_by"]
    code, out, _ = run(capsys, "types", "separationbatchrecorded", "--json")
    doc = json.loads(out)
    assert doc["type"] == "SeparationBatchRecorded"
    assert any(f["field"] == "inputs[].reo_kg" and "kg REO" in f["type"] for f in doc["fields"])


# --- evidence shows the facts -----------------------------------------------------------------

def test_show_an_entry(capsys, demo):
    url, _, _ = demo
    code, out, _ = run(capsys, "show", f"{PLANT}:1", "--db", url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["signature_check"] == "valid" and doc["problems"] == []
    assert doc["chain"] == PLANT and doc["seq"] == 1 and len(doc["entry_hash"]) == 64
    proof = doc["inclusion_proof"]
    assert proof["verified"] and proof["checkpoint_size"] > doc["index"]
    code, out, _ = run(capsys, "show", f"{PLANT}:1", "--db", url)
    assert code == 0 and "signature valid" in out and doc["type"] in out


def test_tables_as_csv_and_json(capsys, demo):
    import csv
    import io

    url, _, _ = demo
    code, out, _ = run(capsys, "quota", "--year", "2024", "--format", "csv", "--db", url)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("# Quota 2024")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:lines.index("", 1) if "" in lines[1:] else None]))))
    plant = [r for r in csv.DictReader(io.StringIO(out.split("\n# ")[0].split("\n", 1)[1])) if r["party"] == PLANT]
    assert rows and plant and "," not in plant[0]["used"]  # raw numbers for scripts
    code, out, _ = run(capsys, "findings", "--format", "json", "--db", url)
    assert code == 1 and json.loads(out)["findings"]
    code, out, _ = run(capsys, "replay", "--party", PLANT, "--format", "csv", "--db", url)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows and {"says", "entry_hash", "signature"} <= set(rows[0])
    assert any("kg REO" in r["says"] for r in rows)


def test_replay_shows_what_each_entry_says_with_units(capsys, demo):
    url, _, _ = demo
    code, out, _ = run(capsys, "replay", "--party", PLANT, "--type", "SeparationBatchRecorded", "--db", url)
    assert code == 0
    says = [line for line in out.splitlines() if line.strip().startswith("says ")]
    assert says and all("kg REO" in line for line in says)
    import re

    assert any(re.search(r"\d,\d{3}(\.\d+)? kg REO", line) for line in says)  # thousands separators
    assert "t REO" in out


def test_progress_lines_on_stderr_whether_or_not_a_terminal(capsys):
    """Long work prints a line every few seconds on stderr (none in its first two seconds)."""
    from reledger.commands.cli import Ticker

    now = [0.0]
    tick = Ticker("verifying", total=1000)
    tick._clock = lambda: now[0]
    tick.start, tick.next = 0.0, 2.0
    for t, done in ((0.5, 10), (2.5, 500), (3.0, 600), (6.0, 900)):
        now[0] = t
        tick(done)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2 and "500 of 1,000 entries (50 %)" in lines[0] and "900 of 1,000" in lines[1]


# --- as a user runs it -------------------------------------------------------------------------

def test_no_traceback_from_the_real_command_line(demo, tmp_path):
    url, _, _ = demo
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RELEDGER_DEBUG", None)
    for argv in (["verify", "--db", f"sqlite:///{tmp_path}"], ["findings", "--party", "x", "--db", url],
                 ["verify", "--checkpoint", "missing.txt", "--db", url]):
        p = subprocess.run([sys.executable, "-m", "reledger", *argv], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env=env)
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr and p.stderr.strip(), (argv, p.stderr)


# --- PostgreSQL ------------------------------------------------------------------------------

def test_postgres_missing_schema_database_and_server(capsys, tmp_path):
    require_pg()
    schema = "missing_" + uuid.uuid4().hex[:10]
    url = PG_URL + ("&" if "?" in PG_URL else "?") + f"schema={schema}"
    try:
        refused(capsys, "findings", "--db", url, says=f"no schema '{schema}'")
        refused(capsys, "verify", "--db", url, says="no schema")
        import psycopg

        from reledger.storage.reader import DatabaseURL

        with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo()) as c:
            assert c.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None  # nothing created
    finally:
        drop_schema(schema)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["keygen", "--party", "SOMEONE", "--out", str(tmp_path / "x.key")]) == 0
    capsys.readouterr()
    for argv in (["quota", "--year", "2024"], ["init", "--keys", "{tmp}"], ["append", "--key", str(tmp_path / "x.key"), "--type",
                 "StockCounted", "--body", "{}"], ["serve"], ["demo", "--out", "{tmp}"]):
        argv = [a.replace("{tmp}", str(tmp_path / "k")) for a in argv]
        refused(capsys, *argv, "--db", f"postgresql://postgres@127.0.0.1:{port}/test", says="cannot reach")
    assert not (tmp_path / "k" / "keys").exists()
    refused(capsys, "verify", "--db", PG_URL.split("?")[0].rsplit("/", 1)[0] + "/no_such_db_" + uuid.uuid4().hex[:6],
            says="does not exist")


def test_postgres_demo_refuses_a_ledger(capsys, pg_url, tmp_path):
    code, _, _ = run(capsys, "init", "--db", pg_url, "--keys", str(tmp_path / "keys"))
    assert code == 0
    before = size(pg_url)
    refused(capsys, "demo", "--db", pg_url, "--out", str(tmp_path / "demo"), says="not empty")
    assert size(pg_url) == before and not (tmp_path / "demo" / "keys").exists()


def test_a_long_command_says_how_far_it_is(capsys):
    """The progress line of a long command (rebuild) says how far the work is when it can, and
    never stops the work when its status cannot be read."""
    import time as _time

    from reledger.commands.cli import heartbeat

    state = {"at": (0, 0)}

    def status() -> str:
        at, of = state["at"]
        if at < 0:
            raise RuntimeError("not readable")
        return f"{at:,} of {of:,} entries ({100 * at / of:.0f} %)" if of else "dropping the tables"

    with heartbeat("rebuilding the projections", every=0.02, status=status):
        _time.sleep(0.1)
        state["at"] = (250_000, 1_000_000)
        _time.sleep(0.1)
        state["at"] = (-1, 0)
        _time.sleep(0.1)
    err = capsys.readouterr().err
    assert "reledger: rebuilding the projections: dropping the tables," in err
    assert "reledger: rebuilding the projections: 250,000 of 1,000,000 entries (25 %)," in err
    assert "reledger: rebuilding the projections: still working," in err


def test_version_is_looked_up_when_asked(capsys):
    """``reledger --version`` prints the installed version (looked up only then: importlib.metadata
    is not paid by every command's start), and so does ``reledger.__version__``."""
    from importlib.metadata import version

    import reledger

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"reledger {version('reledger')}\n"
    assert reledger.__version__ == version("reledger")
    with pytest.raises(AttributeError):
        reledger.no_such_thing
