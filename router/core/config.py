"""Strategy, policy and partner-book configuration, loaded from TOML and validated.

A strategy is one TOML file, optionally with the partner book in a second file named by
``partner_book``. Validation runs in two passes: msgspec checks every type and range
declared on the Structs below, then :func:`_check_semantics` checks what one field cannot
know alone (partner APR above the legal cap, an unknown partner in a consent list, ...).
Either way a failure is a :class:`~router.core.errors.ConfigError` naming the file, the field
path and the offending value, and nothing is half-loaded.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from router.core.errors import ConfigError
from router.core.messages import Base, Channel, CommercialTerms, Money, PartnerId, Probability, Rate

Window = Literal["hour", "day", "month"]
RegionPrefix = Annotated[str, Meta(pattern=r"^[0-9]{2,6}$")]
Count = Annotated[int, Meta(ge=0, le=10**12)]


class Cap(Base, kw_only=True, frozen=True):
    """A cap on one calendar window: a count of grants and/or their summed amount."""

    window: Window
    count: Count | None = None
    amount: Money | None = None


class Filters(Base, kw_only=True, frozen=True):
    """Eligibility filters shared by the primary policy, the branch and every partner.

    Unset bounds do not filter. ``regions`` are administrative-code prefixes.
    """

    min_age: Annotated[int, Meta(ge=0, le=120)] | None = None
    max_age: Annotated[int, Meta(ge=0, le=120)] | None = None
    max_pd: Probability | None = None
    min_score: Annotated[int, Meta(ge=300, le=900)] | None = None
    max_score: Annotated[int, Meta(ge=300, le=900)] | None = None
    min_amount: Money | None = None
    max_amount: Money | None = None
    min_term: Annotated[int, Meta(ge=1, le=120)] | None = None
    max_term: Annotated[int, Meta(ge=1, le=120)] | None = None
    max_inquiries_3m: Annotated[int, Meta(ge=0)] | None = None
    max_open_loans: Annotated[int, Meta(ge=0)] | None = None
    max_dti: Annotated[float, Meta(ge=0.0)] | None = None
    max_worst_dpd: Annotated[int, Meta(ge=0)] | None = None
    regions: list[RegionPrefix] = []
    channels: list[Channel] = []


class Economics(Base, kw_only=True, frozen=True):
    """The funder's economics; rates are annual fractions (0.045 = 4.5%)."""

    funding_cost: Rate
    lgd: Probability
    operating_cost: Rate
    target_margin: Rate
    legal_apr_cap: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.24
    own_apr_cap: Annotated[float, Meta(gt=0.0, le=1.0)]
    min_apr: Rate = 0.0
    ead_factor: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0


class Rules(Base, kw_only=True, frozen=True):
    """Hard rules. Global ones decline outright; funder ones remove `keep` and `branch`."""

    min_age: Annotated[int, Meta(ge=0, le=120)] = 18
    max_age: Annotated[int, Meta(ge=0, le=120)] = 70
    decline_fraud: bool = True
    licensed_regions: list[RegionPrefix] = []
    max_worst_dpd: Annotated[int, Meta(ge=0)] = 90
    max_inquiries_3m: Annotated[int, Meta(ge=0)] = 12
    max_open_loans: Annotated[int, Meta(ge=0)] = 8
    max_dti: Annotated[float, Meta(ge=0.0)] = 0.7


class ScorerRef(Base, kw_only=True, frozen=True):
    """Where a scorer's model lives; ``path`` is relative to the strategy file."""

    #: A registered scorer kind (:func:`router.scoring.scorer_kinds`).
    kind: str
    #: The model file (every kind but ``upstream``, whose PD comes with the application).
    path: str = ""
    #: The features the model reads, in its order (router/decide/features.py: the
    #: default 13, ``max_apr``, and the application's own: a lower-case name, or
    #: name=value for a one-hot flag). A model file that names its own (scorecard and
    #: trees JSON, an estimator fitted on named columns) must name these; an estimator
    #: fitted on a bare array gets them; an ``upstream`` scorer reads the one named.
    #: Unset: what the model names, else the default 13.
    features: list[str] | None = None


class Primary(Base, kw_only=True, frozen=True):
    """The funder's primary policy (outcome `keep`)."""

    scorer: str
    max_pd: Probability
    min_expected_profit: int = 0
    filters: Filters = Filters()
    caps: list[Cap] = []


