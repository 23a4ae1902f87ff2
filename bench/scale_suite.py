"""National scale (``--suite scale``): the regulator's side of one national log as it grows.

One log (bench/national.py: the national cast, ``--per-year`` entries a year, real Ed25519
signatures and chains) is appended through the command API's group commit (``CommandAPI.
submit_groups(..., defer_findings=True)``, what the server's writer process runs, batches of
``--batch`` entries, the record clock following business time) up to each size of ``--sizes``
in turn (10^5, then the same log extended to 10^6, then 10^7). At each size, with the writer
idle:

* **append**: entries a second of the step that reached the size (signing excluded: entries are
  signed in worker processes before they are appended), and of its last window (``--window``
  entries), the rate *at* that size;
* **read_raw**: a raw read of the whole log (``LogReader.iter_records`` + ``SignedEntry.parse``)
  in this process, the baseline of **rebuild**: ``reledger rebuild`` as a user runs it;
* **version**: ``reledger --version`` (a process start, the baseline of every command below);
* **quota / stock / findings**: ``reledger quota --year Y --party P``, ``reledger stock --party
  P``, ``reledger findings --party P`` (``--json``), over ``--samples`` parties and points in
  time (now; ``--as-of N``; ``--valid-at DATE``; both), p50 and p99 wall time (process start
  included) and the peak memory of each;
* **replay**: ``reledger replay --party P`` (text, to a pipe): time to its first line and total;
* **investigate**: ``reledger investigate --party P --out FILE``;
* **serve**: ``reledger serve`` started as a user would: seconds until ``/v1/health`` answers,
  then a warm-up of signed reads (chain head, quota, stock, findings, twice), then the resident
  memory of its processes summed (**serve_rss_mb**).

Memory: **peak_mb** is the largest sum of resident memory of a command's process and its
children, sampled every 50 ms. Every command has a time limit (``--timeout``); one that passes
it is killed and reported (its figure is the limit, marked in ``timeouts``). Ratios are against
baselines of the same run: rebuild ÷ read_raw, a query's p50 ÷ version, append at a size ÷
append at the first size, server memory ÷ its memory at the first size.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from reledger.commands.api import CommandAPI
from reledger.commands.auth import sign_request
from reledger.ledger.checkpoint import NoteSigner
from reledger.storage.store import LedgerStore

from . import national as nat
from .http_suite import start_on_free_port
from .projections_suite import read_raw_log  # the raw read, rebuild's baseline: one definition
from .measure import PeakRSS, tree_rss
from .realistic import key_of

MB = 1024 * 1024
QUERIES = ("quota", "stock", "findings")
# the figures of one size (the smoke test checks that each is there and positive)
FIGURES = ("entries", "append_rate", "append_rate_window", "sign_rate", "read_raw_rate", "version_s", "rebuild_s",
           "rebuild_rate", "rebuild_peak_mb",
           *(f"{q}_{s}" for q in QUERIES for s in ("p50_s", "p99_s", "peak_mb")),
           "replay_first_line_s", "replay_s", "replay_peak_mb", "investigate_s", "investigate_peak_mb",
           "serve_startup_s", "serve_rss_mb", "serve_reads_ms")
RATIOS = ("rebuild/read_raw", "quota_p50/version", "stock_p50/version", "findings_p50/version",
          "append/append_first", "serve_rss/serve_rss_first")
# the targets (#16), reported, never asserted: (figure, op, value)
TARGETS = {"query_p50_s": ("<", 0.5), "query_peak_mb": ("<", 150.0), "serve_rss_mb": ("<", 400.0),
           "investigate_s": ("<", 10.0), "replay_first_line_s": ("<", 1.0), "append/append_first": (">=", 0.9),
           "rebuild/read_raw": (">=", 0.5), "serve_rss/serve_rss_first": ("<=", 1.1)}


@dataclass(frozen=True)
class ScaleSizes:
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    per_year: int = 1_000_000
    batch: int = 1000  # entries per submit_groups call (one transaction)
    chunk: int = 20_000  # entries signed at a time
    window: int = 20_000  # the last entries before a size: the append rate "at" it
    samples: int = 5  # parties x points per query command
    budget: float = 300.0  # seconds a query command may take in all at one size (after 2 samples)
    timeout: float = 1200.0  # seconds any one command may take
    workers: int = 2

    @classmethod
    def quick(cls) -> "ScaleSizes":
        return cls(sizes=(1_000, 2_000), per_year=20_000, batch=100, chunk=500, window=300, samples=2,
                   timeout=300.0, workers=1)


def reledger_cmd() -> list[str]:
    """How a user starts reledger here: the installed script beside this interpreter."""
    exe = os.path.join(os.path.dirname(sys.executable), "reledger")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "reledger"]


def compile_package() -> None:
    """Compile reledger's modules to bytecode once, as ``pip install`` does for a user (an
    editable install, or PYTHONDONTWRITEBYTECODE=1 as on the project's machines, would otherwise
    compile every module again at every command's start: about 0.1 s of each query's wall time)."""
    import compileall

    import importlib

    for name in ("reledger", "reledger.ledger", "reledger.storage", "reledger.projections", "reledger.replay",
                 "reledger.commands", "reledger.processes", "reledger.demo", "reledger.bench"):
        for folder in importlib.import_module(name).__path__:  # (the repository's folders map into one package)
            compileall.compile_dir(folder, quiet=2, maxlevels=0)


@dataclass
class Run:
    seconds: float
    peak_mb: float
    rc: int | None
    first_line_s: float | None = None
    lines: int = 0
    timed_out: bool = False
    stderr: str = ""


def run_cli(args: list[str], timeout: float, first_line: bool = False) -> Run:
    """Run ``reledger ARGS`` as a user would, its output to a pipe (read and thrown away):
    wall time from the start, time to the first line of output, peak memory of its processes."""
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(reledger_cmd() + args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    peak = PeakRSS(proc.pid)
    got: dict[str, Any] = {"first": None, "lines": 0}

    def read() -> None:
        assert proc.stdout is not None
        if first_line:
            for line in proc.stdout:
                if got["first"] is None and line.strip():
                    got["first"] = time.perf_counter() - t0
                got["lines"] += 1
        else:
            while proc.stdout.read(1 << 16):
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    wall = time.perf_counter() - t0
    reader.join(10)
    mb = peak.stop() / MB
    err.seek(0)
    text = err.read().decode(errors="replace")[-2000:]
    err.close()
    return Run(wall, mb, None if timed_out else proc.returncode, got["first"], got["lines"], timed_out, text)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else 0.0


class Grower:
    """The national log, appended through the command API a chunk at a time."""

    def __init__(self, url: str, sizes: ScaleSizes):
        self.sizes = sizes
        self.log = nat.NationalLog(per_year=sizes.per_year, workers=sizes.workers)
        self.clock = [self.log.t0 + 5 * nat.MINUTE]
        self.store = LedgerStore(url, clock=lambda: self.clock[0])
        self.api = CommandAPI(self.store)
        self.store.append(self.log.genesis())
        self.size = self.store.size()
        self.checkpointer = NoteSigner(nat.ORIGIN, key_of(nat.REGULATOR, "checkpoint").private_key)

    def grow(self, target: int, log: Callable[[str], None]) -> dict[str, float]:
        """Append up to ``target`` entries; the rates of this step and of its last window."""
        sign_s = append_s = 0.0
        n_step = 0
        window: list[tuple[int, float]] = []  # (entries, seconds) of the recent batches
        last_report = time.perf_counter()
        while self.size < target:
            t1 = time.perf_counter()
            batches = self.log.take(min(self.sizes.chunk, target - self.size), batch=self.sizes.batch)
            sign_s += time.perf_counter() - t1
            for b in batches:
                t2 = time.perf_counter()
                self.clock[0] = max(self.clock[0], b.record_us)
                for r in self.api.submit_groups([[e] for e in b.envelopes], defer_findings=True):
                    if not isinstance(r, list):
                        raise RuntimeError(f"the command API refused an entry of the national log: {r}")
                dt = time.perf_counter() - t2
                append_s += dt
                self.size += len(b.envelopes)
                n_step += len(b.envelopes)
                if target - self.size < self.sizes.window:
                    window.append((len(b.envelopes), dt))
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                log(f"  {self.size:,} entries ({n_step / append_s:,.0f}/s appending, {n_step / sign_s:,.0f}/s signing)")
        self.store.checkpoint(self.checkpointer)
        wn, ws = sum(n for n, _ in window), sum(s for _, s in window)
        return {"append_rate": n_step / append_s if append_s else 0.0,
                "append_rate_window": wn / ws if ws else 0.0,
                "sign_rate": n_step / sign_s if sign_s else 0.0,
                "append_seconds": append_s, "sign_seconds": sign_s, "appended": n_step}

    def close(self) -> None:
        self.log.close()
        self.api.close()
        self.store.close()


def _points(rng: random.Random, size: int, span: tuple[int, int], n: int) -> list[dict[str, Any]]:
    """n points in time: now; as of a log size; valid at a business date; both, in turn."""
    out = []
    for i in range(n):
        kind = i % 4
        as_of = rng.randint(size // 2, size) if kind in (1, 3) else None
        valid = None
        if kind in (2, 3):
            t = rng.randint(span[0], max(span[0], span[1]))
            valid = datetime.fromtimestamp(t / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")
        out.append({"as_of": as_of, "valid_at": valid})
    return out


def _point_args(pt: dict[str, Any]) -> list[str]:
    a = []
    if pt["as_of"] is not None:
        a += ["--as-of", str(pt["as_of"])]
    if pt["valid_at"] is not None:
        a += ["--valid-at", pt["valid_at"]]
    return a


def measure_size(url: str, grower: Grower, sizes: ScaleSizes, log: Callable[[str], None], seed: int,
                 workdir: str) -> dict[str, Any]:
    n = grower.size
    rng = random.Random(seed * 1_000_003 + n)
    cast = grower.log.sample_parties()
    span = grower.log.business_span()
    years = sorted({datetime.fromtimestamp(span[0] / 1e6, tz=timezone.utc).year,
                    datetime.fromtimestamp(span[1] / 1e6, tz=timezone.utc).year})
    f: dict[str, float] = {}
    detail: dict[str, Any] = {}
    timeouts: list[str] = []
    problems: list[str] = []
    db = ["--db", url]
    T = sizes.timeout

    def check(name: str, r: Run, ok=(0,)) -> Run:
        if r.timed_out:
            timeouts.append(name)
        elif r.rc not in ok:
            problems.append(f"{name} exited {r.rc}: {r.stderr.strip()[-500:]}")
        return r

    # baseline: a process start
    log(f"  at {n:,}: reledger --version (baseline), raw read, rebuild")
    v = [check("version", run_cli(["--version"], T)).seconds for _ in range(5)]
    f["version_s"] = statistics.median(v)
    t0 = time.perf_counter()
    got = read_raw_log(url)
    raw_s = time.perf_counter() - t0
    if got != n:
        problems.append(f"the raw read saw {got} entries, expected {n}")
    f["read_raw_rate"] = n / raw_s
    r = check("rebuild", run_cli(["rebuild", *db], T))
    f["rebuild_s"], f["rebuild_rate"], f["rebuild_peak_mb"] = r.seconds, n / r.seconds, r.peak_mb

    # the queries, as a user runs them
    points = _points(rng, n, span, sizes.samples)
    producers = cast["mine"] + cast["plant"]
    everyone = producers + cast["smelter"] + cast["magnet"] + cast["exporter"] + cast["recycler"]
    for q in QUERIES:
        log(f"  at {n:,}: reledger {q} x {len(points)}")
        runs, spent = [], 0.0
        for i, pt in enumerate(points):
            if i >= 2 and spent > sizes.budget:
                break
            if q == "quota":
                year = years[-1] if pt["valid_at"] is None else int(pt["valid_at"][:4])
                party = rng.choice(producers)
                args = ["quota", "--year", str(year), "--party", party]
            else:
                party = rng.choice(everyone)
                args = [q, "--party", party]
            args += [*_point_args(pt), "--json", *db]
            r = check(q, run_cli(args, T), ok=(0, 1) if q == "findings" else (0,))
            spent += r.seconds
            runs.append({"args": args[:-2], "seconds": round(r.seconds, 3), "peak_mb": round(r.peak_mb, 1),
                         "rc": r.rc})
        secs = [x["seconds"] for x in runs]
        f[f"{q}_p50_s"], f[f"{q}_p99_s"] = statistics.median(secs), _pct(secs, 0.99)
        f[f"{q}_peak_mb"] = max(x["peak_mb"] for x in runs)
        detail[q] = runs

    # replay and investigate one party (a mine: the longest chains and the most counterparties)
    party = rng.choice(cast["mine"])
    log(f"  at {n:,}: reledger replay / investigate --party {party}")
    r = check("replay", run_cli(["replay", "--party", party, *db], T, first_line=True))
    f["replay_first_line_s"] = r.first_line_s if r.first_line_s is not None else r.seconds
    f["replay_s"], f["replay_peak_mb"] = r.seconds, r.peak_mb
    detail["replay"] = {"party": party, "lines": r.lines}
    out = os.path.join(workdir, f"investigate-{n}.html")
    r = check("investigate", run_cli(["investigate", "--party", party, "--out", out, *db], T))
    f["investigate_s"], f["investigate_peak_mb"] = r.seconds, r.peak_mb
    detail["investigate"] = {"party": party, "bytes": os.path.getsize(out) if os.path.exists(out) else 0}
    if os.path.exists(out):
        os.remove(out)

    # the server
    log(f"  at {n:,}: reledger serve, warm-up, memory")
    t0 = time.perf_counter()
    try:
        server = start_on_free_port(lambda port: ["-m", "reledger", "serve", *db, "--port", str(port)], startup=T)
    except RuntimeError as e:
        timeouts.append("serve") if "did not answer" in str(e) else problems.append(f"serve: {e}")
        f["serve_startup_s"], f["serve_rss_mb"], f["serve_reads_ms"] = T, 0.0, 0.0
    else:
        try:
            f["serve_startup_s"] = time.perf_counter() - t0
            reads = []
            key = key_of(nat.REGULATOR)
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=T) as http:
                for _ in range(2):
                    for path in (f"/v1/chains/{cast['mine'][0]}/head", f"/v1/quota?year={years[-1]}",
                                 f"/v1/stock?party={cast['plant'][0]}", f"/v1/findings?party={cast['mine'][1]}"):
                        t1 = time.perf_counter()
                        resp = http.get(path, headers=sign_request(key, "GET", path))
                        reads.append(time.perf_counter() - t1)
                        if resp.status_code != 200:
                            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:300]}")
            f["serve_reads_ms"] = statistics.median(reads) * 1000
            time.sleep(1.0)
            f["serve_rss_mb"] = tree_rss(server.proc.pid) / MB
            detail["serve_reads_ms"] = [round(x * 1000, 1) for x in reads]
        except Exception as e:  # noqa: BLE001 - reported
            problems.append(f"serve reads: {type(e).__name__}: {e}")
            f.setdefault("serve_reads_ms", 0.0)
            f.setdefault("serve_rss_mb", tree_rss(server.proc.pid) / MB)
        finally:
            server.stop()
    return {"figures": f, "detail": detail, "timeouts": timeouts, "problems": problems}


def run_scale(backend, sizes: ScaleSizes, log: Callable[[str], None]) -> dict[str, Any]:
    url = backend.ledger_url("scale")
    workdir = tempfile.mkdtemp(prefix="reledger-scale-")
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    compile_package()
    grower = Grower(url, sizes)
    try:
        for target in sizes.sizes:
            log(f"[{backend.name}] scale: growing the national log to {target:,} entries")
            g = grower.grow(target, log)
            m = measure_size(url, grower, sizes, log, 16, workdir)
            f = {"entries": grower.size, **{k: g[k] for k in ("append_rate", "append_rate_window", "sign_rate")},
                 **m["figures"]}
            steps.append({"entries": grower.size, "figures": f, "grow": g, "detail": m["detail"],
                          "timeouts": m["timeouts"], "problems": m["problems"],
                          "business_until": nat.ts(grower.log.last_occ)})
            problems += [f"at {grower.size:,}: {p}" for p in m["problems"]]
            log(f"[{backend.name}] scale at {grower.size:,}: " + ", ".join(
                f"{k} {v:,.3g}" for k, v in f.items() if k != "entries"))
    finally:
        grower.close()
        shutil.rmtree(workdir, ignore_errors=True)
    first = steps[0]["figures"] if steps else {}
    for s in steps:
        f = s["figures"]
        r = {"rebuild/read_raw": f["rebuild_rate"] / f["read_raw_rate"],
             "append/append_first": f["append_rate_window"] / first["append_rate_window"]
             if first.get("append_rate_window") else 0.0,
             "serve_rss/serve_rss_first": f["serve_rss_mb"] / first["serve_rss_mb"] if first.get("serve_rss_mb") else 0.0}
        for q in QUERIES:
            r[f"{q}_p50/version"] = f[f"{q}_p50_s"] / f["version_s"]
        s["ratios"] = r
        s["targets"] = _targets(f, r)
    return {"info": backend.describe(), "sizes": {**sizes.__dict__, "sizes": list(sizes.sizes)}, "steps": steps,
            "problems": problems, "cast": nat.CAST}


def _targets(f: dict[str, float], r: dict[str, float]) -> dict[str, Any]:
    out = {}
    for name, (op, target) in TARGETS.items():
        if name == "query_p50_s":
            value = max(f[f"{q}_p50_s"] for q in QUERIES)
        elif name == "query_peak_mb":
            value = max(f[f"{q}_peak_mb"] for q in QUERIES)
        else:
            value = f.get(name, r.get(name))
        met = {"<": value < target, "<=": value <= target, ">=": value >= target}[op]
        out[name] = {"value": value, "op": op, "target": target, "met": met}
    return out
