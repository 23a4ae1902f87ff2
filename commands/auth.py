"""Signed read requests: a party proves it holds its key, and a request cannot be replayed.

A request carries five headers (docs/HTTP.md):

``X-Reledger-Party``      the party id
``X-Reledger-Key-Id``     its key id (16 hex digits)
``X-Reledger-Timestamp``  RFC 3339 UTC time of signing (normal form)
``X-Reledger-Nonce``      16-64 characters [A-Za-z0-9_-], never reused
``X-Reledger-Signature``  base64 Ed25519 signature over REQUEST_TAG || canonical msgpack of
                          {"body_sha256": bin32, "key_id", "method", "nonce", "party",
                           "path" (path and query as sent), "timestamp"}

The server accepts a timestamp within ``window`` seconds of its clock and remembers every nonce
for twice that window, so a captured request cannot be played again, now or later. The server
keeps the nonces in the ledger's database (:class:`reledger.storage.nonces.NonceStore`), so that
this holds across restarts and for every server of one ledger; :class:`NonceCache` keeps them
in memory (one process, for tests and in-process use).

Who may read is decided by the party's designation at the time of the request
(:class:`Designations`): a party whose designation has not begun, has ended or is suspended
reads nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timezone

from reledger.commands.state import Designation, PartyInfo, time_us
from reledger.ledger import encoding
from reledger.ledger.encoding import EncodingError
from reledger.ledger.entry import EntryError, SignedEntry
from reledger.ledger.keys import SigningKey, verify_signature

REQUEST_TAG = b"reledger/v1/request\n"
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
HEADERS = ("X-Reledger-Party", "X-Reledger-Key-Id", "X-Reledger-Timestamp", "X-Reledger-Nonce",
           "X-Reledger-Signature")


class AuthError(Exception):
    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


def request_message(method: str, path: str, party: str, key_id: str, timestamp: str, nonce: str,
                    body: bytes) -> bytes:
    return encoding.canonical({
        "body_sha256": hashlib.sha256(body).digest(), "key_id": key_id, "method": method.upper(),
        "nonce": nonce, "party": party, "path": path, "timestamp": timestamp})


def sign_request(key: SigningKey, method: str, path: str, body: bytes = b"",
                 now: datetime | None = None) -> dict[str, str]:
    """The headers that authenticate one request by ``key``'s party."""
    ts = encoding.time_text((now or datetime.now(timezone.utc)).replace(microsecond=0))
    nonce = secrets.token_urlsafe(18)
    msg = request_message(method, path, key.party, key.key_id, ts, nonce, body)
    sig = key.sign(REQUEST_TAG, msg)
    return {"X-Reledger-Party": key.party, "X-Reledger-Key-Id": key.key_id, "X-Reledger-Timestamp": ts,
            "X-Reledger-Nonce": nonce, "X-Reledger-Signature": base64.b64encode(sig).decode()}


class NonceCache:
    """Nonces seen within the replay horizon, in this process's memory; thread-safe, bounded.
    (The server uses :class:`reledger.storage.nonces.NonceStore`: the same check, in the database.)"""

    def __init__(self, horizon: float, max_entries: int = 1_000_000):
        self.horizon, self.max_entries = horizon, max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, key_id: str, nonce: str) -> bool:
        now = time.time()
        with self._lock:
            while self._seen:
                (k, t) = next(iter(self._seen.items()))
                if t < now - self.horizon or len(self._seen) > self.max_entries:
                    self._seen.popitem(last=False)
                else:
                    break
            if (key_id, nonce) in self._seen:
                return False
            self._seen[(key_id, nonce)] = now
            return True


