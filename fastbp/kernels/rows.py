"""Row gathering (from dense matrices, and from CSR sparse ones, densified) and input checks."""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from . import _units
from ._checks import arguments, require
from ._config import INLINED, PARALLEL, SERIAL
from ._tiling import n_tiles, span

CACHE_LINE = 64

CSR = namedtuple("CSR", ["data", "indices", "indptr"])
CSR.__doc__ = """A sparse matrix in compressed sparse row form, as compiled code takes it (the
fields of SciPy's csr_matrix): data (nnz,) the stored values, in the model's dtype; indices
(nnz,) their column numbers; indptr (M+1,) where each row's values start in data (row i:
indptr[i]..indptr[i+1]-1). indices and indptr are both int32 or both int64, and all three are
C-contiguous. Its column count is that of the buffer its rows are gathered into. The network's
functions that gather rows (mlp_train_epoch) take one in place of a dense x."""


def aligned_zeros(shape, dtype):
    """A C-contiguous array of zeros whose data starts on a cache-line boundary (plain Python).

    NumPy's large arrays start 16 bytes past one, so every row of a weight matrix and many
    vector loads straddle two lines; aligned buffers make steps faster (README). The
    model's parameters, gradients and workspace are allocated with it; use it for buffers you
    pass to the kernels yourself.
    """
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(n_bytes + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n_bytes].view(dtype).reshape(shape)


@njit(**PARALLEL)
def take_rows(out, x, index):
    """out (B, N) = x[index] for index (B,) of row numbers in [0, M); x (M, N). Other shapes,
    or a row number outside, raise ValueError before anything is written (the row numbers are
    checked in one pass over index)."""
    _take_rows_arguments(out, x, index)
    require(out.shape[0] == index.shape[0], "take_rows: out must have a row per element of "
            "index (B)")
    require(out.shape[1] == x.shape[1], "take_rows: out must have as many columns as x (N)")
    require(_in_range(index, x.shape[0]), "take_rows: index must hold row numbers of x, in "
            "[0, M)")
    n_rows = out.shape[0]
    # A copy is bound by memory, not arithmetic: a row element costs about as much time as 8
    # multiply-adds when the rows come from a large x (docs/kernels-notes.md).
    tiles = n_tiles(n_rows, 8 * out.shape[1])
    if tiles == 1:
        r0, r1 = span(0, 1, n_rows)
        _take_rows_span(out, x, index, r0, r1)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _take_rows_span(out, x, index, r0, r1)


_take_rows_arguments = arguments("take_rows", any_layout=True, out="matrix", x="matrix",
                                 index="int_index")
_M = _units.MATRIX
take_rows_unit = _units.unit("take_rows", take_rows, lambda dt: (_M[dt], _M[dt], _units.INDEX))


@njit(**SERIAL)
def _take_rows_span(out, x, index, r0, r1):
    for i in range(r0, r1):
        src = index[i]
        for j in range(out.shape[1]):
            out[i, j] = x[src, j]


