"""Partner postbacks: typed events, read from JSON Lines or CSV.

Each event names the partner's own ``event_id`` (the idempotency key: the same id with the
same content is a no-op, with other content a conflict), the ``referral_id`` from the
referral the partner received, and when it happened (``occurred_at``, an aware time).
Money is integer minor units; rates are annual fractions.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from router.core.errors import BillingError, InputError
from router.core.messages import AwareDatetime, Base, Money, PartnerId, Rate

EventId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
ReferralId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
Reason = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")]


class _Event(Base, tag_field="type", kw_only=True, frozen=True):
    event_id: EventId
    partner_id: PartnerId
    referral_id: ReferralId
    occurred_at: AwareDatetime


class Accepted(_Event, tag="accepted", kw_only=True, frozen=True):
    """The partner approved the referred applicant (charges ``fee_per_accepted``)."""


class Rejected(_Event, tag="rejected", kw_only=True, frozen=True):
    """The partner declined the referred applicant."""

    reason: Reason | None = None


class Funded(_Event, tag="funded", kw_only=True, frozen=True):
    """The partner paid out the loan (charges ``fee_per_funded``; implies accepted)."""

    amount: Annotated[int, Meta(gt=0, le=10**13)]
    apr: Rate
    term_months: Annotated[int, Meta(ge=1, le=120)]


class Repayment(_Event, tag="repayment", kw_only=True, frozen=True):
    """Interest and principal the partner collected on the loan in one repayment period
    (the revenue share is charged on ``interest``)."""

    period: Annotated[str, Meta(pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$")]
    interest: Money
    principal: Money


class ChargeOff(_Event, tag="charge_off", kw_only=True, frozen=True):
    """The loan's outstanding ``principal`` was written off."""

    principal: Money


class Return(_Event, tag="return", kw_only=True, frozen=True):
    """The partner returns the lead (asks for its fees back) for ``reason``."""

    reason: Reason


Postback = Accepted | Rejected | Funded | Repayment | ChargeOff | Return
TYPES = ("accepted", "rejected", "funded", "repayment", "charge_off", "return")

_dec = msgspec.json.Decoder(Postback)
_enc = msgspec.json.Encoder(order="sorted")


def event_type(event: Postback) -> str:
    """The event's ``type`` tag (``"funded"``...)."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def canonical(event: Postback) -> bytes:
    """The event's canonical JSON (sorted keys): what its content hash is taken over."""
    return _enc.encode(event)


def content_hash(event: Postback) -> str:
    """SHA-256 of the canonical JSON: equal for the same content however it was written."""
    return hashlib.sha256(canonical(event)).hexdigest()


def decode_postback(data: bytes | str) -> Postback:
    """One JSON postback, or :class:`InputError` naming the field."""
    try:
        return _dec.decode(data)
    except msgspec.ValidationError as exc:
        raise InputError(f"invalid postback: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InputError(f"malformed postback JSON: {exc}") from None


#: CSV columns by event type (beyond type, event_id, partner_id, referral_id, occurred_at).
_INTS = {"amount", "term_months", "interest", "principal"}
_FLOATS = {"apr"}


def _from_row(row: dict[str, str]) -> Postback:
    data: dict[str, object] = {}
    for k, v in row.items():
        if k is None:
            raise InputError("more values than columns")
        v = (v or "").strip()
        if v == "":
            continue
        try:
            data[k] = int(v) if k in _INTS else float(v) if k in _FLOATS else v
        except ValueError:
            raise InputError(f"invalid postback: {k}: not a number (value: {v!r})") from None
    try:
        return msgspec.convert(data, Postback)
    except msgspec.ValidationError as exc:
        raise InputError(f"invalid postback: {exc}") from None


def read_postbacks(path: str | Path) -> Iterator[tuple[int, Postback | InputError]]:
    """(line number, event or the problem with that line) for every line of a JSON Lines
    (``.jsonl``/``.json``) or CSV (``.csv``, with a header) file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BillingError(f"cannot read postbacks {str(p)!r}: {exc}") from None
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            try:
                yield reader.line_num, _from_row(row)
            except InputError as exc:
                yield reader.line_num, exc
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, decode_postback(line)
            except InputError as exc:
                yield n, exc
