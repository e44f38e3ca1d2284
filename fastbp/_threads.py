"""One thread pool at a time.

fastbp's kernels run Numba ``prange`` loops whose tiles each call BLAS. If that BLAS had its own
worker threads, two pools would spin against each other and steps would run 50-100x slower. So
the BLAS that the kernels call (SciPy's) is limited to one thread, and Numba's pool is the only
one: ``set_num_threads`` sets its size. NumPy's own BLAS, a separate library in NumPy and SciPy
wheels, is not touched.
"""
import os

import numba
import scipy
import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS so threadpoolctl sees it)
from threadpoolctl import ThreadpoolController

_kernel_libs = None


def _kernel_blas():
    """threadpoolctl handles for the BLAS library behind scipy.linalg.cython_blas (found once:
    the libraries loaded in a process do not change)."""
    global _kernel_libs
    if _kernel_libs is None:
        blas = ThreadpoolController().select(user_api="blas")
        scipy_dir = os.path.dirname(os.path.realpath(scipy.__file__))
        # Wheels bundle SciPy's BLAS in scipy.libs/ (or inside the package); NumPy's is elsewhere.
        scipy_own = [lib for lib in blas.lib_controllers
                     if os.path.realpath(lib.filepath).startswith(
                         (scipy_dir + os.sep, scipy_dir + ".libs" + os.sep))]
        # SciPy built against a shared BLAS (conda, system packages): limit every BLAS there is.
        _kernel_libs = scipy_own or blas.lib_controllers
    return _kernel_libs


_OPENBLAS_GETTERS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_")
_getters = None


def _thread_getters():
    """(library, function returning its thread count) pairs. For OpenBLAS the C function is
    looked up once: threadpoolctl looks it up on every call, and keeps a little memory each time,
    which a check on every training step cannot afford."""
    global _getters
    if _getters is None:
        _getters = []
        for lib in _kernel_blas():
            found = [getattr(lib.dynlib, name) for name in _OPENBLAS_GETTERS
                     if lib.internal_api == "openblas" and hasattr(lib.dynlib, name)]
            _getters.append((lib, found[0] if found else lib.get_num_threads))
    return _getters


def pin_kernel_blas():
    """Limit the kernels' BLAS to one thread. Costs about a microsecond when it already is, so
    every entry point that runs matrix products calls it."""
    for lib, get_num_threads in _thread_getters():
        if get_num_threads() != 1:
            lib.set_num_threads(1)


def kernel_blas_threads():
    """Thread counts of the BLAS libraries the kernels call (all 1 once pinned)."""
    return [lib.num_threads for lib in _kernel_blas()]


def set_num_threads(n):
    """Set the number of threads every fastbp kernel uses (Numba's pool; BLAS stays at one).

    n must be an integer between 1 and numba.config.NUMBA_NUM_THREADS (the machine's cores
    unless NUMBA_NUM_THREADS says otherwise). Applies to the calling thread.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n: expected an integer from 1 to {limit}, got {n!r}")
    pin_kernel_blas()
    numba.set_num_threads(n)


def get_num_threads():
    """The number of threads fastbp's kernels use."""
    return numba.get_num_threads()
