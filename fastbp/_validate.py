"""Argument checks and conversions shared by the public API. No numerics here.

Conversions (documented in the README): X and regression targets of another dtype, or not
C-contiguous, or read-only, are copied into a C-contiguous array of the model's dtype; class labels
of another integer dtype are copied to int64; sample weights of another dtype to float64. Nothing
is ever reinterpreted in place. A SciPy sparse X becomes SparseRows: CSR (another format is
converted to CSR, a copy), its values in the model's dtype (a copy when they are not), never
densified as a whole.
"""
import math
import numbers
import sys

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


def converted(name, value, shape, dtype, what, finite=True):
    """value as an array of this shape in dtype, to be copied into a buffer: ValueError for
    another shape (``what`` says whose: "this model's parameter count"), TypeError for values
    that are not real numbers, ValueError for NaN or Inf, or values beyond dtype, when
    ``finite``."""
    value = as_array(name, value)
    if value.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} ({what}), got {value.shape}")
    if value.dtype.kind not in "fiu" or value.dtype == np.bool_:
        raise TypeError(f"{name}: expected real numbers, got {value.dtype}")
    with np.errstate(over="ignore"):
        result = value.astype(dtype, copy=False)
    if finite and not np.all(np.isfinite(result)):
        raise ValueError(f"{name}: contains NaN or Inf (or values beyond "
                         f"{np.dtype(dtype).name})")
    return result


def _contiguous(array, dtype):
    if array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable:
        return array
    with np.errstate(over="ignore", invalid="ignore"):   # values beyond dtype: refused after
        return np.array(array, dtype=dtype, order="C")


def features(X, n_features, dtype, name="X"):
    """X as a C-contiguous (N, n_features) array of dtype, finite, N >= 1; a SciPy sparse X
    as SparseRows (see sparse_features)."""
    if isinstance(X, SparseRows) and X.dtype == dtype and X.shape[1] == n_features:
        return X   # checked when it was made
    if isinstance(X, SparseRows) or is_sparse(X):
        return sparse_features(X, n_features, dtype, name)
    X = as_array(name, X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (shape {X.shape})")
    if X.shape[1] != n_features:
        raise ValueError(f"{name}: expected {n_features} features (columns), got {X.shape[1]}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {X.dtype}")
    checked = _contiguous(X, dtype)
    if not kernels.all_finite(checked):
        raise ValueError(_not_finite(name, X, dtype))
    return checked


def _not_finite(name, given, dtype):
    """Why values are not finite once in ``dtype``: NaN or Inf given, or finite numbers that
    overflow ``dtype`` (float64 values beyond a float32 model's range), where a wider dtype
    would hold them."""
    with np.errstate(invalid="ignore"):
        finite = bool(np.all(np.isfinite(given)))
    if not finite:
        return f"{name}: contains NaN or Inf"
    largest = float(np.max(np.abs(given)))
    return (f"{name}: values up to {largest:.3g} overflow {np.dtype(dtype).name} (largest "
            f"{float(np.finfo(dtype).max):.3g}); float64 would hold them: scale them down or "
            "use a float64 model")


def targets(y, n_rows, n_outputs, loss, dtype, name="y"):
    """What the loss takes (its targets in kernels.LOSS_KINDS): labels (N,) int64 in
    [0, n_outputs), or values (N, n_outputs) of dtype, in the loss's target_range if it has
    one (binary cross-entropy: [0, 1])."""
    kind = kernels.LOSS_KINDS[loss]
    y = as_array(name, y)
    if y.ndim == 0 or y.shape[0] != n_rows:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} rows"
        raise ValueError(f"{name}: expected {n_rows} rows to match X, got {got}")
    if kind.targets == "labels":
        if y.ndim != 1:
            raise ValueError(f"{name}: class labels must be 1-D, got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: class labels must be integers, got dtype {y.dtype} "
                            "(convert with y.astype(int) if the values are whole numbers)")
        if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
            # (int64 cannot hold it: the copy below would wrap it to a negative label)
            raise ValueError(f"{name}: class labels must be in 0..{n_outputs - 1}, got "
                             f"{y.max()}, beyond int64")
        y = _contiguous(y, np.int64)
        if not kernels.labels_in_range(y, n_outputs):
            raise ValueError(f"{name}: class labels must be in 0..{n_outputs - 1}, got values "
                             f"from {y.min()} to {y.max()}")
        return y
    if kind.targets != "values":
        raise ValueError(f"loss {loss!r}: no check for targets {kind.targets!r}")
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(f"{name}: expected shape ({n_rows}, {n_outputs})"
                         + (f" or ({n_rows},)" if n_outputs == 1 else "")
                         + f" for the {loss} loss, got {y.shape}")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {y.dtype}")
    checked = _contiguous(y, dtype)
    if not kernels.all_finite(checked):
        raise ValueError(_not_finite(name, y, dtype))
    y = checked
    if kind.target_range is not None:
        low, high = kind.target_range
        if not (y.min() >= low and y.max() <= high):
            raise ValueError(f"{name}: {loss} targets must be in [{low:g}, {high:g}], got "
                             f"values from {y.min()} to {y.max()}")
    return y


