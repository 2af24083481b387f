"""Run the test suite after making sure the real servers it starts can be started.

    python tests/run_tests.py python -m pytest -q

The tests start their own throwaway servers on free loopback ports (pytest-redis for a
standalone redis-server, mirakuru for the 3 nodes of a Redis Cluster; see tests/servers.py)
and stop them at the end. This wrapper only checks that ``redis-server`` and ``redis-cli``
exist — installing them with apt-get when they are missing and we are root, otherwise
stopping with a clear message — and turns pytest's "no tests ran" (exit 5) into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def _ensure_redis() -> None:
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    if os.geteuid() != 0:
        sys.exit(
            "redis-server/redis-cli are not installed and we are not root: install them "
            "(e.g. `sudo apt-get install redis-server`) and retry"
        )
    print("redis-server missing: installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "redis-server", "redis-tools"], check=True, env=env
    )
    if not shutil.which("redis-server"):
        sys.exit("apt-get ran but redis-server is still not on PATH")


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit("usage: run_tests.py COMMAND [ARGS...]")
    _ensure_redis()
    rc = subprocess.call(argv)
    if rc == 5:
        print("pytest collected no tests: treating as a failure", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
