"""``reledger bench``: how fast the signed ledger core appends and verifies, against what the
hardware and the storage library can do on the same machine, in the same run.

Figures (entries per second unless said otherwise), per backend (SQLite file, PostgreSQL schema):

* **P** - plain ``eventsourcing`` 9.5: the library's own recorder (``insert_events``) saving
  unsigned events of the same bytes (the very envelopes the ledger stores), singly (one event
  per transaction) and batched (``--batch`` events per transaction);
* **V** - raw Ed25519 verifications per second on one core (``cryptography``), over the same
  messages; **c** = ``os.cpu_count()``;
* **L** = 1 / (1/P + 1/(c*V)): storing at P after verifying on every core; the bound a
  ledger that verifies every signature can approach;
* **append** - ``LedgerStore.append`` (one entry per call) and ``LedgerStore.append_pipelined``
  (batches of ``--batch``) of pre-signed envelopes (bytes, as clients send them): parse,
  verify every signature, check chain and key registry, extend the Merkle log, store;
* **growth** - batched append with 10^5 entries already in the log against 10^3;
* **verify** - ``reledger.storage.verify.verify_database`` over the large log (10^5 + entries).

To keep ratios meaningful on a noisy shared machine, the measurements are interleaved in
rounds (P, append, V, small log and large log alternate) and each rate is total entries over
total time of its samples. Targets: batched append >= 0.8 L; append at 10^5 >= 0.9 of append at
10^3; verify >= 0.8 c*V. Missing a target is reported, not an error: the exit status is 0
unless the benchmark could not run (2) or a ledger it built failed verification (1).

Two more suites run in the same invocation (``--suite core|http|projections|all``, default all;
their figures and ratios are under ``suites`` in the JSON document):

* **http** (bench/http_suite.py): a real ``reledger serve`` process on loopback, 1/4/16
  concurrent clients, one entry per request and batched requests, against the same framework's
  trivial endpoint and in-process ``CommandAPI.submit`` on the same backend;
* **projections** (bench/projections_suite.py): ``ProjectionStore.rebuild`` against the raw
  read rate of the same log, a point-in-time quota query on a large log
  (``--large-projections N``, default 10^6, 2*10^4 with --quick) against its full replay, and
  the projections' lag behind a writer appending at a fixed rate.

A fourth, long suite runs only when asked (``--suite scale``, not part of ``all``):

* **scale** (bench/scale_suite.py): one realistic national log (bench/national.py) grown through
  the command API's group commit to each of ``--sizes`` (default 10^5,10^6) in turn; at each
  size the append rate, ``reledger rebuild`` against a raw read, ``quota``/``stock``/``findings``
  as a user runs them (p50/p99 over parties and points in time), ``replay`` (first line, total),
  ``investigate``, and ``reledger serve``'s memory after a warm-up; peak memory of each command.

Run: ``python -m reledger.bench.run [--quick] [--json] [--suite core|http|projections|scale|all]
[--backend sqlite|postgres|both] [--pg URL] [--large-projections N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.persistence import StoredEvent
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reledger.ledger.checkpoint import NoteSigner
from reledger.ledger.entry import ENTRY_TAG, SignedEntry
from reledger.storage.verify import verify_database
from reledger.storage.store import LedgerStore

from . import workload as wl
from .backends import DEFAULT_PG, Backend, PostgresBackend, SQLiteBackend, pg_reachable
from .http_suite import HttpSizes, run_http
from .measure import Acc, cpu_seconds, timed
from .projections_suite import ProjSizes, run_projections
from .scale_suite import ScaleSizes, run_scale
from .report import render_suites

SCHEMA_VERSION = 2
SUITES = ("core", "http", "projections")
TARGETS = {"append_batch/L_batch": 0.8, "append_large/append_small": 0.9, "verify/cV": 0.8}

# Every figure and ratio the JSON document carries for a backend (the smoke test checks them).
FIGURES = ("P_single", "P_batch", "V", "V_keyload", "c", "cV", "L_single", "L_batch",
           "append_single", "append_batch", "append_batch_cold", "append_small", "append_large", "prefill",
           "verify")
RATIOS = ("append_single/P_single", "append_single/L_single", "append_batch/P_batch",
          "append_batch/L_batch", "append_batch_cold/L_batch", "append_large/append_small", "verify/cV")


@dataclass(frozen=True)
class Sizes:
    batch: int = 500  # entries per transaction in the batched modes
    small_log: int = 1_000  # log size for the "small" side of the growth figure
    large_log: int = 100_000  # log size for the "large" side (and for verify)
    rounds: int = 3  # interleaved measurement rounds
    single: int = 300  # entries appended one per transaction per round
    window: int = 5_000  # entries appended batched per round, on each log
    v_sample: int = 3_000  # Ed25519 verifications per V sample
    verify_reps: int = 2  # runs of verify_database over the large log
    parties: int = 8  # enterprise chains the entries are spread over

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(batch=50, small_log=100, large_log=1_000, rounds=1, single=20, window=200, v_sample=300,
                   verify_reps=1, parties=4)

    def business_entries(self, setup: int) -> int:
        """Business entries to sign: the large log, its windows, and P's extra singles."""
        small_needs = self.small_log + self.single + self.window
        large_needs = self.large_log + self.rounds * self.window + self.rounds * self.single
        return max(small_needs, large_needs) - setup


def batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --- the pieces measured -------------------------------------------------------------------

class VerifySample:
    """Raw Ed25519 verification over the messages the ledger verifies (tag || content)."""

    def __init__(self, work: wl.Workload, n: int):
        pubs = {}
        for i in range(work.parties):
            k = wl.party_key(i)
            pubs[k.key_id] = k.public_key
        self.items = []
        for env in work.entries[:n]:
            s = SignedEntry.parse(env)
            raw = pubs[s.entry.key_id]
            self.items.append((Ed25519PublicKey.from_public_bytes(raw), raw, s.signature, ENTRY_TAG + s.content))

    def run(self) -> None:
        for key, _, sig, msg in self.items:
            key.verify(sig, msg)

    def run_keyload(self) -> None:
        for _, raw, sig, msg in self.items:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, msg)


def stored_events(envelopes: Sequence[bytes]) -> list:
    """StoredEvents carrying exactly the envelopes (same ids, versions, topics, bytes)."""

    out = []
    for env in envelopes:
        e = SignedEntry.parse(env).entry
        out.append(StoredEvent(e.chain, e.seq, e.type, env))
    return out


def _fill(store, envelopes: Sequence[bytes], batch: int) -> None:
    for _ in store.append_pipelined(batches(envelopes, batch)):
        pass


def _fill_timed(steady: Acc, cold: Acc, store, envelopes: Sequence[bytes], batch: int) -> None:
    """Append ``envelopes`` through the pipeline in batches, timed two ways: ``cold`` from the
    call to the last commit (every entry), ``steady`` from the first batch's commit to the last
    (the entries after the first batch). The first batch is checked while nothing can be written
    yet (the pipeline fills): over a window of ten batches that start-up is ~10% of the cold
    time, and L models a sustained rate, so the batched append ratio takes the steady one."""
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    it = store.append_pipelined(batches(envelopes, batch))
    first = len(next(it))
    c1, t1 = cpu_seconds(), time.perf_counter()
    n = 0
    for receipts in it:
        n += len(receipts)
    c2, t2 = cpu_seconds(), time.perf_counter()
    cold.add(first + n, t2 - t0, c2 - c0)
    steady.add(n, t2 - t1, c2 - c1)


def _append_singly(store, envelopes: Sequence[bytes]) -> None:
    for env in envelopes:
        store.append([env])


def _insert_singly(recorder, events: Sequence) -> None:
    for ev in events:
        recorder.insert_events([ev])


def _insert_batched(recorder, events: Sequence, batch: int) -> None:
    for chunk in batches(events, batch):
        recorder.insert_events(list(chunk))


# --- one backend ---------------------------------------------------------------------------

