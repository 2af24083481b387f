"""The decision service under a real load generator (wrk), next to a trivial endpoint of
the same server.

A throwaway redis-server and ``referral-router serve`` (2 workers, Redis store) are
started here on free ports. wrk posts one application per request (``POST
/v1/decisions``, an API key), cycling through 5,000 distinct generated applications packed
into 40 minutes of event time, each sent with a new application id so each is a new
decision, at increasing connection counts, 2 threads, and reads requests/s and the p99
latency; the baseline is ``GET /healthz`` of the same server at the same connection
counts. The run stops raising the load once the decisions' p99 has passed the bound at two
levels in a row. The same levels are then run against the same server deciding each request
on its own (``--coalesce 1``: its store call awaited on the event loop, ``Router.adecide``):
what coalescing buys, in the same run.

Reports, per connection count, both rates and p99s, and the highest decision rate whose
p99 stayed within the bound, with the healthz rate at that load and their ratio.

    python bench/bench_http.py [--quick]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The p99 bound (ms) the decision rate is reported at.
P99_BOUND_MS = 5.0

_LUA = r"""
local n = 0
local bodies = {}
for line in io.lines("%BODIES%") do bodies[#bodies + 1] = line end
request = function()
  n = n + 1
  local body = bodies[(n + offset) %% #bodies + 1]
  local b = body:gsub('"application_id":"[^"]*"', '"application_id":"W' .. id .. "-" .. n .. '"', 1)
  return wrk.format("POST", "/v1/decisions", {["Authorization"] = "Bearer %KEY%",
                    ["Content-Type"] = "application/json"}, b)
end
setup = function(thread)
  thread:set("id", tostring(math.random(1, 1000000000)))
  thread:set("offset", math.random(0, 4999))
end
"""

#: Distinct applications the load cycles through (new ids each request), all within
#: about 40 minutes of event time — requests arrive in any order, and one more than the
#: late-event horizon (6 h) behind another would be refused as late, not decided.
POOL = 5000


def wrk_binary() -> str:
    """wrk, installed from Debian's packages when missing and root; else a clear error."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if shutil.which("wrk"):
            return str(shutil.which("wrk"))
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if shutil.which("wrk"):
            return str(shutil.which("wrk"))
    raise SystemExit("bench http needs wrk (apt-get install wrk); not installed")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the service did not become ready at {url}")


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def run_wrk(wrk: str, url: str, connections: int, seconds: int, script: Path | None) -> dict:
    """One wrk run: requests/s, p50 and p99 (ms), non-2xx count."""
    cmd = [wrk, "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s",
           "--latency"] + (["-s", str(script)] if script else []) + [url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # (the latency distribution's own lines: "     50%    1.25ms"; "79.50%" elsewhere
    # in wrk's table must not match)
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"per_s": rate, "p50_ms": p50, "p99_ms": p99,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}  # fmt: skip


def main(quick: bool = False) -> dict:
    from mirakuru import TCPExecutor

    from router.service.keys import new_key

    wrk = wrk_binary()
    tmp = Path(tempfile.mkdtemp())
    rport, sport = _free_port(), _free_port()
    redis = TCPExecutor(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(rport),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        host="127.0.0.1", port=rport, timeout=20,
    ).start()  # fmt: skip
    key, entry = new_key("bench", ["decide"])
    import msgspec

    (tmp / "keys.toml").write_text("[[keys]]\n" + msgspec.toml.encode(entry).decode())
    from router.testing import packed_in_time
    from router.traffic import write_traffic

    pool = write_traffic(tmp / "pool.jsonl", POOL, seed=7).read_bytes().splitlines()
    bodies = tmp / "bodies.jsonl"
    bodies.write_bytes(b"\n".join(packed_in_time(pool, every_ms=500)) + b"\n")
    script = tmp / "post.lua"
    script.write_text(
        _LUA.replace("%BODIES%", str(bodies)).replace("%KEY%", key).replace("%%", "%")
    )

    def serve(coalesce: int) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "-s",
             str(ROOT / "configs" / "strategy.toml"), "--store",
             f"redis://127.0.0.1:{rport}/0?prefix=bench{coalesce}:", "--api-keys",
             str(tmp / "keys.toml"), "--port", str(sport), "--workers", "2",
             "--coalesce", str(coalesce)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(f"http://127.0.0.1:{sport}/readyz")
        run_wrk(wrk, base + "/v1/decisions", 4, 1, script)  # (warm-up: every worker compiled)
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.terminate()
        proc.wait(timeout=30)

    base = f"http://127.0.0.1:{sport}"
    seconds = 1 if quick else 8
    # Steps of about 1.5x: the rate at the p99 bound lies between two levels, and doubling
    # the connections left it uncertain by up to a third.
    levels = (1, 4) if quick else (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    proc = None
    try:
        proc = serve(64)
        rows = []
        for c in levels:
            dec = run_wrk(wrk, base + "/v1/decisions", c, seconds, script)
            triv = run_wrk(wrk, base + "/healthz", c, seconds, None)
            rows.append({"connections": c, "decisions": dec, "healthz": triv})
            # Two levels in a row past the bound end the climb (one alone can be this
            # shared machine's noise).
            if len(rows) > 1 and all(r["decisions"]["p99_ms"] > P99_BOUND_MS for r in rows[-2:]):
                break
        within = [r for r in rows if r["decisions"]["p99_ms"] <= P99_BOUND_MS]
        best = max(within, key=lambda r: r["decisions"]["per_s"]) if within else None
        baseline = []
        if not quick:
            # The same server deciding each request on its own (--coalesce 1, awaited),
            # at the same loads: what coalescing buys.
            stop(proc)
            proc = serve(1)
            for r in rows:
                c = r["connections"]
                baseline.append({"connections": c, "decisions": run_wrk(
                    wrk, base + "/v1/decisions", c, seconds, script)})  # fmt: skip
        return {
            "workers": 2,
            "p99_bound_ms": P99_BOUND_MS,
            "application_pool": POOL,
            "levels": rows,
            "uncoalesced_levels": baseline,
            "decisions_per_s_within_bound": best["decisions"]["per_s"] if best else None,
            "connections_at_best": best["connections"] if best else None,
            "healthz_per_s_same_load": best["healthz"]["per_s"] if best else None,
            "ratio_to_healthz": (best["decisions"]["per_s"] / best["healthz"]["per_s"])
            if best
            else None,
        }
    finally:
        if proc is not None:
            stop(proc)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import json

    res = main("--quick" in sys.argv)
    print(json.dumps(res, indent=1))
