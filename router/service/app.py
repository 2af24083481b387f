"""The decision service: the embedded router one HTTP call away (Litestar, msgspec native).

Endpoints (the OpenAPI document is at ``/schema/openapi.json``):

- ``POST /v1/decisions`` — one application (scope ``decide``), answered with its decision;
- ``GET /v1/decisions/{application_id}`` — the decision stored for it (scope ``read``;
  404 when there is none), for audit and for a caller's retry by id;
- ``POST /v1/decisions/batch`` — up to ``max_batch`` applications decided together, their
  reservations pipelined to the store (concurrent applications: arrival order inside the
  batch is not kept);
- ``POST /v1/admin/reload`` (scope ``admin``) — load the strategy file again now (it is
  also looked at once a second): a bad one is refused and the old one stays in force;
- a shadow challenger (``shadow_*`` settings, router/service/shadow.py), decided after
  the answer is sent for a share of applicants and logged beside the champion;
- ``POST /v1/postbacks`` — a partner's postback events, signed with its own secret
  (router/service/partner_auth.py), into the billing database;
- ``GET /v1/partner/referrals/{application_id}`` — a partner reads a referral made to it
  (signed likewise); another partner's referral is a 404, as if it did not exist;
- ``GET /healthz`` (the process is up), ``GET /readyz`` (strategy loaded, store reachable),
  ``GET /metrics`` (Prometheus).

Every ``/v1`` call presents an API key (``Authorization: Bearer KEY``,
:mod:`router.service.keys`): none or an unknown one is a 401, a key without the scope a
403 — before the body is read, so nothing reaches the store or the ledger. A malformed
body is a 400 and an application that fails validation a 422, each naming the field
(personal identifiers are never echoed); a body over ``max_body_bytes`` a 413.

Deadlines: every decision has the service's ``deadline_ms`` as its store budget, or the
request's shorter ``X-Deadline-Ms``; past it — or with the store down — the answer is the
degraded decision of the store contract (a decline marked ``degraded``), never an error
page, and a referral the caller is not told about is never ledgered
(router/store/base.py). The event loop keeps accepting requests while a store round trip
is in flight: concurrent single decisions are gathered into pipelined batches
(router/service/coalesce.py; ``coalesce = 1`` decides each on its own). On one Redis
server every store call is awaited on the loop itself (``Router.adecide`` and
``adecide_batch``: redis-py's asyncio connection, no thread); other network stores decide
in a worker thread.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, JSONBody

from router.core.config import Strategy, load_strategy, strategy_hash
from router.core.errors import ConfigError, IdempotencyConflict, InputError, RouterError
from router.core.logs import configure, get_logger
from router.core.messages import Application, Decision, Ident, validate_application
from router.decide.engine import Router
from router.service.coalesce import Coalescer
from router.service.keys import KeyRing
from router.service.metrics import ServiceMetrics
from router.service.partner_auth import PartnerSecrets
from router.service.shadow import Shadow
from router.store import quota_store_from_url
from router.store.registry import store_kind

_log = get_logger("service")


@dataclass(frozen=True)
class Settings:
    """How a service runs (``referral-router serve`` options)."""

    strategy: str
    store: str = "memory://"
    #: The API key file (router/service/keys.py).
    api_keys: str | None = None
    #: Each store call's budget; past it the answer is degraded.
    deadline_ms: int = 50
    max_body_bytes: int = 1 << 20
    max_batch: int = 1000
    #: Concurrent ``POST /v1/decisions`` requests decided together in pipelined batches
    #: of at most this many (router/service/coalesce.py); 1 decides each on its own,
    #: awaiting its store call on the event loop (``Router.adecide``).
    coalesce: int = 64
    #: A challenger decided beside the champion for a share of applicants, logged to
    #: ``shadow_log`` (router/service/shadow.py); all three or none.
    shadow_strategy: str | None = None
    shadow_share: float = 0.0
    shadow_log: str | None = None
    #: Partner postbacks (``POST /v1/postbacks``): the billing database and the partners'
    #: signing secrets (router/service/partner_auth.py); both or neither.
    billing_db: str | None = None
    partner_secrets: str | None = None

    def to_env(self) -> str:
        """As JSON, for worker processes (``ROUTER_SERVICE``)."""
        return msgspec.json.encode(self.__dict__).decode()


class Error(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An error answer: what went wrong and, for bad input, where."""

    error: str
    detail: str
    field: str | None = None