class BranchPolicy(Base, kw_only=True, frozen=True):
    """The second policy branch: a risk-share co-operation product (outcome `branch`).

    The partner deposits ``reserve_rate`` of the amount and absorbs first losses; the
    funder bears ``funder_loss_share`` of what exceeds the reserve and earns either a fixed
    annual ``fixed_return`` on the balance or ``profit_share`` of the interest income.
    """

    scorer: str
    #: The co-operation partner that runs the branch (its billing account id).
    partner_id: PartnerId = "branch_partner"
    max_pd: Probability
    apr_cap: Annotated[float, Meta(gt=0.0, le=1.0)]
    reserve_rate: Annotated[float, Meta(ge=0.0, le=0.5)]
    funder_loss_share: Probability
    return_model: Literal["fixed", "share"]
    fixed_return: Rate = 0.0
    profit_share: Rate = 0.0
    funding_cost: Rate | None = None
    operating_cost: Rate = 0.0
    target_margin: Rate = 0.0
    min_expected_profit: int = 0
    filters: Filters = Filters()
    caps: list[Cap] = []


class ReturnsPolicy(Base, kw_only=True, frozen=True):
    """What lead returns a partner may make (billing): within ``window_days`` of the
    referral, for one of ``reasons``, at most ``max_rate`` of the period's referrals;
    approved at once (``auto_approve``) or held for review. An approved return gives back
    the per-lead fees charged on that referral."""

    window_days: Annotated[int, Meta(ge=0, le=365)] = 7
    max_rate: Rate = 0.05
    reasons: tuple[Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")], ...] = (
        "duplicate",
        "invalid_contact",
        "fraud",
        "outside_criteria",
    )
    auto_approve: bool = True


class Partner(Base, kw_only=True, frozen=True):
    """One partner lender of the partner book."""

    id: PartnerId
    name: str
    kind: str = "lender"
    whitelisted: bool
    timezone: str = "Asia/Shanghai"
    priority: Annotated[int, Meta(ge=0)] = 100
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1
    dedupe_days: Annotated[int, Meta(ge=0, le=3650)] = 30
    apr_min: Rate
    apr_max: Rate
    acceptance: Probability
    acceptance_pd_slope: Annotated[float, Meta(ge=0.0)] = 0.0
    funded_rate: Probability = 1.0
    terms: CommercialTerms
    returns: ReturnsPolicy = ReturnsPolicy()
    filters: Filters = Filters()
    caps: list[Cap] = []
    employer_names: list[str] = []


class ChannelPolicy(Base, kw_only=True, frozen=True):
    """Per-channel settings: which partners the channel's consent form names."""

    consent_partners: list[PartnerId] | None = None
    referral_allowed: bool = True


class Routing(Base, kw_only=True, frozen=True):
    """How one partner is chosen among the eligible ones with room."""

    #: A registered routing method (:func:`router.core.routing.routing_methods`).
    method: str = "waterfall"
    min_expected_value: int = 0


class DegradedPolicy(Base, kw_only=True, frozen=True):
    """What to answer when the quota store is unreachable, slow or failing.

    Never ``refer`` (a referral that cannot be logged must not happen). ``keep`` books
    applications the primary policy accepts without checking the funder's budget;
    ``decline`` declines everything until the store answers again.
    """

    policy: Literal["decline", "keep"] = "decline"


class Identity(Base, kw_only=True, frozen=True):
    """Where the secret key for applicant and employer hashes comes from (the variable keeps
    its historical name, ROUTER_HMAC_KEY; the hash is keyed BLAKE2b, see
    router/core/identity.py)."""

    key_env: str = "ROUTER_HMAC_KEY"
    dev_key: str | None = None


class BillingPolicy(Base, kw_only=True, frozen=True):
    """Statement periods (calendar months in each partner's time zone) close
    ``grace_days`` after they end; a later event lands on the next open statement."""

    grace_days: Annotated[int, Meta(ge=0, le=90)] = 5


class Strategy(Base, kw_only=True, frozen=True):
    """A whole strategy: economics, rules, policies, routing and the partner book."""

    version: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,40}$")]
    timezone: str = "Asia/Shanghai"
    economics: Economics
    rules: Rules = Rules()
    scorers: dict[str, ScorerRef]
    primary: Primary
    branch: BranchPolicy | None = None
    routing: Routing = Routing()
    channels: dict[Channel, ChannelPolicy] = {}
    partners: list[Partner] = []
    identity: Identity = Identity()
    degraded: DegradedPolicy = DegradedPolicy()
    billing: BillingPolicy = BillingPolicy()
    idempotency_ttl_hours: Annotated[int, Meta(ge=1, le=24 * 90)] = 48
    #: Column mapping for historical traffic: application field -> the file's column name.
    columns: dict[str, str] = {}
    partner_book: str | None = None
    base_dir: str = "."

    def partner(self, partner_id: str) -> Partner:
        """The partner with this id; :class:`ConfigError` if there is none."""
        for p in self.partners:
            if p.id == partner_id:
                return p
        raise ConfigError(f"unknown partner {partner_id!r}")

    def scorers_used(self) -> set[str]:
        """The scorers a policy reads (the others are alternatives, never loaded)."""
        return {self.primary.scorer, *([self.branch.scorer] if self.branch else [])}


