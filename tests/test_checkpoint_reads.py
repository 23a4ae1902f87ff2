"""Reads of the stored checkpoints that do not list them all, against the naive readers that did,
on both backends: the latest signed checkpoint (``reledger verify``'s anchor, ``reledger prove``)
and the investigation report's checkpoint within a size. The ledgers hold honest checkpoints and
rows an attacker with SQL access added: junk notes, a note under another size column, a forged
note of a greater size, a note of a size beyond the log, a second row stating the latest size."""

from __future__ import annotations

from typing import Any

from reledger.ledger.checkpoint import Checkpoint, sign_checkpoint
from reledger.replay import report
from reledger.storage.reader import open_ledger_readonly
from reledger.storage.verify import latest_signed_checkpoint, signed_checkpoints

from helpers import populated_ledger, sql


def naive_report_checkpoint(store, n: int) -> dict[str, Any] | None:
    """What replay/report.py ``_checkpoint`` must give: of every stored checkpoint judged by its
    note (``signed_checkpoints``), the last covering at most ``n`` entries."""
    signed = [c for c in signed_checkpoints(store) if c[0] <= n]
    if not signed:
        return None
    size, root, note = signed[-1]
    cp = Checkpoint.parse(note.split(b"\n\n", 1)[0] + b"\n")
    return {"origin": cp.origin, "size": cp.size, "root": cp.root, "note": note.decode("utf-8", "replace"),
            "signature": "signature valid (" + cp.origin + ")", "signature_ok": True,
            "root_matches": store.root(size) == cp.root == root and cp.size == size}


def naive_latest(store) -> tuple[int, bytes, bytes] | None:
    signed = signed_checkpoints(store)
    return signed[-1] if signed else None


def with_size(note: bytes, size: int) -> bytes:
    """``note`` with its size line changed (its signatures no longer verify)."""
    lines = note.split(b"\n")
    lines[1] = str(size).encode()
    return b"\n".join(lines)


def insert(url: str, size: int, note: bytes, root: bytes = bytes(32)) -> None:
    sql(url, "INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, 0)", (size, root, note))


def outcome(fn, *args) -> Any:
    """What ``fn(*args)`` answers, or the exception it raises (type and message)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return (type(e).__name__, str(e))


def compare(url: str) -> tuple[int, bytes, bytes] | None:
    with open_ledger_readonly(url) as store:
        want = naive_latest(store)
        for page in (1, 2, 1000):
            assert latest_signed_checkpoint(store, page=page) == want, page
        size = store.size()
        for n in range(0, size + 3):
            got = outcome(report._checkpoint, store, n)
            assert not isinstance(got, tuple), got  # a junk row is passed over, never raised
            assert got == naive_report_checkpoint(store, n), n
            assert report._checkpoint(store, n, store.registry(n)) == got, n  # the caller's registry at n
            for page in (1, 1000):
                assert latest_signed_checkpoint(store, page=page, within=n) == \
                    ((got["size"], got["root"], got["note"].encode()) if got else None)
    return want


def test_checkpoint_reads_equal_the_naive_ones(db_url):
    led = populated_ledger(db_url, parties=2, per_party=3)
    url = db_url
    notes = {}
    for _ in range(4):
        notes[led.store.size()] = led.checkpoint()
        party = sorted(led.parties)[0]
        led.store.append(led.facts(party, 2))
    sizes = sorted(notes)
    log_size = led.store.size()
    led.close()
    latest = compare(url)
    assert latest is not None and latest[0] == sizes[-1] and latest[2] == notes[sizes[-1]]

    # a forged note of a size between the latest checkpoint and the log's: a candidate that fails
    forged = with_size(notes[sizes[-1]], log_size - 1)
    insert(url, 1, forged)
    assert compare(url) == latest
    # junk, and a note of a size beyond the log's (no candidate)
    insert(url, 2, b"junk")
    insert(url, log_size + 50, with_size(notes[sizes[-1]], log_size + 40))
    assert compare(url) == latest
    # the latest real note once more under a smaller size column: the same answer, found first
    insert(url, sizes[0] - 1, notes[sizes[-1]])
    assert compare(url) == latest


def test_latest_falls_back_when_the_greatest_candidates_fail(db_url):
    """Only forged rows state the greatest note sizes: the answer is the greatest size with a
    verifying note, as the naive reader gives it (the search goes down through the failures)."""
    led = populated_ledger(db_url, parties=2, per_party=3)
    notes = {}
    for _ in range(3):
        notes[led.store.size()] = led.checkpoint()
        led.store.append(led.facts(sorted(led.parties)[0], 2))
    log_size = led.store.size()
    led.close()
    sizes = sorted(notes)
    for i, n in enumerate((log_size - 1, log_size, log_size - 1)):
        insert(db_url, 100 + i, with_size(notes[sizes[-1]], n))  # forged: the size line altered
    insert(db_url, 1, with_size(notes[sizes[0]], sizes[-1]))  # forged, of the latest real size, first by size column
    # a second note of the latest size that verifies too (without the chain heads line), after
    # the real one by size column: the first by size column is the answer
    real = notes[sizes[-1]]
    cp = Checkpoint.parse(real[:real.rfind(b"\n\n") + 1])
    other = sign_checkpoint(Checkpoint(cp.origin, cp.size, cp.root, ()), led.note_signer, 1_700_000_000)
    assert other != real
    insert(db_url, log_size + 70, other)
    latest = compare(db_url)
    assert latest is not None and latest[0] == sizes[-1] and latest[2] == real


def test_export_counts_the_entries_after_the_checkpoint(db_url):
    """The bundle summary's ``after_checkpoint`` (the party's entries the checkpoint does not
    cover) is counted in the database: the count of the rows the naive reader listed."""
    from reledger.replay.export import build_bundle

    led = populated_ledger(db_url, parties=2, per_party=3)
    party = sorted(led.parties)[0]
    led.checkpoint()
    for extra in (0, 1, 4):
        if extra:
            led.store.append(led.facts(party, extra))
        _data, summary = build_bundle(db_url, party)
        with open_ledger_readonly(db_url) as store:
            size = summary["checkpoint_size"]
            chain = [r for r in store.chain_records(party) if r.index < size]
            naive = len([r for r in store.chain_records(party, start_seq=(chain[-1].seq + 1))])
        assert summary["after_checkpoint"] == naive
    assert naive == 5
    led.close()
