"""verify_database's fast path reads the stored checkpoints range by range, a page at a time
(storage/verify.py), instead of listing them all: its answer equals the fast path that listed
them (kept here as the naive reference) and the detailed path's, on both backends, with many
checkpoints over many small ranges (on range boundaries, inside ranges, of the empty log), with
checkpoint notes kept outside the database, and with rows an attacker added or altered (each a
doubt that goes to the detailed path, which names it)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

import reledger.storage.verify as verify_module
from reledger.ledger import heads as chain_heads, merkle, rules
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.ledger.registry import REGISTRY_TYPES, Registry, RegistryError
from reledger.ledger.verify import Report, note_size
from reledger.storage.reader import LogReader
from reledger.storage.verify import verify_database

from helpers import drop_triggers, populated_ledger, sql

FIELDS = ("entries", "size", "chains", "keys", "checkpoints", "root", "genesis")


# --- the naive reference: the fast path as it was, with every checkpoint row in a list -----------

def naive_fast_verify(url: str, span: int, registry_records: list, checkpoints: list, workers: int,
                 trusted_genesis: str | None, trusted_checkpoint_keys: list[str],
                 progress: Callable[[int, int], None] | None, side: tuple | None = None,
                 side_result: list | None = None) -> Report | None:
    rep = Report()
    # 1. the registry, in log order: its entries fully checked with the registry's rules
    registry = Registry()
    for rec in registry_records:
        if rec.envelope is None:
            return None
        try:
            s = SignedEntry.parse(rec.envelope)
            pub = registry.key_for(s, rec.index, rec.recorded_us)
            rules.signature(pub, s.content, s.signature, s.entry.key_id, s.entry.chain)
            if rec.index > 0:
                registry.authorized(s.entry, rec.index, rec.recorded_us)
            registry.apply(s, rec.index)
        except (EntryError, RegistryError, rules.Invalid):
            return None
        if rec.index == 0:
            rep.genesis = s.hash.hex()
    if not registry_records or registry_records[0].index != 0:
        return None
    if trusted_genesis and trusted_genesis != rep.genesis:
        return None
    keys = {k.key_id: k for k in registry.keys.values() if k.purpose == "entries"}
    indices = frozenset(r.index for r in registry_records)
    # each checkpoint judged at the size its note states; a row that says otherwise is doubt
    cps = []
    for row_size, row_root, note in checkpoints:
        size = note_size(note)
        if size is None or size != row_size or size > span:
            return None
        cps.append((size, row_root, note))
    size_unit = 1 << verify_module.FAST_BITS
    ranges = [(a, min(span, a + size_unit)) for a in range(0, span, size_unit)]
    jobs = [(url, a, b, keys, dict(registry.registered), indices, tuple(sz for sz, _, _ in cps if a < sz <= b),
             registry.designations, registry.root) for a, b in ranges]
    # 2. the ranges, joined in order
    chunks = merkle.Frontier()  # the tree above the ranges: one leaf per full range
    heads: dict[str, tuple[int, bytes]] = {}
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
    heads_at: dict[int, tuple[int, bytes]] = {0: chain_heads.commitment({})}  # checkpoint size -> heads committed
    last_us: int | None = None
    done = 0
    try:
        # the generator first: zip then runs it to its end (where it hands over the side job's answer)
        for result, (a, b) in zip(verify_module._map_jobs(verify_module._fast_range, jobs, workers, side, side_result), ranges):
            if result is None:
                return None
            first, last, first_us, end_us, local, extra, cp_local = result
            rules.record_time(last_us, first_us)
            last_us = end_us
            for chain, (seq, prev) in first.items():
                rules.chain_link(heads.get(chain), chain, seq, prev)
            for size, (hashes, heads_here) in cp_local.items():
                roots[size] = merkle.fold(chunks.hashes + hashes)
                heads_at[size] = chain_heads.commitment({**heads, **heads_here})
            heads.update(last)
            if b - a == size_unit:
                above = chunks.append(local[0])[1:]
                rules.stored_nodes(b"".join(h for _, _, h in above), extra)
            elif extra or b != span:
                return None
            else:
                chunks = merkle.Frontier(b, chunks.hashes + local)  # the last, partial range (counted in leaves)
            done += b - a
            if progress:
                progress(done, span)
        # 3. the checkpoints: signature by a checkpoint key valid at their size, origin, root, heads
        for size, row_root, note in cps:
            if size not in roots or row_root != roots[size]:
                return None
            rules.checkpoint(note, rules.checkpoint_verifiers(registry, size, trusted_checkpoint_keys),
                             size=size, root=roots[size], heads=heads_at[size])
            rep.checkpoints += 1
    except rules.Invalid:
        return None
    rep.entries = span
    rep.size = span
    rep.chains = len(heads)
    rep.keys = len(registry.keys)
    rep.root = merkle.fold(chunks.hashes)
    return rep




def naive_answer(url: str, external: list[bytes], workers: int) -> Report | None:
    """What the fast path that listed the checkpoints answered for the ledger at ``url``."""
    with LogReader(url) as r:
        r.begin_snapshot()
        cur = r.cursor()
        size = r.queries.size(cur)[0]
        span = max(size, verify_module._max_index(r) + 1)
        registry_records = r.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, span)
        stored = r.queries.checkpoints(cur)
        r.end_snapshot()
    assert size == span
    return naive_fast_verify(url, span, registry_records, list(stored) + verify_module._external_checkpoints(external),
                             workers, None, [], None)


def fast_answer(url: str, external: list[bytes], workers: int, monkeypatch) -> tuple[Report | None, Report]:
    """(the fast path's answer, verify_database's report) for the ledger at ``url``."""
    answers = []
    real = verify_module._fast_verify
    monkeypatch.setattr(verify_module, "_fast_verify", lambda *a, **k: answers.append(real(*a, **k)) or answers[-1])
    try:
        rep = verify_database(url, workers=workers, checkpoint_notes=external)
    finally:
        monkeypatch.setattr(verify_module, "_fast_verify", real)
    assert len(answers) == 1
    return answers[0], rep


def same(a: Report | None, b: Report | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(getattr(a, f) == getattr(b, f) for f in FIELDS) and not a.problems and not b.problems


@pytest.fixture
def many(db_url, monkeypatch):
    """Ranges of 8 entries, checkpoint rows read 2 at a time; a ledger of 3 + 4 + 2 x 20 entries
    with checkpoints on range boundaries and inside ranges."""
    monkeypatch.setattr(verify_module, "FAST_BITS", 3)
    monkeypatch.setattr(verify_module, "CHECKPOINT_PAGE", 2)
    led = populated_ledger(db_url, parties=2, per_party=0)
    notes = {led.store.size(): led.checkpoint()}
    party = sorted(led.parties)
    i = 0
    while led.store.size() < 47:
        led.add(party[i % 2], 1 + i % 3)
        i += 1
        if i % 2 or led.store.size() % 8 == 0:
            notes[led.store.size()] = led.checkpoint()
    led.add(party[0], 2)  # after the last checkpoint
    led.close()
    assert len(notes) >= 10 and any(n % 8 == 0 for n in notes) and any(n % 8 for n in notes)
    return db_url, notes


@pytest.mark.parametrize("workers", [1, 2])
def test_clean_ledger_same_answer_as_the_naive_fast_path(many, workers, monkeypatch):
    url, notes = many
    external = [notes[min(notes)], notes[max(notes)]]
    for ext in ([], external):
        want = naive_answer(url, ext, workers)
        got, rep = fast_answer(url, ext, workers, monkeypatch)
        assert got is not None and same(got, want), (got, want)
        assert got.checkpoints == len(notes) + len(ext)
        monkeypatch.setattr(verify_module, "_fast_verify", lambda *a, **k: None)
        slow = verify_database(url, workers=1, checkpoint_notes=ext)
        monkeypatch.undo()
        monkeypatch.setattr(verify_module, "FAST_BITS", 3)
        monkeypatch.setattr(verify_module, "CHECKPOINT_PAGE", 2)
        assert slow.ok and all(getattr(slow, f) == getattr(got, f) for f in FIELDS)


def _forged(note: bytes) -> bytes:
    lines = note.split(b"\n")
    lines[1] = str(int(lines[1]) - 1).encode()
    return b"\n".join(lines)


@pytest.mark.parametrize("tamper", ["size_column", "junk_row", "beyond_the_log", "forged_note", "root_column",
                                    "negative_size"])
def test_altered_checkpoints_are_doubt_as_in_the_naive_fast_path(many, tamper, monkeypatch):
    url, notes = many
    drop_triggers(url)
    sizes = sorted(notes)
    free = next(n for n in range(1, 48) if n not in notes)
    if tamper == "size_column":
        sql(url, "UPDATE {checkpoints} SET size = ? WHERE size = ?", (free, sizes[3]))
    elif tamper == "junk_row":
        sql(url, "INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, 0)", (free, bytes(32), b"junk"))
    elif tamper == "beyond_the_log":
        sql(url, "INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, 0)",
            (500, bytes(32), notes[sizes[-1]]))
    elif tamper == "forged_note":
        sql(url, "UPDATE {checkpoints} SET note = ? WHERE size = ?", (_forged(notes[sizes[5]]), sizes[5]))
    elif tamper == "root_column":
        sql(url, "UPDATE {checkpoints} SET root = ? WHERE size = ?", (bytes(32), sizes[4]))
    else:
        sql(url, "INSERT INTO {checkpoints} (size, root, note, created_us) VALUES (?, ?, ?, 0)",
            (-3, bytes(32), notes[sizes[0]]))
    for workers in (1, 2):
        want = naive_answer(url, [], workers)
        got, rep = fast_answer(url, [], workers, monkeypatch)
        assert want is None and got is None
        assert not rep.ok  # the detailed path names it


def test_rows_that_came_or_went_since_the_snapshot_are_doubt(many, monkeypatch):
    """The census (count, greatest size) is taken in the snapshot of the registry; the rows read
    range by range must be as many."""
    url, notes = many
    with LogReader(url) as r:
        r.begin_snapshot()
        cur = r.cursor()
        span = r.queries.size(cur)[0]
        registry_records = r.queries.records_of_types(cur, sorted(REGISTRY_TYPES), 0, span)
        count, top = verify_module._checkpoint_census(r)
        r.end_snapshot()
    assert (count, top) == (len(notes), max(notes))
    ok = verify_module._fast_verify(url, span, registry_records, (count, top), [], 1, None, [], None)
    assert ok is not None and ok.checkpoints == count
    for census in ((count + 1, top), (count - 1, top), (count, top - 1)):
        assert verify_module._fast_verify(url, span, registry_records, census, [], 1, None, [], None) is None, census
