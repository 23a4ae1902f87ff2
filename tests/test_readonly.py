"""Reads never write (DESIGN.md "Reads never write"), projections anyone can verify, and the
least-privilege serving role.

* every command that only reads leaves a SQLite ledger byte-identical (the file and its WAL)
  and a PostgreSQL schema unchanged (its tables, indexes, triggers and every row);
* a missing file, a foreign SQLite file and a missing PostgreSQL schema are refused (exit 2)
  and nothing is created;
* ``verify --party`` on a ledger whose triggers were dropped does not put them back;
* ``verify --projections`` names a deleted finding, a changed quota figure and an inserted row;
* the serving role made by ``init --serving-role`` appends and answers through the command API
  and the projections, and cannot alter a ledger table or write a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from conftest import PG_URL, _with_schema, drop_schema, require_pg
from projection_helpers import World, over_quota_and_checkpointed, key_for
from reledger.commands.cli import EXIT_FAILED, EXIT_OK, EXIT_UNANCHORED, EXIT_USAGE, main
from reledger.ledger.checkpoint import NoteSigner
from reledger.projections.store import P, ProjectionStore
from reledger.storage.reader import DatabaseURL, NoLedger, open_ledger_readonly


def _pg_conn(url: str):
    import psycopg

    return psycopg.connect(DatabaseURL.parse(url).conninfo(), autocommit=True)


def fingerprint(url: str) -> object:
    """SQLite: the bytes of the file and of its WAL (absent = empty). PostgreSQL: the schema's
    tables, indexes and triggers, and a digest of every row of every table."""
    u = DatabaseURL.parse(url)
    if u.backend == "sqlite":
        out = {}
        for suffix in ("", "-wal"):
            p = Path(u.path + suffix)
            out[suffix] = hashlib.sha256(p.read_bytes() if p.exists() else b"").hexdigest()
        return out
    with _pg_conn(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (u.schema,))]
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY indexname",
                               (u.schema,)).fetchall()
        triggers = conn.execute(
            "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal "
            "ORDER BY 1, 2", (u.schema,)).fetchall()
        rows = {}
        for t in tables:
            rows[t] = conn.execute(
                f'SELECT COUNT(*), md5(COALESCE(string_agg(x::text, \',\' ORDER BY x::text), \'\')) '
                f'FROM "{u.schema}"."{t}" x').fetchone()
        return {"tables": tables, "indexes": indexes, "triggers": triggers, "rows": rows}


@pytest.fixture
def ledger(db_url, tmp_path):
    """A ledger with activity, projections up to date and a checkpoint."""
    w = World(db_url)
    try:
        over_quota_and_checkpointed(w)
        ps = ProjectionStore(db_url)
        ps.catch_up()
        ps.close()
    finally:
        w.close()
    return db_url


READS = [
    ["verify"],
    ["verify", "--projections"],
    ["verify", "--party", "MINE01"],
    ["quota", "--year", "2024"],
    ["quota", "--year", "2024", "--as-of", "5"],
    ["stock"],
    ["stock", "--party", "MINE01"],
    ["findings"],
    ["flow"],
    ["flow", "--lot", "L1"],
    ["replay", "--party", "MINE01"],
    ["prove", "--entry", "MINE01:1"],
    ["prove", "--from", "1", "--to", "3"],
    ["report", "--party", "MINE01", "--month", "2024-01"],
]


def test_read_commands_leave_the_database_as_it_was(ledger, tmp_path, capsys):
    before = fingerprint(ledger)
    codes = {}
    for argv in READS + [["investigate", "--party", "MINE01", "--out", str(tmp_path / "r.html")],
                         ["export", "--party", "MINE01", "--out", str(tmp_path / "b.bundle")]]:
        codes[" ".join(argv)] = main([*argv, "--db", ledger, "--json"])
        capsys.readouterr()
        assert fingerprint(ledger) == before, f"{argv} changed the database"
    # the commands really ran (a refusal would leave the database unchanged too)
    assert codes["verify"] == EXIT_UNANCHORED and codes["verify --projections"] == EXIT_OK
    assert codes["quota --year 2024"] == EXIT_OK and codes["findings"] == EXIT_FAILED  # the over-quota finding
    assert all(c in (EXIT_OK, EXIT_FAILED, EXIT_UNANCHORED) for c in codes.values()), codes
    assert (tmp_path / "r.html").stat().st_size > 0 and (tmp_path / "b.bundle").stat().st_size > 0


def test_a_query_answer_states_what_it_reflects(ledger, capsys):
    assert main(["quota", "--year", "2024", "--db", ledger, "--json"]) == EXIT_OK
    q = json.loads(capsys.readouterr().out)
    r = q["reflects"]
    with open_ledger_readonly(ledger) as reader:
        size, cp = reader.size(), reader.latest_checkpoint()
    assert r["log_size"] == size and r["projections_position"] == size and r["behind"] == 0
    assert r["checkpoint"] == {"size": cp[0], "root": cp[1].hex()}
    assert main(["stock", "--db", ledger]) == EXIT_OK
    assert f"at log position {size} of {size} entries" in capsys.readouterr().out


def test_missing_and_foreign_sqlite_files_are_refused_untouched(tmp_path, capsys):
    import sqlite3

    missing = tmp_path / "nothing.db"
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    for argv in READS:
        for path, what in ((missing, "no ledger at"), (foreign, "not a reledger ledger")):
            assert main([*argv, "--db", f"sqlite:///{path}"]) == EXIT_USAGE, argv
            err = capsys.readouterr().err
            assert what in err and "Traceback" not in err, (argv, err)
            assert not missing.exists()
            assert hashlib.sha256(foreign.read_bytes()).hexdigest() == digest
    with pytest.raises(NoLedger):
        open_ledger_readonly(f"sqlite:///{foreign}")


def test_a_missing_postgres_schema_is_refused_and_not_created(capsys):
    require_pg()
    schema = "t_missing_" + uuid.uuid4().hex[:8]
    url = _with_schema(PG_URL, schema)
    try:
        for argv in READS:
            assert main([*argv, "--db", url]) == EXIT_USAGE, argv
            err = capsys.readouterr().err
            assert schema in err and ("no schema" in err or "does not exist" in err), (argv, err)
        with _pg_conn(PG_URL) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    finally:
        drop_schema(schema)


def test_an_empty_postgres_schema_is_not_a_ledger(capsys):
    require_pg()
    schema = "t_empty_" + uuid.uuid4().hex[:8]
    with _pg_conn(PG_URL) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = _with_schema(PG_URL, schema)
    try:
        assert main(["quota", "--year", "2024", "--db", url]) == EXIT_USAGE
        assert "holds no reledger ledger" in capsys.readouterr().err
        with _pg_conn(PG_URL) as conn:
            assert conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()[0] == 0
    finally:
        drop_schema(schema)


def _triggers(url: str) -> list:
    u = DatabaseURL.parse(url)
    if u.backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(u.path)
        try:
            return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        finally:
            conn.close()
    return fingerprint(url)["triggers"]


def _drop_triggers(url: str) -> None:
    u = DatabaseURL.parse(url)
    if u.backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(u.path)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.commit()
        conn.close()
        return
    with _pg_conn(url) as conn:
        for table, trigger, _ in fingerprint(url)["triggers"]:
            conn.execute(f'DROP TRIGGER "{trigger}" ON "{u.schema}"."{table}"')


def test_verify_party_does_not_put_back_dropped_triggers(ledger, capsys):
    assert _triggers(ledger)
    _drop_triggers(ledger)
    assert _triggers(ledger) == []
    before = fingerprint(ledger)
    assert main(["verify", "--party", "MINE01", "--db", ledger]) in (EXIT_OK, EXIT_FAILED)
    assert main(["verify", "--db", ledger]) in (EXIT_UNANCHORED, EXIT_FAILED)
    capsys.readouterr()
    assert _triggers(ledger) == []  # the evidence stays as the attacker left it
    assert fingerprint(ledger) == before


def _sql(url: str, statements: list[str]) -> None:
    u = DatabaseURL.parse(url)
    if u.backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(u.path)
        for s in statements:
            conn.execute(s)
        conn.commit()
        conn.close()
        return
    with _pg_conn(url) as conn:
        conn.execute(f'SET search_path TO "{u.schema}"')
        for s in statements:
            conn.execute(s)


def test_verify_projections_names_every_tampered_row(ledger, capsys):
    with _Ps(ledger) as ps:
        finding = ps.execute(f"SELECT idx, message FROM {P}findings WHERE code = 'OVER_QUOTA' ORDER BY idx, message "
                             "LIMIT 1")[0]
        quota = ps.execute(f"SELECT idx, g FROM {P}quota WHERE kind = 'USED' ORDER BY idx LIMIT 1")[0]
    _sql(ledger, [
        f"DELETE FROM {P}findings WHERE code = 'OVER_QUOTA' AND idx = {finding[0]} AND message = '{finding[1]}'",
        f"UPDATE {P}quota SET g = g - 1 WHERE kind = 'USED' AND idx = {quota[0]}",
        f"INSERT INTO {P}stock (idx, occurred_us, party, lot, product, g, reo_g) VALUES (1, 0, 'X', 'FAKE', 'P', 5, 5)",
    ])
    before = fingerprint(ledger)
    assert main(["verify", "--projections", "--db", ledger, "--json"]) == EXIT_FAILED
    out = json.loads(capsys.readouterr().out)
    assert fingerprint(ledger) == before
    assert out["differences"] == 3 and out["differences_by_table"] == {"findings": 1, "quota": 1, "stock": 1}
    problems = "\n".join(out["problems"])
    assert f"{P}findings at log index {finding[0]}" in problems and "OVER_QUOTA" in problems and "(deleted)" in problems
    assert f"{P}quota at log index {quota[0]}" in problems and f"g={quota[1] - 1}" in problems
    assert f"g={quota[1]}" in problems and "(changed)" in problems
    assert "lot=FAKE" in problems
    assert main(["verify", "--projections", "--db", ledger]) == EXIT_FAILED
    assert "reledger_p_findings" in capsys.readouterr().out


class _Ps:
    """The projection tables through the writer's connection (for the test's own reads)."""

    def __init__(self, url: str):
        self.ps = ProjectionStore(url)

    def __enter__(self):
        return self.ps

    def __exit__(self, *exc):
        self.ps.close()


# --- the serving role -----------------------------------------------------------------------

def _names_for_a_serving_role() -> tuple[str, str, str, str]:
    """A fresh schema and role: (schema, role, the owner's URL, the role's URL)."""
    schema = "t_" + uuid.uuid4().hex[:12]
    role = "reledger_srv_" + uuid.uuid4().hex[:8]
    owner_url = _with_schema(PG_URL, schema)
    u = DatabaseURL.parse(owner_url)
    return schema, role, owner_url, f"postgresql://{role}@{u.host}:{u.port}/{u.dbname}?schema={schema}"


def _init_with_serving_role(owner_url: str, role: str, tmp_path, capsys) -> None:
    """``reledger init --serving-role``, as the owner (keys under tmp_path/keys)."""
    assert main(["init", "--db", owner_url, "--keys", str(tmp_path / "keys"), "--serving-role", role]) == EXIT_OK
    capsys.readouterr()


def test_the_serving_role_appends_and_answers_and_alters_nothing(tmp_path, capsys):
    require_pg()
    import psycopg

    from reledger.commands.api import CommandAPI
    from reledger.ledger.genesis import ChainSigner, key_authorized_body
    from reledger.ledger.keys import SigningKey
    from reledger.projections import queries
    from reledger.projections.hooks import ProjectionFindings
    from reledger.storage.store import LedgerStore

    schema, role, owner_url, role_url = _names_for_a_serving_role()
    try:
        _init_with_serving_role(owner_url, role, tmp_path, capsys)
        reg = SigningKey.read(tmp_path / "keys" / "MIIT.key")
        mine = key_for("MINE09")
        store = LedgerStore(role_url, processes=False)
        ps = ProjectionStore(role_url)
        api = CommandAPI(store, findings_hook=ProjectionFindings(ps))
        try:
            seq, head = store.chain_head("MIIT")
            s = ChainSigner(reg, seq=seq, head=head)
            at = "2024-01-01T00:00:00Z"
            api.submit([s.sign("PartyRegistered", {"party": "MINE09", "name": "Mine Nine", "roles": ["MINE"],
                                                   "province": "Jiangxi", "valid_from": at}, at),
                        s.sign("KeyAuthorized", key_authorized_body(mine, at), at)])
            api.submit([s.sign("QuotaBatchIssued", {"year": 2024, "batch_no": 1, "document_no": "Q-1",
                                                    "holder": "MINE09", "mining_rock_t_reo": "1",
                                                    "mining_ionic_t_reo": "0", "separation_t_reo": "0"},
                               "2024-01-02T00:00:00Z")])
            m = ChainSigner(mine)
            receipts = api.submit([m.sign("MineralProductProduced", {
                "lot": "L9", "ore_type": "ROCK", "wet_kg": "3000", "dry_kg": "2500", "treo_pct": "80",
                "reo_kg": "2000"}, "2024-01-03T00:00:00Z")])
            assert any(f["code"] == "OVER_QUOTA" for f in receipts[0].findings)  # answered, with its finding
            ps.catch_up()
            q = queries.quota(ps, 2024)
            row = [e for e in q["enterprises"] if e["party"] == "MINE09"][0]
            assert row["used_t"] == "2" and row["over"] is True
            assert q["reflects"]["projections_position"] == store.size()
        finally:
            api.close()
            ps.close()
            store.close()
        # the real server, as that role: it starts (its projections process included), appends, answers
        from http_helpers import Server, signed_get

        from reledger.commands.client import LedgerClient

        with Server(role_url) as srv:
            with LedgerClient(srv.base, mine) as client:
                m2 = client.append_many([("MineralProductProduced", {
                    "lot": "L10", "ore_type": "ROCK", "wet_kg": "300", "dry_kg": "250", "treo_pct": "80",
                    "reo_kg": "200"}, "2024-01-04T00:00:00Z", None)])
            assert m2.receipts
            r = signed_get(srv.base, mine, "/v1/quota?year=2024")
            assert r.status_code == 200, r.text
            mine_row = [e for e in r.json()["enterprises"] if e["party"] == "MINE09"][0]
            assert mine_row["used_t"] == "2.2"
        # as that role: nothing that alters a ledger table, no checkpoint, no projection rows removed
        with psycopg.connect(DatabaseURL.parse(role_url).conninfo(), autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            for stmt in ("ALTER TABLE reledger_log DISABLE TRIGGER ALL",
                         "DROP TRIGGER reledger_log_append_only ON reledger_log",
                         "INSERT INTO reledger_checkpoints (size, root, note, created_us) VALUES (1, '', '', 0)",
                         "UPDATE reledger_log SET type = 'x'",
                         f"DELETE FROM {P}findings",
                         f"DROP TABLE {P}quota"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(stmt)
        # the writer process (as that role) kept its state's rows (commands/writerows.py): written
        # up to the log when it stopped, so that the next start parses no log entry
        from reledger.commands.writerows import META, TABLE
        from reledger.projections.state import decode, encode

        with _pg_conn(owner_url) as conn:
            row = conn.execute(f'SELECT v FROM "{schema}".{TABLE} WHERE ns = %s AND k = %s',
                               (META, encode("position"))).fetchone()
        with LedgerStore(owner_url, processes=False) as owner_store:
            assert row is not None and decode(bytes(row[0])) == owner_store.size()
        # the server's owner-side check: the ledger verifies, and so do the projections
        assert main(["verify", "--db", owner_url]) == EXIT_UNANCHORED  # valid; nothing pinned
        assert main(["verify", "--projections", "--db", owner_url]) == EXIT_OK
        capsys.readouterr()
    finally:
        drop_schema(schema)
        with _pg_conn(PG_URL) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_serving_role_opens_a_ledger_without_an_index_this_version_added(tmp_path, capsys, caplog):
    """The serving role may not make an index: a ledger made before the flow table's party
    indexes (and the stock, quota and findings indexes the pages read) opens as that role
    (warned) and answers the same; the owner's next open makes them."""
    require_pg()
    from reledger.projections import flowgraph, queries

    schema, role, owner_url, role_url = _names_for_a_serving_role()
    try:
        _init_with_serving_role(owner_url, role, tmp_path, capsys)
        with _pg_conn(owner_url) as conn:
            for name in ("flow_src_party", "flow_dst_party", "stock_party_lot", "quota_grp", "findings_resolves"):
                conn.execute(f'DROP INDEX "{schema}".{P}{name}')
        ps = ProjectionStore(role_url)
        try:
            assert ps._missing() == (0, 5)
            assert "may not make them" in caplog.text
            ps.catch_up()
            assert flowgraph.party_graph(ps, party="MIIT")["edges"] == []
            # the pages of stock and findings, and a group's members, answer by a scan meanwhile
            assert queries.stock(ps, limit=2)["next"] is None and queries.findings(ps, limit=2)["next"] is None
            assert queries.group_membership(ps, "MIIT") == {}
        finally:
            ps.close()
        ps = ProjectionStore(owner_url)
        try:
            assert ps._missing() == (0, 0)
        finally:
            ps.close()
    finally:
        drop_schema(schema)
        with _pg_conn(PG_URL) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


