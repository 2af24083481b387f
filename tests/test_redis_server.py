"""The throwaway redis-server that `make test` starts is real and reachable.

The Redis quota store (issue 3) runs its contract tests against this server; this check
keeps the harness honest until then.
"""

import os

import pytest
import redis


@pytest.mark.redis
def test_throwaway_server_answers():
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL not set: run through `make test` (tests/run_with_redis.py)")
    assert not url.endswith(":6379/0"), "tests must use their own server, not the machine's"
    r = redis.Redis.from_url(url)
    assert r.ping()
    info = r.info("server")
    assert int(info["tcp_port"]) == int(os.environ["REDIS_PORT"])
    r.set("router:test", "1")
    assert r.get("router:test") == b"1"
