"""Post-quantum checkpoints (FORMAT.md 5.4): the log's checkpoint key pair (Ed25519 + ML-DSA-44),
registered in one KeyAuthorized entry; every checkpoint carries both signatures; whole-log
verify, verify-bundle, verify-proof and a pinned trust file require the ML-DSA-44 one of a key
that has it, and refuse it missing or bad. Entries stay Ed25519 (format v1)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from helpers import ORIGIN, T0, REGULATOR_ID, seeded_key
from reledger.ledger import rules
from reledger.ledger.checkpoint import NoteVerifier, open_note
from reledger.ledger.cosignature import (COSIG_MLDSA44, CosignatureError, CosignatureSigner, Policy, cosignatures,
                                         log_signer, signature_lines)
from reledger.ledger.genesis import ChainSigner, genesis_entries, key_authorized_body
from reledger.ledger.keys import KeyError_, SigningKey
from reledger.ledger.registry import Registry, RegistryError
from reledger.ledger.trust import Trust, TrustError
from reledger.storage.store import LedgerStore


def pq_key(n: int = 7) -> SigningKey:
    return SigningKey.from_seed(REGULATOR_ID, bytes([n]) * 32, "checkpoint", ORIGIN, bytes([n + 1]) * 32)


def reledger(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reledger", *args], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def pq_ledger(db_url):
    reg = ChainSigner(seeded_key(REGULATOR_ID, 1))
    ck = pq_key()
    store = LedgerStore(db_url)
    store.append(genesis_entries(reg, ck, name="Ministry", origin=ORIGIN, at=T0))
    mine = seeded_key("91110000MINE0001", 3)
    store.append([reg.sign("PartyRegistered", {"party": mine.party, "name": "a mine", "roles": ["MINE"],
                                               "valid_from": T0}, T0),
                  reg.sign("KeyAuthorized", key_authorized_body(mine, T0), T0)])
    chain = ChainSigner(mine)
    store.append([chain.sign("MiningOutput", {"qty": "1.5"}, T0) for _ in range(3)])
    try:
        yield store, reg, ck, chain
    finally:
        store.close()


def test_a_checkpoint_carries_the_ed25519_and_the_ml_dsa_44_line(pq_ledger):
    store, _, ck, _ = pq_ledger
    signer = log_signer(ck)
    note = store.checkpoint(signer)
    text, lines = signature_lines(note)
    assert [name for name, _, _ in lines] == [ORIGIN, ORIGIN]
    assert [len(sig) for _, _, sig in lines] == [64, 8 + 2420]
    # an Ed25519-only verifier (signed-note) ignores the ML-DSA-44 line
    ed_only = NoteVerifier.from_vkey(signer.verifier().vkey())
    assert open_note(note, [ed_only])[0] == text
    # the ML-DSA-44 line is a tlog-cosignature of type 0x06 under the log's name
    pq = signer.mldsa.verifier()
    assert pq.vkey().split("+")[0] == ORIGIN and base64.b64decode(pq.vkey().split("+", 2)[2])[0] == COSIG_MLDSA44
    assert pq in cosignatures(note, [pq])
    rep = rules.checkpoint(note, rules.checkpoint_verifiers(store.registry(store.size()), store.size()))
    assert rep.size == store.size()


def unstored_note(store: LedgerStore, ck: SigningKey) -> bytes:
    """The checkpoint the store would sign now, not stored (its rows are append-only)."""
    from reledger.ledger import heads as chain_heads
    from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint

    size = store.size()
    line = chain_heads.line(store.queries.chain_heads(store.read_cursor(), size))
    return sign_checkpoint(Checkpoint(ORIGIN, size, store.root(size), (line,)), log_signer(ck), 1_700_000_000)


def without_pq(note: bytes) -> bytes:
    return note[:note.index(b"\n", note.rindex(b"\n\n") + 2) + 1]  # up to the Ed25519 line


@pytest.mark.parametrize("how", ["stripped", "flipped"])
def test_whole_log_verify_refuses_a_missing_or_bad_ml_dsa_line(pq_ledger, how):
    from reledger.storage.verify import verify_database

    store, _, ck, _ = pq_ledger
    note = unstored_note(store, ck)
    if how == "stripped":
        bad, why = without_pq(note), "no ML-DSA-44 signature"
    else:
        raw = bytearray(base64.b64decode(note.rstrip(b"\n").rsplit(b" ", 1)[1]))
        raw[-1] ^= 1
        bad = without_pq(note) + "\u2014 ".encode() + ORIGIN.encode() + b" " + base64.b64encode(bytes(raw)) + b"\n"
        why = "invalid cosignature"
    store.recorder.write_checkpoint(store.size(), store.root(store.size()), bad, store.clock())
    rep = verify_database(store.url)
    assert not rep.ok and why in str(rep.problems), rep.problems


def test_the_store_refuses_a_key_file_without_its_registered_ml_dsa_half(pq_ledger):
    store, _, ck, _ = pq_ledger
    half = SigningKey.from_seed(ck.party, ck.seed, "checkpoint", ORIGIN)  # the same Ed25519 key, no ML-DSA-44
    with pytest.raises(ValueError, match="ML-DSA-44"):
        store.checkpoint(log_signer(half))


def test_a_bundle_with_a_pq_checkpoint_verifies_and_a_stripped_one_does_not(pq_ledger, tmp_path):
    from reledger.ledger.bundle import decode_bundle, encode_bundle, verify_bundle
    from reledger.replay.export import build_bundle

    store, _, ck, chain = pq_ledger
    store.checkpoint(log_signer(ck))
    data, _ = build_bundle(store.url, chain.chain)
    assert verify_bundle(data).ok
    b = decode_bundle(data)
    note = b["checkpoint"]
    stripped = note[:note.index(b"\n", note.rindex(b"\n\n") + 2) + 1]
    rebuilt = encode_bundle(b["party"], stripped, b["entries"], b["consistency"], b.get("heads"))
    rep = verify_bundle(rebuilt)
    assert not rep.ok and any("ML-DSA-44" in p for p in rep.problems), rep.problems
    # an auditor pinning both vkeys requires it even of a log whose registry would not say so
    signer = log_signer(ck)
    keys = [signer.verifier().vkey(), signer.mldsa.verifier().vkey()]
    assert verify_bundle(data, trusted_checkpoint_keys=keys).ok
    assert not verify_bundle(rebuilt, trusted_checkpoint_keys=keys).ok


def test_registry_and_catalogue_keep_entries_ed25519():
    from reledger.commands.catalogue import SCHEMAS

    reg = ChainSigner(seeded_key(REGULATOR_ID, 1))
    ck = pq_key()
    genesis = genesis_entries(reg, ck, name="Ministry", origin=ORIGIN, at=T0)
    r = Registry()
    for i, s in enumerate(genesis):
        r.apply(s, i)
    assert r.keys[ck.key_id].mldsa_public_key == ck.mldsa_public_key
    body = key_authorized_body(seeded_key("X", 9), T0)
    body["mldsa44_public_key"] = ck.mldsa_public_key  # on an entries key
    bad = reg.sign("KeyAuthorized", body, T0)
    with pytest.raises(RegistryError, match="only a checkpoint key"):
        r.apply(bad, 3)
    short = dict(key_authorized_body(seeded_key("Y", 10, "checkpoint"), T0, name=ORIGIN), mldsa44_public_key=b"x" * 32)
    with pytest.raises(RegistryError, match="1312 bytes"):
        r.apply(reg.sign("KeyAuthorized", short, T0), 3)
    assert "mldsa44_public_key" in json.dumps(SCHEMAS["KeyAuthorized"].body.json_schema())
    with pytest.raises(KeyError_, match="only a checkpoint key"):
        SigningKey.from_seed("X", bytes(32), "entries", None, bytes(32))


def test_key_files_round_trip_and_refuse_a_mismatched_ml_dsa_key(tmp_path):
    k = pq_key()
    k.write(tmp_path / "op.key")
    back = SigningKey.read(tmp_path / "op.key")
    assert back.to_json() == k.to_json() and back.mldsa_public_key == k.mldsa_public_key
    data = json.loads((tmp_path / "op.key").read_text())
    data["mldsa44_public_key"] = base64.b64encode(pq_key(20).mldsa_public_key).decode()
    with pytest.raises(KeyError_, match="does not match"):
        SigningKey.from_json(data)
    del data["mldsa44_private_key"]
    with pytest.raises(KeyError_, match="without"):
        SigningKey.from_json(data)


def test_a_trust_file_pinning_the_ml_dsa_key_requires_it(pq_ledger, tmp_path):
    store, _, ck, _ = pq_ledger
    signer = log_signer(ck)
    note = store.checkpoint(signer)
    genesis = store.record(0).entry_hash.hex()
    t = Trust(genesis, signer.verifier().vkey(), log_mldsa_vkey=signer.mldsa.verifier().vkey())
    assert t.check_note(note).size == store.size()
    stripped = note[:note.index(b"\n", note.rindex(b"\n\n") + 2) + 1]
    with pytest.raises(TrustError, match="no ML-DSA-44 signature"):
        t.check_note(stripped)
    assert Trust(genesis, signer.verifier().vkey()).check_note(stripped)  # without the pin: Ed25519 is enough
    with pytest.raises(TrustError, match="type 0x06"):
        Trust(genesis, signer.verifier().vkey(), log_mldsa_vkey=CosignatureSigner(ORIGIN, 0x04, bytes(32)).verifier().vkey())
    with pytest.raises(TrustError, match="name"):
        Trust(genesis, signer.verifier().vkey(),
              log_mldsa_vkey=CosignatureSigner("other.example", COSIG_MLDSA44, bytes(32)).verifier().vkey())
    # a file of the five keys before log_mldsa_vkey existed still reads
    old = json.loads(t.text())
    del old["log_mldsa_vkey"]
    (tmp_path / "old.trust").write_text(json.dumps(old))
    assert Trust.read(tmp_path / "old.trust").log_mldsa_vkey is None


def test_a_policy_requires_the_log_pq_signature_two_ways(pq_ledger):
    store, _, ck, _ = pq_ledger
    signer = log_signer(ck)
    note = store.checkpoint(signer)
    stripped = note[:note.index(b"\n", note.rindex(b"\n\n") + 2) + 1]
    ed, pq = signer.verifier().vkey(), signer.mldsa.verifier().vkey()
    # 1. the log's ML-DSA-44 key listed as a witness in an `all` group with the others
    p = Policy.parse(f"log {ed}\nwitness log-pq {pq}\ngroup q all log-pq\nquorum q\n".encode())
    assert p.check(note).cosigned_by.keys() == {"log-pq"}
    with pytest.raises(CosignatureError, match="no valid cosignature from log-pq"):
        p.check(stripped)
    # 2. a policy that knows the log by its ML-DSA-44 key alone (tlog-checkpoint: logs SHOULD sign so)
    p = Policy.parse(f"log {pq}\nquorum none\n".encode())
    assert p.check(note).checkpoint.size == store.size()
    assert p.lists_log(signer) and not p.lists_log(log_signer(pq_key(30)))  # checkpoint --policy accepts it
    with pytest.raises(CosignatureError, match="not signed by a log"):
        p.check(stripped)
    with pytest.raises(CosignatureError, match="duplicate"):
        Policy.parse(f"log {pq}\nlog {pq}\nquorum none\n".encode())


def test_cli_init_keygen_vkey_trust_and_verify_proof(tmp_path, db_url):
    keys = tmp_path / "keys"
    out = reledger("init", "--db", db_url, "--keys", str(keys), "--json")
    assert out.returncode == 0, out.stderr
    init = json.loads(out.stdout)
    assert init["checkpoint_mldsa_vkey"].startswith("reledger.example/national+")
    vk = reledger("vkey", "--key", str(keys / "operator.key")).stdout.split()
    assert vk == [init["checkpoint_vkey"], init["checkpoint_mldsa_vkey"]]
    trust = tmp_path / "a.trust"
    assert reledger("trust", "init", "--trust", str(trust), "--genesis", init["genesis"], "--log-vkey", vk[0],
                    "--log-mldsa-vkey", vk[1]).returncode == 0
    out = reledger("verify", "--db", db_url, "--trust", str(trust))
    assert out.returncode == 0, out.stdout + out.stderr
    proof = reledger("prove", "--db", db_url, "--entry", "MIIT:1", "--tlog-proof")
    assert proof.returncode == 0, proof.stderr
    (tmp_path / "p").write_text(proof.stdout)
    assert reledger("verify-proof", str(tmp_path / "p"), "--trust", str(trust)).returncode == 0
    text = proof.stdout
    cut = text[:text.index("\n", text.rindex("\n\n") + 2) + 1]  # without the ML-DSA-44 line
    (tmp_path / "q").write_text(cut)
    out = reledger("verify-proof", str(tmp_path / "q"), "--trust", str(trust))
    assert out.returncode == 1 and "ML-DSA-44" in out.stdout, out.stdout
    out = reledger("keygen", "--party", "MIIT", "--purpose", "checkpoint", "--name", "x.example/log",
                   "--out", str(tmp_path / "k2"), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["mldsa44_public_key"], out.stderr
    assert reledger("keygen", "--party", "MIIT", "--no-ml-dsa", "--out", str(tmp_path / "k3")).returncode == 2
    assert reledger("trust", "init", "--trust", str(tmp_path / "b.trust"), "--genesis", init["genesis"],
                    "--log-vkey", vk[0], "--log-mldsa-vkey", "x+00000000+AA==").returncode == 2



def test_verify_refuses_a_log_without_the_pinned_ml_dsa_signature(tmp_path, db_url):
    """A log whose checkpoint key has no ML-DSA-44 half (init --no-ml-dsa), against a trust file
    that pins an ML-DSA-44 log key: verify fails (exit 1) and names what is missing."""
    out = reledger("init", "--db", db_url, "--keys", str(tmp_path / "keys"), "--no-ml-dsa", "--json")
    assert out.returncode == 0, out.stderr
    init = json.loads(out.stdout)
    assert init["checkpoint_mldsa_vkey"] is None
    vk = reledger("vkey", "--key", str(tmp_path / "keys" / "operator.key")).stdout.split()
    assert vk == [init["checkpoint_vkey"]]
    other = CosignatureSigner("reledger.example/national", COSIG_MLDSA44, bytes(32)).verifier().vkey()
    trust = tmp_path / "a.trust"
    assert reledger("trust", "init", "--trust", str(trust), "--genesis", init["genesis"], "--log-vkey", vk[0],
                    "--log-mldsa-vkey", other).returncode == 0
    out = reledger("verify", "--db", db_url, "--trust", str(trust))
    assert out.returncode == 1 and "no ML-DSA-44 signature" in out.stdout, out.stdout
    assert Trust.read(trust).checkpoint is None  # the pin did not move
