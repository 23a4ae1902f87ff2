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
for twice that window, so a captured request cannot be played again, now or later.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

from reledger.ledger import encoding
from reledger.ledger.encoding import EncodingError
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
    """Nonces seen within the replay horizon; thread-safe, bounded."""

    def __init__(self, horizon: float, max_entries: int = 1_000_000):
        self.horizon, self.max_entries = horizon, max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, key_id: str, nonce: str, now: float) -> bool:
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

    def __init__(self, registry_provider, window: float = 300.0):
        self.registry_provider = registry_provider  # () -> ledger.registry.Registry (current)
        self.window = window
        self.nonces = NonceCache(2 * window)

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
        if not self.nonces.check_and_add(key_id, nonce, now):
            raise AuthError("this request was already received (replayed nonce)")
        return party
