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