class _State:
    """What the handlers share: the router in force, the keys, the counters.

    The strategy file (and its partner book) is watched: at most once a second a request
    looks at their modification times, and a changed file is loaded; a strategy that
    loads replaces the router for the requests that start after it (those in flight
    finish on the old one; both share the store, so quotas carry over), and one that
    does not is refused, logged and counted, and the old one stays in force.
    ``POST /v1/admin/reload`` loads it at once and says which happened.
    """

    def __init__(self, settings: Settings, keys: KeyRing):
        self.settings = settings
        self.keys = keys
        self.metrics = ServiceMetrics()
        self._lock = threading.Lock()
        strategy = load_strategy(settings.strategy)
        # (a network store gets the deadline; an in-process one never waits)
        deadline = {"timeout_ms": settings.deadline_ms} if store_kind(settings.store).shared else {}
        store = quota_store_from_url(settings.store, **deadline)
        self._install(strategy, Router(strategy, store))
        self.coalescer = Coalescer(self.current, settings.coalesce)
        self._stamp = self._file_stamp()
        self._next_look = time.monotonic() + 1.0
        self.billing: Any = None
        self.partners: PartnerSecrets | None = None
        if settings.billing_db and not settings.partner_secrets:
            raise ConfigError("postbacks need the partners' secrets beside the billing database")
        if settings.partner_secrets:  # partners read their referrals; with billing, post too
            self.partners = PartnerSecrets.from_file(settings.partner_secrets)
        if settings.billing_db:
            from router.billing.db import open_billing

            self.billing = open_billing(settings.billing_db)
        self.shadow: Shadow | None = None
        if settings.shadow_strategy or settings.shadow_log:
            if not (settings.shadow_strategy and settings.shadow_log):
                raise ConfigError("a shadow challenger needs its strategy, share and log")
            self.shadow = Shadow(settings.shadow_strategy, settings.shadow_share,
                                 settings.shadow_log, self.router.hasher)  # fmt: skip

    def _install(self, strategy: Strategy, router: Router) -> None:
        self.strategy, self.router, self.hash = strategy, router, strategy_hash(strategy)
        self.metrics.strategy.clear()
        self.metrics.strategy.labels(strategy.version, self.hash).set(1)

    def _file_stamp(self) -> tuple:
        paths = [Path(self.settings.strategy)]
        if self.strategy.partner_book:
            paths.append(Path(self.settings.strategy).parent / self.strategy.partner_book)
        return tuple(p.stat().st_mtime_ns if p.exists() else None for p in paths)

    def current(self) -> Router:
        """The router for a request starting now (the strategy file looked at, at most
        once a second)."""
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + 1.0
            if self._file_stamp() != self._stamp:
                self.reload()
        return self.router

    def reload(self) -> tuple[bool, str | None]:
        """Load the strategy file again: (whether the strategy changed, the error that
        kept the old one in force, or None)."""
        with self._lock:
            self._stamp = self._file_stamp()
            try:
                strategy = load_strategy(self.settings.strategy)
                router = Router(strategy, self.router.store)  # (the same store: quotas carry over)
            except RouterError as exc:
                self.metrics.reloads.labels("refused").inc()
                _log.error("strategy.refused", error=str(exc), kept=self.strategy.version)
                return False, str(exc)
            changed = strategy_hash(strategy) != self.hash
            if changed:
                old = self.strategy.version
                self._install(strategy, router)
                _log.info("strategy.loaded", version=strategy.version, hash=self.hash, was=old)
            self.metrics.reloads.labels("loaded" if changed else "unchanged").inc()
            return changed, None