# --- a streaming standby --------------------------------------------------------------------

class _Cluster:
    """A throwaway PostgreSQL cluster on this machine (run as the postgres user when root)."""

    def __init__(self, bindir: Path, datadir: Path, port: int, sockdir: Path):
        self.bindir, self.datadir, self.port, self.sockdir = bindir, datadir, port, sockdir

    @staticmethod
    def run(bindir: Path, *argv: str) -> None:
        import os
        import subprocess

        cmd = [str(bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.run(self.bindir, "pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "log"), "-w", "-t", "60",
                 "-o", f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c shared_buffers=16MB -c max_connections=40 -c wal_level=replica -c max_wal_senders=4",
                 "start")

    def stop(self) -> None:
        try:
            self.run(self.bindir, "pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001 - already down
            pass

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}"


def test_reads_run_on_a_streaming_standby(tmp_path, capsys):
    """A primary and a hot standby (streaming replication) on this machine: the ledger is written
    on the primary; verify, the queries, verify --projections, replay and investigate run on the
    standby (read-only connections are all they need) and answer what the primary holds."""
    import os
    import shutil
    import subprocess
    import tempfile
    import time

    require_pg()
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL server binaries (pg_ctl) to start a primary and a standby")
    bindir = Path(os.path.realpath(pg_ctl)).parent
    from http_helpers import free_port

    root = Path(tempfile.mkdtemp(prefix="reledger-standby-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    primary = _Cluster(bindir, root / "primary", free_port(), root)
    standby = _Cluster(bindir, root / "standby", free_port(), root)
    try:
        _Cluster.run(bindir, "initdb", "-D", str(primary.datadir), "-A", "trust", "-U", "postgres", "--no-sync")
        primary.start()
        _Cluster.run(bindir, "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                     "-D", str(standby.datadir), "-R", "-X", "stream", "--no-sync")
        standby.start()
        p_url, s_url = primary.url("ledger"), standby.url("ledger")
        w = World(p_url)
        try:
            w.ok("MIIT", "QuotaBatchIssued", {"year": 2024, "batch_no": 1, "document_no": "Q-1", "holder": "GRP01",
                                              "mining_rock_t_reo": "10", "mining_ionic_t_reo": "0",
                                              "separation_t_reo": "10"}, at="2024-01-02T00:00:00Z")
            w.produce("MINE01", "L1", 20_000_000, at="2024-01-03T00:00:00Z")
            w.store.checkpoint(NoteSigner("reledger.test/projections", w.ck.private_key))
            ps = ProjectionStore(p_url)
            ps.catch_up()
            ps.close()
            size = w.store.size()
        finally:
            w.close()
        with _pg_conn(p_url) as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + 60
        with _pg_conn(s_url) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True  # a real standby
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the standby did not catch up within 60 s"
                time.sleep(0.1)
        for argv in (["verify"], ["verify", "--projections"], ["replay", "--party", "MINE01"],
                     ["investigate", "--party", "MINE01", "--out", str(tmp_path / "r.html")]):
            expected = EXIT_UNANCHORED if argv == ["verify"] else EXIT_OK  # valid, nothing pinned
            assert main([*argv, "--db", s_url]) == expected, (argv, capsys.readouterr().err)
        capsys.readouterr()
        answers = {}
        for name, url in (("primary", p_url), ("standby", s_url)):
            assert main(["quota", "--year", "2024", "--db", url, "--json"]) == EXIT_OK
            answers[name] = json.loads(capsys.readouterr().out)
        assert answers["standby"] == answers["primary"]
        assert answers["standby"]["reflects"]["log_size"] == size and answers["standby"]["reflects"]["behind"] == 0
        assert sorted((g["category"], g["issued_t"]) for g in answers["standby"]["groups"] if g["group"] == "GRP01") \
            == [("MINING_ROCK", "10"), ("SEPARATION", "10")]
        assert main(["quota", "--year", "2024", "--db", standby.url("nosuch")]) == EXIT_USAGE
        assert "no schema 'nosuch'" in capsys.readouterr().err
    finally:
        standby.stop()
        primary.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
