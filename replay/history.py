"""Replay a party's history: what a regulator does when a violation is suspected.

For each of the party's entries: its signature, checked with the key that was valid when it was
recorded, the party's stock (by lot) and quota usage after it, and the findings it raised.
Findings about the party raised by other entries' arrival (a shipment overdue, a report missing)
appear as their own steps. When the projection tables cover the point asked (or reach it within a
short wait, :func:`wait_for_projections`: a follower is normally a fraction of a second behind the
log), the party's rows are read from them (:func:`_replay_rows`); otherwise, or with ``fold``, the
log is folded from scratch with a fresh :class:`reledger.projections.model.Projector` (its rule state in a scratch
file, projections/state.py): the reference, which the tests hold the rows' answer to, and whose
state after any step they hold equal to the projections at that point.

:func:`stream_party` gives the replay as it is read (the header at once, then the steps, a page
of rows at a time, then the counts): ``reledger replay`` prints from it; :func:`replay_party`
collects it, for callers that need all of it.
"""

from __future__ import annotations

import base64
import bisect
import time
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

from reledger.ledger import encoding
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.ledger.registry import Registry, RegistryError
from reledger.projections.model import Projector, kg_text, time_us
from reledger.projections.state import ScratchState
from reledger.projections.store import P
from reledger.storage.reader import LogReader

FAR = 2**62

#: seconds a replay (and an investigation, replay/report.py) waits for the projections to reach
#: the point asked before it folds the whole log (an investigation: before it refuses). With
#: ``reledger serve`` running, its follower is normally a fraction of a second behind the log.
PROJECTIONS_WAIT_S = 10.0
#: seconds between two looks at the projections' position while waiting
PROJECTIONS_POLL_S = 0.05
#: seconds without the position moving at all after which nothing is taken to follow the log (a
#: follower commits every few thousand entries, a second or two apart on a large log, more on a
#: loaded machine; one folding its state again after a rebuild does not move it at all)
PROJECTIONS_STALL_S = 5.0
#: seconds of waiting after which the wait says what it waits for (a shorter wait goes unsaid)
PROJECTIONS_SAY_S = 1.0


@dataclass
class Step:
    index: int
    kind: str  # "entry" (one of the party's entries) or "finding" (raised by another entry)
    seq: int | None
    type: str | None
    occurred_at: str | None
    recorded_at: str
    entry_hash: str | None
    body: Any
    signature: str  # "valid (key …)", "INVALID: …", or "" for finding steps
    counterparty: str | None
    lots: list[str]
    stock: dict[str, dict[str, str]]  # lot -> {"product", "kg", "reo_kg"} after this step
    quota_used: dict[str, str]  # "YEAR CATEGORY" -> t REO used after this step
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "seq": self.seq, "type": self.type,
                "occurred_at": self.occurred_at, "recorded_at": self.recorded_at, "entry_hash": self.entry_hash,
                "body": self.body, "signature": self.signature, "counterparty": self.counterparty,
                "lots": self.lots, "stock": self.stock, "quota_used": self.quota_used, "findings": self.findings}


@dataclass
class Replay:
    party: str
    name: str | None
    size: int  # log size replayed (as of)
    steps: list[Step]
    first_by_rule: dict[str, dict[str, Any]]  # rule -> the first finding of that rule
    signatures_valid: int
    signatures_invalid: int
    credit: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None = None  # the latest checkpoint within the size: {"size", "root"}

    @property
    def step_count(self) -> int:
        return len(self.steps)

    def head_dict(self) -> dict[str, Any]:
        return {"party": self.party, "name": self.name, "as_of_size": self.size, "checkpoint": self.checkpoint}

    def tail_dict(self) -> dict[str, Any]:
        return {"first_by_rule": self.first_by_rule,
                "signatures": {"valid": self.signatures_valid, "invalid": self.signatures_invalid},
                "credit": self.credit}

    def to_dict(self) -> dict[str, Any]:
        return {**self.head_dict(), "steps": [s.to_dict() for s in self.steps], **self.tail_dict()}


#: rows read a page at a time by a streamed replay (each of its row sources holds at most one page)
PAGE = 500


