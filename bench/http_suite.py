"""HTTP ingest (``--suite http``): a real ``reledger serve`` process on loopback, appending
pre-signed entries, against the same framework's trivial endpoint and against in-process
appends on the same backend, measured in the same run.

* **server**: ``python -m reledger serve --db URL --port P`` on a fresh database (a
  PostgreSQL schema or a SQLite file, dropped afterwards) whose registry (genesis, one mine per
  client chain, quota) was written in-process first.
* **clients**: 1, 4 and 16 concurrent keep-alive connections (one asyncio loop, a minimal
  HTTP/1.1 client, so that the client costs little next to the server), each appending to its
  own chain (clients never conflict): one entry per request (``single``) and ``batch`` entries
  per request (``batch``). Each configuration runs for at most ``seconds`` or until its
  pre-signed entries are used up; ``single`` and ``trivial`` alternate in ``rounds`` slices
  of ``seconds / rounds`` (each one's figures summed over its slices), so that a shared
  machine that slows down for a while weighs on both alike.
* **trivial**: a FastAPI app with one POST that reads the body and answers ``{}``
  (bench/trivial_app.py) in its own uvicorn process, same settings, same request bytes as
  ``single``, same client counts.
* **inproc**: ``CommandAPI.submit`` of groups of ``batch`` entries with the server's findings
  hook (ProjectionFindings), in this process, on a fresh database of the same backend.

Figures: entries/s (and requests/s) with p50/p99 latency per configuration, and the CPU per
entry (per request for trivial) of the server process with its children, of a local PostgreSQL
server and of the client, in microseconds (where to look when a ratio is low). Ratios:
single/trivial (requests/s, same clients), batch/inproc (entries/s). Targets: at 16 clients
single >= 0.4 x trivial with p99 < 100 ms; batched >= 5,000 entries/s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack

from reledger.commands.api import CommandAPI
from reledger.projections.hooks import ProjectionFindings
from reledger.projections.store import ProjectionStore
from reledger.storage.store import LedgerStore

from . import realistic as rl
from .measure import TICKS, live_descendants_cpu

REPO = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 16)
MODES = ("single", "batch")
TARGETS = {"http_single_c16/trivial_c16": 0.4}
LIMITS = {"http_single_c16_p99_ms": ("<", 100.0), "http_batch_c16": (">=", 5000.0)}


@dataclass(frozen=True)
class HttpSizes:
    seconds: float = 3.0  # at most, per configuration (single and trivial: in all its rounds)
    rounds: int = 3  # single and trivial alternate in this many slices of seconds/rounds each
    batch: int = 100  # entries per request in the batched mode
    single_budget: int = 12_000  # pre-signed entries per single configuration (more than `seconds` takes)
    batch_budget: int = 40_000  # pre-signed entries per batched configuration
    inproc_budget: int = 20_000

    @classmethod
    def quick(cls) -> "HttpSizes":
        return cls(seconds=0.5, rounds=2, batch=20, single_budget=120, batch_budget=800, inproc_budget=400)


def CPU_FIGURES() -> list[str]:
    """CPU per entry (per request for trivial), microseconds: the server process with its
    children, and the client; ``{kind}_c{n}_cpu_db_us`` too when PostgreSQL runs on this
    machine. (Measured from /proc: may be 0 on other systems or in a very short run.)"""
    return [f"{kind}_c{n}_cpu_{part}_us" for n in CLIENTS for kind in ("trivial", "http_single", "http_batch")
            for part in ("server", "client")]


def FIGURES() -> list[str]:
    out = []
    for n in CLIENTS:
        for kind in ("trivial", "http_single", "http_batch"):
            base = f"{kind}_c{n}"
            out += [base, f"{base}_rps", f"{base}_p50_ms", f"{base}_p99_ms"]
    return out + ["inproc_batch", "inproc_store_batch"]


def RATIOS() -> list[str]:
    return ([f"http_single_c{n}/trivial_c{n}" for n in CLIENTS] + [f"http_batch_c{n}/inproc_batch" for n in CLIENTS]
            + [f"http_batch_c{n}/inproc_store_batch" for n in CLIENTS])


# --- processes -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_on_free_port(make_args: Callable[[int], list[str]], startup: float = 60.0, tries: int = 3) -> "Proc":
    """A server on a free port; another process may take the port between ``free_port`` and the
    server's bind (tests run in parallel), so a start refused with "address already in use" is
    tried again on another port."""
    for attempt in range(tries):
        port = free_port()
        try:
            return Proc(make_args(port), port, startup)
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


class Proc:
    """A server subprocess on 127.0.0.1:port, ready when GET /v1/health answers 200."""

    def __init__(self, args: list[str], port: int, startup: float = 60.0):
        self.port = port
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.err,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + startup
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args} exited with {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args} did not answer within {startup} s: {self.stderr()}")
            time.sleep(0.1)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.err.close()


# --- a minimal keep-alive HTTP/1.1 client ------------------------------------------------------

def request_bytes(body: bytes) -> bytes:
    return (b"POST /v1/entries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body
    return status, await reader.readexactly(length)


async def _client(port: int, requests: list[tuple[bytes, int]], deadline: float, lat: list[float],
                  errors: list[str], ok_status: int) -> tuple[int, int]:
    """(entries, requests) this client had answered before ``deadline``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    entries = sent = 0
    try:
        for req, n in requests:
            if time.perf_counter() >= deadline:
                break
            t0 = time.perf_counter()
            writer.write(req)
            status, body = await _response(reader)
            lat.append(time.perf_counter() - t0)
            if status != ok_status:
                errors.append(f"HTTP {status}: {body[:300]!r}")
                break
            entries += n
            sent += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    return entries, sent


