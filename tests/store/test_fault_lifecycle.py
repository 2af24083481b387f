"""The grant lifecycle under faults, against real redis-server processes (issue 9).

After every scenario: the posted ledger equals the Refers handed back to callers, every
counter equals the posted grants, and no applicant is referred twice. Faults are real:
``SIGSTOP``/``SIGCONT`` of the server, ``SIGKILL`` of a client process between send and
reply, and deadlines far shorter than a stall.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from servers import own_server
from tests_helpers import OPEN_ROUTERS

from router.core.config import strategy_from_dict
from router.core.errors import InputError
from router.core.messages import Decline, Refer
from router.decide.engine import Router
from router.store import quota_store_from_url
from router.store.redis import counter_value
from router.testing import ScoreLookupScorer, make_application, strategy_dict

# Every test here talks to real redis-server processes.
pytestmark = pytest.mark.redis

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def server(tmp_path):
    """A redis-server of this test's own, so it can be stopped and killed."""
    yield from own_server(tmp_path / "data")


def _url(port: int, timeout_ms: int, **extra) -> str:
    q = "&".join(f"{k}={v}" for k, v in extra.items())
    return f"redis://127.0.0.1:{port}/0?timeout_ms={timeout_ms}&prefix=f{uuid.uuid4().hex[:6]}:" + (
        f"&{q}" if q else ""
    )


def _strategy(cap: int = 1000):
    d = strategy_dict(branch=None)
    d["primary"]["max_pd"] = 0.0001  # nobody is kept: every application goes to a partner
    d["partners"] = [d["partners"][1]]  # plat_b alone
    d["partners"][0]["caps"] = [{"window": "month", "count": cap}]
    d["partners"][0]["dedupe_days"] = 30
    return strategy_from_dict(d)


def _router(url: str, cap: int = 1000) -> Router:
    router = Router(
        _strategy(cap),
        quota_store_from_url(url),
        scorers={"main": ScoreLookupScorer({}, default=0.2)},
    )
    OPEN_ROUTERS.append(router)  # closed at the test's end (conftest.py)
    return router


def _app(i: int):
    return make_application(
        application_id=f"a-{i}",
        national_id=f"1101011990{i:08d}",
        received_at=T0 + timedelta(seconds=i),
    )


def settle(store, wait_s: float = 0.0) -> None:
    """Send what the router still owes the store, wait past the pending deadline, sweep."""
    if hasattr(store, "flush"):
        store.flush()
    time.sleep(wait_s)
    if hasattr(store, "sweep"):
        store.sweep()


def refer_ids(decisions: list) -> list[str]:
    return [d.application_id for d in decisions if isinstance(d, Refer)]


def check_truth(store, refers: list[str], port: int) -> None:
    """Posted ledger == Refers handed back; counters == posted grants; nobody twice."""
    refers = sorted(refers)
    ledger = list(store.ledger())
    assert sorted(e.application_id for e in ledger) == refers
    assert len({e.applicant_hash for e in ledger}) == len(ledger)
    client = redis.Redis(port=port)
    counted = 0
    for key in client.scan_iter(match=f"{store.prefix}{{p:plat_b}}:c:*"):
        counted += counter_value(client.get(key))[0]
    assert counted == len(refers)
    assert getattr(store, "pending_count", lambda: 0)() == 0


def _stop(node) -> None:
    os.kill(node.process.pid, signal.SIGSTOP)


def _cont(node) -> None:
    os.kill(node.process.pid, signal.SIGCONT)


def test_a_stall_longer_than_the_deadline_leaves_no_phantom_referral(server):
    """The finding: SIGSTOP for 100 ms; the application answered degraded was ledgered,
    counted, and answered Refer when sent again."""
    port, node = server
    router = _router(_url(port, 20, pending_ms=400))
    answers = [router.decide(_app(i)) for i in range(3)]
    assert all(isinstance(d, Refer) for d in answers)
    _stop(node)
    threading.Timer(0.1, _cont, (node,)).start()
    stalled = router.decide(_app(3))  # the script is sent, the server runs it after SIGCONT
    assert isinstance(stalled, Decline) and stalled.degraded
    time.sleep(0.15)
    answers.append(stalled)
    answers += [router.decide(_app(i)) for i in range(4, 8)]
    settle(router.store, 0.45)  # past the pending deadline: unposted grants are voided
    check_truth(router.store, refer_ids(answers), port)
    again = router.decide(_app(3))  # sent again once the store is back: decided afresh
    assert isinstance(again, Refer)
    settle(router.store)
    check_truth(router.store, refer_ids(answers + [again]), port)