class ReplayStream:
    """A party's replay as it is read (:func:`stream_party`): ``party``, ``name``, ``size`` and
    ``checkpoint`` are known at once; iterating gives the steps, one at a time, read a page at a
    time; once the steps are exhausted, ``first_by_rule``, the signature counts and ``credit``
    are set. Memory: a page of each row source and the party's state now (its lots held, its
    quota used), never its history. Close it (or use ``with``)."""

    def __init__(self, party: str, name: str | None, size: int, checkpoint: dict[str, Any] | None):
        self.party, self.name, self.size, self.checkpoint = party, name, size, checkpoint
        self.first_by_rule: dict[str, dict[str, Any]] = {}
        self.signatures_valid = self.signatures_invalid = 0
        self.credit: list[dict[str, Any]] = []
        self.step_count = 0
        self.done = False
        self.sources: list["_Pages"] = []  # the row sources being paged through (rows_held)
        self._steps: Iterator[Step] = iter(())
        self._close: list[Callable[[], None]] = []

    def __iter__(self) -> Iterator[Step]:
        for step in self._steps:
            self.step_count += 1
            yield step
        self.done = True

    def rows_held(self) -> int:
        """Rows read from the database and not yet used (the pages in hand)."""
        return sum(src.held() for src in self.sources)

    head_dict = Replay.head_dict
    tail_dict = Replay.tail_dict

    def collect(self) -> Replay:
        """The whole replay in memory (for callers that need all of it: the investigation report)."""
        steps = list(self)
        return Replay(self.party, self.name, self.size, steps, self.first_by_rule, self.signatures_valid,
                      self.signatures_invalid, self.credit, self.checkpoint)

    def close(self) -> None:
        close = getattr(self._steps, "close", None)
        if close:
            close()
        for c in reversed(self._close):
            c()
        self._close = []

    def __enter__(self) -> "ReplayStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Pages:
    """The rows of one source in log order, ``page`` at a time: ``fetch(after, limit)`` gives at
    most ``limit`` rows after the key ``after`` (keyset pagination: each page is an index range
    scan from where the last ended), ``key(row)`` the row's key. With ``group``, the key is not
    unique (the log index of a projection row): a full page's last key is read again with the
    next page, so that no key is split between pages; a page of one key only is completed by
    ``fetch_key(key)``."""

    def __init__(self, name: str, fetch: Callable[[Any, int], list], key: Callable[[Any], Any], start: Any,
                 page: int, fetch_key: Callable[[Any], list] | None = None):
        self.name, self.fetch, self.key, self.after, self.page, self.fetch_key = name, fetch, key, start, page, fetch_key
        self.buf: list = []
        self.pos = 0
        self.last = False
        self.pages = 0

    def held(self) -> int:
        return len(self.buf) - self.pos

    def peek(self) -> Any:
        if self.pos >= len(self.buf):
            self.buf, self.pos = [], 0
            if self.last:
                return None
            rows = self.fetch(self.after, self.page)
            self.pages += 1
            if len(rows) < self.page:
                self.last = True
            elif self.fetch_key is not None:
                k = self.key(rows[-1])
                kept = [r for r in rows if self.key(r) != k]
                if kept:
                    rows = kept
                else:  # one key fills the page: that key's rows, all of them
                    rows = self.fetch_key(k)
            if rows:
                self.after = self.key(rows[-1])
            self.buf = rows
            if not rows:
                return None
        return self.buf[self.pos]

    def pop(self) -> Any:
        row = self.peek()
        if row is not None:
            self.buf[self.pos] = None  # let it go
            self.pos += 1
        return row


def json_body(value: Any) -> Any:
    """An entry body as JSON: binary becomes base64 text."""
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: json_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_body(v) for v in value]
    return value


def _counterparty(party: str, chain: str, body: dict) -> str | None:
    for name in ("buyer", "seller", "enterprise", "holder", "party"):
        v = body.get(name)
        if isinstance(v, str) and v != party:
            return v
    return chain if chain != party else None


def _unreadable(rec, err: Exception, state: dict, quota: dict) -> "Step":
    """Replay's step for an entry the log holds but that cannot be read (tampered or deleted)."""
    return Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at, rec.entry_hash.hex(), None,
                f"INVALID: unreadable entry: {err}", None, [], state, quota, [])


def signature_status(registry: Registry, signed: SignedEntry, rec) -> tuple[str, bool]:
    """What replay says of an entry's signature, by the key valid when the log recorded it:
    one definition for the replay from rows, the replay by fold and the evidence of an
    investigation report."""
    try:
        pub = registry.key_for(signed, rec.index, rec.recorded_us)
    except RegistryError as err:
        return f"INVALID: {err}", False
    if signed.signature_valid(pub):
        return f"valid (key {signed.entry.key_id})", True
    return f"INVALID: not a signature by key {signed.entry.key_id}", False


