"""The web console that ``reledger serve`` serves (docs/CONSOLE.md).

The page itself (``console_static/``: one HTML file, one script, one style sheet, all in the
package, nothing from a CDN) signs every request in the browser with the party's key
(WebCrypto Ed25519, imported non-extractable) exactly as :func:`reledger.commands.auth.sign_request`
does, and reads the API of docs/HTTP.md. This module adds what the page needs beyond it, each
endpoint a signed read decided as every other read (the caller's designation now; regulators and
auditors read everything, any other party its own):

* ``GET /console/`` and its assets (no authentication: they read nothing);
* ``GET /v1/console/me``: who signed, its roles, and the log's checkpoint keys as note verifier
  strings (for the page to verify checkpoints; the user may pin another);
* ``GET /v1/console/parties``: the parties (id, name, roles, province, group);
* ``GET /v1/console/keys/{key_id}``: a public key and where the ledger authorized it;
* ``GET /v1/console/timeline``: a party's chain, page by page, with the facts of each entry;
* ``GET /v1/console/report``: a party's monthly flow report built from the ledger
  (:func:`reledger.replay.monthly.build_monthly_report`) with the body to sign;
* ``GET /v1/console/events``: the live stream (server-sent events): the log's growth and the new
  entries the caller may read, bounded (:class:`LiveStreams`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from importlib.resources import files
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.responses import RedirectResponse, StreamingResponse

from reledger.ledger.encoding import parse_time, time_to_micros
from reledger.ledger.entry import SignedEntry

log = logging.getLogger(__name__)

STATIC = "console_static"
MAX_STREAMS = 64  # live streams at once, all parties together (each one an open connection)
MAX_STREAMS_PER_PARTY = 2  # a console and its reload overlap; more is 429
HEARTBEAT = 15.0  # s: a comment line on an idle stream (proxies and the page see it alive)
STREAM_LIFETIME = 600.0  # s: a stream ends after this; the page signs a new request (designation re-checked)
POLL = 0.5  # s: how often the one watcher asks the log's size while streams are open
MAX_EVENT_ENTRIES = 100  # new entries listed in one event at most (the rest: counted, the page reloads)
TIMELINE_PAGE = 200  # entries per timeline page at most
TIMELINE_SCAN = 2000  # records of the chain read for one page at most (valid_at may skip many)


def jsonable(value: Any) -> Any:
    """An entry body for JSON: bytes as {"$bin": hex} (the page encodes them back as bin)."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def vkey(name: str, public_key: bytes) -> str:
    """The signed-note verifier key string (docs/FORMAT.md 5.2) of a checkpoint key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from reledger.ledger.checkpoint import NoteVerifier

    return NoteVerifier(name, Ed25519PublicKey.from_public_bytes(public_key)).vkey()


class TooMany(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code = status, code


class LiveStreams:
    """The live streams of every open console, fed by ONE watcher task: it asks the log's size
    every POLL s while at least one stream is open (none: it stops), reads the new records once
    (at most MAX_EVENT_ENTRIES of them) and hands them to every stream, which keeps those its
    party may read. Bounded: MAX_STREAMS at once, MAX_STREAMS_PER_PARTY each; each stream lives
    STREAM_LIFETIME s at most and carries a heartbeat every HEARTBEAT s."""

    def __init__(self, store, *, max_streams: int = MAX_STREAMS, per_party: int = MAX_STREAMS_PER_PARTY,
                 poll: float = POLL):
        self.store = store
        self.max_streams, self.per_party, self.poll = max_streams, per_party, poll
        self.queues: dict[int, tuple[str, asyncio.Queue]] = {}
        self.watcher: asyncio.Task | None = None
        self.closed = False
        self.size = 0

    def count(self, party: str | None = None) -> int:
        return sum(1 for p, _ in self.queues.values() if party is None or p == party)

    def open(self, party: str) -> tuple[int, asyncio.Queue]:
        if self.closed:
            raise TooMany(503, "unavailable", "the server is shutting down")
        if self.count(party) >= self.per_party:
            raise TooMany(429, "too_many_streams", f"{party} holds {self.per_party} live streams already: "
                          "close a console (one stream per console)")
        if len(self.queues) >= self.max_streams:
            raise TooMany(503, "overloaded", f"the server holds {self.max_streams} live streams: try again later")
        q: asyncio.Queue = asyncio.Queue(maxsize=64)
        sid = id(q)
        self.queues[sid] = (party, q)
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.get_running_loop().create_task(self._watch())
        return sid, q

    def close_stream(self, sid: int) -> None:
        self.queues.pop(sid, None)

    def close(self) -> None:
        """End every stream (the server is stopping: uvicorn waits for open responses)."""
        self.closed = True
        for _, q in list(self.queues.values()):
            self._put(q, None)
        if self.watcher is not None:
            self.watcher.cancel()

    @staticmethod
    def _put(q: asyncio.Queue, item: Any) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:  # a stream that does not read: it gets a "reload" at the end
            try:
                q.get_nowait()
                q.put_nowait({"size": item["size"] if item else 0, "records": [], "skipped": True} if item else None)
            except (asyncio.QueueEmpty, asyncio.QueueFull, TypeError):
                pass

    async def _watch(self) -> None:
        self.size = await asyncio.to_thread(self.store.size)
        while self.queues and not self.closed:
            await asyncio.sleep(self.poll)
            try:
                size = await asyncio.to_thread(self.store.size)
                if size <= self.size:
                    continue
                start = max(self.size, size - MAX_EVENT_ENTRIES)
                records = await asyncio.to_thread(lambda: list(self.store.records(start, size)))
                latest = await asyncio.to_thread(self.store.latest_checkpoint)
            except Exception:  # noqa: BLE001 - the database is away: try again at the next poll
                log.exception("live streams: reading the log failed")
                continue
            item = {"size": size, "from": self.size, "records": records, "skipped": start > self.size,
                    "checkpoint": latest[0] if latest else None}
            self.size = size
            for _, q in list(self.queues.values()):
                self._put(q, item)


def mount(app: FastAPI, *, store, projections, url: str, who: Callable, fresh: Callable, point: Callable,
          may_read_all: Callable, may_read_record: Callable, party_param: Callable, problem: Callable,
          max_streams: int = MAX_STREAMS, per_party: int = MAX_STREAMS_PER_PARTY) -> LiveStreams:
    """Add the console's page and endpoints to ``app`` (:func:`reledger.commands.server.http_app`
    passes its own authentication and authorization helpers, so that every read here is decided
    as the API's are). ``problem(status, code, detail, field=None)`` makes the API's RFC 9457
    error. Returns the live streams (``close()`` them before the server stops)."""
    from starlette.staticfiles import StaticFiles

    from reledger.projections.model import RULES
    from reledger.projections.store import P

    static = files("reledger.commands") / STATIC
    streams = LiveStreams(store, max_streams=max_streams, per_party=per_party)
    app.state.console_streams = streams

    @app.get("/console", include_in_schema=False)
    def console_root():
        return RedirectResponse("/console/")

    app.mount("/console", StaticFiles(directory=str(static), html=True), name="console")

    def own_or_all(me: str, roles: frozenset[str], party: str | None, what: str) -> str:
        party_param(party)
        if party is None:
            return me
        if party != me and not may_read_all(roles):
            raise problem(403, "forbidden", f"{me} may not read the {what} of {party}")
        return party

    @app.get("/v1/console/me", summary="Console: who signed this request, its roles, the log's checkpoint keys")
    def me(request: Request):
        party, roles = who(request)
        reg = store.current_registry()
        keys = sorted(vkey(k.name or "", k.public_key) for k in reg.keys.values()
                      if k.purpose == "checkpoint" and k.revoked_at is None and k.name)
        rows = projections.execute(f"SELECT name, province FROM {P}parties WHERE party = ? ORDER BY idx DESC LIMIT 1",
                                   (party,))
        name, province = (rows[0] if rows else (None, None))
        # the control years the ledger holds quota rows of (an index on year answers min and max)
        years = projections.execute(f"SELECT MIN(year), MAX(year) FROM {P}quota")
        first, last = years[0] if years and years[0][0] is not None else (None, None)
        # the latest year with quota used (the index on year: a year without use has few rows)
        used_year = None
        for y in range(int(last), max(int(first), int(last) - 20) - 1, -1) if first is not None else ():
            if projections.execute(f"SELECT 1 FROM {P}quota WHERE year = ? AND kind = 'USED' LIMIT 1", (y,)):
                used_year = y
                break
        return {"party": party, "roles": sorted(roles), "name": name, "province": province,
                "reads_all": may_read_all(roles), "checkpoint_keys": keys, "log_size": store.size(), "rules": RULES,
                "quota_years": [first, last] if first is not None else [], "quota_year": used_year or last}

    @app.get("/v1/console/parties", summary="Console: the parties (a regulator or auditor: all; others: itself)")
    def parties(request: Request):
        party, roles = who(request)
        fresh()
        latest: dict[str, dict[str, Any]] = {}
        for idx, p, name, r, province, grp, vf, vu in projections.execute(
                f"SELECT idx, party, name, roles, province, grp, valid_from_us, valid_until_us FROM {P}parties "
                "ORDER BY idx"):
            latest[p] = {"party": p, "name": name, "roles": [x for x in (r or "").split(",") if x],
                         "province": province, "group": grp}
        out = sorted(latest.values(), key=lambda x: x["party"])
        if not may_read_all(roles):
            out = [x for x in out if x["party"] == party]
        return {"parties": out}

    @app.get("/v1/console/keys/{key_id}", summary="Console: a public key of the registry and where it was authorized")
    def key(key_id: str, request: Request, chain: str | None = None,
            seq: int | None = Query(default=None, ge=1, le=2**63 - 1)):
        party, roles = who(request)
        if len(key_id) != 16 or any(c not in "0123456789abcdef" for c in key_id):
            raise problem(400, "invalid_request", "key_id: 16 lowercase hex digits", "key_id")
        rec = store.current_registry().keys.get(key_id)
        allowed = may_read_all(roles) or (rec is not None and rec.party == party)
        if not allowed and chain is not None and seq is not None:
            # another party's key, to check an entry the caller may read (a transfer it is party to)
            party_param(chain)
            entry = store.entry(chain, seq)
            if entry is not None and entry.envelope is not None and may_read_record(party, roles, entry):
                allowed = SignedEntry.parse(entry.envelope).entry.key_id == key_id
        if not allowed:
            raise problem(403, "forbidden", f"{party} may not read key {key_id} (pass chain and seq of an entry it "
                          "signed that you may read)")
        if rec is None:
            raise problem(404, "not_found", f"no key {key_id} in the registry")
        authorized = store.record(rec.authorized_at)
        return {"key_id": key_id, "party": rec.party, "purpose": rec.purpose,
                "public_key": base64.b64encode(rec.public_key).decode(),
                "authorized_at": {"index": rec.authorized_at, "chain": authorized.chain if authorized else None,
                                  "seq": authorized.seq if authorized else None},
                "revoked_at": rec.revoked_at}

    @app.get("/v1/console/timeline", summary="Console: a party's chain, a page at a time, at any point in time")
    def timeline(request: Request, party: str | None = None, after: int = Query(default=0, ge=0, le=2**62),
                 limit: int = Query(default=100, ge=1, le=TIMELINE_PAGE), as_of: str | None = None,
                 valid_at: str | None = None):
        me_, roles = who(request)
        chain = own_or_all(me_, roles, party, "chain")
        pt = point(as_of, valid_at)
        size = store.size()
        n = size if pt.as_of is None else min(pt.as_of, size)
        entries, last, cut = [], after, False
        # one page of the chain from seq after+1: bounded work whatever the chain's length (at
        # most TIMELINE_SCAN records read; a valid_at that skips more answers a short page, more=true)
        scanned = 0
        while len(entries) < limit and scanned < TIMELINE_SCAN and not cut:
            recs = store.chain_records(chain, last + 1, last + 1 + limit)
            scanned += limit
            if not recs:
                break
            for r in recs:
                last = r.seq
                if r.index >= n:
                    cut = True
                    break
                if r.envelope is None:
                    continue
                e = SignedEntry.parse(r.envelope).entry
                if pt.valid_at_us is not None:
                    if time_to_micros(parse_time(e.occurred_at)) > pt.valid_at_us:
                        continue
                entries.append({"index": r.index, "seq": r.seq, "type": r.type, "occurred_at": e.occurred_at,
                                "recorded_at": r.recorded_at, "entry_hash": r.entry_hash.hex(), "key_id": e.key_id,
                                "body": jsonable(e.body)})
                if len(entries) >= limit:
                    break
        head_seq, _ = store.chain_head(chain)
        latest = store.latest_checkpoint()
        return {"party": chain, "point": pt.to_dict(), "as_of_size": n, "entries": entries, "next_after": last,
                "more": not cut and last < head_seq,
                "reflects": {"log_size": size, "checkpoint": {"size": latest[0], "root": latest[1].hex()}
                             if latest else None}}

    @app.get("/v1/console/report", summary="Console: a party's monthly flow report, built from the ledger, to sign")
    def report(request: Request, month: str, party: str | None = None):
        from reledger.replay.monthly import ReportError, build_monthly_report

        me_, roles = who(request)
        chain = own_or_all(me_, roles, party, "report")
        fresh()
        try:
            rep = build_monthly_report(url, chain, month)
        except ReportError as e:
            raise problem(400, "invalid_request", str(e), "month") from e
        to_sign = [{"type": "MonthlyFlowReportSubmitted", "body": jsonable(rep["MonthlyFlowReportSubmitted"])}]
        if rep["QuotaExecutionReported"]:
            to_sign.append({"type": "QuotaExecutionReported", "body": jsonable(rep["QuotaExecutionReported"])})
        return {"party": chain, "month": month, "due": rep["due"], "covered_entries": rep["covered_entries"],
                "entries_in_month": rep["entries_in_month"], "to_sign": to_sign, "log_size": store.size()}

    # not in /openapi.json: a stream that never ends is no operation for a generated client to call
    @app.get("/v1/console/events", include_in_schema=False)
    async def events(request: Request):
        party, roles = await asyncio.to_thread(who, request)
        try:
            sid, q = streams.open(party)
        except TooMany as e:
            raise problem(e.status, e.code, str(e)) from e
        reads_all = may_read_all(roles)

        def visible(records) -> list[dict[str, Any]]:
            out = []
            for r in records:
                if reads_all or may_read_record(party, roles, r):
                    out.append({"index": r.index, "chain": r.chain, "seq": r.seq, "type": r.type,
                                "recorded_at": r.recorded_at})
            return out

        async def stream():
            ends = time.monotonic() + STREAM_LIFETIME
            try:
                size = await asyncio.to_thread(store.size)
                yield f"event: hello\ndata: {json.dumps({'size': size, 'party': party})}\n\n".encode()
                while True:
                    left = ends - time.monotonic()
                    if left <= 0:
                        yield b"event: bye\ndata: {\"reason\": \"lifetime\"}\n\n"
                        return
                    try:
                        item = await asyncio.wait_for(q.get(), timeout=min(HEARTBEAT, left))
                    except TimeoutError:
                        yield b": heartbeat\n\n"
                        continue
                    if item is None:
                        yield b"event: bye\ndata: {\"reason\": \"shutdown\"}\n\n"
                        return
                    seen = await asyncio.to_thread(visible, item["records"])
                    data = {"size": item["size"], "entries": seen, "skipped": item["skipped"],
                            "checkpoint": item.get("checkpoint")}
                    yield f"event: log\ndata: {json.dumps(data)}\n\n".encode()
            finally:
                streams.close_stream(sid)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return streams