def test_degraded_answer_within_one_deadline(server):
    """The finding: about 2 x timeout_ms (one retry) for a degraded answer."""
    port, node = server
    router = _router(_url(port, 100))
    router.decide(_app(0))
    _stop(node)
    try:
        t = time.perf_counter()
        d = router.decide(_app(1))
        elapsed = time.perf_counter() - t
    finally:
        _cont(node)
    assert isinstance(d, Decline) and d.degraded
    assert elapsed < 0.100 + 0.050, elapsed  # one deadline plus a small margin, never 2x


def test_a_callers_shorter_deadline_bounds_the_degraded_answer(server):
    """``deadline_ms`` (a service request's header) replaces the store's 2 s budget for
    that call only — one decision and a batch — and the grant a stalled call left
    pending is voided, not billed; the next call has the store's budget again."""
    port, node = server
    router = _router(_url(port, 2000, pending_ms=400))
    first = router.decide(_app(0), deadline_ms=50)
    assert isinstance(first, Refer)
    _stop(node)
    try:
        t = time.perf_counter()
        one = router.decide(_app(1), deadline_ms=40)
        one_s = time.perf_counter() - t
        time.sleep(0.05)  # past the breaker's open time (one deadline)
        t = time.perf_counter()
        batch = router.decide_batch([_app(2), _app(3)], pipelined=True, deadline_ms=40)
        batch_s = time.perf_counter() - t
    finally:
        _cont(node)
    assert isinstance(one, Decline) and one.degraded
    assert all(isinstance(d, Decline) and d.degraded for d in batch)
    assert one_s < 0.040 + 0.060 and batch_s < 0.040 + 0.060, (one_s, batch_s)
    time.sleep(0.1)
    later = [router.decide(_app(i)) for i in range(4, 7)]
    assert all(isinstance(d, Refer) for d in later)
    settle(router.store, 0.45)
    check_truth(router.store, refer_ids([first, one, *batch, *later]), port)


def test_a_connection_opened_during_a_stall_keeps_the_deadline(server):
    """A thread's first decision opens its connection: a stopped server accepts it in its
    kernel but never answers the handshake, which waited the socket's whole timeout (2 s
    here) instead of the decision's 40 ms. Afterwards the connection reads with the
    store's own timeout again (a read of 0.3 s is not cut at 40 ms)."""
    port, node = server
    router = _router(_url(port, 2000, pending_ms=400))
    router.decide(_app(0))
    out: dict = {}

    def fresh_thread() -> None:
        t = time.perf_counter()
        out["d"] = router.decide(_app(1), deadline_ms=40)
        out["s"] = time.perf_counter() - t

    _stop(node)
    try:
        worker = threading.Thread(target=fresh_thread)
        worker.start()
        worker.join(5)
    finally:
        _cont(node)
    assert out["d"].degraded and out["s"] < 0.040 + 0.060, out["s"]

    def slow_read() -> None:
        store = router.store
        # This thread's connection, opened within a short deadline and read with it (the
        # breaker bypassed: the stall above may have opened it).
        with store.deadline(40):
            store.link.begin()
            out["ok"] = store.link.send([("PING",)], force=True)
            store.link.end()
        threading.Timer(0.01, _stop, (node,)).start()
        threading.Timer(0.3, _cont, (node,)).start()
        time.sleep(0.05)
        out["pong"] = store.link.send([("PING",)], force=True)

    worker = threading.Thread(target=slow_read)
    worker.start()
    worker.join(5)
    assert out["ok"] == out["pong"] == [b"PONG"]


def test_after_a_short_deadline_fails_the_breaker_opens_for_that_deadline(server):
    """The breaker stays open for one deadline after a failure — the failed call's own
    (40 ms here), not the store's 2 s: the store is back, and a decision 150 ms later is
    decided, not answered degraded."""
    port, node = server
    router = _router(_url(port, 2000, pending_ms=400))
    router.decide(_app(0))
    router.store.flush()  # nothing owed: no settle of ours fails during the stall
    _stop(node)
    try:
        stalled = router.decide(_app(1), deadline_ms=40)
    finally:
        _cont(node)
    assert stalled.degraded
    time.sleep(0.15)
    after = router.decide(_app(2))
    assert isinstance(after, Refer) and not after.degraded, after