def _kept(party: str, e, body: dict, occ: int, since_us, until_us, types, lot, counterparty) -> bool:
    """Whether an entry of the party passes replay's filters (business-time window, types, lot,
    counterparty): one definition for the replay from rows and the replay by fold."""
    if since_us is not None and occ < since_us or until_us is not None and occ > until_us:
        return False
    if types and e.type not in types:
        return False
    if lot and lot not in _lots(body):
        return False
    return not (counterparty and _counterparty(party, e.chain, body) != counterparty)


def _lots(body: dict) -> list[str]:
    out = []
    if isinstance(body.get("lot"), str):
        out.append(body["lot"])
    for key in ("lines", "inputs", "outputs"):
        for line in body.get(key, []) or []:
            if isinstance(line, dict) and isinstance(line.get("lot"), str):
                out.append(line["lot"])
    return out


def wait_for_projections(ps, n: int, say: Callable[[str], None] | None = None) -> int:
    """The projections' position (``ps``: a :class:`reledger.projections.store.ProjectionReader`)
    once it reaches ``n``, or as it stands after :data:`PROJECTIONS_WAIT_S` seconds: a follower
    (``reledger serve``) is normally a fraction of a second behind the log. It only reads: each
    look at the position is a statement of its own on the reader's connection (SQLite: no
    transaction is begun for a SELECT, WAL; PostgreSQL: autocommit), so nothing it holds keeps the
    follower's commits from it, on a primary or a standby. When the position has not moved at all
    after :data:`PROJECTIONS_STALL_S` seconds, nothing is taken to follow the log (``serve`` is
    not running) and the wait ends there. Should the wait last more than
    :data:`PROJECTIONS_SAY_S` seconds, ``say`` is told, once, what it waits for."""
    pos = ps.position()
    if pos >= n:
        return pos
    start = time.monotonic()
    deadline = start + PROJECTIONS_WAIT_S
    said = say is None
    moved, first = start, pos  # when the position last moved; where it stood at first
    while pos < n:
        now = time.monotonic()
        if now >= deadline or (pos == first and now - moved >= PROJECTIONS_STALL_S):
            break  # the time is up, or nothing follows the log (the position never moved)
        if not said and now - start >= PROJECTIONS_SAY_S:
            said = True
            say(f"the projections reflect {pos:,} of the {n:,} log entries asked: waiting up to "
                f"{PROJECTIONS_WAIT_S:g} s for them to reach it (`reledger serve` follows the log)")
        time.sleep(min(PROJECTIONS_POLL_S, deadline - now))
        before, pos = pos, ps.position()
        if pos != before:
            moved = time.monotonic()
    return pos


def folding_notice(pos: int | None, n: int) -> str:
    """What a replay tells its user before it folds the whole log because the projections do not
    cover the point asked (``pos``: their position, None: the ledger has none)."""
    if pos is None:
        return ("this ledger has no projections: the replay folds the whole log from its start (slow on a large "
                "ledger); `reledger rebuild` makes them (and `reledger serve` keeps them up to date), after "
                "which a replay reads the party's rows")
    return (f"the projections reflect {pos:,} of the {n:,} log entries asked ({n - pos:,} behind) and did not "
            f"reach them within {PROJECTIONS_WAIT_S:g} s: the replay folds the whole log from its start instead "
            "(slow on a large ledger). To read the party's rows: "
            + (f"ask --as-of {pos} (the projections' position), " if pos > 0 else "")
            + "keep `reledger serve` running (it follows the log), or run `reledger rebuild`")


def replay_party(url: str, party: str, *, as_of: int | None = None, since_us: int | None = None,
                 until_us: int | None = None, types: set[str] | None = None, lot: str | None = None,
                 counterparty: str | None = None, fold: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 notice: Callable[[str], None] | None = None) -> Replay:
    """The party's whole replay in memory (:func:`stream_party`, collected)."""
    with stream_party(url, party, as_of=as_of, since_us=since_us, until_us=until_us, types=types, lot=lot,
                      counterparty=counterparty, fold=fold, progress=progress, notice=notice) as rs:
        return rs.collect()