def _needs(scope: str):
    """A check run before the handler: a valid API key with ``scope`` (401 without one, 403
    without the scope), before the body is read or parsed."""

    # (A before-request hook, not a Litestar guard: Litestar copies the route handler object
    # for every guard call, about 6 % of a worker's CPU per decision, for a dictionary lookup.
    # Like a guard, it runs before the request's body is read.)
    async def check(request: Request) -> None:
        state: _State = request.app.state.service
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        key = state.keys.check(presented.strip() if scheme.lower() == "bearer" else None)
        if key is None:
            state.metrics.rejected.labels("unauthorized").inc()
            raise NotAuthorizedException("a valid API key is required (Authorization: Bearer)")
        if scope not in key.scopes:
            state.metrics.rejected.labels("forbidden").inc()
            raise PermissionDeniedException(f"this API key may not {scope}")
        request.scope["state"]["caller"] = key.id

    return check


def _service(request: Request) -> _State:
    return request.app.state.service


@post("/v1/decisions", before_request=_needs("decide"), status_code=200)
async def decide(request: Request, data: JSONBody[Application]) -> Response[Decision]:
    """Decide one application."""
    state = _service(request)
    t = time.perf_counter()
    validate_application(data)
    deadline = _deadline(state, request)
    if state.settings.coalesce > 1:
        decision = await state.coalescer.decide(data, deadline)
    else:
        # On one Redis server the store call is awaited right here (no worker thread).
        decision = await state.current().adecide(data, deadline_ms=deadline)
    _answered(state, request, [decision], t, "one")
    return Response(decision, background=_shadowed(state, [data], [decision]))


@post("/v1/decisions/batch", before_request=_needs("decide"), status_code=200)
async def decide_batch(
    request: Request, data: JSONBody[list[Application]]
) -> Response[list[Decision]]:
    """Decide several applications together (their reservations pipelined)."""
    state = _service(request)
    if len(data) > state.settings.max_batch:
        state.metrics.rejected.labels("batch_too_big").inc()
        raise InputError(
            f"a batch holds at most {state.settings.max_batch} applications (value: {len(data)})",
            field="$",
        )
    t = time.perf_counter()
    for i, app in enumerate(data):
        try:
            validate_application(app)
        except InputError as exc:
            exc.row = i
            raise
    deadline = _deadline(state, request)
    decisions = await asyncio.to_thread(
        state.current().decide_batch, data, pipelined=True, deadline_ms=deadline
    )
    _answered(state, request, decisions, t, "batch")
    return Response(decisions, background=_shadowed(state, data, decisions))


#: A request's own store budget in milliseconds, when shorter than the service's.
DEADLINE_HEADER = "x-deadline-ms"


def _deadline(state: _State, request: Request) -> float | None:
    """The request's ``X-Deadline-Ms`` (a whole number of milliseconds, 1 or more, at most
    12 digits; above the service's ``deadline_ms`` it is that), or None: the service's
    own."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12 and 0 < int(raw)):
        message = f"a whole number of milliseconds, 1 or more (value: {raw[:40]!r})"
        raise ValidationException(
            f"header X-Deadline-Ms: {message}", extra=[{"key": "X-Deadline-Ms", "message": message}]
        )
    return float(min(int(raw), state.settings.deadline_ms))


def _shadowed(
    state: _State, apps: list[Application], decisions: list[Decision]
) -> BackgroundTask | None:
    """The challenger's decisions of these applications, after the answer is sent."""
    if state.shadow is None:
        return None
    return BackgroundTask(asyncio.to_thread, state.shadow.decide, apps, decisions)


