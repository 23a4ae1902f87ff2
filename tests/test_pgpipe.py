"""storage/pgpipe.py: the append transaction's libpq pipeline, against a real PostgreSQL.

Values round-trip in binary form (hypothesis), errors raise psycopg's exception for their
SQLSTATE and roll back, the connection is always left idle outside pipeline mode, and large
statements are flushed while the server answers (no deadlock)."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors, pq

from conftest import PG_URL, require_pg
from reledger.storage.pgpipe import MAX_PREPARED, Pipeline, _prepared, encode_array
from reledger.storage.reader import DatabaseURL

pytestmark = pytest.mark.postgres


@pytest.fixture
def conn():
    require_pg()
    c = psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True)
    c.execute("CREATE TEMP TABLE pp (i bigint, t text, b bytea, f boolean)")
    yield c
    c.close()


def idle(c) -> bool:
    return c.pgconn.transaction_status == pq.TransactionStatus.IDLE and c.pgconn.pipeline_status == pq.PipelineStatus.OFF


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
ints = st.integers(-2**63, 2**63 - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(ints, st.none() | texts, st.binary(max_size=64), st.booleans()), min_size=1, max_size=20))
def test_values_round_trip_as_arrays_and_scalars(conn, rows):  # (the table is emptied per example)
    """What goes in as binary arrays (one per column, NULLs too) comes back as it went in, and
    a scalar parameter selects the same rows as psycopg's own adaptation would."""
    conn.execute("TRUNCATE pp")
    cols = [list(c) for c in zip(*rows)]
    with Pipeline(conn) as p:
        p.send("BEGIN")
        p.send("INSERT INTO pp SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bytea[], %b::boolean[])", cols)
        p.send("COMMIT")
        everything = p.send("SELECT i, t, b, f FROM pp")  # (compared as multisets: collations differ)
        first = p.send("SELECT count(*) FROM pp WHERE i = %s AND b = %s", (rows[0][0], rows[0][2]))
        assert sorted(p.rows(everything), key=repr) == sorted(rows, key=repr)
        counted = p.rows(first)[0][0]
    assert idle(conn)
    assert counted == conn.execute("SELECT count(*) FROM pp WHERE i = %s AND b = %s",
                                   (rows[0][0], rows[0][2])).fetchone()[0]


def test_an_error_raises_psycopgs_exception_and_rolls_back(conn):
    with pytest.raises(errors.UniqueViolation):
        with Pipeline(conn) as p:
            conn_cmds = [p.send("BEGIN"),
                         p.send("CREATE UNIQUE INDEX ON pp (i)"),
                         p.send("INSERT INTO pp (i) SELECT * FROM unnest(%b::bigint[])", ([1, 1],)),
                         p.send("COMMIT")]
            p.sync()
    assert conn_cmds[-1].done  # skipped (the pipeline was aborted), not left waiting
    assert idle(conn)
    assert conn.execute("SELECT count(*) FROM pp").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'pp'").fetchone()[0] == 0


def test_a_failed_read_raises_at_the_read_and_the_rest_is_rolled_back(conn):
    with pytest.raises(errors.DivisionByZero):
        with Pipeline(conn) as p:
            p.send("BEGIN")
            p.send("INSERT INTO pp (i) VALUES (%s)", (7,))
            p.rows(p.send("SELECT 1 / (i - 7) FROM pp"))
    assert idle(conn) and conn.execute("SELECT count(*) FROM pp").fetchone()[0] == 0


def test_the_caller_leaving_mid_transaction_rolls_it_back(conn):
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        with Pipeline(conn) as p:
            p.send("BEGIN")
            p.send("INSERT INTO pp (i) VALUES (%s)", (1,))
            raise Stop
    assert idle(conn) and conn.execute("SELECT count(*) FROM pp").fetchone()[0] == 0
    conn.execute("INSERT INTO pp (i) VALUES (2)")  # the connection works on as before


def test_large_statements_are_flushed_while_the_server_answers(conn):
    """About 20 MB of parameters in one pipeline (the connection is non-blocking: libpq cannot
    send it all at once) with answers coming back meanwhile."""
    blob = b"x" * 1000
    n = 20_000
    with Pipeline(conn) as p:
        p.send("BEGIN")
        reads = [p.send("SELECT %s::bigint", (k,)) for k in range(50)]
        p.send("INSERT INTO pp (i, b) SELECT * FROM unnest(%b::bigint[], %b::bytea[])", (list(range(n)), [blob] * n))
        p.send("COMMIT")
        assert [p.rows(r)[0][0] for r in reads] == list(range(50))
        p.sync()
    assert conn.execute("SELECT count(*), sum(length(b)) FROM pp").fetchone() == (n, n * len(blob))


def test_statements_are_prepared_once_per_connection_up_to_a_limit(conn):
    sql = "SELECT %s::bigint + 1"
    for k in range(3):
        with Pipeline(conn) as p:
            assert p.rows(p.send(sql, (k,))) == [(k + 1,)]
    names = _prepared[conn]
    assert list(names) == [b"SELECT $1::bigint + 1"]
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s",
                        (names[b"SELECT $1::bigint + 1"].decode(),)).fetchone()[0] == 1
    with Pipeline(conn) as p:  # past the limit: unnamed statements, same answers
        slots = [p.send(f"SELECT %s::bigint + {k}", (1,)) for k in range(MAX_PREPARED + 5)]
        assert [p.rows(s)[0][0] for s in slots] == [1 + k for k in range(MAX_PREPARED + 5)]
    assert len(_prepared[conn]) == MAX_PREPARED


def test_bad_parameters_are_refused_before_anything_is_sent(conn):
    with Pipeline(conn) as p:
        with pytest.raises(TypeError):
            p.send("SELECT %s", (1.5,))
        with pytest.raises(TypeError):
            p.send("SELECT %s, %s", (1,))
        with pytest.raises(TypeError):
            encode_array([1, "a"])
    assert idle(conn)


def test_a_lost_connection_raises_operational_error_without_hanging(conn):
    """The server ends the session mid-transaction: an OperationalError (transient: the
    server answers 503 and the pool replaces the connection), not a hang."""
    pid = conn.info.backend_pid
    with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True) as other:
        with pytest.raises(psycopg.OperationalError):
            with Pipeline(conn) as p:
                p.send("BEGIN")
                p.rows(p.send("SELECT 1"))
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
                p.send("INSERT INTO pp (i) VALUES (%s)", (1,))
                p.rows(p.send("SELECT count(*) FROM pp"))
    assert conn.pgconn.status == pq.ConnStatus.BAD


def test_statements_deallocated_behind_its_back_are_prepared_again(conn):
    """Someone runs DEALLOCATE ALL (or DISCARD ALL) on the connection: the next statement
    fails with psycopg's error for it, and the one after is prepared again and succeeds."""
    sql = "SELECT %s::bigint * 2"
    with Pipeline(conn) as p:
        assert p.rows(p.send(sql, (2,))) == [(4,)]
    conn.execute("DEALLOCATE ALL")
    with pytest.raises(errors.InvalidSqlStatementName):
        with Pipeline(conn) as p:
            p.rows(p.send(sql, (3,)))
    assert idle(conn)
    with Pipeline(conn) as p:
        assert p.rows(p.send(sql, (5,))) == [(10,)]
