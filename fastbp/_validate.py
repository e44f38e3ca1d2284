"""Argument checks and conversions shared by the public API. No numerics here.

Conversions (documented in the README): X and regression targets of another dtype, or not
C-contiguous, or read-only, are copied into a C-contiguous array of the model's dtype; class labels
of another integer dtype are copied to int64; sample weights of another dtype to float64. Nothing
is ever reinterpreted in place.
"""
import math
import numbers

import numpy as np

from . import kernels


def positive_number(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # a huge int
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return value


def number_in(name, value, low, high=None, high_open=False):
    """A real number in [low, high] (or [low, high) with high_open; no high: [low, inf))."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or value < low or above:
        bounds = f"[{low}, " + ("inf)" if high is None else f"{high}{')' if high_open else ']'}")
        raise ValueError(f"{name}: expected a number in {bounds}, got {value!r}")
    return value


def seed(name, value):
    """None, or an integer NumPy's generators accept (0 or more)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative integer or None, got "
                        f"{type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative integer or None, got {value}")
    return int(value)


def _int_at_least(name, value, low, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a {what} integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected a {what} integer, got {value}")
    return int(value)


def non_negative_int(name, value):
    return _int_at_least(name, value, 0, "non-negative")


def positive_int(name, value):
    return _int_at_least(name, value, 1, "positive")


def as_array(name, value):
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: cannot be read as an array ({exc})") from None


def _contiguous(array, dtype):
    if array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable:
        return array
    with np.errstate(over="ignore", invalid="ignore"):   # values beyond dtype: refused after
        return np.array(array, dtype=dtype, order="C")


def features(X, n_features, dtype, name="X"):
    """X as a C-contiguous (N, n_features) array of dtype, finite, N >= 1."""
    X = as_array(name, X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (shape {X.shape})")
    if X.shape[1] != n_features:
        raise ValueError(f"{name}: expected {n_features} features (columns), got {X.shape[1]}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {X.dtype}")
    X = _contiguous(X, dtype)
    if not kernels.all_finite(X):
        raise ValueError(f"{name}: contains NaN or Inf")
    return X


def targets(y, n_rows, n_outputs, loss, dtype, name="y"):
    """Labels (N,) int64 in [0, n_outputs) for softmax-CE; values (N, n_outputs) for MSE, in
    [0, 1] for binary cross-entropy."""
    y = as_array(name, y)
    if y.ndim == 0 or y.shape[0] != n_rows:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"{name}: expected {n_rows} rows to match X, got {got}")
    if loss == "softmax_cross_entropy":
        if y.ndim != 1:
            raise ValueError(f"{name}: class labels must be 1-D, got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: class labels must be integers, got dtype {y.dtype} "
                            "(convert with y.astype(int) if the values are whole numbers)")
        y = _contiguous(y, np.int64)
        if not kernels.labels_in_range(y, n_outputs):
            raise ValueError(f"{name}: class labels must be in 0..{n_outputs - 1}, got values "
                             f"from {y.min()} to {y.max()}")
        return y
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(f"{name}: expected shape ({n_rows}, {n_outputs})"
                         + (f" or ({n_rows},)" if n_outputs == 1 else "")
                         + f" for the {loss} loss, got {y.shape}")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {y.dtype}")
    y = _contiguous(y, dtype)
    if not kernels.all_finite(y):
        raise ValueError(f"{name}: contains NaN or Inf")
    if loss == "binary_cross_entropy" and not (y.min() >= 0 and y.max() <= 1):
        raise ValueError(f"{name}: binary_cross_entropy targets must be in [0, 1] (0/1 "
                         f"indicators, or probabilities), got values from {y.min()} to "
                         f"{y.max()}")
    return y


def sample_weight(weights, n_rows, name="sample_weight"):
    """None, or the sample weights as a C-contiguous float64 array (n_rows,): real, finite,
    >= 0, not all 0, with a finite sum."""
    if weights is None:
        return None
    weights = as_array(name, weights)
    if weights.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (one weight per row of X), got shape "
                         f"{weights.shape}")
    if weights.shape[0] != n_rows:
        raise ValueError(f"{name}: expected {n_rows} weights (one per row of X), got "
                         f"{weights.shape[0]}")
    if weights.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {weights.dtype}")
    with np.errstate(over="ignore"):   # a longdouble beyond float64 becomes Inf: refused below
        weights = _contiguous(weights, np.float64)
    if not kernels.all_finite(weights.reshape(1, -1)):
        raise ValueError(f"{name}: contains NaN or Inf")
    if weights.min() < 0:
        raise ValueError(f"{name}: weights must be >= 0, got {weights.min()}")
    with np.errstate(over="ignore"):
        total = float(weights.sum())
    if total == 0:
        raise ValueError(f"{name}: every weight is 0 (the weighted mean loss 0/0 is undefined)")
    if not math.isfinite(total):
        raise ValueError(f"{name}: the weights sum to more than float64 holds (scale them)")
    return weights
