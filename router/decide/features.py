"""Model features derived from an application, for one row and for a batch.

Both paths compute the same numbers with the same operations, bit for bit, so a scorer
sees identical inputs live and in replay. (The reference decider, :mod:`router.reference`,
states them once more on its own, as it does every rule.)

A model declares the features it reads (``feature_names_``, in its order): the 13 of
:data:`FEATURES` (the default), any of :data:`EXTRA_FEATURES` — inputs the default
set leaves out, such as the highest APR the applicant accepts, which carries risk the
bureau fields do not (an applicant who accepts a high price is a riskier one) — and the
lender's own **application features**: any other name is read from the application's
``features`` map (live) or the traffic file's column of that name (replay):

- ``name`` — a number (``features = {savings = 1200.0}``), required: an application
  without it, or with text or a non-finite value there, is refused naming
  ``features.name``;
- ``name=value`` — a one-hot flag: 1.0 where the application's ``name`` is the text
  ``value``, else 0.0 (also when the application does not carry ``name``: an unseen or
  absent category is all zeros, as scikit-learn's ``OneHotEncoder(handle_unknown="ignore")``
  treats it).

An upstream PD or score is such a feature too (``upstream_pd``, read by the ``upstream``
scorer kind). A :class:`FeatureSet` computes a model's own vector, row or batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router.core.columns import AppColumns

#: Feature order every model file must declare (checked at load).
FEATURES: tuple[str, ...] = (
    "age",
    "log_income",
    "bureau_score",
    "inquiries_3m",
    "open_loans",
    "dti",
    "dpd_months",
    "log_amount",
    "term_years",
    "amount_to_income",
    "ch_platform",
    "ch_api",
    "ch_h5",
)

_CHANNEL_FLAGS = ("platform", "api_aggregator", "h5_aggregator")

#: Features a model may read beyond :data:`FEATURES`: name -> what it is.
EXTRA_FEATURES: dict[str, str] = {
    "max_apr": "the highest APR the applicant accepts (a fraction)",
}

#: Every feature name a model may declare.
ALL_FEATURES: tuple[str, ...] = FEATURES + tuple(EXTRA_FEATURES)


#: An application feature: a lower-case name, or ``name=value`` (a one-hot flag).
APP_FEATURE = re.compile(r"^[a-z_][a-z0-9_]{0,63}(=[^=\s][^=]{0,63})?$")


def check_features(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or :class:`~router.core.errors.ModelError` naming those that
    are neither computed by the router nor a valid application feature name."""
    from router.core.errors import ModelError

    bad = [n for n in names if n not in ALL_FEATURES and not APP_FEATURE.match(str(n))]
    if bad or not names:
        raise ModelError(
            f"model features {bad or '(none)'} are neither computed by the router "
            f"({', '.join(ALL_FEATURES)}) nor application features (a lower-case name, "
            "or name=value for a one-hot flag)"
        )
    if len(set(names)) != len(names):
        raise ModelError(f"model features {list(names)} name a feature twice")
    return tuple(names)


def features_row(r: Any) -> list[float]:
    """:func:`features_batch` for one row of scalars (a :class:`~router.core.columns.Row`),
    bit-identical to it: arithmetic on Python floats is the same IEEE arithmetic, and the
    logarithms go through numpy's own ``log1p`` (``math.log1p`` may differ in the last bit,
    which could move a PD across a cut-off between live and replay)."""
    income = r.monthly_income / 100.0
    amount = r.requested_amount / 100.0
    ch = r.channel
    return [
        float(r.age),
        float(_log1p(income)),
        r.bureau_score / 100.0,
        float(r.inquiries_3m),
        float(r.open_loans),
        float(r.dti),
        min(r.worst_dpd_12m, 180) / 30.0,
        float(_log1p(amount)),
        r.term_months / 12.0,
        amount / (income + 100.0),
        1.0 if ch == _CHANNEL_FLAGS[0] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[1] else 0.0,
        1.0 if ch == _CHANNEL_FLAGS[2] else 0.0,
    ]


_log1p = np.log1p


def features_batch(cols: AppColumns) -> np.ndarray:
    """The feature matrix (n × len(FEATURES), float64, C order) of a column batch."""
    n = len(cols)
    out = np.empty((n, len(FEATURES)), dtype=np.float64)
    income = cols.monthly_income / 100.0
    amount = cols.requested_amount / 100.0
    out[:, 0] = cols.age
    out[:, 1] = np.log1p(income)
    out[:, 2] = cols.bureau_score / 100.0
    out[:, 3] = cols.inquiries_3m
    out[:, 4] = cols.open_loans
    out[:, 5] = cols.dti
    out[:, 6] = np.minimum(cols.worst_dpd_12m, 180) / 30.0
    out[:, 7] = np.log1p(amount)
    out[:, 8] = cols.term_months / 12.0
    out[:, 9] = amount / (income + 100.0)
    for j, name in enumerate(_CHANNEL_FLAGS):
        out[:, 10 + j] = cols.channel == name
    return out


