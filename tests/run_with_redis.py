"""Run a command with a throwaway redis-server on a free loopback port, then stop it.

    python tests/run_with_redis.py python -m pytest -q

The server keeps nothing on disk outside a temporary directory. REDIS_URL, REDIS_PORT
and REDIS_SERVER (the binary) are exported to the command. When redis-server is missing
it is installed with apt-get if we are root; otherwise we stop with a clear message.
The command's exit code is returned; pytest's "no tests ran" (5) is turned into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def _ensure_redis() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("redis-server is not installed and we are not root: "
                 "install it (e.g. `sudo apt-get install redis-server`) and retry")
    print("redis-server missing: installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=True, env=env)
    path = shutil.which("redis-server")
    if not path:
        sys.exit("apt-get ran but redis-server is still not on PATH")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"redis-server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not answer PING within 10 s")


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit("usage: run_with_redis.py COMMAND [ARGS...]")
    server = _ensure_redis()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="router-redis-") as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port, proc)
            print(f"throwaway redis-server on 127.0.0.1:{port}", flush=True)
            env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                   "REDIS_PORT": str(port), "REDIS_SERVER": server}
            rc = subprocess.call(argv, env=env)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc == 5:
        print("pytest collected no tests: treating as a failure", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
