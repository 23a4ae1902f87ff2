"""reledger: a signed, append-only, event-sourced traceability ledger for rare earth total
quantity control.

Installed, everything is under this one package; the repository's top-level folders map into it
(``ledger/`` is ``reledger.ledger``, and so on: see docs/ARCHITECTURE.md).
"""



def __getattr__(name: str):
    """``reledger.__version__``, looked up when asked (importlib.metadata costs tens of
    milliseconds, which every command's start would pay)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("reledger")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