# Each extra feature for one row and for a batch (the same arithmetic, bit for bit).
_EXTRA_ROW = {"max_apr": lambda r: float(r.max_apr)}
_EXTRA_BATCH = {"max_apr": lambda cols: np.asarray(cols.max_apr, dtype=np.float64)}


def app_features(names: Iterable[str]) -> dict[str, str]:
    """The application features a model reads: field name -> ``"number"`` (read as a
    number) or ``"text"`` (compared by one-hot flags). A field read both ways is an error."""
    from router.core.errors import ModelError

    out: dict[str, str] = {}
    for n in names:
        if n in ALL_FEATURES:
            continue
        base, eq, _ = n.partition("=")
        kind = "text" if eq else "number"
        if out.setdefault(base, kind) != kind:
            raise ModelError(
                f"feature {base!r} is read both as a number and as one-hot flags ({n!r})"
            )
    return out


def _missing(name: str, row: int | None, why: str, value: Any = None) -> Exception:
    from router.core.errors import InputError

    return InputError(
        f"field `features.{name}`: {why} (value: {value!r})", field=f"features.{name}", row=row
    )


def _number(name: str, v: Any) -> float:
    """An application feature's value as a number, or InputError naming it."""
    if v is None or isinstance(v, (str, bool)):
        why = "required by the model, missing" if v is None else "expected a number"
        raise _missing(name, None, why, v)
    x = float(v)
    if not math.isfinite(x):
        raise _missing(name, None, "not a finite number", v)
    return x


def feature_column(cols: AppColumns, name: str) -> np.ndarray:
    """The application feature ``name`` of every row (float64 numbers, or an object
    array of text and None), or :class:`~router.core.errors.InputError` if the batch
    does not carry it."""
    col = cols.extra.get(name)
    if col is None:
        raise _missing(name, None, "required by the model, not in the traffic")
    return col


def _number_column(cols: AppColumns, name: str) -> np.ndarray:
    col = feature_column(cols, name)
    if col.dtype.kind != "f":
        for i, v in enumerate(col.tolist()):
            if v is not None and not isinstance(v, (str, bool)):
                continue
            why = "required by the model, missing" if v is None else "expected a number"
            raise _missing(name, i, why, v)
        col = col.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(col))
    if len(bad):
        i = int(bad[0])
        v = col[i].item()
        raise _missing(name, i, "required by the model, missing or not finite", v)
    return col


def _one_hot(name: str, value: str) -> Callable[[Any], float]:
    return lambda r: 1.0 if (r.features or {}).get(name) == value else 0.0


def _a_number(name: str) -> Callable[[Any], float]:
    return lambda r: _number(name, (r.features or {}).get(name))


class FeatureSet:
    """One model's features (``names``, in its order), for a row or a batch: the default
    :data:`FEATURES` as they are, others picked from them, :data:`EXTRA_FEATURES`, and
    application features (the module docstring)."""

    def __init__(self, names: Sequence[str]):
        self.names = check_features(names)
        self.default = self.names == FEATURES
        #: The application features read (name -> "number" | "text").
        self.app = app_features(self.names)
        # Per feature: its column in the default vector, or -1 (another one) ...
        self._index = [FEATURES.index(n) if n in FEATURES else -1 for n in self.names]
        # ... and how to read another one from a row.
        self._read = [self._reader(n) for n in self.names]

    @staticmethod
    def _reader(n: str) -> Callable[[Any], float] | None:
        if n in FEATURES:
            return None
        if n in _EXTRA_ROW:
            return _EXTRA_ROW[n]
        name, eq, value = n.partition("=")
        return _one_hot(name, value) if eq else _a_number(name)

    def row(self, r: Any, base: list[float] | None = None) -> list[float]:
        """The model's vector for one row (``base``: :func:`features_row` of it, if
        already computed)."""
        if base is None:
            base = features_row(r)
        if self.default:
            return base
        return [base[i] if rd is None else rd(r) for i, rd in zip(self._index, self._read)]

    def batch(self, cols: AppColumns, base: np.ndarray | None = None) -> np.ndarray:
        """The model's matrix for a batch (``base``: :func:`features_batch` of it)."""
        if base is None:
            base = features_batch(cols)
        if self.default:
            return base
        out = np.empty((len(cols), len(self.names)), dtype=np.float64)
        for j, (n, i) in enumerate(zip(self.names, self._index)):
            if i >= 0:
                out[:, j] = base[:, i]
            elif n in _EXTRA_BATCH:
                out[:, j] = _EXTRA_BATCH[n](cols)
            else:
                name, eq, value = n.partition("=")
                if not eq:
                    out[:, j] = _number_column(cols, name)
                else:  # (no such column in a batch: no row has the category)
                    col = cols.extra.get(name)
                    out[:, j] = 0.0 if col is None else col == value
        return out


def __getattr__(name: str) -> Any:
    # ``features_one`` moved to the reference decider (which restates the features on its
    # own); old imports keep working with a warning.
    if name == "features_one":
        import warnings

        from router.reference import features_one

        warnings.warn(
            "router.decide.features.features_one moved to router.reference.features_one",
            DeprecationWarning,
            stacklevel=2,
        )
        return features_one
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