def stream_party(url: str, party: str, *, as_of: int | None = None, since_us: int | None = None,
                 until_us: int | None = None, types: set[str] | None = None, lot: str | None = None,
                 counterparty: str | None = None, fold: bool = False,
                 progress: Callable[[int, int], None] | None = None, page: int | None = None,
                 notice: Callable[[str], None] | None = None) -> ReplayStream:
    """Replay the log up to ``as_of`` entries and give the party's history (filtered by business
    time window, entry types, lot and counterparty) as it is read: a :class:`ReplayStream`.

    When the projection tables cover the first ``as_of`` entries, the party's history is read
    from them (:func:`_replay_rows`: the party's own entries, and its findings, stock, quota and
    credit rows, each read through its (party, idx) index a page at a time: time to the first
    step and memory follow a page, time to the last the party's history, never the log). When
    they are behind that point, the replay waits for them a little (:func:`wait_for_projections`:
    a follower is normally a fraction of a second behind). Otherwise, or with ``fold``, the log
    is folded from the start (the reference the tests hold the rows' answer to; its steps are
    given as the fold reaches them); unless ``fold`` was asked, ``notice`` is told first why
    (:func:`folding_notice`), and while the wait lasts, what it waits for."""
    from reledger.projections.store import NoProjections, ProjectionReader

    page = page or PAGE
    closers: list[Callable[[], None]] = []  # closed in reverse order
    try:
        reader = LogReader(url)
        closers.append(reader.close)
        cur = reader.cursor()
        size = reader.queries.size(cur)[0]
        n = size if as_of is None else min(as_of, size)
        cp = reader.queries.checkpoint_within(cur, n)
        checkpoint = None if cp is None else {"size": cp[0], "root": cp[1].hex()}
        ps = None
        if not fold:
            try:
                ps = ProjectionReader(url)
            except NoProjections:
                ps = None
                if notice is not None:
                    notice(folding_notice(None, n))
            else:
                closers.append(ps.close)
                pos = wait_for_projections(ps, n, notice)
                if pos < n:
                    closers.pop()()
                    ps = None
                    if notice is not None:
                        notice(folding_notice(pos, n))
        if ps is not None:
            rs = ReplayStream(party, _name_from_rows(reader, ps, party, n), n, checkpoint)
            rs._steps = _replay_rows(rs, reader, ps, party, n, since_us, until_us, types, lot, counterparty, page)
        else:
            # the fold's rule state in a scratch file (bounded cache), not in memory: it would grow
            # with the log (projections/state.py)
            scratch = ScratchState()
            closers.append(scratch.close)
            rs = ReplayStream(party, _name_from_log(reader, party, n, page), n, checkpoint)
            rs._steps = _replay(rs, reader, scratch, Projector(scratch.state), party, n, since_us, until_us, types,
                                lot, counterparty, progress)
        rs._close = closers
        return rs
    except BaseException:
        for c in reversed(closers):
            c()
        raise


_REGISTRY_TYPES = ("KeyAuthorized", "KeyRevoked", "PartyDesignationChanged", "PartyRegistered")


def _registered_name(rec, party: str) -> tuple[bool, str | None]:
    """Whether ``rec`` is a readable registration of ``party``, and the name it gives."""
    if rec.type != "PartyRegistered" or rec.envelope is None:
        return False, None
    try:
        body = SignedEntry.parse(rec.envelope).entry.body
    except (EntryError, EncodingError):
        return False, None
    if isinstance(body, dict) and body.get("party") == party:
        return True, body.get("name")
    return False, None


def _name_from_log(reader: LogReader, party: str, n: int, page: int) -> str | None:
    """The name the party's last registration among the first ``n`` entries gives it (the
    log's registration entries, a page at a time)."""
    name, cur, after = None, reader.cursor(), -1
    while True:
        recs = reader.queries.records_of_types_after(cur, ["PartyRegistered"], after, n, page)
        for rec in recs:
            mine, nm = _registered_name(rec, party)
            if mine:
                name = nm
        if len(recs) < page:
            return name
        after = recs[-1].index


def _name_from_rows(reader: LogReader, ps, party: str, n: int) -> str | None:
    """The same as :func:`_name_from_log`, from the log positions where the projections' parties
    table has the party registered or changed (its registrations are among them)."""
    name, cur = None, reader.cursor()
    for (idx,) in ps.execute(f"SELECT DISTINCT idx FROM {P}parties WHERE party = ? AND idx < ? ORDER BY idx",
                             (party, n)):
        for rec in reader.queries.records(cur, int(idx), int(idx) + 1):
            mine, nm = _registered_name(rec, party)
            if mine:
                name = nm
    return name


