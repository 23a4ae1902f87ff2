"""``reledger``: the top-level dispatcher of the command line.

This module sits at the top of the import graph (docs/ARCHITECTURE.md): it alone knows every
room. ``reledger bench ...`` goes to the benchmark (:mod:`reledger.bench.run`, which owns its
options; also installed as ``reledger-bench``); ``reledger demo`` and ``reledger serve`` are
parsed by :mod:`reledger.commands.cli` and run here (the demo, and the server's processes, live
above the commands); everything else is :mod:`reledger.commands.cli`'s.

What a command needs beyond the base install (msgpack and cryptography: enough for
``reledger verify-bundle``) is imported when the command runs; when it is missing the command
exits 2 and says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from reledger.commands import cli as commands_cli

EXIT_USAGE = 2
# the distributions of each extra (pyproject.toml), by the top-level module they install
EXTRAS = {"fastapi": "server", "starlette": "server", "uvicorn": "server", "httpx": "server", "rich": "server",
          "eventsourcing": "server", "pydantic": "server", "psycopg": "postgres", "psycopg_pool": "postgres",
          "pytest": "dev", "hypothesis": "dev"}
# commands that run on the base install; every other needs the server extra (the event store,
# the tables it prints), serve also the web framework, bench the dev extra
BASE_COMMANDS = ("verify-bundle", "verify-proof", "keygen", "trust", "vkey", "witness")
NEEDS = {"server": ("eventsourcing", "rich"), "serve": ("fastapi", "uvicorn"), "postgres": ("psycopg",)}


def missing_for(argv: list[str]) -> str | None:
    """The extra a command needs and this install lacks (checked before it runs: nothing is
    written by a command that could not finish), or None."""
    def absent(names: tuple[str, ...]) -> bool:
        return any(importlib.util.find_spec(n) is None for n in names)

    if not argv or argv[0] in BASE_COMMANDS or argv[0] not in command_names() or "-h" in argv or "--help" in argv:
        return None  # (argparse answers help, and refuses what is not a command)
    if argv[0] == "bench":
        return "dev" if absent(NEEDS["server"] + NEEDS["serve"] + NEEDS["postgres"]) else None
    if absent(NEEDS["server"]) or (argv[0] == "serve" and absent(NEEDS["serve"])):
        return "server"
    db = os.environ.get("RELEDGER_DB", "")
    for i, a in enumerate(argv):
        if a == "--db" and i + 1 < len(argv):
            db = argv[i + 1]
        elif a.startswith("--db="):
            db = a[len("--db="):]
    if db.startswith(("postgresql:", "postgres:")) and absent(NEEDS["postgres"]):
        return "postgres"
    return None


def command_names() -> set[str]:
    parser = commands_cli.parser()
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def run_demo(args: argparse.Namespace) -> int:
    from reledger.demo.run import run_demo as demo  # (the demo needs the server extra)

    return demo(args)


def serve(url: str, **options) -> None:
    from reledger.processes import server  # (fastapi, uvicorn: the server extra)

    server.serve(url, **options)


def bench(argv: list[str]) -> int:
    from reledger.bench.run import main as bench_main  # (the benchmark needs the dev extra)

    return bench_main(argv)


def install_message(extra: str, what: str) -> str:
    return f"reledger: {what}: install reledger[{extra}] (pip install 'reledger[{extra}]')"


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The message for a command that needs a module of an extra that is not installed."""
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return install_message(extra, f"this command needs {top}, which the base install leaves out")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = missing_for(argv)
    if extra is not None:
        print(install_message(extra, f"{argv[0]} needs what the base install leaves out"), file=sys.stderr)
        return EXIT_USAGE
    try:
        if argv and argv[0] == "bench":
            return bench(argv[1:])
        return commands_cli.main(argv, upper={"demo": run_demo, "serve": serve})
    except ModuleNotFoundError as e:
        message = missing_extra(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
