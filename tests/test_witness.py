"""Witnessed checkpoints: C2SP tlog-cosignature, tlog-policy and tlog-witness.

Unit tests of the cosignature formats and the policy language, the witness's add-checkpoint
rules status by status, and end to end: three witnesses as separate processes, a 2-of-3 policy
that still publishes with one witness down, and a fork (a second root at a cosigned size) that
every witness refuses and a verifier names from the two cosigned notes (both backends).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ORIGIN, new_ledger
from reledger.commands.witness import (Witness, WitnessError, WitnessState, add_checkpoint_request, cosign,
                                       parse_add_checkpoint, read_key_file, write_key_file)
from reledger.ledger import merkle
from reledger.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from reledger.ledger.keys import SigningKey
from reledger.ledger.cosignature import (COSIG_ED25519, COSIG_MLDSA44, EMPTY_ROOT, CheckedCheckpoint,
                                         CosignatureError, CosignatureSigner, CosignatureVerifier, Policy,
                                         cosignatures, cosigner_key_id, ed25519_message, mldsa_message, split_view)

LOG = NoteSigner(ORIGIN, __import__("cryptography.hazmat.primitives.asymmetric.ed25519",
                                    fromlist=["x"]).Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
W_ED = CosignatureSigner("witness.example/w1", COSIG_ED25519, bytes([7]) * 32)
W_PQ = CosignatureSigner("witness.example/w1", COSIG_MLDSA44, bytes([8]) * 32)


def tree(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"leaf %d" % i) for i in range(n)]


def root_of(leaves: list[bytes]) -> bytes:
    """A naive full Merkle tree (RFC 9162 2.1.1), the reference for the witness's proofs."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def proof(leaves: list[bytes], m: int, n: int) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF, written out naively: the reference for the witness's check."""

    def subproof(m: int, d: list[bytes], whole: bool) -> list[bytes]:
        if m == len(d):
            return [] if whole else [root_of(d)]
        k = 1
        while k * 2 < len(d):
            k *= 2
        if m <= k:
            return subproof(m, d[:k], whole) + [root_of(d[k:])]
        return subproof(m - k, d[k:], False) + [root_of(d[:k])]

    return subproof(m, leaves[:n], True)


def note(size: int, root: bytes, signer: NoteSigner = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(signer.name, size, root), signer)


# --- formats -------------------------------------------------------------------------------------

def test_cosignature_key_ids_and_messages_are_the_specs():
    pub = W_ED.verifier().public_key
    assert W_ED.key_id == hashlib.sha256(b"witness.example/w1\n\x04" + pub).digest()[:4]
    assert W_PQ.key_id == cosigner_key_id("witness.example/w1", 0x06, W_PQ.verifier().public_key)
    assert len(W_PQ.verifier().public_key) == 1312
    cp = Checkpoint("example.com/behind-the-sofa", 20852163, bytes(32))
    assert ed25519_message(cp.body(), 1679315147) == (b"cosignature/v1\ntime 1679315147\n"
                                                      b"example.com/behind-the-sofa\n20852163\n"
                                                      + base64.b64encode(bytes(32)) + b"\n")
    m = mldsa_message("w", 5, cp)
    assert m == (b"subtree/v1\n\x00" + b"\x01w" + struct.pack(">Q", 5) + b"\x1bexample.com/behind-the-sofa"
                 + struct.pack(">QQ", 0, 20852163) + bytes(32))


@pytest.mark.parametrize("signer", [W_ED, W_PQ], ids=["ed25519", "ml-dsa-44"])
def test_a_cosignature_verifies_and_any_change_is_refused(signer):
    n = note(5, root_of(tree(5)))
    line = signer.cosign(Checkpoint.parse(n.split(b"\n\n")[0] + b"\n"), 1700000000)
    cosigned = n + line.encode()
    assert cosignatures(cosigned, [signer.verifier()]) == {signer.verifier(): 1700000000}
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    for pos in (4, 11, len(raw) - 1):  # the timestamp, the signature
        bad = bytearray(raw)
        bad[pos] ^= 1
        tampered = n + f"— {signer.name} {base64.b64encode(bytes(bad)).decode()}\n".encode()
        with pytest.raises(CosignatureError):
            cosignatures(tampered, [signer.verifier()])
    other = note(5, root_of(tree(6)[:5][::-1]))  # another root: the cosignature does not carry over
    with pytest.raises(CosignatureError):
        cosignatures(other + line.encode(), [signer.verifier()])
    assert cosignatures(n + line.encode(), [W_ED.verifier() if signer is W_PQ else W_PQ.verifier()]) == {}


def test_keys_round_trip_and_malformed_keys_are_refused():
    for s in (W_ED, W_PQ):
        assert CosignatureSigner.from_skey(s.skey()).verifier() == s.verifier()
        assert CosignatureVerifier.from_vkey(s.verifier().vkey()) == s.verifier()
    vkey = W_ED.verifier().vkey()
    name, kid, b64 = vkey.split("+")
    for bad in (f"{name}+00000000+{b64}", f"{name}+{kid}", "x" * 10, f"other.example+{kid}+{b64}",
                f"{name}+{kid}+" + base64.b64encode(b"\x01" + W_ED.verifier().public_key).decode()):
        with pytest.raises(CosignatureError):
            CosignatureVerifier.from_vkey(bad)


def policy_text(*witnesses: CosignatureSigner, quorum: str = "2", urls: dict | None = None) -> bytes:
    lines = [f"log {LOG.verifier().vkey()}"]
    for i, w in enumerate(witnesses):
        url = f" {urls[i]}" if urls else ""
        lines.append(f"witness w{i} {w.verifier().vkey()}{url}")
    lines.append(f"group main {quorum} " + " ".join(f"w{i}" for i in range(len(witnesses))))
    lines.append("quorum main")
    return ("\n".join(lines) + "\n").encode()


def test_the_policy_language():
    ws = [CosignatureSigner(f"w{i}.example", COSIG_ED25519, bytes([i + 1]) * 32) for i in range(3)]
    p = Policy.parse(b"# comment\n\n" + policy_text(*ws))
    assert p.met_by({"w0", "w2"}) and not p.met_by({"w1"}) and p.quorum == "main"
    nested = Policy.parse(policy_text(*ws, quorum="any") .replace(b"quorum main", b"group both all main w2\nquorum both"))
    assert nested.met_by({"w0", "w2"}) and not nested.met_by({"w0", "w1"})
    assert Policy.parse(f"log {LOG.verifier().vkey()}\nquorum none\n".encode()).met_by(set())
    v = ws[0].verifier().vkey()
    for bad in (b"quorum none\nquorum none\n",                      # two quorum lines
                b"log x\nquorum none\n",                            # not a vkey
                f"witness a {v}\nwitness b {v}\nquorum a\n".encode(),  # duplicate key
                f"witness a {v}\ngroup g 2 a\nquorum g\n".encode(),    # k > n
                f"witness a {v}\ngroup g any a a\nquorum g\n".encode(),  # member twice
                b"group g any later\nquorum g\n",                   # used before defined
                f"witness a {v}\n".encode(),                        # no quorum
                f"witness a {v}\nquorum a\nfrobnicate\n".encode(),  # unknown keyword
                f"witness a {v}\x00\nquorum a\n".encode()):         # control character
        with pytest.raises(CosignatureError):
            Policy.parse(bad)


def test_a_checkpoint_under_a_policy():
    ws = [CosignatureSigner(f"w{i}.example", COSIG_ED25519, bytes([i + 1]) * 32) for i in range(3)]
    p = Policy.parse(policy_text(*ws))
    n = note(3, root_of(tree(3)))
    cp = Checkpoint.parse(n.split(b"\n\n")[0] + b"\n")
    with pytest.raises(CosignatureError, match="quorum"):
        p.check(n + ws[0].cosign(cp, 10).encode())
    ok = p.check(n + ws[0].cosign(cp, 10).encode() + ws[2].cosign(cp, 11).encode())
    assert ok.cosigned_by == {"w0": 10, "w2": 11}
    stranger = NoteSigner("someone.else/log", LOG.private_key)  # the log's key under another name
    with pytest.raises(CosignatureError):
        p.check(note(3, cp.root, stranger) + ws[0].cosign(cp, 10).encode() + ws[1].cosign(cp, 1).encode())


# --- the witness's rules ---------------------------------------------------------------------------

@pytest.fixture
def witness(tmp_path):
    state = WitnessState(tmp_path / "w.db")
    yield Witness([W_ED, W_PQ], [LOG.verifier()], state, clock=lambda: 1_700_000_000)
    state.close()


def test_add_checkpoint_statuses(witness):
    leaves = tree(20)
    n10, n15 = note(10, root_of(leaves[:10])), note(15, root_of(leaves[:15]))
    first = witness.add_checkpoint(add_checkpoint_request(0, [], n10))
    assert first.status == 200
    lines = first.body.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("— witness.example/w1 ") for line in lines)
    got = cosignatures(n10 + first.body, [W_ED.verifier(), W_PQ.verifier()])
    assert set(got.values()) == {1_700_000_000}
    # the wrong old size: 409 with the witness's size
    stale = witness.add_checkpoint(add_checkpoint_request(0, [], n15))
    assert (stale.status, stale.body, stale.content_type) == (409, b"10\n", "text/x.tlog.size")
    # a bad proof, a proof of the wrong tree: 422, nothing recorded
    bad = witness.add_checkpoint(add_checkpoint_request(10, proof(tree(15)[::-1], 10, 15), n15))
    assert bad.status == 422 and witness.state.latest(ORIGIN)[0] == 10
    assert witness.add_checkpoint(add_checkpoint_request(10, proof(leaves, 10, 15), n15)).status == 200
    assert witness.state.latest(ORIGIN)[0] == 15
    # a second root at the cosigned size: a fork, refused and kept as evidence
    fork = note(15, root_of(leaves[:14] + [merkle.leaf_hash(b"other")]))
    assert witness.add_checkpoint(add_checkpoint_request(15, [], fork)).status == 422
    assert any("fork" in reason for _, _, reason in witness.state.refused())
    # the same checkpoint again: cosigned again
    assert witness.add_checkpoint(add_checkpoint_request(15, [], n15)).status == 200
    # old above the checkpoint's size: 400
    assert witness.add_checkpoint(add_checkpoint_request(16, [], n15)).status == 400
    # unknown origin 404; unsigned by the log 403; size 0 with a root that is not empty 422
    other = NoteSigner("other.example/log", LOG.private_key)
    assert witness.add_checkpoint(add_checkpoint_request(0, [], note(1, leaves[0], other))).status == 404
    forged = NoteSigner(ORIGIN, __import__("cryptography.hazmat.primitives.asymmetric.ed25519",
                                           fromlist=["x"]).Ed25519PrivateKey.generate())
    assert witness.add_checkpoint(add_checkpoint_request(15, [], note(15, root_of(leaves[:15]), forged))).status == 403


def test_add_checkpoint_refuses_malformed_requests_and_odd_proofs(tmp_path):
    state = WitnessState(tmp_path / "w.db")
    w = Witness([W_ED], [LOG.verifier()], state)
    n = note(2, root_of(tree(2)))
    for body in (b"", b"old 01\n\n" + n, b"old x\n\n" + n, b"old 0\n" + n, b"old 0\nnot base64!\n\n" + n,
                 b"old 0\n" + base64.b64encode(b"short") + b"\n\n" + n,
                 b"old 0\n" + b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(64)) + b"\n" + n):
        assert w.add_checkpoint(body).status == 400, body[:30]
    assert w.add_checkpoint(add_checkpoint_request(0, [bytes(32)], n)).status == 422  # proof with old 0
    assert w.add_checkpoint(add_checkpoint_request(0, [], note(0, bytes(32)))).status == 422  # empty tree root
    assert w.add_checkpoint(add_checkpoint_request(0, [], note(0, EMPTY_ROOT))).status == 200
    assert state.latest(ORIGIN)[0] == 0
    with pytest.raises(ValueError):
        parse_add_checkpoint(b"old 1\n")
    state.close()


def test_witness_key_files(tmp_path):
    path = tmp_path / "w.key"
    write_key_file(path, [W_ED, W_PQ])
    assert [s.skey() for s in read_key_file(path)] == [W_ED.skey(), W_PQ.skey()]
    assert (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(WitnessError):
        write_key_file(path, [W_ED])  # never overwritten unless asked
    (tmp_path / "pq-only.key").write_text(W_PQ.skey() + "\n")
    with pytest.raises(WitnessError, match="Ed25519"):
        read_key_file(tmp_path / "pq-only.key")
    (tmp_path / "junk.key").write_text("PRIVATE+KEY+junk\n")
    with pytest.raises(WitnessError):
        read_key_file(tmp_path / "junk.key")


# --- end to end: witnesses as processes, the operator's checkpointer -----------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reledger(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reledger", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def witness_key(path: Path, i: int) -> tuple[Path, list[str]]:
    """A witness's key file made by ``reledger witness keygen``, and its vkeys."""
    out = reledger("witness", "keygen", "--key", str(path), "--name", f"witness{i}.example", "--json", check=True)
    return path, json.loads(out.stdout)["vkeys"]


