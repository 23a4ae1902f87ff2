"""The checkpointer: publishes cosigned checkpoints of the log, every N entries and on a timer.

``reledger serve --checkpoint-key FILE`` starts it as a process of its own (spawned, as every
reledger process, by :mod:`reledger.processes.start`); the HTTP server's process never opens the
checkpoint key, and under the least-privilege deployment the server's database role cannot write
a checkpoint row (docs/OPERATIONS.md): the checkpointer connects with its own database URL
(``--checkpointer-db``, a role made by ``reledger init --checkpointer-role``: SELECT on the log,
SELECT and INSERT on the checkpoints, nothing else).

Every ``poll`` seconds it reads the log's size and the latest published checkpoint. A checkpoint
is due when ``every`` entries or more have been appended since that one, or when ``interval``
seconds have passed since the last one was published (or since the start) and the log has grown.
Then it signs a checkpoint, submits it to the witnesses of the policy
(:func:`reledger.commands.witness.publish`, the one way reledger publishes) and stores it only
when the policy's quorum is met. When it is not (witnesses down, refusing), nothing is
published, the reason and each witness's answer are logged, and it tries again after
``retry`` seconds; the server goes on serving either way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .start import context, exit_with_parent

POLL = 0.5  # seconds between two looks at the log's size


@dataclass(frozen=True)
class Settings:
    url: str  # the checkpointer's own database URL (its role)
    key: str  # the checkpoint key file
    policy: str | None = None  # a C2SP tlog-policy file (witness URLs in it); None: publish unwitnessed
    every: int | None = None  # entries since the last checkpoint that make one due
    interval: float | None = None  # seconds since the last checkpoint that make one due (if the log grew)
    retry: float = 10.0  # seconds before trying again after a checkpoint was not published
    timeout: float = 10.0  # seconds per witness request


def say(message: str) -> None:
    print(f"reledger checkpointer: {message}", file=sys.stderr, flush=True)


def load(settings: Settings):
    """(signer, policy) from the key file and the policy file; ValueError saying what is wrong."""
    from reledger.ledger.cosignature import CosignatureError, Policy, log_signer
    from reledger.ledger.keys import KeyError_, SigningKey

    try:
        key = SigningKey.read(settings.key)
    except KeyError_ as e:
        raise ValueError(f"--checkpoint-key {settings.key}: {e}") from None
    if key.purpose != "checkpoint" or not key.name:
        raise ValueError(f"--checkpoint-key {settings.key} is not a checkpoint key (purpose 'checkpoint' with a name)")
    signer = log_signer(key)
    policy = None
    if settings.policy is not None:
        try:
            policy = Policy.parse(Path(settings.policy).read_bytes())
        except OSError as e:
            raise ValueError(f"--policy {settings.policy}: {e.strerror or e}") from None
        except CosignatureError as e:
            raise ValueError(f"--policy {settings.policy}: {e}") from None
        if not policy.lists_log(signer):
            raise ValueError(f"--policy {settings.policy} does not list this log's checkpoint key ({signer.name})")
        if not policy.witness_urls and policy.quorum != "none":
            raise ValueError(f"--policy {settings.policy} gives no witness a URL: nothing could be cosigned")
    return signer, policy


class Checkpointer:
    """The loop, in whatever process runs it (:func:`main` in the checkpointer process)."""

    def __init__(self, settings: Settings, store=None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = say):
        from reledger.storage.store import LedgerStore

        self.settings, self.clock, self.log = settings, clock, log
        self.signer, self.policy = load(settings)
        self.store = store if store is not None else LedgerStore(settings.url)
        self.last = clock()  # when the last checkpoint was published (or the loop started)
        self.failed: tuple[int, float] | None = None  # (size, when) of the last attempt that failed

    def due(self, size: int, published: int, now: float) -> bool:
        s = self.settings
        if size <= published:
            return False
        if self.failed is not None and now - self.failed[1] < s.retry:
            return False  # a checkpoint was just refused (or the database failed): not again at once
        return bool((s.every and size - published >= s.every) or (s.interval and now - self.last >= s.interval))

    def step(self) -> bytes | None:
        """One look at the log: publish a checkpoint if one is due; the published note or None."""
        from reledger.commands.witness import NotPublished

        now = self.clock()
        size = self.store.size()
        latest = self.store.latest_checkpoint()
        published = latest[0] if latest else 0
        if not self.due(size, published, now):
            return None
        try:
            note, report = publish_with(self.store, self.signer, self.policy, self.settings.timeout)
        except NotPublished as e:
            self.failed = (size, now)
            answers = "; ".join(f"{r.witness}: {'cosigned' if r.ok else r.detail}" for r in e.report)
            self.log(f"checkpoint of size {size} NOT published: {e}" + (f" [{answers}]" if answers else ""))
            return None
        self.failed, self.last = None, now
        who = sorted(r.witness for r in report if r.ok)
        self.log(f"published the checkpoint of size {size}" + (f", cosigned by {', '.join(who)}" if who else ""))
        return note

    def run(self, stop: threading.Event, poll: float = POLL) -> None:
        self.log(f"checkpointing {self.signer.name} every {self.settings.every or '-'} entries / "
                 f"{self.settings.interval or '-'} s" + (f" under {self.settings.policy}" if self.settings.policy
                                                          else " (no witness policy)"))
        while not stop.wait(poll):
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a database hiccup: logged, tried again, the server serves on
                self.failed = (-1, self.clock())
                self.log(f"could not checkpoint: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.store.close()


def publish_with(store, signer, policy, timeout):
    from reledger.commands.witness import publish

    return publish(store, signer, policy, timeout)


def main(settings: dict, parent: int, ready=None) -> None:
    """The checkpointer process's entry point (``settings``: a :class:`Settings` as a dict of
    plain values): ``ready`` (an Event) is set once the key file and the policy are loaded and
    the database is open; else the process says why and exits 2."""
    exit_with_parent(parent)
    try:
        cp = Checkpointer(Settings(**settings))
    except Exception as e:  # noqa: BLE001 - said once; the process ends, and serve refuses to start
        say(f"not started: {e}")
        sys.exit(2)
    if ready is not None:
        ready.set()
    stop = threading.Event()
    try:
        cp.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        cp.close()


class CheckpointerProcess:
    """The checkpointer as a child process of ``reledger serve``: only this child reads the
    checkpoint key file (the server's process never does)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.process = None

    def start(self, wait: float = 60.0) -> None:
        """Start the child and wait until it has loaded its key and policy; ValueError when it
        could not (it said why on stderr)."""
        ctx = context()
        ready = ctx.Event()
        self.process = ctx.Process(target=main, args=(dataclasses.asdict(self.settings), os.getpid(), ready),
                                   name="reledger-checkpointer", daemon=True)
        self.process.start()
        deadline = time.monotonic() + wait
        while not ready.wait(0.1):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ValueError("the checkpointer did not start (its message above says why)")

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        self.process = None