def sample_weight(weights, n_rows, name="sample_weight", may_all_be_0=False):
    """None, or the sample weights as a C-contiguous float64 array (n_rows,): real, finite,
    >= 0, not all 0 (unless may_all_be_0: a part of the weights, checked whole elsewhere), with
    a finite sum."""
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
    if total == 0 and not may_all_be_0:
        raise ValueError(f"{name}: every weight is 0 (the weighted mean loss 0/0 is undefined)")
    if not math.isfinite(total):
        raise ValueError(f"{name}: the weights sum to more than float64 holds (scale them)")
    return weights


def is_sparse(X):
    """Whether X is a SciPy sparse matrix or array. Never imports SciPy: when scipy.sparse is
    not loaded, X cannot be one."""
    module = sys.modules.get("scipy.sparse")
    return module is not None and hasattr(X, "tocsr") and module.issparse(X)


class SparseRows:
    """A checked sparse X: CSR arrays (data in the model's dtype; indices and indptr both int32
    or both int64; all C-contiguous and writable) and its shape. ``csr`` is what compiled code
    takes (kernels.CSR); ``X[rows]`` (an index array) is a new SparseRows of those rows, with
    their values copied (a fraction of the data: hold-out and metric rows), never dense."""
    ndim = 2

    def __init__(self, data, indices, indptr, shape):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape, self.dtype = tuple(shape), data.dtype

    @property
    def csr(self):
        return kernels.CSR(self.data, self.indices, self.indptr)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        indptr = np.zeros(rows.shape[0] + 1, dtype=self.indptr.dtype)
        np.cumsum(counts, out=indptr[1:])
        # positions in data of each chosen row's values, row after row
        where = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return SparseRows(self.data[where], self.indices[where], indptr,
                          (rows.shape[0], self.shape[1]))


def sparse_features(X, n_features, dtype, name="X"):
    """A SciPy sparse X (any format; or SparseRows of another dtype) as SparseRows in dtype:
    2-D, (N, n_features), N >= 1, real values, all finite, a well-formed structure (the
    compiled gather trusts it). Only what must change is copied: a format other than CSR is
    converted to CSR (a copy of the matrix, once), values of another dtype are converted, and
    indices whose type is not int32 or int64 (or differs from indptr's) become int64."""
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D sparse matrix (samples, features), got shape "
                         f"{X.shape}")
    n_rows, n_cols = X.shape
    if n_rows == 0:
        raise ValueError(f"{name}: the batch is empty (shape {X.shape})")
    if n_cols != n_features:
        raise ValueError(f"{name}: expected {n_features} features (columns), got {n_cols}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {X.dtype}")
    if not isinstance(X, SparseRows) and X.format != "csr":
        X = X.tocsr()   # a copy of the whole matrix, in CSR form
    data, indices, indptr = X.data, X.indices, X.indptr
    index_type = indices.dtype
    if index_type != indptr.dtype or index_type not in (np.int32, np.int64):
        index_type = np.int64
    indices, indptr = _contiguous(indices, index_type), _contiguous(indptr, index_type)
    if indptr.shape != (n_rows + 1,) or data.ndim != 1 or indices.ndim != 1 or not \
            kernels.csr_is_valid(indices, indptr, n_cols, min(data.shape[0], indices.shape[0])):
        raise ValueError(f"{name}: not a well-formed CSR matrix (indptr of {n_rows + 1} "
                         f"nondecreasing row starts from 0, column indices in 0..{n_cols - 1})")
    checked = _contiguous(data, dtype)
    if not kernels.all_finite(checked[:indptr[-1]].reshape(1, -1)):   # the stored values
        raise ValueError(_not_finite(name, data[:indptr[-1]], dtype))
    data = checked
    return SparseRows(data, indices, indptr, (n_rows, n_cols))
