"""What a Redis Cluster needs beyond one server (a mixin of
:class:`~router.store.redis.RedisQuotaStore`): claims on applications, recovering another
caller's decision, and the event-time horizon read once per decision."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from router.core.errors import IdempotencyConflict, StoreError
from router.store.redis_codec import FP_BYTES as _FP_BYTES
from router.store.redis_codec import fp as _fp

if TYPE_CHECKING:
    from router.store.redis import RedisQuotaStore


class ClusterClaims:
    """Claims and recovery across slots (see the protocol in :mod:`router.store.redis`)."""

    link_backoff = 0.05

    if TYPE_CHECKING:  # provided by RedisQuotaStore, of which this class is a part
        client: Any
        timeout_ms: float
        retries: int
        _reserve: Any

        def _b(self, bucket_id: str) -> str: ...
        def budget_ms(self) -> float: ...
        def _app(self, application_id: str) -> str: ...
        def recall(self, application_id: str, fingerprint: int) -> bytes | None: ...
        def record_once(
            self, application_id: str, fingerprint: int, record: bytes, event_ms: int
        ) -> bytes | None: ...

    def claim_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], lease_ms: int
    ) -> list[bool]:
        """Claim each application for deciding (True: ours). A claim held for the same id
        with other content is an :class:`IdempotencyConflict` at once (our own claims of
        this call are released first)."""
        pipe = self.client.pipeline(transaction=False)
        fps = [_fp(fp) for fp in fingerprints]
        for a, fp in zip(application_ids, fps):
            pipe.set(f"{self._app(a)}:claim", fp, nx=True, px=lease_ms, get=True)
        try:
            held = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"claim failed: {exc}") from exc
        for a, fp, old in zip(application_ids, fps, held):
            if old is not None and old != fp:
                self._release([a for a, old2 in zip(application_ids, held) if old2 is None])
                raise IdempotencyConflict(a)
        return [old is None for old in held]

    def _release(self, application_ids: Sequence[str]) -> None:
        """Drop claims this call took (best effort: they expire with their lease anyway)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for a in application_ids:
                pipe.delete(f"{self._app(a)}:claim")
            pipe.execute()
        except redis.RedisError:
            pass

    def recover(
        self,
        application_id: str,
        fingerprint: int,
        bucket_ids: Sequence[str],
        lease_ms: int,
        event_ms: int,
    ) -> bytes | None:
        """For an application whose claim another caller holds: that caller's decision,
        waiting for it no longer than the lease — and no longer than this decision's own
        deadline (``timeout_ms``, or the caller's shorter one; then :class:`StoreError`,
        and the router answers degraded)."""
        wait = min(lease_ms / 1000 + 0.5, max(self.budget_ms() / 1000, 0.001))
        deadline = time.monotonic() + wait
        while True:
            rec = self.recall(application_id, fingerprint)
            if rec is not None:
                return rec
            rec = self.grant_record(application_id, fingerprint, bucket_ids)
            if rec is not None:  # granted, but the decision was never recorded (a crash)
                existing = self.record_once(application_id, fingerprint, rec, event_ms)
                return existing if existing is not None else rec
            if self.claim_many([application_id], [fingerprint], lease_ms)[0]:
                return None  # the claim expired: the decision is ours to make
            if time.monotonic() > deadline:
                raise StoreError(
                    f"application {application_id!r} is being decided by "
                    "another caller (its claim outlived this decision's deadline)"
                )
            time.sleep(0.001)

    def grant_record(
        self, application_id: str, fingerprint: int, bucket_ids: Sequence[str]
    ) -> bytes | None:
        """The decision record stored with a grant of this application at any bucket."""
        pipe = self.client.pipeline(transaction=False)
        for bid in bucket_ids:
            pipe.get(f"{self._b(bid)}:g:{application_id}")
        try:
            values = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"grant lookup failed: {exc}") from exc
        for v in values:
            if v is not None and len(v) > _FP_BYTES and v[:_FP_BYTES] == _fp(fingerprint):
                return v[_FP_BYTES:]
        return None

    def _cluster_reserve(self, kk: list, args: list):
        """One reservation script on a cluster (replay mode retries it with backoff: a
        resend is exactly-once through the application's grant key)."""
        for attempt in range(self.retries + 1):
            try:
                return self._reserve(keys=kk, args=args)
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(self.link_backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _cluster_get(self, keys: list[str]) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        return pipe.execute()


class ClusterHorizon:
    """The store's event-time horizon on a cluster, where reservation scripts (each in its
    bucket's slot) cannot read the horizon key: a decision reads it once when it starts,
    passes each reservation the horizon it knows (that value, raised by the event times
    of the reservations it sent since), and raises the key when its records are written.
    One router deciding in order sees exactly what a single server would; concurrent
    routers see each other's events a decision late."""

    def __init__(self, store: RedisQuotaStore):
        self.store = store
        self._local = threading.local()

    def _read(self) -> int:
        try:
            v = self.store.client.zscore(self.store._horizon_key, "h")
        except redis.RedisError as exc:
            raise StoreError(f"horizon read failed: {exc}") from exc
        return -1 if v is None else int(v)

    def begin(self) -> None:
        """A decision starts: learn the horizon (if the store cannot say, its reservations
        fail and the decision is answered degraded)."""
        try:
            self._local.known = self._read()
            self._local.failed = None
        except StoreError as exc:
            self._local.known, self._local.failed = None, exc

    def known(self, event_ms: int) -> int:
        """The horizon a reservation at ``event_ms`` is judged against; then this
        reservation's event counts (a late one is below it anyway)."""
        failed = getattr(self._local, "failed", None)
        if failed is not None:
            raise StoreError(f"event-time horizon unknown: {failed}")
        known = getattr(self._local, "known", None)
        if known is None:  # outside a decision: one store call at a time
            known = self._read()
            self.raise_to(event_ms)
            return known
        self._local.known = max(known, event_ms)
        return known

    def end(self) -> None:
        """The decision ended: raise the key to everything it saw (best effort: its
        records, written with the horizon, raised it already)."""
        known = getattr(self._local, "known", None)
        self._local.known = self._local.failed = None
        if known is not None and known >= 0:
            try:
                self.raise_to(known)
            except StoreError:
                pass

    def raise_to(self, event_ms: int) -> None:
        try:
            self.store.client.zadd(self.store._horizon_key, {"h": event_ms}, gt=True)
        except redis.RedisError as exc:
            raise StoreError(f"horizon update failed: {exc}") from exc
