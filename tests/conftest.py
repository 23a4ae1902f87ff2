"""Shared fixtures: every storage test runs on SQLite and on a real PostgreSQL.

PostgreSQL is found through RELEDGER_TEST_PG (a URL) or postgresql://postgres@127.0.0.1:5432/test.
Without a server the PostgreSQL cases skip with the reason, except under CI=true, where a
missing server fails the run (a skipped PostgreSQL test must never pass for a real one).
Each PostgreSQL case gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get(
    "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "default"))

PG_URL = os.environ.get("RELEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_pg_state: dict[str, object] = {}


def pg_available() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    if "reason" not in _pg_state:
        try:
            import psycopg

            from reledger.storage.reader import DatabaseURL

            with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_state["reason"] = None
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            _pg_state["reason"] = f"PostgreSQL not reachable at {PG_URL}: {e}"
    return _pg_state["reason"]  # type: ignore[return-value]


def require_pg() -> None:
    reason = pg_available()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}: PostgreSQL tests must run in CI", pytrace=False)
        pytest.skip(reason)


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    from reledger.storage.reader import DatabaseURL

    with psycopg.connect(DatabaseURL.parse(PG_URL).conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url():
    require_pg()
    schema = "t_" + uuid.uuid4().hex[:12]
    yield _with_schema(PG_URL, schema)
    drop_schema(schema)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty ledger database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        require_pg()
        schema = "t_" + uuid.uuid4().hex[:12]
        yield _with_schema(PG_URL, schema)
        drop_schema(schema)



@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory) -> str:
    """The small demo's ledger (SQLite, made once a module): a source of realistic entries to copy
    onto either backend (projection_helpers.copy_cut). test_replay.py has its own, per backend."""
    from reledger.demo.run import Demo

    tmp = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{tmp / 'ledger.db'}"
    demo = Demo(url, tmp, 5, "small", log=lambda m: None)
    demo.run()
    demo.projections.close()
    demo.store.close()
    return url

# --- behaviour and mechanism ------------------------------------------------------------------
# The tests of what reledger promises (the specification: formats, rules, commands, endpoints,
# durability, trust) are marked `behaviour`; the tests of how it is made fast or structured (the
# append's round trips, the worker pools' scheduling, the follower, the fast verifier's paths,
# the import graph, the benchmark's smoke run) are marked `mechanism`. `pytest -m behaviour`
# reads as the specification; tests/README.md lists both.
MECHANISM = {"test_architecture.py", "test_bench_smoke.py", "test_checkers.py", "test_expect_size.py",
             "test_follow.py", "test_pgpipe.py", "test_verify_fast.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.mechanism if item.path.name in MECHANISM else pytest.mark.behaviour)
