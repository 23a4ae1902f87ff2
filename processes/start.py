"""How every child process of reledger starts: one start method for all of them.

``spawn``: a child starts a fresh interpreter and imports what it runs. It never inherits a
parent's threads, locks or open database connections (``fork`` of a process with threads can
deadlock a child on a lock that was held at the fork; the server, the store and the demo all run
threads). Every process reledger starts (the writer process, the projections process, the
signature-checking and verification workers) takes its context from here.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from multiprocessing.context import BaseContext

START_METHOD = "spawn"


def context() -> BaseContext:
    """The multiprocessing context every reledger child process is started from."""
    return multiprocessing.get_context(START_METHOD)


def main_importable() -> bool:
    """Whether a spawned child can import this program's main module as multiprocessing does
    (not a script read from standard input, say); if not, the work stays in threads."""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:  # python -m ...
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.exists(path)


def exit_with_parent(pid: int) -> None:
    """In a child process: exit when the process ``pid`` (its parent) is gone (killed, say),
    rather than wait on its pipe for ever."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid is someone else's now: the parent is gone
                os._exit(0)

    threading.Thread(target=watch, name="reledger-parent-watch", daemon=True).start()
