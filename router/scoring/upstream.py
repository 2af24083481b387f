"""A PD computed upstream: the lender's own model ran before the router, and the
application carries its probability of default as a feature (``features = {upstream_pd =
0.042}`` live, a column of that name in replay). The ``upstream`` scorer kind reads it as
it is — checked to be a probability — so every rule after scoring (cut-offs, coverage,
partner choice, quotas) runs on the lender's number.

An upstream *score* on another scale (points, a logit) is mapped to a PD by a scorecard
over that one feature instead: ``referral-router train --features bank_score`` fits and
calibrates it.

    [scorers.bank]
    kind = "upstream"
    features = ["upstream_pd"]      # the feature that carries the PD (this is the default)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.core.errors import InputError, ModelError
from router.decide.features import ALL_FEATURES, check_features


class UpstreamScorer:
    """The PD is the application's feature ``feature`` (default ``upstream_pd``)."""

    #: :meth:`pd_one` is bit-identical to :meth:`pd_batch` (the value itself).
    exact_one = True

    def __init__(self, feature: str = "upstream_pd"):
        (name,) = check_features((feature,))
        if name in ALL_FEATURES or "=" in name:
            raise ModelError(
                f"an upstream PD is an application feature, a plain name (value: {feature!r})"
            )
        self.feature_names_: tuple[str, ...] = (name,)

    def _bad(self, value: float, row: int | None) -> InputError:
        name = self.feature_names_[0]
        return InputError(
            f"field `features.{name}`: an upstream PD must be in [0, 1] (value: {value!r})",
            field=f"features.{name}",
            row=row,
        )

    def pd_one(self, x: Sequence[float]) -> float:
        """The row's PD, as given."""
        v = float(x[0])
        if not 0.0 <= v <= 1.0:
            raise self._bad(v, None)
        return v

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """Every row's PD, as given."""
        pd = np.array(X[:, 0], dtype=np.float64)
        bad = np.flatnonzero(~((pd >= 0.0) & (pd <= 1.0)))
        if len(bad):
            raise self._bad(float(pd[bad[0]]), int(bad[0]))
        return pd

    @classmethod
    def from_features(cls, features: Sequence[str] | None) -> UpstreamScorer:
        """The scorer a strategy's ``[scorers.NAME]`` declares (``features``: one name)."""
        if features is None:
            return cls()
        if len(features) != 1:
            raise ModelError(f"an upstream scorer reads one feature (value: {list(features)})")
        return cls(features[0])
