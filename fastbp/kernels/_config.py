"""Compiler flags and tuning constants for every kernel: the one place that sets them.

Every ``@njit`` in ``fastbp.kernels`` takes one of ``SERIAL``, ``PARALLEL``, ``INLINED`` or
``ELEMENTWISE``, and every ``cfunc`` ``C_FUNCTION`` (tests/test_design.py fails on any that sets
its own).

Numba's on-disk cache checks only the source file a function is defined in, but a compiled
function also holds copies of the functions it calls from other modules. ``guard_cache`` keeps
an edit in one kernel module from leaving stale code of another in use: at import it compares a
hash of every module of this package with the one stored beside the cache, and removes this
package's cached code when they differ.
"""
import functools
import hashlib
import os
import pathlib

# reassoc lets reductions vectorise (the order is fixed at compile time, so results stay
# deterministic). Left out: nnan and ninf, so that NaN and Inf still propagate and the checks
# for them keep working; arcp and contract, with which the code Numba compiles in-process and
# the code it reloads from its cache differed in the last bit.
FASTMATH = {"nsz", "reassoc"}


def _installed(py_file):
    """Whether py_file is one of fastbp's own sources installed by an installer (into a
    site-packages or dist-packages folder, or beside its fastbp-*.dist-info, as pip install
    --target leaves it), rather than a checkout."""
    return PACKAGE_DIR.parent in pathlib.Path(py_file).resolve().parents and _installed_here()


@functools.lru_cache(maxsize=None)
def _installed_here():
    """Whether this copy of fastbp was installed by an installer (see _installed): asked once,
    not for each of the hundreds of functions whose cache Numba locates."""
    folder = PACKAGE_DIR.parent.parent
    return (folder.name in ("site-packages", "dist-packages")
            or any(folder.glob("fastbp-*.dist-info")))


def _use_user_cache_for_installs():
    """Cache an installed fastbp's compiled code in the per-user folder (Numba's
    UserWideCacheLocator: on Linux ~/.cache/numba or $XDG_CACHE_HOME/numba; the platform's
    user cache folder elsewhere), not in __pycache__
    beside its sources: pip does not record files written there, so uninstalling left them in
    site-packages, where they hid a later editable install (``module 'fastbp' has no attribute
    'MLP'``). NUMBA_CACHE_DIR still comes first; a checkout still caches beside its sources;
    without a writable per-user folder Numba goes on to its other locators, as before."""
    try:
        from numba.core.caching import CacheImpl, InTreeCacheLocator, UserWideCacheLocator
    except ImportError:  # another Numba: its own rules
        return

    class InstalledFastbpLocator(UserWideCacheLocator):
        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if _installed(py_file) else None

    locators = CacheImpl._locator_classes
    if InTreeCacheLocator in locators and not any(
            k.__name__ == InstalledFastbpLocator.__name__ for k in locators):
        locators.insert(locators.index(InTreeCacheLocator), InstalledFastbpLocator)


def _cache_usable():
    """Whether Numba has somewhere to cache this package's compiled code: one of its cache
    locators (NUMBA_CACHE_DIR, __pycache__ beside the sources, a per-user folder) is writable.
    A read-only install with no writable home has none, and cache=True would then fail at
    import; without a cache, fastbp compiles in memory on every run instead, and says so once."""
    try:
        from numba.core.caching import FunctionCache
    except ImportError:  # another Numba: let it decide
        return True
    try:
        FunctionCache(_cache_usable)   # finds a locator exactly as cache=True does
    except RuntimeError:
        return False
    return True


PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_use_user_cache_for_installs()
CACHE = _cache_usable()
if not CACHE:
    import warnings
    warnings.warn("fastbp: no writable folder for Numba's cache of compiled kernels (set "
                  "NUMBA_CACHE_DIR to one); compiling in memory, on every run", stacklevel=2)
