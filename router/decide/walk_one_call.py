"""A decision's walk sent to the store in one call (stores that declare ``walks``).

The walk's rules stay the allocator's (:mod:`router.decide.allocate`): keep, then the
branch, then the eligible partners in routing order, stopping at the first grant; a cap
already known to refuse (the refused-amount floors) is skipped without asking the store.
Here they are laid out before the call instead of one round trip at a time:

* :func:`plan` lists the decision's steps in that order — each either a known refusal or
  an attempt the store makes (:class:`~router.store.base.Attempt`) — and the
  :class:`~router.store.base.Walk` to send;
* the store tries the attempts in order and stores the granted one's record, or the
  decline (``lua/decide.lua`` on one Redis server);
* :func:`settle` reads the reply in the same order and does what the step-by-step walk
  would have done: counts known refusals, learns from the store's refusals
  (:meth:`Allocator.note`), ORs each refusal's reason bit, charges the rotation on a
  grant. The record the store kept has the same bits (it ORs the same ones in).

Known refusals are judged again when the reply is read, with the floors as they are then:
a replay that pipelines many decisions plans each before the replies of the ones ahead of
it are read, and must count exactly what the one-at-a-time walk counts. A step the store
tried that is known to refuse by then is counted as known (the store refused it too:
floors only mark refusals, and nothing is released during a replay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from router.core.messages import ReferralEntry
from router.decide.outcomes import BRANCH, KEEP
from router.decide.walk_state import BRANCH_FULL, DEDUPE, KEEP_FULL, LATE_BIT, QUOTA
from router.store import CAP_HIT, DEDUPED, GRANTED, LATE, Bucket
from router.store.base import Attempt, Walk

if TYPE_CHECKING:
    from router.decide.allocate_base import AllocatorBase


class Step(NamedTuple):
    """One candidate of a decision, in walk order."""

    kind: int  # KEEP, BRANCH or REFER
    partner: int  # the partner's index for REFER, else -1
    bucket: Bucket
    keys: tuple[int, ...]
    cap_bit: int
    attempt: Attempt | None  # None: known to refuse when planned (not sent)
    known: int = -1  # that refusal's result, when planned (-1: sent)


class Candidate(NamedTuple):
    """What :func:`plan` needs of one candidate: its kind, partner, bucket and window
    keys, the applicant for dedupe, its decision record and the ledger entry of a grant."""

    kind: int
    partner: int
    bucket: Bucket
    keys: tuple[int, ...]
    applicant: str | None
    record: bytes
    entry: ReferralEntry | None


def plan(
    al: AllocatorBase,
    application_id: str,
    fingerprint: int,
    event_ms: int,
    amount: int,
    candidates: list[Candidate],
    decline: bytes,
) -> tuple[list[Step], Walk]:
    """The decision's steps and the walk to send (see the module docstring)."""
    steps: list[Step] = []
    attempts: list[Attempt] = []
    pre = 0
    for c in candidates:
        cap_bit = _cap_bit(c.kind)
        code = known(al, c.bucket, c.keys, amount)
        if code >= 0:
            steps.append(Step(c.kind, c.partner, c.bucket, c.keys, cap_bit, None, code))
            pre |= cap_bit
            continue
        at = Attempt(c.bucket, c.keys, c.applicant, c.entry, c.record, cap_bit, DEDUPE, pre)
        attempts.append(at)
        steps.append(Step(c.kind, c.partner, c.bucket, c.keys, cap_bit, at))
        pre = 0
    walk = Walk(application_id, fingerprint, event_ms, amount, attempts, decline, pre, LATE_BIT)
    return steps, walk


def settle(
    al: AllocatorBase,
    steps: list[Step],
    granted: int,
    codes: list[int],
    event_ms: int,
    amount: int,
    *,
    rejudge: bool = True,
) -> tuple[int, int]:
    """Read the store's reply as the step-by-step walk would: (the granted step's index,
    -1 for none; the reason bits of the refusals before it, or of all when none).

    ``rejudge=False`` (live decisions planned together before any reply, whose store may
    release room between them): each step keeps what was known when it was planned, and
    every step sent is answered by the store's own result."""
    tried = 0
    bits = 0
    for s, step in enumerate(steps):
        if rejudge:
            code = _known_counted(al, step.bucket, step.keys, amount)
        else:
            code = step.known if step.attempt is None else -1
            if code >= 0:
                al.refusals[step.bucket.id, step.bucket.caps[(code - CAP_HIT) >> 1].window] += 1
        if step.attempt is not None:
            sent = tried
            tried += 1
            if code < 0:
                if sent >= len(codes):
                    raise AssertionError("the store stopped before a step the walk needs")
                code = codes[sent]
                if code == GRANTED:
                    return s, bits
                al.note(step.bucket, step.keys, amount, code, event_ms)
            elif sent == granted:
                raise AssertionError("the store granted a step known to refuse")
        elif code < 0:
            raise AssertionError("a step known to refuse when planned is not known any more")
        bits |= LATE_BIT if code == LATE else DEDUPE if code == DEDUPED else step.cap_bit
    return -1, bits


def _cap_bit(kind: int) -> int:
    return KEEP_FULL if kind == KEEP else BRANCH_FULL if kind == BRANCH else QUOTA


def known(al: AllocatorBase, bucket: Bucket, keys: tuple[int, ...], amount: int) -> int:
    """A known refusal's result (the floors: see :meth:`Allocator.note`), or -1 —
    without counting it."""
    fl = al.floors.get(bucket.id)
    if fl is not None:
        for k, kf in enumerate(fl):
            if kf is not None and kf[0] == keys[k] and amount >= kf[1]:
                return CAP_HIT + 2 * k + (kf[1] == 0)
    return -1


def _known_counted(al: AllocatorBase, bucket: Bucket, keys: tuple[int, ...], amount: int) -> int:
    """A known refusal's result (counted, as the walk counts it), or -1."""
    r = known(al, bucket, keys, amount)
    if r >= 0:
        al.refusals[bucket.id, bucket.caps[(r - CAP_HIT) >> 1].window] += 1
    return r


__all__ = ["Candidate", "Step", "plan", "settle"]
