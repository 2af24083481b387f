"""A logistic scorecard: PD = sigmoid(intercept + coef · x), stored as a plain JSON file.

The single-row path is plain Python over a short list (about a microsecond); the batch
path is one matrix-vector product. Scikit-learn linear classifiers (and a
``StandardScaler → LogisticRegression`` pipeline) compile into this form by folding the
scaling into the coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from router.core.errors import ModelError
from router.decide.features import FEATURES, check_features
from router.scoring.base import model_features, sigmoid_v
from router.scoring.pd_map import PdMap, calibrate


class ScorecardFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """On-disk form of a logistic scorecard."""

    kind: str = "logistic"
    features: list[str]
    intercept: float
    coefficients: list[float]
    #: An isotonic map applied to the PD (router/scoring/pd_map.py), if calibrated so.
    calibration: PdMap | None = None
    metadata: dict[str, Any] = {}


_exp = np.exp


class LinearScorer:
    """Logistic model over the features it names (by default
    :data:`router.decide.features.FEATURES`)."""

    def __init__(
        self,
        coef: Sequence[float],
        intercept: float,
        feature_names: Sequence[str] = FEATURES,
        calibration: PdMap | None = None,
    ):
        coef = [float(c) for c in coef]
        if len(coef) != len(feature_names):
            raise ModelError(f"{len(coef)} coefficients for {len(feature_names)} features")
        feature_names = check_features(feature_names)
        self.coef_ = np.asarray(coef, dtype=np.float64)
        self.intercept_ = float(intercept)
        self.feature_names_ = tuple(feature_names)
        self._pairs = coef  # plain floats: faster than numpy for one short row
        #: The isotonic map the PD goes through (None: the logistic PD as it is).
        self.calibration_ = calibration.check() if calibration is not None else None
        self._xy = calibration.arrays() if calibration is not None else None

    #: :meth:`pd_one` is bit-identical to :meth:`pd_batch` (the live path relies on it).
    exact_one = True

    def pd_one(self, x: Sequence[float]) -> float:
        """PD of one row, bit-identical to the same row in :meth:`pd_batch`."""
        z = self.intercept_
        for c, v in zip(self._pairs, x):
            z += c * v
        # numpy's exp, as the batch uses (math.exp may differ in the last bit); the rest
        # is the same IEEE arithmetic on Python floats.
        e = float(_exp(-abs(z)))
        p = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
        return p if self._xy is None else float(calibrate(p, self._xy))

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD of every row.

        Summed feature by feature in the order :meth:`pd_one` uses, not with a BLAS
        product: every row's PD is then bit-identical whatever the batch size, so replay
        and live decisions cannot differ at a cut-off.
        """
        if len(X) == 1:
            # One row: the same additions in the same order on Python floats (IEEE
            # doubles, bit-identical to numpy's elementwise ops) and numpy's own exp.
            return np.array([self.pd_one(X[0].tolist())])
        z = np.full(len(X), self.intercept_)
        for j, c in enumerate(self._pairs):
            z += c * X[:, j]
        p = sigmoid_v(z)
        return p if self._xy is None else calibrate(p, self._xy)

    @classmethod
    def from_estimator(cls, est: Any, feature_names: Sequence[str] | None = None) -> LinearScorer:
        """Compile a fitted linear classifier (or scaler → linear pipeline) into a scorecard."""
        steps = list(getattr(est, "steps", [("model", est)]))
        model = steps[-1][1]
        coef = np.asarray(model.coef_, dtype=np.float64).ravel()
        intercept = float(np.ravel(model.intercept_)[0])
        for _, step in reversed(steps[:-1]):
            mean = getattr(step, "mean_", None)
            scale = getattr(step, "scale_", None)
            if mean is None and scale is None:
                raise ModelError(f"cannot fold pipeline step {type(step).__name__}")
            mean = np.zeros_like(coef) if mean is None else np.asarray(mean, dtype=np.float64)
            scale = np.ones_like(coef) if scale is None else np.asarray(scale, dtype=np.float64)
            intercept -= float(np.sum(coef * mean / scale))
            coef = coef / scale
        return cls(coef.tolist(), intercept, model_features(est, feature_names))

    def to_file(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the scorecard as JSON."""
        doc = ScorecardFile(
            features=list(self.feature_names_),
            intercept=self.intercept_,
            coefficients=self.coef_.tolist(),
            calibration=self.calibration_,
            metadata=metadata or {},
        )
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(doc)) + b"\n")

    @classmethod
    def from_file(cls, path: str | Path) -> LinearScorer:
        """Load a scorecard JSON file."""
        try:
            doc = msgspec.json.decode(Path(path).read_bytes(), type=ScorecardFile)
        except (OSError, msgspec.DecodeError) as exc:
            raise ModelError(f"{path}: cannot load scorecard: {exc}") from exc
        return cls(doc.coefficients, doc.intercept, doc.features, doc.calibration)
