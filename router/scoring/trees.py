"""Tree ensembles compiled to ONNX Runtime for microsecond single-row scoring.

scikit-learn's ``predict_proba`` costs hundreds of microseconds for one row of a 100-tree
``HistGradientBoostingClassifier`` (input validation, thread pools). ONNX Runtime evaluates
the same trees in a few microseconds. We emit the ``ai.onnx.ml`` opset-5 ``TreeEnsemble``
operator with float64 thresholds and leaf weights, so results match scikit-learn to
floating-point rounding: skl2onnx's converter stores float32 thresholds (a split can flip
near a threshold) and, at the versions pinned here, fails on scikit-learn ≥ 1.8 trees.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from router.core.errors import ModelError
from router.decide.features import FEATURES, check_features
from router.scoring.base import model_features, sigmoid, sigmoid_v


def hgb_to_onnx(est: Any, n_features: int) -> tuple[bytes, float]:
    """Convert a fitted binary ``HistGradientBoostingClassifier`` to ONNX.

    Returns the serialized model (raw margin without the baseline) and the baseline.
    """
    from onnx import TensorProto, helper, numpy_helper

    if getattr(est, "n_trees_per_iteration_", 1) != 1:
        raise ModelError("only binary HistGradientBoostingClassifier is supported")
    t = _ensemble_arrays(est)
    node = helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function=1,
        post_transform=0,
        tree_roots=t["roots"],
        nodes_featureids=t["feat"],
        nodes_splits=numpy_helper.from_array(np.asarray(t["splits"], dtype=np.float64)),
        nodes_modes=numpy_helper.from_array(np.zeros(len(t["feat"]), dtype=np.uint8)),
        nodes_truenodeids=t["t_ids"],
        nodes_trueleafs=t["t_leaf"],
        nodes_falsenodeids=t["f_ids"],
        nodes_falseleafs=t["f_leaf"],
        nodes_missing_value_tracks_true=t["miss"],
        leaf_targetids=[0] * len(t["leaves"]),
        leaf_weights=numpy_helper.from_array(np.asarray(t["leaves"], dtype=np.float64)),
    )
    graph = helper.make_graph(
        [node],
        "pd_trees",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)]
    )
    model.ir_version = 10
    return model.SerializeToString(), float(np.ravel(est._baseline_prediction)[0])


def _ensemble_arrays(est: Any) -> dict[str, list[Any]]:
    """The fitted trees as ONNX TreeEnsemble's parallel lists: per split node its
    feature, threshold, missing-goes-left flag and both children (each a node or a leaf:
    ``*_leaf`` 1 for a leaf), the roots, and the leaf values."""
    t: dict[str, list[Any]] = {
        k: []
        for k in ("feat", "splits", "miss", "roots", "leaves", "t_ids", "t_leaf", "f_ids", "f_leaf")
    }
    for (pred,) in est._predictors:
        nodes = pred.nodes
        if nodes["is_categorical"].any():
            raise ModelError("categorical splits are not supported")
        index: dict[int, tuple[int, int]] = {}
        for i, nd in enumerate(nodes):
            if nd["is_leaf"]:
                index[i] = (1, len(t["leaves"]))
                t["leaves"].append(float(nd["value"]))
            else:
                index[i] = (0, len(t["feat"]))
                t["feat"].append(int(nd["feature_idx"]))
                t["splits"].append(float(nd["num_threshold"]))
                t["miss"].append(int(nd["missing_go_to_left"]))
                for k in ("t_ids", "t_leaf", "f_ids", "f_leaf"):
                    t[k].append(0)
        if nodes[0]["is_leaf"]:
            raise ModelError("a single-leaf tree cannot be compiled")
        t["roots"].append(index[0][1])
        for i, nd in enumerate(nodes):
            if nd["is_leaf"]:
                continue
            j = index[i][1]
            t["t_leaf"][j], t["t_ids"][j] = index[int(nd["left"])]
            t["f_leaf"][j], t["f_ids"][j] = index[int(nd["right"])]
    return t


class OnnxTreeScorer:
    """A tree ensemble evaluated by ONNX Runtime on one thread; PD = sigmoid(base + trees)."""

    def __init__(self, onnx_bytes: bytes, baseline: float, feature_names: Sequence[str] = FEATURES):
        import onnxruntime as ort

        feature_names = check_features(feature_names)
        opts = ort.SessionOptions()
        # One thread: the router parallelises across processes, not inside one row.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"ONNX Runtime rejected the model: {exc}") from exc
        self.baseline_ = baseline
        self.feature_names_ = tuple(feature_names)
        self.onnx_ = onnx_bytes
        # The C-level run skips the Python wrapper's per-call argument checks.
        self._sess = sess
        self._run = sess._sess.run
        self._n = len(self.feature_names_)
        # One row at a time goes through a per-thread I/O binding over preallocated
        # buffers: no input/output arrays allocated per call (~2 µs saved of ~6).
        self._local = threading.local()

    @classmethod
    def from_estimator(cls, est: Any, feature_names: Sequence[str] | None = None) -> OnnxTreeScorer:
        """Compile a fitted ``HistGradientBoostingClassifier``."""
        feature_names = model_features(est, feature_names)
        onnx_bytes, base = hgb_to_onnx(est, len(feature_names))
        return cls(onnx_bytes, base, feature_names)

    def pd_one(self, x: Sequence[float]) -> float:
        """PD of one row."""
        local = self._local
        binding = getattr(local, "binding", None)
        if binding is None:
            local.inp = np.zeros((1, self._n), dtype=np.float64)
            local.out = np.zeros((1, 1), dtype=np.float64)
            binding = local.binding = self._sess.io_binding()
            binding.bind_cpu_input("X", local.inp)
            binding.bind_output("Y", "cpu", 0, np.float64, (1, 1), local.out.ctypes.data)
        local.inp[0, :] = x
        self._sess.run_with_iobinding(binding)
        return sigmoid(self.baseline_ + float(local.out[0, 0]))

    def pd_batch(self, X: np.ndarray) -> np.ndarray:
        """PD of every row."""
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        raw = self._run(["Y"], {"X": np.ascontiguousarray(X, dtype=np.float64)}, None)[0]
        return sigmoid_v(self.baseline_ + raw[:, 0])
