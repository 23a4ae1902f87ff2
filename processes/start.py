"""How every child process of reledger starts: one start method for all of them.

``spawn``: a child starts a fresh interpreter and imports what it runs. It never inherits a
parent's threads, locks or open database connections (``fork`` of a process with threads can
deadlock a child on a lock that was held at the fork; the server, the store and the demo all run
threads). Every process reledger starts (the writer process, the projections process, the
signature-checking and verification workers) takes its context from here.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

START_METHOD = "spawn"


def context() -> BaseContext:
    """The multiprocessing context every reledger child process is started from."""
    return multiprocessing.get_context(START_METHOD)
