"""The row kernels and input checks refuse what they cannot survive, from Python and from @njit
code (see refusals.py), leaving every array as it was."""
import numpy as np
from refusals import run_refusals

from fastbp import kernels

SETUP = """
f32 = np.float32
x = np.arange(20, dtype=f32).reshape(10, 2)
out = np.zeros((3, 2), f32)
index = np.array([1, 5, 9])
# A CSR matrix of 3 rows and 2 columns: [[1, 2], [0, 3], [4, 0]].
data = np.array([1, 2, 3, 4], f32)
indices = np.array([0, 1, 1, 0])
indptr = np.array([0, 2, 3, 4])
dense = np.zeros((2, 2), f32)
rows = np.array([0, 2])
"""

CASES = [
    # label, kernel, arguments, exception, text
    ("row past x", "take_rows", "out, x, np.array([1, 5, 10])", "ValueError",
     "take_rows: index must hold row numbers of x, in [0, M)"),
    ("negative row", "take_rows", "out, x, np.array([1, -1, 5])", "ValueError",
     "take_rows: index must hold row numbers of x"),
    ("out rows", "take_rows", "out[:2], x, index", "ValueError",
     "take_rows: out must have a row per element of index"),
    ("out columns", "take_rows", "np.zeros((3, 3), f32), x, index", "ValueError",
     "take_rows: out must have as many columns as x"),
    ("dtypes", "take_rows", "out.astype(np.float64), x, index", "TypeError",
     "x is float32 but out is float64"),
    ("float index", "take_rows", "out, x, index.astype(np.float64)", "TypeError",
     "take_rows: index must be a 1-D int32 or int64 array"),
    ("csr row past the matrix", "take_csr_rows", "dense, data, indices, indptr, "
     "np.array([0, 3])", "ValueError", "take_csr_rows: index must hold row numbers of the "
     "matrix"),
    ("csr negative row", "take_csr_rows", "dense, data, indices, indptr, np.array([-1, 0])",
     "ValueError", "take_csr_rows: index must hold row numbers"),
    ("csr out rows", "take_csr_rows", "dense[:1], data, indices, indptr, rows", "ValueError",
     "take_csr_rows: out must have a row per element of index"),
    ("csr column past out", "take_csr_rows", "dense[:, :1], data, indices, indptr, rows",
     "ValueError", "take_csr_rows: indices must hold column numbers in [0, N)"),
    ("csr negative column", "take_csr_rows", "dense, data, np.array([0, 1, 1, -1]), indptr, "
     "rows", "ValueError", "take_csr_rows: indices must hold column numbers"),
    ("csr row past data", "take_csr_rows", "dense, data[:3], indices, indptr, rows",
     "ValueError", "take_csr_rows: indptr must not decrease, and its rows' values must lie "
     "within data and indices"),
    ("csr row past indices", "take_csr_rows", "dense, data, indices[:3], indptr, rows",
     "ValueError", "its rows' values must lie within data and indices"),
    ("csr falling indptr", "take_csr_rows", "dense, data, indices, np.array([0, 2, 1, 4]), "
     "np.array([1, 0])", "ValueError", "take_csr_rows: indptr must not decrease"),
    ("csr negative indptr", "take_csr_rows", "dense, data, indices, np.array([-1, 2, 3, 4]), "
     "rows", "ValueError", "take_csr_rows: indptr must not decrease"),
    ("csr dtypes", "take_csr_rows", "dense, data.astype(np.float64), indices, indptr, rows",
     "TypeError", "data is float64 but out is float32"),
    ("csr float indices", "take_csr_rows", "dense, data, indices.astype(f32), indptr, rows",
     "TypeError", "take_csr_rows: indices must be a 1-D int32 or int64 array"),
    ("csr_is_valid: nnz past indices", "csr_is_valid", "indices[:2], indptr, 2, 4",
     "ValueError", "csr_is_valid: nnz must be at most indices' length"),
    ("csr_is_valid: float indptr", "csr_is_valid", "indices, indptr.astype(np.float64), 2, 4",
     "TypeError", "csr_is_valid: indptr must be a 1-D int32 or int64 array"),
    ("labels: floats", "labels_in_range", "np.array([0.5, 1.0]), 3", "TypeError",
     "labels_in_range: labels must be a 1-D int32 or int64 array"),
    ("labels: 2-D", "labels_in_range", "np.zeros((2, 2), np.int64), 3", "TypeError",
     "labels_in_range: labels must be a 1-D int32 or int64 array"),
]


def test_row_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


def test_row_kernels_read_any_layout(rng):
    """They read by indexing, which follows any strides: strided and Fortran-ordered arrays
    are not refused, and give the rows of their contiguous copies."""
    x = np.asfortranarray(rng.normal(size=(12, 5)))
    out = np.asfortranarray(np.zeros((4, 5)))
    index = np.arange(12)[::3]
    kernels.take_rows(out, x, index)
    assert np.array_equal(out, x[index])
    assert kernels.labels_in_range(np.array([0, 9, 1, 9], dtype=np.int32)[::2], 2)
    indptr = np.array([0, 1, 2], dtype=np.int32)
    dense = np.zeros((2, 6))[:, ::2]
    kernels.take_csr_rows(dense, np.array([5.0, 7.0]), np.array([2, 0], np.int32), indptr,
                          np.array([1, 0]))
    assert np.array_equal(dense, [[7, 0, 0], [0, 0, 5]])
