"""Projections (``--suite projections``): how fast the projection tables follow the log, against
the raw rate of reading the same log, measured in the same run.

* **read_raw**: ``LogReader.iter_records`` + ``SignedEntry.parse`` over the whole log (what
  any replay must at least do);
* **rebuild**: ``ProjectionStore.rebuild`` over the same log (drop the tables, replay, write
  every delta row and the rule state's rows), interleaved with read_raw in rounds;
* **large log** (``--large-projections N``): a real log of about N entries (the realistic
  workload of bench/realistic.py, appended with ``LedgerStore`` prepare/finish pipelined, the
  record clock following the business times), rebuilt once (**large_replay**), then
  ``queries.quota(ps, year, Point(as_of=N/2))`` (**quota_query_ms**, median of repeats) and
  the ratio of that query's time to the full replay's; and the same query as of the position
  just before the next kept quota totals (**quota_query_worst_ms**: the longest roll-forward,
  ``QUOTA_SUMS_EVERY`` - 1 entries);
* **lag**: a writer appends batches at a fixed rate while ``reledger.projections.follow.follow``
  (another thread, its own connections; LISTEN/NOTIFY on PostgreSQL, polling on SQLite) keeps the
  projections up: lag in entries (sampled) and seconds (commit of a batch -> projections past
  it), p50 and p99.

The log is realistic: registry and quota of a control year, mines producing and shipping lots,
plants receiving, separating, counting stock, every producer's monthly report. The first log is
written through ``CommandAPI`` (every entry checked against the catalogue); the large one
straight through the store (the same generator). Targets: rebuild >= 0.3 x read_raw; the
point-in-time quota query at 10^6 entries under 100 ms.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import reledger.projections.store
from reledger.commands.api import CommandAPI
from reledger.ledger.entry import SignedEntry
from reledger.projections import queries
from reledger.projections.follow import follow
from reledger.projections.store import ProjectionStore
from reledger.storage.reader import LogReader
from reledger.storage.store import LedgerStore

from . import realistic as rl
from .measure import Acc, timed

TARGETS = {"rebuild/read_raw": 0.3}
LIMITS = {"quota_query_ms": ("<", 100.0)}
FIGURES = ("read_raw", "rebuild", "append_api", "large_append", "large_read_raw", "large_replay", "quota_query_ms",
           "quota_query_worst_ms", "large_entries", "lag_append_rate", "lag_entries_p50", "lag_entries_p99",
           "lag_seconds_p50", "lag_seconds_p99")
RATIOS = ("rebuild/read_raw", "large_replay/large_read_raw", "quota_query/large_replay")


@dataclass(frozen=True)
class ProjSizes:
    log: int = 20_000  # business entries of the rebuild log
    rounds: int = 3
    large: int = 1_000_000
    query_reps: int = 7
    lag_seconds: float = 8.0
    lag_rate: int = 1000  # entries per second the writer appends
    lag_batch: int = 50  # entries per append
    batch: int = 500  # entries per transaction when building logs

    @classmethod
    def quick(cls) -> "ProjSizes":
        return cls(log=1_500, rounds=1, large=20_000, query_reps=3, lag_seconds=1.5, lag_rate=400, lag_batch=20)


def read_raw_log(url: str) -> int:
    """Read and parse every entry of the log (the raw read: the baseline of rebuild and replay);
    how many there were."""
    n = 0
    with LogReader(url) as r:
        for rec in r.iter_records():
            SignedEntry.parse(rec.envelope)
            n += 1
    return n


def _append_log(store, clock: list[int], log: rl.Log, start: int, stop: int, batch: int) -> None:
    """Append log[start:stop] pipelined (signatures of the next batch checked while the
    current one is written), each batch recorded at its own record time."""
    batches = list(log.batches(batch, start, stop))
    pending = store.prepare([batches[0][1]]) if batches else None
    for k in range(len(batches)):
        following = store.prepare([batches[k + 1][1]]) if k + 1 < len(batches) else None
        clock[0] = batches[k][0]
        result = store.finish(pending)[0]
        if not isinstance(result, list):
            raise result
        pending = following


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def run_projections(backend, sizes: ProjSizes, log: Callable[[str], None]) -> dict[str, Any]:
    problems: list[str] = []
    accs = {k: Acc() for k in ("read_raw", "rebuild", "append_api", "large_append", "large_read_raw", "large_replay",
                               "quota_query", "quota_query_worst")}
    lag_entries = int(sizes.lag_rate * sizes.lag_seconds * 1.3) + sizes.lag_batch
    log(f"[{backend.name}] projections: signing a realistic log of {sizes.log:,} + {lag_entries:,} entries")
    work = rl.build(sizes.log + lag_entries)
    # the log to rebuild: the first part of work, through the command API (catalogue checks)
    cut = len(work.envelopes) - lag_entries
    url = backend.ledger_url("proj")
    clock = [work.occurred_us[0] + 5 * rl.MINUTE]
    store = LedgerStore(url, clock=lambda: clock[0])
    api = CommandAPI(store)
    store.append(work.envelopes[:work.genesis])

    def via_api() -> None:
        for rt, b in work.batches(sizes.batch, work.genesis, cut):
            clock[0] = rt
            for r in api.submit_groups([[e] for e in b]):
                if not isinstance(r, list):
                    raise RuntimeError(f"the command API refused a benchmark entry: {r}")

    log(f"[{backend.name}] projections: appending {cut:,} entries through CommandAPI")
    timed(accs["append_api"], cut - work.genesis, via_api)
    ps = ProjectionStore(url)
    try:
        for r in range(sizes.rounds):
            log(f"[{backend.name}] projections: round {r + 1}/{sizes.rounds}: read_raw, rebuild")
            legs = [("read_raw", lambda: read_raw_log(url)), ("rebuild", ps.rebuild)]
            if r % 2:
                legs.reverse()
            for key, fn in legs:
                n = timed(accs[key], cut, fn)
                if n != cut:
                    problems.append(f"{key} saw {n} entries, expected {cut}")
        findings = queries.findings(ps)["findings"]
        codes: dict[str, int] = {}
        for f in findings:
            codes[f["code"]] = codes.get(f["code"], 0) + 1

        # --- lag under sustained append -------------------------------------------------------
        log(f"[{backend.name}] projections: lag, {sizes.lag_rate}/s in batches of {sizes.lag_batch} "
            f"for {sizes.lag_seconds} s")
        lag = _lag(url, store, clock, work, cut, sizes)
        follower_findings = len(findings)
    finally:
        ps.close()
        store.close()
        backend.drop("proj")

    # --- the large log ------------------------------------------------------------------------
    log(f"[{backend.name}] projections: signing a log of {sizes.large:,} entries")
    t0 = time.perf_counter()
    big = rl.build(sizes.large)
    sign_s = time.perf_counter() - t0
    n_big = len(big.envelopes)
    url = backend.ledger_url("plarge")
    clock = [big.occurred_us[0] + 5 * rl.MINUTE]
    store = LedgerStore(url, clock=lambda: clock[0])
    try:
        log(f"[{backend.name}] projections: appending {n_big:,} entries (signed in {sign_s:.0f} s)")
        store.append(big.envelopes[:big.genesis])
        timed(accs["large_append"], n_big - big.genesis,
              lambda: _append_log(store, clock, big, big.genesis, n_big, sizes.batch))
        big = None  # the signed log: not kept while reading
        log(f"[{backend.name}] projections: reading and replaying the large log")
        n = timed(accs["large_read_raw"], n_big, lambda: read_raw_log(url))
        ps = ProjectionStore(url)
        try:
            n2 = timed(accs["large_replay"], n_big, ps.rebuild)
            if (n, n2) != (n_big, n_big):
                problems.append(f"the large log: read {n}, replayed {n2}, expected {n_big}")
            point = queries.Point(as_of=n_big // 2)
            answers = []
            for _ in range(sizes.query_reps):
                answers.append(timed(accs["quota_query"], 1, lambda: queries.quota(ps, work.year, point)))
            q = answers[-1]
            if not q.get("enterprises"):
                problems.append("the quota query at N/2 answered no enterprise")
            # the longest roll-forward from kept totals: as of just before the next kept position
            every = reledger.projections.store.QUOTA_SUMS_EVERY
            worst = queries.Point(as_of=min(n_big, (n_big // 2 // every + 1) * every - 1))
            for _ in range(sizes.query_reps):
                timed(accs["quota_query_worst"], 1, lambda: queries.quota(ps, work.year, worst))
        finally:
            ps.close()
    finally:
        store.close()
        backend.drop("plarge")

    query_s = statistics.median([1 / s for s in accs["quota_query"].samples])  # samples are 1/seconds
    worst_s = statistics.median([1 / s for s in accs["quota_query_worst"].samples])
    f: dict[str, float] = {k: accs[k].rate for k in ("read_raw", "rebuild", "append_api", "large_append",
                                                       "large_read_raw", "large_replay")}
    f["quota_query_ms"] = query_s * 1000
    f["quota_query_worst_ms"] = worst_s * 1000
    f["large_entries"] = n_big
    f.update(lag["figures"])
    replay_s = accs["large_replay"].wall
    ratios = {
        "rebuild/read_raw": f["rebuild"] / f["read_raw"] if f["read_raw"] else 0.0,
        "large_replay/large_read_raw": f["large_replay"] / f["large_read_raw"] if f["large_read_raw"] else 0.0,
        "quota_query/large_replay": query_s / replay_s if replay_s else 0.0,
    }
    ratios_doc = {k: {"value": v, "target": TARGETS.get(k), "met": None if k not in TARGETS else v >= TARGETS[k]}
                  for k, v in ratios.items()}
    limits = {}
    for name, (op, target) in LIMITS.items():
        value = f[name]
        limits[name] = {"value": value, "op": op, "target": target, "at_entries": n_big,
                        "met": value < target if op == "<" else value >= target}
    problems += lag["problems"]
    return {"info": backend.describe(), "figures": f, "ratios": ratios_doc, "limits": limits,
            "sizes": {**sizes.__dict__, "rebuild_log": cut, "large_log": n_big, "large_sign_seconds": round(sign_s, 1)},
            "detail": {**{k: a.to_dict() for k, a in accs.items()}, "lag": lag["detail"],
                       "findings_by_code": codes, "findings": follower_findings},
            "problems": problems}


def _lag(url: str, store, clock: list[int], work: rl.Log, start: int, sizes: ProjSizes) -> dict[str, Any]:
    """A writer appends work[start:] at sizes.lag_rate while the projections follow the log (projections.follow.follow) in
    another thread; this thread samples the projections' position every few milliseconds."""
    follower_ps = ProjectionStore(url)
    sampler = ProjectionStore(url)
    stop_follow = threading.Event()
    follower = threading.Thread(target=follow, args=(follower_ps, stop_follow), name="bench-follow", daemon=True)
    follower.start()
    commits: list[tuple[float, int]] = []  # (commit time, log size after it)
    errors: list[str] = []
    writer_done = threading.Event()
    interval = sizes.lag_batch / sizes.lag_rate
    end = len(work.envelopes)

    def writer() -> None:
        try:
            t_start = time.perf_counter()
            k = 0
            for rt, batch in work.batches(sizes.lag_batch, start, end):
                due = t_start + k * interval
                if due - t_start >= sizes.lag_seconds:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                clock[0] = rt
                receipts = store.append(batch)
                commits.append((time.perf_counter(), receipts[-1].index + 1))
                k += 1
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"lag writer: {type(e).__name__}: {e}")
        finally:
            writer_done.set()

    samples: list[tuple[float, int]] = []
    time.sleep(0.3)  # the follower's first catch-up
    w = threading.Thread(target=writer, name="bench-writer", daemon=True)
    t0 = time.perf_counter()
    w.start()
    deadline = None
    while True:
        now = time.perf_counter()
        pos = sampler.position()
        samples.append((now, pos))
        if writer_done.is_set():
            target = commits[-1][1] if commits else start
            if pos >= target:
                break
            deadline = deadline or now + 30
            if now > deadline:
                errors.append(f"the follower was still at {pos} of {target} 30 s after the writer stopped")
                break
        time.sleep(0.005)
    w.join()
    wall = (commits[-1][0] - t0) if commits else 0.0
    stop_follow.set()
    follower.join(timeout=15)
    sampler.close()
    follower_ps.close()
    # lag in entries: at each sample (while writing), committed - projected
    lag_n = []
    ci = 0
    for t, pos in samples:
        while ci < len(commits) and commits[ci][0] <= t:
            ci += 1
        committed = commits[ci - 1][1] if ci else start
        if t <= (commits[-1][0] if commits else t0):
            lag_n.append(max(0, committed - pos))
    # lag in seconds: each commit -> the first sample at or past it
    lag_s = []
    si = 0
    for tc, size in commits:
        while si < len(samples) and (samples[si][0] < tc or samples[si][1] < size):
            si += 1
        if si < len(samples):
            lag_s.append(samples[si][0] - tc)
    appended = (commits[-1][1] - start) if commits else 0
    figures = {"lag_append_rate": appended / wall if wall else 0.0,
               "lag_entries_p50": _pct(lag_n, 0.5), "lag_entries_p99": _pct(lag_n, 0.99),
               "lag_seconds_p50": _pct(lag_s, 0.5), "lag_seconds_p99": _pct(lag_s, 0.99)}
    return {"figures": figures, "problems": errors,
            "detail": {"appended": appended, "batches": len(commits), "samples": len(samples),
                       "seconds": round(wall, 3), "lag_seconds_max": max(lag_s, default=0.0),
                       "lag_entries_max": max(lag_n, default=0)}}