def _replay_rows(rs: ReplayStream, reader: LogReader, ps, party: str, n: int, since_us, until_us, types, lot,
                 counterparty, page: int) -> Iterator[Step]:
    """The party's history from the projection tables, a page of each at a time. The steps are
    those the fold gives (the tests compare them)."""
    import json

    cur = reader.cursor()
    idx_key = itemgetter(0)

    def party_rows(table: str, columns: str, where: str = "") -> _Pages:
        # the party's rows of a table in log order, through its (party, idx) index
        sql = f"SELECT {columns} FROM {P}{table} WHERE party = ?{where} AND idx < ? AND idx > ? ORDER BY idx LIMIT ?"
        at = f"SELECT {columns} FROM {P}{table} WHERE party = ?{where} AND idx = ?"
        src = _Pages(table, lambda after, limit: ps.execute(sql, (party, n, after, limit)), idx_key, -1, page,
                     lambda idx: ps.execute(at, (party, idx)))
        rs.sources.append(src)
        return src

    entries = _Pages("entries", lambda after, limit: reader.queries.records_of_chain_after(cur, party, after, n, limit),
                     attrgetter("seq"), 0, page)
    registry_records = _Pages("registry", lambda after, limit: reader.queries.records_of_types_after(
        cur, list(_REGISTRY_TYPES), after, n, limit), attrgetter("index"), -1, page)
    rs.sources += [entries, registry_records]
    finding_rows = party_rows("findings", "idx, occurred_us, rule, code, party, message, evidence, params",
                              " AND code <> 'RESOLVED'")
    stock_rows = party_rows("stock", "idx, lot, product, g, reo_g")
    used_rows = party_rows("quota", "idx, year, category, g", " AND kind = 'USED'")

    # the party's state now: the lots it holds (a lot whose figures fall to zero is dropped: a
    # lot's product is its own, so nothing is lost) and its quota used per year and category
    stock: dict[str, list] = {}
    used: dict[str, int] = {}
    shown: dict[str, dict[str, str]] = {}  # lot -> its figures as shown (made again when they change)
    order: list[str] = []  # the lots held, sorted

    def advance(upto: int) -> None:
        while (r := stock_rows.peek()) is not None and int(r[0]) <= upto:
            stock_rows.pop()
            s = stock.get(r[1])
            if s is None:
                s = stock[r[1]] = [r[2], 0, 0]
                bisect.insort(order, r[1])
            s[0] = s[0] or r[2]
            s[1] += int(r[3])
            s[2] += int(r[4])
            if s[1] or s[2]:
                shown[r[1]] = {"product": s[0], "kg": kg_text(s[1]), "reo_kg": kg_text(s[2])}
            else:
                shown.pop(r[1], None)
                del stock[r[1]]
                order.pop(bisect.bisect_left(order, r[1]))
        while (r := used_rows.peek()) is not None and int(r[0]) <= upto:
            used_rows.pop()
            k = f"{int(r[1])} {r[2]}"
            used[k] = used.get(k, 0) + int(r[3])

    def state_now() -> tuple[dict, dict]:
        return ({lt: shown[lt] for lt in order},
                {k: encoding.decimal_text(Decimal(v) / 1_000_000) for k, v in sorted(used.items())})

    registry = Registry()
    first = rs.first_by_rule
    while True:
        nxt_entry, nxt_finding = entries.peek(), finding_rows.peek()
        if nxt_entry is None and nxt_finding is None:
            break
        index = min(x for x in (None if nxt_entry is None else nxt_entry.index,
                                None if nxt_finding is None else int(nxt_finding[0])) if x is not None)
        rec = entries.pop() if nxt_entry is not None and nxt_entry.index == index else None
        mine: list[dict[str, Any]] = []
        while (r := finding_rows.peek()) is not None and int(r[0]) == index:
            finding_rows.pop()
            idx, occ, rule, code, _p, message, evidence, params = r
            f = {"rule": rule, "code": code, "party": party, "message": message, "index": int(idx),
                 "occurred_at": encoding.micros_to_time_text(int(occ)), "evidence": json.loads(evidence),
                 "params": json.loads(params)}
            mine.append(f)
            first.setdefault(rule, f)
        while (r := registry_records.peek()) is not None and r.index < index:
            registry_records.pop()
            try:
                registry.apply(SignedEntry.parse(r.envelope), r.index)
            except (EntryError, EncodingError, RegistryError, TypeError):
                pass
        advance(index)
        if rec is None:  # another party's entry raised findings about this one
            other = reader.queries.records(cur, index, index + 1)
            yield Step(index, "finding", None, None, None, other[0].recorded_at if other else "",
                       None, None, "", None, [], *state_now(), mine)
            continue
        try:
            if rec.envelope is None:
                raise EntryError("the entry is missing from the events table")
            signed = SignedEntry.parse(rec.envelope)
        except (EntryError, EncodingError) as err:
            rs.signatures_invalid += 1
            if not types or rec.type in types:
                yield _unreadable(rec, err, *state_now())
            continue
        e = signed.entry
        if (e.chain, e.seq, signed.hash) != (rec.chain, rec.seq, rec.entry_hash):
            sig = (f"INVALID: the entry {e.chain}:{e.seq} is not the one the log recorded at index "
                   f"{rec.index} ({rec.chain}:{rec.seq}, hash {rec.entry_hash.hex()[:16]}…)")
            rs.signatures_invalid += 1
            if e.chain != party:
                if not types or rec.type in types:
                    yield Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at,
                               rec.entry_hash.hex(), None, sig, None, [], *state_now(), mine)
                continue
        else:
            sig, ok = signature_status(registry, signed, rec)
            rs.signatures_valid += ok
            rs.signatures_invalid += not ok
        body = e.body if isinstance(e.body, dict) else {}
        occ = time_us(e.occurred_at) or rec.recorded_us
        if not _kept(party, e, body, occ, since_us, until_us, types, lot, counterparty):
            continue
        yield Step(rec.index, "entry", e.seq, e.type, e.occurred_at, rec.recorded_at, signed.hash.hex(),
                   json_body(body), sig, _counterparty(party, e.chain, body), _lots(body), *state_now(), mine)
    credit = party_rows("credit", "idx, kind, article, fine, cut_g, detail")
    while (r := credit.pop()) is not None:
        idx, kind, article, fine, cut, detail = r
        rs.credit.append({"index": int(idx), "kind": kind, "article": article, "fine_cny": fine,
                          "next_year_cut_t": encoding.decimal_text(Decimal(int(cut)) / 1_000_000) if cut else "0",
                          "detail": detail})