class WitnessProcess:
    """``reledger witness serve`` on a free port, its state in ``tmp`` (its own: a witness holds
    the tree it cosigned last), its key made for it or given (``key``: (file, vkeys))."""

    def __init__(self, tmp: Path, i: int, log_vkey: str, key: tuple[Path, list[str]] | None = None) -> None:
        self.state, self.port = tmp / f"w{i}.db", free_port()
        self.log_vkey, self.proc = log_vkey, None
        self.key, self.vkeys = key or witness_key(tmp / f"w{i}.key", i)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "reledger", "witness", "serve", "--key", str(self.key),
                                      "--state", str(self.state), "--log", self.log_vkey, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # it says where it listens once it does
        assert "listening on" in line, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def three_witnesses(tmp_path):
    ws: list[WitnessProcess] = []
    yield ws, tmp_path
    for w in ws:
        w.stop()


def test_two_of_three_witnesses_publish_and_a_fork_is_refused_and_named(db_url, three_witnesses):
    ws, tmp = three_witnesses
    led = new_ledger(db_url)
    try:
        log_vkey = led.note_signer.verifier().vkey()
        ws += [WitnessProcess(tmp, i, log_vkey) for i in range(3)]
        key_file = tmp / "operator.key"
        ck = led.checkpoint_key
        SigningKey(ck.party, ck.private_key, "checkpoint", ORIGIN).write(key_file)
        policy = [f"log {log_vkey}"] + [f"witness w{i} {w.vkeys[0]} {w.url}" for i, w in enumerate(ws)]
        policy += ["group two-of-three 2 w0 w1 w2", "quorum two-of-three"]
        (tmp / "policy").write_text("\n".join(policy) + "\n")
        base = ("--db", db_url, "--key", str(key_file), "--policy", str(tmp / "policy"), "--witness-timeout", "5")

        # a checkpoint the operator alone signed at this size: the policy refuses to pass it off
        led.checkpoint()
        out = reledger("checkpoint", *base)
        assert out.returncode == 1 and "has not grown" in out.stderr, out.stderr

        # none up: nothing is published
        led.register("91110000MINE0001")
        out = reledger("checkpoint", *base)
        assert out.returncode == 1 and "not published" in out.stderr
        assert led.store.latest_checkpoint()[0] < led.store.size()  # nothing stored at the new size

        # two of three up: published, cosigned by both
        ws[0].start()
        ws[1].start()
        out = reledger("checkpoint", *base, "--json", check=True)
        first = json.loads(out.stdout)
        assert [w["cosigned"] for w in first["witnesses"]] == [True, True, False]
        note1 = led.store.latest_checkpoint()[2]
        pol = Policy.parse((tmp / "policy").read_bytes())
        assert set(pol.check(note1).cosigned_by) == {"w0", "w1"}

        # the log grows; the third comes up: all three cosign (w2 from 0, the others with a proof)
        led.add("91110000MINE0001", 3)
        ws[2].start()
        out = reledger("checkpoint", *base, "--json", check=True)
        assert [w["cosigned"] for w in json.loads(out.stdout)["witnesses"]] == [True, True, True]
        note2 = led.store.latest_checkpoint()[2]
        size2 = led.store.size()
        assert set(pol.check(note2).cosigned_by) == {"w0", "w1", "w2"}

        # a fork: the operator signs another root at the cosigned size. Every witness refuses it
        forked = sign_checkpoint(Checkpoint(led.note_signer.name, size2, hashlib.sha256(b"fork").digest()),
                                 led.note_signer)
        for w in ws:
            from reledger.commands.witness import submit

            status, _ = submit(w.url, size2, [], forked)
            assert status == 422
        with pytest.raises(CosignatureError, match="quorum"):
            cosign(forked, pol, lambda old: led.store.consistency_proof(old, size2), size2, timeout=5)

        # a witness that never saw this log cosigns the fork; a verifier given both notes names the split
        fresh = WitnessProcess(tmp, 3, log_vkey)
        ws.append(fresh)
        fresh.start()
        status, body = submit(fresh.url, 0, [], forked)
        assert status == 200
        one = CheckedCheckpoint(Checkpoint.parse(note2.split(b"\n\n")[0] + b"\n"), pol.check(note2).cosigned_by)
        other_cp = Checkpoint.parse(forked.split(b"\n\n")[0] + b"\n")
        assert cosignatures(forked + body, [__import__("reledger.ledger.cosignature", fromlist=["x"])
                                           .CosignatureVerifier.from_vkey(fresh.vkeys[0])])
        split = split_view(one, CheckedCheckpoint(other_cp, {"w3": 1}))
        assert split and "split view" in split and str(size2) in split
        # and the earlier, smaller checkpoint is consistent with the later one: no split named
        small = CheckedCheckpoint(Checkpoint.parse(note1.split(b"\n\n")[0] + b"\n"), {})
        size1 = small.checkpoint.size
        assert split_view(small, one, led.store.consistency_proof(size1, size2)) is None
        assert split_view(small, CheckedCheckpoint(other_cp, {}), led.store.consistency_proof(size1, size2))

        # the whole log still verifies with the cosigned checkpoints in it
        genesis = led.store.record(0).entry_hash.hex()
        assert reledger("verify", "--db", db_url, "--genesis", genesis).returncode == 0
    finally:
        led.close()


def test_witness_command_refuses_bad_input(tmp_path):
    out = reledger("witness", "serve", "--key", str(tmp_path / "missing.key"))
    assert out.returncode == 2 and "missing.key" in out.stderr
    reledger("witness", "keygen", "--key", str(tmp_path / "w.key"), "--name", "w.example", check=True)
    out = reledger("witness", "keygen", "--key", str(tmp_path / "w.key"), "--name", "w.example")
    assert out.returncode == 2 and "exists" in out.stderr
    out = reledger("witness", "serve", "--key", str(tmp_path / "w.key"), "--log", "not-a-vkey")
    assert out.returncode == 2 and "--log" in out.stderr
    vk = reledger("witness", "vkey", "--key", str(tmp_path / "w.key"), check=True).stdout.split()
    assert len(vk) == 2 and all(CosignatureVerifier.from_vkey(v) for v in vk)
    (tmp_path / "bad.policy").write_text("quorum nobody\n")
    out = reledger("checkpoint", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--policy", str(tmp_path / "bad.policy"),
                   "--key", str(tmp_path / "w.key"))
    assert out.returncode == 2