class RequestAuthenticator:
    """Checks the signed-request headers against the ledger's current key registry."""

    def __init__(self, registry_provider, window: float = 300.0, nonces=None):
        """``nonces``: where the nonces are kept, anything with ``check_and_add(key_id, nonce) ->
        bool`` remembering them for ``2 * window`` s (default: a :class:`NonceCache`)."""
        self.registry_provider = registry_provider  # () -> ledger.registry.Registry (current)
        self.window = window
        self.nonces = nonces if nonces is not None else NonceCache(2 * window)

    def authenticate(self, method: str, path: str, headers, body: bytes) -> str | None:
        """The authenticated party id; None when the request carries no credentials at all."""
        present = [h for h in HEADERS if headers.get(h)]
        if not present:
            return None
        if len(present) != len(HEADERS):
            missing = [h for h in HEADERS if not headers.get(h)]
            raise AuthError(f"incomplete request signature: missing {', '.join(missing)}")
        party, key_id, ts, nonce, sig_b64 = (headers.get(h) for h in HEADERS)
        if not NONCE_RE.match(nonce):
            raise AuthError("X-Reledger-Nonce must be 16-64 characters A-Z a-z 0-9 _ -")
        try:
            signed_at = encoding.parse_time(ts)
        except EncodingError as e:
            raise AuthError(f"X-Reledger-Timestamp: {e}") from e
        now = time.time()
        if abs(now - signed_at.timestamp()) > self.window:
            raise AuthError(f"X-Reledger-Timestamp is outside the accepted window of {int(self.window)} s")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except ValueError as e:
            raise AuthError("X-Reledger-Signature is not base64") from e
        registry = self.registry_provider()
        rec = registry.keys.get(key_id)
        now_us = int(now * 1_000_000)
        if rec is None or rec.purpose != "entries" or rec.party != party:
            raise AuthError(f"key {key_id} is not a key of party {party}")
        if now_us < rec.valid_from_us:
            raise AuthError(f"key {key_id} is not valid yet")
        if rec.revoked_at is not None:
            raise AuthError(f"key {key_id} has been revoked")
        if rec.valid_until_us is not None and now_us >= rec.valid_until_us:
            raise AuthError(f"key {key_id} has expired")
        msg = request_message(method, path, party, key_id, ts, nonce, body)
        if not verify_signature(rec.public_key, REQUEST_TAG, msg, sig):
            raise AuthError("the request signature does not verify")
        if not self.nonces.check_and_add(key_id, nonce):
            raise AuthError("this request was already received (replayed nonce)")
        return party


class Designations:
    """Every party's designations (roles over business time), following the log of ``store``:
    the registration and each designation change, read once as the log grows. Thread-safe.

    The server decides a read by the designation in force at the time of the request
    (:meth:`roles_now`), not by the roles last recorded: a party whose designation has not begun,
    has ended (``valid_until`` passed) or whose roles are suspended holds no role now. The
    designations are read as the write path reads them (``reledger.commands.state``)."""

    TYPES = ("PartyRegistered", "PartyDesignationChanged")

    def __init__(self, store):
        self.store = store
        self.size = 0
        self.parties: dict[str, PartyInfo] = {}
        self._lock = threading.Lock()

    def _apply(self, index: int, body: dict, registered: bool) -> None:
        party = body.get("party")
        if not isinstance(party, str):
            return
        roles = body.get("roles")
        info = self.parties.get(party)
        if registered:
            if info is None:
                d = Designation(time_us(body.get("valid_from")) or 0, frozenset(roles or ()),
                                time_us(body.get("valid_until")), index)
                self.parties[party] = PartyInfo(party, str(body.get("name", "")), (d,), index)
            return
        if info is None:
            return
        prev, since = info.current, time_us(body.get("valid_from"))
        d = Designation(since if since is not None else prev.since_us,
                        frozenset(roles) if isinstance(roles, list) else prev.roles,
                        time_us(body["valid_until"]) if "valid_until" in body else prev.valid_until_us, index)
        self.parties[party] = replace(info, designations=info.designations + (d,))

    def follow(self) -> None:
        """Read what the log added since the last call (the server calls it once at startup,
        so that the first read does not wait for a long log)."""
        with self._lock:
            self._follow()

    def _follow(self) -> None:
        size = self.store.size()
        if size <= self.size:
            return
        # the registry's entries only, through the log's partial index of them (a scan of the
        # whole log at the server's start before: seconds at 10^6 entries)
        for rec in self.store.registry_records(self.size, size):
            if rec.type in self.TYPES and rec.envelope is not None:
                try:
                    body = SignedEntry.parse(rec.envelope).entry.body
                    self._apply(rec.index, body, rec.type == "PartyRegistered")
                except (EntryError, EncodingError, KeyError, TypeError, ValueError):
                    pass  # an odd body (not written through the catalogue): as the write path, skip it
        self.size = size

    def roles_now(self, party: str, now_us: int | None = None) -> tuple[frozenset[str], str]:
        """(the roles ``party`` is designated with at ``now_us`` (default: now); when that is
        empty, why, in a sentence for the refusal)."""
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        with self._lock:
            self._follow()
            info = self.parties.get(party)
        if info is None:
            return frozenset(), f"{party} is not a registered party"
        roles = info.roles_at(now_us)
        if roles:
            return roles, ""
        d = info.designation_at(now_us)
        if d is None:
            begins = min(x.since_us for x in info.designations)
            return roles, f"the designation of {party} begins at {encoding.micros_to_time_text(begins)}"
        if d.valid_until_us is not None and now_us >= d.valid_until_us:
            return roles, f"the designation of {party} ended at {encoding.micros_to_time_text(d.valid_until_us)}"
        return roles, f"the roles of {party} are suspended"