@dataclass
class BackendResult:
    name: str
    info: dict[str, Any]
    accs: dict[str, Acc] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)
    verify_report: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def figures(self, c: int) -> dict[str, float]:
        f = {k: a.rate for k, a in self.accs.items()}
        f["c"] = c
        f["cV"] = c * f["V"]
        for mode in ("single", "batch"):
            p = f[f"P_{mode}"]
            f[f"L_{mode}"] = 1.0 / (1.0 / p + 1.0 / f["cV"]) if p > 0 and f["cV"] > 0 else 0.0
        f["append_batch"] = f["append_small"]
        f["append_batch_cold"] = f["append_small_cold"]
        return f

    def ratios(self, f: dict[str, float]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in RATIOS:
            num, den = name.split("/")
            value = f[num] / f[den] if f[den] else 0.0
            target = TARGETS.get(name)
            out[name] = {"value": value, "target": target, "met": None if target is None else value >= target}
        return out


def run_backend(backend: Backend, work: wl.Workload, sizes: Sizes, log: Callable[[str], None]) -> BackendResult:
    res = BackendResult(backend.name, backend.describe())
    accs = res.accs
    for k in ("P_single", "P_batch", "V", "V_keyload", "append_single", "append_small", "append_large",
              "append_small_cold", "append_large_cold",
              "prefill", "verify"):
        accs[k] = Acc()
    all_env = work.all
    s, b, W, L = sizes.single, sizes.batch, sizes.window, sizes.large_log
    vs = VerifySample(work, sizes.v_sample)

    def v_sample() -> None:
        timed(accs["V"], len(vs.items), vs.run)
        timed(accs["V_keyload"], len(vs.items), vs.run_keyload)

    # The large log: setup + business entries up to large_log (timed as "prefill", for information).
    log(f"[{backend.name}] filling the large log to {L:,} entries")
    big = LedgerStore(backend.ledger_url("large"))
    big.append(all_env[:len(work.setup)])
    timed(accs["prefill"], L - len(work.setup), lambda: _fill(big, all_env[len(work.setup):L], b))

    # Plain eventsourcing: its own database; it saves envelopes not used by any ledger here.
    plain = backend.plain_app("plain")
    p_events = stored_events(all_env[L + sizes.rounds * W: L + sizes.rounds * (W + s)])
    p_batch_events = stored_events(all_env[L: L + sizes.rounds * W])
    try:
        for r in range(sizes.rounds):
            log(f"[{backend.name}] round {r + 1}/{sizes.rounds}")
            small_tag = f"small{r}"
            small = LedgerStore(backend.ledger_url(small_tag))
            try:
                _fill(small, all_env[:sizes.small_log], b)  # untimed: a log of small_log entries
                v_sample()
                timed(accs["P_single"], s, lambda: _insert_singly(plain.recorder, p_events[r * s:(r + 1) * s]))
                timed(accs["append_single"], s,
                      lambda: _append_singly(small, all_env[sizes.small_log:sizes.small_log + s]))
                timed(accs["P_batch"], W, lambda: _insert_batched(plain.recorder, p_batch_events[r * W:(r + 1) * W], b))
                small_window = all_env[sizes.small_log + s:sizes.small_log + s + W]
                large_window = all_env[L + r * W:L + (r + 1) * W]
                legs = [("append_small", small, small_window), ("append_large", big, large_window)]
                if r % 2:
                    legs.reverse()
                for key, store, window in legs:
                    _fill_timed(accs[key], accs[key + "_cold"], store, window, b)
                v_sample()
            finally:
                small.close()
                backend.drop(small_tag)
        res.sizes.update({"small_log": sizes.small_log, "small_log_after": sizes.small_log + s + W,
                          "large_log": L, "large_log_after": L + sizes.rounds * W})
        # A signed checkpoint, so that verify checks one too.
        ck = wl.checkpoint_key()
        big.checkpoint(NoteSigner(wl.ORIGIN, ck.private_key))
    finally:
        plain.close()
        big.close()

    # verify_database over the large log, repeated (each run between V samples), so that one
    # burst of load on a shared machine does not decide the ratio
    for rep in range(sizes.verify_reps):
        log(f"[{backend.name}] verify_database over {L + sizes.rounds * W:,} entries ({rep + 1}/{sizes.verify_reps})")
        v_sample()
        report = timed(accs["verify"], L + sizes.rounds * W, lambda: verify_database(backend.ledger_url("large")))
    v_sample()
    res.verify_report = {"ok": report.ok, "entries": report.entries, "chains": report.chains,
                         "checkpoints": report.checkpoints, "problem_count": len(report.problems),
                         "first_problem": report.first.to_dict() if report.first else None}
    if report.entries != L + sizes.rounds * W:
        res.problems.append(f"verify saw {report.entries} entries, expected {L + sizes.rounds * W}")
    if not report.ok:
        res.problems.append(f"the benchmark's ledger failed verification: {report.first}")
    return res


# --- output ------------------------------------------------------------------------------

_OF = {"P_single": "P", "L_single": "L", "P_batch": "P", "L_batch": "L", "append_small": "small log",
       "cV": "c*V"}


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def render(doc: dict[str, Any], console) -> None:
    render_core(doc, console)

    render_suites(doc, console)


def render_core(doc: dict[str, Any], console) -> None:
    labels = {
        "P_single": "P singly (eventsourcing, 1/txn)",
        "P_batch": "P batched (eventsourcing, {batch}/txn)",
        "V": "V (Ed25519 verify, 1 core)",
        "V_keyload": "  V incl. loading the key",
        "c": "c (os.cpu_count)",
        "cV": "c*V",
        "L_single": "L singly",
        "L_batch": "L batched",
        "append_single": "append singly",
        "append_batch": "append batched, log {small} (steady)",
        "append_batch_cold": "  the same, timed from the first batch",
        "append_large": "append batched, log {large}",
        "prefill": "  prefill 0 -> {large}, batched",
        "verify": "verify_database, {verified} entries",
    }
    ratio_rows = {
        "append_single": ["append_single/P_single", "append_single/L_single"],
        "append_batch": ["append_batch/P_batch", "append_batch/L_batch"],
        "append_batch_cold": ["append_batch_cold/L_batch"],
        "append_large": ["append_large/append_small"],
        "verify": ["verify/cV"],
    }
    for name, b in doc["backends"].items():
        if "skipped" in b:
            console.print(f"[yellow]{name}: skipped: {b['skipped']}[/yellow]")
            continue
        f, r, sz = b["figures"], b["ratios"], b["sizes"]
        fmt = {"batch": doc["params"]["batch"], "small": f"{sz['small_log']:,}", "large": f"{sz['large_log']:,}",
               "verified": f"{sz['large_log_after']:,}"}
        t = Table(title=f"reledger bench - {name} ({b['info'].get('where', '')})", show_lines=False)
        t.add_column("figure")
        t.add_column("entries/s", justify="right")
        t.add_column("cores", justify="right")
        t.add_column("ratio", justify="right")
        t.add_column("target", justify="right")
        t.add_column("met")
        for key in ("P_single", "P_batch", "V", "V_keyload", "c", "cV", "L_single", "L_batch", "append_single",
                    "append_batch", "append_batch_cold", "append_large", "prefill", "verify"):
            detail = b["detail"].get({"append_batch": "append_small", "append_batch_cold": "append_small_cold"}.get(
                key, key), {})
            cores = detail.get("cores_used")
            value = str(f[key]) if key == "c" else _fmt_rate(f[key])
            rows = ratio_rows.get(key, [None])
            for i, rn in enumerate(rows):
                cells = [labels[key].format(**fmt) if i == 0 else "", value if i == 0 else "",
                         (f"{cores:.2f}" if cores is not None else "") if i == 0 else ""]
                if rn is None:
                    cells += ["", "", ""]
                else:
                    ratio = r[rn]
                    met = ratio["met"]
                    cells += [f"{ratio['value']:.2f} of {_OF[rn.split('/')[1]]}", "" if ratio["target"] is None
                              else f">= {ratio['target']}", "" if met is None else
                              ("[green]yes[/green]" if met else "[red]no[/red]")]
                t.add_row(*cells)
        console.print(t)
        for p in b["problems"]:
            console.print(f"[red]{name}: {p}[/red]")
    if "core" not in doc.get("suites_run", ("core",)):
        return
    console.print("P: eventsourcing's recorder.insert_events of the same envelopes, unsigned; "
                  "L = 1/(1/P + 1/(c*V)); append: LedgerStore.append (singly) and append_pipelined "
                  "(batched) of pre-signed envelopes; cores: CPU time of this process / wall time "
                  "(PostgreSQL's own CPU not included).")
    load = doc["machine"].get("loadavg_before")
    console.print(f"entries: {doc['workload']['mean_envelope_bytes']:.0f} B envelopes on "
                  f"{doc['workload']['parties']} chains; {doc['params']['rounds']} interleaved rounds; "
                  f"c = {doc['c']}; {doc['seconds']:.0f} s in all"
                  + (f"; load average {load[0]} before, {doc['machine']['loadavg_after'][0]} after." if load else "."))
    if load and max(load[0], doc["machine"]["loadavg_after"][0]) > doc["c"]:
        console.print("[yellow]The machine was busy (load average above the core count): rates are low and "
                      "ratios between multi-core and single-core figures are less reliable.[/yellow]")


# --- command line ------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reledger bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test; figures are not meaningful)")
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default=None,
                   help="which backends to measure (default: both; with --db, the backends of those URLs)")
    p.add_argument("--pg", metavar="URL", default=None,
                   help="PostgreSQL server to use (temporary schemas bench_* are created and dropped); "
                        f"default RELEDGER_BENCH_PG or {DEFAULT_PG}")
    p.add_argument("--db", metavar="URL", action="append", default=[],
                   help="a postgresql:// URL: the server to use (as --pg); a sqlite:/// URL: temporary "
                        "files go beside that file (the file itself is never touched). Repeatable.")
    p.add_argument("--rounds", type=int, default=None, help="interleaved measurement rounds")
    p.add_argument("--batch", type=int, default=None, help="entries per batch (default 500)")
    p.add_argument("--large", type=int, default=None, help="size of the large log (default 100000)")
    p.add_argument("--suite", choices=SUITES + ("scale", "all"), default="all",
                   help="which suite to run: core (ledger append/verify), http (server ingest), projections "
                        "(rebuild, point-in-time query, lag), scale (a national log grown to --sizes: the "
                        "regulator's commands as a user runs them; long, not part of all); default all")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N,N,...",
                   help="scale suite: the log sizes to grow to and measure at, e.g. 1e5,1e6,1e7 "
                        "(default 1e5,1e6; 1e3,2e3 with --quick)")
    p.add_argument("--per-year", type=_count, default=None, metavar="N",
                   help="scale suite: entries a year of the national log (default 1e6: 10^7 is ten years)")
    p.add_argument("--samples", type=_count, default=None, metavar="N",
                   help="scale suite: parties x points in time per query command and size (default 5)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                   help="scale suite: seconds any one command may run before it is killed (default 1200)")
    p.add_argument("--large-projections", type=int, default=None, metavar="N",
                   help="entries of the projections suite's large log (default 10^6; 2*10^4 with --quick)")
    return p.parse_args(argv)


def _count(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v >= 1 and v == int(v)) or v > 1e9:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(v)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v < 1e6:
        raise argparse.ArgumentTypeError(f"seconds must be above 0: {text!r}")
    return v


def _sizes(text: str) -> tuple[int, ...]:
    out = tuple(_count(x.strip()) for x in text.split(",") if x.strip())
    if not out or list(out) != sorted(set(out)):
        raise argparse.ArgumentTypeError(f"sizes must be increasing, e.g. 1e5,1e6: {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    err = Console(stderr=True)
    out = Console()
    if out.width < 104:
        out = Console(width=104)
    # (the scale suite runs for hours: it says what it does on stderr, --json or not)
    log = (lambda m: None) if args.json and args.suite != "scale" else (
        lambda m: err.print(f"[dim]{time.strftime('%H:%M:%S')} {escape(m)}[/dim]"))

    sizes = Sizes.quick() if args.quick else Sizes()
    overrides = {k: v for k, v in (("rounds", args.rounds), ("batch", args.batch), ("large_log", args.large))
                 if v is not None}
    if overrides:
        sizes = Sizes(**{**sizes.__dict__, **overrides})
    if min(sizes.rounds, sizes.batch, sizes.verify_reps) < 1 or sizes.large_log <= sizes.small_log:
        err.print("bad sizes: rounds and batch must be >= 1, the large log larger than the small one")
        return 2

    pg_url, sqlite_dir, from_db = args.pg, None, []
    for url in args.db:
        if url.startswith(("postgresql:", "postgres:")):
            pg_url = pg_url or url
            from_db.append("postgres")
        elif url.startswith("sqlite:///"):
            sqlite_dir = os.path.dirname(os.path.abspath(url[len("sqlite:///"):].split("?")[0]))
            from_db.append("sqlite")
        else:
            err.print(f"unsupported database URL {url!r}")
            return 2
    pg_url = pg_url or os.environ.get("RELEDGER_BENCH_PG") or DEFAULT_PG
    choice = args.backend or ("both" if not from_db or len(set(from_db)) == 2 else from_db[0])
    wanted = ["sqlite", "postgres"] if choice == "both" else [choice]

    backends_doc: dict[str, Any] = {}
    if "postgres" in wanted:
        reason = pg_reachable(pg_url)
        if reason:
            if choice == "postgres" or "postgres" in from_db:
                err.print(reason)
                return 2
            backends_doc["postgres"] = {"skipped": reason}
            wanted.remove("postgres")

    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if "scale" not in suites and any(v is not None for v in (args.sizes, args.per_year, args.samples, args.timeout)):
        err.print("--sizes, --per-year, --samples and --timeout belong to --suite scale")
        return 2
    skipped = dict(backends_doc)
    t0 = time.perf_counter()
    load_before = _loadavg()
    c = os.cpu_count() or 1
    status = 0
    work = None
    if "core" in suites:
        log("signing the workload")
        setup_len = 3 + 2 * sizes.parties
        work = wl.build(sizes.business_entries(setup_len), parties=sizes.parties)
        assert len(work.setup) == setup_len
        log(f"signed {len(work.all):,} entries in {time.perf_counter() - t0:.1f} s")

        for name in wanted:
            backend: Backend = SQLiteBackend(sqlite_dir) if name == "sqlite" else PostgresBackend(pg_url)
            try:
                res = run_backend(backend, work, sizes, log)
            finally:
                backend.cleanup()
            f = res.figures(c)
            backends_doc[name] = {"info": res.info, "figures": f, "ratios": res.ratios(f), "sizes": res.sizes,
                                  "detail": {k: a.to_dict() for k, a in res.accs.items()},
                                  "verify_report": res.verify_report, "problems": res.problems}
            if res.problems:
                status = 1

    suites_doc: dict[str, Any] = {}
    suite_params: dict[str, Any] = {}
    for suite in suites:
        if suite == "core":
            continue

        if suite == "http":
            ssizes: Any = HttpSizes.quick() if args.quick else HttpSizes()
            runner: Callable = run_http
        elif suite == "scale":
            ssizes = ScaleSizes.quick() if args.quick else ScaleSizes()
            over = {k: v for k, v in (("sizes", args.sizes), ("per_year", args.per_year), ("samples", args.samples),
                                      ("timeout", args.timeout)) if v is not None}
            ssizes = ScaleSizes(**{**ssizes.__dict__, **over})
            runner = run_scale
        else:
            ssizes = ProjSizes.quick() if args.quick else ProjSizes()
            if args.large_projections is not None:
                ssizes = ProjSizes(**{**ssizes.__dict__, "large": args.large_projections})
            runner = run_projections
        suite_params[suite] = ssizes.__dict__
        sdoc: dict[str, Any] = dict(skipped)
        for name in wanted:
            backend = SQLiteBackend(sqlite_dir) if name == "sqlite" else PostgresBackend(pg_url)
            try:
                sdoc[name] = runner(backend, ssizes, log)
            except Exception as e:  # noqa: BLE001 - reported in the document; exit status 1

                sdoc[name] = {"info": backend.describe(), "figures": {}, "ratios": {}, "limits": {}, "sizes": {},
                              "detail": {"traceback": traceback.format_exc()[-4000:]},
                              "problems": [f"the {suite} suite failed: {type(e).__name__}: {e}"]}
            finally:
                backend.cleanup()
            if sdoc[name]["problems"]:
                status = 1
        suites_doc[suite] = sdoc

    doc = {
        "schema": SCHEMA_VERSION, "quick": args.quick, "c": c, "seconds": time.perf_counter() - t0,
        "suites_run": suites,
        "params": sizes.__dict__,
        "suite_params": suite_params,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": _loadavg(),
                    "eventsourcing": _version("eventsourcing"), "cryptography": _version("cryptography")},
        "workload": None if work is None else {
            "entries": len(work.all), "setup_entries": len(work.setup), "parties": work.parties,
            "mean_envelope_bytes": work.mean_size()},
        "targets": TARGETS,
        "backends": backends_doc if "core" in suites else {},
        "suites": suites_doc,
    }
    if args.json:
        out.file.write(json.dumps(doc, indent=2) + "\n")
        out.file.flush()
    else:
        render(doc, out)
    return status


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
