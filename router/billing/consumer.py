"""The ledger consumer: Redis ledger streams → billing database, exactly once.

It reads every ledger stream through one consumer group. A batch of entries is written to
the database in one transaction together with each entry's dedupe key, and ``XACK``ed
only after the commit; so a crash at any point either leaves the entries pending (read
again, and then found already committed) or acknowledged after their commit. On start it
reads its own pending entries before new ones; an entry left pending by a consumer that
died is claimed with ``XAUTOCLAIM`` once idle for ``min_idle_ms`` (kept above a few times
the handler's p99, so a live, slow consumer is not robbed); an entry that keeps failing
goes to the ``dead_letters`` table with its error after ``max_deliveries`` deliveries, and
is acknowledged. A database that is down is not the entry's fault: nothing is
dead-lettered for it, the consumer backs off and tries again.

Streams are trimmed (``trim=True``) only below what every group has acknowledged.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
import structlog
from redis.cluster import RedisCluster
from sqlalchemy.engine import Engine

from router.billing.book import BillingBook
from router.billing.db import writing
from router.billing.ledger_ingest import EntryError, StreamEntry, apply_entries
from router.billing.schema import dead_letters
from router.core.errors import BillingError, StoreError

log = structlog.get_logger("router.billing.consumer")


@dataclass
class ConsumerStats:
    """What a run did (counts of entries)."""

    billed: int = 0
    duplicate: int = 0
    void: int = 0
    seen: int = 0
    dead_lettered: int = 0
    acked: int = 0
    batches: int = 0
    handle_ms: list[float] = field(default_factory=list)

    def add(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def handle_p99_ms(self) -> float:
        xs = sorted(self.handle_ms[-2000:])
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else 0.0

    def summary(self) -> dict[str, float]:
        """The counts and the handler's median and p99 per batch (ms)."""
        return {
            "billed": self.billed,
            "duplicate": self.duplicate,
            "void": self.void,
            "already_committed": self.seen,
            "dead_lettered": self.dead_lettered,
            "acked": self.acked,
            "batches": self.batches,
            "handle_median_ms": round(statistics.median(self.handle_ms), 3)
            if self.handle_ms
            else 0.0,
            "handle_p99_ms": round(self.handle_p99_ms, 3),
        }


@dataclass
class ConsumerSettings:
    """How the consumer reads: its group and name, batch size, claim and retry limits."""

    group: str = "billing"
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch: int = 5000
    min_idle_ms: int = 60_000
    max_deliveries: int = 5
    block_ms: int = 1000
    rescan_s: float = 10.0
    trim: bool = False


