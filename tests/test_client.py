"""The enterprise client (commands/client.py) against a real server on loopback, on SQLite and
PostgreSQL: sync/append/append_many, the exceptions (Refused, Conflict, Unauthorized), safe
retries when the connection drops after the server committed (one entry, the original receipt
with duplicate=True), and inclusion checked against the operator's signed checkpoint while
trusting nothing the server says.
"""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

from reledger.commands.client import ClientError, Conflict, LedgerClient, Refused, Unauthorized
from http_helpers import ORIGIN, T0, assert_log_sound, log_facts, mineral, open_live
from reledger.ledger.checkpoint import NoteError, NoteSigner
from reledger.ledger.keys import SigningKey
from reledger.ledger.merkle import ProofError


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(request, tmp_path_factory):
    yield from open_live(request.param, tmp_path_factory)


def lot() -> str:
    return "C-" + uuid.uuid4().hex[:12].upper()


class Faulty(httpx.BaseTransport):
    """A real transport with faults injected into the requests that ``match``:
    ``plan`` is a list of actions used one per matching request, then requests pass:

    - ``"drop_after"``: send the request, let the server answer, then raise ReadError (the
      connection broke after the server committed: the client never sees the answer)
    - ``"drop_before"``: raise ConnectError without sending
    - ``"503"``: answer 503 without sending; ``"503 retry-after"``: the same with ``Retry-After: 1``
    - a callable: send, and return ``action(response, request)`` instead of the response
    """

    def __init__(self, plan: list, match=lambda request: True):
        self.inner = httpx.HTTPTransport()
        self.plan, self.match = list(plan), match
        self.sent: list[httpx.Request] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            action = self.plan.pop(0) if self.plan and self.match(request) else None
        if action == "drop_before":
            raise httpx.ConnectError("connection refused (injected)", request=request)
        if action == "503":
            return httpx.Response(503, text="busy", request=request)
        if action == "503 retry-after":
            return httpx.Response(503, text="busy", headers={"Retry-After": "1"}, request=request)
        self.sent.append(request)
        resp = self.inner.handle_request(request)
        resp.read()
        if action == "drop_after":
            resp.close()
            raise httpx.ReadError("connection reset after the request was sent (injected)", request=request)
        if callable(action):
            return action(resp, request)
        return resp

    def close(self) -> None:
        self.inner.close()


def is_post(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == "/v1/entries"


def client(live, party: str, **kw) -> LedgerClient:
    return LedgerClient(live.base, live.key(party), **kw)


# --- appending ---------------------------------------------------------------------------------

def test_sync_append_and_append_many(live):
    with client(live, "MINE02") as c:
        signer = c.sync()
        start = signer.seq
        r = c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert r["chain"] == "MINE02" and r["seq"] == start + 1 and r["duplicate"] is False
        assert isinstance(r["findings"], list)
        res = c.append_many([("MineralProductProduced", mineral(lot()), T0),
                             ("MineralProductProduced", mineral(lot())),  # occurred_at: now
                             ("MineralProductProduced", mineral(lot()), T0, str(uuid.uuid4()))])
        assert [x["seq"] for x in res.receipts] == [start + 2, start + 3, start + 4]
        assert [x["index"] for x in res.receipts] == list(range(res.receipts[0]["index"],
                                                                res.receipts[0]["index"] + 3))
        assert isinstance(res.findings, list)
        head = c.head("MINE02")
        assert head["seq"] == start + 4 and head["entry_hash"] == res.receipts[-1]["entry_hash"]
        assert c.signer.seq == start + 4 and c.signer.head.hex() == head["entry_hash"]
        e = c.entry("MINE02", start + 1)
        assert e["entry_hash"] == r["entry_hash"] and e["type"] == "MineralProductProduced"
    # a second client of the same party picks up where the chain is
    with client(live, "MINE02") as c2:
        assert c2.append("MineralProductProduced", mineral(lot()), occurred_at=T0)["seq"] == start + 5


def test_refused_conflict_unauthorized(live):
    with client(live, "MINE03") as c:
        c.sync()
        seq = c.signer.seq
        bad = mineral(lot())
        del bad["reo_kg"]
        with pytest.raises(Refused) as info:
            c.append("MineralProductProduced", bad, occurred_at=T0)
        e = info.value
        assert type(e) is Refused and e.status == 400 and e.code == "missing_field"
        assert e.field == "body.reo_kg" and "reo_kg" in e.detail
        assert e.problem["status"] == 400 and e.problem["type"].endswith("/missing_field")
        assert e.envelopes and len(e.envelopes) == 1
        # nothing written, the cursor is back: the next append takes the same seq
        assert c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)["seq"] == seq + 1

        with pytest.raises(Unauthorized) as info:  # 403: the role may not
            c.append("QuotaReduced", {"year": 2025, "holder": "SEP01", "category": "SEPARATION", "t_reo": "5",
                                      "penalty": {"chain": "MIIT", "seq": 1, "hash": b"\x00" * 32}}, T0)
        assert info.value.status == 403 and info.value.code == "forbidden"

        # another terminal of the same party moves the chain: this one is stale -> Conflict
        c.sync()
        with client(live, "MINE03") as other:
            other.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        with pytest.raises(Conflict) as info:
            c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert info.value.status == 409 and info.value.code == "conflict"
        assert c.signer is None  # resyncs on the next append, which succeeds
        assert c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)["seq"] == seq + 3

        with pytest.raises(Unauthorized) as info:  # reading another party's chain
            c.head("MINE02")
        assert info.value.status == 403 and info.value.code == "forbidden"
        with pytest.raises(Unauthorized) as info:
            c.entry("MINE02", 1)
        assert info.value.status == 403

    # a key the ledger never authorized: 401 on every read, and appends refused (403)
    stranger = SigningKey.generate("MINE03")
    with LedgerClient(live.base, stranger) as s:
        with pytest.raises(Unauthorized) as info:
            s.sync()
        assert info.value.status == 401 and info.value.code == "unauthorized"
        s.signer = client(live, "MINE03").sync()  # knows the head, still not a valid key
        s.signer.key = stranger
        with pytest.raises(Unauthorized) as info:
            s.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert info.value.status == 403 and info.value.code == "unknown_key"
    # a chain id that must be percent-encoded on the wire is refused for what it is (400),
    # not for a signature mismatch (the client signs the path as sent, the server checks that)
    with client(live, "AUD01") as a:
        for chain in ("NOT A CHAIN", "中文", "a/b"):
            with pytest.raises(Refused) as info:
                a.head(chain)
            assert info.value.status in (400, 404), (chain, info.value)
            assert info.value.code in ("bad_value", "not_found"), (chain, info.value)