SERIAL = dict(cache=CACHE, nogil=True, fastmath=FASTMATH)
PARALLEL = dict(SERIAL, parallel=True)
# Numba-level inlining, for small helpers whose callers must see through them (a scalar
# function inside a vectorised loop) or that are called at few sites.
INLINED = dict(SERIAL, inline="always")
# Loops that divide by values that cannot be zero (Adam's denominator holds eps > 0): NumPy's
# error model, which does not test every divisor for zero. Python's does, and that test kept
# Adam's update loop from vectorising (docs/kernels-notes.md). Also divisions whose IEEE result
# is the answer when the divisor is 0 (sample weights that sum to 0: a NaN loss, which the
# training step refuses), where Python's model would raise, and a unit cannot raise.
ELEMENTWISE = dict(SERIAL, error_model="numpy")
# Without fast-math: arithmetic whose order is the point (an exact range reduction, which
# reassoc would fold back into the inexact one). Not inlined by Numba, which would compile it
# with its caller's flags; LLVM still inlines and vectorises it, keeping its own flags.
STRICT = dict(cache=CACHE, nogil=True, fastmath=False)
# The argument checks' typing guards (_checks): not cached on their own (every guard's code
# has one name in one file, so Numba's cache would hand a kernel another's); the kernels that
# call them are.
GUARD = dict(SERIAL, cache=False)
# C-ABI functions (Numba cfuncs: the units, the emulated bfloat16 product), cached alike.
C_FUNCTION = dict(cache=CACHE)

# Multiply-adds a tile must hold before it is worth waking another thread for it: about the GEMM
# work that entering a parallel region costs in time (docs/kernels-notes.md).
MIN_TILE_WORK = 1 << 18
# The most tiles a matrix product is cut into, by its shape alone (the default work split):
# BLAS rounds a tile's sums by the tile's shape, so cuts that followed the thread count would
# give other bits at another thread count. 16 keeps 16 cores busy on a large product
# (docs/kernels-notes.md).
GRID_TILES = 16
# The tiles OpenBLAS's AVX-512 kernels multiply without packing their operands when the product
# is an input gradient (dpre @ weight^T; in OpenBLAS's column-major terms, A^T B), as its 0.3.34
# decides: at most 1,200 outputs from dot products of at least 32 terms, and at most 1e6
# multiply-adds. Such tiles ran 1.2-1.9x faster than the larger ones the shape rule gives
# (docs/kernels-notes.md).
UNPACKED_TILE_OUTPUTS = 1200
UNPACKED_MIN_DEPTH = 32
UNPACKED_MAX_WORK = 1_000_000
# The input gradient's unpacked tiles have at most this many rows: of the grids tried, those
# with 32 or fewer ran fastest (docs/kernels-notes.md).
UNPACKED_ROWS = 32
# dense.splits_input: a forward product is cut over its inputs when they outnumber its batch
# rows by more than this (measured on 2 threads: README, "Wide inputs, few rows").
INPUT_SPLIT_RATIO = 4
# Elements per chunk of the parallel norm and L2 penalty. Fixed (not per thread) so that the
# norm, the clipping that uses it and the penalty do not depend on the thread count; small
# enough that a net of tens of thousands of parameters shares them out evenly between threads
# (docs/kernels-notes.md).
NORM_CHUNK = 1 << 12
# Elements per chunk of the parallel update passes (the optimizers', sgd_update). Each element
# is updated alone, so any chunking gives the same bits: this one may change without changing
# a result. Small for the same reason as NORM_CHUNK, and so that each thread updates the
# gradients its own tiles wrote.
UPDATE_CHUNK = 1 << 12

_STAMP = "fastbp-kernels-sources.sha256"


def sources_hash():
    """sha256 of every module of this package, in name order."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def guard_cache(cache_dir):
    """Remove this package's cached code from cache_dir (the folder where Numba caches these
    modules' functions) unless it was compiled from the sources as they are now. Best effort: a
    cache folder that cannot be read or written is left alone (Numba then compiles in memory)."""
    if cache_dir is None:
        return
    folder = pathlib.Path(cache_dir)
    stamp = folder / _STAMP
    current = sources_hash()
    try:
        if stamp.read_text() == current:
            return
    except OSError:
        pass
    modules = tuple(p.stem + "." for p in PACKAGE_DIR.glob("*.py"))
    try:
        for entry in folder.iterdir():
            if entry.name.startswith(modules) and entry.suffix in (".nbi", ".nbc"):
                entry.unlink(missing_ok=True)
        tmp = folder / f".{_STAMP}.{os.getpid()}"
        tmp.write_text(current)
        os.replace(tmp, stamp)
    except OSError:
        pass