def _answered(
    state: _State, request: Request, decisions: list[Decision], t: float, endpoint: str
) -> None:
    """Count and log what was answered (one log line a decision; no personal data)."""
    elapsed = time.perf_counter() - t
    state.metrics.observe(endpoint, elapsed)
    state.metrics.count(decisions)
    caller = request.scope["state"].get("caller")
    for d in decisions:
        _log.info(
            "decision",
            decision_id=d.decision_id,
            application_id=d.application_id,
            outcome=d.__struct_config__.tag,
            partner=getattr(d, "partner_id", None),
            degraded=d.degraded,
            latency_ms=round(elapsed * 1000, 3),
            strategy=d.strategy_version,
            caller=caller,
        )


@get("/v1/decisions/{application_id:str}", before_request=_needs("read"))
async def stored(request: Request, application_id: FromPath[str]) -> Decision:
    """The decision stored for an application id (404 if none: never decided, or past
    the idempotency TTL); it reserves nothing."""
    state = _service(request)
    _check_id(application_id)
    found = await asyncio.to_thread(state.current().stored_decision, application_id)
    if found is None:
        raise NotFoundException(f"no decision stored for application {application_id!r}")
    return found


def _check_id(application_id: str) -> None:
    try:
        msgspec.convert(application_id, Ident)
    except msgspec.ValidationError:
        raise InputError(
            f"field `application_id`: not an application id (value: {application_id[:80]!r})",
            field="application_id",
        ) from None


class Verdict(msgspec.Struct, kw_only=True):
    """What became of one postback event."""

    event_id: str
    status: str  # applied | waiting | review | refused | duplicate | conflict
    reason: str = ""


@post("/v1/postbacks", status_code=200)
async def postbacks(request: Request) -> list[Verdict]:
    """A partner's postback events (one JSON event, or a list), signed with its secret
    (router/service/partner_auth.py): 401 unsigned, badly signed or outside the time
    window, 403 when an event names another partner — nothing is ingested then; else
    each event's verdict (applied, waiting, review, refused, duplicate, conflict)."""
    from router.billing.postbacks import Postback

    state = _service(request)
    if state.partners is None or state.billing is None:
        raise NotFoundException("this service takes no postbacks (no --billing-db)")
    body = await request.body()
    partner = _signed_by(state, request, body, "postback")
    try:
        raw = msgspec.json.decode(body)
        events = msgspec.convert(raw if isinstance(raw, list) else [raw], list[Postback])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        state.metrics.rejected.labels("malformed").inc()
        raise ValidationException(str(exc)) from None
    others = sorted({e.partner_id for e in events} - {partner})
    if others:
        state.metrics.rejected.labels("forbidden").inc()
        raise PermissionDeniedException(f"events of another partner (value: {others!r})")
    verdicts = await asyncio.to_thread(_ingest, state, events)
    return [Verdict(event_id=v.event_id, status=v.status, reason=v.reason) for v in verdicts]


def _signed_by(state: _State, request: Request, signed: bytes, what: str) -> str:
    """The partner whose signature over ``signed`` the request carries
    (router/service/partner_auth.py); 401 without a valid one."""
    assert state.partners is not None
    h = request.headers
    partner = h.get("x-partner-id", "")
    why = state.partners.check(partner, h.get("x-timestamp", ""), h.get("x-signature", ""),
                               signed, time.time())  # fmt: skip
    if why:
        state.metrics.rejected.labels("unauthorized").inc()
        raise NotAuthorizedException(f"{what} not accepted: {why}")
    return partner


class PartnerReferral(msgspec.Struct, kw_only=True):
    """What a partner may read of a referral made to it: not the lender's risk figures."""

    application_id: str
    decision_id: str
    partner_id: str
    apr: float | None
    strategy_version: str