# --- retries ---------------------------------------------------------------------------------

def test_retry_after_the_connection_dropped_once_committed(live):
    """The server commits, the connection breaks before the answer: the client sends the same
    bytes again and gets the original receipt (duplicate=True); one entry in the log."""
    before = log_facts(live.url)[0]
    t = Faulty(["drop_after"], match=is_post)
    with LedgerClient(live.base, live.key("MINE04"), transport=t) as c:
        r = c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert r["duplicate"] is True
        posts = [q for q in t.sent if is_post(q)]
        assert len(posts) == 2 and posts[0].content == posts[1].content  # the same bytes, twice
        assert log_facts(live.url)[0] == before + 1
        rec = c.entry("MINE04", r["seq"])
        assert rec["index"] == r["index"] and rec["entry_hash"] == r["entry_hash"]
        # a group the same way: every receipt a duplicate, nothing twice
        t.plan = ["drop_after"]
        res = c.append_many([("MineralProductProduced", mineral(lot()), T0) for _ in range(3)])
        assert [x["duplicate"] for x in res.receipts] == [True] * 3
        # refused connections and 503 answers before anything was sent: retried, written once
        t.plan = ["drop_before", "503", "drop_before"]
        r2 = c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert r2["duplicate"] is False and r2["seq"] == res.receipts[-1]["seq"] + 1
    assert assert_log_sound(live.url) == before + 5
    _, commands, _ = log_facts(live.url)
    assert max(commands.values()) == 1


def test_retry_waits_as_long_as_the_server_asks(live, monkeypatch):
    """A 503 with Retry-After (the server's admission, docs/HTTP.md) is retried after that many
    seconds, not after the short backoff; without it, after the backoff; the entry once."""
    import reledger.commands.client as client_module

    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    before = log_facts(live.url)[0]
    t = Faulty(["503 retry-after", "503"], match=is_post)
    with LedgerClient(live.base, live.key("MINE04"), transport=t) as c:
        r = c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
        assert r["duplicate"] is False
    assert slept == [1.0, 0.1]  # Retry-After: 1 s; then the backoff of the second attempt
    assert log_facts(live.url)[0] == before + 1


def test_signed_reads_are_signed_anew_on_retry(live):
    """A read whose answer was lost is sent again with a new nonce (not refused as a replay)."""
    t = Faulty(["drop_after", "drop_after"], match=lambda q: q.method == "GET")
    with LedgerClient(live.base, live.key("MINE02"), transport=t) as c:
        assert c.head("MINE02")["chain"] == "MINE02"
        nonces = [q.headers["X-Reledger-Nonce"] for q in t.sent]
        assert len(nonces) == 3 and len(set(nonces)) == 3


def test_giving_up_leaves_a_safe_retry(live):
    """When every attempt fails the client raises ClientError carrying the signed envelopes;
    resubmitting them is safe whether or not the server had committed."""
    with client(live, "SMELT01") as probe:
        seq0 = probe.sync().seq
    t = Faulty(["drop_after"] * 3, match=is_post)  # committed, but no answer ever arrives
    with LedgerClient(live.base, live.key("SMELT01"), transport=t, retries=2) as c:
        with pytest.raises(ClientError) as info:
            c.append("StockCounted", {"product": "Nd_METAL", "counted_kg": "1"}, occurred_at=T0)
        assert not isinstance(info.value, Refused)
        assert len(info.value.envelopes) == 1
        assert c.signer is None  # outcome unknown: resync next time
        res = c.submit(info.value.envelopes)
        assert res.receipts[0]["duplicate"] is True and res.receipts[0]["seq"] == seq0 + 1
        assert c.append("StockCounted", {"product": "Nd_METAL", "counted_kg": "2"}, occurred_at=T0)["seq"] == seq0 + 2
    t = Faulty(["drop_before"] * 3, match=is_post)  # never sent at all
    with LedgerClient(live.base, live.key("SMELT01"), transport=t, retries=2) as c:
        with pytest.raises(ClientError) as info:
            c.append("StockCounted", {"product": "Nd_METAL", "counted_kg": "3"}, occurred_at=T0)
        res = c.submit(info.value.envelopes)
        assert res.receipts[0]["duplicate"] is False and res.receipts[0]["seq"] == seq0 + 3


