"""``reledger serve``: which process does what (see :mod:`reledger.processes`), and the server.

:func:`create_app` makes the parts (the store, the command API, the writer process, the
projections process) and hands them to the HTTP surface (:func:`reledger.commands.server.http_app`);
:func:`serve` runs it under uvicorn.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from reledger.commands.api import MAX_QUEUED_BYTES, MAX_QUEUED_ENTRIES, CommandAPI
from reledger.commands.server import (BODY_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE, MAX_CLIENT_CONNECTIONS, guarded_protocol,
                                      http_app)
from reledger.projections.follow import Follower
from reledger.projections.hooks import ProjectionFindings
from reledger.projections.store import ProjectionStore
from reledger.storage.store import LedgerStore

from .committer import GroupCommitter, WriterProcess
from .projections import ProjectionProcess

log = logging.getLogger(__name__)
FOLLOW_INTERVAL = 0.2  # seconds between two background catch-ups of the projection tables
SWITCH_INTERVAL = 0.0005  # seconds: how long a thread may keep the interpreter lock from another (Python: 0.005)


def create_app(url: str, *, auth_window: float = 300.0, projections_process: bool = True,
               writer_process: bool = True, max_queued_entries: int = MAX_QUEUED_ENTRIES,
               max_queued_bytes: int = MAX_QUEUED_BYTES, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The app, in the server's topology (:mod:`reledger.processes`). ``projections_process``:
    the projection tables are kept by the projections process
    (:class:`reledger.processes.projections.ProjectionProcess`, which also answers the appends'
    findings); False: by threads of this one (a Follower and
    :class:`reledger.projections.hooks.ProjectionFindings`). ``writer_process``: appends are
    checked and committed by the writer process (:class:`reledger.processes.committer.WriterProcess`);
    False (and when no process can be spawned): by threads of this one
    (:class:`reledger.processes.committer.GroupCommitter`). ``reledger serve`` runs both
    processes; the threads are for tests in one process and the fallback.
    ``max_queued_*``: the admission limits of either. ``body_timeout``: seconds a request's body
    may take to arrive (408 after that)."""
    store = LedgerStore(url)
    projections = ProjectionStore(url)  # here for the queries; written by the follower (and the hook)
    if projections_process:
        # the tables follow the log (whoever appends) at most every FOLLOW_INTERVAL s, at once
        # when an append's findings or a query needs them
        findings_hook: Any = ProjectionProcess(url, min_interval=FOLLOW_INTERVAL)
        follower: Any = findings_hook
    else:
        findings_hook = ProjectionFindings(projections)
        follower = Follower(store, findings_hook.catch_up, min_interval=FOLLOW_INTERVAL)
    api = CommandAPI(store, findings_hook=findings_hook)
    limits = {"max_queued_entries": max_queued_entries, "max_queued_bytes": max_queued_bytes}
    committer: Any = (WriterProcess(url, api, **limits) if writer_process and WriterProcess.available()
                      else GroupCommitter(api, **limits))

    def start() -> None:
        follower.start()
        if isinstance(committer, WriterProcess):
            committer.start()  # it builds its write state from the log
        else:
            try:
                api.catch_up()  # the write state (else the first append does it)
            except Exception:  # noqa: BLE001 - the first append tries again (and answers 503 if it must)
                log.exception("the write state could not be built at startup")

    def stop() -> None:
        committer.close()  # the groups already queued are committed (and answered) first
        follower.stop()
        api.close()
        projections.close()
        store.close()

    return http_app(store, api, committer, findings_hook, projections, url=url, start=start, stop=stop,
                    auth_window=auth_window, body_timeout=body_timeout)


def serve(url: str, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning",
          max_queued_entries: int = MAX_QUEUED_ENTRIES, header_timeout: float = HEADER_TIMEOUT,
          body_timeout: float = BODY_TIMEOUT, max_connections: int | None = None,
          max_client_connections: int = MAX_CLIENT_CONNECTIONS, checkpointer: dict | None = None) -> None:
    """Run ``reledger serve``: the app behind uvicorn, with the bounds of
    :func:`reledger.commands.server.guarded_protocol` (head and body timeouts, connection caps).
    ``checkpointer``: the settings (:class:`reledger.processes.checkpointer.Settings`) of the
    checkpointer process started beside it, or None."""
    # The event loop runs Python for one request after another; the threads that hand appends
    # to the writer process and take its answers need the interpreter lock for a few
    # microseconds each, and by default wait up to 5 ms for the loop to let go of it. At 16
    # clients, one entry a request: 2,050-2,080 entries/s with the default, 2,140-2,160 with
    # 0.5 ms (paired runs, docs/OPERATIONS.md).
    sys.setswitchinterval(SWITCH_INTERVAL)

    app = create_app(url, max_queued_entries=max_queued_entries, body_timeout=body_timeout)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            # the console's live streams end first: uvicorn waits for every open response
            streams = getattr(app.state, "console_streams", None)
            if streams is not None:
                streams.close()
            await super().shutdown(sockets=sockets)

        async def startup(self, sockets=None) -> None:
            import threading
            import time

            done = threading.Event()

            def progress() -> None:  # starting reads the write state (the log on a first start): say so every few seconds
                t0 = time.monotonic()
                while not done.wait(5):
                    print(f"reledger serve: still starting ({time.monotonic() - t0:.0f} s: the write state, from "
                          "its rows and the log since them; built once from the whole log on a ledger "
                          "without them) ...", file=sys.stderr, flush=True)

            threading.Thread(target=progress, daemon=True).start()
            try:
                await super().startup(sockets=sockets)
            finally:
                done.set()
            if not self.should_exit:  # says where it listens once it does (the app has started)
                shown = f"[{host}]" if ":" in host else host
                print(f"reledger serve: listening on http://{shown}:{port} (API docs at /docs; Ctrl-C stops)",
                      file=sys.stderr, flush=True)

    protocol = guarded_protocol(header_timeout, max_connections, max_client_connections, body_timeout)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, http=protocol,
                            timeout_keep_alive=KEEP_ALIVE, h11_max_incomplete_event_size=16 * 1024)
    child = None
    if checkpointer is not None:
        from .checkpointer import CheckpointerProcess, Settings

        child = CheckpointerProcess(Settings(**checkpointer))
        try:
            child.start()
        except ValueError as e:
            print(f"reledger serve: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    try:
        Server(config).run()
    finally:
        if child is not None:
            child.stop()