def strategy_hash(strategy: Strategy) -> str:
    """SHA-256 of the strategy's content (partner book included, file locations not):
    what every decision's strategy is known by (replay summaries, the service)."""
    data = msgspec.to_builtins(strategy)
    data.pop("base_dir", None)
    data.pop("partner_book", None)
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _lookup(raw: Any, path: str) -> Any:
    """Follow a msgspec error path like ``.partners[2].terms.rev_share`` through raw data."""
    cur = raw
    for key, idx in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        try:
            cur = cur[key] if key else cur[int(idx)]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return cur


def _readable_path(raw: Any, path: str) -> str:
    """Name list items by their id where they have one: ``partners[bank_a].terms``."""
    out, cur = "", raw
    for key, idx in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        if key:
            out += ("." if out else "") + key
            cur = cur.get(key) if isinstance(cur, dict) else None
        else:
            item = cur[int(idx)] if isinstance(cur, list) and int(idx) < len(cur) else None
            label = item.get("id") if isinstance(item, dict) else None
            out += f"[{label or idx}]"
            cur = item
    return out


def strategy_from_dict(raw: dict[str, Any], *, source: str = "<dict>") -> Strategy:
    """Validate a strategy given as plain data (what TOML decodes to)."""
    try:
        strategy = msgspec.convert(raw, Strategy)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _AT.search(msg)
        if not m:
            raise ConfigError(msg, source=source) from exc
        path = m.group("path")
        value = _lookup(raw, path)
        raise ConfigError(
            f"{msg[: m.start()]} (value: {value!r})",
            source=source,
            path=_readable_path(raw, path) or "<root>",
        ) from exc
    _check_semantics(strategy, source)
    return strategy


def load_strategy(path: str | Path) -> Strategy:
    """Load and validate a strategy TOML file (and its partner book, if it names one)."""
    path = Path(path)
    raw = _read_toml(path)
    book = raw.get("partner_book")
    if book is not None:
        book_path = (path.parent / str(book)).resolve()
        book_raw = _read_toml(book_path)
        extra = set(book_raw) - {"partners"}
        if extra:
            raise ConfigError(f"unknown keys {sorted(extra)}", source=str(book_path))
        if "partners" in raw:
            raise ConfigError(
                "give partners either inline or in partner_book, not both",
                source=str(path),
                path="partners",
            )
        try:
            # Validate the book alone first so its errors name the book's file.
            msgspec.convert(book_raw, _PartnerBook)
        except msgspec.ValidationError as exc:
            m = _AT.search(str(exc))
            p = m.group("path") if m else ""
            raise ConfigError(
                f"{str(exc)[: m.start()] if m else exc} (value: {_lookup(book_raw, p)!r})",
                source=str(book_path),
                path=_readable_path(book_raw, p) or "<root>",
            ) from exc
        raw = {**raw, "partners": book_raw.get("partners", [])}
    raw.setdefault("base_dir", str(path.parent.resolve()))
    return strategy_from_dict(raw, source=str(path))


class _PartnerBook(Base, kw_only=True, frozen=True):
    partners: list[Partner] = []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    try:
        return msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"malformed TOML: {exc}", source=str(path)) from exc


def _fail(source: str, path: str, value: Any, why: str) -> None:
    raise ConfigError(f"{why} (value: {value!r})", source=source, path=path)


def _check_filters(f: Filters, where: str, source: str) -> None:
    for lo, hi in (
        ("min_age", "max_age"),
        ("min_score", "max_score"),
        ("min_amount", "max_amount"),
        ("min_term", "max_term"),
    ):
        a, b = getattr(f, lo), getattr(f, hi)
        if a is not None and b is not None and a > b:
            _fail(source, f"{where}.{lo}", a, f"must not exceed {hi}={b}")


def _check_caps(caps: list[Cap], where: str, source: str) -> None:
    seen: set[str] = set()
    for i, cap in enumerate(caps):
        if cap.count is None and cap.amount is None:
            _fail(source, f"{where}.caps[{i}]", cap.window, "a cap needs `count` or `amount`")
        if cap.window in seen:
            _fail(source, f"{where}.caps[{i}].window", cap.window, "duplicate window")
        seen.add(cap.window)