def test_a_background_settle_that_fails_does_not_open_the_breaker():
    """The grant flusher's settle (a post owed, sent from its own thread with the store's
    whole 2 s budget) fails against a store that is away: that must not open the breaker
    for 2 s — the breaker is the decisions' own, each opening it for its own deadline."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = quota_store_from_url(f"redis://127.0.0.1:{port}/0?timeout_ms=2000&prefix=bg:")
    store.book.begin()
    store.book.made("plat_b", "a-1", (b"member", b"entry"))
    store.book.end(True)  # a post owed: the flusher sends it 20 ms later, and fails
    time.sleep(0.5)  # (connection refused at once; it retries with backoff meanwhile)
    assert len(store.book) == 1  # still owed (put back after each failure)
    assert store.link._open_until == 0.0  # (the breaker's state: closed)
    store.book.close()
    store.link.close()


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "10", True])
def test_a_bad_deadline_is_an_input_error(redis_url, bad):
    router = _router(redis_url + "&timeout_ms=100")
    with pytest.raises(InputError, match="deadline_ms"):
        router.decide(_app(0), deadline_ms=bad)
    with pytest.raises(InputError, match="deadline_ms"):
        router.decide_batch([_app(0)], deadline_ms=bad)
    with pytest.raises(InputError, match="deadline_ms"):
        asyncio.run(router.adecide(_app(0), deadline_ms=bad))
    in_memory = Router(_strategy(), scorers={"main": ScoreLookupScorer({}, default=0.2)})
    with pytest.raises(InputError, match="deadline_ms"):  # (never waits, still checked)
        asyncio.run(in_memory.adecide(_app(0), deadline_ms=bad))
    assert list(router.store.ledger()) == []


def _client(url: str, ids: list[int], ready, go) -> None:
    router = _router(url)
    assert isinstance(router.decide(_app(100)), Refer)  # connected: the next script goes
    if hasattr(router.store, "flush"):  # straight into the socket
        router.store.flush()
    ready.set()
    go.wait(30)
    for i in ids:
        router.decide(_app(i))


def test_client_killed_between_send_and_reply_leaves_nothing_billable(server):
    port, node = server
    url = _url(port, 5000, pending_ms=300)
    first = _router(url)
    handed = [first.decide(_app(0))]
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_client, args=(url, [1], ready, go))
    try:
        proc.start()
        assert ready.wait(60)
        _stop(node)
        go.set()
        time.sleep(0.3)  # its script is in the socket, the server stopped
        proc.kill()  # SIGKILL before any reply
        proc.join()
    finally:
        _cont(node)
    settle(first.store, 0.35)
    handed.append(first.decide(_app(2)))
    settle(first.store)
    check_truth(first.store, refer_ids(handed) + ["a-100"], port)


def test_flapping_server_under_short_deadlines(server):
    """Many stalls while decisions stream: every degraded answer leaves nothing behind."""
    port, node = server
    router = _router(_url(port, 5, pending_ms=300))
    answers = []
    stop = threading.Event()

    def flap():
        while not stop.is_set():
            time.sleep(0.02)
            _stop(node)
            time.sleep(0.012)
            _cont(node)

    t = threading.Thread(target=flap)
    t.start()
    try:
        for i in range(400):
            answers.append(router.decide(_app(i)))
    finally:
        stop.set()
        t.join()
        _cont(node)
    assert any(d.degraded for d in answers) and any(isinstance(d, Refer) for d in answers)
    settle(router.store, 0.35)
    check_truth(router.store, refer_ids(answers), port)


def test_a_stall_degrades_only_the_decisions_inside_it(server):
    """The breaker: a 200 ms stall in a stream of decisions degrades only those that
    started inside it (give or take one deadline); the first probe after it succeeds."""
    port, node = server
    deadline_s = 0.02
    router = _router(_url(port, int(deadline_s * 1000), pending_ms=2000), cap=100_000)
    stall = {}

    def stop_for_200ms():
        time.sleep(0.5)
        stall["start"] = time.monotonic()
        _stop(node)
        time.sleep(0.2)
        _cont(node)
        stall["end"] = time.monotonic()

    t = threading.Thread(target=stop_for_200ms)
    t.start()
    timeline = []
    end = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < end:
        started = time.monotonic()
        d = router.decide(_app(i))
        timeline.append((started, time.monotonic(), d.degraded))
        i += 1
    t.join()
    degraded = [(s, e) for s, e, g in timeline if g]
    assert degraded, "the stall degraded nothing"
    # A probe sent just before the stall ends may still time out and reopen the breaker
    # for one more deadline: two deadlines and scheduling slack (2 shared cores, a busy CI
    # run) either side — still well inside the 1.5 s stream.
    margin = 2 * deadline_s + 0.06
    assert all(stall["start"] - margin <= s <= stall["end"] + margin for s, _ in degraded)
    after = [g for s, _, g in timeline if s > stall["end"] + margin]
    assert after and not any(after)
    # Inside the stall the breaker answers at once: no decision waits past its deadline.
    assert max(e - s for s, e, g in timeline if g) < deadline_s + 0.08
    settle(router.store, 2.1)
    check_truth(
        router.store,
        refer_ids([]) + [f"a-{k}" for k, (_, _, g) in enumerate(timeline) if not g],
        port,
    )


def test_adecide_keeps_the_event_loop_running_while_the_store_stalls(server):
    """Ten ``adecide`` calls wait on a Redis stopped for 300 ms; meanwhile a ticker on the
    same loop keeps ticking (a blocking call would freeze it for the whole stall)."""
    import asyncio

    port, node = server
    router = _router(_url(port, 2000))
    router.decide(_app(10_000))  # connected and scripts loaded before the stall

    async def main():
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        _stop(node)
        threading.Timer(0.3, _cont, (node,)).start()
        started = time.perf_counter()
        decisions = await asyncio.gather(*(router.adecide(_app(i)) for i in range(10)))
        took = time.perf_counter() - started
        stop.set()
        await tick
        return decisions, took, gaps

    decisions, took, gaps = asyncio.run(main())
    assert took >= 0.25  # the decisions really waited for the stopped server
    assert not any(d.degraded for d in decisions)  # and were answered after it came back
    assert max(gaps) < 0.15  # while the loop kept running


class _Log:
    """A stand-in for the grant book's logger: records (level, event)."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def error(self, event, **kw):
        self.seen.append(("error", event))

    def info(self, event, **kw):
        self.seen.append(("info", event))

    def warning(self, event, **kw):
        self.seen.append(("warning", event))


