"""``python -m reledger``: the command line."""

from reledger.commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
