"""Row gathering and input checks."""
import numpy as np
from numba import njit, prange

from ._config import PARALLEL, SERIAL
from ._tiling import n_tiles, span

CACHE_LINE = 64


def aligned_zeros(shape, dtype):
    """A C-contiguous array of zeros whose data starts on a cache-line boundary (plain Python).

    NumPy's large arrays start 16 bytes past one, so every row of a weight matrix and many
    vector loads straddle two lines; aligned buffers make steps faster (README: measured). The
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
    """out (B, N) = x[index] for index (B,) of row numbers (not checked); x (M, N)."""
    n_rows = out.shape[0]
    # A copy is bound by memory, not arithmetic: a row element costs about as much time as 8
    # multiply-adds when the rows come from a large x (128 x 784 from 60,000 rows: 48 us on one
    # thread, 28 us on two, measured).
    tiles = n_tiles(n_rows, 8 * out.shape[1])
    if tiles == 1:
        r0, r1 = span(0, 1, n_rows)
        _take_rows_span(out, x, index, r0, r1)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _take_rows_span(out, x, index, r0, r1)


@njit(**SERIAL)
def _take_rows_span(out, x, index, r0, r1):
    for i in range(r0, r1):
        src = index[i]
        for j in range(out.shape[1]):
            out[i, j] = x[src, j]


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
    """True when every label is in [0, n_classes)."""
    ok = True
    for i in range(labels.shape[0]):
        ok &= (labels[i] >= 0) & (labels[i] < n_classes)
    return ok