def _pending_post(store, router, i: int):
    """Decide one referral and return (KEYS, ARGV) of the post its decision owes."""
    assert isinstance(router.decide(_app(i)), Refer)
    pendq = f"{store.prefix}{{p:plat_b}}:pendq"
    (member,) = store.client.zrange(pendq, 0, -1)
    keys = [pendq, f"{store.prefix}{{p:plat_b}}:ledger"]
    return keys, ["settle", "post", 1, f"a-{i}", member, "1"]


def test_a_resent_post_is_told_from_a_post_after_a_void(server):
    """A post whose grant is no longer pending was either posted already (a resend after a
    lost reply: billed once, benign) or voided at its deadline (the caller got an answer
    the ledger does not bill): the settle script says which, and only the second is
    logged as an error."""
    port, _ = server
    router = _router(_url(port, 5000, pending_ms=300))
    store = router.store
    store.book.log = log = _Log()
    store.book.end = lambda *a, **k: None  # hold the posts back: this test sends them

    keys, args = _pending_post(store, router, 1)
    assert store._settle(keys=keys, args=args) == [1]  # posted
    again = store._settle(keys=keys, args=args)
    assert again == [2]  # a resend: posted before
    store._check_settled([(keys, args)], [again])
    assert log.seen == [("info", "grants.posted_before")]

    keys, args = _pending_post(store, router, 2)
    time.sleep(0.4)
    store.sweep()  # voided at its deadline
    late = store._settle(keys=keys, args=args)
    assert late == [0]
    store._check_settled([(keys, args)], [late])
    assert log.seen[-1] == ("error", "grants.not_pending_at_post")
    assert [e.application_id for e in store.ledger()] == ["a-1"]
