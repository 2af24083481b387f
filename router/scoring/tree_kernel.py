"""Tree ensembles compiled with numba: a ``HistGradientBoostingClassifier`` walked node by
node, in the order scikit-learn sums its trees.

ONNX Runtime on one thread (:class:`~router.scoring.trees.OnnxTreeScorer`) costs about
4 µs a row in a batch and 15 µs for one row of a 100-tree model on this project's
machine; scikit-learn's ``predict_proba`` is slower still for one row. The walk below is
the same arithmetic as scikit-learn's — the baseline plus each tree's leaf value, added in
tree order, ``x <= threshold`` going left and a missing value going where the tree says —
so its margins equal scikit-learn's bit for bit, and one kernel serves one row and a batch
(a live decision and a replay cannot differ). ``bench/bench_decide.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from router.core.errors import ModelError
from router.decide.features import check_features
from router.scoring.base import model_features
from router.scoring.pd_map import PdMap, calibrate

_KERNELS: dict[str, Any] = {}


class TreesFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """On-disk form of a compiled tree ensemble (``kind = "trees_json"``): plain JSON, so
    loading it needs neither scikit-learn nor a trusted-types list."""

    kind: str = "hgb_trees"
    features: list[str]
    baseline: float
    roots: list[int]
    #: Per node: feature index (-1: a leaf), left child, right child, missing goes left.
    nodes: list[tuple[int, int, int, int]]
    #: Per node: the split threshold, or the leaf's value.
    values: list[float]
    #: An isotonic map applied to the PD (router/scoring/pd_map.py), if calibrated so.
    calibration: PdMap | None = None
    metadata: dict[str, Any] = {}


def _kernels() -> tuple[Any, Any]:
    """(one row, batch), imported on first use: numba is loaded only by those who use it."""
    if not _KERNELS:
        from router.scoring import tree_jit

        _KERNELS["one"], _KERNELS["batch"] = tree_jit.one, tree_jit.batch
    return _KERNELS["one"], _KERNELS["batch"]


class TreeScorer:
    """A binary histogram gradient boosting model, compiled (see the module docstring).

    ``nodes`` (int64, one row per node of every tree): feature index (-1 for a leaf), left
    child, right child, missing-goes-left; ``values`` (float64): the split threshold, or the
    leaf's value; ``roots``: each tree's first node; ``baseline``: the model's initial margin.
    """

    #: :meth:`pd_one` is bit-identical to :meth:`pd_batch` (one kernel for both).
    exact_one = True

    def __init__(
        self,
        nodes: np.ndarray,
        values: np.ndarray,
        roots: np.ndarray,
        baseline: float,
        feature_names: Sequence[str],
        calibration: PdMap | None = None,
    ):
        self.feature_names_ = check_features(feature_names)
        #: The isotonic map the PD goes through (None: the trees' PD as it is).
        self.calibration_ = calibration.check() if calibration is not None else None
        self._xy = calibration.arrays() if calibration is not None else None
        self.nodes_ = np.ascontiguousarray(nodes, dtype=np.int64)
        self.values_ = np.ascontiguousarray(values, dtype=np.float64)
        self.roots_ = np.ascontiguousarray(roots, dtype=np.int64)
        self.baseline_ = float(baseline)
        n, f = len(self.values_), len(self.feature_names_)
        if self.nodes_.shape != (n, 4) or not len(self.roots_):
            raise ModelError(f"tree arrays do not fit: nodes {self.nodes_.shape}, {n} values")
        inner = self.nodes_[:, 0] >= 0
        kids = self.nodes_[inner, 1:3]
        if (self.nodes_[:, 0] >= f).any() or ((kids < 0) | (kids >= n)).any():
            raise ModelError("a tree node points outside the model (feature or child index)")
        if ((self.roots_ < 0) | (self.roots_ >= n)).any():
            raise ModelError("a tree root points outside the model")
        self._n = f
        self._one, self._batch = _kernels()

    @classmethod
    def from_estimator(cls, est: Any, feature_names: Sequence[str] | None = None) -> TreeScorer:
        """Compile a fitted binary ``HistGradientBoostingClassifier`` (numerical splits)."""
        if getattr(est, "n_trees_per_iteration_", 1) != 1:
            raise ModelError("only binary HistGradientBoostingClassifier is supported")
        nodes, values, roots, offset = [], [], [], 0
        for (pred,) in est._predictors:
            nd = pred.nodes
            if nd["is_categorical"].any():
                raise ModelError("categorical splits are not supported")
            leaf = nd["is_leaf"].astype(bool)
            block = np.empty((len(nd), 4), dtype=np.int64)
            block[:, 0] = np.where(leaf, -1, nd["feature_idx"])
            block[:, 1] = np.where(leaf, -1, nd["left"].astype(np.int64) + offset)
            block[:, 2] = np.where(leaf, -1, nd["right"].astype(np.int64) + offset)
            block[:, 3] = nd["missing_go_to_left"]
            nodes.append(block)
            values.append(np.where(leaf, nd["value"], nd["num_threshold"]))
            roots.append(offset)
            offset += len(nd)
        base = float(np.ravel(est._baseline_prediction)[0])
        return cls(
            np.concatenate(nodes),
            np.concatenate(values),
            np.asarray(roots),
            base,
            model_features(est, feature_names),
        )

    def to_file(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the compiled trees as JSON (floats round-trip exactly)."""
        doc = TreesFile(
            features=list(self.feature_names_),
            baseline=self.baseline_,
            roots=self.roots_.tolist(),
            nodes=[tuple(r) for r in self.nodes_.tolist()],
            values=self.values_.tolist(),
            calibration=self.calibration_,
            metadata=metadata or {},
        )
        Path(path).write_bytes(msgspec.json.encode(doc) + b"\n")

    @classmethod
    def from_file(cls, path: str | Path) -> TreeScorer:
        """Load a trees JSON file (:meth:`to_file`)."""
        try:
            doc = msgspec.json.decode(Path(path).read_bytes(), type=TreesFile)
        except (OSError, msgspec.DecodeError) as exc:
            raise ModelError(f"{path}: cannot load trees: {exc}") from exc
        if not doc.nodes:
            raise ModelError(f"{path}: no tree nodes")
        return cls(
            np.array(doc.nodes, dtype=np.int64),
            np.array(doc.values, dtype=np.float64),
            np.array(doc.roots, dtype=np.int64),
            doc.baseline,
            doc.features,
            doc.calibration,
        )

    def pd_one(self, x: Sequence[float]) -> float:
        """PD of one row."""
        row = np.asarray(x, dtype=np.float64)
        if row.shape != (self._n,):  # (the kernel does not check bounds: never read past)
            raise ValueError(f"a row of {row.shape} for a model of {self._n} features")
        p = float(self._one(row, self.nodes_, self.values_, self.roots_, self.baseline_))
        return p if self._xy is None else float(calibrate(p, self._xy))

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD of every row."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self._n:
            raise ValueError(f"a matrix of {X.shape} for a model of {self._n} features")
        out = np.empty(len(X), dtype=np.float64)
        if len(X):
            self._batch(X, self.nodes_, self.values_, self.roots_, self.baseline_, out)
        return out if self._xy is None else calibrate(out, self._xy)