@njit(**PARALLEL)
def take_csr_rows(out, data, indices, indptr, index):
    """out (B, N) = rows index (B,) of the CSR matrix (data, indices, indptr) (see CSR) with N
    columns, densified: each row of out is zeroed, then the row's stored values are added at
    their columns (duplicates summed: the values of SciPy's toarray). Raises ValueError before
    anything is written for a row number outside [0, M), or a row of those whose stored
    values lie outside data and indices or whose columns lie outside [0, N) (one pass over
    those rows; csr_is_valid checks a whole matrix)."""
    _take_csr_arguments(out, data, indices, indptr, index)
    require(out.shape[0] == index.shape[0], "take_csr_rows: out must have a row per element of "
            "index (B)")
    _check_csr_rows(out.shape[1], data, indices, indptr, index)
    n_rows = out.shape[0]
    # Zeroing the row costs as take_rows's copy does; the stored values add a scattered write
    # each (not measured: weighed as take_rows).
    tiles = n_tiles(n_rows, 8 * out.shape[1])
    if tiles == 1:
        _take_csr_span(out, data, indices, indptr, index, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _take_csr_span(out, data, indices, indptr, index, r0, r1)


_take_csr_arguments = arguments("take_csr_rows", any_layout=True, out="matrix",
                                data="vector", indices="int_index", indptr="int_index",
                                index="int_index")


@njit(**INLINED)
def _check_csr_rows(n_cols, data, indices, indptr, index):
    """take_csr_rows's check of the rows it reads: in the matrix, their values' positions
    rising within data and indices, their column numbers in [0, n_cols)."""
    n_stored = min(data.shape[0], indices.shape[0])
    columns_ok = True
    for i in range(index.shape[0]):
        row = index[i]
        require(row >= 0 and row < indptr.shape[0] - 1, "take_csr_rows: index must hold row "
                "numbers of the matrix, in [0, M) (M = len(indptr) - 1)")
        start, stop = indptr[row], indptr[row + 1]
        require(start >= 0 and start <= stop and stop <= n_stored, "take_csr_rows: indptr "
                "must not decrease, and its rows' values must lie within data and indices")
        for k in range(start, stop):
            columns_ok &= (indices[k] >= 0) & (indices[k] < n_cols)
    require(columns_ok, "take_csr_rows: indices must hold column numbers in [0, N), out's "
            "columns")


# One unit for each type of the indices (plan.CSR_UNITS).
take_csr_rows_unit = _units.unit(
    "take_csr_rows", take_csr_rows,
    lambda dt: (_M[dt], _units.VECTOR[dt], _units.INT64S, _units.INT64S, _units.INDEX))
take_csr_rows_int32_unit = _units.unit(
    "take_csr_rows_int32", take_csr_rows,
    lambda dt: (_M[dt], _units.VECTOR[dt], _units.INT32S, _units.INT32S, _units.INDEX))


@njit(**SERIAL)
def _take_csr_span(out, data, indices, indptr, index, r0, r1):
    for i in range(r0, r1):
        row = out[i]
        for j in range(row.shape[0]):
            row[j] = 0
        src = index[i]
        for k in range(indptr[src], indptr[src + 1]):
            row[indices[k]] += data[k]


@njit(**SERIAL)
def csr_is_valid(indices, indptr, n_cols, nnz):
    """Whether a CSR structure is one take_csr_rows can read without going out of bounds:
    indptr (M+1,) starts at 0, never decreases and ends at most at nnz (the length of data and
    of indices; ValueError if longer than indices), and every column number of a stored value
    is in [0, n_cols)."""
    _csr_is_valid_arguments(indices, indptr, n_cols, nnz)
    require(nnz <= indices.shape[0], "csr_is_valid: nnz must be at most indices' length")
    if indptr.shape[0] == 0 or indptr[0] != 0 or indptr[indptr.shape[0] - 1] > nnz:
        return False
    ok = True
    for i in range(indptr.shape[0] - 1):
        ok &= indptr[i] <= indptr[i + 1]
    for k in range(indptr[indptr.shape[0] - 1]):
        ok &= (indices[k] >= 0) & (indices[k] < n_cols)
    return ok


_csr_is_valid_arguments = arguments("csr_is_valid", any_layout=True, indices="int_index",
                                    indptr="int_index", n_cols="code", nnz="code")


@njit(**SERIAL)
def all_finite(x):
    """True when no element of the 2-D array x is NaN or +-Inf."""
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            total += x[i, j] * 0.0  # NaN and Inf turn the sum into NaN
    return total == 0.0


@njit(**SERIAL)
def labels_in_range(labels, n_classes):
    """True when every label (int32 or int64) is in [0, n_classes)."""
    _labels_arguments(labels, n_classes)
    return _in_range(labels, n_classes)


_labels_arguments = arguments("labels_in_range", any_layout=True, labels="int_index",
                               n_classes="code")


@njit(**INLINED)
def _in_range(values, n):
    """True when every element of values is in [0, n)."""
    ok = True
    for i in range(values.shape[0]):
        ok &= (values[i] >= 0) & (values[i] < n)
    return ok
