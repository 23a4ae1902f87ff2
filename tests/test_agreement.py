"""Every verifier of reledger agrees on the tamper corpus (tests/tamper_corpus.py), entry for
entry and problem for problem: the readable LogVerifier (ledger/verify.py) over the log in
memory, ``reledger verify`` over a database of each backend (storage/verify.py: its fast path
says "all good" exactly on the clean probes, its detailed path names the same problems),
verify_bundle over the mined party's bundle where the mutation is visible in one, and the
store's append plan where the mutation is an entry appended."""

from __future__ import annotations

import pytest

import reledger.storage.verify as storage_verify
from reledger.ledger.bundle import verify_bundle
from reledger.ledger.verify import verify_log
from reledger.storage.store import AppendError, LedgerStore
from tamper_corpus import MINE, PROBES, Probe, vkey

BY_NAME = {p.name: p for p in PROBES}


def _trust(p: Probe) -> dict:
    return {"trusted_checkpoint_keys": [vkey()]} if p.trusted else {}


def _named(problems) -> list[tuple[str, int]]:
    return sorted((p.code, p.index) for p in problems)


def _rule_text(message: str) -> str:
    """What a rule said, without the whole-log verifier's "checkpoint of size N: " prefix."""
    return message.split(": ", 1)[1] if message.startswith("checkpoint of size") else message


def test_the_corpus_names_each_probe_once():
    assert len(BY_NAME) == len(PROBES) >= 15
    assert BY_NAME["clean"].problems == ()
    assert sum(1 for p in PROBES if p.problems) >= 12  # most probes break a rule
    assert sum(1 for p in PROBES if p.append) >= 6


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_readable_verifier_names_the_probe(name):
    p = BY_NAME[name]
    log = p.build()
    rep = verify_log(log.records, log.checkpoints, **_trust(p))
    assert _named(rep.problems) == sorted(p.problems), [str(x) for x in rep.problems]
    assert rep.entries == len(log.records)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_verify_over_a_database_agrees(name, db_url, monkeypatch):
    p = BY_NAME[name]
    log = p.build()
    if not p.in_database:  # the table's own constraints refuse the rows: nothing to verify
        with pytest.raises(Exception) as err:
            log.write(db_url)
        assert "unique" in str(err.value).lower() or "duplicate" in str(err.value).lower(), err.value
        return
    log.write(db_url)
    fast_answers = []
    real = storage_verify._fast_verify
    monkeypatch.setattr(storage_verify, "_fast_verify",
                        lambda *a, **k: fast_answers.append(real(*a, **k)) or fast_answers[-1])
    rep = storage_verify.verify_database(db_url, workers=1, **_trust(p))
    readable = verify_log(log.records, log.checkpoints, **_trust(p))
    assert [(x.code, x.index, x.chain, x.seq, x.message) for x in rep.problems] == \
        [(x.code, x.index, x.chain, x.seq, x.message) for x in readable.problems]
    assert (rep.size, rep.root, rep.genesis, rep.chains, rep.keys) == \
        (readable.size, readable.root, readable.genesis, readable.chains, readable.keys)
    # the fast path gives the verdict on a clean log, and only there
    assert len(fast_answers) == 1 and (fast_answers[0] is not None) == (not p.problems)
    if fast_answers[0] is not None:
        assert fast_answers[0].checkpoints == readable.checkpoints == len(log.checkpoints)


@pytest.mark.parametrize("name", [p.name for p in PROBES if p.in_bundle])
def test_verify_bundle_agrees(name):
    p = BY_NAME[name]
    log = p.build()
    rep = verify_bundle(log.bundle(MINE), **_trust(p))
    readable = verify_log(log.records, log.checkpoints, **_trust(p))
    assert len(rep.problems) == len(readable.problems), rep.problems
    for problem in readable.problems:  # each rule broken is named by the bundle too
        assert any(_rule_text(problem.message) in b for b in rep.problems), (problem.message, rep.problems)
    if not p.problems:
        assert rep.ok and rep.complete and rep.entries == sum(1 for r in log.records if r.index < rep.size
                                                              and (r.chain == MINE or r.type in (
                                                                  "KeyAuthorized", "KeyRevoked", "PartyRegistered")))


@pytest.mark.parametrize("name", [p.name for p in PROBES if p.append])
def test_the_append_plan_refuses_the_probe(name, db_url):
    """The entries before the mutated one are appended one by one (each accepted); the
    mutated entry is refused with the code of the rule it breaks, and nothing is written."""
    p = BY_NAME[name]
    log = p.build()
    (code, bad), = p.problems
    with LedgerStore(db_url) as store:
        for r in log.records[:bad]:
            store.append([r.envelope])
        with pytest.raises(AppendError) as err:
            store.append([log.records[bad].envelope])
        assert err.value.code == p.append, err.value
        assert store.size() == bad
    clean = verify_log(log.records[:bad], [])
    assert clean.ok  # the prefix is valid: the refusal is the probe's


def test_the_auditors_folder_has_no_driver_thread_or_process():
    """ledger/ (what an auditor reads) imports no database driver, no threads, no processes,
    no pickle, and nothing of the rooms above it."""
    import ast
    from pathlib import Path

    forbidden = {"multiprocessing", "threading", "concurrent", "subprocess", "sqlite3", "psycopg", "pickle",
                 "signal", "asyncio"}
    folder = Path(__file__).resolve().parent.parent / "ledger"
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 10 and (folder / "rules.py") in files
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{f.name} imports {name}"
                assert not name.startswith("reledger.") or name.startswith("reledger.ledger"), f"{f.name} imports {name}"
