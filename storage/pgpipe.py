"""The append transaction's statements on libpq itself, in pipeline mode (PostgreSQL only).

Why: psycopg's Python layer costs about 240 us of CPU for a pipelined transaction of one
statement and 460 us for the append's six (adapting, generators, result objects), against
about 30 us for the same round trips through its libpq binding (``conn.pgconn``) directly,
measured on the benchmark machine (docs/OPERATIONS.md). The writer runs one transaction per
group commit, so that cost was most of a small commit's.

:class:`Pipeline` queues statements (``send``) and reads their rows (``rows``) in order: the
first read sends a sync and everything queued so far travels in one round trip, as with
psycopg's pipeline mode. Parameters go in binary form with their types named (int: bigint,
str: text, bytes: bytea, bool, None, and one-dimensional lists of those: arrays); rows come
back in binary form, decoded by column type (the types the ledger's tables use). SQL is
written as for psycopg (``%s`` or ``%b`` placeholders, no other ``%``). Statements with
parameters are prepared once per connection, up to ``MAX_PREPARED`` of them (the rest run
unnamed).

An error result raises psycopg's exception for its SQLSTATE (so callers and
eventsourcing's ``get_connection`` see what psycopg would have raised). :meth:`close` leaves
the connection idle outside pipeline mode whatever happened (a ROLLBACK if a transaction is
still open), or raises if it cannot, so that the pool drops the connection.
"""

from __future__ import annotations

import itertools
import re
import select
import struct
import weakref
from collections import deque
from typing import Any, Sequence

from psycopg import errors as pg_errors
from psycopg import pq

MAX_PREPARED = 64
_PLACEHOLDER = re.compile(r"%[sb]")
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)

# type oids: scalar -> (array)
INT8, TEXT, BYTEA, BOOL = 20, 25, 17, 16
_ARRAY = {INT8: 1016, TEXT: 1009, BYTEA: 1001, BOOL: 1000}
_q = struct.Struct(">q")
_i = struct.Struct(">i")
_h = struct.Struct(">h")

# prepared statements of each connection: SQL -> name (a connection's own; gone with it). Names
# are never reused, so that one prepared again never meets a leftover of the same name.
_prepared: "weakref.WeakKeyDictionary[Any, dict[bytes, bytes]]" = weakref.WeakKeyDictionary()
_names = itertools.count()


def _scalar(v: Any) -> tuple[int, bytes]:
    t = type(v)
    if t is int:
        return INT8, _q.pack(v)
    if t is str:
        return TEXT, v.encode()
    if t is bytes or t is bytearray or t is memoryview:
        return BYTEA, bytes(v)
    if t is bool:
        return BOOL, b"\x01" if v else b"\x00"
    raise TypeError(f"pgpipe: no binary form for a parameter of type {t.__name__}")


def encode_param(v: Any) -> tuple[int, bytes | None]:
    """(type oid, binary value) of one parameter."""
    if v is None:
        return 0, None
    if isinstance(v, (list, tuple)):
        return encode_array(v)
    return _scalar(v)


def encode_array(values: Sequence[Any]) -> tuple[int, bytes]:
    """A one-dimensional array in PostgreSQL's binary form (its element type from its first
    non-null value; text when it has none)."""
    elem = next((_scalar(v)[0] for v in values if v is not None), TEXT)
    parts = [b""]
    has_null = 0
    for v in values:
        if v is None:
            has_null = 1
            parts.append(b"\xff\xff\xff\xff")
            continue
        t, data = _scalar(v)
        if t != elem:
            raise TypeError("pgpipe: an array's values must be of one type")
        parts.append(_i.pack(len(data)))
        parts.append(data)
    parts[0] = struct.pack(">iiIii", 1, has_null, elem, len(values), 1)
    return _ARRAY[elem], b"".join(parts)


def _decode(oid: int, data: bytes | None) -> Any:
    if data is None:
        return None
    if oid == INT8:
        return _q.unpack(data)[0]
    if oid == TEXT or oid == 1043 or oid == 19:  # text, varchar, name
        return data.decode()
    if oid == BYTEA:
        return data
    if oid == 23:
        return _i.unpack(data)[0]
    if oid == 21:
        return _h.unpack(data)[0]
    if oid == BOOL:
        return data != b"\x00"
    if oid == 2278:  # void (pg_advisory_xact_lock, set_config's callers)
        return None
    raise TypeError(f"pgpipe: no decoder for column type oid {oid}")


def _rows(res) -> list[tuple]:
    n, m = res.ntuples, res.nfields
    if not n:
        return []
    types = [res.ftype(j) for j in range(m)]
    get = res.get_value
    return [tuple(_decode(types[j], get(i, j)) for j in range(m)) for i in range(n)]


class _Slot:
    """A queued statement's place in the pipeline: ``done`` once its result is read."""

    __slots__ = ("done", "rows", "prepares")

    def __init__(self, prepares: bytes | None = None) -> None:
        self.done = False
        self.rows: list[tuple] = []
        self.prepares = prepares  # the SQL a PREPARE's slot prepares


