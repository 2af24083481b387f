"""Where tuning candidates run: this machine's cores, a Dask cluster or a Ray cluster.

An executor is anything with ``map(fn, tasks)`` that yields ``fn(task)`` for every task as
they finish (:class:`router.replay.tune.Executor`). Tasks are plain data (a candidate's
parameters, the base strategy, the traffic's path), so they ship to any worker; each worker
process reads and validates the traffic file once and keeps it for every later candidate
it runs — so on a cluster the file must be at the same path on every worker (a shared
volume or an object-store mount).

    referral-router tune … --cluster dask://scheduler:8786     # a running Dask scheduler
    referral-router tune … --cluster ray://head:10001          # a running Ray cluster
    referral-router tune … --cluster dask:local --workers 2    # a cluster on this machine

:class:`~router.replay.tune.LocalExecutor` (the default) forks this machine's cores and
shares the traffic read once by the parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from router.core.errors import ConfigError


class DaskExecutor:
    """Candidates as tasks on a Dask cluster (``distributed``), yielded as they finish.

    ``client``: a ``distributed.Client``; or ``address`` (``tcp://host:8786``) to connect
    to; or neither, for a local cluster of ``workers`` processes with one thread each
    (closed by :meth:`close`)."""

    def __init__(
        self,
        client: Any = None,
        *,
        address: str | None = None,
        workers: int = 2,
        timeout_s: float = 10,
    ):
        from distributed import Client, LocalCluster

        self._own: list[Any] = []
        if client is None and address is None:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
            self._own = [client, cluster]
        self.client = client if client is not None else Client(address, timeout=timeout_s)
        if address is not None and client is None:
            self._own = [self.client]

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn`` on every task, on the cluster's workers; results as they finish."""
        from distributed import as_completed

        futures = self.client.map(fn, list(tasks), pure=False)
        for future in as_completed(futures):
            yield future.result()

    def close(self) -> None:
        """Close the client and cluster this executor started (none it was given)."""
        for thing in self._own:
            thing.close()
        self._own = []


class RayExecutor:
    """Candidates as Ray tasks, yielded as they finish.

    ``address``: a running cluster (``ray://head:10001`` or ``auto``); None starts Ray on
    this machine with ``workers`` CPUs (stopped by :meth:`close`). Ray reuses its worker
    processes, so each reads the traffic once."""

    def __init__(self, address: str | None = None, *, workers: int = 2):
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
            if address is None:
                kw["num_cpus"] = workers
            ray.init(address=address, **kw)

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn`` on every task, one Ray task each; results as they finish."""
        ray = self._ray
        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)

    def close(self) -> None:
        """Stop Ray if this executor started it."""
        if self._started:
            self._ray.shutdown()
            self._started = False


def executor_from_url(url: str | None, workers: int | None) -> Any:
    """The executor ``--cluster`` names (None: this machine's processes)."""
    from router.replay.tune import LocalExecutor

    if url is None:
        return LocalExecutor(workers)
    kind, sep, where = url.partition(":")
    n = workers or 2
    try:
        if kind == "dask" and sep:
            if where == "local":
                return DaskExecutor(workers=n)
            return DaskExecutor(address="tcp:" + where if where.startswith("//") else where)
        if kind == "ray" and sep:
            if where == "local":
                return RayExecutor(workers=n)
            return RayExecutor("ray:" + where if where.startswith("//") else where)
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise ConfigError(f"--cluster {url}: cannot connect: {exc}", path="cluster") from None
    except ImportError as exc:
        raise ConfigError(
            f"--cluster {url}: {exc.name} is not installed (pip install 'referral-router[{kind}]')",
            path="cluster",
        ) from None
    raise ConfigError(
        f"--cluster: expected dask://host:port, ray://host:port, dask:local or ray:local "
        f"(value: {url!r})",
        path="cluster",
    )
