"""Redis quota store: the live store, with exactly the memory store's semantics.

Keys (``P`` is the configured prefix; ``{…}`` is the cluster hash tag)::

    P{p:<bucket>}:c:<cap>:<window>:<key>   counter hash (n = count, a = amount); expires at
                                           the end of its window plus a grace period
    P{p:<bucket>}:d:<applicant hash>      last grant to this applicant (dedupe window TTL)
    P{p:<bucket>}:g:<application id>      this application was granted here (idempotency TTL)
    P{p:<bucket>}:ledger                   the bucket's referral ledger (a Stream, never trimmed
                                           here: consumers acknowledge and trim)
    P{a:<application id>}                 the decision record: 8-byte fingerprint + record

One reservation is one round trip: ``lua/reserve.lua`` validates every argument, returns at
once if this application was already granted at this bucket, reads every cap, checks them
all, checks dedupe, then increments, sets each counter's expiry, appends the ledger entry
and writes the grant record — all keys in the bucket's slot, so it runs on a Redis Cluster.

Protocol across slots (a decision touches its application's slot and one or more bucket
slots):

1. ``recall``: read ``P{a:id}``. Found with the same fingerprint: answer it. Different
   fingerprint: :class:`~router.errors.IdempotencyConflict`, nothing written.
2. Reservations, bucket by bucket in the router's order. Each is idempotent per
   application through its grant record, so re-sending one after a lost reply (or after a
   crash, when the retry takes the same path) neither counts nor ledgers twice.
3. ``remember``: ``SET P{a:id} NX`` — the first record wins; a concurrent or retried
   decision of the same id gets the same answer on its next ``recall``.

On a single server (``single_trip``) every reservation — of one decision or of a batch,
pipelined or not — is one script that answers from ``P{a:id}`` if present, else reserves
and, on a grant, writes ``P{a:id}`` in the same atomic step; declines are stored with
``SET NX GET`` (the first decision wins). No crash window exists, and a single decision is
one round trip (a batch first reads all its records with one MGET).

On a cluster ``P{a:id}`` is in another slot, so a decision first *claims* the application
(``SET P{a:id}:claim NX PX lease``, one pipeline per batch) and each grant stores the
decision record in its grant key. A caller that finds the claim taken — a retry after a
crash, or a concurrent caller — does not decide: it reads ``P{a:id}``, then the grant keys
of every bucket (a grant whose decision was never recorded is recorded now and answered),
and otherwise waits for the claim's holder until the lease expires and the claim is free.
So a crash between the reservation and step 3 can never lead to a second grant at another
bucket, and concurrent callers all get the first decision.

The client's socket timeout (``timeout_ms``) is the per-call deadline; past it, or on any
error, the router answers in degraded mode (never ``refer``). redis-py errors are wrapped
once into :class:`~router.errors.StoreError`. Scripts are
sent with EVALSHA; after ``SCRIPT FLUSH`` or a restart the store reloads on NOSCRIPT and
re-sends only the calls that got NOSCRIPT, which is safe because a NOSCRIPT reply means the
script did not run. Client retries are off: nothing is re-sent behind the router's back.
On one server the script calls are packed by hiredis and written in one send
(:meth:`RedisQuotaStore._evalsha_many`): redis-py's own pipeline checks every argument in
Python and asks ``SCRIPT EXISTS`` on every execute, which cost more than the router's
whole decision.
"""

from __future__ import annotations

import struct
import time
from importlib import resources
from typing import Iterable, Sequence
from urllib.parse import parse_qs, urlsplit

import msgspec
import redis
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from router.errors import IdempotencyConflict, StoreError
from router.messages import ReferralEntry
from router.store.base import COUNTER_GRACE_MS, Bucket, QuotaStore, validate_reservation
from router.windows import window_end_ms

_RESERVE = resources.files("router.store").joinpath("lua/reserve.lua").read_text()
_entry_enc = msgspec.json.Encoder()
_entry_dec = msgspec.json.Decoder(ReferralEntry)
_FP_BYTES = 8
_HEADER = struct.Struct("<7d")


