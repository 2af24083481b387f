"""Real Redis servers for tests: a standalone server (pytest-redis) and a 3-master cluster.

Both listen on free loopback ports and are stopped when the session ends. The cluster nodes
are started with mirakuru (the process library pytest-redis itself builds on) and joined
with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import port_for
import pytest
import redis
from mirakuru import TCPExecutor
from pytest_redis import factories

# (REDIS_SERVER=/nonexistent in the environment proves that `pytest -m "not redis"` needs
# no server: any test that would start one fails.)
REDIS_SERVER = (
    os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
)
REDIS_CLI = os.environ.get("REDIS_CLI") or shutil.which("redis-cli") or "/usr/bin/redis-cli"

redis_server = factories.redis_proc(executable=REDIS_SERVER, port=None)


def start_node(directory: Path, port: int, *extra: str) -> TCPExecutor:
    """One redis-server on 127.0.0.1:port keeping its files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--logfile",
        str(directory / "redis.log"),
        *extra,
    ]
    return TCPExecutor(cmd, host="127.0.0.1", port=port, timeout=20).start()


def own_server(directory: Path):
    """A redis-server of a test's own on a free port, so it can be stopped (``SIGSTOP``)
    and killed: yields (port, node); continued and stopped at the end whatever the test
    did to it. For a fixture: ``yield from own_server(tmp_path / "data")``."""
    port = port_for.select_random()
    node = start_node(directory, port, "--appendonly", "no")
    yield port, node
    try:
        os.kill(node.process.pid, signal.SIGCONT)
    except (ProcessLookupError, AttributeError):
        pass
    if node.running():
        node.stop()


def stall_later(pid: int, after_s: float, for_s: float) -> threading.Thread:
    """Stop process ``pid`` (SIGSTOP) ``after_s`` from now for ``for_s``, then let it go on
    (SIGCONT); the thread is started, join it when done."""

    def stall() -> None:
        time.sleep(after_s)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(for_s)
        finally:
            os.kill(pid, signal.SIGCONT)

    t = threading.Thread(target=stall)
    t.start()
    return t


CLUSTER_NODE = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")


def cluster_node(base: Path, port: int, *extra: str) -> TCPExecutor:
    """One cluster node on ``port`` keeping its files (nodes.conf, AOF) under ``base``;
    started again with the same arguments it rejoins with its slots."""
    return start_node(
        base / str(port), port, *CLUSTER_NODE, "--cluster-config-file", f"nodes-{port}.conf", *extra
    )


def wait_cluster_ok(ports: list[int], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            states = [redis.Redis(port=p).cluster("info")["cluster_state"] for p in ports]
            if all(s == "ok" for s in states):
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError("cluster did not become ok")


def _free_cluster_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import socket

    while True:
        p = port_for.select_random()
        if p in taken or p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p


def start_cluster(base: Path, *extra: str) -> tuple[list[int], list[TCPExecutor]]:
    """A 3-master cluster (no replicas) on free ports: (ports, nodes). ``extra`` are more
    server options (default: no AOF). A node that fails to start (a port taken between
    choosing and binding) is retried on other ports."""
    options = extra or ("--appendonly", "no")
    for attempt in range(3):
        ports: list[int] = []
        for _ in range(3):
            ports.append(_free_cluster_port(ports))
        nodes: list[TCPExecutor] = []
        try:
            for p in ports:
                nodes.append(cluster_node(base, p, *options))
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_cluster_ok(ports)
            return ports, nodes
        except Exception:
            for n in nodes:
                n.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster; yields the list of (host, port)."""
    ports, nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield [("127.0.0.1", p) for p in ports]
    finally:
        for n in nodes:
            n.stop()


@contextlib.contextmanager
def serving(app, **config):
    """An ASGI app under a real uvicorn server on a free port, in a thread (``config``:
    more ``uvicorn.Config`` options): concurrent connections, as in production. Yields the
    base URL."""
    import uvicorn

    port = port_for.select_random()
    options = {"log_level": "warning", "lifespan": "on", **config}
    server = uvicorn.Server(uvicorn.Config(app, port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
