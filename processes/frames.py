"""The one framing of every message between reledger's processes: msgpack frames, length-prefixed.

A frame is one msgpack value (plain values only: nil, booleans, integers, text, bytes, arrays and
maps; no extension types, no floats needed) behind its length: ``Connection.send_bytes`` of a
``multiprocessing`` pipe writes a 4-byte big-endian length and then the bytes, and
``recv_bytes`` reads exactly one frame back. Nothing is pickled: a process reads from its peer
only values, never objects or code (``Connection.send``/``recv`` would unpickle whatever came).

Both protocols are written on this: the writer process's (:mod:`reledger.processes.committer`)
and the projections process's (:mod:`reledger.processes.projections`); each module documents
its messages. Arrays come back as lists (a tuple sent is a list received) and map keys keep
their type (integer keys stay integers).
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_FRAME = 1 << 30  # bytes: a frame longer than this is refused (a peer gone wrong, not a message)


class FrameError(Exception):
    """A frame that is not one msgpack value (a peer that does not speak this protocol)."""


def pack(value: Any) -> bytes:
    """One frame's bytes (without the length, which the pipe adds)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    """The value of one frame; :class:`FrameError` if it is not exactly one plain msgpack value."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_no_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise FrameError(f"not a msgpack frame: {e}") from e


def _no_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack extension type {code} in a frame")


class Channel:
    """One end of a duplex pipe between two reledger processes, speaking frames.

    ``send`` is safe from several threads when the caller holds its own lock (as every user
    here does); ``recv`` blocks for the next frame and raises ``EOFError`` when the peer has
    closed its end (or died)."""

    def __init__(self, conn):
        self.conn = conn

    def send(self, value: Any) -> None:
        self.conn.send_bytes(pack(value))

    def send_frame(self, frame: bytes) -> None:
        """Send a frame packed already (:func:`pack`)."""
        self.conn.send_bytes(frame)

    def recv(self) -> Any:
        return unpack(self.conn.recv_bytes(MAX_FRAME))

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


def pipe(ctx) -> tuple[Channel, Any]:
    """A duplex pipe from the start context ``ctx``: this process's :class:`Channel`, and the raw
    end to hand to the child (which wraps it in a Channel of its own)."""
    mine, theirs = ctx.Pipe()
    return Channel(mine), theirs