@get("/v1/partner/referrals/{application_id:str}")
async def partner_referral(request: Request, application_id: FromPath[str]) -> PartnerReferral:
    """A partner reads a referral made to it, signed with its own secret over the request
    line (``GET /v1/partner/referrals/ID``, router/service/partner_auth.py). 404 when the
    application was not referred to this partner — never decided, kept, declined or
    referred to another partner all look alike, so no partner learns of another's."""
    state = _service(request)
    if state.partners is None:
        raise NotFoundException("this service serves no partners (no --partner-secrets)")
    line = f"GET {request.scope['path']}".encode()
    partner = _signed_by(state, request, line, "request")
    _check_id(application_id)
    found = await asyncio.to_thread(state.current().stored_decision, application_id)
    referred_to = getattr(found, "partner_id", None)
    if found is None or referred_to != partner:
        if referred_to is not None:  # another partner's: counted, answered as if absent
            state.metrics.rejected.labels("forbidden").inc()
        raise NotFoundException(f"no referral of yours for application {application_id!r}")
    return PartnerReferral(application_id=found.application_id, decision_id=found.decision_id,
                           partner_id=partner, apr=getattr(found, "apr", None),
                           strategy_version=found.strategy_version)  # fmt: skip


def _ingest(state: _State, events: list) -> list:
    from router.billing.book import BillingBook
    from router.billing.db import writing
    from router.billing.postback_rules import ingest_events

    book = BillingBook.from_strategy(state.strategy)
    with writing(state.billing) as conn:
        return ingest_events(conn, events, book, int(time.time() * 1000))


class Reloaded(msgspec.Struct, kw_only=True):
    """The strategy in force after a reload, and whether it changed."""

    changed: bool
    strategy_version: str
    strategy_hash: str


@post("/v1/admin/reload", before_request=_needs("admin"), status_code=200)
async def reload(request: Request) -> Reloaded:
    """Load the strategy file again now: 200 with the strategy in force (``changed``:
    whether it is a new one), or 422 naming what is wrong with the file, the old strategy
    still in force."""
    state = _service(request)
    changed, error = await asyncio.to_thread(state.reload)
    if error is not None:
        raise ConfigError(error)
    return Reloaded(changed=changed, strategy_version=state.strategy.version,
                    strategy_hash=state.hash)  # fmt: skip


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True)
def readyz(request: Request) -> Response[dict[str, Any]]:
    """Ready to decide: the strategy is loaded and the store answers."""
    state = _service(request)
    ok = state.router.store.reachable()
    body = {
        "status": "ready" if ok else "store unreachable",
        "strategy_version": state.strategy.version,
        "strategy_hash": state.hash,
    }
    return Response(body, status_code=200 if ok else 503)


@get("/metrics", sync_to_thread=False, media_type="text/plain; version=0.0.4")
def metrics(request: Request) -> bytes:
    """Prometheus metrics."""
    return _service(request).metrics.render()


def _error(status: int, error: str, detail: str, field: str | None = None) -> Response[Error]:
    return Response(Error(error=error, detail=detail, field=field), status_code=status)


def _on_input_error(request: Request, exc: InputError) -> Response[Error]:
    _service(request).metrics.rejected.labels("invalid").inc()
    field = exc.field if exc.row is None else f"[{exc.row}].{exc.field}"
    return _error(422, "invalid_application", str(exc), field)


def _on_validation(request: Request, exc: ValidationException) -> Response[Error]:
    # msgspec's messages name the path and the expected type, never the value.
    _service(request).metrics.rejected.labels("malformed").inc()
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    detail = str(first.get("message") or exc.detail)
    field = first.get("key")
    return _error(400, "malformed_request", detail, str(field) if field else None)


def _on_config_error(request: Request, exc: ConfigError) -> Response[Error]:
    state = _service(request)
    return _error(422, "invalid_strategy", f"{exc} (still in force: {state.strategy.version})")


