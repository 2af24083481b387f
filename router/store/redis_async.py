"""Talking to one Redis server from an event loop: redis-py's asyncio connections.

The async twin of :class:`~router.store.redis_link.Link`'s sending, for
:meth:`RedisQuotaStore.awalk_many` (``Router.adecide``): the commands of one call are
packed by hiredis into one write on a connection of the loop's own, and their replies read
(hiredis parses them) while the loop serves other requests — no worker thread, no thread
hop. The decision's budget bounds the whole call, connecting included; the breaker is the
sync link's, so sync and async decisions of one store see the same outage.

A call that fails before its write is :class:`~router.store.redis_link.Unsent` (it did not
run); one that fails, times out or is cancelled after it raises ``redis.ConnectionError`` /
``redis.TimeoutError`` (or the cancellation) and its connection is dropped: the scripts
may have run, and the caller voids what they may have granted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio.connection as aconn
from hiredis import pack_command
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from router.store.redis_link import Link, Unsent

#: The asyncio connection class for each sync one redis-py makes from a URL.
_CLASSES: dict[str, Any] = {
    "Connection": aconn.Connection,
    "SSLConnection": aconn.SSLConnection,
    "UnixDomainSocketConnection": aconn.UnixDomainSocketConnection,
}


class AsyncLink:
    """Connections of the running event loop to the server ``link`` talks to."""

    def __init__(self, link: Link):
        self.link = link
        pool = link.pool
        cls = _CLASSES.get(pool.connection_class.__name__)
        if cls is None:
            raise TypeError(f"no asyncio twin for {pool.connection_class.__name__}")
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "retry"}
        # Every call runs inside its own asyncio.timeout (the decision's budget, connecting
        # included): a socket timeout as well would open a second timeout context for
        # each reply read (~4 % of a service worker's CPU).
        kwargs["socket_timeout"] = None
        self._make = lambda: cls(**kwargs, retry=AsyncRetry(NoBackoff(), 0))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[aconn.AbstractConnection] = []
        self._closer: Any = None

    async def _take(self) -> aconn.AbstractConnection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self._loop, self._idle = loop, []
            # Closed when the loop shuts down: asyncio.run (and every loop runner) closes
            # the async generators still suspended, which runs this one's ``finally``.
            self._closer = _close_at_shutdown(self._idle)
            await self._closer.__anext__()
        return self._idle.pop() if self._idle else self._make()

    async def send(self, commands: list[tuple], budget_s: float, *, force: bool = False) -> list:
        """Send ``commands`` pipelined in one write and read their replies, all within
        ``budget_s``; an error reply in place as its exception. ``force`` ignores the
        breaker (settles alone)."""
        if not force:
            self.link._admit()
        conn = await self._take()
        ok = sent = cancelled = False
        try:
            async with asyncio.timeout(budget_s):
                if not conn.is_connected:
                    try:
                        await conn.connect()
                    except (redis.RedisError, OSError) as exc:
                        raise Unsent(f"cannot connect: {exc}") from exc
                packed = b"".join([pack_command(c) for c in commands])
                await conn.send_packed_command([packed], check_health=False)
                sent = True
                out: list = [None] * len(commands)
                for i in range(len(commands)):
                    try:
                        out[i] = await conn.read_response()
                    except redis.ResponseError as exc:
                        out[i] = exc
            ok = True
            self._idle.append(conn)
            return out
        except TimeoutError as exc:  # (asyncio.timeout's)
            await _drop(conn)
            if not sent:
                raise Unsent("the decision's deadline passed before this store call") from exc
            raise redis.TimeoutError("the deadline passed while reading replies") from exc
        except asyncio.CancelledError:
            # The caller gave up, not the server: the breaker neither opens nor closes.
            cancelled = True
            await _drop(conn)  # replies may be left unread: never reuse the connection
            raise
        except BaseException:
            await _drop(conn)
            raise
        finally:
            if not force:
                if cancelled:
                    self.link._abandon()
                else:
                    self.link._result(ok, budget_s)

    async def close(self) -> None:
        """Close the idle connections of the running loop."""
        idle, self._idle = self._idle, []
        for c in idle:
            await _drop(c)


async def _close_at_shutdown(idle: list[aconn.AbstractConnection]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        while idle:
            await _drop(idle.pop())


async def _drop(conn: aconn.AbstractConnection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except Exception:  # (closing a broken socket: nothing left to do)
        pass
