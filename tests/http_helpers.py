"""Helpers for the HTTP tests: a ledger with a cast registered in-process, a real
``reledger serve`` process on a loopback port, and raw signed requests.

Import from tests as ``from http_helpers import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import base64
import json
import uuid

import httpx
import msgpack

from reledger.commands.api import CommandAPI
from reledger.commands.auth import sign_request
from conftest import PG_URL, _with_schema, drop_schema, require_pg
from reledger.ledger.checkpoint import NoteSigner
from reledger.ledger.entry import SignedEntry
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.storage.store import LedgerStore
from reledger.storage.verify import verify_database

T0 = "2024-01-01T00:00:00Z"
ORIGIN = "reledger.test/http"
REPO = Path(__file__).resolve().parents[1]

# party -> roles; the mines are the concurrent writers
CAST: dict[str, list[str]] = {"MINE01": ["MINE"], "MINE02": ["MINE"], "MINE03": ["MINE"], "MINE04": ["MINE"],
                              "SEP01": ["SEPARATION"], "SMELT01": ["SMELTER"], "AUD01": ["AUDITOR"]}
MINES = [p for p, r in CAST.items() if r == ["MINE"]]


@dataclass
class Cast:
    """The keys of everybody registered in the ledger at ``url``."""

    url: str
    regulator: SigningKey
    checkpoint_key: SigningKey
    keys: dict[str, SigningKey] = field(default_factory=dict)
    extra: list[SigningKey] = field(default_factory=list)  # more keys of MINE01 (its terminals)
    genesis_size: int = 0

    @property
    def note_signer(self) -> NoteSigner:
        return NoteSigner(ORIGIN, self.checkpoint_key.private_key)

    def checkpoint(self) -> bytes:
        """Sign a checkpoint of the log as it is now (the operator's job, done in-process)."""
        with LedgerStore(self.url) as store:
            return store.checkpoint(self.note_signer)


def build_cast(url: str) -> Cast:
    """A new ledger at ``url``: the genesis, then every party of CAST with one key; MINE01 has
    three more keys (``extra``). Written through the command API in-process, then a checkpoint."""
    reg = SigningKey.generate("MIIT")
    ck = SigningKey.generate("MIIT", "checkpoint", name=ORIGIN)
    cast = Cast(url, reg, ck)
    with LedgerStore(url) as store:
        api = CommandAPI(store)
        try:
            rs = ChainSigner(reg)
            api.submit(genesis_entries(rs, ck, name="MIIT", origin=ORIGIN, at=T0))
            group = []
            for party, roles in CAST.items():
                key = SigningKey.generate(party)
                cast.keys[party] = key
                group.append(rs.sign("PartyRegistered", {"party": party, "name": f"{party} Co., Ltd.",
                                                         "roles": roles, "province": "Jiangxi", "valid_from": T0}, T0))
                group.append(rs.sign("KeyAuthorized", key_authorized_body(key, T0), T0))
            for i in range(3):
                cast.extra.append(SigningKey.generate("MINE01"))
                group.append(rs.sign("KeyAuthorized", key_authorized_body(cast.extra[-1], T0, reason=f"terminal {i}"),
                                     T0))
            api.submit(group)
            cast.keys["MIIT"] = reg
            store.checkpoint(cast.note_signer)
            cast.genesis_size = store.size()
        finally:
            api.close()
    return cast


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m reledger serve --db URL --port P`` in a subprocess on 127.0.0.1."""

    def __init__(self, url: str, *, startup: float = 90.0, args: tuple[str, ...] = (), nofile: int | None = None):
        """``args``: more ``serve`` options; ``nofile``: the server's open-file limit."""
        self.url = url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop()
        self.errfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"reledger-serve-{self.port}.log"
        self.err = open(self.errfile, "wb")  # noqa: SIM115

        def limit_files() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reledger", "serve", "--db", url, "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=self.log, stderr=self.err, preexec_fn=limit_files if nofile else None)
        deadline = time.monotonic() + startup
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.base + "/v1/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                err = self.stderr()
                self.stop()
                raise RuntimeError(f"server did not answer /v1/health within {startup} s: {err}")
            time.sleep(0.1)

    def stderr(self) -> str:
        try:
            self.err.flush()
            return self.errfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.err.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        self.err.close()
        self.errfile.unlink(missing_ok=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def signed_get(base: str, key: SigningKey, path: str, **kw) -> httpx.Response:
    """A signed GET of ``path`` (path and query exactly as sent)."""
    headers = {**sign_request(key, "GET", path), **kw.pop("headers", {})}
    return httpx.get(base + path, headers=headers, timeout=30.0, **kw)


def assert_problem(resp: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    """``resp`` is an RFC 9457 problem with ``status`` (and ``code``); returns its fields."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].split(";")[0] == "application/problem+json", resp.headers
    p = resp.json()
    for k in ("type", "title", "status", "detail", "code"):
        assert k in p, (k, p)
    assert p["status"] == resp.status_code
    assert isinstance(p["detail"], str) and p["detail"]
    assert p["type"].endswith("/" + p["code"])
    if code is not None:
        assert p["code"] == code, p
    return p


def mineral(lot: str) -> dict:
    """A valid MineralProductProduced body."""
    return {"lot": lot, "ore_type": "ROCK", "wet_kg": "12000", "dry_kg": "10500.5", "treo_pct": "55.2",
            "reo_kg": "5796.276"}


def log_facts(url: str) -> tuple[int, Counter, Counter]:
    """(log size, how often each (chain, command id) occurs, how often each (chain, seq) occurs)."""
    commands: Counter = Counter()
    positions: Counter = Counter()
    with LedgerStore(url) as store:
        size = store.size()
        for rec in store.records(0, size):
            e = SignedEntry.parse(rec.envelope).entry
            commands[(e.chain, e.command_id)] += 1
            positions[(rec.chain, rec.seq)] += 1
    return size, commands, positions


def assert_log_sound(url: str) -> int:
    """The whole ledger verifies and nothing is recorded twice; returns the log size."""
    report = verify_database(url, workers=1)
    assert report.ok, [str(p) for p in report.problems[:5]]
    size, commands, positions = log_facts(url)
    assert report.size == size
    assert sum(commands.values()) == size and max(commands.values()) == 1, commands.most_common(3)
    assert max(positions.values()) == 1
    return size


ENTRIES = "/v1/entries"


class Live:
    """A cast ledger at ``url`` behind a running server, and a keep-alive HTTP client to it."""

    def __init__(self, url: str):
        self.url = url
        self.cast = build_cast(url)
        self.server = Server(url)
        self.base = self.server.base
        self.http = httpx.Client(base_url=self.base, timeout=60.0)  # keep-alive: one connection

    def close(self) -> None:
        self.http.close()
        self.server.stop()

    def key(self, party: str) -> SigningKey:
        return self.cast.keys[party]

    def post(self, body, content_type: str | None = "application/msgpack", **kw) -> httpx.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        headers.update(kw.pop("headers", {}))
        return self.http.post(ENTRIES, content=body, headers=headers, **kw)

    def post_envelopes(self, envelopes: list[bytes], as_json: bool = False) -> httpx.Response:
        if as_json:
            return self.post(json.dumps({"entries": [base64.b64encode(e).decode() for e in envelopes]}).encode(),
                             "application/json")
        return self.post(msgpack.packb(envelopes, use_bin_type=True))

    def get(self, party: str, path: str, **kw) -> httpx.Response:
        headers = {**sign_request(self.key(party), "GET", path), **kw.pop("headers", {})}
        return self.http.get(path, headers=headers, **kw)

    def head(self, chain: str) -> tuple[int, bytes]:
        r = self.get("MIIT", f"/v1/chains/{chain}/head")
        assert r.status_code == 200, r.text
        return r.json()["seq"], bytes.fromhex(r.json()["entry_hash"])

    def signer(self, party: str, key: SigningKey | None = None) -> ChainSigner:
        seq, h = self.head(party)
        return ChainSigner(key or self.key(party), seq=seq, head=h)

    def size(self) -> int:
        return self.http.get("/v1/health").json()["size"]


def open_live(backend: str, tmp_path_factory):
    """Generator for a module fixture: a cast ledger on ``backend`` behind a running server."""
    schema = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('http') / 'ledger.db'}"
    else:
        require_pg()
        schema = "t_" + uuid.uuid4().hex[:12]
        url = _with_schema(PG_URL, schema)
    lv = Live(url)
    try:
        yield lv
    finally:
        lv.close()
        if schema:
            drop_schema(schema)
