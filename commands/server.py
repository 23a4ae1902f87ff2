"""The HTTP surface of the command API (``reledger serve``); see docs/HTTP.md.

FastAPI (ASGI, OpenAPI at /openapi.json) in front of :class:`reledger.commands.api.CommandAPI`:

* ``POST /v1/entries``  append one all-or-nothing group of signed envelopes
  (``application/msgpack``: a canonical msgpack array of bin envelopes, or one bin envelope;
  ``application/json``: ``{"entries": [base64 envelope, ...]}``). Concurrent requests are
  grouped into one transaction by the committer the app is given (group commit: the writer
  process, :mod:`reledger.processes.committer`).
* reads (signed requests, see commands/auth.py): chain head, entry, checkpoint, inclusion and
  consistency proofs. Regulators and auditors read everything; an enterprise reads its own
  chain and the transfers it is party to; a party outside its designation at the time of the
  request, and an anonymous request, read nothing; their nonces are kept in the database
  (storage/nonces.py).
* limits (docs/HTTP.md, "Limits and timeouts"): an append's body is scanned as it arrives
  (:class:`BodyScan`) and decoded in threads of its own; :func:`guarded_protocol` times out
  request heads and refused bodies and caps connections, overall and per peer address.

Every error is ``application/problem+json`` (RFC 9457) with the API's own message.

This module is the HTTP surface only; which process does what (the writer process, the
projections process) is :mod:`reledger.processes.server`'s, which builds the app with
:func:`http_app` and serves it.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable

import msgpack
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from reledger.commands.api import CommandAPI, CommandError, Overloaded, WriterFailed, transient_errors
from reledger.commands.auth import AuthError, Designations, RequestAuthenticator
from reledger.ledger import encoding
from reledger.ledger.entry import CHAIN_RE, SignedEntry
from reledger.projections import flowgraph, queries
from reledger.storage.nonces import NonceStore
from reledger.storage.store import LedgerStore

log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024
MAX_INT = 2**63 - 1  # what a BIGINT column (and SQLite's INTEGER) holds: larger numbers are refused, never sent

# integer parameters, bounded so that no number reaches the database that it cannot hold
# (seq >= 1 is the API's check, with the API's message)
Seq = Annotated[int, Path(le=MAX_INT, description="entry number in its chain (1, 2, 3 ...)")]
Size = Annotated[int, Query(ge=0, le=MAX_INT, description="a tree size (number of log entries)")]
Year = Annotated[int, Query(ge=1, le=9999, description="the control year")]
PageLimit = Annotated[int, Query(ge=1, le=queries.PAGE_MAX, description=(
    f"at most this many items a page (1 to {queries.PAGE_MAX}, default {queries.PAGE_DEFAULT}); the answer's "
    "`next`, passed as `after` with the same other parameters and `as_of` = the first page's `as_of_size`, "
    "reads the next page; `next` is null on the last"))]
MAX_GROUP = 5000
PROBLEM = "application/problem+json"

# Bounds on what anybody, signed or not, can make the server do (docs/HTTP.md, "Limits and timeouts")
HEADER_TIMEOUT = 10.0  # s: a request's head must arrive within this of the connection's opening (or the last answer)
BODY_TIMEOUT = 60.0  # s: a request's body must arrive within this of its head (else 408)
KEEP_ALIVE = 5.0  # s: an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
MAX_CLIENT_CONNECTIONS = 128  # open connections per peer address (0: no limit; behind a proxy, raise it)
DECODE_THREADS = 2  # bodies are decoded in these threads, never on the event loop nor in the read threads


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, field: str | None = None,
                 position: int | None = None, title: str | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.field, self.position, self.title = field, position, title

    def response(self, instance: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"type": f"https://reledger.example/problems/{self.code}", "title": self.title or _TITLES.get(
            self.status, "Error"), "status": self.status, "detail": self.detail, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        if self.position is not None:
            body["position"] = self.position
        if instance:
            body["instance"] = instance
        return JSONResponse(body, status_code=self.status, media_type=PROBLEM, headers=headers)


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           413: "Payload Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
           405: "Method Not Allowed", 408: "Request Timeout", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


def problem_of(err: CommandError) -> Problem:
    return Problem(getattr(err, "status", 400), err.code, str(err), getattr(err, "field", None),
                   getattr(err, "position", None))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CONFIDENTIAL_FROM = 2025  # quota figures are not public data from this year on (DOMAIN.md)


def redacted(finding: dict[str, Any]) -> dict[str, Any]:
    """A finding as an enterprise may read it: without the figures its ``params.confidential``
    names (a group's or the nation's quota figures: DOMAIN.md, "Confidential figures"). The
    rule engine keeps such figures out of the message, in ``params`` only."""
    params = finding.get("params")
    if not isinstance(params, dict) or not params.get("confidential"):
        return finding
    hidden = set(params["confidential"])
    kept = {k: v for k, v in params.items() if k not in hidden}
    return {**finding, "params": kept}


def http_app(store: LedgerStore, api: CommandAPI, committer: Any, findings_hook: Any, projections: Any, *,
             url: str, start: Callable[[], None], stop: Callable[[], None], auth_window: float = 300.0,
             body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The HTTP surface over parts its caller made and wired
    (:func:`reledger.processes.server.create_app`: which process does what). ``committer``
    takes the appends (``submit(envelopes)``, awaitable; ``queued_entries``); ``findings_hook``
    brings the projections up to date (``catch_up()``) before a query; ``projections`` (a
    :class:`reledger.projections.store.ProjectionStore`) answers the queries. ``start()`` runs in
    a thread before the first request, ``stop()`` at shutdown. ``body_timeout``: seconds a
    request's body may take to arrive (408 after that)."""
    import anyio

    # the nonces of signed reads live in the database: a captured request is refused after a
    # restart and by every other server of this ledger too (storage/nonces.py)
    nonces = NonceStore(url, 2 * auth_window)
    authenticator = RequestAuthenticator(store.current_registry, window=auth_window, nonces=nonces)
    designations = Designations(store)
    decode_limiter = anyio.CapacityLimiter(DECODE_THREADS)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(start)
        try:
            await asyncio.to_thread(designations.follow)  # the parties' designations, for the reads
        except Exception:  # noqa: BLE001 - the first read tries again (and answers 503 if it must)
            log.exception("the designations could not be read at startup")
        # What exists now (the app, the write state) lives as long as the server: exempt it from
        # the cyclic GC's full passes, which otherwise stall every thread for tens of ms (at 16
        # clients, p99 55 -> 20 ms, one entry a request).
        gc.collect()
        gc.freeze()
        yield
        stop()
        nonces.close()

    app = FastAPI(title="reledger", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Signed, append-only rare earth traceability ledger: the command API. "
                              "Errors are RFC 9457 problem+json; reads need a signed request (docs/HTTP.md).")
    app.state.store, app.state.api, app.state.committer = store, api, committer
    app.state.findings_hook = findings_hook

    # --- errors --------------------------------------------------------------------------
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return exc.response(request.url.path)

    @app.exception_handler(CommandError)
    async def _command_error(request: Request, exc: CommandError):
        return problem_of(exc).response(request.url.path)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError):
        return Problem(exc.status, "unauthorized", str(exc)).response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return Problem(400, "invalid_request", f"{loc}: {first.get('msg', 'invalid request')}",
                       field=loc or None).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return Problem(exc.status_code, code, str(exc.detail)).response(request.url.path, getattr(exc, "headers", None))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return Problem(503, "overloaded", str(exc)).response(request.url.path, {"Retry-After": "1"})

    @app.exception_handler(WriterFailed)
    async def _writer_failed(request: Request, exc: WriterFailed):
        if exc.transient:  # nothing was acknowledged; the same request may be sent again
            return Problem(503, "unavailable", str(exc)).response(request.url.path, {"Retry-After": "1"})
        return Problem(500, "internal", str(exc)).response(request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if isinstance(exc, transient_errors()):  # nothing was written; the same request may be sent again
            return Problem(503, "unavailable", f"the database is unavailable or busy ({type(exc).__name__}): retry "
                                               "the same request").response(request.url.path, {"Retry-After": "1"})
        return Problem(500, "internal", f"internal error: {type(exc).__name__}").response(request.url.path)

    # --- helpers -------------------------------------------------------------------------
    async def read_body(request: Request, scan: "BodyScan | None" = None) -> bytes:
        """The body, read within ``body_timeout`` and MAX_BODY; ``scan`` sees it as it arrives
        and refuses a hostile one at once, unread past its first bad bytes."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Problem(400, "invalid_request", "Content-Length is not a number")
            if int(declared) > MAX_BODY:
                raise Problem(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
        buf = bytearray()
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    if len(buf) + len(chunk) > MAX_BODY:
                        raise Problem(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
                    buf += chunk
                    if scan is not None:
                        scan.feed(buf, len(chunk))
        except TimeoutError:
            raise Problem(408, "timeout", f"the body did not arrive within {body_timeout:g} s") from None
        return bytes(buf)

    def who(request: Request, body: bytes = b"") -> tuple[str, frozenset[str]]:
        # the path as sent (percent-encoding kept), not Starlette's decoded one: the client signs
        # the bytes it puts on the request line (docs/HTTP.md)
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.url.path
        query = request.scope.get("query_string", b"").decode("latin-1")
        path += f"?{query}" if query else ""
        party = authenticator.authenticate(request.method, path, request.headers, body)
        if party is None:
            raise Problem(401, "unauthorized", "reads need a signed request (X-Reledger-* headers, docs/HTTP.md)")
        # the designation in force now, not the roles last recorded: a party whose designation
        # has not begun, has ended or is suspended reads nothing (docs/HTTP.md, "Who may read what")
        roles, why = designations.roles_now(party)
        if not roles:
            raise Problem(403, "forbidden", f"{party} holds no designation now: {why}")
        return party, roles

    def chain_id(chain: str) -> str:
        """``chain`` if it is a party id; else the API's 400 (never a query with it)."""
        CommandAPI.check_chain_id(chain)  # raises the API's own CommandError
        return chain

    def text_param(name: str, value: str | None) -> str | None:
        """A free-text query parameter: no control characters (PostgreSQL refuses NUL)."""
        if value is not None and (len(value) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise Problem(400, "invalid_request", f"{name}: at most 256 characters, no control characters",
                          field=name)
        return value

    def party_param(value: str | None) -> str | None:
        if value is not None and not CHAIN_RE.match(value):
            raise Problem(400, "invalid_request", "party: must be a party id of 2-64 characters A-Z 0-9 . _ -",
                          field="party")
        return value

    def stock_after(value: str | None) -> tuple[str, str] | None:
        """``after`` of a stock page: PARTY:LOT (the ``next`` of the page before)."""
        if value is None:
            return None
        if len(value) > 1024 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise Problem(400, "invalid_request", "after: at most 1024 characters, no control characters",
                          field="after")
        try:
            key = queries.parse_stock_after(value)
        except ValueError as e:
            raise Problem(400, "invalid_request", str(e), field="after") from e
        if not CHAIN_RE.match(key[0]):
            raise Problem(400, "invalid_request", "after: PARTY:LOT, PARTY a party id of 2-64 characters "
                          "A-Z 0-9 . _ - (the next of the page before)", field="after")
        return key

    def may_read_all(roles: frozenset[str]) -> bool:
        return bool(roles & {"REGULATOR", "AUDITOR"})

    def may_read_record(party: str, roles: frozenset[str], rec) -> bool:
        if may_read_all(roles) or rec.chain == party:
            return True
        if rec.type in ("TransferShipped", "TransferReceived") and rec.envelope is not None:
            body = SignedEntry.parse(rec.envelope).entry.body
            return party in (body.get("buyer"), body.get("seller"))
        return False

    def readable_record(party: str, roles: frozenset[str], chain: str, seq: int):
        """The record chain:seq if ``party`` may read it. Another party's chain answers 403
        whether or not the entry exists (no existence oracle); the API's 400/404 otherwise."""
        chain_id(chain)
        try:
            rec = api.entry(chain, seq)
        except CommandError as err:
            if err.code == "not_found" and not (may_read_all(roles) or chain == party):
                raise Problem(403, "forbidden", f"{party} may not read {chain}:{seq}") from None
            raise
        if not may_read_record(party, roles, rec):
            raise Problem(403, "forbidden", f"{party} may not read {chain}:{seq}")
        return rec

    def record_json(rec) -> dict[str, Any]:
        return {"index": rec.index, "chain": rec.chain, "seq": rec.seq, "type": rec.type,
                "entry_hash": rec.entry_hash.hex(), "recorded_at": rec.recorded_at,
                "leaf_hash": rec.nodes[:32].hex(), "envelope": _b64(rec.envelope or b"")}

    # --- append ------------------------------------------------------------------------
    @app.post("/v1/entries", status_code=201, summary="Append one all-or-nothing group of signed entries",
              responses={400: {"description": "malformed or invalid entry (problem+json)"},
                         403: {"description": "key or role not allowed"},
                         409: {"description": "seq/prev conflict or command id reused"},
                         413: {"description": "body too large"}, 415: {"description": "wrong content type"},
                         503: {"description": "busy (`overloaded`) or the database unavailable (`unavailable`): "
                                              "nothing was written, send the same bytes again (Retry-After)"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/msgpack": {"schema": {"type": "string", "format": "binary"},
                                          "description": "a canonical msgpack array of bin envelopes, or one"},
                  "application/json": {"schema": {
                      "type": "object", "required": ["entries"], "additionalProperties": False,
                      "properties": {"entries": {"type": "array", "minItems": 1, "maxItems": MAX_GROUP,
                                                 "items": {"type": "string", "format": "byte"}}}}}}}})
    async def append(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/msgpack", "application/json"):
            raise Problem(415, "unsupported_media_type",
                          "Content-Type must be application/msgpack or application/json")
        body = await read_body(request, BodyScan(ctype))
        # bounded work before anything is built (parse_envelopes), in threads of its own: a body of
        # millions of tiny items neither stalls the event loop nor takes the threads reads run in
        envelopes = await anyio.to_thread.run_sync(parse_envelopes, ctype, body, limiter=decode_limiter)
        if not envelopes:
            raise Problem(400, "malformed", "body: no entries")
        if len(envelopes) > MAX_GROUP:
            raise Problem(413, "too_large", f"at most {MAX_GROUP} entries per request")
        receipts = await committer.submit(envelopes)
        findings = [redacted(f) for r in receipts for f in getattr(r, "findings", [])]
        status = 200 if all(r.duplicate for r in receipts) else 201
        return JSONResponse({"receipts": [{**d, "findings": [redacted(f) for f in d.get("findings", [])]}
                                      for d in (r.to_dict() for r in receipts)], "findings": findings},
                            status_code=status)

    # --- reads -------------------------------------------------------------------------
    @app.get("/v1/chains/{chain}/head", summary="The head of a chain (seq and entry hash)")
    def head(chain: str, request: Request):
        party, roles = who(request)
        chain_id(chain)
        if not (may_read_all(roles) or chain == party):
            raise Problem(403, "forbidden", f"{party} may not read chain {chain}")
        seq, h = api.head(chain)
        return {"chain": chain, "seq": seq, "entry_hash": h.hex()}

    @app.get("/v1/chains/{chain}/entries/{seq}", summary="One entry, with what the ledger added")
    def entry(chain: str, seq: Seq, request: Request):
        party, roles = who(request)
        rec = readable_record(party, roles, chain, seq)
        if "application/msgpack" in request.headers.get("accept", ""):
            return Response(rec.envelope, media_type="application/msgpack")
        return record_json(rec)

    @app.get("/v1/checkpoint", summary="The latest signed checkpoint (C2SP tlog-checkpoint note)")
    def checkpoint(request: Request):
        who(request)
        latest = store.latest_checkpoint()
        if latest is None:
            raise Problem(404, "not_found", "no checkpoint yet")
        return PlainTextResponse(latest[2].decode(), media_type="text/plain; charset=utf-8")

    @app.get("/v1/proofs/inclusion", summary="Inclusion proof of an entry in a tree of a given size")
    def inclusion(chain: str, seq: Annotated[int, Query(le=MAX_INT)], request: Request,
                  size: Size | None = None):
        party, roles = who(request)
        rec = readable_record(party, roles, chain, seq)
        if size is None:
            latest = store.latest_checkpoint()
            size = latest[0] if latest else store.size()
            if rec.index >= size:
                raise Problem(400, "invalid_request", f"entry index {rec.index} is not covered by the latest "
                              f"checkpoint (tree size {size}) yet: ask again after the next checkpoint, or pass "
                              "size", field="size")
        if not rec.index < size <= store.size():
            raise Problem(400, "invalid_request", f"entry index {rec.index} is not inside a tree of size {size}",
                          field="size")
        proof = store.inclusion_proof(rec.index, size)
        return {"index": rec.index, "size": size, "leaf_hash": rec.nodes[:32].hex(),
                "recorded_at": rec.recorded_at, "entry_hash": rec.entry_hash.hex(),
                "proof": [h.hex() for h in proof], "root": store.root(size).hex()}

    @app.get("/v1/proofs/consistency", summary="Consistency proof between two tree sizes")
    def consistency(request: Request, first: Size, second: Size):
        who(request)
        if not 0 <= first <= second <= store.size():
            raise Problem(400, "invalid_request", f"need 0 <= first <= second <= {store.size()}")
        proof = store.consistency_proof(first, second) if first > 0 else []  # the empty tree: nothing to prove
        return {"first": first, "second": second, "proof": [h.hex() for h in proof],
                "root_first": store.root(first).hex(), "root_second": store.root(second).hex()}

    # --- projections (the same queries as the command line) ---------------------------------
    def point(as_of: str | None, valid_at: str | None):
        try:
            return queries.parse_point(url, as_of, valid_at)
        except ValueError as e:
            raise Problem(400, "invalid_request", str(e), field="as_of" if as_of else "valid_at") from e

    def fresh() -> None:
        # The answer includes every entry appended before the question (the follower may lag).
        # Through the findings hook, which keeps the findings of what the catch-up projects: a
        # query that ran between a commit and the hook's question would otherwise consume the
        # new entries' findings and the append's answer would list none.
        findings_hook.catch_up()

    @app.get("/v1/quota", summary="Quota usage for a year (enterprise, group, nation), at any point in time")
    def quota(request: Request, year: Year, as_of: str | None = None, valid_at: str | None = None):
        party, roles = who(request)
        fresh()
        answer = queries.quota(projections, year, point(as_of, valid_at))
        if not may_read_all(roles):
            # quota figures are confidential (DOMAIN.md, "Confidential figures"): an enterprise
            # reads its own lines, a group its own and its members' (at the time in question);
            # the nation's totals only for the years they were public (before CONFIDENTIAL_FROM)
            members = (queries.group_members(projections, party, year, point(as_of, valid_at))
                       if "GROUP" in roles else set())
            answer["enterprises"] = [e for e in answer["enterprises"] if e["party"] == party or e["party"] in members]
            answer["groups"] = [g for g in answer["groups"] if g["group"] == party]
            if year >= CONFIDENTIAL_FROM:
                answer["nation"] = []
        return answer

    @app.get("/v1/stock", summary="Stock per party, product and lot, at any point in time (keyset pages of lots)")
    def stock(request: Request, party: str | None = None, as_of: str | None = None, valid_at: str | None = None,
              limit: PageLimit = queries.PAGE_DEFAULT,
              after: Annotated[str | None, Query(description="PARTY:LOT, the `next` of the page before: the lots "
                                                 "after it, in (party, lot) order")] = None):
        me, roles = who(request)
        party_param(party)
        key = stock_after(after)
        if not may_read_all(roles):
            if party not in (None, me):
                raise Problem(403, "forbidden", f"{me} may not read the stock of {party}")
            party = me
        if key is not None and party is not None and key[0] != party:
            raise Problem(400, "invalid_request", f"after: {after[:80]!r} is not a lot of {party} (the next of "
                          "the page before)", field="after")
        fresh()
        return queries.stock(projections, party, point(as_of, valid_at), limit=limit, after=key)

    @app.get("/v1/findings", summary="Rule findings with their evidence, at any point in time (keyset pages by "
                                     "log index)")
    def findings(request: Request, party: str | None = None, rule: str | None = None, as_of: str | None = None,
                 valid_at: str | None = None, limit: PageLimit = queries.PAGE_DEFAULT,
                 after: Annotated[int | None, Query(ge=0, le=MAX_INT, description=(
                     "a log index, the `next` of the page before: the findings of later log indices"))] = None):
        me, roles = who(request)
        party_param(party)
        text_param("rule", rule)
        pt = point(as_of, valid_at)
        if may_read_all(roles):
            fresh()
            return queries.findings(projections, party, rule, pt, limit=limit, after=after)
        fresh()
        # a group reads its own findings and its members' quota findings (their quota lines:
        # DOMAIN.md "Confidential figures"), members at the finding's year as the ledger knew
        # them at the point asked; everyone else only its own
        members = queries.group_membership(projections, me, pt) if "GROUP" in roles else {}
        if party not in (None, me) and not any(party in m for m in members.values()):
            raise Problem(403, "forbidden", f"{me} may not read the findings of {party}")
        if party is None and members:  # its own and its members', one page of them all in log order
            answer = queries.findings(projections, None, rule, pt, limit=limit, after=after,
                                      parties=[me, *sorted(set().union(*members.values()) - {me})])
        else:
            answer = queries.findings(projections, party or me, rule, pt, limit=limit, after=after)

        def visible(f: dict) -> bool:
            if f["party"] == me and party in (None, me):
                return True
            prm = f.get("params") or {}
            try:
                year = int(prm.get("year"))
            except (TypeError, ValueError):
                return False
            level = prm.get("level", "enterprise")
            return (f["rule"] == "quota" and f["party"] in members.get(year, ())
                    and (level == "enterprise" or (level == "group" and prm.get("holder") == me)))

        def shown(f: dict) -> dict:
            prm = f.get("params") or {}
            # the group's own level: its own figures
            return f if prm.get("level") == "group" and prm.get("holder") == me else redacted(f)

        # a page keeps its place in the log (``next``) though what this reader may not see is
        # left out of it: a page may hold fewer than ``limit`` findings, even none
        answer["findings"] = [shown(f) for f in answer["findings"] if visible(f)]
        return answer

    @app.get("/v1/flow", summary="The flow graph, or a lot traced upstream/downstream (json, dot or svg)")
    def flow(request: Request, lot: str | None = None, direction: str = "up", format: str = "json",
             as_of: str | None = None, valid_at: str | None = None):
        me, roles = who(request)
        text_param("lot", lot)
        if direction not in ("up", "down") or format not in ("json", "dot", "svg"):
            raise Problem(400, "invalid_request", "direction is up|down and format json|dot|svg")
        fresh()
        pt = point(as_of, valid_at)
        if lot is None:
            if not may_read_all(roles):
                raise Problem(403, "forbidden", "the whole flow graph is for regulators and auditors; trace a lot")
            graph = flowgraph.party_graph(projections, pt)
        else:
            if not may_read_all(roles):
                held = projections.execute("SELECT 1 FROM reledger_p_stock WHERE party = ? AND lot = ? LIMIT 1",
                                           (me, lot))
                if not held:
                    raise Problem(403, "forbidden", f"{me} never held lot {lot}")
            graph = flowgraph.trace(projections, lot, direction, pt)
        if format == "dot":
            return PlainTextResponse(flowgraph.to_dot(graph), media_type="text/vnd.graphviz")
        if format == "svg":
            try:
                return Response(flowgraph.to_svg(graph), media_type="image/svg+xml")
            except (flowgraph.GraphvizMissing, flowgraph.GraphvizFailed) as e:  # SVG is drawn by Graphviz
                raise Problem(503, "unavailable", str(e)) from e
        return graph

    @app.get("/v1/health", summary="Liveness, log size and appends waiting to be committed (no authentication)")
    def health():
        return {"ok": True, "size": store.size(), "queued_entries": committer.queued_entries}

    add_offline_docs(app)
    # the web console (commands/console.py, docs/CONSOLE.md): its reads are decided by the helpers above
    from reledger.commands import console

    console.mount(app, store=store, projections=projections, url=url, who=who, fresh=fresh, point=point,
                  may_read_all=may_read_all, may_read_record=may_read_record, party_param=party_param,
                  problem=Problem)
    return app


#: where the OpenAPI pages' scripts and styles are served from: the package, never a CDN
DOCS_ASSETS = "/docs-assets"


def add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with every script, style and icon served by this
    server from the installed package ``fastapi_offline`` (its ``static`` folder holds
    swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png): the pages work
    with no network. No authentication (they describe the API, they read nothing)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    static = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(static)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="reledger: the command API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title="reledger: the command API",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def default_max_connections() -> int:
    """Connections the server holds at once: what the open-file limit leaves after the files,
    pipes and database connections of the server itself (256), at least 64, at most 4096."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1000
    if soft == getattr(resource, "RLIM_INFINITY", -1):
        return 4096
    return max(64, min(4096, soft - 256))


def _problem_bytes(status: int, code: str, detail: str, retry_after: bool = True) -> bytes:
    import json

    body = json.dumps({"type": f"https://reledger.example/problems/{code}", "title": _TITLES.get(status, "Error"),
                       "status": status, "detail": detail, "code": code}).encode()
    head = (f"HTTP/1.1 {status} {_TITLES.get(status, 'Error')}\r\ncontent-type: {PROBLEM}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n" + ("retry-after: 1\r\n" if retry_after else "")
            + "\r\n")
    return head.encode() + body


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT, max_connections: int | None = None,
                     max_client_connections: int = MAX_CLIENT_CONNECTIONS, body_timeout: float = BODY_TIMEOUT):
    """uvicorn's h11 protocol with the bounds uvicorn lacks (docs/HTTP.md, "Limits and timeouts"):

    * a request's head must arrive within ``header_timeout`` s of the connection's opening or of
      the previous answer on it (uvicorn only times out keep-alive connections that sent nothing
      after an answer): a half-open or idle connection is closed; and the rest of a body
      answered before it was read (a refusal from its first bytes) must arrive within
      ``body_timeout`` s (it is dropped unparsed; a body that trickles on is cut off);
    * at most ``max_connections`` connections at once, and ``max_client_connections`` per peer
      address (0: no per-peer limit): a connection over either is answered at once (503
      ``overloaded`` / 429 ``too_many_connections``, problem+json, ``Retry-After: 1``) and
      closed, before anything of it is read. This is uvicorn's ``limit_concurrency`` done where
      it frees the file descriptor at once, and per peer: one client's connections cannot take
      every one."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limit = max_connections if max_connections is not None else default_max_connections()

    class GuardedH11Protocol(H11Protocol):
        per_peer: dict[str, int] = {}

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer: str | None = None
            self._head_timer = None
            self._drain_timer = None
            host = self.client[0] if self.client else None
            if len(self.connections) > limit:
                return self._refuse(503, "overloaded", f"the server holds {limit} connections: try again")
            if max_client_connections and host is not None:
                held = self.per_peer.get(host, 0)
                if held >= max_client_connections:
                    return self._refuse(429, "too_many_connections",
                                        f"at most {max_client_connections} connections per client address")
                self.per_peer[host] = held + 1
                self._peer = host
            self._arm()

        def _refuse(self, status: int, code: str, detail: str) -> None:
            self.transport.write(_problem_bytes(status, code, detail))
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()  # no request came (or only part of its head)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                if self._head_timer is not None:
                    self._disarm()  # the head is in: the body has its own timeout (create_app)
            elif self._drain_timer is not None and self._head_timer is None:
                self._drain_timer.cancel()  # the unread body is through: wait for the next head
                self._drain_timer = None
                self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY:
                # answered before the body was read (refused from its first bytes): uvicorn drops
                # the rest unparsed as it comes, but a body that trickles on is cut off
                self._drain_timer = self.loop.call_later(body_timeout, self._drain_timeout)
            elif self.conn.their_state is h11.IDLE:
                self._arm()  # waiting for the next request's head

        def _drain_timeout(self) -> None:
            self._drain_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            if self._peer is not None:
                left = self.per_peer.get(self._peer, 1) - 1
                if left > 0:
                    self.per_peer[self._peer] = left
                else:
                    self.per_peer.pop(self._peer, None)
                self._peer = None
            super().connection_lost(exc)

    return GuardedH11Protocol


# --- the body of an append, decoded with bounded work ------------------------------------------

_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8/16/32: width of the length


def _bin_end(body: bytes, i: int) -> int | None:
    """The end of the msgpack bin value at ``body[i]``; None if there is none."""
    width = _BIN.get(body[i])
    if width is None or i + 1 + width > len(body):
        return None
    end = i + 1 + width + int.from_bytes(body[i + 1:i + 1 + width], "big")
    return end if end <= len(body) else None


def scan_msgpack(body: bytes) -> None:
    """Refuse, before anything is decoded, a msgpack body that is not one bin value or an array
    of at most MAX_GROUP bin values: one step per item, at most MAX_GROUP steps, nothing built.
    (msgpack's own ``max_*_len`` limits bound each container, not the items of a nested body.)"""
    shape = Problem(400, "malformed", "body: expected a msgpack array of binary envelopes")
    n = len(body)
    if n == 0:
        raise Problem(400, "malformed", "body: empty")
    first = body[0]
    if first in _BIN:
        if _bin_end(body, 0) != n:
            raise shape
        return
    if 0x90 <= first <= 0x9F:
        count, i = first & 0x0F, 1
    elif first in (0xDC, 0xDD):
        i = 3 if first == 0xDC else 5
        if n < i:
            raise shape
        count = int.from_bytes(body[1:i], "big")
    else:
        raise shape
    if count > MAX_GROUP:
        raise Problem(413, "too_large", f"at most {MAX_GROUP} entries per request")
    for _ in range(count):
        end = _bin_end(body, i) if i < n else None
        if end is None:
            raise shape
        i = end
    if i != n:
        raise Problem(400, "malformed", "body: trailing bytes after the envelopes")


_JSON_SHAPE = 'body: expected {"entries": [base64 envelope, ...]}'


def scan_json(body: bytes) -> None:
    """Refuse, before it is parsed, a JSON body that cannot be ``{"entries": [...]}`` with at most
    MAX_GROUP strings: more than one object and one array (nesting), or more commas than
    MAX_GROUP strings need. Counted in C over the bytes (a few ms for 4 MiB); base64 has neither
    brackets nor commas, so a valid body always passes."""
    if body.count(b"{") + body.count(b"[") > 2:
        raise Problem(400, "malformed", _JSON_SHAPE)
    if body.count(b",") >= MAX_GROUP:
        raise Problem(413, "too_large", f"at most {MAX_GROUP} entries per request")


class BodyScan:
    """The scans above, run on an append's body as it arrives (a few steps per chunk): a body
    whose first items are not envelopes, or that already holds too many items or brackets, is
    refused before the rest of it is read."""

    def __init__(self, ctype: str):
        self.json = ctype == "application/json"
        self.at = 0  # msgpack: the offset of the next item to look at
        self.left: int | None = None  # msgpack: items still to see (None: the head is not read yet)
        self.brackets = self.commas = 0  # json: counted so far

    def feed(self, buf: bytearray, new: int) -> None:
        if self.json:
            chunk = bytes(buf[len(buf) - new:])
            self.brackets += chunk.count(b"{") + chunk.count(b"[")
            self.commas += chunk.count(b",")
            if self.brackets > 2:
                raise Problem(400, "malformed", _JSON_SHAPE)
            if self.commas >= MAX_GROUP:
                raise Problem(413, "too_large", f"at most {MAX_GROUP} entries per request")
            return
        n = len(buf)
        if n == 0:
            return
        if self.left is None:
            first = buf[0]
            if first in _BIN:
                self.left, self.at = 1, 0
            elif 0x90 <= first <= 0x9F:
                self.left, self.at = first & 0x0F, 1
            elif first in (0xDC, 0xDD):
                self.at = 3 if first == 0xDC else 5
                if n < self.at:
                    self.at = 0
                    return
                self.left = int.from_bytes(buf[1:self.at], "big")
                if self.left > MAX_GROUP:
                    raise Problem(413, "too_large", f"at most {MAX_GROUP} entries per request")
            else:
                raise Problem(400, "malformed", "body: expected a msgpack array of binary envelopes")
        while self.left and self.at < n:
            width = _BIN.get(buf[self.at])
            if width is None:
                raise Problem(400, "malformed", "body: expected a msgpack array of binary envelopes")
            if self.at + 1 + width > n:
                return  # the length is not all here yet
            self.at += 1 + width + int.from_bytes(buf[self.at + 1:self.at + 1 + width], "big")
            self.left -= 1
        if self.left == 0 and n > self.at:
            raise Problem(400, "malformed", "body: trailing bytes after the envelopes")


def parse_envelopes(ctype: str, body: bytes) -> list[bytes]:
    """The envelopes of an append's body (docs/HTTP.md), or a Problem. Bounded: the scans above
    run first, so nothing larger than MAX_GROUP items is ever built."""
    if ctype == "application/msgpack":
        scan_msgpack(body)
        try:
            value = encoding.decode(body)
        except encoding.EncodingError as e:
            raise Problem(400, "malformed", f"body: {e}") from e
        envelopes = [value] if isinstance(value, bytes) else value
        if not isinstance(envelopes, list) or not all(isinstance(x, bytes) for x in envelopes):
            raise Problem(400, "malformed", "body: expected a msgpack array of binary envelopes")
        return envelopes
    import json

    scan_json(body)
    try:
        doc = json.loads(body)
        raw = doc["entries"]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise TypeError
        return [base64.b64decode(x, validate=True) for x in raw]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise Problem(400, "malformed", _JSON_SHAPE) from e


def msgpack_body(envelopes: list[bytes]) -> bytes:
    return msgpack.packb(envelopes, use_bin_type=True)
