"""Redis quota store: the live store, with exactly the memory store's semantics.

Keys (``P`` is the configured prefix; ``{…}`` is the cluster hash tag)::

    P{p:<bucket>}:c:<cap>:<window>:<key>   counter: the string "<count> <amount>"; expires at
                                           the end of its window plus the late-event
                                           horizon plus an hour (garbage collection only)
    P{p:<bucket>}:d:<applicant hash>      last grant to this applicant (dedupe window +
                                           the late-event horizon)
    P{p:<bucket>}:g:<application id>      this application was granted here (idempotency TTL)
    P{p:<bucket>}:pendq                    pending grants by deadline (lua/grants.lua)
    P{p:<bucket>}:ledger                   the bucket's ledger: kind=post (billable) and
                                           kind=void entries (a Stream, never trimmed
                                           here: consumers acknowledge and trim)
    P{a:<application id>}                 the decision record: 8-byte fingerprint + record
    P{h}                                   the event-time horizon (newest event seen)

One reservation is one round trip: ``lua/reserve.lua`` validates every argument, answers
from the application's record if it has one, refuses a late event, returns at once if this
application was already granted at this bucket, reads every cap, checks them all, checks
dedupe, then increments, sets each counter's expiry and writes the grant — pending (inside
a decision) or posted at once (a store call on its own).

**Grant lifecycle.** Inside a decision (:meth:`RedisQuotaStore.begin_decision` …
:meth:`RedisQuotaStore.end_decision`) a grant is *pending* under a member the client built
(:mod:`router.store.grant_book`): posted when the decision is handed back (the billable
ledger entry), voided when it is not — a timeout or lost reply (the script may have run),
a failed batch, records that could not be written — and voided by the server at its
deadline when the client died. Posts and voids ride ahead of the next command or go with a
flusher thread (:mod:`router.store.redis_settle`). A pending grant counts against the caps.

**Deadlines** (:mod:`router.store.redis_link`): a live decision has one budget
(``timeout_ms``) for all its round trips, connecting included; nothing is re-sent behind
the caller's back; a breaker fails calls at once for one deadline after a failure, then
probes. Replay's service level (:meth:`RedisQuotaStore.for_replay`) gives each call a long
deadline and retries it with backoff — safe, because a resend finds the grant it made.

Protocol across slots (a cluster; :mod:`router.store.redis_cluster`): a decision reads the
horizon, *claims* its applications (``SET P{a:id}:claim NX GET PX lease``: a claim held
with other content is an :class:`~router.core.errors.IdempotencyConflict`), reserves bucket by
bucket (each grant keeps the decision record in its grant key), and records its decisions
with ``SET NX GET`` (the first record wins; other content is a conflict). A caller that
finds the claim taken does not decide: it reads ``P{a:id}``, then the grant keys of every
bucket, and otherwise waits for the holder — no longer than its own deadline. If the
records cannot be written the batch is answered degraded and its grants voided, so a
retry never finds a grant without its decision nor refers to a second partner.

On a single server every reservation — of one decision or of a batch — is one script that
answers from ``P{a:id}`` if present, else reserves and, on a grant, writes ``P{a:id}`` in
the same atomic step; declines are stored with ``SET NX GET``. redis-py errors are wrapped
once into :class:`~router.core.errors.StoreError`. Scripts are sent with EVALSHA; after ``SCRIPT
FLUSH`` or a restart the store reloads on NOSCRIPT and re-sends only the calls that got
NOSCRIPT (they did not run). On one server the script calls are packed by hiredis and
written in one send: redis-py's own pipeline checks every argument in Python and asks
``SCRIPT EXISTS`` on every execute, which cost more than the router's whole decision.
"""

from __future__ import annotations

import functools
import itertools
import struct
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from router.core.errors import ConfigError, IdempotencyConflict, StoreError
from router.core.messages import ReferralEntry
from router.core.windows import window_end_ms
from router.decide.outcomes import record_bucket
from router.store.base import (
    COUNTER_GRACE_MS,
    LATE_MS,
    Bucket,
    QuotaStore,
    Reservation,
    Walk,
    validate_reservation,
)
from router.store.grant_book import GrantBook, Handle
from router.store.redis_cluster import ClusterClaims, ClusterHorizon
from router.store.redis_codec import FP_BYTES as _FP_BYTES
from router.store.redis_codec import entry_enc as _entry_enc
from router.store.redis_codec import fp as _fp
from router.store.redis_codec import spec_enc as _spec_enc
from router.store.redis_link import Link
from router.store.redis_settle import GrantSettling


def _lua(name: str) -> str:
    return resources.files("router.store").joinpath(f"lua/{name}").read_text()


# The grant lifecycle's functions are shared by both scripts (Redis has no includes).
_RESERVE = _lua("grants.lua") + "\n" + _lua("reserve.lua")
_SETTLE = _lua("grants.lua") + "\n" + _lua("settle.lua")
_DECIDE = _lua("grants.lua") + "\n" + _lua("decide.lua")
_HEADER = struct.Struct("<10d")
_WALK_HEADER = struct.Struct("<6d")
_SPEC_HEAD = struct.Struct("<6d")
_DOUBLE = struct.Struct("<d")
_SCRIPTS = (_RESERVE, _SETTLE, _DECIDE)
#: A live decision's default budget for its round trips (ms). Measured with
#: ``bench/bench_redis.py``: 8 processes deciding on 2 cores beside their Redis answered
#: 0 of 24,000 sequential and 0 of 96,000 pipelined (batches of 64) decisions degraded at
#: 50 ms, against 776 and 88,950 at 5 ms; see the README's "Deadlines" for choosing it.
DEFAULT_TIMEOUT_MS = 50
_OPTIONS = {"prefix", "timeout_ms", "ttl_hours", "retries", "backoff_ms", "pending_ms"}


