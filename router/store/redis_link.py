"""Talking to one Redis server within a deadline: connections, the budget, the breaker.

A live decision has one budget (``timeout_ms``) for all its round trips, counted from its
first send (connecting included): each later send gets what is left of it, so a degraded
answer comes within the deadline plus the time to notice it (never one deadline per
attempt). The clock starts at the first send, not at :meth:`Link.begin`: before it there
is only the process's own work, and a process descheduled there (8 deciding processes
starting on 2 cores, measured) would otherwise degrade a decision no store was slow for.
Nothing is retried behind the caller's back in live mode; a replay store
(``retries`` > 0) instead gives every call the whole ``timeout_ms`` and retries it with
exponential backoff, because a replay must not degrade.

The breaker: after a decision's send fails, the link stays *open* for one deadline (that
call's own: the store's, or the caller's shorter one) — calls fail at once, without
touching the network — then lets one call through (*half-open*); its success closes the
breaker, its failure opens it again. Sends with ``force`` (explicit flushes, the grant
flusher's settles in the background) neither wait for it nor move it. So an outage degrades only the
decisions inside it (plus at most one deadline) and none waits for a dead server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis
from hiredis import pack_command
from redis.utils import SENTINEL as _DEFAULT  # "no timeout given": the socket's own applies

from router.core.errors import StoreError

try:  # the sentinel redis-py's hiredis reader answers "no whole reply yet" with
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # (another layout: _replies then reads through redis-py)
    _NOT_ENOUGH_DATA = None

#: A decision's deadline before its first send (the clock starts there).
_FIRST_SEND = -1.0


class Unsent(StoreError):
    """The command was never sent (no budget left, or the breaker is open): it did not run."""


class Link:
    """Per-thread connections to one server, with a per-decision deadline and a breaker."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        timeout_s: float,
        *,
        retries: int = 0,
        backoff_s: float = 0.05,
    ):
        self.pool = pool
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._local = threading.local()
        self._conns: list[redis.Connection] = []
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._probing = False

    # ---- the budget -------------------------------------------------------------------

    def begin(self) -> None:
        """Start a decision (live mode: one deadline for all its round trips, running
        from its first send)."""
        self._local.deadline = _FIRST_SEND if not self.retries else None

    def end(self) -> None:
        """End the decision's budget: later calls get a full deadline each."""
        self._local.deadline = None

    def set_budget(self, seconds: float | None) -> None:
        """This thread's decisions get ``seconds`` as their budget instead of
        ``timeout_s`` (``None``: back to ``timeout_s``). Never longer than ``timeout_s``:
        the sockets were opened with that timeout."""
        self._local.budget = None if seconds is None else min(seconds, self.timeout_s)

    def _budget(self) -> float:
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return self.timeout_s
        if deadline is _FIRST_SEND:
            budget = getattr(self._local, "budget", None) or self.timeout_s
            self._local.deadline = time.monotonic() + budget
            return budget
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unsent("the decision's deadline passed before this store call")
        return left

    # ---- the breaker ------------------------------------------------------------------

    def _admit(self) -> None:
        if self.retries or not self._open_until:
            return
        with self._lock:
            if time.monotonic() < self._open_until or self._probing:
                raise Unsent("store unavailable (breaker open after a failure)")
            self._probing = True  # half-open: this call is the probe

    def _result(self, ok: bool, budget: float) -> None:
        """After a send: closed on success; open for one deadline — the failed call's
        (a caller's shorter one, or ``timeout_s``) — on failure."""
        if self.retries:
            return
        with self._lock:
            self._probing = False
            self._open_until = 0.0 if ok else time.monotonic() + budget

    def _abandon(self) -> None:
        """A call its caller cancelled: no verdict on the server (a probe may go again)."""
        if not self.retries:
            with self._lock:
                self._probing = False

    # ---- sending ----------------------------------------------------------------------

    def send(
        self, commands: list[tuple], *, force: bool = False, retries: int | None = None
    ) -> list:
        """Send commands pipelined on this thread's connection, packed by hiredis in one
        write; replies in order, an error reply in place as its exception. Raises
        :class:`Unsent` when nothing was sent, ``redis.ConnectionError`` /
        ``redis.TimeoutError`` when the outcome is unknown. ``force`` ignores the breaker
        (an explicit flush); ``retries`` overrides the link's (idempotent commands)."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return self._send_once(commands, force)
            except (redis.ConnectionError, redis.TimeoutError, Unsent):
                if attempt >= retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt)
                attempt += 1

    def _send_once(self, commands: list[tuple], force: bool = False) -> list:
        budget = self._budget()
        conn = self._connection()
        if not force:
            self._admit()
        ok = sent = False
        try:
            if conn._sock is None:
                self._connect(conn, budget)
                budget = self._budget()
            conn.send_packed_command([b"".join([pack_command(c) for c in commands])])
            sent = True
            # A budget close to the socket's own timeout needs no per-read timeout (each
            # one costs two system calls); a shorter one does.
            bounded = budget < 0.9 * self.timeout_s
            out = _replies(conn, len(commands), self._budget_or_zero if bounded else None)
            ok = True
            return out
        except Unsent as exc:
            conn.disconnect()  # never reuse the socket
            if not sent:
                raise  # nothing reached the server: it did not run
            raise redis.TimeoutError(
                "the decision's deadline passed while reading replies"
            ) from exc
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse the socket
            raise
        finally:
            if not force:
                self._result(ok, getattr(self._local, "budget", None) or self.timeout_s)

    @staticmethod
    def _connect(conn: redis.Connection, budget: float) -> None:
        """Connect within ``budget``: the TCP connect and the handshake after it (a
        stopped server accepts the connection in its kernel but never answers the
        handshake, which would otherwise wait the socket's whole timeout)."""
        own = conn.socket_timeout
        conn.socket_connect_timeout = conn.socket_timeout = budget
        try:
            conn.connect()
        except redis.RedisError as exc:
            raise Unsent(f"cannot connect: {exc}") from exc
        finally:
            conn.socket_timeout = own
        if conn._sock is not None:
            conn._sock.settimeout(own)
            # (hiredis's parser keeps the timeout it saw at connect, and sets it back on
            # the socket after every read with a timeout of its own)
            parser = getattr(conn, "_parser", None)
            if hasattr(parser, "_socket_timeout"):
                parser._socket_timeout = own

    def send_overlapped(self, batches: Iterator[list[tuple]]) -> Iterator[list]:
        """Replay's stream: write each batch of commands before reading the replies of the
        one before, so the server runs one while the caller builds the next (one
        connection, in order). Replies per batch, an error reply in place as its
        exception. No per-decision deadline and no resend: a failure ends the stream
        with its error (whatever was written may have run)."""
        conn = self._connection()
        try:
            if conn._sock is None:
                conn.connect()
            pending = 0
            for commands in batches:
                conn.send_packed_command([b"".join([pack_command(c) for c in commands])])
                if pending:
                    yield self._read(conn, pending)
                pending = len(commands)
            if pending:
                yield self._read(conn, pending)
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse the socket
            raise

    @staticmethod
    def _read(conn: redis.Connection, n: int) -> list:
        return _replies(conn, n, None)

    def _budget_or_zero(self) -> float:
        return max(self._budget(), 1e-6)

    def _connection(self) -> redis.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # (A plain redis.Redis pool makes redis.Connection objects.)
            conn = self._local.conn = cast(redis.Connection, self.pool.make_connection())
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for c in self._conns:
                c.disconnect()
            self._conns.clear()
        self._local = threading.local()


def _replies(conn: redis.Connection, n: int, budget: Callable[[], float] | None) -> list:
    """Read ``n`` replies in order, an error reply in place as its exception; ``budget``
    gives the seconds left for each wait on the socket (None: the socket's own timeout).

    Straight from hiredis's reader: redis-py's ``read_response`` costs several Python
    calls and a formatted host string per reply, which for a pipelined batch was more
    than reading the replies themselves. The socket is read only when the reader holds no
    whole reply (usually once per batch). Without hiredis's parser, redis-py's own."""
    parser: Any = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    out: list = [None] * n
    if reader is None or _NOT_ENOUGH_DATA is None or not hasattr(parser, "read_from_socket"):
        for i in range(n):
            try:
                out[i] = conn.read_response(timeout=_DEFAULT if budget is None else budget())
            except redis.ResponseError as exc:
                out[i] = exc
        return out
    gets, short = reader.gets, _NOT_ENOUGH_DATA
    for i in range(n):
        r = gets()
        while r is short:  # (no whole reply buffered yet)
            try:
                parser.read_from_socket(timeout=_DEFAULT if budget is None else budget())
            except OSError as exc:  # (redis-py's own errors are not OSErrors)
                raise redis.ConnectionError(f"error while reading replies: {exc}") from exc
            r = gets()
        if isinstance(r, redis.ConnectionError):
            raise r
        if isinstance(r, list) and r and isinstance(r[0], redis.ConnectionError):
            raise r[0]
        out[i] = r
    return out