def _replay(rs: ReplayStream, reader, scratch, proj, party, n, since_us, until_us, types, lot, counterparty,
            progress) -> Iterator[Step]:
    """The party's history by folding the whole log (the reference): steps as the fold reaches them."""
    registry = Registry()
    stock: dict[str, list] = {}
    used: dict[str, int] = {}
    first = rs.first_by_rule
    credit = rs.credit

    def state_now() -> tuple[dict, dict]:
        return ({lt: {"product": v[0], "kg": kg_text(v[1]), "reo_kg": kg_text(v[2])}
                 for lt, v in sorted(stock.items()) if v[1] or v[2]},
                {k: encoding.decimal_text(Decimal(v) / 1_000_000) for k, v in sorted(used.items())})

    for rec in reader.iter_records(proj.position, n):
        if progress and rec.index % 2000 == 0:
            progress(rec.index, n)
        if rec.index % 5000 == 4999:
            scratch.flush()
        try:
            if rec.envelope is None:
                raise EntryError("the entry is missing from the events table")
            signed = SignedEntry.parse(rec.envelope)
        except (EntryError, EncodingError) as err:
            # a tampered (unreadable or deleted) entry: nothing to fold, but never hidden
            proj.position = rec.index + 1
            if rec.chain == party:
                rs.signatures_invalid += 1
                if not types or rec.type in types:
                    yield _unreadable(rec, err, *state_now())
            continue
        e = signed.entry
        sig = ""
        if (e.chain, e.seq, signed.hash) != (rec.chain, rec.seq, rec.entry_hash) and party in (e.chain, rec.chain):
            # the stored entry is not the one the log recorded at this position (swapped or
            # rewritten rows): its signature proves nothing about this position
            sig = (f"INVALID: the entry {e.chain}:{e.seq} is not the one the log recorded at index "
                   f"{rec.index} ({rec.chain}:{rec.seq}, hash {rec.entry_hash.hex()[:16]}…)")
            rs.signatures_invalid += 1
        elif e.chain == party:
            sig, ok = signature_status(registry, signed, rec)
            rs.signatures_valid += ok
            rs.signatures_invalid += not ok
        try:
            registry.apply(signed, rec.index)
        except RegistryError:
            pass
        d = proj.apply(rec.index, rec.recorded_us, signed)
        for (p, lt, product, g, reo) in d.stock:
            if p == party:
                s = stock.setdefault(lt, [product, 0, 0])
                s[0] = s[0] or product
                s[1] += g
                s[2] += reo
        for (year, p, cat, kind, g, grp, _ref) in d.quota:
            if p == party and kind == "USED":
                used[f"{year} {cat}"] = used.get(f"{year} {cat}", 0) + g
        for c in d.credit:
            if c[0] == party:
                credit.append({"index": rec.index, "kind": c[1], "article": c[2], "fine_cny": c[3],
                               "next_year_cut_t": encoding.decimal_text(Decimal(c[4]) / 1_000_000) if c[4] else "0",
                               "detail": c[5]})
        # a RESOLVED row marks an earlier finding cured (the projections show it on that finding)
        mine = [f.to_dict() for f in d.findings if f.party == party and f.code != "RESOLVED"]
        for f in mine:
            first.setdefault(f["rule"], f)
        if e.chain != party and rec.chain == party and sig:
            # the party's log position holds another chain's entry: shown as the party's step
            if not types or rec.type in types:
                yield Step(rec.index, "entry", rec.seq, rec.type, None, rec.recorded_at,
                           rec.entry_hash.hex(), None, sig, None, [], *state_now(), mine)
            continue
        if e.chain != party and not mine:
            continue
        body = e.body if isinstance(e.body, dict) else {}
        occ = time_us(e.occurred_at) or rec.recorded_us
        if e.chain == party:
            if not _kept(party, e, body, occ, since_us, until_us, types, lot, counterparty):
                continue
        yield Step(
            rec.index, "entry" if e.chain == party else "finding",
            e.seq if e.chain == party else None, e.type if e.chain == party else None,
            e.occurred_at if e.chain == party else None, rec.recorded_at,
            signed.hash.hex() if e.chain == party else None,
            json_body(body) if e.chain == party else None, sig,
            _counterparty(party, e.chain, body) if e.chain == party else None,
            _lots(body) if e.chain == party else [],
            *state_now(), mine)


