"""Settling a Redis store's grants and reading its ledger (a mixin of
:class:`~router.store.redis.RedisQuotaStore`; the lifecycle is in ``lua/grants.lua`` and
:mod:`router.store.grant_book`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import redis

from router.core.errors import StoreError
from router.core.messages import ReferralEntry
from router.store.grant_book import Item
from router.store.redis_codec import entry_dec as _entry_dec
from router.store.redis_codec import fp as _fp

if TYPE_CHECKING:
    from router.store.grant_book import GrantBook
    from router.store.redis_link import Link


class GrantSettling:
    """Posts, voids and sweeps of pending grants; the ledger as consumers see it."""

    if TYPE_CHECKING:  # provided by RedisQuotaStore, of which this class is a part
        client: Any
        book: GrantBook
        prefix: str
        link: Link | None
        _cluster: bool
        _settle: Any

        def _b(self, bucket_id: str) -> str: ...
        def _app(self, application_id: str) -> str: ...
        def _evalsha_many(
            self,
            calls: list[tuple[list, list]],
            script: str = ...,
            settle: bool = ...,
            force: bool = ...,
        ) -> list: ...

    _FORGET = (
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
        "return 0"
    )

    def flush(self) -> None:
        """Send every post and void still owed now (raises :class:`StoreError` if the
        store cannot be reached; what was not sent stays owed)."""
        with self.book.flushing:
            items = self.book.take()
            if items:
                try:
                    self._flush_items(items, force=True)
                except Exception as exc:
                    raise StoreError(f"settling grants failed: {exc}") from exc

    def _settle_calls(self, items: list[Item]) -> list[tuple[list[str], list]]:
        """KEYS and ARGV of settle calls for outbox items, in order: one call for all of
        them on a single server; on a cluster one call per bucket (one hash slot), each in
        order — the ledger is ordered by the sequence each post carries anyway."""
        calls: dict[str | None, tuple[list[str], list, dict[str, int]]] = {}
        for op, bid, app, (member, _), seq in items:
            group = calls.get(bid if self._cluster else None)
            if group is None:
                group = calls[bid if self._cluster else None] = ([], ["settle"], {})
            kk, args, index = group
            k = index.get(bid)
            if k is None:
                b = self._b(bid)
                kk += (f"{b}:pendq", f"{b}:ledger")
                k = index[bid] = len(index) + 1
            args += (op, k, app, member, seq)
        return [(kk, args) for kk, args, _ in calls.values()]

    def _flush_items(self, items: list[Item], force: bool = False) -> None:
        """Send these settles. What could not be sent goes back to the outbox (and the
        error is raised): on one server all of them; on a cluster only the buckets whose
        node failed — one node down must not hold back the posts of the others past their
        deadline."""
        if self.link is not None:
            calls = self._settle_calls(items)
            try:
                replies = self._evalsha_many(calls, script="settle", settle=False, force=force)
            except BaseException:
                self.book.put_back(items)
                raise
            self._check_settled(calls, replies)
            return
        by_bucket: dict[str, list[Item]] = {}
        for item in items:
            by_bucket.setdefault(item[1], []).append(item)
        failed: list[Item] = []
        error: Exception | None = None
        for group in by_bucket.values():
            ((kk, args),) = self._settle_calls(group)
            try:
                reply = self._settle(keys=kk, args=args)
            except redis.ResponseError as exc:
                reply = exc
            except redis.RedisError as exc:
                failed += group
                error = exc
                continue
            self._check_settled([(kk, args)], [reply])
        if error is not None:  # (set with every failed group)
            self.book.put_back(failed)
            raise error

    def _check_settled(self, calls: list, replies: list) -> None:
        for (kk, args), reply in zip(calls, replies):
            if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
                raise reply
            if isinstance(reply, Exception):
                self.book.log.error("grants.settle_failed", error=str(reply))
                continue
            for op, app, member, r in zip(args[1::5], args[3::5], args[4::5], reply):
                # (A post of a found decision's grant, no member: 0 = posted before.)
                if op == "post" and r == 0 and member:
                    # Voided (at its deadline) before its post arrived: the caller got an
                    # answer the ledger does not bill.
                    self.book.log.error(
                        "grants.not_pending_at_post", application_id=app, bucket=kk[0]
                    )
                elif op == "post" and r == 2:
                    # Posted by an earlier send whose reply was lost (a deadline under
                    # load): billed once, nothing wrong.
                    self.book.log.info("grants.posted_before", application_id=app, bucket=kk[0])

    def sweep(self) -> int:
        """Void every pending grant past its deadline now, at every bucket (the server
        also does this as reservations and settles arrive). Returns how many."""
        total = 0
        try:
            for key in self.client.scan_iter(match=f"{self.prefix}{{p:*}}:pendq", count=1000):
                base = key.decode()[: -len(":pendq")]
                total += int(
                    self._settle(keys=[key.decode(), f"{base}:ledger"], args=["sweep", 100_000])
                )
        except redis.RedisError as exc:
            raise StoreError(f"sweep failed: {exc}") from exc
        return total

    def pending_count(self) -> int:
        """Grants waiting for their post or void, over all buckets."""
        try:
            return sum(
                int(self.client.zcard(k))
                for k in self.client.scan_iter(match=f"{self.prefix}{{p:*}}:pendq", count=1000)
            )
        except redis.RedisError as exc:
            raise StoreError(f"pending count failed: {exc}") from exc

    def forget_many(
        self, application_ids: Sequence[str], fingerprints: Sequence[int], records: Sequence[bytes]
    ) -> None:
        try:
            if self._cluster:  # (a cluster pipeline sends no scripts) each key on its node
                for a, fp, rec in zip(application_ids, fingerprints, records):
                    self.client.eval(self._FORGET, 1, self._app(a), _fp(fp) + rec)
            else:
                pipe = self.client.pipeline(transaction=False)
                for a, fp, rec in zip(application_ids, fingerprints, records):
                    pipe.eval(self._FORGET, 1, self._app(a), _fp(fp) + rec)
                pipe.execute()
        except redis.RedisError as exc:  # a retry then finds a record whose grant is void
            self.book.log.error(
                "grants.forget_failed", error=str(exc), applications=len(application_ids)
            )

    def _try_flush(self) -> None:
        try:
            self.flush()
        except StoreError as exc:
            self.book.log.warning("grants.unsettled", pending=len(self.book), error=str(exc))

    def ledger_streams(self) -> list[str]:
        """The names of the ledger streams under this store's prefix (one per bucket that
        has appended to its ledger), sorted: what a billing consumer reads."""
        return sorted(
            k.decode()
            for k in self.client.scan_iter(match=f"{self.prefix}{{p:*}}:ledger", count=1000)
        )

    def ledger(self, *, branch: bool = False) -> Iterable[ReferralEntry]:
        """The posted (billable) referrals — with ``branch`` the branch's loans too — in the
        order their decisions were handed back (what this process still owes is sent
        first)."""
        self._try_flush()
        try:
            rows = []
            for s in self.ledger_streams():
                for sid, fields in self.client.xrange(s):
                    if fields.get(b"kind", b"post") != b"post":
                        continue
                    ts, n = sid.split(b"-")
                    rows.append(
                        (
                            (int(fields.get(b"seq") or 0), int(ts), int(n)),
                            _entry_dec.decode(fields[b"entry"]),
                        )
                    )
        except redis.RedisError as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc
        ordered = [e for _, e in sorted(rows, key=lambda r: r[0])]
        return ordered if branch else [e for e in ordered if e.outcome == "refer"]

    def ledger_events(self) -> list[tuple[str, str, str]]:
        """Every ledger event as (kind "post" | "void", bucket stream, application id), each
        stream in its own order: what a consumer sees (voids release a pending grant that
        was never billable)."""
        self._try_flush()
        try:
            return [
                (f.get(b"kind", b"post").decode(), s, f[b"app"].decode())
                for s in self.ledger_streams()
                for _, f in self.client.xrange(s)
            ]
        except redis.RedisError as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc
