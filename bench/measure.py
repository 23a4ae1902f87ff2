"""Measuring: samples of a figure (:class:`Acc`), timed calls, and CPU seconds of this process
and its descendants, for every suite of the benchmark."""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable


class Acc:
    """Samples of one figure: count, wall and CPU seconds (CPU includes threads and reaped
    child processes, so cpu/wall shows how many cores the work used)."""

    def __init__(self) -> None:
        self.n = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.samples: list[float] = []

    def add(self, n: int, wall: float, cpu: float) -> None:
        self.n += n
        self.wall += wall
        self.cpu += cpu
        self.samples.append(n / wall if wall > 0 else 0.0)

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "n": self.n, "seconds": round(self.wall, 4),
                "cores_used": round(self.cpu / self.wall, 2) if self.wall > 0 else None,
                "cpu_us_per_entry": round(self.cpu / self.n * 1e6, 1) if self.n else None,
                "samples": [round(s, 1) for s in self.samples]}


def cpu_seconds() -> float:
    """CPU seconds of this process, of its reaped children, and of its live descendants (the
    ledger's worker processes live as long as their store, under a forkserver)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system + live_descendants_cpu(os.getpid())


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def live_descendants_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of every live descendant of ``pid`` (Linux /proc;
    0 elsewhere)."""
    total = 0.0
    for child in tree_pids(pid)[1:]:
        try:
            with open(f"/proc/{child}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / TICKS
    return total


def timed(acc: Acc, n: int, fn: Callable[[], Any]) -> Any:
    gc.collect()
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    acc.add(n, wall, cpu)
    return result


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc; just ``pid`` elsewhere)."""
    out = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for child in children:
            out += tree_pids(int(child))
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants, summed (pages shared between them
    are counted in each: an upper bound of what they hold together)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


class PeakRSS:
    """Samples :func:`tree_rss` of a process every ``interval`` seconds in a thread and keeps the
    largest sum (a process tree's peak memory; a peak shorter than the interval can be missed)."""

    def __init__(self, pid: int, interval: float = 0.05):
        import threading

        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-peak-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak
