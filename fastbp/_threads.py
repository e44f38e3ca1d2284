"""One thread pool at a time.

fastbp's kernels run Numba ``prange`` loops whose tiles each call BLAS. If that BLAS had its own
worker threads, two pools would spin against each other and steps would run 50-100x slower. So
the BLAS that the kernels call (``fastbp.kernels._native.openblas``, a library of their own) is
limited to one thread, and Numba's pool is the only one: ``set_num_threads`` sets its size.
NumPy's BLAS, a separate library, is not touched.

How the kernels cut their matrix products into tiles for the threads is ``set_work_split``'s
choice: by the products' shapes (the default: the same bits at any thread count) or by the
thread count (fewer, larger BLAS calls).
"""
import ctypes

import numba

from .kernels._native import openblas, set_split_by_threads, splits_by_threads

_chosen = False   # whether set_num_threads was called (fit(comm=) then keeps the count)

# Looked up once: a ctypes attribute lookup per call would cost more than the call.
_get_blas_threads = openblas.scipy_openblas_get_num_threads
_get_blas_threads.restype = ctypes.c_int
_set_blas_threads = openblas.scipy_openblas_set_num_threads
_set_blas_threads.argtypes = [ctypes.c_int]


def pin_kernel_blas():
    """Limit the kernels' BLAS to one thread. Costs well under a microsecond when it already is
    (someone, threadpoolctl say, may have raised it since), so every entry point that runs
    matrix products calls it."""
    if _get_blas_threads() != 1:
        _set_blas_threads(1)


def kernel_blas_threads():
    """Thread count of the BLAS library the kernels call (1 once pinned)."""
    return _get_blas_threads()


def set_num_threads(n):
    """Set the number of threads every fastbp kernel uses (Numba's pool; BLAS stays at one).

    n must be an integer between 1 and numba.config.NUMBA_NUM_THREADS (the machine's cores
    unless NUMBA_NUM_THREADS says otherwise). Applies to the calling thread.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n: expected an integer from 1 to {limit}, got {n!r}")
    global _chosen
    pin_kernel_blas()
    numba.set_num_threads(n)
    _chosen = True


#: The ways set_work_split can cut the kernels' matrix products.
WORK_SPLITS = ("shape", "threads")


def set_work_split(split):
    """How every fastbp kernel cuts a matrix product into tiles for its threads.

    "shape" (the default): by the product's shape alone, into up to kernels.GRID_TILES tiles
    that the threads share out, so that training and inference give bitwise the same results
    at any thread count. "threads": one tile per thread (fewer, larger BLAS calls: faster on
    mid-size nets at a few threads, README), with results that are bitwise the same only at
    the same thread count. Applies to every thread of the process, from the next kernel call.
    """
    if split not in WORK_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(map(repr, WORK_SPLITS))}, got "
                         f"{split!r}")
    set_split_by_threads(split == "threads")


def get_work_split():
    """How the kernels cut matrix products: "shape" or "threads" (set_work_split)."""
    return "threads" if splits_by_threads() else "shape"


def chosen():
    """Whether set_num_threads chose the thread count."""
    return _chosen


def get_num_threads():
    """The number of threads fastbp's kernels use."""
    return numba.get_num_threads()