class RedisQuotaStore(QuotaStore):
    """Quota store on Redis or Redis Cluster (see the module docstring for the protocol)."""

    def __init__(self, client: redis.Redis | RedisCluster, *, prefix: str = "rr:",
                 idempotency_ttl_ms: int = 48 * 3600_000):
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix must not contain braces: {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.record_ttl_ms = idempotency_ttl_ms
        self._reserve = client.register_script(_RESERVE)
        self._windows: dict[tuple[int, tuple[int, ...]], tuple] = {}

    @classmethod
    def from_url(cls, url: str, **options) -> "RedisQuotaStore":
        """``redis://[:password@]host:port/db``, ``rediss://`` (TLS) or
        ``redis+cluster://host:port,host:port``; query options ``prefix``, ``timeout_ms``,
        ``ttl_hours``. Keyword ``options`` override the query."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        prefix = options.pop("prefix", query.pop("prefix", "rr:"))
        timeout = float(options.pop("timeout_ms", query.pop("timeout_ms", 5))) / 1000
        ttl = int(options.pop("ttl_hours", query.pop("ttl_hours", 48))) * 3600_000
        common = dict(socket_timeout=timeout, socket_connect_timeout=max(timeout, 0.05),
                      retry=Retry(NoBackoff(), 0))
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
                raise ValueError(f"unsupported scheme {parts.scheme!r}")
        except redis.RedisError as exc:
            raise StoreError(f"cannot connect to {parts.netloc}: {exc}") from exc
        return cls(client, prefix=prefix, idempotency_ttl_ms=ttl, **options)

    # ---- keys ------------------------------------------------------------------------

    def _b(self, bucket_id: str) -> str:
        return f"{self.prefix}{{p:{bucket_id}}}"

    def _counter(self, bucket: Bucket, i: int, key: int) -> str:
        return f"{self._b(bucket.id)}:c:{i}:{bucket.caps[i].window}:{key}"

    def _app(self, application_id: str) -> str:
        return f"{self.prefix}{{a:{application_id}}}"

    # ---- QuotaStore ------------------------------------------------------------------

    needs_claims = True

    @property
    def single_trip(self) -> bool:
        """One round trip per decision (check, reserve, record) — not across cluster slots."""
        return not isinstance(self.client, RedisCluster)

    def try_reserve(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                    applicant: str | None, event_ms: int,
                    entry: ReferralEntry | None = None, *,
                    application_id: str | None = None) -> int:
        return self._run(bucket, keys, amount, applicant, event_ms, entry, application_id)[0]

    def try_reserve_once(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                         applicant: str | None, event_ms: int,
                         entry: ReferralEntry | None = None, *, application_id: str,
                         fingerprint: int, record: bytes) -> tuple[int, bytes | None]:
        """Check the application's record, reserve, and store ``record`` on a grant — one
        script. Returns (result, None), or (-2, stored record) if already decided. On a
        cluster the application's key lives in another slot: the steps run one by one."""
        if not self.single_trip:
            return super().try_reserve_once(bucket, keys, amount, applicant, event_ms, entry,
                                            application_id=application_id,
                                            fingerprint=fingerprint, record=record)
        return self._run(bucket, keys, amount, applicant, event_ms, entry, application_id,
                         fingerprint, record)

    def try_reserve_recorded(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                             applicant: str | None, event_ms: int,
                             entry: ReferralEntry | None, *, application_id: str,
                             fingerprint: int, record: bytes) -> int:
        return self._run(bucket, keys, amount, applicant, event_ms, entry, application_id,
                         fingerprint, record, use_app=False)[0]

    def claim_many(self, application_ids: Sequence[str], fingerprints: Sequence[int],
                   lease_ms: int) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for a, fp in zip(application_ids, fingerprints):
            pipe.set(f"{self._app(a)}:claim", fp.to_bytes(_FP_BYTES, "big"), nx=True, px=lease_ms)
        try:
            return [bool(x) for x in pipe.execute()]
        except redis.RedisError as exc:
            raise StoreError(f"claim failed: {exc}") from exc

    def recover(self, application_id: str, fingerprint: int, bucket_ids: Sequence[str],
                lease_ms: int, event_ms: int) -> bytes | None:
        deadline = time.monotonic() + lease_ms / 1000 + 0.5
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
                raise StoreError(f"application {application_id!r} is being decided elsewhere")
            time.sleep(0.002)

    def grant_record(self, application_id: str, fingerprint: int,
                     bucket_ids: Sequence[str]) -> bytes | None:
        """The decision record stored with a grant of this application at any bucket."""
        pipe = self.client.pipeline(transaction=False)
        for bid in bucket_ids:
            pipe.get(f"{self._b(bid)}:g:{application_id}")
        try:
            values = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"grant lookup failed: {exc}") from exc
        for v in values:
            if v is not None and len(v) > _FP_BYTES and v[:_FP_BYTES] == \
                    fingerprint.to_bytes(_FP_BYTES, "big"):
                return v[_FP_BYTES:]
        return None

    def record_once(self, application_id: str, fingerprint: int, record: bytes,
                    event_ms: int) -> bytes | None:
        """Store the record unless one exists; return the existing record if one does."""
        fp = fingerprint.to_bytes(_FP_BYTES, "big")
        try:
            old = self.client.set(self._app(application_id), fp + record, nx=True,
                                  px=self.record_ttl_ms, get=True)
        except redis.RedisError as exc:
            raise StoreError(f"record failed: {exc}") from exc
        if old is None:
            return None
        if old[:_FP_BYTES] != fp:
            raise IdempotencyConflict(application_id)
        return old[_FP_BYTES:]

    def _prepare(self, bucket: Bucket, keys: tuple[int, ...], amount: int,
                 applicant: str | None, event_ms: int, entry: ReferralEntry | None,
                 application_id: str | None, fingerprint: int | None = None,
                 record: bytes = b"", use_app: bool | None = None) -> tuple[list, list]:
        """Validated KEYS and ARGV of one reservation script call."""
        validate_reservation(bucket, keys, amount, applicant, event_ms, application_id)
        b = self._b(bucket.id)
        use_dedupe = applicant is not None and bucket.dedupe_ms > 0
        use_grant = application_id is not None
        if use_app is None:
            use_app = fingerprint is not None
        cached = self._windows.get((id(bucket), keys))
        if cached is None:
            if len(self._windows) > 10_000:
                self._windows.clear()
            # Counter keys and (count limit, amount limit, window end) per cap: the same for
            # every reservation in these windows. The bucket itself is kept in the entry so
            # its id cannot be reused by another object while cached.
            cached = self._windows[(id(bucket), keys)] = (
                bucket, [self._counter(bucket, i, k) for i, k in enumerate(keys)],
                [(-1 if cap.count is None else cap.count,
                  -1 if cap.amount is None else cap.amount,
                  window_end_ms(cap.window, key, bucket.timezone) + COUNTER_GRACE_MS)
                 for cap, key in zip(bucket.caps, keys)])
        _, counters, limits = cached
        kk = counters + [f"{b}:d:{applicant}" if use_dedupe else f"{b}:d:-", f"{b}:ledger",
                         f"{b}:g:{application_id}" if use_grant else f"{b}:g:-",
                         self._app(application_id) if use_app else f"{b}:a:-"]  # type: ignore[arg-type]
        caps: list[int] = []
        for count, amount_limit, end in limits:
            # Expiry: the end of the window plus a grace period, counted from the event.
            caps += (count, amount_limit, max(end - event_ms, COUNTER_GRACE_MS))
        # Numbers as little-endian doubles (validated above: integers below 2^53, exact).
        args: list = [
            _HEADER.pack(amount, event_ms, bucket.dedupe_ms, use_dedupe, use_grant,
                         self.record_ttl_ms, use_app),
            struct.pack(f"<{len(caps)}d", *caps),
            _entry_enc.encode(entry) if entry is not None else b"",
            application_id or "",
            fingerprint.to_bytes(_FP_BYTES, "big") if fingerprint is not None else b"",
            record,
        ]
        return kk, args

    def try_reserve_many(self, requests, *, single_trip: bool = False):
        if not self.single_trip:  # cluster: keys of many slots; one by one
            return super().try_reserve_many(requests, single_trip=False)
        calls = [self._prepare(b, k, amt, appl, t, e, app, fp if rec or single_trip else None,
                               rec, single_trip)
                 for b, k, amt, appl, t, e, app, fp, rec in requests]
        for attempt in (1, 2):
            try:
                replies = self._evalsha_many(calls)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Every request carries its application id, so grant records make a resend
                # exactly-once: scripts that ran answer GRANTED without applying again.
                if attempt == 1 and all(r[6] is not None for r in requests):
                    continue
                raise StoreError(f"pipelined reserve failed: {exc}") from exc
            except redis.RedisError as exc:
                raise StoreError(f"pipelined reserve failed: {exc}") from exc
            out: list[tuple[int, bytes | None]] = []
            for req, reply in zip(requests, replies):
                if isinstance(reply, Exception):
                    if "ROUTER conflict" in str(reply):
                        raise IdempotencyConflict(req[6] or "?") from reply
                    raise StoreError(f"pipelined reserve failed: {reply}") from reply
                code = int(reply[0])
                out.append((code, reply[1][_FP_BYTES:] if code == -2 else None))
            return out
        raise AssertionError("unreachable")

    def _evalsha_many(self, calls: list[tuple[list, list]]) -> list:
        """Run the reservation script once per (KEYS, ARGV) call, pipelined on one
        connection (one server only); replies in order, an error reply in place as its
        exception. NOSCRIPT means that call did not run: the script is loaded and just
        those calls are sent again."""
        sha = self._reserve.sha
        commands = [("EVALSHA", sha, len(kk), *kk, *args) for kk, args in calls]
        out = self._send_many(commands)
        todo = [i for i, r in enumerate(out) if isinstance(r, redis.exceptions.NoScriptError)]
        if todo:
            self.client.script_load(_RESERVE)
            for i, r in zip(todo, self._send_many([commands[i] for i in todo])):
                out[i] = r
        return out

    def _send_many(self, commands: list[tuple]) -> list:
        """Send commands pipelined on one connection of a single server, packed by hiredis
        in one write; replies in order, an error reply in place as its exception.
        (redis-py's pipeline checks every argument in Python, and with scripts asks
        ``SCRIPT EXISTS`` on every execute: more than the router's whole decision.)"""
        out: list = [None] * len(commands)
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join([pack_command(c) for c in commands])])
            for i in range(len(commands)):
                try:
                    out[i] = conn.read_response()
                except redis.ResponseError as exc:
                    out[i] = exc
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse the socket
            raise
        finally:
            pool.release(conn)
        return out

    def record_many(self, application_ids, fingerprints, records, event_ms):
        try:
            if self.single_trip:
                olds = self._send_many([
                    ("SET", self._app(a), fp.to_bytes(_FP_BYTES, "big") + rec, "NX", "PX",
                     self.record_ttl_ms, "GET")
                    for a, fp, rec in zip(application_ids, fingerprints, records)])
                for r in olds:
                    if isinstance(r, Exception):
                        raise r
            else:
                pipe = self.client.pipeline(transaction=False)
                for a, fp, rec in zip(application_ids, fingerprints, records):
                    pipe.set(self._app(a), fp.to_bytes(_FP_BYTES, "big") + rec, nx=True,
                             px=self.record_ttl_ms, get=True)
                olds = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"record failed: {exc}") from exc
        out: list[bytes | None] = []
        for a, fp, old in zip(application_ids, fingerprints, olds):
            if old is not None and old[:_FP_BYTES] != fp.to_bytes(_FP_BYTES, "big"):
                raise IdempotencyConflict(a)
            out.append(None if old is None else old[_FP_BYTES:])
        return out

    def _run(self, bucket: Bucket, keys: tuple[int, ...], amount: int, applicant: str | None,
             event_ms: int, entry: ReferralEntry | None, application_id: str | None,
             fingerprint: int | None = None, record: bytes = b"",
             use_app: bool | None = None) -> tuple[int, bytes | None]:
        kk, args = self._prepare(bucket, keys, amount, applicant, event_ms, entry,
                                 application_id, fingerprint, record, use_app)
        use_grant = application_id is not None
        for attempt in (1, 2):
            try:
                if self.single_trip:
                    reply = self._evalsha_many([(kk, args)])[0]
                    if isinstance(reply, Exception):
                        raise reply
                else:
                    reply = self._reserve(keys=kk, args=args)
                code = int(reply[0])
                if code == -2:
                    stored = reply[1]
                    return code, stored[_FP_BYTES:]
                return code, None
            except redis.ResponseError as exc:
                if "ROUTER conflict" in str(exc):
                    raise IdempotencyConflict(application_id or "?") from exc
                raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The reply may be lost after the script ran. With a grant record the retry
                # is exactly-once (it answers GRANTED without applying again), so retry once.
                if attempt == 1 and use_grant:
                    continue
                raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
            except redis.RedisError as exc:
                raise StoreError(f"reserve at {bucket.id!r} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def recall(self, application_id: str, fingerprint: int) -> bytes | None:
        return self.recall_many([application_id], [fingerprint]).get(0)

    def recall_many(self, application_ids: Sequence[str],
                    fingerprints: Sequence[int]) -> dict[int, bytes]:
        if not application_ids:
            return {}
        try:
            values = self.client.mget([self._app(a) for a in application_ids]) \
                if not isinstance(self.client, RedisCluster) else \
                self._cluster_get([self._app(a) for a in application_ids])
        except redis.RedisError as exc:
            raise StoreError(f"recall failed: {exc}") from exc
        found: dict[int, bytes] = {}
        for i, v in enumerate(values):
            if v is not None:
                if int.from_bytes(v[:_FP_BYTES], "big") != fingerprints[i]:
                    raise IdempotencyConflict(application_ids[i])
                found[i] = v[_FP_BYTES:]
        return found

    def _cluster_get(self, keys: list[str]) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        return pipe.execute()

    def remember(self, application_id: str, fingerprint: int, record: bytes,
                 event_ms: int) -> None:
        self.remember_many([application_id], [fingerprint], [record], [event_ms])

    def remember_many(self, application_ids: Sequence[str], fingerprints: Sequence[int],
                      records: Sequence[bytes], event_ms: Sequence[int]) -> None:
        if not application_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for a, fp, rec in zip(application_ids, fingerprints, records):
            pipe.set(self._app(a), fp.to_bytes(_FP_BYTES, "big") + rec, nx=True, px=self.record_ttl_ms)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"remember failed: {exc}") from exc

    def usage(self, bucket: Bucket, keys: tuple[int, ...]) -> list[tuple[int, int]]:
        try:
            out = []
            for i, k in enumerate(keys):
                n, a = self.client.hmget(self._counter(bucket, i, k), "n", "a")
                out.append((int(n or 0), int(a or 0)))
            return out
        except redis.RedisError as exc:
            raise StoreError(f"usage failed: {exc}") from exc

    def counter_ttls(self, bucket: Bucket, keys: tuple[int, ...]) -> list[int]:
        """Remaining lifetime (ms) of each counter; for tests and operations."""
        return [self.client.pttl(self._counter(bucket, i, k)) for i, k in enumerate(keys)]

    def ledger(self) -> Iterable[ReferralEntry]:
        try:
            streams = sorted(self.client.scan_iter(match=f"{self.prefix}{{p:*}}:ledger",
                                                   count=1000))
            rows = []
            for s in streams:
                for sid, fields in self.client.xrange(s):
                    ts, seq = sid.split(b"-")
                    rows.append(((int(ts), int(seq)), _entry_dec.decode(fields[b"entry"])))
        except redis.RedisError as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc
        return [e for _, e in sorted(rows, key=lambda r: r[0])]

    def close(self) -> None:
        self.client.close()