class Pipeline:
    """Statements on one psycopg connection's libpq handle, in pipeline mode (see the module
    docstring). Use as a context manager: ``__exit__`` calls :meth:`close`.

    The connection stays in libpq's non-blocking mode (as psycopg keeps it): output is flushed
    while waiting for input, so a large statement never deadlocks against the server's
    answers."""

    def __init__(self, conn):
        self.conn = conn
        self.pg = conn.pgconn
        self._slots: deque[_Slot] = deque()  # queued statements whose results are not read yet
        self._syncs = 0  # syncs sent whose PIPELINE_SYNC is not read yet
        self._error: Exception | None = None  # the first error result, raised at the next read
        if conn.info.encoding != "utf-8":  # text goes as UTF-8: make the session say so
            conn.execute("SET client_encoding TO 'UTF8'")
        self._names = _prepared.setdefault(conn, {})
        self.pg.enter_pipeline_mode()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, sql: str, params: Sequence[Any] = ()) -> _Slot:
        """Queue a statement; its rows are read with :meth:`rows`."""
        n = 0

        def number(_m) -> str:
            nonlocal n
            n += 1
            return f"${n}"

        query = _PLACEHOLDER.sub(number, sql).encode()
        if n != len(params):
            raise TypeError(f"pgpipe: {n} placeholders, {len(params)} parameters")
        types, values = [], []
        for p in params:
            t, v = encode_param(p)
            types.append(t)
            values.append(v)
        name = self._names.get(query)
        if name is None and params and len(self._names) < MAX_PREPARED:  # (BEGIN, COMMIT: not worth it)
            name = f"reledger_{next(_names)}".encode()
            self.pg.send_prepare(name, query, types)
            self._names[query] = name  # (forgotten again if the PREPARE fails: see _read_one)
            self._slots.append(_Slot(prepares=query))  # the PREPARE's own result
        if name is not None:
            self.pg.send_query_prepared(name, values, [1] * len(values), 1)
        else:
            self.pg.send_query_params(query, values, types, [1] * len(values), 1)
        slot = _Slot()
        self._slots.append(slot)
        return slot

    def rows(self, slot: _Slot) -> list[tuple]:
        """The rows of a queued statement (sending a sync first if none is on its way); raises
        the error of the first statement that failed."""
        while not slot.done:
            self._read_one()
        if self._error is not None:
            raise self._error
        return slot.rows

    def sync(self) -> None:
        """Send what is queued and read every result; raises the first error."""
        if self._slots and not self._syncs:
            self._send_sync()
        while self._slots or self._syncs:
            self._read_one()
        if self._error is not None:
            raise self._error

    def _send_sync(self) -> None:
        self.pg.pipeline_sync()
        self._syncs += 1

    def _read_one(self) -> None:
        """Read the next result (sending a sync first when none is on its way)."""
        if not self._syncs:
            self._send_sync()
        res = self._next_result()
        if res.status == pq.ExecStatus.PIPELINE_SYNC:
            self._syncs -= 1
            return
        slot = self._slots.popleft()
        slot.done = True
        status = res.status
        if status == pq.ExecStatus.TUPLES_OK:
            slot.rows = _rows(res)
        elif status != pq.ExecStatus.PIPELINE_ABORTED and status not in _OK:
            if slot.prepares is not None:  # a failed PREPARE: not prepared after all
                self._names.pop(slot.prepares, None)
            if self._error is None:
                self._error = pg_errors.error_from_result(res, encoding="utf-8")
                if isinstance(self._error, pg_errors.InvalidSqlStatementName):
                    self._names.clear()  # someone deallocated them (DISCARD ALL): prepared again next time
        elif status == pq.ExecStatus.PIPELINE_ABORTED and slot.prepares is not None:
            self._names.pop(slot.prepares, None)  # skipped after an error: not prepared
        if self._next_result(end=True) is not None:  # each statement's results end with a NULL
            raise pg_errors.InternalError("pgpipe: more than one result for a statement")

    def _next_result(self, end: bool = False):
        """The next result (or the NULL that ends a statement's), without blocking the
        output: wait for the socket, flushing what is left to send, consuming what comes."""
        pg = self.pg
        while True:
            pending = pg.flush()
            if not pg.is_busy():
                res = pg.get_result()
                if res is None and not end:  # nothing more will come: a read past what was sent
                    raise pg_errors.InternalError("pgpipe: no result where one was expected")
                return res
            if pg.status == pq.ConnStatus.BAD:
                raise pg_errors.OperationalError(f"the connection was lost: {pg.get_error_message()!r}")
            fd = pg.socket
            readable, writable, _ = select.select([fd], [fd] if pending else [], [])
            if readable:
                pg.consume_input()

    def close(self) -> None:
        """Leave the connection idle outside pipeline mode (ROLLBACK an open transaction)."""
        if self.pg.status == pq.ConnStatus.BAD:  # lost: the pool drops it
            return
        try:
            try:
                self.sync()
            except pg_errors.Error:
                pass  # the caller has it (or will get it from its own read)
            if self.pg.status == pq.ConnStatus.BAD:
                return
            if self.pg.transaction_status != pq.TransactionStatus.IDLE:
                self._error = None
                self.pg.send_query_params(b"ROLLBACK", None)
                self._slots.append(_Slot())
                self.sync()
        finally:
            if self.pg.status != pq.ConnStatus.BAD and self.pg.pipeline_status != pq.PipelineStatus.OFF:
                self.pg.exit_pipeline_mode()