class LedgerConsumer:
    """Consume the ledger streams of one Redis quota store (``store``, a
    :class:`~router.store.redis.RedisQuotaStore`) into the billing database ``engine``."""

    def __init__(
        self,
        store,
        engine: Engine,
        book: BillingBook,
        settings: ConsumerSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.store, self.r = store, store.client
        self.engine, self.book = engine, book
        self.cfg = settings or ConsumerSettings()
        self.clock = clock
        self.stats = ConsumerStats()
        self.streams: list[str] = []
        self._stopping = False
        self._patience = 60
        self._scanned = 0.0

    def stop(self) -> None:
        """Ask the run loop to finish its current batch and return (signal-safe)."""
        self._stopping = True

    # ---- the loop ------------------------------------------------------------------

    def run(self, *, once: bool = False) -> ConsumerStats:
        """Consume until :meth:`stop` (or, with ``once``, until nothing is left: new
        entries drained and every pending one acknowledged or dead-lettered). Redis
        unreachable for about two minutes (``once``: a few seconds) ends the run with
        :class:`StoreError`; what was committed stays committed."""
        self._patience = 8 if once else 60
        self._discover(force=True)
        self._read_own_pending()
        self._claim_idle()
        last_claim = self.clock()
        while not self._stopping:
            got = self._read_new()
            if self.clock() - last_claim > self.cfg.min_idle_ms / 4000:
                got += self._claim_idle()
                last_claim = self.clock()
            if got:
                continue
            if once:
                self._drain_pending()
                break
            self._wait()
            self._discover()
        return self.stats

    def _read_new(self) -> int:
        n = 0
        for s in self.streams:
            if self._stopping:
                break
            rows = self._redis(
                lambda s=s: self.r.xreadgroup(
                    self.cfg.group, self.cfg.name, {s: ">"}, count=self.cfg.batch
                )
            )
            for _, entries in rows or []:
                n += len(entries)
                self._handle(s, entries)
        return n

    def _read_own_pending(self) -> int:
        """Entries delivered to this consumer name before and not acknowledged (a restart
        after a crash): read again from the start of this consumer's pending list."""
        n = 0
        for s in self.streams:
            after = "0"
            while not self._stopping:
                rows = self._redis(
                    lambda s=s, after=after: self.r.xreadgroup(
                        self.cfg.group, self.cfg.name, {s: after}, count=self.cfg.batch
                    )
                )
                entries = rows[0][1] if rows else []
                if not entries:
                    break
                n += len(entries)
                self._handle(s, entries)
                after = _id(entries[-1][0])
        return n

    def _claim_idle(self) -> int:
        """Claim entries idle longer than the min-idle (a dead or stuck consumer's)."""
        min_idle = max(self.cfg.min_idle_ms, int(4 * self.stats.handle_p99_ms))
        n = 0
        for s in self.streams:
            start = "0-0"
            while not self._stopping:
                res = self._redis(
                    lambda s=s, start=start: self.r.xautoclaim(
                        s, self.cfg.group, self.cfg.name, min_idle, start, count=self.cfg.batch
                    )
                )
                start, entries = _id(res[0]), [e for e in res[1] if e[1]]
                if len(res) > 2 and res[2]:  # deleted (trimmed) while pending: nothing to bill
                    self._ack(s, [_id(x) for x in res[2]])
                if entries:
                    n += len(entries)
                    self._handle(s, entries)
                if start == "0-0":
                    break
        return n

    def _drain_pending(self) -> None:
        """With ``once``: retry what is still pending here until acknowledged or
        dead-lettered (each re-read counts as a delivery)."""
        for _ in range(self.cfg.max_deliveries + 1):
            if self._stopping or not self._read_own_pending():
                return

    def _wait(self) -> None:
        if isinstance(self.r, RedisCluster) or not self.streams:  # (one BLOCK cannot span slots)
            time.sleep(min(self.cfg.block_ms, 200) / 1000)
            return
        # Block until any stream has something new; the entries are read by _read_new.
        self._redis(
            lambda: self.r.xread({s: "$" for s in self.streams}, count=1, block=self.cfg.block_ms)
        )

    # ---- one batch ------------------------------------------------------------------

    def _handle(self, stream: str, entries: Sequence) -> None:
        """Commit a batch then acknowledge it; a malformed entry is split off."""
        batch = [StreamEntry(stream, _id(i), f or {}) for i, f in entries]
        t0 = time.perf_counter()
        try:
            self._commit(batch)
        except EntryError:
            for e in batch:  # find the bad one(s); the good ones commit alone
                try:
                    self._commit([e])
                except EntryError as exc:
                    self._failed(e, str(exc))
            return
        finally:
            self.stats.handle_ms.append((time.perf_counter() - t0) * 1000)
        self._ack(stream, [e.entry_id for e in batch])

    def _commit(self, batch: list[StreamEntry]) -> None:
        optimistic = True
        for attempt in range(8):
            try:
                with writing(self.engine) as conn:
                    counts = apply_entries(
                        conn, batch, self.book, int(self.clock() * 1000), optimistic=optimistic
                    )
                self.stats.add(counts)
                self.stats.batches += 1
                return
            except EntryError:
                raise
            except sa.exc.IntegrityError:
                # Some were committed before (a redelivery after a crash, or another
                # consumer's claim race): again, looking them up, so they are skipped.
                optimistic = False
                continue
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                log.warning("billing.db_unavailable", error=str(exc).splitlines()[0])
                if self._stopping:
                    raise BillingError(f"billing database unavailable: {exc}") from exc
                time.sleep(min(0.1 * 2**attempt, 5.0))
        raise BillingError(f"could not commit {len(batch)} ledger entries after 8 attempts")

    def _failed(self, e: StreamEntry, error: str) -> None:
        """A malformed entry: dead-letter it after ``max_deliveries``, else leave it
        pending for a later retry."""
        info = self._redis(
            lambda: self.r.xpending_range(e.stream, self.cfg.group, e.entry_id, e.entry_id, 1)
        )
        deliveries = int(info[0]["times_delivered"]) if info else self.cfg.max_deliveries
        log.warning("billing.entry_failed", entry=e.entry_id, deliveries=deliveries, error=error)
        if deliveries < self.cfg.max_deliveries:
            return
        fields = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in e.fields.items()
        }
        with writing(self.engine) as conn:
            have = conn.execute(
                sa.select(dead_letters.c.entry_id).where(
                    dead_letters.c.stream == e.stream, dead_letters.c.entry_id == e.entry_id
                )
            ).first()
            if have is None:
                conn.execute(
                    dead_letters.insert(),
                    {
                        "stream": e.stream,
                        "entry_id": e.entry_id,
                        "deliveries": deliveries,
                        "error": error,
                        "fields": json.dumps(fields, sort_keys=True),
                        "recorded_at_ms": int(self.clock() * 1000),
                    },
                )
        self.stats.dead_lettered += 1
        self._ack(e.stream, [e.entry_id])

    def _ack(self, stream: str, ids: list[str]) -> None:
        if not ids:
            return
        self._redis(lambda: self.r.xack(stream, self.cfg.group, *ids))
        self.stats.acked += len(ids)
        if self.cfg.trim:
            self._trim(stream)

    # ---- streams, groups, trimming ---------------------------------------------------

    def _discover(self, *, force: bool = False) -> None:
        if not force and self.clock() - self._scanned < self.cfg.rescan_s:
            return
        self._scanned = self.clock()
        streams = self._redis(self.store.ledger_streams)
        for s in streams:
            if s not in self.streams:
                self._ensure_group(s)
        self.streams = streams

    def _ensure_group(self, stream: str) -> None:
        try:
            self.r.xgroup_create(stream, self.cfg.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StoreError(f"cannot create consumer group on {stream}: {exc}") from exc

    def _trim(self, stream: str) -> None:
        """Drop entries every group of the stream has acknowledged (and nothing else)."""
        bound = None
        for g in self.r.xinfo_groups(stream):
            if g["pending"]:
                low = _id(self.r.xpending(stream, g["name"])["min"])
            else:
                ms, seq = _id(g["last-delivered-id"]).split("-")
                low = f"{ms}-{int(seq) + 1}"
            if bound is None or _key(low) < _key(bound):
                bound = low
        if bound is not None:
            self.r.xtrim(stream, minid=bound)

    def _redis(self, call: Callable):
        """Run a Redis call, riding out a restart: NOGROUP (the stream or group was lost)
        recreates the groups, a connection error waits and retries."""
        for attempt in range(self._patience):
            try:
                return call()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise StoreError(f"ledger stream command failed: {exc}") from exc
                for s in self.streams:
                    self._ensure_group(s)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stopping and attempt > 2:
                    raise StoreError(f"redis unavailable: {exc}") from exc
                log.warning("billing.redis_unavailable", error=str(exc))
                time.sleep(min(0.05 * 2**attempt, 2.0))
        raise StoreError(f"redis unavailable for the ledger consumer ({self._patience} tries)")


def _id(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