# --- inclusion -------------------------------------------------------------------------------------

def test_verify_inclusion_against_the_checkpoint(live):
    verifier = live.cast.note_signer.verifier()
    with client(live, "SEP01") as c:
        c.append("StockCounted", {"product": "Nd2O3", "counted_kg": "4"}, occurred_at=T0)
        r = c.append("StockCounted", {"product": "Nd2O3", "counted_kg": "5"}, occurred_at=T0)
        with pytest.raises(Refused) as info:  # not under any checkpoint yet
            c.verify_inclusion("SEP01", r["seq"], verifier)
        assert info.value.status == 400
        live.cast.checkpoint()
        cp = c.verify_inclusion("SEP01", r["seq"], verifier)
        assert cp.size > r["index"] and cp.origin == ORIGIN
        # a checkpoint signed by somebody else is not believed
        with pytest.raises(NoteError):
            c.verify_inclusion("SEP01", r["seq"], NoteSigner(cp.origin, SigningKey.generate(
                "MIIT", "checkpoint").private_key).verifier())

    def tamper(path_part: str, change):
        def action(resp: httpx.Response, request: httpx.Request) -> httpx.Response:
            doc = json.loads(resp.content)
            change(doc)
            return httpx.Response(resp.status_code, json=doc, request=request)
        return Faulty([action], match=lambda q: path_part in str(q.url))

    def flip_proof(doc):
        doc["proof"][0] = ("0" if doc["proof"][0][0] != "0" else "1") + doc["proof"][0][1:]

    def other_time(doc):
        doc["recorded_at"] = "2030-01-01T00:00:00Z"

    def other_index(doc):
        doc["index"] = doc["index"] - 1

    for change in (flip_proof, other_time, other_index):  # a lying server is caught
        with LedgerClient(live.base, live.key("SEP01"), transport=tamper("/v1/proofs/inclusion", change)) as c:
            with pytest.raises(ProofError):
                c.verify_inclusion("SEP01", r["seq"], verifier)

    def other_entry(doc):  # the server answers another (real) entry for the one asked about
        with client(live, "SEP01") as honest:
            doc.update(honest.entry("SEP01", 1))

    with LedgerClient(live.base, live.key("SEP01"), transport=tamper("/entries/", other_entry)) as c:
        with pytest.raises(ClientError):
            c.verify_inclusion("SEP01", r["seq"], verifier)


def test_a_receipt_is_upgraded_to_a_tlog_proof(live, tmp_path):
    """wait_for_proof waits for a checkpoint that covers the entry, then answers its C2SP
    tlog-proof, which verifies offline (here and with `reledger verify-proof`)."""
    import subprocess
    import sys

    from reledger.ledger.tlogproof import TlogProof, verify

    verifier = live.cast.note_signer.verifier()
    with client(live, "SEP01") as c:
        r = c.append("StockCounted", {"product": "Nd2O3", "counted_kg": "6"}, occurred_at=T0)
        with pytest.raises(ClientError, match="no published checkpoint covers"):
            c.wait_for_proof("SEP01", r["seq"], timeout=0.5, poll=0.1, verifier=verifier)
        threading.Timer(0.5, live.cast.checkpoint).start()  # the operator checkpoints meanwhile
        proof = c.wait_for_proof("SEP01", r["seq"], timeout=30, poll=0.2, verifier=verifier)
    assert proof.startswith(b"c2sp.org/tlog-proof@v1\nextra ")
    v = verify(proof, [verifier])
    assert (v.entry.entry.chain, v.entry.entry.seq, v.index) == ("SEP01", r["seq"], r["index"])
    (tmp_path / "p").write_bytes(proof)
    cli = [sys.executable, "-m", "reledger", "verify-proof", str(tmp_path / "p"), "--checkpoint-key", verifier.vkey()]
    ok = subprocess.run(cli, capture_output=True, text=True)
    assert ok.returncode == 0 and "verify-proof OK" in ok.stdout, ok.stdout + ok.stderr
    p = TlogProof.parse(proof)
    other = TlogProof(p.envelope, p.recorded_at, p.index + 1, p.proof, p.note).text()  # another index
    (tmp_path / "bad").write_bytes(other)
    bad = subprocess.run(cli[:4] + [str(tmp_path / "bad")] + cli[5:], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "Traceback" not in bad.stderr, bad.stdout + bad.stderr
