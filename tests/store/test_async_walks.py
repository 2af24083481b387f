"""``Router.adecide`` on one Redis server: the store call awaited on the event loop
(redis-py's asyncio connection), against real redis-server processes (issue 15).

The same decisions and ledger as the sync path; caps exact under many concurrent tasks;
under a stall, degraded answers within the deadline and no phantom referral; a task
cancelled while its call is on the wire bills nothing; no worker thread is used.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import msgspec
import pytest
from servers import own_server
from test_fault_lifecycle import (
    _app,
    _cont,
    _router,
    _stop,
    _url,
    check_truth,
    refer_ids,
    settle,
)
from tests_helpers import OPEN_ROUTERS

from router.core.config import Cap, load_strategy
from router.core.errors import IdempotencyConflict
from router.core.messages import Decline, Refer, decode_application
from router.decide.engine import Router
from router.store import quota_store_from_url
from router.testing import make_application, packed_in_time
from router.traffic import write_traffic

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path):
    yield from own_server(tmp_path / "data")


def _no_thread_hop(monkeypatch) -> None:
    """Fail the test if a decision goes to a worker thread."""

    def refuse(*a, **k):
        raise AssertionError("adecide went to a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", refuse)


def test_async_decisions_equal_the_sync_ones(server, monkeypatch):
    port, _ = server
    sync_router = _router(_url(port, 2000), cap=40)
    async_router = _router(_url(port, 2000), cap=40)
    apps = [_app(i) for i in range(120)] + [_app(7), _app(50)]  # retries at the end
    sync = [sync_router.decide(a) for a in apps]
    _no_thread_hop(monkeypatch)

    async def main():
        return [await async_router.adecide(a) for a in apps]

    got = asyncio.run(main())
    assert [msgspec.json.encode(d) for d in got] == [msgspec.json.encode(d) for d in sync]
    assert sum(isinstance(d, Refer) for d in got[:120]) == 40  # the cap ran out on the way
    settle(sync_router.store)
    settle(async_router.store)
    check_truth(async_router.store, refer_ids(got[:120]), port)
    assert [e.application_id for e in async_router.store.ledger()] == [
        e.application_id for e in sync_router.store.ledger()
    ]


def test_many_concurrent_tasks_never_overrun_a_cap(server, monkeypatch):
    port, _ = server
    router = _router(_url(port, 2000), cap=25)
    _no_thread_hop(monkeypatch)

    async def main():
        return await asyncio.gather(*(router.adecide(_app(i)) for i in range(200)))

    decisions = asyncio.run(main())
    assert sum(isinstance(d, Refer) for d in decisions) == 25
    assert not any(d.degraded for d in decisions)
    settle(router.store)
    check_truth(router.store, refer_ids(decisions), port)


def test_a_stall_degrades_within_the_deadline_and_bills_nothing_unseen(server):
    """SIGSTOP for 200 ms under 30 ms deadlines: the decisions inside come back degraded
    within one deadline plus a small margin; the scripts the server runs after SIGCONT
    leave pending grants that are voided, never billed; afterwards decisions go on."""
    port, node = server
    router = _router(_url(port, 30, pending_ms=400))

    async def timed(i: int):
        t = time.perf_counter()
        d = await router.adecide(_app(i))
        return d, time.perf_counter() - t

    async def main():
        first = [await timed(i) for i in range(3)]
        _stop(node)
        threading.Timer(0.2, _cont, (node,)).start()
        inside = [await timed(i) for i in range(3, 6)]
        await asyncio.sleep(0.3)
        after = [await timed(i) for i in range(6, 9)]
        return first, inside, after

    first, inside, after = asyncio.run(main())
    assert all(isinstance(d, Refer) for d, _ in first + after)
    assert all(isinstance(d, Decline) and d.degraded for d, _ in inside)
    assert max(s for _, s in inside) < 0.030 + 0.040, [s for _, s in inside]
    settle(router.store, 0.45)  # past the pending deadline: unposted grants are voided
    check_truth(router.store, refer_ids([d for d, _ in first + inside + after]), port)


def test_a_cancelled_decision_bills_nothing(server):
    """A task cancelled while its script is on the wire (the server stopped): when the
    server runs it, its grant stays pending and is voided; the counter is released."""
    port, node = server
    router = _router(_url(port, 2000, pending_ms=300))

    async def main():
        assert isinstance(await router.adecide(_app(0)), Refer)
        _stop(node)
        task = asyncio.create_task(router.adecide(_app(1)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        _cont(node)
        return await router.adecide(_app(2))

    last = asyncio.run(main())
    assert isinstance(last, Refer)
    settle(router.store, 0.4)
    check_truth(router.store, ["a-0", "a-2"], port)


def test_retries_and_conflicts_as_on_the_sync_path(server):
    port, _ = server
    router = _router(_url(port, 2000))
    other = make_application(
        application_id="a-1", national_id="110101199000000077", received_at=_app(1).received_at
    )

    async def main():
        first = await router.adecide(_app(1))
        again = await router.adecide(_app(1))
        with pytest.raises(IdempotencyConflict):
            await router.adecide(other)
        return first, again

    first, again = asyncio.run(main())
    assert msgspec.json.encode(first) == msgspec.json.encode(again)
    settle(router.store)
    check_truth(router.store, ["a-1"], port)


# ---- batches: adecide_batch (what the service's coalescer sends) ---------------------

ROOT = Path(__file__).resolve().parents[2]


def _tight(method: str):
    """The shipped strategy with caps a few hundred applications run through."""
    s = load_strategy(ROOT / "configs" / "strategy.toml")
    r = msgspec.structs.replace
    return r(
        s,
        primary=r(s.primary, caps=[Cap(window="day", count=12)]),
        branch=r(s.branch, caps=[Cap(window="day", count=15)]) if s.branch else None,
        partners=[r(p, caps=[Cap(window="day", count=6)]) for p in s.partners],
        routing=r(s.routing, method=method),
    )


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    path = write_traffic(tmp_path_factory.mktemp("aw") / "t.jsonl", 400, seed=29)
    return [decode_application(x) for x in packed_in_time(path.read_bytes().splitlines())]


def _live(strategy, url):
    router = Router(strategy, quota_store_from_url(url))
    OPEN_ROUTERS.append(router)
    return router


@pytest.mark.parametrize("method", ["best_value", "waterfall", "weighted"])
def test_async_batches_decide_in_arrival_order_as_one_by_one(server, traffic, method, monkeypatch):
    """Batches of 16 (caps running out inside them, repeat applicants refused by dedupe
    in the same write, the weighted rotation) decide exactly what the sync path decides
    one by one, and bill the same referrals."""
    port, _ = server
    strategy = _tight(method)
    one = _live(strategy, _url(port, 2000))
    want = [one.decide(a) for a in traffic]
    batched = _live(strategy, _url(port, 2000))
    _no_thread_hop(monkeypatch)

    async def main():
        out = []
        for k in range(0, len(traffic), 16):
            out += await batched.adecide_batch(traffic[k : k + 16])
        return out

    got = asyncio.run(main())
    assert [msgspec.json.encode(d) for d in got] == [msgspec.json.encode(d) for d in want]
    kinds = {type(d).__name__ for d in got}
    assert kinds == {"Keep", "Branch", "Refer", "Decline"}, kinds
    settle(one.store)
    settle(batched.store)
    assert [(e.application_id, e.partner_id) for e in batched.store.ledger()] == [
        (e.application_id, e.partner_id) for e in one.store.ledger()
    ]


def test_a_conflict_fails_the_batch_and_reserves_nothing(server):
    port, _ = server
    router = _router(_url(port, 2000, pending_ms=300))
    other = make_application(
        application_id="a-3", national_id="110101199000000077", received_at=_app(3).received_at
    )

    async def main():
        await router.adecide(_app(3))
        with pytest.raises(IdempotencyConflict):
            await router.adecide_batch([_app(1), _app(2), other, _app(4)])
        return await router.adecide_batch([_app(1), _app(2), _app(4)])

    after = asyncio.run(main())
    assert all(isinstance(d, Refer) for d in after)
    settle(router.store, 0.4)
    check_truth(router.store, ["a-1", "a-2", "a-3", "a-4"], port)


def test_concurrent_batches_and_a_stall(server):
    """Concurrent batches never overrun the cap; a batch inside a stall comes back
    degraded within its deadline, and bills nothing."""
    port, node = server
    router = _router(_url(port, 40, pending_ms=400), cap=30)

    async def main():
        ok = await asyncio.gather(
            *(router.adecide_batch([_app(k * 10 + i) for i in range(10)]) for k in range(5))
        )
        _stop(node)
        threading.Timer(0.2, _cont, (node,)).start()
        t = time.perf_counter()
        stalled = await router.adecide_batch([_app(100 + i) for i in range(8)])
        took = time.perf_counter() - t
        await asyncio.sleep(0.3)
        return [d for b in ok for d in b], stalled, took

    ok, stalled, took = asyncio.run(main())
    assert sum(isinstance(d, Refer) for d in ok) == 30
    assert all(isinstance(d, Decline) and d.degraded for d in stalled)
    assert took < 0.040 + 0.040, took
    settle(router.store, 0.5)
    check_truth(router.store, refer_ids(ok + stalled), port)
