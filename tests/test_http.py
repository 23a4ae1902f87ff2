"""The HTTP surface against a real ``reledger serve`` process on loopback, on SQLite and PostgreSQL:
concurrent signed appends (own chains, and racing for the same chain: one winner per seq, the
losers 409 and retry after resync), idempotent retries, hostile bodies and parameters (always
4xx problem+json, never 5xx), the signed-request scheme (replay, window, wrong key, anonymous),
read authorization (own chain, both sides of a transfer, regulators and auditors), proofs and
checkpoints, OpenAPI; every refusal's message equals the in-process API's for the same input.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import msgpack
import pytest

from reledger.commands.api import CommandAPI, CommandError
from reledger.commands.auth import AuthError, RequestAuthenticator, sign_request
from reledger.commands.client import Conflict, LedgerClient
from http_helpers import (ENTRIES, MINES, T0, assert_log_sound, assert_problem, build_cast, log_facts, mineral,
                          open_live)
from reledger.ledger import merkle
from reledger.ledger.checkpoint import verify_checkpoint
from reledger.ledger.entry import ENTRY_TAG, SignedEntry, leaf_bytes, make_entry
from reledger.ledger.genesis import ChainSigner, key_authorized_body
from reledger.ledger.keys import SigningKey
from reledger.storage.store import LedgerStore


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(request, tmp_path_factory):
    yield from open_live(request.param, tmp_path_factory)


@pytest.fixture
def api(live):
    """The in-process command API over the same database (for comparing refusals)."""
    store = LedgerStore(live.url)
    a = CommandAPI(store)
    yield a
    a.close()
    store.close()


def lot() -> str:
    return "L-" + uuid.uuid4().hex[:12].upper()


def raw_envelope(signer: ChainSigner, type: str, body: dict, occurred_at: str = T0) -> bytes:
    """A signed envelope built by hand, past make_entry's checks (a careless encoder's)."""
    content = {"body": body, "chain": signer.chain, "command_id": str(uuid.uuid4()), "key_id": signer.key.key_id,
               "occurred_at": occurred_at, "prev": signer.head, "seq": signer.seq + 1, "type": type, "v": 1}
    raw = msgpack.packb(dict(sorted(content.items())), use_bin_type=True)
    return msgpack.packb({"entry": raw, "sig": signer.key.sign(ENTRY_TAG, raw)}, use_bin_type=True)


def api_error(api: CommandAPI, envelopes) -> CommandError:
    with pytest.raises(CommandError) as info:
        api.check(envelopes)
    return info.value


def assert_same_refusal(resp: httpx.Response, err: CommandError) -> dict:
    """The HTTP problem says what the Python API says: status, code, message, field, position."""
    p = assert_problem(resp, err.status, err.code)
    assert p["detail"] == str(err) == err.message
    assert p.get("field") == err.field
    assert p.get("position") == err.position
    return p


# --- the server, its description -------------------------------------------------------------

def test_health_and_openapi(live):
    r = httpx.get(live.base + "/v1/health")
    assert r.status_code == 200 and r.json() == {"ok": True, "size": live.cast.genesis_size, "queued_entries": 0}
    r = httpx.get(live.base + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = json.loads(r.content)
    assert doc["openapi"].startswith("3.")
    assert {"/v1/entries", "/v1/chains/{chain}/head", "/v1/chains/{chain}/entries/{seq}", "/v1/checkpoint",
            "/v1/proofs/inclusion", "/v1/proofs/consistency", "/v1/quota", "/v1/stock", "/v1/findings",
            "/v1/flow", "/v1/health"} <= set(doc["paths"])
    assert "post" in doc["paths"]["/v1/entries"]
    for code in ("400", "403", "409", "413", "415", "503"):
        assert code in doc["paths"]["/v1/entries"]["post"]["responses"]


# --- concurrent appends ----------------------------------------------------------------------

def test_concurrent_clients_on_their_own_chains(live):
    """Several enterprises at once, each its own client and key: all accepted, in order per chain,
    written once; the ledger verifies afterwards."""
    before = live.size()
    per, errors, receipts = 8, [], {}

    def work(party: str) -> None:
        try:
            with LedgerClient(live.base, live.key(party)) as c:
                got = []
                for i in range(per):
                    if i % 4 == 3:  # some as a group of two
                        got += c.append_many([("MineralProductProduced", mineral(lot()), T0),
                                              ("MineralProductProduced", mineral(lot()), T0)]).receipts
                    else:
                        got.append(c.append("MineralProductProduced", mineral(lot()), occurred_at=T0))
                receipts[party] = got
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append((party, e))

    threads = [threading.Thread(target=work, args=(p,)) for p in MINES[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = 0
    for party, got in receipts.items():
        assert [r["seq"] for r in got] == list(range(got[0]["seq"], got[0]["seq"] + len(got)))
        assert not any(r["duplicate"] for r in got)
        assert live.head(party)[0] == got[-1]["seq"]
        total += len(got)
    assert total == len(MINES[1:]) * (per + per // 4)
    indexes = [r["index"] for got in receipts.values() for r in got]
    assert len(set(indexes)) == total and live.size() == before + total
    assert sorted(indexes) == list(range(before, before + total))  # gap-free
    assert assert_log_sound(live.url) == before + total


def test_clients_racing_for_the_same_chain(live):
    """Four terminals of one party sign the same next seq at once: exactly one wins each seq,
    the others get 409 ``conflict`` and nothing of theirs is written; then a free-for-all where
    losers resync and retry until each has its entries."""
    keys = [live.key("MINE01"), *live.cast.extra]  # four keys of MINE01
    clients = [LedgerClient(live.base, k) for k in keys]
    rounds, winners, losers, errors = 5, [], [], []
    barrier = threading.Barrier(len(clients))
    lock = threading.Lock()
    before = live.size()

    def racer(i: int, c: LedgerClient) -> None:
        try:
            for _ in range(rounds):
                c.sync()
                barrier.wait(timeout=60)
                try:
                    r = c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
                    with lock:
                        winners.append((i, r))
                except Conflict as e:
                    with lock:
                        losers.append((i, e))
                barrier.wait(timeout=60)  # everybody has an answer before the next round
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=racer, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    seqs = sorted(r["seq"] for _, r in winners)
    assert seqs == list(range(seqs[0], seqs[0] + rounds)), seqs  # one winner per seq
    assert len(losers) == rounds * (len(clients) - 1)
    for _, e in losers:
        assert e.status == 409 and e.code == "conflict" and e.problem["status"] == 409
        assert e.problem["field"] in ("seq", "prev")
    assert live.size() == before + rounds

    # free-for-all: each wants 3 entries; on 409 it resyncs (append does) and tries again
    want, done, conflicts = 3, [0] * len(clients), [0]

    def greedy(i: int, c: LedgerClient) -> None:
        try:
            while done[i] < want:
                try:
                    c.append("MineralProductProduced", mineral(lot()), occurred_at=T0)
                    done[i] += 1
                except Conflict as e:
                    assert e.code == "conflict"
                    with lock:
                        conflicts[0] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=greedy, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for c in clients:
        c.close()
    assert not errors, errors
    assert done == [want] * len(clients)
    size = assert_log_sound(live.url)
    assert size == before + rounds + want * len(clients)
    seq, _ = live.head("MINE01")
    _, _, positions = log_facts(live.url)
    assert [s for (ch, s) in sorted(positions) if ch == "MINE01"] == list(range(1, seq + 1))


# --- idempotency ---------------------------------------------------------------------------------

def test_retried_submission_returns_the_original_receipt(live, api):
    s = live.signer("MINE02")
    e = s.sign("MineralProductProduced", mineral(lot()), T0)
    before = live.size()
    first = live.post_envelopes([e.envelope])
    assert first.status_code == 201, first.text
    r1 = first.json()["receipts"][0]
    assert r1["duplicate"] is False and r1["seq"] == e.entry.seq
    for as_json in (False, True):  # the same bytes again, in either body format
        again = live.post_envelopes([e.envelope], as_json=as_json)
        assert again.status_code == 200, again.text
        r2 = again.json()["receipts"][0]
        assert r2["duplicate"] is True
        assert {k: r2[k] for k in ("index", "chain", "seq", "entry_hash", "recorded_at")} == \
               {k: r1[k] for k in ("index", "chain", "seq", "entry_hash", "recorded_at")}
    # the same command id with other bytes: refused, as the API refuses it
    other = make_entry(live.key("MINE02"), seq=e.entry.seq + 1, prev=e.hash, type="MineralProductProduced",
                       occurred_at=T0, body=mineral(lot()), command_id=e.entry.command_id)
    err = api_error(api, [other.envelope])
    assert err.code == "command_conflict"
    assert_same_refusal(live.post_envelopes([other.envelope]), err)
    # a group that repeats an accepted entry and adds a new one: the old receipt and one new entry
    nxt = s.sign("MineralProductProduced", mineral(lot()), T0)
    r = live.post_envelopes([e.envelope, nxt.envelope])
    assert r.status_code == 201, r.text
    assert [x["duplicate"] for x in r.json()["receipts"]] == [True, False]
    assert live.size() == before + 2


def test_the_same_submission_sent_at_once_by_many(live):
    """The same signed bytes posted by eight connections at the same moment (likely one group
    commit): one entry, one 201 with duplicate=False, every other answer the same receipt with
    duplicate=True."""
    e = live.signer("MINE02").sign("MineralProductProduced", mineral(lot()), T0)
    body = msgpack.packb([e.envelope], use_bin_type=True)
    before = live.size()
    barrier, answers = threading.Barrier(8), []

    def send() -> None:
        with httpx.Client(base_url=live.base, timeout=60.0) as c:
            c.get("/v1/health")  # connected before the barrier
            barrier.wait(timeout=30)
            answers.append(c.post(ENTRIES, content=body, headers={"Content-Type": "application/msgpack"}))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 8
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    receipts = [a.json()["receipts"][0] for a in answers]
    assert sum(not r["duplicate"] for r in receipts) == 1
    assert len({(r["index"], r["entry_hash"], r["recorded_at"]) for r in receipts}) == 1
    assert live.size() == before + 1


# --- hostile bodies --------------------------------------------------------------------------------

def _json(doc) -> bytes:
    return json.dumps(doc).encode()


GARBAGE = [
    # (name, content type, body, status, code)
    ("no content type", None, b"\x91\xc4\x01x", 415, "unsupported_media_type"),
    ("text/plain", "text/plain", b"hello", 415, "unsupported_media_type"),
    ("form", "application/x-www-form-urlencoded", b"entries=1", 415, "unsupported_media_type"),
    ("msgpack look-alike", "application/x-msgpack", b"\x91\xc4\x01x", 415, "unsupported_media_type"),
    ("empty msgpack", "application/msgpack", b"", 400, "malformed"),
    ("reserved byte", "application/msgpack", b"\xc1", 400, "malformed"),
    ("truncated", "application/msgpack", b"\x92\xc4\x05ab", 400, "malformed"),
    ("trailing bytes", "application/msgpack", b"\x90\x90", 400, "malformed"),
    ("not canonical", "application/msgpack", b"\xdc\x00\x00", 400, "malformed"),
    ("a map", "application/msgpack", b"\x81\xa1a\x01", 400, "malformed"),
    ("array of ints", "application/msgpack", b"\x93\x01\x02\x03", 400, "malformed"),
    ("array of text", "application/msgpack", b"\x91\xa3abc", 400, "malformed"),
    ("empty array", "application/msgpack", b"\x90", 400, "malformed"),
    ("float", "application/msgpack", b"\xcb" + b"\x00" * 8, 400, "malformed"),
    ("ext type", "application/msgpack", b"\xd4\x01\x00", 400, "malformed"),
    ("deep nesting", "application/msgpack", b"\x91" * 100_000 + b"\xc0", 400, "malformed"),
    ("bin of garbage", "application/msgpack", b"\x91\xc4\x03abc", 400, "malformed"),
    ("one bin of garbage", "application/msgpack", b"\xc4\x03abc", 400, "malformed"),
    ("envelope of a map", "application/msgpack", msgpack.packb([msgpack.packb({"a": 1})], use_bin_type=True),
     400, "malformed"),
    ("not json", "application/json", b"{entries:", 400, "malformed"),
    ("json empty", "application/json", b"", 400, "malformed"),
    ("json list", "application/json", b"[]", 400, "malformed"),
    ("json no entries", "application/json", b"{}", 400, "malformed"),
    ("json entries text", "application/json", _json({"entries": "AAAA"}), 400, "malformed"),
    ("json entries ints", "application/json", _json({"entries": [1, 2]}), 400, "malformed"),
    ("json entries null", "application/json", _json({"entries": None}), 400, "malformed"),
    ("json entries map", "application/json", _json({"entries": {"a": "AAAA"}}), 400, "malformed"),
    ("json bad base64", "application/json", _json({"entries": ["!!!"]}), 400, "malformed"),
    ("json empty entries", "application/json", _json({"entries": []}), 400, "malformed"),
    ("json garbage envelope", "application/json", _json({"entries": ["AAAA"]}), 400, "malformed"),
    ("json NaN", "application/json", b'{"entries": NaN}', 400, "malformed"),
    ("json bad utf-8", "application/json", b'{"entries": ["\xff\xfe"]}', 400, "malformed"),
    ("json huge number", "application/json", b'{"entries": [' + b"9" * 5000 + b"]}", 400, "malformed"),
    ("json deep nesting", "application/json", b"[" * 100_000 + b"]" * 100_000, 400, "malformed"),
    ("json deep in entries", "application/json", b'{"entries":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     400, "malformed"),
    ("json charset", "application/json; charset=utf-8", b"{}", 400, "malformed"),
]


@pytest.mark.parametrize("name,ctype,body,status,code", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_bodies(live, name, ctype, body, status, code):
    before = live.size()
    assert_problem(live.post(body, ctype), status, code)
    assert live.size() == before


def test_oversized_bodies(live):
    big = b"\x00" * (4 * 1024 * 1024 + 1)
    assert_problem(live.post(big), 413, "too_large")  # with Content-Length

    def chunks():  # chunked, no Content-Length: the server stops reading past the limit
        yield b"\xc6" + (5 * 1024 * 1024).to_bytes(4, "big")  # one bin (of the right shape until then)
        for _ in range(5):
            yield b"\x00" * (1024 * 1024)

    r = live.post(chunks())
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert_problem(r, 413, "too_large")
    # a declared length above the limit is refused before the body is read (raw socket: no
    # client library sends a body shorter than its Content-Length)
    status, headers, body = raw_http(live.server.port, b"POST /v1/entries HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/msgpack\r\nContent-Length: 67108864\r\n"
                                     b"\r\n\x90")
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "too_large"
    # exactly the limit: read, and refused for what it is (not for its size)
    assert_problem(live.post(b"\xc6" + (4 * 1024 * 1024 - 5).to_bytes(4, "big") + b"\x00" * (4 * 1024 * 1024 - 5)),
                   400, "malformed")
    # too many entries in one request
    many = msgpack.packb([b"x"] * 5001, use_bin_type=True)
    assert_problem(live.post(many), 413, "too_large")
    assert httpx.get(live.base + "/v1/health").status_code == 200


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response (status, lower-case headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def test_methods_and_unknown_paths(live):
    r = httpx.get(live.base + ENTRIES)
    p = assert_problem(r, 405, "method_not_allowed")
    assert "POST" in r.headers.get("allow", "")
    assert p["instance"] == ENTRIES
    assert_problem(httpx.delete(live.base + "/v1/checkpoint"), 405)
    assert_problem(httpx.get(live.base + "/v2/anything"), 404, "not_found")


# --- refusals: the same as the Python API -------------------------------------------------------------

def test_refusals_equal_the_python_api(live, api):
    """For each refused submission the problem over HTTP (msgpack and JSON bodies) carries the
    status, code, message, field and position that CommandAPI.check raises in-process."""
    m3 = live.signer("MINE03")
    assert live.post_envelopes([m3.sign("MineralProductProduced", mineral(lot()), T0).envelope]).status_code == 201
    ok = m3.peek("MineralProductProduced", mineral(lot()), T0)
    e = ok.entry
    other_key = live.key("MINE04")
    stranger = SigningKey.generate("NOBODY01")
    bad_sig = bytearray(ok.envelope)
    bad_sig[-3] ^= 0x01
    body = mineral(lot())
    del body["reo_kg"]
    cases = {
        "bad signature": [bytes(bad_sig)],
        "seq gap": [make_entry(m3.key, seq=e.seq + 1, prev=m3.head, type=e.type, occurred_at=T0,
                               body=mineral(lot())).envelope],
        "stale prev": [make_entry(m3.key, seq=e.seq, prev=bytes(32), type=e.type, occurred_at=T0,
                                  body=mineral(lot())).envelope],
        "unknown type": [m3.peek("GoldMined", {"kg": "1"}, T0).envelope],
        "missing field": [m3.peek("MineralProductProduced", body, T0).envelope],
        "negative quantity": [m3.peek("MineralProductProduced", {**mineral(lot()), "reo_kg": "-1"}, T0).envelope],
        "bad time": [raw_envelope(m3, "MineralProductProduced", mineral(lot()), "2024-13-01T00:00:00Z")],
        "float": [raw_envelope(m3, "MineralProductProduced", {**mineral(lot()), "reo_kg": 5796.276})],
        "decimal not normal": [m3.peek("MineralProductProduced", {**mineral(lot()), "reo_kg": "1.50"}, T0).envelope],
        "extra field": [m3.peek("MineralProductProduced", {**mineral(lot()), "colour": "red"}, T0).envelope],
        "foreign key": [make_entry(other_key, seq=e.seq, prev=m3.head, type=e.type, occurred_at=T0,
                                   body=mineral(lot()), chain="MINE03").envelope],
        "unregistered": [make_entry(stranger, seq=1, prev=bytes(32), type=e.type, occurred_at=T0,
                                    body=mineral(lot())).envelope],
        "role forbids": [m3.peek("QuotaBatchIssued", {
            "year": 2024, "batch_no": 1, "document_no": "GXB-2024-1", "holder": "MINE03",
            "mining_rock_t_reo": "1", "mining_ionic_t_reo": "1", "separation_t_reo": "1",
            "basis": "OUTPUT", "reserve": False}, T0).envelope],
        "unknown shipment": [live.signer("SEP01").peek("TransferReceived", {
            "transfer_id": "T-NONE", "seller": "MINE03", "lines": [
                {"lot": "X-1", "product": "RE_CONCENTRATE", "kg": "1"}], "received_at": T0}, T0).envelope],
        "second of a group": [ok.envelope, make_entry(m3.key, seq=e.seq + 1, prev=ok.hash, type=e.type,
                                                       occurred_at=T0, body={"lot": "x"}).envelope],
        "garbage envelope": [ok.envelope, b"\x93\x01\x02\x03"],
    }
    before = live.size()
    seen_codes = set()
    for name, envelopes in cases.items():
        err = api_error(api, envelopes)
        seen_codes.add(err.code)
        for as_json in (False, True):
            resp = live.post_envelopes(envelopes, as_json=as_json)
            try:
                assert_same_refusal(resp, err)
            except AssertionError as x:
                raise AssertionError(f"{name} (json={as_json}): {x}") from x
    assert {"signature", "conflict", "unknown_type", "missing_field", "unknown_field", "out_of_range",
            "bad_value", "foreign_key", "unregistered", "forbidden", "unknown_reference", "malformed"} <= seen_codes
    assert live.size() == before  # nothing written
    # a used lot: accepted once, then refused as the API refuses it (409 duplicate)
    first = m3.sign("MineralProductProduced", mineral("LOT-ONCE-" + live.url[-6:]), T0)
    assert live.post_envelopes([first.envelope]).status_code == 201
    again = m3.peek("MineralProductProduced", mineral("LOT-ONCE-" + live.url[-6:]), T0)
    err = api_error(api, [again.envelope])
    assert err.status == 409
    assert_same_refusal(live.post_envelopes([again.envelope]), err)


# --- signed reads ---------------------------------------------------------------------------------

def _headers(key: SigningKey, path: str, **change) -> dict[str, str]:
    h = sign_request(key, "GET", path, now=change.pop("now", None))
    h.update(change)
    return h


def test_signed_read_requests(live):
    """Every way a read request can be wrong answers 401 problem+json, with the message the
    in-process authenticator gives for the same headers."""
    path = "/v1/chains/MINE02/head"
    mk, k4 = live.key("MINE02"), live.key("MINE04")
    now = datetime.now(timezone.utc)
    stranger = SigningKey.generate("MINE02")  # a key the ledger never authorized
    with LedgerStore(live.url) as store:
        auth = RequestAuthenticator(store.current_registry)

        def expect(headers: dict[str, str], sent_path: str = path, replay: bool = False) -> None:
            if replay:  # both see it twice
                auth.authenticate("GET", sent_path, httpx.Headers(headers), b"")
                assert httpx.get(live.base + sent_path, headers=headers).status_code == 200
            with pytest.raises(AuthError) as info:
                auth.authenticate("GET", sent_path, httpx.Headers(headers), b"")
            r = httpx.get(live.base + sent_path, headers=headers)
            p = assert_problem(r, 401, "unauthorized")
            assert p["detail"] == str(info.value), (p["detail"], str(info.value))

        # anonymous: nothing to read
        assert_problem(httpx.get(live.base + path), 401, "unauthorized")
        assert_problem(httpx.get(live.base + "/v1/checkpoint"), 401, "unauthorized")
        # a good request works once; the same headers again are a replay
        good = _headers(mk, path)
        assert httpx.get(live.base + path, headers=good).status_code == 200
        r = httpx.get(live.base + path, headers=good)
        assert "replayed" in assert_problem(r, 401, "unauthorized")["detail"]
        expect(_headers(mk, path), replay=True)
        # outside the window (300 s), either way
        expect(_headers(mk, path, now=now - timedelta(seconds=900)))
        expect(_headers(mk, path, now=now + timedelta(seconds=900)))
        expect(_headers(mk, path, **{"X-Reledger-Timestamp": "yesterday"}))
        expect(_headers(mk, path, **{"X-Reledger-Timestamp": "2024-01-01T00:00:00.5Z"}))
        # wrong keys: never authorized; another party's key; the party of another key
        expect(sign_request(stranger, "GET", path))
        expect(_headers(k4, path, **{"X-Reledger-Party": "MINE02"}))
        expect(_headers(mk, path, **{"X-Reledger-Key-Id": k4.key_id}))
        expect(_headers(mk, path, **{"X-Reledger-Key-Id": "not-a-key-id"}))
        # signature over something else: another path, method, party, timestamp, nonce
        expect(_headers(mk, "/v1/chains/MINE02/head?x=1"))
        expect(sign_request(mk, "POST", path))
        expect(_headers(mk, path, **{"X-Reledger-Nonce": "A" * 20}))
        expect(_headers(mk, path, **{"X-Reledger-Signature": base64.b64encode(b"\x00" * 64).decode()}))
        expect(_headers(mk, path, **{"X-Reledger-Signature": "not base64!"}))
        # malformed or incomplete headers
        expect(_headers(mk, path, **{"X-Reledger-Nonce": "short"}))
        expect(_headers(mk, path, **{"X-Reledger-Nonce": "bad nonce with spaces!!"}))
        for h in ("X-Reledger-Party", "X-Reledger-Signature", "X-Reledger-Timestamp"):
            headers = _headers(mk, path)
            del headers[h]
            expect(headers)
    # a non-ASCII header value is just another wrong party
    raw = [(k.encode(), v.encode()) for k, v in _headers(mk, path).items() if k != "X-Reledger-Party"]
    assert_problem(httpx.get(live.base + path, headers=raw + [(b"X-Reledger-Party", b"\xc3\xa9\xff")]), 401)
    # the query is part of what is signed: a request signed with its query works
    ok = live.get("MINE02", "/v1/proofs/consistency?first=1&second=2")
    assert ok.status_code == 200, ok.text


def test_key_lifecycle_applies_to_reads(live):
    """Keys authorized and revoked through the server take effect for reads at once; an expired
    key and a key not valid yet are refused."""
    reg = live.signer("MIIT")
    fresh, old, early = (SigningKey.generate("MINE04") for _ in range(3))
    group = [reg.sign("KeyAuthorized", key_authorized_body(fresh, T0, reason="new terminal"), T0),
             reg.sign("KeyAuthorized", key_authorized_body(old, T0, valid_until="2024-06-01T00:00:00Z"), T0),
             reg.sign("KeyAuthorized", key_authorized_body(early, "2099-01-01T00:00:00Z"), T0)]
    assert live.post_envelopes([g.envelope for g in group], as_json=True).status_code == 201
    path = "/v1/chains/MINE04/head"
    assert live.http.get(path, headers=sign_request(fresh, "GET", path)).status_code == 200
    for key, text in ((old, "has expired"), (early, "is not valid yet")):
        p = assert_problem(live.http.get(path, headers=sign_request(key, "GET", path)), 401, "unauthorized")
        assert p["detail"] == f"key {key.key_id} {text}"
    revoke = reg.sign("KeyRevoked", {"party": "MINE04", "key_id": fresh.key_id, "reason": "stolen"}, T0)
    assert live.post_envelopes([revoke.envelope]).status_code == 201
    p = assert_problem(live.http.get(path, headers=sign_request(fresh, "GET", path)), 401, "unauthorized")
    assert p["detail"] == f"key {fresh.key_id} has been revoked"


def test_database_trouble_is_503_not_500(tmp_path):
    """A database that is busy or gone answers 503 problem+json with Retry-After (the client
    retries the same bytes), in-process with the same app the server runs (group commit in
    threads of the process: the writer process's transient failures are tested below)."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url, writer_process=False)
    with TestClient(app, raise_server_exceptions=False) as tc:
        real = app.state.api.submit_groups
        calls = []

        def busy(groups, **kw):
            calls.append(len(groups))
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return real(groups, **kw)

        app.state.api.submit_groups = busy
        s = ChainSigner(cast.keys["MINE02"])
        env = s.sign("MineralProductProduced", mineral(lot()), T0).envelope
        r = tc.post(ENTRIES, content=msgpack.packb([env], use_bin_type=True),
                    headers={"Content-Type": "application/msgpack"})
        p = assert_problem(r, 503, "unavailable")
        assert r.headers["retry-after"] == "1" and "database is locked" not in p["detail"]
        r = tc.post(ENTRIES, content=msgpack.packb([env], use_bin_type=True),
                    headers={"Content-Type": "application/msgpack"})
        assert r.status_code == 201 and r.json()["receipts"][0]["duplicate"] is False


def test_a_full_pipeline_turns_appends_away_with_503(tmp_path):
    """Admission: while more entries wait for their answer than the server takes
    (``max_queued_entries``), a further append is answered 503 ``overloaded`` at once, with
    Retry-After, and nothing of it is written; what was admitted is committed and answered,
    and the refused request sent again is recorded. A group is taken whatever its size when
    nothing waits."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url, max_queued_entries=2, writer_process=False)  # (the writer process's: below)
    signers = {m: ChainSigner(cast.keys[m]) for m in ("MINE02", "MINE03", "MINE04")}

    def body(*envs):
        return msgpack.packb(list(envs), use_bin_type=True)

    headers = {"Content-Type": "application/msgpack"}
    with TestClient(app) as tc:
        real, gate, entered = app.state.api.submit_groups, threading.Event(), threading.Event()

        def slow(groups, **kw):  # the database is slow: commits wait for the gate
            entered.set()
            assert gate.wait(30)
            return real(groups, **kw)

        app.state.api.submit_groups = slow
        with LedgerStore(url) as st:
            size0 = st.size()
        waiting = [signers["MINE02"].sign("MineralProductProduced", mineral(lot()), T0).envelope,
                   signers["MINE03"].sign("MineralProductProduced", mineral(lot()), T0).envelope]
        answers: list = []
        threads = [threading.Thread(target=lambda e=e: answers.append(tc.post(ENTRIES, content=body(e), headers=headers)))
                   for e in waiting]
        threads[0].start()
        assert entered.wait(10)  # the first is in the (blocked) commit
        threads[1].start()
        deadline = datetime.now() + timedelta(seconds=10)
        while tc.get("/v1/health").json()["queued_entries"] < 2:
            assert datetime.now() < deadline
        third = signers["MINE04"].sign("MineralProductProduced", mineral(lot()), T0).envelope
        r = tc.post(ENTRIES, content=body(third), headers=headers)
        p = assert_problem(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1" and "2 entries are waiting" in p["detail"]
        gate.set()
        for t in threads:
            t.join(30)
        assert sorted(a.status_code for a in answers) == [201, 201]
        with LedgerStore(url) as st:
            assert st.size() == size0 + 2  # the refused entry was not written
        assert tc.get("/v1/health").json()["queued_entries"] == 0
        r = tc.post(ENTRIES, content=body(third), headers=headers)  # sent again: recorded
        assert r.status_code == 201 and r.json()["receipts"][0]["duplicate"] is False
        # nothing waits: a group larger than the limit is taken
        big = [signers["MINE04"].sign("MineralProductProduced", mineral(lot()), T0).envelope for _ in range(5)]
        assert tc.post(ENTRIES, content=body(*big), headers=headers).status_code == 201
    assert_log_sound(url)


class _HeldWrites:
    """Another connection holds SQLite's write lock: every commit waits (up to the store's
    lock timeout) until ``release``."""

    def __init__(self, url: str):
        self.conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None, timeout=10)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def _wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = datetime.now() + timedelta(seconds=seconds)
    while not predicate():
        assert datetime.now() < deadline, "timed out"
        threading.Event().wait(0.02)


def test_the_writer_process_dying_mid_commit_answers_503_and_a_new_one_takes_over(tmp_path):
    """``reledger serve`` commits in a writer process. Killed while a commit waits for the
    database, its requests are answered 503 ``unavailable`` with Retry-After (nothing was
    acknowledged); the next append starts a new writer process, and the same request sent
    again is recorded once."""
    import os
    import signal

    from fastapi.testclient import TestClient

    from reledger.processes.committer import WriterProcess
    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url)
    headers = {"Content-Type": "application/msgpack"}
    signer = ChainSigner(cast.keys["MINE02"])
    with TestClient(app) as tc:
        committer = app.state.committer
        assert isinstance(committer, WriterProcess) and committer.alive() and committer.starts == 1
        first = signer.sign("MineralProductProduced", mineral(lot()), T0).envelope
        assert tc.post(ENTRIES, content=msgpack.packb([first], use_bin_type=True), headers=headers).status_code == 201
        with LedgerStore(url) as st:
            size0 = st.size()
        env = signer.sign("MineralProductProduced", mineral(lot()), T0).envelope
        body = msgpack.packb([env], use_bin_type=True)
        held = _HeldWrites(url)
        answers: list = []
        t = threading.Thread(target=lambda: answers.append(tc.post(ENTRIES, content=body, headers=headers)))
        t.start()
        try:
            _wait_for(lambda: tc.get("/v1/health").json()["queued_entries"] == 1)
            os.kill(committer._proc.pid, signal.SIGKILL)  # while its commit waits for the lock
            t.join(30)
        finally:
            held.release()
        p = assert_problem(answers[0], 503, "unavailable")
        assert answers[0].headers["retry-after"] == "1" and "writer process ended" in p["detail"]
        with LedgerStore(url) as st:
            assert st.size() == size0  # nothing of it was written
        r = tc.post(ENTRIES, content=body, headers=headers)  # sent again: a new writer process
        assert r.status_code == 201 and r.json()["receipts"][0]["duplicate"] is False, r.text
        assert committer.starts == 2 and committer.alive()
        assert tc.get("/v1/health").json()["queued_entries"] == 0
        r = tc.post(ENTRIES, content=body, headers=headers)  # and once more: the original receipt
        assert r.status_code == 200 and r.json()["receipts"][0]["duplicate"] is True
    assert_log_sound(url)


def test_a_writer_process_that_cannot_start_answers_503_until_one_can(tmp_path):
    """The server starts even if its writer process cannot (it says so in the log); an
    append meanwhile is answered 503 ``unavailable`` and nothing is written; once a writer
    process can start, the same request is recorded."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url)
    committer = app.state.committer
    committer.start_timeout = 0.0  # no process is ever ready in time
    headers = {"Content-Type": "application/msgpack"}
    body = msgpack.packb([ChainSigner(cast.keys["MINE02"]).sign("MineralProductProduced", mineral(lot()), T0).envelope],
                         use_bin_type=True)
    with TestClient(app) as tc:
        assert committer.starts == 0 and not committer.alive()
        with LedgerStore(url) as st:
            size0 = st.size()
        r = tc.post(ENTRIES, content=body, headers=headers)
        p = assert_problem(r, 503, "unavailable")
        assert r.headers["retry-after"] == "1" and "writer is unavailable" in p["detail"]
        with LedgerStore(url) as st:
            assert st.size() == size0
        committer.start_timeout = 60.0
        r = tc.post(ENTRIES, content=body, headers=headers)
        assert r.status_code == 201 and r.json()["receipts"][0]["duplicate"] is False, r.text
        assert committer.starts == 1 and tc.get("/v1/health").json()["queued_entries"] == 0


