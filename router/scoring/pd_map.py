"""A monotone map from a model's raw PD to a calibrated one (isotonic calibration).

Fitted by ``referral-router train --calibration isotonic`` on out-of-fold predictions and
stored in the model file beside the model (``"calibration": {"x": [...], "y": [...]}``):
the calibrated PD is the piecewise-linear interpolation of the points (x, y) at the raw
PD, clipped to the first and last y outside them — what scikit-learn's
``IsotonicRegression(out_of_bounds="clip").predict`` computes. The one-row and batch paths
both call ``numpy.interp``, so they agree bit for bit. (Platt calibration needs no map: it
is a linear change of the model's logit, folded into the model itself.)
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from router.core.errors import ModelError


class PdMap(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Points of a non-decreasing map [0, 1] -> [0, 1]."""

    method: str = "isotonic"
    x: list[float]
    y: list[float]

    def check(self) -> PdMap:
        """Itself, or :class:`ModelError` saying what is wrong with the points."""
        x, y = self.x, self.y
        if len(x) != len(y) or len(x) < 2:
            raise ModelError(f"calibration: {len(x)} x and {len(y)} y points (need >= 2 each)")
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (*x, *y)):
            raise ModelError("calibration: every point must lie in [0, 1]")
        if any(b < a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
            raise ModelError("calibration: x and y must be non-decreasing")
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y as float64 arrays (what :func:`calibrate` takes)."""
        return np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)

    @classmethod
    def from_isotonic(cls, iso: Any) -> PdMap:
        """From a fitted ``IsotonicRegression`` over raw PDs."""
        return cls(
            x=[float(v) for v in iso.X_thresholds_], y=[float(v) for v in iso.y_thresholds_]
        ).check()


def calibrate(pd: Any, xy: tuple[np.ndarray, np.ndarray]) -> Any:
    """The calibrated PD of a float or an array of raw PDs (the same ``numpy.interp``)."""
    return np.interp(pd, xy[0], xy[1])