class RedisQuotaStore(GrantSettling, ClusterClaims, QuotaStore):
    """Quota store on Redis or Redis Cluster (see the module docstring for the protocol).

    ``timeout_ms`` is a live decision's whole budget for its round trips; ``retries`` > 0
    (replay) gives every call the whole ``timeout_ms`` instead and retries it with
    exponential backoff from ``backoff_ms``. ``pending_ms`` is how long a grant made in a
    decision waits for its post before the server voids it.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "rr:",
        idempotency_ttl_ms: int = 48 * 3600_000,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        retries: int = 0,
        backoff_ms: float = 50,
        pending_ms: int = 15_000,
    ):
        if "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"key prefix must not contain braces (value: {prefix!r})", path="prefix"
            )
        self.client = client
        self.prefix = prefix
        self.record_ttl_ms = idempotency_ttl_ms
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.pending_ms = pending_ms
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._decide = client.register_script(_DECIDE)
        self._windows: dict[tuple[int, tuple[int, ...]], tuple] = {}
        #: bucket id -> its key base, dedupe placeholder, ledger and pending-queue keys
        self._named: dict[str, tuple[str, str, str, str]] = {}
        self._cluster = isinstance(client, RedisCluster)
        #: One round trip per decision (check, reserve, record): not across cluster slots.
        self.single_trip = not self._cluster
        #: A decision's whole walk in one script (lua/decide.lua): the application's record
        #: and every candidate's keys must share a server, so not on a cluster.
        self.walks = not self._cluster
        self.link = (
            Link(
                client.connection_pool,
                timeout_ms / 1000,
                retries=retries,
                backoff_s=backoff_ms / 1000,
            )
            if isinstance(client, redis.Redis)
            else None
        )
        #: The event loop's connections (:meth:`awalk_many`), made on first use.
        self._alink: Any = None
        # The flusher's settles bypass the breaker: it is the decisions' (each failure opens
        # it for that decision's own deadline), and a background send that failed with the
        # store's whole budget must not hold every decision off for that long.
        self.book = GrantBook(functools.partial(self._flush_items, force=True))
        #: The options the URL (or the caller) gave: :meth:`for_replay` keeps them.
        self.explicit: frozenset[str] = frozenset()
        self._budget = threading.local()  # a caller's deadline (:meth:`deadline`)
        self._horizon_key = f"{prefix}{{h}}"
        self._horizon = ClusterHorizon(self) if self._cluster else None

    @classmethod
    def from_url(cls, url: str, **options) -> RedisQuotaStore:
        """``redis://[:password@]host:port/db``, ``rediss://`` (TLS) or
        ``redis+cluster://host:port,host:port``; query options ``prefix``, ``timeout_ms``,
        ``ttl_hours``, ``retries``, ``backoff_ms``, ``pending_ms``. Keyword ``options``
        override the query."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        for name in list(query) + list(options):
            if name not in _OPTIONS:
                raise ConfigError(
                    f"unknown store option {name!r} (known: {', '.join(sorted(_OPTIONS))})",
                    path=name,
                )
        merged = {**query, **options}
        prefix = merged.get("prefix", "rr:")
        timeout_ms = _number(merged, "timeout_ms", DEFAULT_TIMEOUT_MS, 0.1, 600_000)
        opts: dict[str, Any] = dict(
            timeout_ms=timeout_ms,
            idempotency_ttl_ms=int(_number(merged, "ttl_hours", 48, 1, 24 * 365)) * 3600_000,
            retries=int(_number(merged, "retries", 0, 0, 100)),
            backoff_ms=_number(merged, "backoff_ms", 50, 0, 60_000),
            pending_ms=int(_number(merged, "pending_ms", 15_000, 1, 86_400_000)),
        )
        timeout = timeout_ms / 1000
        common: dict[str, Any] = dict(
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        client: redis.Redis | RedisCluster
        try:
            if parts.scheme == "redis+cluster":
                nodes = []
                for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
                    host, _, port = hostport.rpartition(":")
                    nodes.append(ClusterNode(host or "127.0.0.1", int(port)))
                client = RedisCluster(startup_nodes=nodes, password=parts.password, **common)
            elif parts.scheme in ("redis", "rediss"):
                base = parts._replace(query="").geturl()
                client = redis.Redis.from_url(base, **common)
            else:
                raise ConfigError(
                    f"unsupported scheme {parts.scheme!r} (redis://, rediss://, redis+cluster://)",
                    path="store",
                )
        except ValueError as exc:
            raise ConfigError(f"bad store URL {_safe(url)!r}: {exc}", path="store") from exc
        except (redis.RedisError, RedisClusterException) as exc:  # (the latter is not a RedisError)
            where = parts.netloc.rsplit("@", 1)[-1]
            raise StoreError(f"cannot connect to {where}: {exc}") from exc
        store = cls(client, prefix=prefix, **opts)
        store.explicit = frozenset(merged)
        return store

    # ---- keys ------------------------------------------------------------------------

    def _b(self, bucket_id: str) -> str:
        return f"{self.prefix}{{p:{bucket_id}}}"

    def _counter(self, bucket: Bucket, i: int, key: int) -> str:
        return f"{self._b(bucket.id)}:c:{i}:{bucket.caps[i].window}:{key}"

    def _app(self, application_id: str) -> str:
        return f"{self.prefix}{{a:{application_id}}}"

    # ---- the decision's lifecycle ----------------------------------------------------

    needs_claims = True
    two_phase = True

    def begin_decision(self) -> None:
        """A decision starts: its deadline runs, its grants will be pending."""
        if self.link is not None:
            self.link.begin()
        self.book.begin()
        if self._horizon is not None:
            self._horizon.begin()

    @contextmanager
    def deadline(self, deadline_ms: float | None) -> Generator[None, None, None]:
        """Decisions inside get ``deadline_ms`` (at most the store's ``timeout_ms``) as
        their budget, on this thread. On one server it bounds every round trip, as the
        store's own does; on a cluster it bounds the wait on another caller's claim, while
        each socket keeps the store's ``timeout_ms``."""
        if deadline_ms is None:
            yield
            return
        ms = min(float(deadline_ms), self.timeout_ms)
        before = getattr(self._budget, "ms", None)
        self._budget.ms = ms
        if self.link is not None:
            self.link.set_budget(ms / 1000)
        try:
            yield
        finally:
            self._budget.ms = before
            if self.link is not None:
                self.link.set_budget(None if before is None else before / 1000)

    def budget_ms(self) -> float:
        """This thread's decision budget: :meth:`deadline`'s, else ``timeout_ms``."""
        return getattr(self._budget, "ms", None) or self.timeout_ms

    def end_decision(self, handed_back: bool, answered: Sequence[tuple[str, str]] = ()) -> None:
        """The decision ended: post its grants if ``handed_back``, else void them (see
        :class:`~router.store.grant_book.GrantBook`)."""
        try:
            self.book.end(handed_back, answered)
            if self._horizon is not None:
                self._horizon.end()
        finally:
            if self.link is not None:
                self.link.end()

    def reachable(self) -> bool:
        """PING within the store's deadline (every primary, on a cluster)."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def warm_up(self) -> None:
        """Connect this thread's connection and load both scripts, so the first decision
        does not spend its deadline on a connect and a NOSCRIPT round trip (measured: with
        8 processes starting on 2 cores, that first decision came back degraded even at a
        100 ms budget). A failure is logged, not raised: decisions degrade as usual."""
        if self.link is None:  # a cluster client connects and loads per node on first use
            return
        try:
            replies = self._send_many([("SCRIPT", "LOAD", src) for src in _SCRIPTS], force=True)
            for r in replies:
                if isinstance(r, Exception):
                    raise r
        except (redis.RedisError, StoreError) as exc:
            self.book.log.warning("store.warm_up_failed", error=str(exc))

    #: Replay's service level (see :meth:`for_replay`).
    REPLAY = dict(timeout_ms=10_000, retries=6, backoff_ms=100, pending_ms=3_600_000)

    def for_replay(self) -> None:
        """Replay must not degrade: each call gets a long deadline (at least 10 s) and is
        retried with exponential backoff (6 times from 100 ms, about 6 s in all), and a
        batch's grants stay pending up to an hour — unless the URL gave the option, which
        is then kept as given. (On a cluster the socket timeouts are
        fixed when the client is built: give ``?timeout_ms=…&retries=…`` in the URL;
        ``referral-router replay`` does.)"""
        # An option the URL gave is kept as given (a caller who asks for one retry against
        # a store that may be down wants the answer in seconds, not after the floor's ~6 s
        # of backoff per call); the others are raised to the floor.
        r = {k: v for k, v in self.REPLAY.items() if k not in self.explicit}
        self.replaying = True
        self.retries = max(self.retries, r.get("retries", 0))
        self.pending_ms = max(self.pending_ms, r.get("pending_ms", 0))
        if self.link is not None:
            self.link.timeout_s = max(self.link.timeout_s, r.get("timeout_ms", 0) / 1000)
            self.link.retries = self.retries
            if "backoff_ms" in r:
                self.link.backoff_s = r["backoff_ms"] / 1000
            self.link.close()  # new connections take the new timeouts
            self.link.pool.connection_kwargs.update(
                socket_timeout=self.link.timeout_s, socket_connect_timeout=self.link.timeout_s
            )

    # ---- QuotaStore ------------------------------------------------------------------

    def try_reserve(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None = None,
        *,
        application_id: str | None = None,
    ) -> int:
        return self._run(
            Reservation(bucket, keys, amount, applicant, event_ms, entry, application_id)
        )[0]

    def try_reserve_once(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None = None,
        *,
        application_id: str,
        fingerprint: int,
        record: bytes,
    ) -> tuple[int, bytes | None]:
        """Check the application's record, reserve, and store ``record`` on a grant — one
        script. Returns (result, None), or (-2, stored record) if already decided. On a
        cluster the application's key lives in another slot: the steps run one by one."""
        if not self.single_trip:
            return super().try_reserve_once(
                bucket,
                keys,
                amount,
                applicant,
                event_ms,
                entry,
                application_id=application_id,
                fingerprint=fingerprint,
                record=record,
            )
        return self._run(
            Reservation(
                bucket,
                keys,
                amount,
                applicant,
                event_ms,
                entry,
                application_id,
                fingerprint,
                record,
            )
        )

    def try_reserve_recorded(
        self,
        bucket: Bucket,
        keys: tuple[int, ...],
        amount: int,
        applicant: str | None,
        event_ms: int,
        entry: ReferralEntry | None,
        *,
        application_id: str,
        fingerprint: int,
        record: bytes,
    ) -> int:
        return self._run(
            Reservation(
                bucket,
                keys,
                amount,
                applicant,
                event_ms,
                entry,
                application_id,
                fingerprint,
                record,
            ),
            use_app=False,
        )[0]

    def record_once(
        self, application_id: str, fingerprint: int, record: bytes, event_ms: int
    ) -> bytes | None:
        """Store the record unless one exists; return the existing record if one does."""
        return self.record_many([application_id], [fingerprint], [record], [event_ms])[0]

    def _prepare(
        self, r: Reservation, use_app: bool | None = None
    ) -> tuple[list, list, Handle | None]:
        """Validated KEYS and ARGV of one reservation script call, and the handle of the
        grant it would leave pending (None: a grant is posted at once — outside a
        decision). ``use_app``: check and write the application's record (by default
        when a fingerprint is given)."""
        bucket, keys, amount, applicant, event_ms, entry, application_id, fingerprint, record = r
        validate_reservation(bucket, keys, amount, applicant, event_ms, application_id)
        b = self._b(bucket.id)
        use_dedupe = applicant is not None and bucket.dedupe_ms > 0
        use_grant = application_id is not None
        if use_app is None:
            use_app = fingerprint is not None
        token = self.book.token() if use_grant and self.book.active() else b""
        counters, caps = self._caps(bucket, keys, event_ms)
        kk = counters + [
            f"{b}:d:{applicant}" if use_dedupe else f"{b}:d:-",
            f"{b}:ledger",
            f"{b}:g:{application_id}" if use_grant else f"{b}:g:-",
            self._app(application_id or "") if use_app else f"{b}:a:-",
            f"{b}:pendq",
            f"{b}:h-" if self._cluster else self._horizon_key,
        ]
        entry_json = _entry_enc.encode(entry) if entry is not None else b""
        member = b""
        if token:
            member = self._member(
                application_id or "",  # (a token is only given with an id)
                token,
                entry_json,
                (
                    amount,
                    event_ms,
                    counters,
                    kk[-6] if use_dedupe else "",
                    kk[-3] if use_app else "",
                    kk[-4] if use_grant and not use_app else "",
                ),
            )
        # Numbers as little-endian doubles (validated above: integers below 2^53, exact).
        args: list = [
            _HEADER.pack(
                amount,
                event_ms,
                bucket.dedupe_ms,
                use_dedupe,
                use_grant,
                self.record_ttl_ms,
                use_app,
                self.pending_ms if token else 0,
                self._horizon.known(event_ms) if self._horizon is not None else -1,
                LATE_MS,
            ),
            caps,
            b"" if token else entry_json,  # a pending grant's entry travels in its member
            application_id or "",
            _fp(fingerprint) if fingerprint is not None else b"",
            record,
            token,
            b"" if token or entry is None else str(self.book.stamp()),
            member,
        ]
        return kk, args, (member, b"") if token else None

    def _caps(self, bucket: Bucket, keys: tuple[int, ...], event_ms: int) -> tuple[list, bytes]:
        """The bucket's counter keys for these windows, and its caps packed for the
        scripts: (count limit, amount limit, counter expiry from the event) per cap."""
        cached = self._windows.get((id(bucket), keys))
        if cached is None:
            if len(self._windows) > 10_000:
                self._windows.clear()
            # Counter keys, (count limit, amount limit, window end) per cap and their
            # packing: the same for every reservation in these windows. The bucket itself
            # is kept in the entry so its id cannot be reused by another object while cached.
            cached = self._windows[(id(bucket), keys)] = (
                bucket,
                [self._counter(bucket, i, k) for i, k in enumerate(keys)],
                [
                    (
                        -1 if cap.count is None else cap.count,
                        -1 if cap.amount is None else cap.amount,
                        window_end_ms(cap.window, key, bucket.timezone) + COUNTER_GRACE_MS,
                    )
                    for cap, key in zip(bucket.caps, keys)
                ],
                struct.Struct(f"<{3 * len(keys)}d"),
            )
        _, counters, limits, packing = cached
        caps: list[int] = []
        for count, amount_limit, end in limits:
            # Expiry (garbage collection only): the end of the window plus the late-event
            # horizon (``end`` includes it) plus an hour, counted from the event.
            caps += (count, amount_limit, max(end - event_ms, 0) + 3600_000)
        return counters, packing.pack(*caps)

    @staticmethod
    def _member(application_id: str, token: bytes, entry_json: bytes, spec: tuple) -> bytes:
        """A pending grant's queue member: what a void undoes and what a post bills (see
        lua/grants.lua). Built here, so it can be settled even if the reply is lost.
        ``spec``: (amount, event_ms, counter keys, dedupe key, application record key,
        grant key), a key '' when unused."""
        return b"%s\0%s%08x%s%s" % (
            application_id.encode(),
            token,
            len(entry_json),
            entry_json,
            _spec_enc.encode(spec),
        )

    # ---- one decision, one call (lua/decide.lua) --------------------------------------

    def _walk_call(self, w: Walk, token: bytes) -> tuple[list, list, list[bytes]]:
        """KEYS and ARGV of one decide.lua call, and each attempt's pending member."""
        app_key = self._app(w.application_id)
        kk: list = [app_key, self._horizon_key]
        args: list = [
            _WALK_HEADER.pack(
                w.event_ms,
                w.amount,
                self.record_ttl_ms,
                self.pending_ms if token else 0,
                LATE_MS,
                w.late_bit,
            ),
            _fp(w.fingerprint),
            w.application_id,
            w.decline,
            _DOUBLE.pack(w.after_bits),
        ]
        members: list[bytes] = []
        for at in w.attempts:
            # (No validate_reservation here: a walk is the router's own call, built from a
            # validated strategy and application, and the script checks every number.)
            bucket = at.bucket
            named = self._named.get(bucket.id)
            if named is None:
                b = self._b(bucket.id)
                named = self._named[bucket.id] = (b, f"{b}:d:-", f"{b}:ledger", f"{b}:pendq")
            counters, caps = self._caps(bucket, at.keys, w.event_ms)
            use_dedupe = at.applicant is not None and bucket.dedupe_ms > 0
            dedupe_key = f"{named[0]}:d:{at.applicant}" if use_dedupe else named[1]
            kk += counters
            kk += (dedupe_key, named[2], named[3])
            spec = _SPEC_HEAD.pack(
                len(counters),
                bucket.dedupe_ms,
                use_dedupe,
                at.cap_bit,
                at.dedupe_bit,
                at.pre_bits,
            )
            entry_json = _entry_enc.encode(at.entry) if at.entry is not None else b""
            if token:
                member = self._member(
                    w.application_id,
                    token,
                    entry_json,
                    (
                        w.amount,
                        w.event_ms,
                        counters,
                        dedupe_key if use_dedupe else "",
                        app_key,
                        "",
                    ),
                )
                args += (spec + caps, at.record, member, b"")
            else:
                member = b""
                seq = str(self.book.stamp()) if at.entry is not None else ""
                args += (spec + caps, at.record, entry_json, seq)
            members.append(member)
        return kk, args, members

    def walk_many(self, walks: Sequence[Walk]) -> list[tuple[int, list[int], bytes | None]]:
        if not self.walks:
            return super().walk_many(walks)
        pending = self.book.active()
        prepared = [self._walk_call(w, self.book.token() if pending else b"") for w in walks]
        try:
            replies = self._evalsha_many([(kk, args) for kk, args, _ in prepared], "decide")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._walks_unknown(walks, prepared)
            raise StoreError(f"decide failed: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"decide failed: {exc}") from exc
        return self._walk_results(walks, prepared, replies)

    @property
    def async_walks(self) -> bool:
        """Whether :meth:`awalk_many` serves: one server (a cluster walks step by step)."""
        return self.walks and self.link is not None

    async def awalk_many(
        self, walks: Sequence[Walk], budget_ms: float | None = None
    ) -> list[tuple[int, list[int], bytes | None]]:
        """:meth:`walk_many` on the running event loop (redis-py's asyncio connections,
        :mod:`router.store.redis_async`), within ``budget_ms`` (at most ``timeout_ms``):
        the same scripts, settles riding ahead as on the sync path, the same grant
        lifecycle — a call whose outcome is unknown (a lost reply, the deadline, the
        caller's cancellation) has every attempt it sent voided when the decision ends."""
        if not self.async_walks:
            raise StoreError("awalk_many needs one Redis server (not a cluster)")
        if self._alink is None:
            from router.store.redis_async import AsyncLink  # (loaded by async callers only)

            assert self.link is not None
            self._alink = AsyncLink(self.link)
        budget = min(budget_ms or self.timeout_ms, self.timeout_ms) / 1000
        pending = self.book.active()
        prepared = [self._walk_call(w, self.book.token() if pending else b"") for w in walks]
        owed = self.book.take_due()
        pre = self._settle_calls(owed)
        commands = [("EVALSHA", self._settle.sha, len(kk), *kk, *args) for kk, args in pre]
        sha = self._decide.sha
        commands += [("EVALSHA", sha, len(kk), *kk, *args) for kk, args, _ in prepared]
        start = time.monotonic()
        try:
            out = await self._alink.send(commands, budget)
            todo = [i for i, r in enumerate(out) if isinstance(r, redis.exceptions.NoScriptError)]
            if todo:  # those did not run: load the scripts and send just them, in one write
                again = await self._alink.send(
                    [("SCRIPT", "LOAD", src) for src in _SCRIPTS] + [commands[i] for i in todo],
                    max(budget - (time.monotonic() - start), 1e-3),
                )
                for i, r in zip(todo, again[len(_SCRIPTS) :]):
                    out[i] = r
            if pre:
                self._check_settled(pre, out[: len(pre)])
        except BaseException as exc:
            if owed:
                self.book.put_back(owed)  # idempotent: sending them again is safe
            if isinstance(exc, StoreError):  # (Unsent: nothing ran)
                raise
            if isinstance(exc, redis.RedisError) and not isinstance(
                exc, (redis.ConnectionError, redis.TimeoutError)
            ):
                raise StoreError(f"decide failed: {exc}") from exc
            # A lost reply, the deadline or a cancellation once sent: the scripts may have
            # run, so every attempt sent is voided when the decision ends.
            self._walks_unknown(walks, prepared)
            if isinstance(exc, redis.RedisError):
                raise StoreError(f"decide failed: {exc}") from exc
            raise
        return self._walk_results(walks, prepared, out[len(pre) :])

    async def aclose(self) -> None:
        """Close the running loop's connections (:meth:`close` does the rest)."""
        if self._alink is not None:
            await self._alink.close()

    def walk_stream(
        self, runs: Iterable[Sequence[Walk]]
    ) -> Generator[list[tuple[int, list[int], bytes | None]], None, None]:
        """:meth:`walk_many` over runs of walks, each run written before the replies of
        the one before are read (a replay: the server decides one run while this process
        builds the next). Owed posts and voids are sent first; the script is loaded first
        (a cache lost mid-stream is an error, not a resend: the runs behind it ran).

        A connection lost mid-stream is retried as replay's calls are (``retries`` times,
        backoff from ``backoff_ms``): the runs written but not read are sent again, in
        order — a decision that ran the first time answers with its stored record, as any
        retry does — then the stream goes on."""
        if not self.walks or self.link is None:
            yield from super().walk_stream(runs)
            return
        self.flush()
        try:
            self._send_many([("SCRIPT", "LOAD", _DECIDE)], force=True)
        except redis.RedisError as exc:
            raise StoreError(f"decide failed: {exc}") from exc
        pending = self.book.active()
        sha = self._decide.sha
        sent: list = []

        def commands() -> Iterator[list[tuple]]:
            for run in runs:
                prepared = [self._walk_call(w, self.book.token() if pending else b"") for w in run]
                sent.append((run, prepared))
                yield [("EVALSHA", sha, len(kk), *kk, *args) for kk, args, _ in prepared]

        def again(unread: list) -> Iterator[list[tuple]]:
            for run, prepared in unread:
                sent.append((run, prepared))
                yield [("EVALSHA", sha, len(kk), *kk, *args) for kk, args, _ in prepared]

        batches: Iterator[list[tuple]] = commands()
        attempt = 0
        while True:
            try:
                for replies in self.link.send_overlapped(batches):
                    run, prepared = sent.pop(0)
                    attempt = 0
                    yield self._walk_results(run, prepared, replies)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt >= self.retries:
                    for run, prepared in sent:
                        self._walks_unknown(run, prepared)
                    raise StoreError(f"decide failed: {exc}") from exc
                time.sleep(self.link.backoff_s * 2**attempt)
                attempt += 1
                unread, sent[:] = list(sent), []
                batches = itertools.chain(again(unread), batches)
            except redis.RedisError as exc:
                raise StoreError(f"decide failed: {exc}") from exc

    def _walks_unknown(self, walks: Sequence[Walk], prepared: list) -> None:
        """Walks whose replies were lost: each may have granted any one of its attempts,
        so all are voided when the decision ends (voiding a member never granted is a
        no-op)."""
        for w, (_, _, members) in zip(walks, prepared):
            for at, member in zip(w.attempts, members):
                if member:
                    self.book.unknown(at.bucket.id, w.application_id, (member, b""))

    def _walk_results(
        self, walks: Sequence[Walk], prepared: list, replies: list
    ) -> list[tuple[int, list[int], bytes | None]]:
        out: list[tuple[int, list[int], bytes | None]] = []
        failed: BaseException | None = None
        for w, (_, _, members), reply in zip(walks, prepared, replies):
            if isinstance(reply, Exception):
                if failed is None:
                    failed = (
                        IdempotencyConflict(w.application_id)
                        if "ROUTER conflict" in str(reply)
                        else StoreError(f"decide failed: {reply}")
                    )
                out.append((-1, [], None))
                continue
            g = int(reply[0])
            if g == -2:
                out.append((-1, [], reply[1][_FP_BYTES:]))
                continue
            if g > 0 and members[g - 1]:
                # (Every walk's grant is booked before an error of another is raised.)
                self.book.made(w.attempts[g - 1].bucket.id, w.application_id, (members[g - 1], b""))
            out.append((g - 1, [int(x) for x in reply[1:]], None))
        if failed is not None:
            raise failed
        return out

    def rewrite_records(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], records: Sequence[bytes]
    ) -> None:
        if not application_ids:
            return
        try:
            replies = self._send_many(
                [
                    ("SET", self._app(a), _fp(fp) + rec, "XX", "KEEPTTL")
                    for a, fp, rec in zip(application_ids, fingerprints, records)
                ]
            )
        except redis.RedisError as exc:
            raise StoreError(f"record rewrite failed: {exc}") from exc
        for r in replies:
            if isinstance(r, Exception):
                raise StoreError(f"record rewrite failed: {r}")

    def try_reserve_many(self, requests, *, single_trip: bool = False):
        if not self.single_trip:  # cluster: keys of many slots; one by one
            return super().try_reserve_many(requests, single_trip=False)
        prepared = [
            self._prepare(
                Reservation(b, k, amt, appl, t, e, app, fp if rec or single_trip else None, rec),
                single_trip,
            )
            for b, k, amt, appl, t, e, app, fp, rec in requests
        ]
        try:
            replies = self._evalsha_many([(kk, args) for kk, args, _ in prepared])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The scripts may have run: their grants, if any, are voided when the decision
            # ends (see GrantBook).
            for req, (_, _, grant) in zip(requests, prepared):
                if grant:
                    self.book.unknown(req[0].id, req[6], grant)
            raise StoreError(f"pipelined reserve failed: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"pipelined reserve failed: {exc}") from exc
        out: list[tuple[int, bytes | None]] = []
        for req, (_, _, grant), reply in zip(requests, prepared, replies):
            if isinstance(reply, Exception):
                if "ROUTER conflict" in str(reply):
                    raise IdempotencyConflict(req[6] or "?") from reply
                raise StoreError(f"pipelined reserve failed: {reply}") from reply
            code = int(reply[0])
            if code == 0 and grant:
                self.book.made(req[0].id, req[6], grant)
            out.append((code, reply[1][_FP_BYTES:] if code == -2 else None))
        return out

    def _evalsha_many(
        self,
        calls: list[tuple[list, list]],
        script: str = "reserve",
        settle: bool = True,
        force: bool = False,
    ) -> list:
        """Run a script once per (KEYS, ARGV) call, pipelined on one connection (one server
        only); replies in order, an error reply in place as its exception. Posts and voids
        still owed travel ahead of them in the same write (``settle``). NOSCRIPT means that
        call did not run: the scripts are loaded and just those calls are sent again."""
        sha = {"reserve": self._reserve, "settle": self._settle, "decide": self._decide}[script].sha
        calls_are_reserves = script == "reserve"
        owed = self.book.take_due() if settle else []
        pre = self._settle_calls(owed)
        commands = [("EVALSHA", self._settle.sha, len(kk), *kk, *args) for kk, args in pre]
        commands += [("EVALSHA", sha, len(kk), *kk, *args) for kk, args in calls]
        try:
            # Settles alone are idempotent: an explicit flush may resend them once (a socket
            # left from before a server restart fails on first use).
            out = self._send_many(commands, force, 1 if force and not calls_are_reserves else None)
            todo = [i for i, r in enumerate(out) if isinstance(r, redis.exceptions.NoScriptError)]
            if todo:
                self._send_many([("SCRIPT", "LOAD", src) for src in _SCRIPTS], force)
                for i, r in zip(todo, self._send_many([commands[i] for i in todo], force)):
                    out[i] = r
            if pre:
                self._check_settled(pre, out[: len(pre)])
        except BaseException:
            if owed:
                self.book.put_back(owed)  # idempotent: sending them again is safe
            raise
        return out[len(pre) :]

    def _send_many(
        self, commands: list[tuple], force: bool = False, retries: int | None = None
    ) -> list:
        """Send commands pipelined on this thread's connection of a single server, packed
        by hiredis in one write, within the decision's deadline (see
        :class:`~router.store.redis_link.Link`); replies in order, an error reply in place
        as its exception. (redis-py's pipeline checks every argument in Python, and with
        scripts asks ``SCRIPT EXISTS`` on every execute: more than the whole decision.)"""
        assert self.link is not None  # one server (a cluster has no Link)
        return self.link.send(commands, force=force, retries=retries)

    def record_many(self, application_ids, fingerprints, records, event_ms):
        try:
            # Stored decisions move the event-time horizon, as in every store.
            newest = max(event_ms) if len(event_ms) else -1
            if self.single_trip:
                olds = self._send_many(
                    [
                        ("SET", self._app(a), _fp(fp) + rec, "NX", "PX", self.record_ttl_ms, "GET")
                        for a, fp, rec in zip(application_ids, fingerprints, records)
                    ]
                    + [("ZADD", self._horizon_key, "GT", newest, "h")]
                )
                for r in olds:
                    if isinstance(r, Exception):
                        raise r
                olds = olds[:-1]
            else:
                pipe = self.client.pipeline(transaction=False)
                for a, fp, rec in zip(application_ids, fingerprints, records):
                    pipe.set(self._app(a), _fp(fp) + rec, nx=True, px=self.record_ttl_ms, get=True)
                pipe.zadd(self._horizon_key, {"h": newest}, gt=True)
                olds = pipe.execute()[:-1]
        except redis.RedisError as exc:
            raise StoreError(f"record failed: {exc}") from exc
        out: list[bytes | None] = []
        for a, fp, old in zip(application_ids, fingerprints, olds):
            if old is not None and old[:_FP_BYTES] != _fp(fp):
                raise IdempotencyConflict(a)
            out.append(None if old is None else old[_FP_BYTES:])
        return out

    def _run(self, r: Reservation, use_app: bool | None = None) -> tuple[int, bytes | None]:
        """One reservation script call: (result, the stored record when already decided)."""
        bucket, application_id = r.bucket, r.application_id
        kk, args, grant = self._prepare(r, use_app)
        try:
            if self.single_trip:
                reply = self._evalsha_many([(kk, args)])[0]
                if isinstance(reply, Exception):
                    raise reply
            else:
                reply = self._cluster_reserve(kk, args)
        except redis.ResponseError as exc:
            if "ROUTER conflict" in str(exc):
                raise IdempotencyConflict(application_id or "?") from exc
            raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The reply is lost but the script may have run: a grant it made is voided when
            # the decision ends. Never re-sent here: that would double the deadline.
            if grant:
                self.book.unknown(bucket.id, application_id or "", grant)
            raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
        code = int(reply[0])
        if code == -2:
            return code, reply[1][_FP_BYTES:]
        if code == 0 and grant:
            self.book.made(bucket.id, application_id or "", grant)
        return code, None

    def recall(self, application_id: str, fingerprint: int) -> bytes | None:
        return self.recall_many([application_id], [fingerprint]).get(0)

    def lookup(self, application_id: str) -> bytes | None:
        key = self._app(application_id)
        try:
            if self._cluster:
                value = self._cluster_get([key])[0]
            else:
                value = self._send_many([("GET", key)])[0]
                if isinstance(value, Exception):
                    raise value
        except redis.RedisError as exc:
            raise StoreError(f"lookup failed: {exc}") from exc
        return None if value is None else value[_FP_BYTES:]

    def recall_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int]
    ) -> dict[int, bytes]:
        if not application_ids:
            return {}
        keys = [self._app(a) for a in application_ids]
        try:
            if self._cluster:
                if self.book.owes_voids():
                    # (On one server owed voids ride ahead of the next command; here the
                    # records live on other nodes than the grants: send them first.)
                    self.flush()
                values = self._cluster_get(keys)
            else:
                values = self._send_many([("MGET", *keys)])[0]
                if isinstance(values, Exception):
                    raise values
        except redis.RedisError as exc:
            raise StoreError(f"recall failed: {exc}") from exc
        found: dict[int, bytes] = {}
        for i, v in enumerate(values):
            if v is not None:
                if int.from_bytes(v[:_FP_BYTES], "big") != fingerprints[i]:
                    raise IdempotencyConflict(application_ids[i])
                found[i] = v[_FP_BYTES:]
        if self._cluster and found:
            self._drop_voided(application_ids, fingerprints, found)
        return found

    def _drop_voided(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], found: dict[int, bytes]
    ) -> None:
        """On a cluster a decision record lives in another slot than its grant. When a
        batch's grants were voided after its records were written (their reply was lost)
        and the records could not be deleted again (the node was away), such a record
        would answer a retry with a grant that no longer exists — a referral never billed.
        A granting record whose grant key is gone is deleted here (only if unchanged) and
        the application is decided afresh."""
        checks = []
        for i, rec in found.items():
            bucket = record_bucket(rec)
            if bucket is not None:
                checks.append((i, f"{self._b(bucket)}:g:{application_ids[i]}"))
        if not checks:
            return
        try:
            alive = self._cluster_get([k for _, k in checks])
        except redis.RedisError as exc:
            raise StoreError(f"recall failed: {exc}") from exc
        stale = [i for (i, _), v in zip(checks, alive) if v is None]
        if stale:
            self.book.log.warning("records.voided_grant", applications=len(stale))
            self.forget_many(
                [application_ids[i] for i in stale],
                [fingerprints[i] for i in stale],
                [found[i] for i in stale],
            )
            for i in stale:
                del found[i]

    def remember(self, application_id: str, fingerprint: int, record: bytes, event_ms: int) -> None:
        self.remember_many([application_id], [fingerprint], [record], [event_ms])

    def remember_many(
        self,
        application_ids: Sequence[str],
        fingerprints: Sequence[int],
        records: Sequence[bytes],
        event_ms: Sequence[int],
    ) -> None:
        if not application_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for a, fp, rec in zip(application_ids, fingerprints, records):
            pipe.set(self._app(a), _fp(fp) + rec, nx=True, px=self.record_ttl_ms)
        pipe.zadd(self._horizon_key, {"h": max(event_ms)}, gt=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"remember failed: {exc}") from exc

    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        try:
            raw = self.client.mget([self._counter(bucket, i, k) for i, k in enumerate(keys)])
        except redis.RedisError as exc:
            raise StoreError(f"usage failed: {exc}") from exc
        return [counter_value(v) for v in raw]

    def counter_ttls(self, bucket: Bucket, keys: tuple[int, ...]) -> list[int]:
        """Remaining lifetime (ms) of each counter; for tests and operations."""
        return [self.client.pttl(self._counter(bucket, i, k)) for i, k in enumerate(keys)]

    def discard(self) -> None:
        """Delete every key under this store's prefix (nothing else on the server)."""
        nodes = self.client.get_primaries() if self._cluster else [None]
        try:
            for node in nodes:
                scan = (
                    self.client.scan_iter(match=f"{self.prefix}*", count=1000, target_nodes=node)
                    if node is not None
                    else self.client.scan_iter(match=f"{self.prefix}*", count=1000)
                )
                for key in scan:
                    self.client.unlink(key)
        except redis.RedisError as exc:
            raise StoreError(f"discard failed: {exc}") from exc

    def close(self) -> None:
        """Send what is still owed (best effort), then release connections."""
        try:
            self.flush()
        except StoreError as exc:
            self.book.log.warning(
                "grants.unsettled_at_close", pending=len(self.book), error=str(exc)
            )
        self.book.close()
        if self.link is not None:
            self.link.close()
        self.client.close()


def counter_value(raw: bytes | None) -> tuple[int, int]:
    """(count, amount) of a stored counter (``b"<count> <amount>"``; missing: (0, 0))."""
    if raw is None:
        return 0, 0
    n, a = raw.split()
    return int(n), int(a)


def _number(options: dict, name: str, default: float, lo: float, hi: float) -> float:
    """A numeric store option, checked (a clear error naming the option and value)."""
    raw = options.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not lo <= value <= hi:
        raise ConfigError(
            f"store option {name} must be a number from {lo:g} to {hi:g} (value: {raw!r})",
            path=name,
        )
    return value


def _safe(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url