def test_the_writer_process_admits_as_the_threads_do(tmp_path):
    """Admission with the writer process: while its commit waits for the database and the
    queue is full, a further append is answered 503 ``overloaded`` at once and nothing of it
    is written; once the database lets go, what was admitted is committed and answered, with
    the findings of the projections, and the refused request sent again is recorded."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url, max_queued_entries=2)
    signers = {m: ChainSigner(cast.keys[m]) for m in ("MINE02", "MINE03", "MINE04")}
    headers = {"Content-Type": "application/msgpack"}

    def body(*envs):
        return msgpack.packb(list(envs), use_bin_type=True)

    with TestClient(app) as tc:
        with LedgerStore(url) as st:
            size0 = st.size()
        held = _HeldWrites(url)
        answers: list = []
        try:
            waiting = [signers[m].sign("MineralProductProduced", mineral(lot()), T0).envelope
                       for m in ("MINE02", "MINE03")]
            threads = [threading.Thread(target=lambda e=e: answers.append(tc.post(ENTRIES, content=body(e),
                                                                                  headers=headers)))
                       for e in waiting]
            for t in threads:
                t.start()
            _wait_for(lambda: tc.get("/v1/health").json()["queued_entries"] == 2)
            third = signers["MINE04"].sign("MineralProductProduced", mineral(lot()), T0).envelope
            r = tc.post(ENTRIES, content=body(third), headers=headers)
            p = assert_problem(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1" and "2 entries are waiting" in p["detail"]
        finally:
            held.release()
        for t in threads:
            t.join(30)
        assert sorted(a.status_code for a in answers) == [201, 201]
        assert all("OVER_QUOTA" in {f["code"] for f in a.json()["receipts"][0]["findings"]} for a in answers)
        with LedgerStore(url) as st:
            assert st.size() == size0 + 2
        assert tc.get("/v1/health").json()["queued_entries"] == 0
        r = tc.post(ENTRIES, content=body(third), headers=headers)
        assert r.status_code == 201 and r.json()["receipts"][0]["duplicate"] is False
    assert_log_sound(url)


def test_closing_the_writer_process_commits_and_answers_what_was_submitted(tmp_path):
    """WriterProcess.close (the server's shutdown) commits and answers every group submitted
    before it, then the process ends: nothing acknowledged is lost, nothing left waiting."""
    import asyncio

    from reledger.commands.api import CommandAPI
    from reledger.processes.committer import WriterProcess

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    signers = [ChainSigner(cast.keys[m]) for m in ("MINE02", "MINE03", "MINE04")]
    envs = [s.sign("MineralProductProduced", mineral(lot()), T0).envelope for s in signers for _ in range(4)]
    with LedgerStore(url) as st:
        size0 = st.size()
        committer = WriterProcess(url, CommandAPI(st))
        committer.start()
        proc = committer._proc

        async def main():
            futures = [committer.submit([e]) for e in envs]
            await asyncio.to_thread(committer.close)  # (the loop stays free to take the answers)
            return await asyncio.gather(*futures, return_exceptions=True)

        answers = asyncio.run(main())
        assert all(isinstance(a, list) and not a[0].duplicate for a in answers), answers
        assert sorted(a[0].index for a in answers) == list(range(size0, size0 + len(envs)))
        assert not proc.is_alive() and committer.queued_entries == 0
        assert st.size() == size0 + len(envs)
    assert_log_sound(url)


def test_the_writer_checks_the_next_large_batch_while_it_commits(db_url, monkeypatch):
    """When large groups pile up in the writer process, the next batch's signatures are
    checked in the pool while the current batch commits (start_prepare). Batches still commit
    in the order the groups came, each group is answered once, accepted or refused whole (a
    bad signature in a batch checked ahead is refused with its own message; its neighbours go
    in), and the log is sound. The commit loop runs in a thread here, fed through a real pipe."""
    import multiprocessing

    from reledger.processes import committer as cm
    from reledger.processes.frames import Channel

    cast = build_cast(db_url)
    signers = [ChainSigner(cast.keys[m]) for m in ("MINE02", "MINE03", "MINE04")]
    groups = []
    for k in range(8):  # 8 groups of 40: batches of at most 100 entries (two groups)
        s = signers[2 if k == 5 else k % 2]  # (the refused group on a chain of its own)
        groups.append([s.sign("MineralProductProduced", mineral(lot()), T0).envelope for _ in range(40)])
    bad = SignedEntry.parse(groups[5][7])  # (group 5 lies in a batch checked ahead)
    groups[5][7] = msgpack.packb({"entry": bad.content, "sig": bytes(64)}, use_bin_type=True)
    started = []
    real = cm.start_prepare

    def spy(api, gs, *a, **kw):
        started.append(sum(map(len, gs)))
        return real(api, gs, *a, **kw)

    monkeypatch.setattr(cm, "start_prepare", spy)
    parent, child = multiprocessing.Pipe()
    with LedgerStore(db_url) as st:
        size0 = st.size()
        api = CommandAPI(st)
        # everything waits before the loop starts: one frame per group, then the stop frame
        for rid, g in enumerate(groups):
            parent.send_bytes(msgpack.packb([[rid, g]], use_bin_type=True))
        parent.send_bytes(msgpack.packb(None))  # the stop frame
        loop = threading.Thread(target=cm.commit_loop, args=(api, Channel(child)), kwargs={"max_entries": 100})
        loop.start()
        loop.join(timeout=120)
        assert not loop.is_alive()
        answers = []
        while parent.poll(0):
            answers += msgpack.unpackb(parent.recv_bytes(), raw=False)
        assert started, "no batch was checked ahead"
        assert [rid for rid, _, _ in answers] == list(range(8))
        refused = [(rid, payload) for rid, kind, payload in answers if kind != cm._RECEIPTS]
        assert [rid for rid, _ in refused] == [5] and refused[0][1]["position"] == 7, refused
        assert "signature" in refused[0][1]["message"]
        # the accepted groups, in the order they came, each whole and contiguous in the log
        indexes = [[r[0] for r in payload] for _, kind, payload in answers if kind == cm._RECEIPTS]
        flat = [i for g in indexes for i in g]
        assert flat == list(range(size0, size0 + 7 * 40))
        assert st.size() == size0 + 7 * 40
    parent.close()
    child.close()
    assert_log_sound(db_url)


@pytest.mark.parametrize("mirror", [True, False], ids=["writer-mirror", "parent-asks"])
def test_writer_process_answers_findings_itself(db_url, mirror):
    """The writer process answers the findings of what it commits from its own mirror of the
    rule state (the server's projections are not asked) once the mirror is built; until then,
    or with ``findings_mirror=False``, the server asks its projections. Either way each
    answer lists exactly the findings the projection tables record for the entry and its
    party."""
    import asyncio
    import time

    from reledger.processes.committer import WriterProcess
    from reledger.projections import queries
    from reledger.projections.hooks import ProjectionFindings
    from reledger.projections.store import ProjectionStore

    cast = build_cast(db_url)
    signer = ChainSigner(cast.keys["MINE02"])
    asked: list[int] = []

    class Recording(ProjectionFindings):
        def findings_of(self, entries):
            asked.extend(e[0] for e in entries)
            return super().findings_of(entries)

    ps = ProjectionStore(db_url)
    with LedgerStore(db_url) as st:
        committer = WriterProcess(db_url, CommandAPI(st, findings_hook=Recording(ps)), findings_mirror=mirror)
        committer.start()
        answers: list = []
        try:
            async def append(n):
                envs = [signer.sign("MineralProductProduced", mineral(lot()), T0).envelope for _ in range(n)]
                return [r for group in await asyncio.gather(*[committer.submit([e]) for e in envs]) for r in group]

            deadline = time.monotonic() + 60
            while True:  # until the writer's mirror is built (the server asks meanwhile)
                got = asyncio.run(append(1))
                answers += got
                if got[0].index not in asked or not mirror or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            before = len(asked)
            answers += asyncio.run(append(6))
            if mirror:
                assert len(asked) == before, "the server asked its projections although the writer could say"
            else:
                assert asked[before:] == [r.index for r in answers[-6:]]
        finally:
            committer.close()
    try:
        ps.catch_up()
        tables: dict[int, list] = {}
        for f in queries.findings(ps)["findings"]:
            f.pop("rule_text")
            tables.setdefault(f["index"], []).append(f)
    finally:
        ps.close()
    # over a quota never issued (the first), recorded long after its business time (all)
    assert "OVER_QUOTA" in [f["code"] for f in answers[0].findings]
    assert all("BACKDATED" in [f["code"] for f in r.findings] for r in answers)
    for r in answers:
        want = [f for f in tables[r.index] if f["party"] == r.chain]
        assert sorted(json.dumps(f, sort_keys=True) for f in json.loads(json.dumps(list(r.findings)))) == \
            sorted(json.dumps(f, sort_keys=True) for f in want), r.index


def test_writer_process_answers_keep_every_detail():
    """What the writer process sends back for a group is what the API answered in-process:
    receipts field by field, a refusal with its code, status, message, field, position,
    chain, seq and group, and a failed transaction as 503 (transient) or 500."""
    from dataclasses import replace

    from reledger.commands.api import CommandReceipt
    from reledger.commands.catalogue import Conflict as ConflictError
    from reledger.processes.committer import WriterFailed, _decode_answer, _encode_answer, transient_errors

    def round_trip(ok, value):
        rid, kind, payload = msgpack.unpackb(msgpack.packb(_encode_answer(7, ok, value, transient_errors()),
                                                           use_bin_type=True), raw=False)
        assert rid == 7
        return _decode_answer(kind, payload)

    receipts = [CommandReceipt(12, "MINE02", 3, b"\x01" * 32, "2024-01-01T00:00:00Z", False),
                CommandReceipt(9, "MINE02", 2, b"\x02" * 32, "2024-01-01T00:00:00Z", True)]
    assert round_trip(True, receipts) == (True, receipts)
    # findings: None where the writer could not say (the server asks its projections), never
    # for a duplicate; those it found, field by field
    assert [r.findings for r in round_trip(True, receipts)[1]] == [None, ()]
    found = {"rule": "R1", "code": "OVER_QUOTA", "party": "MINE02", "message": "over", "index": 12,
             "occurred_at": "2024-01-01T00:00:00Z", "evidence": [{"chain": "MINE02", "seq": 3, "hash": "01" * 32,
                                                                 "index": 12}], "params": {"over_g": 5}}
    with_findings = [replace(receipts[0], findings=(found,)), receipts[1]]
    rid, kind, payload = msgpack.unpackb(msgpack.packb(_encode_answer(7, True, with_findings, transient_errors(),
                                                                      True), use_bin_type=True), raw=False)
    assert [r.findings for r in _decode_answer(kind, payload)[1]] == [(found,), ()]
    err = ConflictError("conflict", "seq: chain MINE02 is at seq 3; the next entry must have seq 4, not 9",
                        field="seq", position=1, chain="MINE02", seq=9, group=4)
    ok, back = round_trip(False, err)
    assert not ok and type(back) is type(err) and back.to_dict() == err.to_dict() and str(back) == str(err)
    ok, back = round_trip(False, sqlite3.OperationalError("database is locked"))
    assert not ok and isinstance(back, WriterFailed) and back.transient and "database is locked" not in str(back)
    ok, back = round_trip(False, KeyError("x"))
    assert not ok and isinstance(back, WriterFailed) and not back.transient and str(back) == "internal error: KeyError"


def test_serve_takes_the_admission_limit_from_the_command_line(tmp_path, monkeypatch, capsys):
    """``reledger serve --max-queued-entries N`` reaches the app (default: the server's own
    MAX_QUEUED_ENTRIES); a limit that is not a whole number >= 1 is a usage error."""
    import reledger.processes.server as server_module
    from reledger import cli

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    build_cast(url)
    seen = []
    monkeypatch.setattr(server_module, "serve", lambda db, **kw: seen.append(kw))
    assert cli.main(["serve", "--db", url, "--max-queued-entries", "7"]) == 0
    assert cli.main(["serve", "--db", url]) == 0
    assert [kw["max_queued_entries"] for kw in seen] == [7, server_module.MAX_QUEUED_ENTRIES]
    for bad in ("0", "-3", "many"):
        assert cli.main(["serve", "--db", url, "--max-queued-entries", bad]) == 2
        assert "--max-queued-entries" in capsys.readouterr().err
    assert len(seen) == 2


def test_a_read_between_commit_and_findings_loses_no_findings(tmp_path):
    """A query that brings the projections up to date between the commit and the findings hook
    (any GET /v1/quota, stock, findings, flow) must not swallow the findings of the append's
    answer. In-process, with the read injected at exactly that moment, on the path where the
    server process asks its projections (group commit in threads; the writer process answers
    findings itself, see test_writer_process_answers_findings_itself)."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url, writer_process=False)
    with TestClient(app) as tc:
        api_ = app.state.api
        hook, reads = api_.findings_hook, []

        def read_first(signed, receipt):
            if not reads:
                path = "/v1/quota?year=2024"
                reads.append(tc.get(path, headers=sign_request(cast.keys["MIIT"], "GET", path)).status_code)
            return hook(signed, receipt)

        api_.findings_hook = read_first
        env = ChainSigner(cast.keys["MINE02"]).sign("MineralProductProduced", mineral(lot()), T0).envelope
        r = tc.post(ENTRIES, content=msgpack.packb([env], use_bin_type=True),
                    headers={"Content-Type": "application/msgpack"})
        assert reads == [200]
        assert r.status_code == 201, r.text
        codes = {f["code"] for f in r.json()["receipts"][0]["findings"]}
        assert "OVER_QUOTA" in codes, r.json()  # no quota was issued: the mine is over it


def test_read_authorization(live, api):
    """An enterprise reads its own chain and both sides of its transfers; regulators and auditors
    read everything; nobody learns whether another party's entry exists."""
    m4 = live.signer("MINE04")
    sep = live.signer("SEP01")
    mlot, tid = lot(), "T-" + uuid.uuid4().hex[:8]
    produced = m4.sign("MineralProductProduced", mineral(mlot), T0)
    line = {"lot": mlot, "product": "RE_CONCENTRATE", "kg": "10500.5", "reo_kg": "5796.276"}
    shipped = m4.sign("TransferShipped", {"transfer_id": tid, "buyer": "SEP01", "lines": [line],
                                          "vat_invoice_no": "0447-9", "shipped_at": "2024-01-20T08:00:00Z"}, T0)
    assert live.post_envelopes([produced.envelope, shipped.envelope]).status_code == 201
    received = sep.sign("TransferReceived", {"transfer_id": tid, "seller": "MINE04", "lines": [line],
                                             "received_at": "2024-01-21T10:30:00Z"}, T0)
    assert live.post_envelopes([received.envelope]).status_code == 201
    p_seq, s_seq, r_seq = produced.entry.seq, shipped.entry.seq, received.entry.seq

    def status(party: str, path: str) -> int:
        r = live.get(party, path)
        if r.status_code >= 400:
            assert_problem(r, r.status_code)
        return r.status_code

    # own chain
    assert status("MINE04", "/v1/chains/MINE04/head") == 200
    assert status("MINE04", f"/v1/chains/MINE04/entries/{p_seq}") == 200
    # the buyer sees the shipment to it, the seller sees the receipt; neither the other's production
    assert status("SEP01", f"/v1/chains/MINE04/entries/{s_seq}") == 200
    assert status("MINE04", f"/v1/chains/SEP01/entries/{r_seq}") == 200
    size = live.size()
    assert status("SEP01", f"/v1/proofs/inclusion?chain=MINE04&seq={s_seq}&size={size}") == 200
    # without a size: the latest checkpoint's tree, which does not hold the entry yet
    r = live.get("SEP01", f"/v1/proofs/inclusion?chain=MINE04&seq={s_seq}")
    assert "not covered by the latest checkpoint" in assert_problem(r, 400, "invalid_request")["detail"]
    assert status("SEP01", f"/v1/chains/MINE04/entries/{p_seq}") == 403
    assert status("SEP01", "/v1/chains/MINE04/head") == 403
    # a third party sees none of it; an entry that does not exist answers alike
    for path in (f"/v1/chains/MINE04/entries/{s_seq}", f"/v1/chains/SEP01/entries/{r_seq}",
                 "/v1/chains/MINE04/entries/99999", f"/v1/proofs/inclusion?chain=MINE04&seq={s_seq}",
                 "/v1/proofs/inclusion?chain=MINE04&seq=99999", "/v1/chains/SEP01/head"):
        assert status("SMELT01", path) == 403, path
    # regulators and auditors read everything
    for reader in ("MIIT", "AUD01"):
        for path in (f"/v1/chains/MINE04/entries/{p_seq}", "/v1/chains/SEP01/head",
                     f"/v1/chains/SEP01/entries/{r_seq}", "/v1/findings?party=MINE04", "/v1/flow",
                     "/v1/stock?party=SEP01", "/v1/quota?year=2024"):
            assert status(reader, path) == 200, (reader, path)
    # the entry read gives back what was signed, as JSON or as the raw envelope
    rec = live.get("SEP01", f"/v1/chains/MINE04/entries/{s_seq}").json()
    assert base64.b64decode(rec["envelope"]) == shipped.envelope and rec["entry_hash"] == shipped.hash.hex()
    raw = live.get("MINE04", f"/v1/chains/MINE04/entries/{s_seq}", headers={"Accept": "application/msgpack"})
    assert raw.headers["content-type"] == "application/msgpack" and raw.content == shipped.envelope
    # queries: an enterprise sees its own
    assert status("MINE04", "/v1/stock") == 200 and status("MINE04", "/v1/stock?party=SEP01") == 403
    assert status("MINE04", "/v1/findings?party=SEP01") == 403
    assert status("MINE04", "/v1/flow") == 403
    assert status("MINE04", f"/v1/flow?lot={mlot}&direction=down") == 200
    assert status("SMELT01", f"/v1/flow?lot={mlot}") == 403
    q = live.get("MINE04", "/v1/quota?year=2024").json()
    assert {e["party"] for e in q["enterprises"]} <= {"MINE04"}
    assert q["groups"] == [] and q["nation"]  # no group's lines; the 2024 national totals were public
    regulator = live.get("MIIT", "/v1/quota?year=2025").json()
    mine = live.get("MINE04", "/v1/quota?year=2025").json()
    assert mine["nation"] == [] and "nation" in regulator  # confidential from 2025: the regulator reads them
    # the API's messages for what is not there or not a chain id
    r = live.get("MINE04", "/v1/chains/MINE04/entries/99999")
    with pytest.raises(CommandError) as info:
        api.entry("MINE04", 99999)
    assert_same_refusal(r, info.value)
    for bad in ("lower", "A", "A%20B", "%E4%B8%AD", "A" * 65, "A%00B"):
        with pytest.raises(CommandError) as info:
            api.head(bad)
        assert_same_refusal(live.get("MIIT", f"/v1/chains/{bad}/head"), info.value)
    with pytest.raises(CommandError) as info:
        api.entry("MINE04", 0)
    assert_same_refusal(live.get("MINE04", "/v1/chains/MINE04/entries/0"), info.value)


def test_hostile_parameters_never_5xx(live):
    paths = [
        "/v1/chains/MINE02/entries/99999999999999999999999", "/v1/chains/MINE02/entries/9223372036854775808",
        "/v1/chains/MINE02/entries/-1", "/v1/chains/MINE02/entries/1.5", "/v1/chains/MINE02/entries/x",
        "/v1/chains/A%00B/entries/1", "/v1/chains/%FF%FE/head", "/v1/chains/" + "A" * 5000 + "/head",
        "/v1/proofs/inclusion?chain=MIIT&seq=1&size=9223372036854775808", "/v1/proofs/inclusion?chain=MIIT&seq=1&size=0",
        "/v1/proofs/inclusion?chain=MIIT&seq=1&size=-5", "/v1/proofs/inclusion?chain=MIIT&seq=9223372036854775808",
        "/v1/proofs/inclusion?chain=MIIT", "/v1/proofs/inclusion?chain=%00&seq=1",
        "/v1/proofs/consistency?first=-1&second=3", "/v1/proofs/consistency?first=3&second=1",
        "/v1/proofs/consistency?first=1&second=9223372036854775808", "/v1/proofs/consistency",
        "/v1/quota?year=99999999999999999999", "/v1/quota?year=9223372036854775808", "/v1/quota",
        "/v1/quota?year=2024&as_of=xx", "/v1/quota?year=2024&as_of=-5", "/v1/quota?year=2024&as_of=%00",
        "/v1/quota?year=2024&valid_at=2024-02-30", "/v1/quota?year=2024&as_of=%C2%B2",
        "/v1/stock?party=A%00", "/v1/stock?party=mine02", "/v1/findings?party=A%00&rule=%00",
        "/v1/findings?rule=" + "x" * 10000, "/v1/flow?lot=%00", "/v1/flow?direction=sideways",
        "/v1/flow?format=pdf", "/v1/flow?lot=" + "x" * 10000,
    ]
    for party in ("MIIT", "MINE02"):
        for path in paths:
            r = live.get(party, path)
            assert r.status_code < 500, (party, path, r.status_code, r.text[:300])
            if r.status_code >= 400:
                assert_problem(r, r.status_code)
    assert live.get("MIIT", "/v1/flow?lot=%00").status_code == 400


# --- checkpoints and proofs ------------------------------------------------------------------------

def test_checkpoint_and_proofs(live):
    verifier = live.cast.note_signer.verifier()
    first = live.cast.genesis_size
    s = live.signer("MINE02")
    e = s.sign("MineralProductProduced", mineral(lot()), T0)
    assert live.post_envelopes([e.envelope]).status_code == 201
    live.cast.checkpoint()
    r = live.get("MINE02", "/v1/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    cp = verify_checkpoint(r.content, verifier)
    assert cp.size == live.size()
    inc = live.get("MINE02", f"/v1/proofs/inclusion?chain=MINE02&seq={e.entry.seq}").json()
    assert inc["size"] == cp.size and inc["root"] == cp.root.hex() and inc["entry_hash"] == e.hash.hex()
    leaf = merkle.leaf_hash(leaf_bytes(e.hash, inc["index"], inc["recorded_at"]))
    assert leaf.hex() == inc["leaf_hash"]
    merkle.verify_inclusion(leaf, inc["index"], cp.size, [bytes.fromhex(h) for h in inc["proof"]], cp.root)
    con = live.get("AUD01", f"/v1/proofs/consistency?first={first}&second={cp.size}").json()
    merkle.verify_consistency(first, cp.size, [bytes.fromhex(h) for h in con["proof"]],
                              bytes.fromhex(con["root_first"]), cp.root)
    assert live.get("AUD01", f"/v1/proofs/consistency?first=0&second={cp.size}").json()["proof"] == []
    # a size the entry is not inside, or beyond the log
    assert_problem(live.get("MINE02", f"/v1/proofs/inclusion?chain=MINE02&seq={e.entry.seq}&size=1"), 400,
                   "invalid_request")
    assert_problem(live.get("MINE02", f"/v1/proofs/consistency?first=1&second={cp.size + 5}"), 400,
                   "invalid_request")


# --- schemathesis against the OpenAPI description ------------------------------------------------------

@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(live):
    """Property-based requests generated from /openapi.json, signed by the regulator (who may
    read everything, so that requests get past authentication): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(live.base + "/openapi.json")
    reg = live.key("MIIT")
    failures, sent = [], [0]
    with httpx.Client(timeout=60.0) as http:
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case):
                kw = case.as_transport_kwargs(base_url=live.base)
                req = http.build_request(kw["method"], kw["url"], params=kw.get("params"), headers=kw.get("headers"),
                                         content=kw.get("data"), json=kw.get("json"))
                req.headers.update(sign_request(reg, req.method, req.url.raw_path.decode("ascii")))
                resp = http.send(req)
                sent[0] += 1
                if resp.status_code >= 500:
                    failures.append((req.method, str(req.url), resp.status_code, resp.text[:200]))

            run()
    assert sent[0] >= 40
    assert not failures, failures[:5]


@pytest.mark.parametrize("writer_process", [True, False], ids=["writer-process", "threads"])
def test_projections_process_death_falls_back_in_process(tmp_path, writer_process):
    """The server keeps its projections in a child process; if that process dies, the server
    projects in its own threads instead: appends still answer their findings (from the writer
    process's own mirror, or asked of the projections in this process), queries still answer
    up to date."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url, writer_process=writer_process)
    with TestClient(app) as tc:
        pp = app.state.findings_hook
        signer = ChainSigner(cast.keys["MINE02"])

        def append():
            env = signer.sign("MineralProductProduced", mineral(lot()), T0).envelope
            r = tc.post(ENTRIES, content=msgpack.packb([env], use_bin_type=True),
                        headers={"Content-Type": "application/msgpack"})
            assert r.status_code == 201, r.text
            return r.json()["receipts"][0]

        def recorded(index):  # what the projection tables hold for that entry
            path = "/v1/findings?party=MINE02"
            r = tc.get(path, headers=sign_request(cast.keys["MINE02"], "GET", path))
            assert r.status_code == 200, r.text
            return sorted(f["code"] for f in r.json()["findings"] if f["index"] == index)

        first = append()  # findings by the writer process or the projections process
        assert "OVER_QUOTA" in {f["code"] for f in first["findings"]}
        assert pp._proc is not None and pp._proc.is_alive()
        pp._proc.kill()
        pp._proc.join(timeout=10)
        second = append()  # by the writer process, or by the projections in this process now
        assert second["findings"]
        for r in (first, second):
            assert sorted(f["code"] for f in r["findings"]) == recorded(r["index"])
        assert pp._local is not None  # (the queries caught up in this process)


def _findings_by_index(tc, cast) -> dict[int, list]:
    """The regulator's GET /v1/findings, by log index."""
    path = "/v1/findings"
    r = tc.get(path, headers=sign_request(cast.keys["MIIT"], "GET", path))
    assert r.status_code == 200, r.text
    table: dict[int, list] = {}
    for f in r.json()["findings"]:
        table.setdefault(f["index"], []).append(f)
    return table


def test_append_findings_equal_the_tables(tmp_path):
    """The appends' findings (answered from the projections process's in-memory fold, before
    the tables have their rows) are exactly what the projection tables record for each entry:
    over quota, negative stock, backdating, in groups and alone, in one commit or several."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url)
    with TestClient(app) as tc:
        m3, sep = ChainSigner(cast.keys["MINE03"]), ChainSigner(cast.keys["SEP01"])

        def post(envs):
            r = tc.post(ENTRIES, content=msgpack.packb(envs, use_bin_type=True),
                        headers={"Content-Type": "application/msgpack"})
            assert r.status_code == 201, r.text
            return r.json()["receipts"]

        receipts = []
        lots = [lot() for _ in range(3)]
        receipts += post([m3.sign("MineralProductProduced", mineral(lots[0]), T0).envelope])
        receipts += post([m3.sign("MineralProductProduced", mineral(x), "2024-02-01T00:00:00Z").envelope
                          for x in lots[1:]])
        for i, x in enumerate(lots):  # more than the lot holds: negative stock
            line = {"lot": x, "product": "RE_CONCENTRATE", "kg": "20000", "reo_kg": "9000"}
            receipts += post([m3.sign("TransferShipped", {"transfer_id": f"T-{x}", "buyer": "SEP01", "lines": [line],
                                                          "vat_invoice_no": f"0447-{i}",
                                                          "shipped_at": "2024-03-01T08:00:00Z"}, T0).envelope])
        receipts += post([sep.sign("StockCounted", {"product": "Nd2O3", "counted_kg": "1"}, T0).envelope])
        table = _findings_by_index(tc, cast)
        def norm(fs):
            return sorted((f["rule"], f["code"], f["party"], f["message"], f["index"], f["occurred_at"],
                           tuple((e["chain"], e["seq"], e["hash"]) for e in f["evidence"])) for f in fs)

        codes = set()
        for rec in receipts:
            mine = [f for f in table.get(rec["index"], []) if f["party"] == rec["chain"]]
            assert norm(rec["findings"]) == norm(mine), rec["index"]
            codes |= {f["code"] for f in rec["findings"]}
        assert {"OVER_QUOTA", "NEGATIVE_STOCK"} <= codes


def test_findings_and_checks_follow_another_writer(tmp_path):
    """Another process appends to the same ledger between the server's appends: the server's
    write state finds the log moved and checks again against it (nothing stale is written),
    and the findings it answers, folded from the entries it fed its projections process plus
    the other writer's entries read from the log, are what the tables record."""
    from fastapi.testclient import TestClient

    from reledger.processes.server import create_app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    app = create_app(url)
    with TestClient(app) as tc, LedgerStore(url) as other_store:
        other = CommandAPI(other_store)
        m3 = ChainSigner(cast.keys["MINE03"])

        def post(envs):
            r = tc.post(ENTRIES, content=msgpack.packb(envs, use_bin_type=True),
                        headers={"Content-Type": "application/msgpack"})
            assert r.status_code == 201, r.text
            return r.json()["receipts"]

        a, b = lot(), lot()
        receipts = post([m3.sign("MineralProductProduced", mineral(a), T0).envelope])
        other.submit([m3.sign("MineralProductProduced", mineral(b), T0).envelope])  # behind the server's back
        line = {"lot": b, "product": "RE_CONCENTRATE", "kg": "20000", "reo_kg": "9000"}  # more than b holds
        receipts += post([m3.sign("TransferShipped", {"transfer_id": f"T-{b}", "buyer": "SEP01", "lines": [line],
                                                      "vat_invoice_no": "0447-9",
                                                      "shipped_at": "2024-03-01T08:00:00Z"}, T0).envelope])
        # the other writer's lot counts: the shipment is of a lot MINE03 made, short of stock
        other.submit([m3.sign("MineralProductProduced", mineral(lot()), T0).envelope])
        receipts += post([m3.sign("MineralProductProduced", mineral(lot()), T0).envelope])
        assert [r["index"] for r in receipts] == [receipts[0]["index"], receipts[0]["index"] + 2,
                                                  receipts[0]["index"] + 4]
        table = _findings_by_index(tc, cast)
        for rec in receipts:
            mine = [f for f in table.get(rec["index"], []) if f["party"] == rec["chain"]]
            assert sorted(f["code"] for f in rec["findings"]) == sorted(f["code"] for f in mine), rec["index"]
        shipped = [f["code"] for f in receipts[1]["findings"]]
        assert "NEGATIVE_STOCK" in shipped and "UNTRACEABLE_LOT" not in shipped, shipped
    assert_log_sound(url)


def test_a_refusal_is_checked_against_the_log_as_it_is(tmp_path):
    """A receipt for a shipment another process recorded after this API's last commit: the
    API's state does not know the shipment, but before refusing it looks at the log's size,
    catches up and checks again, so the receipt is accepted; a receipt for a shipment nobody
    recorded is still refused, and nothing of it is written."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cast = build_cast(url)
    with LedgerStore(url) as s1, LedgerStore(url) as s2:
        api, other = CommandAPI(s1), CommandAPI(s2)
        api.catch_up()
        other.catch_up()
        m4, sep = ChainSigner(cast.keys["MINE04"]), ChainSigner(cast.keys["SEP01"])
        mlot, tid = lot(), "T-" + uuid.uuid4().hex[:8]
        line = {"lot": mlot, "product": "RE_CONCENTRATE", "kg": "10500.5", "reo_kg": "5796.276"}
        other.submit([m4.sign("MineralProductProduced", mineral(mlot), T0),
                      m4.sign("TransferShipped", {"transfer_id": tid, "buyer": "SEP01", "lines": [line],
                                                  "vat_invoice_no": "0447-9",
                                                  "shipped_at": "2024-01-20T08:00:00Z"}, T0)])
        size = s1.size()
        received = sep.sign("TransferReceived", {"transfer_id": tid, "seller": "MINE04", "lines": [line],
                                                 "received_at": "2024-01-21T10:30:00Z"}, T0)
        assert api.submit([received])[0].index == size
        other.submit([m4.sign("MineralProductProduced", mineral(lot()), T0)])  # the state is behind again
        unknown = sep.peek("TransferReceived", {"transfer_id": "T-NOBODY", "seller": "MINE04", "lines": [line],
                                                "received_at": "2024-01-21T10:30:00Z"}, T0)
        with pytest.raises(CommandError) as err:
            api.submit([unknown])
        assert err.value.status == 404 and s1.size() == size + 2 and api.state.size == size + 2


def test_a_group_reads_its_own_and_its_members_quota_lines_and_nobody_elses(live):
    """DOMAIN.md "Confidential figures" over HTTP (2025: figures confidential): a group's
    GET /v1/quota holds its own line and its members' (the enterprise it sub-allocated to, the
    one whose output counts to it), not another enterprise's nor the nation's; its findings hold
    its group-level over-quota finding with its own figures and its members' quota findings; a
    member reads only its own line, and the group's finding about it without the group's
    figures."""
    u = uuid.uuid4().hex[:6].upper()
    grp, m1, m2, other = f"GRPQ{u}", f"MQA{u}", f"MQB{u}", f"MQC{u}"
    at = "2025-03-03T02:00:00Z"
    reg = live.signer("MIIT")
    keys = {p: SigningKey.generate(p) for p in (grp, m1, m2, other)}
    items = [reg.sign("PartyRegistered", {"party": grp, "name": "a group", "roles": ["GROUP"], "province": "Jiangxi",
                                          "valid_from": T0}, at)]
    for p in (m1, m2, other):
        body = {"party": p, "name": f"{p} Co.", "roles": ["MINE"], "province": "Jiangxi", "valid_from": T0}
        if p != other:
            body["group"] = grp
        items.append(reg.sign("PartyRegistered", body, at))
    for p, k in keys.items():
        items.append(reg.sign("KeyAuthorized", key_authorized_body(k, T0), at))
    items.append(reg.sign("QuotaBatchIssued", {"year": 2025, "batch_no": 1, "document_no": f"Q{u}", "holder": grp,
                                               "mining_rock_t_reo": "2", "mining_ionic_t_reo": "0",
                                               "separation_t_reo": "0"}, at))
    items.append(reg.sign("QuotaBatchIssued", {"year": 2025, "batch_no": 1, "document_no": f"Q{u}O", "holder": other,
                                               "mining_rock_t_reo": "5", "mining_ionic_t_reo": "0",
                                               "separation_t_reo": "0"}, at))
    assert live.post_envelopes([s.envelope for s in items]).status_code == 201
    for p, k in keys.items():
        live.cast.keys[p] = k
    g = live.signer(grp)
    assert live.post_envelopes([g.sign("QuotaSubAllocated", {"batch": {"year": 2025, "batch_no": 1}, "enterprise": m1,
                                                             "category": "MINING_ROCK", "t_reo": "1.5"}, at).envelope
                                ]).status_code == 201
    for p, lot_id, dry in ((m2, f"L{u}B", "2000"), (other, f"L{u}C", "2000"), (m1, f"L{u}A", "3000")):
        s = live.signer(p)
        reo = str(int(dry) // 2)
        body = {"lot": lot_id, "ore_type": "ROCK", "wet_kg": dry, "dry_kg": dry, "treo_pct": "50", "reo_kg": reo}
        assert live.post_envelopes([s.sign("MineralProductProduced", body, "2025-03-04T02:00:00Z").envelope
                                    ]).status_code == 201
    # the group: its own line, its members' (m1 sub-allocated, m2 counted to it), not `other`'s
    q = live.get(grp, "/v1/quota?year=2025").json()
    assert {e["party"] for e in q["enterprises"]} == {m1, m2}
    assert [x["group"] for x in q["groups"]] == [grp] and q["groups"][0]["used_t"] == "2.5"
    assert q["nation"] == []
    # a member: its own line only
    q1 = live.get(m1, "/v1/quota?year=2025").json()
    assert {e["party"] for e in q1["enterprises"]} == {m1} and q1["groups"] == []
    # the regulator: everything
    qr = live.get("MIIT", "/v1/quota?year=2025").json()
    assert {m1, m2, other} <= {e["party"] for e in qr["enterprises"]} and qr["nation"]
    # findings: m1's 1.5 t (within its 1.5 t) takes the group's use to 2.5 t against its 2 t: a
    # group-level finding on the member whose output did it
    fg = [f for f in live.get(grp, "/v1/findings").json()["findings"] if f["rule"] == "quota"]
    own = [f for f in fg if f["code"] == "OVER_QUOTA" and f["params"]["level"] == "group"]
    assert own and own[0]["params"]["holder"] == grp and own[0]["params"]["limit_kg"] == "2000"
    assert all(f["party"] in (grp, m1, m2) for f in fg)
    assert not [f for f in fg if f["party"] == other]
    assert live.get(grp, f"/v1/findings?party={m1}").status_code == 200
    assert live.get(grp, f"/v1/findings?party={other}").status_code == 403
    fm = [f for f in live.get(m1, "/v1/findings").json()["findings"] if f["code"] == "OVER_QUOTA"]
    assert fm and all("limit_kg" not in f["params"] for f in fm if f["params"]["level"] != "enterprise")
    assert live.get(m1, f"/v1/findings?party={m2}").status_code == 403
