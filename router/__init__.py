"""referral-router: keep / branch / refer / decline for every loan application.

The supported public API is what this package exports (see the README, "Embedded use"):

    from router import Router, load_strategy, decode_application, quota_store_from_url

Names load on first use, so ``import router`` stays cheap (the command line imports only
what a command needs). The packages show the architecture: ``router.core`` (messages,
config, errors, economics, rules, routing), ``router.decide`` (assessment, allocation,
outcomes, the Router), ``router.store``, ``router.scoring``, ``router.ingest``,
``router.replay``, ``router.billing``. Modules that moved there keep their old import paths
(``router.engine``, ``router.config``, ``router.messages``, …) with a DeprecationWarning
(:mod:`router._moved`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from router import _moved

_moved.install()

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # deciding
    "Router": "router.decide.engine",
    "load_strategy": "router.core.config",
    "strategy_from_dict": "router.core.config",
    "Strategy": "router.core.config",
    # messages
    "Application": "router.core.messages",
    "Decision": "router.core.messages",
    "Keep": "router.core.messages",
    "Branch": "router.core.messages",
    "Refer": "router.core.messages",
    "Decline": "router.core.messages",
    "ReferralEntry": "router.core.messages",
    "decode_application": "router.core.messages",
    "convert_application": "router.core.messages",
    "decode_decision": "router.core.messages",
    # stores
    "QuotaStore": "router.store",
    "quota_store_from_url": "router.store",
    "register_store": "router.store",
    "StoreKind": "router.store",
    "Bucket": "router.store",
    "CapLimit": "router.store",
    # routing
    "RoutingMethod": "router.core.routing",
    "register_routing": "router.core.routing",
    # scoring
    "Scorer": "router.scoring",
    "load_scorer": "router.scoring",
    "scorer_from_estimator": "router.scoring",
    # (replay: ``from router.replay import replay`` — the subpackage has that name)
    # errors
    "RouterError": "router.core.errors",
    "ConfigError": "router.core.errors",
    "InputError": "router.core.errors",
    "ModelError": "router.core.errors",
    "StoreError": "router.core.errors",
    "IdempotencyConflict": "router.core.errors",
    "TrafficError": "router.core.errors",
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
    "convert_application",
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
    from router.core.config import Strategy, load_strategy, strategy_from_dict
    from router.core.errors import (
        ConfigError,
        IdempotencyConflict,
        InputError,
        ModelError,
        RouterError,
        StoreError,
        TrafficError,
    )
    from router.core.messages import (
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
    from router.core.routing import RoutingMethod, register_routing
    from router.decide.engine import Router
    from router.scoring import Scorer, load_scorer, scorer_from_estimator
    from router.store import (
        Bucket,
        CapLimit,
        QuotaStore,
        StoreKind,
        quota_store_from_url,
        register_store,
    )
