"""Prometheus metrics of the decision service (``GET /metrics``): one registry per app,
so several apps in one process (tests) do not share counts."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router.core.messages import Decision

#: Decision latency buckets (seconds): the service's budget is milliseconds.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServiceMetrics:
    """Decisions by outcome and partner, latency, degraded answers, refusals of input and
    auth, store errors, and the strategy in force."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "router_decisions", "Decisions answered", ["outcome", "partner"], registry=r
        )
        self.degraded = Counter(
            "router_degraded_decisions", "Decisions answered without the quota store", registry=r
        )
        self.latency = Histogram(
            "router_decision_seconds", "Time to decide, per request", ["endpoint"],
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "router_rejected_requests", "Requests refused before deciding", ["reason"], registry=r
        )
        self.store_errors = Counter(
            "router_store_errors", "Quota store calls that failed", registry=r
        )
        self.reloads = Counter(
            "router_strategy_reloads", "Strategy file loads", ["result"], registry=r
        )
        self.strategy = Gauge(
            "router_strategy_info", "The strategy in force", ["version", "hash"], registry=r
        )
        # Labelled children by label values: ``labels()`` checks and converts its values
        # and takes a lock on every call, a few µs on every request.
        self._decisions_by: dict[tuple[Any, Any], Any] = {}
        self._latency_by: dict[str, Any] = {}

    def count(self, decisions: list[Decision]) -> None:
        """Count answered decisions."""
        by = self._decisions_by
        for d in decisions:
            key = (d.__struct_config__.tag, getattr(d, "partner_id", ""))
            child = by.get(key)
            if child is None:
                child = by[key] = self.decisions.labels(*key)
            child.inc()
            if d.degraded:
                self.degraded.inc()

    def observe(self, endpoint: str, seconds: float) -> None:
        """One request's time to decide, by endpoint."""
        child = self._latency_by.get(endpoint)
        if child is None:
            child = self._latency_by[endpoint] = self.latency.labels(endpoint)
        child.observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
