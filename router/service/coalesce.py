"""Concurrent single-decision requests gathered into pipelined batches.

A service worker answers ``POST /v1/decisions`` for many connections at once. Deciding
each request in its own thread costs a store round trip each and threads that fight for
the GIL; here the requests that arrive while a batch is with the store wait for the next
one, which takes them all (up to ``max_batch``) in one
``Router.decide_batch(..., pipelined=True)``: one thread, a few pipelined round trips —
or, on one Redis server, ``Router.adecide_batch``: the batch's walks in one pipelined
write awaited on the event loop, in arrival order, no thread.

There is no waiting window: a request that finds nothing in flight is sent at once
(``Router.adecide``: on one Redis server its store call is awaited on the event loop, no
thread), so a lone request costs what it would alone; batches grow only with the load,
which is where they pay. Requests with different deadlines go in different batches (a batch has one
budget), and two requests for the same application id never share one (the second is
decided after the first, so it is answered as the retry it is).

A batch that fails as a whole — one of its applications conflicts with a stored decision
(:class:`~router.core.errors.IdempotencyConflict`), or any other error — has its grants
voided by the router; its requests are then decided one by one, so each gets its own
answer or its own error and none is refused for another's fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from router.core.logs import get_logger
from router.core.messages import Application, Decision
from router.decide.engine import Router

_log = get_logger("service")

_Waiting = tuple[Application, float | None, "asyncio.Future[Decision]"]


class Coalescer:
    """One worker's decisions: requests queue here and go to the store in batches."""

    def __init__(self, current: Callable[[], Router], max_batch: int = 64):
        #: The router in force for a batch starting now (a reload swaps it).
        self.current = current
        self.max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._running: asyncio.Task | None = None
        #: Batches sent and applications in them (for the metrics and the bench).
        self.batches = 0
        self.decided = 0

    async def decide(self, app: Application, deadline_ms: float | None = None) -> Decision:
        """This application's decision, decided in the next batch."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.append((app, deadline_ms, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[_Waiting]:
        """The next batch: the oldest request's deadline, no id twice, at most max_batch;
        the rest stay queued in their order."""
        first = self._waiting[0][1]
        batch: list[_Waiting] = []
        rest: list[_Waiting] = []
        ids: set[str] = set()
        for w in self._waiting:
            app_id = w[0].application_id
            if len(batch) < self.max_batch and w[1] == first and app_id not in ids:
                ids.add(app_id)
                batch.append(w)
            else:
                rest.append(w)
        self._waiting = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                router = self.current()
                apps = [w[0] for w in batch]
                deadline = batch[0][1]
                self.batches += 1
                self.decided += len(batch)
                try:
                    if len(apps) == 1:  # on one Redis server awaited here, no thread
                        out: list[Any] = [await router.adecide(apps[0], deadline_ms=deadline)]
                    elif getattr(router.store, "async_walks", False):
                        out = await _abatch_or_each(router, apps, deadline)
                    else:
                        out = await asyncio.to_thread(_batch_or_each, router, apps, deadline)
                except BaseException as exc:  # (every request of the batch gets it)
                    out = [exc] * len(batch)
                for (_, _, future), result in zip(batch, out):
                    if future.done():  # (its caller went away)
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = None


def _batch_or_each(router: Router, apps: list[Application], deadline: float | None) -> list:
    """The batch's decisions; if the batch fails as a whole (its grants voided by the
    router), each application's own decision or error, one by one."""
    try:
        return list(router.decide_batch(apps, pipelined=True, deadline_ms=deadline))
    except Exception as exc:
        _log.info("coalesce.one_by_one", applications=len(apps), error=type(exc).__name__)
        out: list = []
        for app in apps:
            try:
                out.append(router.decide(app, deadline_ms=deadline))
            except Exception as one:
                out.append(one)
        return out


async def _abatch_or_each(router: Router, apps: list[Application], deadline: float | None) -> list:
    """:func:`_batch_or_each` on the event loop (one Redis server: ``adecide_batch``, one
    pipelined write awaited, no thread)."""
    try:
        return await router.adecide_batch(apps, deadline_ms=deadline)
    except Exception as exc:
        _log.info("coalesce.one_by_one", applications=len(apps), error=type(exc).__name__)
        out: list = []
        for app in apps:
            try:
                out.append(await router.adecide(app, deadline_ms=deadline))
            except Exception as one:
                out.append(one)
        return out