def _check_tz(name: str, where: str, source: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        _fail(source, where, name, "unknown time zone")


def _check_semantics(s: Strategy, source: str) -> None:
    """What the schema cannot say: names that must resolve, bounds between fields, the
    legal APR cap, partner ids unique and known (the first breach fails, naming it)."""
    _check_tz(s.timezone, "timezone", source)
    _check_registered(s, source)
    e = s.economics
    if s.branch is not None and s.branch.partner_id in {p.id for p in s.partners}:
        _fail(
            source,
            "branch.partner_id",
            s.branch.partner_id,
            "is also a referral partner's id (their billing accounts would mix)",
        )
    if e.own_apr_cap > e.legal_apr_cap:
        _fail(
            source,
            "economics.own_apr_cap",
            e.own_apr_cap,
            f"exceeds the legal APR cap {e.legal_apr_cap}",
        )
    if s.rules.min_age > s.rules.max_age:
        _fail(source, "rules.min_age", s.rules.min_age, f"exceeds rules.max_age={s.rules.max_age}")
    policies: list[tuple[str, Primary | BranchPolicy]] = [("primary", s.primary)]
    if s.branch is not None:
        policies.append(("branch", s.branch))
        _check_branch(s.branch, e.legal_apr_cap, source)
    for name, pol in policies:
        if pol.scorer not in s.scorers:
            _fail(
                source,
                f"{name}.scorer",
                pol.scorer,
                f"unknown scorer; defined: {sorted(s.scorers)}",
            )
        _check_filters(pol.filters, f"{name}.filters", source)
        _check_caps(pol.caps, name, source)
    ids = _check_partners(s.partners, e.legal_apr_cap, source)
    for ch, channel in s.channels.items():
        for i, pid in enumerate(channel.consent_partners or []):
            if pid not in ids:
                _fail(source, f"channels.{ch}.consent_partners[{i}]", pid, "unknown partner")


def _check_registered(s: Strategy, source: str) -> None:
    """Scorer kinds and the routing method must be registered ones."""
    from router.core.errors import ModelError
    from router.core.routing import routing_methods
    from router.decide.features import check_features
    from router.scoring import scorer_kinds

    for name, ref in s.scorers.items():
        if ref.kind not in scorer_kinds():
            _fail(
                source,
                f"scorers.{name}.kind",
                ref.kind,
                f"unknown scorer kind (known: {', '.join(scorer_kinds())})",
            )
        if not ref.path and ref.kind != "upstream":
            _fail(source, f"scorers.{name}.path", ref.path, "a model file is required")
        if ref.features is not None:
            try:
                check_features(ref.features)
            except ModelError as exc:
                _fail(source, f"scorers.{name}.features", ref.features, str(exc))
    if s.routing.method not in routing_methods():
        _fail(
            source,
            "routing.method",
            s.routing.method,
            f"unknown routing method (known: {', '.join(routing_methods())})",
        )


def _check_branch(b: BranchPolicy, legal_apr_cap: float, source: str) -> None:
    """The branch's APR cap and its return model's parameter."""
    if b.apr_cap > legal_apr_cap:
        _fail(source, "branch.apr_cap", b.apr_cap, f"exceeds the legal APR cap {legal_apr_cap}")
    if b.return_model == "fixed" and b.fixed_return <= 0:
        _fail(
            source, "branch.fixed_return", b.fixed_return, "must be > 0 when return_model = 'fixed'"
        )
    if b.return_model == "share" and b.profit_share <= 0:
        _fail(
            source, "branch.profit_share", b.profit_share, "must be > 0 when return_model = 'share'"
        )


def _check_partners(partners: list[Partner], legal_apr_cap: float, source: str) -> set[str]:
    """Each partner's id (unique), APR range, time zone, filters and caps; the ids."""
    ids: set[str] = set()
    for p in partners:
        where = f"partners[{p.id}]"
        if p.id in ids:
            _fail(source, f"{where}.id", p.id, "duplicate partner id")
        ids.add(p.id)
        if p.apr_max > legal_apr_cap:
            _fail(
                source,
                f"{where}.apr_max",
                p.apr_max,
                f"partner APR exceeds the legal cap {legal_apr_cap}",
            )
        if p.apr_min > p.apr_max:
            _fail(source, f"{where}.apr_min", p.apr_min, f"exceeds apr_max={p.apr_max}")
        _check_tz(p.timezone, f"{where}.timezone", source)
        _check_filters(p.filters, f"{where}.filters", source)
        _check_caps(p.caps, where, source)
    return ids
