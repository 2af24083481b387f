"""The throwaway servers the suite starts are real, on their own ports."""

import redis


def test_standalone_server_is_real_and_private(redis_server):
    assert redis_server.port != 6379  # never the machine's own Redis
    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    assert int(r.info("server")["tcp_port"]) == redis_server.port
    assert r.set("router:test", "1") and r.get("router:test") == b"1"


def test_cluster_has_three_masters(redis_cluster):
    host, port = redis_cluster[0]
    info = redis.Redis(host=host, port=port).cluster("info")
    assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3


def test_link_reads_pipelined_replies_in_order_with_errors_in_place(redis_server):
    """The store's link reads replies straight from hiredis's reader: in order, an error
    reply in place as its exception, a reply bigger than one socket read whole, and the
    connection reusable after."""
    from router.store.redis_link import Link

    pool = redis.ConnectionPool(host=redis_server.host, port=redis_server.port)
    link = Link(pool, 1.0)
    big = "x" * 300_000  # several socket reads
    out = link.send(
        [
            ("SET", "link:a", "1"),
            ("EVALSHA", "0" * 40, 0),
            ("SET", "link:b", big),
            ("GET", "link:b"),
            ("GET", "link:a"),
        ]  # fmt: skip
    )
    assert out[0] is True or out[0] == b"OK"
    assert isinstance(out[1], redis.exceptions.NoScriptError)
    assert out[3] == big.encode() and out[4] == b"1"
    assert link.send([("PING",)] * 100) == [b"PONG"] * 100
    link.close()
