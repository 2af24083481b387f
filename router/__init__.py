"""referral-router: keep / branch / refer / decline for every loan application.

The supported public API is what this package exports (see the README, "Embedded use"):

    from router import Router, load_strategy, decode_application, quota_store_from_url

Names load on first use, so ``import router`` stays cheap (the command line imports only
what a command needs). The modules they come from (``router.engine``, ``router.config``,
``router.messages``, ``router.store``, ``router.errors``, ``router.testing``) remain
importable as before.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # deciding
    "Router": "router.engine",
    "load_strategy": "router.config",
    "strategy_from_dict": "router.config",
    "Strategy": "router.config",
    # messages
    "Application": "router.messages",
    "Decision": "router.messages",
    "Keep": "router.messages",
    "Branch": "router.messages",
    "Refer": "router.messages",
    "Decline": "router.messages",
    "ReferralEntry": "router.messages",
    "decode_application": "router.messages",
    "decode_decision": "router.messages",
    # stores
    "QuotaStore": "router.store",
    "quota_store_from_url": "router.store",
    "register_store": "router.store",
    "StoreKind": "router.store",
    "Bucket": "router.store",
    "CapLimit": "router.store",
    # routing
    "RoutingMethod": "router.routing",
    "register_routing": "router.routing",
    # scoring
    "Scorer": "router.scoring",
    "load_scorer": "router.scoring",
    "scorer_from_estimator": "router.scoring",
    # (replay: ``from router.replay import replay`` — the subpackage has that name)
    # errors
    "RouterError": "router.errors",
    "ConfigError": "router.errors",
    "InputError": "router.errors",
    "ModelError": "router.errors",
    "StoreError": "router.errors",
    "IdempotencyConflict": "router.errors",
    "TrafficError": "router.errors",
}

__all__ = [
    "Application",
    "Branch",
    "Bucket",
    "CapLimit",
    "ConfigError",
    "Decision",
    "Decline",
    "IdempotencyConflict",
    "InputError",
    "Keep",
    "ModelError",
    "QuotaStore",
    "Refer",
    "ReferralEntry",
    "Router",
    "RouterError",
    "RoutingMethod",
    "Scorer",
    "StoreError",
    "StoreKind",
    "Strategy",
    "TrafficError",
    "decode_application",
    "decode_decision",
    "load_scorer",
    "load_strategy",
    "quota_store_from_url",
    "register_routing",
    "register_store",
    "scorer_from_estimator",
    "strategy_from_dict",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from router.config import Strategy, load_strategy, strategy_from_dict
    from router.engine import Router
    from router.errors import (
        ConfigError,
        IdempotencyConflict,
        InputError,
        ModelError,
        RouterError,
        StoreError,
        TrafficError,
    )
    from router.messages import (
        Application,
        Branch,
        Decision,
        Decline,
        Keep,
        Refer,
        ReferralEntry,
        decode_application,
        decode_decision,
    )
    from router.routing import RoutingMethod, register_routing
    from router.scoring import Scorer, load_scorer, scorer_from_estimator
    from router.store import (
        Bucket,
        CapLimit,
        QuotaStore,
        StoreKind,
        quota_store_from_url,
        register_store,
    )