def grouped(text: Any) -> str:
    """A decimal quantity with thousands separators, its decimals kept ("1,325,500.25")."""
    import re

    m = re.fullmatch(r"(-?)(\d+)(\.\d+)?", str(text))
    if not m:
        return str(text)
    return f"{m.group(1)}{int(m.group(2)):,}{m.group(3) or ''}"


#: body fields that are quantities, and their units (one unit per kind: t REO for quota, kg for mass)
_UNITS = (("_t_reo", "t REO"), ("t_reo", "t REO"), ("reo_kg", "kg REO"), ("_kg", "kg"), ("kg", "kg"),
          ("_pct", "%"), ("fine_cny", "CNY"))


def _unit(name: str) -> str | None:
    for suffix, unit in _UNITS:
        if name == suffix or name.endswith(suffix):
            return unit
    return None


def _sum(lines: Any, key: str) -> Decimal | None:
    total = None
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and isinstance(line.get(key), str):
            try:
                total = (total or Decimal(0)) + Decimal(line[key])
            except ArithmeticError:
                pass
    return total


def says(type_: str | None, body: Any) -> str:
    """What an entry says, in one line for a person: its quantities with their units (thousands
    separators), its lots and parties; e.g. ``lot BO01-000001 BASTNAESITE_CONCENTRATE: dry_kg
    351,219.4 kg, reo_kg 180,000 kg REO, treo_pct 51.25 %``."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    for name in ("lot", "product", "transfer_id", "batch", "month", "holder", "enterprise", "buyer", "seller",
                 "party", "category", "year", "batch_no"):
        v = body.get(name)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            parts.append(f"{name.replace('_', ' ')} {v}")
        elif isinstance(v, dict) and {"year", "batch_no"} <= set(v):
            parts.append(f"{name} {v['year']}/{v['batch_no']}")
    for name, v in body.items():
        unit = _unit(name)
        if unit and isinstance(v, str):
            parts.append(f"{name} {grouped(v)} {unit}")
    for name in ("lines", "inputs", "outputs"):
        lines = body.get(name)
        if isinstance(lines, list) and lines:
            kg, reo = _sum(lines, "kg"), _sum(lines, "reo_kg")
            bit = f"{name} ({len(lines)} lot{'s' if len(lines) != 1 else ''})"
            if kg is not None:
                bit += f" {grouped(encoding.decimal_text(kg))} kg"
            if reo is not None:
                bit += f", {grouped(encoding.decimal_text(reo))} kg REO"
            parts.append(bit)
    return "; ".join(parts)


def _steps(r: "Replay | ReplayStream") -> Iterable[Step]:
    return r.steps if isinstance(r, Replay) else r


def iter_csv(r: "Replay | ReplayStream") -> Iterator[str]:
    """CSV lines, one a step: where it sits, what it says, its hash and signature, its findings."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "kind", "seq", "type", "occurred_at", "recorded_at", "counterparty", "says", "entry_hash",
                "signature", "findings"])
    for s in _steps(r):
        w.writerow([s.index, s.kind, s.seq or "", s.type or "", s.occurred_at or "", s.recorded_at,
                    s.counterparty or "", says(s.type, s.body), s.entry_hash or "", s.signature,
                    " ".join(f["code"] for f in s.findings)])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def iter_json(r: "Replay | ReplayStream") -> Iterator[str]:
    """The replay as one JSON document, written as it is read: the same text as
    ``json.dumps(replay.to_dict(), indent=2)`` (the party, its name, the log size and checkpoint,
    then the steps one by one, then the first finding of each rule, the signature counts and the
    credit records), ending with a newline."""
    import json

    head = json.dumps(r.head_dict(), indent=2, default=str)
    yield head[:-2] + ',\n  "steps": ['
    n = 0
    for s in _steps(r):
        yield ("\n    " if n == 0 else ",\n    ") + json.dumps(s.to_dict(), indent=2, default=str).replace("\n", "\n    ")
        n += 1
    tail = json.dumps(r.tail_dict(), indent=2, default=str)
    yield ("\n  ]" if n else "]") + ",\n" + tail[2:] + "\n"


