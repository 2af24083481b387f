"""One write per response (router/service/one_write.py): a response's head and body leave
in one ``write``, nothing is held past its turn of the event loop, order never changes —
and a real uvicorn server with the protocol answers keep-alive requests alike."""

from __future__ import annotations

import asyncio

import httpx
from litestar import Litestar, get, post
from litestar.params import JSONBody
from litestar.response import Stream
from servers import serving

from router.service.one_write import OneWriteHttpToolsProtocol, _OneWriteTransport


class _Recorder:
    """A transport that records what is written and what else is asked of it."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.calls: list[str] = []

    def write(self, data):
        self.writes.append(bytes(data))

    def close(self):
        self.calls.append(f"close after {len(self.writes)} writes")

    def is_closing(self):
        return False


def test_two_writes_of_one_turn_leave_as_one_and_a_lone_write_at_the_turns_end():
    async def run():
        rec = _Recorder()
        t = _OneWriteTransport(rec, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        assert rec.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"head")  # held: nothing follows in this turn
        assert rec.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        await asyncio.sleep(0)
        assert rec.writes[-1] == b"head"
        t.write(b"a")
        t.write(b"b")
        t.write(b"c")  # a third write of the turn: after the pair, in order
        await asyncio.sleep(0)
        assert rec.writes[-2:] == [b"ab", b"c"]

    asyncio.run(run())


def test_any_other_call_sees_everything_written_so_far():
    async def run():
        rec = _Recorder()
        t = _OneWriteTransport(rec, asyncio.get_running_loop())
        t.write(b"last words")
        t.close()
        assert rec.writes == [b"last words"]
        assert rec.calls == ["close after 1 writes"]
        assert t.is_closing() is False
        await asyncio.sleep(0)
        assert rec.writes == [b"last words"]  # (the turn's end finds nothing held)

    asyncio.run(run())


def test_a_write_held_when_the_connection_is_lost_is_dropped_not_raised():
    async def run():
        rec = _Recorder()
        closing = [False]
        rec.is_closing = lambda: closing[0]
        t = _OneWriteTransport(rec, asyncio.get_running_loop())
        t.write(b"head")
        closing[0] = True  # the peer went away within the turn
        await asyncio.sleep(0)
        assert rec.writes == []

    asyncio.run(run())


@get("/hello", sync_to_thread=False)
def hello() -> dict:
    return {"hello": "world"}


@post("/echo", sync_to_thread=False)
def echo(data: JSONBody[dict]) -> dict:
    return data


@get("/stream", sync_to_thread=False)
def stream() -> Stream:
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.01)  # a body sent over several turns
            yield f"chunk{i};".encode()

    return Stream(chunks())


def test_a_real_server_answers_keep_alive_requests_through_the_protocol():
    app = Litestar([hello, echo, stream])
    with serving(app, lifespan="off", http=OneWriteHttpToolsProtocol) as base:
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(50):  # one connection, kept alive
                assert client.get("/hello").json() == {"hello": "world"}
                r = client.post("/echo", json={"i": i, "pad": "x" * (i * 997)})
                assert r.json() == {"i": i, "pad": "x" * (i * 997)}
                assert client.get("/nowhere").status_code == 404
            assert client.get("/stream").text == "chunk0;chunk1;chunk2;"
            big = {"pad": "y" * 3_000_000}  # more than the socket takes at once
            assert client.post("/echo", json=big).json() == big
