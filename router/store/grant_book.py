"""What a network store owes the server for the grants of its decisions (two-phase grants).

Inside a decision (:meth:`GrantBook.begin` … :meth:`GrantBook.end`) every grant the store
makes is *pending* on the server under a token of this attempt. When the decision ends the
book knows which grants were handed back to the caller (post them: the referral becomes
billable) and which were not (void them: quota released, a void entry on the ledger) —
including reservations whose reply never came, since the script may have run. Posts and
voids wait in an outbox, in the order the decisions ended, and are sent ahead of the
store's next command or by a flusher thread shortly after; both are idempotent, so a
settle whose reply was lost is simply sent again. A grant whose caller died before
settling is voided by the server at its deadline (``pending_ms``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from router.core.logs import get_logger

#: How a store names one pending grant (opaque here; Redis: its queue member and entry).
Handle = tuple[bytes, bytes]
#: The handle of "whatever grant of this application is pending there" (a found decision).
ANY: Handle = (b"", b"")
#: An outbox item: (op "post" | "void", bucket id, application id, handle, ledger sequence).
Item = tuple[str, str, str, Handle, int]


class GrantBook:
    """Per-thread decision state and the shared outbox of posts and voids."""

    def __init__(self, flush: Callable[[list[Item]], None], flush_delay_s: float = 0.02):
        """``flush`` sends items; what it cannot send it puts back (:meth:`put_back`)
        before raising."""
        self._local = threading.local()
        self._box: deque[Item] = deque()
        self._lock = threading.Lock()
        #: Held while a flush is on the wire, so an explicit flush (and a ledger read after
        #: it) sees everything sent before it.
        self.flushing = threading.Lock()
        self._prefix = os.urandom(4)
        self._counter = itertools.count(1)
        self._last_seq = 0
        self._flush = flush
        self._delay = flush_delay_s
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._first_at = 0.0
        #: Voids waiting in the outbox: they go out with the very next command (a retry
        #: must never read what a void is about to undo).
        self._voids = 0
        self._pid = os.getpid()
        self.log = get_logger("grants")

    # ---- one decision ----------------------------------------------------------------

    def begin(self) -> None:
        """Start collecting this thread's grants (a decision starts)."""
        self._local.made = []
        self._local.unknown = []

    def active(self) -> bool:
        """True inside a decision: grants are made pending, not posted at once."""
        return getattr(self._local, "made", None) is not None

    def token(self) -> bytes:
        """A token for one reservation attempt (unique to this store object)."""
        return self._prefix + (next(self._counter) & 0xFFFFFFFF).to_bytes(4, "big")

    def made(self, bucket_id: str, app_id: str, handle: Handle) -> None:
        """A reservation of this decision was granted (its reply arrived)."""
        self._local.made.append((bucket_id, app_id, handle))

    def unknown(self, bucket_id: str, app_id: str, handle: Handle) -> None:
        """A reservation of this decision was sent but its reply never came."""
        self._local.unknown.append((bucket_id, app_id, handle))

    def end(self, handed_back: bool, answered: Iterable[tuple[str, str]] = ()) -> None:
        """The decision ended. ``handed_back``: its answers reach the caller, so its grants
        are posted; otherwise they are voided. ``answered``: (bucket, application) of
        grants found already made that were handed back (a retry answered from the stored
        decision), posted with any token. Reservations without a reply are voided unless the
        same application was granted or answered at that bucket in this decision (a
        resend that found its own grant)."""
        made, unknown = self._local.made, self._local.unknown
        self._local.made = self._local.unknown = None
        op = "post" if handed_back else "void"
        if not unknown and not answered:  # the usual decision: its own grants only
            if not made:
                return
            items: list[Item] = [(op, b, a, tok, 0) for b, a, tok in made]
        else:
            answered = list(answered)
            settled = {(b, a) for b, a, _ in made} | set(answered)
            items = [("void", b, a, tok, 0) for b, a, tok in unknown if (b, a) not in settled]
            retried = {(b, a) for b, a, _ in unknown}
            items += [(op, b, a, ANY if (b, a) in retried else tok, 0) for b, a, tok in made]
            items += [("post", b, a, ANY, 0) for b, a in answered]
        with self._lock:
            if not self._box:
                self._first_at = time.monotonic()
            for op, b, a, tok, _ in items:
                self._box.append((op, b, a, tok, self._stamp() if op == "post" else 0))
                self._voids += op == "void"
        if not self._wake.is_set():
            self._kick()

    def stamp(self) -> int:
        """A ledger sequence for a grant posted at once (thread-safe)."""
        with self._lock:
            return self._stamp()

    def _stamp(self) -> int:
        """Ledger sequence: nanoseconds, strictly increasing in this process (the order
        decisions were handed back in; processes interleave by their clocks)."""
        now = time.time_ns()
        self._last_seq = now if now > self._last_seq else self._last_seq + 1
        return self._last_seq

    # ---- the outbox ------------------------------------------------------------------

    def take_due(self, max_age_s: float = 0.002, min_items: int = 16) -> list[Item]:
        """:meth:`take`, but only once enough is owed or the oldest waited ``max_age_s``:
        settles ride along with reservations in groups (one script call per bucket for
        many decisions, not one per decision)."""
        if not self._box or (
            not self._voids
            and len(self._box) < min_items
            and time.monotonic() - self._first_at < max_age_s
        ):
            return []
        return self.take()

    def owes_voids(self) -> bool:
        """True while voids wait in the outbox: they go out ahead of the very next
        command, since a retry must never read what a void is about to undo."""
        return self._voids > 0

    def take(self) -> list[Item]:
        """Everything owed, oldest first (the caller sends it or puts it back)."""
        if not self._box:
            return []
        with self._lock:
            items = list(self._box)
            self._box.clear()
            self._voids = 0
        return items

    def put_back(self, items: Sequence[Item]) -> None:
        """Items that could not be sent go back to the front, in order."""
        with self._lock:
            if not self._box:
                self._first_at = time.monotonic()
            self._box.extendleft(reversed(items))
            self._voids += sum(1 for item in items if item[0] == "void")
        self._kick()

    def __len__(self) -> int:
        return len(self._box)

    def _kick(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's flusher is not here
            self._thread, self._pid = None, os.getpid()
        if self._thread is None and not self._closed:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="grant-flusher", daemon=True
                    )
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        """Flush what the next command did not carry, a little after it was queued."""
        backoff = self._delay
        while not self._closed:
            self._wake.wait()
            time.sleep(backoff)
            self._wake.clear()  # an item queued from here on sets it again
            with self.flushing:
                # Only what the store's own commands have not carried for a while: under
                # steady traffic settles ride along and this thread sends nothing.
                items = self.take_due(self._delay, 1 << 30)
                if items:
                    try:
                        # (What could not be sent, the store's flush puts back itself.)
                        self._flush(items)
                        backoff = self._delay
                    except Exception as exc:  # the store is away: retry later
                        self.log.warning(
                            "grants.flush_failed", pending=len(self._box), error=str(exc)
                        )
                        backoff = min(max(backoff * 2, 0.05), 1.0)
            if self._box:
                self._wake.set()  # still owed (not due yet, or put back): look again

    def close(self) -> None:
        """Stop the flusher (after the owner's last flush)."""
        self._closed = True
        self._wake.set()
