"""``reledger verify --projections``: recompute the derived rows from the log and name every
row of the projection tables that differs.

The log is read page by page and folded by a fresh :class:`~reledger.projections.model.Projector`
(the same fold the follower runs, :func:`reledger.projections.store.page_rows`); each table's
rows are read in log-index order alongside, page for page, and compared as multisets: a row the
log gives that the table lacks (a deleted finding), a row the table holds that the log does not
give (an inserted one), or both at one log index (a changed quota figure). The running quota
totals kept at positions (``quota_sums``, ``quota_marks``) are compared at each position, and
the tracking position against the log's size. Everything is read in one read-only snapshot
(nothing is written); memory holds one page of rows and the rule state (which the rules need),
never the tables or the log.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator

from reledger.ledger.encoding import micros_to_time_text

from .model import Projector
from . import state as rowstate
from . import store as pstore
from .store import COLUMNS, P, PG_TYPES, ROW_TABLES, ProjectionReader, page_rows

MAX_NAMED = 1000  # differences named one by one (the rest are counted)


def _normaliser(table: str) -> Callable[[tuple], tuple]:
    """Values as their column stores them (text columns as text, integer columns as int): the
    follower's rows go through the same conversion when written."""
    kinds = [t.startswith("int") for t in PG_TYPES[table]]

    def norm(row: tuple) -> tuple:
        return tuple(None if v is None else (int(v) if k else str(v)) for v, k in zip(row, kinds))
    return norm


class _TableRows:
    """One table's rows in log-index order, taken a page at a time."""

    def __init__(self, ps: ProjectionReader, table: str, n: int):
        self.table = table
        cols = COLUMNS[table]
        self.idx_at = cols.index("idx")
        self.norm = _normaliser(table)
        sql = f"SELECT {', '.join(cols)} FROM {P}{table} ORDER BY idx"
        self.cur = ps.reader.streaming_cursor(f"reledger_check_{table}")  # streamed, not fetched whole
        self.cur.execute(sql)
        self.rows: Iterator[tuple] = iter(self.cur)
        self.peek: tuple | None = None
        self._advance()

    def _advance(self) -> None:
        try:
            self.peek = self.norm(tuple(next(self.rows)))
        except StopIteration:
            self.peek = None

    def below(self, stop: int | None) -> list[tuple]:
        """The rows with idx < ``stop`` not taken yet (all of them with None)."""
        out = []
        while self.peek is not None and (stop is None or self.peek[self.idx_at] < stop):
            out.append(self.peek)
            self._advance()
        return out

    def close(self) -> None:
        try:
            self.cur.close()
        except Exception:  # noqa: BLE001
            pass


def _describe(table: str, row: tuple) -> str:
    cols = COLUMNS[table]
    parts = []
    for c, v in zip(cols, row):
        if c == "occurred_us" and isinstance(v, int):
            v = micros_to_time_text(v)
        if c in ("evidence",):
            continue  # long; the code and message name the finding
        parts.append(f"{c}={v}")
    return "(" + ", ".join(parts) + ")"