def _proc_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live descendants (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICKS + live_descendants_cpu(pid)


def _postgres_cpu() -> float:
    """CPU seconds of this machine's PostgreSQL processes (a local server: Linux /proc)."""
    total = 0.0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                head, _, rest = f.read().rpartition(")")
            if head.split("(", 1)[1].startswith("postgres"):
                total += sum(int(x) for x in rest.split()[11:13]) / TICKS
        except (OSError, IndexError):
            continue
    return total


class Meter:
    """One configuration's figures, summed over the slices it is driven in: entries and
    requests over the time they took, latencies pooled, CPU counters (see :func:`drive`)."""

    def __init__(self) -> None:
        self.entries = self.requests = 0
        self.wall = 0.0
        self.lat: list[float] = []
        self.errors: list[str] = []
        self.cpu = [0.0, 0.0, 0.0]  # server (with children), local PostgreSQL, this client
        self.has_server = self.has_db = False

    def result(self) -> dict[str, Any]:
        lat = sorted(self.lat)
        n, wall = self.entries, self.wall

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

        out = {"entries": n, "requests": self.requests, "seconds": round(wall, 4), "rate": n / wall if wall else 0.0,
               "rps": self.requests / wall if wall else 0.0, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
               "errors": self.errors[:3]}
        if self.has_server and n:
            out["cpu_server_us"] = self.cpu[0] / n * 1e6
            out["cpu_client_us"] = self.cpu[2] / n * 1e6
            if self.has_db:
                out["cpu_db_us"] = self.cpu[1] / n * 1e6
        return out


def drive(port: int, per_client: list[list[tuple[bytes, int]]], seconds: float, ok_status: int = 201,
          server_pid: int | None = None, local_db: bool = False, meter: Meter | None = None) -> dict[str, Any]:
    """Every client sends its requests in order on its own connection; all start together.
    With ``server_pid``: the CPU the server (with its child processes), a local PostgreSQL
    server and this client spent per entry, in microseconds. ``per_client`` loses the requests
    answered, so that a next slice goes on from there; with ``meter``, the slice's figures are
    added to it (the result is then the meter's, over all its slices)."""
    meter = meter if meter is not None else Meter()
    lat: list[float] = []
    errors: list[str] = []
    cpu0 = (_proc_cpu(server_pid) if server_pid else 0.0, _postgres_cpu() if local_db else 0.0, time.process_time())

    async def main() -> tuple[list[tuple[int, int]], float]:
        t0 = time.perf_counter()
        done = await asyncio.gather(*[_client(port, reqs, t0 + seconds, lat, errors, ok_status)
                                      for reqs in per_client])
        return done, time.perf_counter() - t0

    done, wall = asyncio.run(main())
    meter.entries += sum(e for e, _ in done)
    meter.requests += len(lat)
    meter.wall += wall
    meter.lat += lat
    meter.errors += errors
    if server_pid:
        meter.has_server, meter.has_db = True, meter.has_db or local_db
        meter.cpu[0] += _proc_cpu(server_pid) - cpu0[0]
        meter.cpu[1] += (_postgres_cpu() - cpu0[1]) if local_db else 0.0
        meter.cpu[2] += time.process_time() - cpu0[2]
    for reqs, (_, sent) in zip(per_client, done):
        del reqs[:sent]
    return meter.result()


def drive_alternating(configs: list[tuple[int, list[list[tuple[bytes, int]]], int, bool]], seconds: float,
                      rounds: int) -> list[dict[str, Any]]:
    """Configurations measured in turns, ``rounds`` slices of ``seconds / rounds`` each, each
    one's figures summed over its slices: so that a machine that slows down or speeds up
    for a while (a shared host) weighs on all of them alike. ``configs``: (port, requests
    per client, server pid, local database) each; the request lists are used up in order
    over the rounds."""
    meters = [Meter() for _ in configs]
    for _ in range(rounds):
        for (port, reqs, pid, local_db), meter in zip(configs, meters):
            drive(port, reqs, seconds / rounds, server_pid=pid, local_db=local_db, meter=meter)
    return [m.result() for m in meters]


# --- the workload ----------------------------------------------------------------------------

def http_mine(i: int) -> str:
    return f"91110000HT{i:06d}"


def _entries_plan(chains: dict[str, int], occ: int, tag: str) -> rl.Plan:
    """``chains[chain]`` MineralProductProduced entries on each chain, interleaved."""
    plan = rl.Plan()
    left = dict(chains)
    k = 0
    while left:
        for chain in list(left):
            dry = 20_000_000 + (k % 991) * 2_000
            plan.add(chain, "MineralProductProduced", {
                "lot": f"H{tag}-{chain[-6:]}-{k:08d}", "ore_type": "ROCK", "product": "BASTNAESITE_CONCENTRATE",
                "wet_kg": rl.kg(dry + dry // 10), "dry_kg": rl.kg(dry), "treo_pct": "50", "reo_kg": rl.kg(dry // 2)},
                occ)
            k += 1
            left[chain] -= 1
            if not left[chain]:
                del left[chain]
    return plan


def run_http(backend, sizes: HttpSizes, log: Callable[[str], None]) -> dict[str, Any]:
    problems: list[str] = []
    now = int(time.time()) * 1_000_000
    t0 = now - rl.DAY
    year = int(rl.ts(now)[:4])
    # chains: one per client of every configuration, and the in-process baseline's
    configs = [(mode, n) for n in CLIENTS for mode in MODES]
    chain_of: dict[tuple[str, int], list[str]] = {}
    i = 0
    for cfg in configs:
        chain_of[cfg] = [http_mine(i + j) for j in range(cfg[1])]
        i += cfg[1]
    inproc_chain = http_mine(i)
    mines = [c for cfg in configs for c in chain_of[cfg]] + [inproc_chain]
    log(f"[{backend.name}] http: signing the registry and the entries of {len(mines)} chains")
    reg, gen = rl.genesis(t0)
    setup = rl.Plan()
    rl.setup_plan(setup, year, mines, [], t0 + rl.MINUTE)
    setup_env = gen + rl.sign_plan(setup, reg)
    counts: dict[str, int] = {}
    for (mode, n), chains in chain_of.items():
        budget = sizes.single_budget if mode == "single" else sizes.batch_budget
        per = -(-budget // n)
        if mode == "batch":
            per = -(-per // sizes.batch) * sizes.batch
        for c in chains:
            counts[c] = per
    counts[inproc_chain] = sizes.inproc_budget
    plan = _entries_plan(counts, now - 3600 * 1_000_000, "")
    envs = rl.sign_plan(plan, reg)
    by_chain: dict[str, list[bytes]] = {}
    for (chain, *_), env in zip(plan.items, envs):
        by_chain.setdefault(chain, []).append(env)

    def requests_of(mode: str, chain: str) -> list[tuple[bytes, int]]:
        es = by_chain[chain]
        step = 1 if mode == "single" else sizes.batch
        return [(request_bytes(msgpack.packb(es[k:k + step], use_bin_type=True)), len(es[k:k + step]))
                for k in range(0, len(es), step)]

    # the server's database: the registry, in-process; then the server
    url = backend.ledger_url("http")
    with LedgerStore(url) as store:
        api = CommandAPI(store)
        api.submit(setup_env[:len(gen)])
        api.submit(setup_env[len(gen):])
    results: dict[str, dict[str, Any]] = {}
    # the database server's CPU is counted when it runs on this machine (a PostgreSQL on
    # loopback; SQLite works inside the server process, counted there)
    local_db = backend.name == "postgres" and getattr(getattr(backend, "db", None), "host", "") in (
        "127.0.0.1", "localhost", "::1", "", None)
    server_port, trivial_port = free_port(), free_port()
    log(f"[{backend.name}] http: starting reledger serve and the trivial app")
    server = Proc(["-m", "reledger", "serve", "--db", url, "--port", str(server_port)], server_port)
    trivial = None
    try:
        trivial = Proc(["-m", "reledger.bench.trivial_app", str(trivial_port)], trivial_port)
        # every single-entry configuration before the batched ones: a batched run leaves the
        # server folding its tens of thousands of entries into the projections (and PostgreSQL
        # vacuuming) for a second or two, which the next configuration would be measured in
        # trivial and single alternate in rounds (drive_alternating): the two are compared
        for n in CLIENTS:
            single_reqs = [requests_of("single", c) for c in chain_of[("single", n)]]
            # the same bytes (answered {} and dropped), enough of them for the fastest endpoint
            trivial_reqs = [reqs * 4 for reqs in single_reqs]
            log(f"[{backend.name}] http: {n} client(s): trivial and single, {sizes.rounds} rounds")
            results[f"trivial_c{n}"], results[f"http_single_c{n}"] = drive_alternating(
                [(trivial_port, trivial_reqs, trivial.proc.pid, False),
                 (server_port, single_reqs, server.proc.pid, local_db)], sizes.seconds, sizes.rounds)
        results["inproc_batch"] = _inproc(backend, setup_env, len(gen), by_chain[inproc_chain], sizes, log)
        results["inproc_store_batch"] = _inproc(backend, setup_env, len(gen), by_chain[inproc_chain], sizes,
                                                log, store_only=True)
        for n in CLIENTS:
            log(f"[{backend.name}] http: {n} client(s): batched")
            results[f"http_batch_c{n}"] = drive(server_port, [requests_of("batch", c) for c in chain_of[("batch", n)]],
                                                sizes.seconds, server_pid=server.proc.pid, local_db=local_db)
    finally:
        server.stop()
        if trivial is not None:
            trivial.stop()
    for k, r in results.items():
        for e in r.get("errors", []):
            problems.append(f"{k}: {e}")
    sent = sum(r["entries"] for k, r in results.items() if k.startswith("http_"))
    with LedgerStore(url, create=False) as store:
        size = store.size()
    if size != len(setup_env) + sent:
        problems.append(f"the server's log holds {size} entries, expected {len(setup_env) + sent}")
    backend.drop("http")

    f: dict[str, float] = {}
    for k, r in results.items():
        f[k] = r["rate"]
        if not k.startswith("inproc"):
            f[f"{k}_rps"] = r["rps"]
            f[f"{k}_p50_ms"] = r["p50_ms"]
            f[f"{k}_p99_ms"] = r["p99_ms"]
            for part in ("server", "db", "client"):
                if f"cpu_{part}_us" in r:
                    f[f"{k}_cpu_{part}_us"] = r[f"cpu_{part}_us"]
    ratios = {}
    for name in RATIOS():
        num, den = name.split("/")
        key = "_rps" if den.startswith("trivial") else ""
        value = f[num + key] / f[den + key] if f.get(den + key) else 0.0
        target = TARGETS.get(name)
        ratios[name] = {"value": value, "target": target, "met": None if target is None else value >= target}
    limits = {}
    for name, (op, target) in LIMITS.items():
        value = f[name]
        limits[name] = {"value": value, "op": op, "target": target,
                        "met": value < target if op == "<" else value >= target}
    return {"info": backend.describe(), "figures": f, "ratios": ratios, "limits": limits,
            "sizes": {**sizes.__dict__, "chains": len(mines), "log_size": size},
            "detail": results, "problems": problems}


def _inproc(backend, setup_env: list[bytes], genesis: int, envs: list[bytes], sizes: HttpSizes,
            log: Callable[[str], None], store_only: bool = False) -> dict[str, Any]:
    """CommandAPI.submit of ``batch``-entry groups with the server's findings hook, in-process;
    with ``store_only``, LedgerStore.append_pipelined of the same batches (no catalogue checks,
    no projections: the ledger core alone)."""
    log(f"[{backend.name}] http: in-process {'LedgerStore.append_pipelined' if store_only else 'CommandAPI.submit'}, "
        f"{sizes.batch} per group")
    url = backend.ledger_url("http_inproc")
    store = LedgerStore(url)
    ps = ProjectionStore(url)
    try:
        api = CommandAPI(store, findings_hook=ProjectionFindings(ps))
        api.submit(setup_env[:genesis])
        api.submit(setup_env[genesis:])
        lat = []
        n = 0
        t0 = time.perf_counter()
        if store_only:
            def gen():
                for k in range(0, len(envs), sizes.batch):
                    if time.perf_counter() - t0 >= sizes.seconds:
                        return
                    yield envs[k:k + sizes.batch]

            t1 = t0
            for receipts in store.append_pipelined(gen()):
                n += len(receipts)
                now = time.perf_counter()
                lat.append(now - t1)
                t1 = now
        for k in range(0, len(envs) if not store_only else 0, sizes.batch):
            if time.perf_counter() - t0 >= sizes.seconds:
                break
            t1 = time.perf_counter()
            n += len(api.submit(envs[k:k + sizes.batch]))
            lat.append(time.perf_counter() - t1)
        wall = time.perf_counter() - t0
    finally:
        ps.close()
        store.close()
        backend.drop("http_inproc")
    lat.sort()
    return {"entries": n, "requests": len(lat), "seconds": round(wall, 4), "rate": n / wall if wall else 0.0,
            "p50_ms": lat[len(lat) // 2] * 1000 if lat else 0.0,
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else 0.0, "errors": []}
