"""Routing methods: the order in which a referral tries its eligible partners.

Each method is one registered object. The strategy's ``routing.method`` names it (an
unknown name is a config error listing the registered ones), the allocator's walks ask it
for an order and tell it of a grant, the compiled walk reads its integer ``code``, and the
test suite's parameter lists come from :func:`routing_methods`. A method that the compiled
walk cannot run fails at import, not silently at decision time.

A new method: subclass :class:`RoutingMethod`, implement :meth:`~RoutingMethod.order`
(and :meth:`~RoutingMethod.on_grant` if it keeps state), give it a ``code`` the kernel
knows (``router/decide/walk_compiled.py``: the walk's insertion-sort key), then
``register_routing(MyMethod())``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.decide.partners import SmoothWeightedRotation

#: The integer codes the compiled walk (``router/decide/walk_compiled.py``) runs: its
#: insertion sort has one key per code. A method with another code cannot be registered.
WATERFALL, BEST_VALUE, WEIGHTED = 0, 1, 2
COMPILED_CODES = (WATERFALL, BEST_VALUE, WEIGHTED)


class RoutingMethod:
    """How one referral orders its eligible partners (ties always by priority rank)."""

    #: The name a strategy uses (``[routing] method = "…"``).
    name: str = ""
    #: The compiled walk's integer code for this method (``router/decide/walk_compiled.py``).
    code: int = -1
    #: Orders by expected value: the batch walk may rank a whole batch in one sort.
    by_value = False
    #: Keeps a rotation that every grant advances (its state must be restored on retries).
    rotates = False

    def order(
        self,
        eligible: list[int],
        rank: Sequence[int],
        value: Callable[[int], float],
        rotation: SmoothWeightedRotation,
    ) -> list[int]:
        """The eligible partner indices in the order to try them. ``rank[j]`` is partner
        j's priority rank, ``value(j)`` its expected referral value for this application."""
        raise NotImplementedError

    def on_grant(self, rotation: SmoothWeightedRotation, j: int, eligible: list[int]) -> None:
        """Partner ``j`` of ``eligible`` was granted (stateless methods ignore it)."""


class Waterfall(RoutingMethod):
    """By priority: the first partner that has room takes it."""

    name, code = "waterfall", WATERFALL

    def order(self, eligible, rank, value, rotation):
        return sorted(eligible, key=rank.__getitem__)


class BestValue(RoutingMethod):
    """Highest expected referral value first (fees plus revenue share for this applicant)."""

    name, code, by_value = "best_value", BEST_VALUE, True

    def order(self, eligible, rank, value, rotation):
        return sorted(eligible, key=lambda j: (-value(j), rank[j]))


class Weighted(RoutingMethod):
    """Smooth weighted round robin by each partner's ``weight`` (deterministic)."""

    name, code, rotates = "weighted", WEIGHTED, True

    def order(self, eligible, rank, value, rotation):
        return rotation.order(eligible)

    def on_grant(self, rotation, j, eligible):
        rotation.granted(j, eligible)


_METHODS: dict[str, RoutingMethod] = {}


def register_routing(method: RoutingMethod) -> None:
    """Add a routing method. Its ``code`` must be one the compiled walk runs."""
    if method.code not in COMPILED_CODES:
        raise ValueError(
            f"routing method {method.name!r} has code {method.code}, which the compiled walk "
            f"does not know (known codes: {list(COMPILED_CODES)})"
        )
    if not method.name:
        raise ValueError("a routing method needs a name")
    _METHODS[method.name] = method


def routing_methods() -> list[str]:
    """The registered method names, in registration order."""
    return list(_METHODS)


def routing_method(name: str) -> RoutingMethod:
    """The registered method called ``name`` (KeyError if none: the config checks first)."""
    return _METHODS[name]


for _m in (Waterfall(), BestValue(), Weighted()):
    register_routing(_m)
