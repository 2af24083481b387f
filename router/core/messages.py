"""Typed messages: the application coming in, the decision going out, ledger entries.

The types are the schema. Constraints live in the annotations (``Meta``) and are enforced
by msgspec when decoding JSON/MessagePack or converting Python objects; the columnar
replay path enforces the very same constraints by reading them from these types
(see :mod:`router.core.columns`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from router.core.errors import InputError
from router.core.redact import mask, shown, shown_repr


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Shared base: unknown fields are an error, fields are keyword-only, values immutable."""


#: Identifiers that are safe inside Redis keys and cluster hash tags.
Ident = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
PartnerId = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")]
Channel = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")]
RegionCode = Annotated[str, Meta(pattern=r"^[0-9]{6}$")]
#: Integer minor units (fen / cents); bounded well below 2**53 so every store keeps them exact.
Money = Annotated[int, Meta(ge=0, le=10**13)]
Rate = Annotated[float, Meta(ge=0.0, le=1.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]


#: An application feature's name (router/decide/features.py) and a categorical value.
FeatureName = Annotated[str, Meta(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]
FeatureText = Annotated[str, Meta(min_length=1, max_length=64)]


class Application(Base, kw_only=True, frozen=True):
    """One loan application as the funder receives it.

    Exactly one of ``applicant_token`` (already a keyed hash made by the caller) and
    ``national_id`` (a raw identifier, hashed on arrival and never stored) must be given.
    ``consent`` is ``"none"``, ``"any"`` (any whitelisted partner) or a list of partner ids.
    ``defaulted``, ``true_pd`` and the partner's result (``partner_accepted``,
    ``partner_funded``, ``funded_amount``, ``referred_partner``) are outcome columns of
    generated or historical traffic: carried for evaluation, never used by the decision.
    """

    application_id: Ident
    received_at: AwareDatetime
    channel: Channel
    applicant_token: Annotated[str, Meta(pattern=r"^[0-9a-f]{16,64}$")] | None = None
    national_id: Annotated[str, Meta(min_length=4, max_length=64)] | None = None
    age: Annotated[int, Meta(ge=0, le=120)]
    monthly_income: Money
    bureau_score: Annotated[int, Meta(ge=300, le=900)]
    inquiries_3m: Annotated[int, Meta(ge=0, le=500)]
    open_loans: Annotated[int, Meta(ge=0, le=500)]
    dti: Annotated[float, Meta(ge=0.0, le=20.0)]
    worst_dpd_12m: Annotated[int, Meta(ge=0, le=3650)]
    region: RegionCode
    employer: Annotated[str, Meta(max_length=128)] | None = None
    requested_amount: Annotated[int, Meta(gt=0, le=10**11)]
    term_months: Annotated[int, Meta(ge=1, le=120)]
    max_apr: Annotated[float, Meta(gt=0.0, le=1.0)]
    consent: Literal["none", "any"] | list[PartnerId] = "none"
    fraud_flag: bool = False
    defaulted: bool | None = None
    true_pd: Probability | None = None
    partner_accepted: bool | None = None
    partner_funded: bool | None = None
    funded_amount: Money | None = None
    referred_partner: PartnerId | None = None
    #: The lender's own inputs for its model (router/decide/features.py): a number, or a
    #: category as text (read by one-hot ``name=value`` features). Only what the
    #: strategy's scorers name is read.
    features: Annotated[dict[FeatureName, float | FeatureText], Meta(max_length=256)] = {}

    def __post_init__(self) -> None:
        if (self.applicant_token is None) == (self.national_id is None):
            raise ValueError("exactly one of `applicant_token` and `national_id` must be set")

    def __hash__(self) -> int:
        # Frozen, so hashable as before ``features`` (a dict) was added: by every field,
        # the features as their sorted items.
        fields = msgspec.structs.astuple(self)
        return hash((*fields[:-1], tuple(sorted(self.features.items()))))


class _DecisionBase(Base, tag_field="outcome", kw_only=True, frozen=True):
    decision_id: str
    application_id: str
    strategy_version: str
    pd: Probability
    apr: Rate | None
    coverage_margin: float | None
    reasons: tuple[str, ...] = ()
    degraded: bool = False


class Keep(_DecisionBase, tag="keep", kw_only=True, frozen=True):
    """The funder books the loan under its primary policy."""

    expected_profit: int


class Branch(_DecisionBase, tag="branch", kw_only=True, frozen=True):
    """The second policy branch (co-operation product) takes the loan."""

    expected_profit: int


class Refer(_DecisionBase, tag="refer", kw_only=True, frozen=True):
    """The application is passed, with consent, to one whitelisted partner."""

    partner_id: str
    expected_value: int


class Decline(_DecisionBase, tag="decline", kw_only=True, frozen=True):
    """Nothing fits; ``reasons`` say why."""


Decision = Keep | Branch | Refer | Decline


class CommercialTerms(Base, kw_only=True, frozen=True):
    """A partner's commercial terms: fees in minor units and a revenue share of interest."""

    fee_per_referral: Money = 0
    fee_per_accepted: Money = 0
    fee_per_funded: Money = 0
    rev_share: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0


class ReferralEntry(Base, kw_only=True, frozen=True):
    """One line of the append-only referral ledger (billing reads these, exactly once)."""

    referral_id: str
    decision_id: str
    application_id: str
    partner_id: str
    event_time_ms: int
    amount: Money
    term_months: int
    applicant_hash: str
    terms: CommercialTerms
    expected_value: int
    strategy_version: str
    #: ``refer`` (a partner referral) or ``branch`` (a loan of the risk-share branch,
    #: billed to the branch partner's reserve and return accounts).
    outcome: Literal["refer", "branch"] = "refer"


_app_decoder = msgspec.json.Decoder(Application)
_check_enc = msgspec.msgpack.Encoder()
_check_dec = msgspec.msgpack.Decoder(Application)
_FIELD = re.compile(r"at `\$\.(\w+)")
#: Event times the stores accept: from 2000 to 2100 (a 1969 or a year-3000 timestamp is
#: a bug upstream, not an application).
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def validate_application(app: object) -> Application:
    """Check an application however it was built (msgspec validates when decoding, not in
    ``Application(...)``): returns it, or raises :class:`InputError` naming the field and,
    unless it is a personal identifier, the value."""
    trusted = _TRUSTED.get(id(app))
    if trusted is not None and trusted is app:  # decoded here: validated already
        return trusted
    if type(app) is not Application:
        raise InputError(
            f"expected an Application (value: {type(app).__name__})", field="application"
        )
    try:
        _check_dec.decode(_check_enc.encode(app))
    except msgspec.ValidationError as exc:
        m = _FIELD.search(str(exc))
        name = m.group(1) if m else None
        raise InputError(_problem(app, name, str(exc)), field=name) from None
    except (OverflowError, msgspec.EncodeError, TypeError) as exc:
        name = next(
            (
                f
                for f in app.__struct_fields__
                if type(getattr(app, f)) is int and not -(2**63) <= getattr(app, f) < 2**64
            ),
            None,
        )
        raise InputError(
            _problem(app, name, f"not a supported value ({exc})"), field=name
        ) from None
    if not _EARLIEST <= app.received_at < _LATEST:
        raise InputError(
            _problem(app, "received_at", "must be from 2000-01-01 to 2100-01-01"),
            field="received_at",
        )
    return _trust(app)  # (frozen: valid now, valid when the router checks it again)


_check_many_dec = msgspec.msgpack.Decoder(list[Application])


def validate_applications(apps: Sequence[object]) -> None:
    """:func:`validate_application` for every application of a batch, checked together
    (one encode and one decode for those not decoded here: about half the cost of one by
    one); the first invalid one raises, as :func:`validate_application` would."""
    unchecked: list[Application] = []
    for app in apps:
        trusted = _TRUSTED.get(id(app))
        if trusted is None or trusted is not app:
            if not isinstance(app, Application) or type(app) is not Application:
                validate_application(app)  # (raises)
                continue
            unchecked.append(app)
    if not unchecked:
        return
    try:
        _check_many_dec.decode(_check_enc.encode(unchecked))
    except (msgspec.ValidationError, OverflowError, msgspec.EncodeError, TypeError):
        for app in unchecked:  # the first bad one raises, naming its field
            validate_application(app)
        raise  # (not reached: one of them was invalid)
    for app in unchecked:
        if not _EARLIEST <= app.received_at < _LATEST:
            validate_application(app)  # (raises)
        _trust(app)


def _problem(app: Application, name: str | None, why: str) -> str:
    who = shown("application_id", app.application_id) if type(app.application_id) is str else "?"
    where = f"application {who[:64]!r}" + (" (id truncated)" if len(who) > 64 else "")
    if name is None:
        return f"invalid {where}: {why}"
    value = shown_repr(name, getattr(app, name, None))
    return f"invalid {where}: {name}: {why.split(' - at ')[0]} (value: {value})"


_decision_decoder = msgspec.json.Decoder(Decision)
_encoder = msgspec.json.Encoder()


#: Applications this module decoded or validated recently, by identity: the router's
#: boundary check skips them (an Application is frozen: valid once, valid still). Holding
#: the object keeps its id from being reused.
_TRUSTED: dict[int, Application] = {}
_TRUSTED_MAX = 4096


def _trust(app: Application) -> Application:
    if len(_TRUSTED) >= _TRUSTED_MAX:
        _TRUSTED.pop(next(iter(_TRUSTED)))
    _TRUSTED[id(app)] = app
    return app


def decode_application(data: bytes | str) -> Application:
    """Decode one JSON application, raising :class:`InputError` naming the bad field and
    its value (personal identifiers withheld)."""
    try:
        return _trust(_app_decoder.decode(data))
    except msgspec.ValidationError as exc:
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raw = None
        raise _invalid(exc, raw) from None
    except msgspec.DecodeError as exc:
        raise InputError(f"malformed application JSON: {mask(str(exc))}") from None


def convert_application(obj: object) -> Application:
    """Build an :class:`Application` from a mapping, validating every field."""
    try:
        return _trust(msgspec.convert(obj, Application))
    except msgspec.ValidationError as exc:
        raise _invalid(exc, obj) from None


def _invalid(exc: msgspec.ValidationError, raw: object) -> InputError:
    """The validation error with the offending value appended (never a secret field's)."""
    text = mask(str(exc))  # (msgspec may quote the refused value)
    m = _FIELD.search(text)
    name = m.group(1) if m else None
    if name is None or not isinstance(raw, dict) or name not in raw:
        return InputError(f"invalid application: {text}", field=name)
    value = shown_repr(name, raw[name])
    return InputError(f"invalid application: {text} (value: {value})", field=name)


def decode_decision(data: bytes | str) -> Decision:
    """Decode a JSON decision (tagged by ``outcome``)."""
    return _decision_decoder.decode(data)


def encode(obj: object) -> bytes:
    """Encode any message as JSON bytes."""
    return _encoder.encode(obj)
