"""The shipped executors for a cluster — Dask (``distributed``) and Ray — each on a local
cluster of 2 worker processes: tuning through them gives exactly what the local executor
gives, and the candidates are spread over both workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.core.config import load_strategy
from router.core.errors import ConfigError
from router.replay.executors import DaskExecutor, RayExecutor, executor_from_url
from router.replay.tune import LocalExecutor, tune
from router.traffic import write_traffic

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = load_strategy(ROOT / "configs" / "strategy.toml")
GRID = {"primary.max_pd": [0.05, 0.07], "branch.max_pd": [0.12, 0.16],
        "routing.method": ["best_value", "waterfall"]}  # fmt: skip


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("executors")
    traffic = write_traffic(d / "t.parquet", 6000, seed=12, per_day=6000)
    r = tune(STRATEGY, traffic, GRID, d / "local", executor=LocalExecutor(1), report=False)
    return traffic, r.result


def _same(a: dict, b: dict) -> None:
    assert json.dumps(a["candidates"], sort_keys=True) == json.dumps(
        b["candidates"], sort_keys=True
    )
    assert a["best"] == b["best"] and a["baseline"] == b["baseline"]


def test_dask_on_two_workers_equals_the_local_executor(local, tmp_path):
    pytest.importorskip("distributed")
    traffic, want = local
    ex = DaskExecutor(workers=2)
    try:
        workers = ex.client.scheduler_info()["workers"]
        assert len(workers) == 2
        r = tune(STRATEGY, traffic, GRID, tmp_path, executor=ex, report=False)
        # Each worker read the traffic itself (and kept it): both ran candidates.
        cached = ex.client.run(lambda: len(__import__("router.replay.tune").replay.tune._TRAFFIC))
        assert len(cached) == 2 and all(n >= 1 for n in cached.values()), cached
    finally:
        ex.close()
    _same(r.result, want)


def test_ray_on_two_workers_equals_the_local_executor(local, tmp_path):
    pytest.importorskip("ray")
    traffic, want = local
    ex = RayExecutor(workers=2)
    try:
        assert ex._ray.cluster_resources().get("CPU") == 2
        r = tune(STRATEGY, traffic, GRID, tmp_path, executor=ex, report=False)
    finally:
        ex.close()
    _same(r.result, want)


def test_a_bad_cluster_url_is_refused_naming_it():
    with pytest.raises(ConfigError, match="expected dask://host:port"):
        executor_from_url("spark://x:1", 2)
    pytest.importorskip("distributed")
    with pytest.raises(OSError):  # (--cluster turns it into one error line: cannot connect)
        DaskExecutor(address="tcp://127.0.0.1:1", timeout_s=1)


def test_a_worker_started_with_a_malloc_trim_threshold_gets_roomy_malloc_back(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold (a
    candidate then took twice as long): a worker raises both thresholds once, and a
    process without the variable is left alone."""
    import ctypes

    from router.replay import tune as tune_module

    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(tune_module, "_MALLOC_SET", False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    tune_module._roomy_malloc()
    assert calls == []
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    tune_module._roomy_malloc()
    tune_module._roomy_malloc()  # (once per process)
    assert calls == [(-3, 32 << 20), (-1, 256 << 20)]
