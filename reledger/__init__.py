"""reledger: a signed, append-only, event-sourced traceability ledger for rare earth total
quantity control.

Installed, everything is under this one package; the repository's top-level folders map into it
(``ledger/`` is ``reledger.ledger``, and so on: see docs/ARCHITECTURE.md).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("reledger")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"