def head_text(r: "Replay | ReplayStream") -> str:
    """The first line: the party, and the log size and checkpoint the replay reflects."""
    cp = r.checkpoint
    where = (f"latest checkpoint within it: size {cp['size']}, root {cp['root'][:16]}…" if cp
             else "no checkpoint within it")
    return f"Replay of {r.party}" + (f" ({r.name})" if r.name else "") + f", log size {r.size}; {where}"


def iter_text(r: "Replay | ReplayStream") -> Iterator[str]:
    """Lines for the terminal: the header (:func:`head_text`), one block per step, then how many
    steps and signatures, and the first entry that broke each rule."""
    yield head_text(r)
    for s in _steps(r):
        if s.kind == "entry":
            cp = f" with {s.counterparty}" if s.counterparty else ""
            yield f"\n#{s.index} seq {s.seq} {s.type}{cp}  occurred {s.occurred_at}  recorded {s.recorded_at}"
            said = says(s.type, s.body)
            if said:
                yield f"   says {said}"
            yield f"   hash {s.entry_hash}  signature {s.signature}"
            if s.lots:
                yield f"   lots {', '.join(s.lots[:6])}" + (" …" if len(s.lots) > 6 else "")
        else:
            yield f"\n#{s.index} (another party's entry, recorded {s.recorded_at})"
        held = [f"{lt} {grouped(v['kg'])} kg" for lt, v in list(s.stock.items())[:4]]
        if held:
            yield f"   stock after: {'; '.join(held)}" + (f" (+{len(s.stock) - 4} lots)" if len(s.stock) > 4 else "")
        if s.quota_used:
            yield "   quota used: " + ", ".join(f"{k} {grouped(v)} t REO" for k, v in s.quota_used.items())
        for f in s.findings:
            yield f"   FINDING {f['code']} ({f['rule']}): {f['message']}"
    yield f"\n{r.step_count} steps, signatures {r.signatures_valid} valid, {r.signatures_invalid} invalid"
    if r.first_by_rule:
        yield "\nFirst entry that broke each rule:"
        for rule, f in r.first_by_rule.items():
            ev = f["evidence"][0] if f["evidence"] else {}
            yield f"   {rule}: log index {f['index']} ({ev.get('chain')}:{ev.get('seq')}) {f['code']}"
