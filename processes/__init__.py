"""Processes: every process reledger starts, how it starts, and how they talk.

The server's topology (``reledger serve``, :mod:`reledger.processes.server`): three processes, four
with the checkpointer.

* **The server process** (the parent): uvicorn's event loop (HTTP parsing, authentication, the
  reads and the projection queries, answers), admission (503 ``overloaded`` past the queue
  limits), and the threads that hand the children their work and take their answers. It
  writes nothing to the ledger itself.
* **The writer process** (:mod:`reledger.processes.committer`, ``WriterProcess``): the
  server's only writer of the ledger. It takes the groups of envelopes the event loop
  accepted, checks their signatures (a thread pool: Ed25519 releases the GIL), commits them
  together (group commit:
  one transaction, each group accepted or refused whole) and answers each group with its
  receipts or its error (with ``findings_mirror=True``, not ``reledger serve``'s default,
  also the findings it can say from a mirror of the rule state in its memory, which grows
  with the log).
  If it dies, the groups it held fail with 503 and the next group starts a new one.
* **The projections process** (:mod:`reledger.processes.projections`, ``ProjectionProcess``):
  the only writer of the projection tables. It follows the log (LISTEN/NOTIFY on PostgreSQL,
  polling on SQLite), catches the tables up when a query asks, and answers the appends'
  findings (its catch-up collects them; the rule state is the tables' rows, read through a
  bounded cache: projections/state.py). If it dies, the server process projects in threads instead.
* **The checkpointer** (:mod:`reledger.processes.checkpointer`, ``CheckpointerProcess``; only
  with ``serve --checkpoint-key``): the only process that reads the checkpoint key. Every N
  entries and on a timer it signs a checkpoint, has the witnesses of its policy cosign it and
  publishes it only when the quorum is met, connected as its own database role (SELECT on the
  log, INSERT on the checkpoints). If it cannot publish, it logs why; the server serves on.

How children start: one start method, :func:`reledger.processes.start.context` (spawn: a child
never inherits a parent's threads, locks or connections). How they talk: one framing,
:mod:`reledger.processes.frames` (msgpack frames, length-prefixed; nothing is pickled over a
pipe). Each protocol's messages are listed in its module. (Not yet everywhere: the event
store's signature-checking workers, storage/store.py, and the whole-log verifier's,
ledger/verify.py, still choose their own start method and pickle their tasks; their owners are
changing those files, and tests/test_architecture.py lists what is left.)

In one process (tests; and the fallback when a child cannot be spawned, e.g. a program read
from standard input) the same work runs in threads: ``GroupCommitter`` instead of the writer
process, a ``Follower`` with ``ProjectionFindings`` instead of the projections process
(``create_app(writer_process=False, projections_process=False)``).
"""