def _on_conflict(request: Request, exc: IdempotencyConflict) -> Response[Error]:
    _service(request).metrics.rejected.labels("conflict").inc()
    return _error(409, "idempotency_conflict", str(exc), "application_id")


def _on_http(request: Request, exc: HTTPException) -> Response[Error]:
    names = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
             413: "too_large"}  # fmt: skip
    if exc.status_code == 413:
        _service(request).metrics.rejected.labels("too_large").inc()
    return _error(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail))


def create_app(settings: Settings, keys: KeyRing | None = None) -> Litestar:
    """The service for ``settings`` (``keys``: instead of ``settings.api_keys``'s file).
    A service without any key refuses to start: it would answer no one."""
    if keys is None:
        if not settings.api_keys:
            raise ConfigError("the service needs an API key file (--api-keys)")
        keys = KeyRing.from_file(settings.api_keys)
    if not len(keys):
        raise ConfigError("the API key file holds no key")
    state = _State(settings, keys)

    def close() -> None:
        state.router.close()
        if state.shadow is not None:
            state.shadow.close()
        if state.billing is not None:
            state.billing.dispose()

    def settle_heap() -> None:
        _warm_up(state.router)
        # Everything built so far (strategy, models, compiled code, the framework) lives as
        # long as the process: out of the collector's sight, a full collection scans only
        # what requests allocate — 75-115 ms pauses every few seconds under load before,
        # each one a p99 of its own.
        gc.collect()
        gc.freeze()

    return Litestar(
        [
            decide,
            decide_batch,
            stored,
            reload,
            postbacks,
            partner_referral,
            healthz,
            readyz,
            metrics,
        ],
        state=_app_state(state),
        on_startup=[settle_heap],
        on_shutdown=[close],
        exception_handlers={
            InputError: _on_input_error,
            ValidationException: _on_validation,
            IdempotencyConflict: _on_conflict,
            ConfigError: _on_config_error,
            HTTPException: _on_http,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="referral-router", version="1"),
        logging_config=None,
    )


def _warm_up(router: Router) -> None:
    """Decide some generated applications, alone and in a batch, with the router's models
    on a throwaway in-memory store: what a worker loads and compiles on its first
    decisions of each kind (lazy imports, compiled kernels, caches) is loaded before it
    serves — measured, the first batch in a fresh worker took 200-800 ms. Nothing reaches
    the real store; a strategy the samples do not fit only warms less."""
    import tempfile

    import msgspec

    from router.core.messages import decode_application
    from router.traffic import write_traffic

    try:
        with tempfile.TemporaryDirectory() as tmp:
            lines = write_traffic(Path(tmp) / "warm.jsonl", 65, seed=1, per_day=65 * 24)
            apps = []
            for line in lines.read_bytes().splitlines():
                raw = msgspec.json.decode(line)
                raw["consent"] = "any"  # (the generator's partner ids may not be the strategy's)
                apps.append(decode_application(msgspec.json.encode(raw)))
        scratch = Router(router.strategy, quota_store_from_url("memory://"),
                         scorers=router.scorers, hasher=router.hasher)  # fmt: skip
        scratch.decide(apps[0])
        scratch.decide_batch(apps[1:], pipelined=True)
        scratch.close()
    except RouterError as exc:
        _log.info("service.warm_up_partial", error=str(exc))


def _app_state(state: _State) -> Any:
    from litestar.datastructures import State

    return State({"service": state})


def app_from_env() -> Litestar:
    """The app for a worker process of ``referral-router serve`` (settings in
    ``ROUTER_SERVICE``, as :meth:`Settings.to_env` wrote them)."""
    raw = os.environ.get("ROUTER_SERVICE")
    if not raw:
        raise ConfigError("ROUTER_SERVICE is not set (start the service with `serve`)")
    # One JSON line a decision, personal fields redacted; a loop turn's lines in one write.
    configure("info", "json", batched=True)
    return create_app(Settings(**msgspec.json.decode(raw)))
