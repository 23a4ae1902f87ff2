"""``python -m reledger``: the command line."""

from reledger.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