class ProjectionCheck:
    """The differences found (named up to MAX_NAMED, all counted)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.count = 0
        self.by_table: Counter = Counter()
        self.entries = 0
        self.position = 0
        self.log_size = 0

    def add(self, table: str, text: str) -> None:
        self.count += 1
        self.by_table[table] += 1
        if len(self.problems) < MAX_NAMED:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return self.count == 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "projections_position": self.position, "log_size": self.log_size,
                "entries_recomputed": self.entries, "differences": self.count,
                "differences_by_table": dict(sorted(self.by_table.items())), "problems": self.problems,
                "problems_left_out": max(self.count - len(self.problems), 0)}


def _compare(check: ProjectionCheck, table: str, expected: list[tuple], actual: list[tuple]) -> None:
    if expected == actual:
        return
    exp, act = Counter(expected), Counter(actual)
    if exp == act:
        return
    idx_at = COLUMNS[table].index("idx")
    missing = exp - act
    extra = act - exp
    by_idx: dict[int, tuple[list, list]] = {}
    for row, k in missing.items():
        by_idx.setdefault(row[idx_at], ([], []))[0].extend([row] * k)
    for row, k in extra.items():
        by_idx.setdefault(row[idx_at], ([], []))[1].extend([row] * k)
    for idx in sorted(by_idx, key=lambda v: (v is None, v if isinstance(v, int) else 0)):
        want, have = by_idx[idx]
        while want and have:
            check.add(table, f"{P}{table} at log index {idx}: the table has {_describe(table, have.pop(0))} "
                             f"where the log gives {_describe(table, want.pop(0))} (changed)")
        for row in want:
            check.add(table, f"{P}{table} at log index {idx}: the log gives {_describe(table, row)}, "
                             "which the table lacks (deleted)")
        for row in have:
            check.add(table, f"{P}{table} at log index {idx}: the table has {_describe(table, row)}, "
                             "which the log does not give (inserted or changed)")


def verify_projections(url: str, progress: Callable[[int, int], None] | None = None,
                       page: int | None = None) -> ProjectionCheck:
    """Recompute every derived row from the log up to the projections' position and compare;
    raises :class:`reledger.storage.reader.NoLedger` (or NoProjections) when there is nothing
    to check."""
    check = ProjectionCheck()
    page = page or pstore.REBUILD_PAGE
    every = pstore.QUOTA_SUMS_EVERY  # where the follower keeps the running quota totals
    ps = ProjectionReader(url)
    try:
        ps.reader.begin_snapshot()  # the tables and the log as of one moment
        position = ps.position()
        size = ps.reader.queries.size(ps.reader.cursor())[0]
        check.position, check.log_size = position, size
        if position > size:
            check.add("tracking", f"{P}tracking says {position} entries are projected, but the log holds {size}")
        n = min(position, size)
        streams = {t: _TableRows(ps, t, n) for t in ROW_TABLES}
        norms = {t: _normaliser(t) for t in ROW_TABLES}
        sums_norm = _normaliser("quota_sums")
        scratch = rowstate.ScratchState()
        proj = Projector(scratch.state)
        start = 0
        try:
            while start < n:
                end = min(n, start + page, (start // every + 1) * every)
                records = ps.reader.queries.records(ps.reader.cursor(), start, end)
                if len(records) != end - start:
                    check.add("log", f"the log lacks entries in [{start}, {end}): run reledger verify")
                    break
                rows, _ = page_rows(proj, records)
                scratch.flush()
                for t in ROW_TABLES:
                    norm = norms[t]
                    _compare(check, t, [norm(r) for r in rows[t]], streams[t].below(end))
                if end % every == 0 and proj.quota_sums is not None:
                    want = [sums_norm((end, *k, g)) for k, g in proj.quota_sums.items()]
                    have = [sums_norm(r) for r in ps.execute(
                        f"SELECT {', '.join(COLUMNS['quota_sums'])} FROM {P}quota_sums WHERE position = ?", (end,))]
                    _compare_sums(check, end, want, have, ps, proj.quota_max_occ)
                check.entries = end
                start = end
                if progress:
                    progress(end, n)
            for t in ROW_TABLES:  # rows past the projections' position: none may exist
                for row in streams[t].below(None):
                    check.add(t, f"{P}{t} at log index {row[COLUMNS[t].index('idx')]}: the table has "
                                 f"{_describe(t, row)}, past the projections' position {n}")
            for (pos,) in ps.execute(f"SELECT position FROM {P}quota_marks WHERE position > ? ORDER BY position",
                                     (n,)):
                check.add("quota_marks", f"{P}quota_marks has position {pos}, past the projections' position {n}")
        finally:
            for s in streams.values():
                s.close()
            scratch.close()
        ps.reader.end_snapshot()
    finally:
        ps.close()
    return check


def _compare_sums(check: ProjectionCheck, position: int, want: list[tuple], have: list[tuple],
                  ps: ProjectionReader, max_occ: int | None) -> None:
    if Counter(want) != Counter(have):
        # the totals are keyed by (year, party, category, kind, grp): name each key that differs
        w = {r[1:6]: r[6] for r in want}
        h: dict[tuple, int] = {}
        for r in have:
            h[r[1:6]] = h.get(r[1:6], 0) + r[6]
        for key in sorted(set(w) | set(h), key=repr):
            if w.get(key) != h.get(key):
                check.add("quota_sums", f"{P}quota_sums at position {position} for {key}: the table has "
                                        f"{h.get(key)} g where the log gives {w.get(key)} g")
    rows = ps.execute(f"SELECT max_occurred_us FROM {P}quota_marks WHERE position = ?", (position,))
    if not rows:
        check.add("quota_marks", f"{P}quota_marks lacks position {position}")
    elif (None if rows[0][0] is None else int(rows[0][0])) != max_occ:
        check.add("quota_marks", f"{P}quota_marks at position {position}: the table has max_occurred_us "
                                 f"{rows[0][0]} where the log gives {max_occ}")
