"""Throw-away databases for a benchmark run: SQLite files in a temporary directory, or
PostgreSQL schemas ``bench_<run id>_<tag>`` that are dropped when the run ends."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from eventsourcing.application import Application

from reledger.storage.reader import DatabaseURL
from reledger.storage.store import application_env

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


class PlainApplication(Application):
    """Plain eventsourcing, for the baseline P: the same bytes saved by the library's own
    recorder, without signatures, chains or the Merkle log."""

    name = "BenchPlain"


def pg_reachable(url: str) -> str | None:
    """None when PostgreSQL at ``url`` answers, else why not."""
    try:
        with psycopg.connect(DatabaseURL.parse(url).conninfo(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - any failure means unreachable
        return f"PostgreSQL not reachable at {url}: {e}".strip()


class Backend:
    name = ""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]

    def ledger_url(self, tag: str) -> str:
        raise NotImplementedError

    def plain_env(self, tag: str) -> dict[str, str]:
        raise NotImplementedError

    def plain_app(self, tag: str) -> PlainApplication:
        return PlainApplication(env=self.plain_env(tag))

    def drop(self, tag: str) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class SQLiteBackend(Backend):
    """Files in a fresh temporary directory (under ``parent`` when given), removed afterwards."""

    name = "sqlite"

    def __init__(self, parent: str | None = None) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix=f"reledger-bench-{self.run_id}-", dir=parent)

    def path(self, tag: str) -> str:
        return os.path.join(self.dir, f"{tag}.db")

    def ledger_url(self, tag: str) -> str:
        return f"sqlite:///{self.path(tag)}"

    def plain_env(self, tag: str) -> dict[str, str]:
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": self.path(tag),
                "SQLITE_LOCK_TIMEOUT": "30", "ORIGINATOR_ID_TYPE": "text", "CREATE_TABLE": "y"}

    def drop(self, tag: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.remove(self.path(tag) + suffix)
            except FileNotFoundError:
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": "sqlite", "where": self.dir, "sqlite_version": sqlite3.sqlite_version}


class PostgresBackend(Backend):
    """Schemas ``bench_<run id>_<tag>`` in the database at ``url``, dropped afterwards."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.db = DatabaseURL.parse(self.base)
        self.schemas: list[str] = []

    def schema(self, tag: str) -> str:
        return f"bench_{self.run_id}_{tag}"

    def _create_schema(self, tag: str) -> str:
        schema = self.schema(tag)
        with psycopg.connect(self.db.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        if schema not in self.schemas:
            self.schemas.append(schema)
        return schema

    def ledger_url(self, tag: str) -> str:
        self._create_schema(tag)  # LedgerStore would create it too; this records it for dropping
        return f"{self.base}?schema={self.schema(tag)}"

    def plain_env(self, tag: str) -> dict[str, str]:
        self._create_schema(tag)
        env = application_env(f"{self.base}?schema={self.schema(tag)}")
        env.pop("APPLICATION_RECORDER_TOPIC", None)
        return env

    def drop(self, tag: str) -> None:
        schema = self.schema(tag)
        with psycopg.connect(self.db.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if schema in self.schemas:
            self.schemas.remove(schema)

    def cleanup(self) -> None:
        for schema in list(self.schemas):
            try:
                self.drop(schema[len(f"bench_{self.run_id}_"):])
            except Exception:  # noqa: BLE001 - best effort; report nothing more useful
                pass

    def describe(self) -> dict[str, Any]:
        version = None
        try:
            with psycopg.connect(self.db.conninfo(), connect_timeout=3) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
        except Exception:  # noqa: BLE001
            pass
        return {"backend": "postgres", "where": f"{self.db.host}:{self.db.port}/{self.db.dbname}",
                "schemas": f"bench_{self.run_id}_*", "server_version": version}
