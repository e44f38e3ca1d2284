"""One thread pool at a time.

fastbp's kernels run Numba ``prange`` loops whose tiles each call BLAS. If that BLAS had its own
worker threads, two pools would spin against each other and steps would run 50-100x slower. So
the BLAS that the kernels call (``fastbp.kernels._native.openblas``, a library of their own) is
limited to one thread, and Numba's pool is the only one: ``set_num_threads`` sets its size.
NumPy's BLAS, a separate library, is not touched.

How the kernels cut their matrix products into tiles for the threads is ``set_work_split``'s
choice: by the products' shapes (the default: the same bits at any thread count) or by the
thread count (fewer, larger BLAS calls). Which BLAS build runs those products is
``set_blas``'s.

Until a count is chosen, ``fit`` runs each epoch on the cores that other processes leave free
(``LoadProbe``, ``fit_threads``): in the default work split the count changes no result.
"""
import contextlib
import ctypes
import os
import time

import numba

from .kernels._native import (BLAS_CHOICES as _BUILDS, blas_in_use, loaded_blas,
                              set_split_by_threads, splits_by_threads, use_blas,
                              use_default_blas)

_chosen = False   # whether set_num_threads was called (fit(comm=) then keeps the count)

# (get, set) of each loaded kernel BLAS's thread count, looked up once: a ctypes attribute
# lookup per call would cost more than the call.
_blas_threads = {}


def _thread_controls(lib):
    controls = _blas_threads.get(id(lib))
    if controls is None:
        get, set_ = lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads
        get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
        controls = _blas_threads[id(lib)] = (get, set_)
    return controls


def pin_kernel_blas():
    """Limit the kernels' BLAS libraries to one thread. Costs well under a microsecond when
    they already are (someone, threadpoolctl say, may have raised it since), so every entry
    point that runs matrix products calls it."""
    for lib in loaded_blas():
        get, set_ = _thread_controls(lib)
        if get() != 1:
            set_(1)


def kernel_blas_threads():
    """The most threads any BLAS library the kernels call runs on (1 once pinned)."""
    return max(_thread_controls(lib)[0]() for lib in loaded_blas())


def set_num_threads(n):
    """Set the number of threads every fastbp kernel uses (Numba's pool; BLAS stays at one).

    n must be an integer between 1 and numba.config.NUMBA_NUM_THREADS (the machine's cores
    unless NUMBA_NUM_THREADS says otherwise). Applies to the calling thread. Until a count is
    chosen (here or by NUMBA_NUM_THREADS), ``fit`` runs each epoch on the cores that other
    processes left free lately, and puts the count back after.
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


#: What set_blas takes: "auto" (the default build) or a build's name.
BLAS_CHOICES = ("auto",) + tuple(_BUILDS)


def set_blas(blas):
    """Which BLAS build runs every fastbp kernel's float32 and float64 matrix products.

    "openblas": the kernels OpenBLAS chooses for this CPU. "openblas-avx512": the same
    OpenBLAS, loaded a second time with its AVX-512 (SkylakeX) kernels, for CPUs that have
    AVX-512 but on which OpenBLAS chooses its AVX2 ones (AMD Zen 4 and 5): on a Zen 5 core they
    multiply twice as fast (README, "Which BLAS"). "auto", what fastbp starts with:
    "openblas-avx512" on such CPUs, "openblas" elsewhere (get_blas says which). The builds give
    results that differ in the last bits (each is deterministic, and the same at any thread
    count in the default work split). Applies to every thread of the process, from the next
    kernel call. Raises ValueError for another name and kernels.BlasUnavailable where the CPU
    lacks the AVX-512 instructions those kernels need, the BLAS in use unchanged either way.
    """
    if blas not in BLAS_CHOICES:
        raise ValueError(f"blas: expected one of {', '.join(map(repr, BLAS_CHOICES))}, got "
                         f"{blas!r}")
    if blas == "auto":
        use_default_blas()
    else:
        use_blas(blas)
    pin_kernel_blas()


def get_blas():
    """The BLAS build the kernels' float products run on: "openblas" or "openblas-avx512"."""
    return blas_in_use()[0]


def get_num_threads():
    """The number of threads fastbp's kernels use."""
    return numba.get_num_threads()


# -- the load of the machine ---------------------------------------------------------------------

class LoadProbe:
    """How many cores' worth of other processes' work ran on this process's CPUs lately: their
    busy time in /proc/stat less this process's own CPU time, over the wall time since the last
    reading. A parallel region waits for its slowest thread, and a thread that shares a core
    with another busy process runs in turns with it, so fit runs on the cores left free
    (``fit_threads``).

    Counted: user, system and interrupt time; niced time only when this process is niced too (a
    niced process soaks up idle cores but yields them to us). Not counted: a hypervisor's steal
    time (it hits every virtual CPU, whatever our thread count), and threads of this process
    that are not fastbp's (their time is this process's own). A reading spans at least
    MIN_WINDOW (a shorter one gives the last estimate again) and at most MAX_WINDOW (a longer
    one, as after an idle hour in a notebook, is stale: it starts a new window instead).
    """

    MIN_WINDOW = 0.05   # seconds: /proc/stat counts in ticks of 10 ms
    MAX_WINDOW = 5.0

    def __init__(self, stat_path="/proc/stat", clock=time.perf_counter,
                 own_cpu=time.process_time):
        self.stat_path, self.clock, self.own_cpu = stat_path, clock, own_cpu
        self.cpus = ({f"cpu{c}" for c in os.sched_getaffinity(0)}
                     if hasattr(os, "sched_getaffinity") else None)
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        niced = hasattr(os, "getpriority") and os.getpriority(os.PRIO_PROCESS, 0) > 0
        # user nice system (idle iowait) irq softirq
        self.busy_fields = (0, 1, 2, 5, 6) if niced else (0, 2, 5, 6)
        self.estimate = None
        self.restart()

    def restart(self):
        """Start a new window here (at import, and in a forked child, whose CPU clock restarts)."""
        self.last = self._reading()

    def _reading(self):
        """(wall seconds, busy seconds of our CPUs, this process's CPU seconds), or None where
        /proc/stat cannot be read or names none of our CPUs (not Linux; a container that
        renumbers them)."""
        try:
            with open(self.stat_path) as f:
                busy, matched = 0, 0
                for line in f:
                    name, _, rest = line.partition(" ")
                    if not name.startswith("cpu"):
                        break   # the per-CPU lines come first
                    if name != "cpu" and (self.cpus is None or name in self.cpus):
                        fields = rest.split()
                        busy += sum(int(fields[i]) for i in self.busy_fields)
                        matched += 1
        except (OSError, ValueError, IndexError):
            return None
        if not matched:
            return None
        return self.clock(), busy / self.tick, self.own_cpu()

    def others(self):
        """Cores' worth of other processes' work over the window that ends now: None where
        there is no reading (or the window was stale), the last estimate where the window is
        still shorter than MIN_WINDOW."""
        if self.last is None or self.clock() - self.last[0] < self.MIN_WINDOW:
            return self.estimate if self.last is not None else None
        now = self._reading()
        if now is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self.last, now))
        self.last = now
        if wall > self.MAX_WINDOW:
            self.estimate = None
            return None
        self.estimate = max(0.0, (busy - own) / wall)
        return self.estimate


_probe = LoadProbe()   # from import on, so that fit's first reading spans the time before it
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _probe.restart())


def count_chosen():
    """Whether this process's thread count was chosen (set_num_threads, or NUMBA_NUM_THREADS),
    and so is kept as it is."""
    return _chosen or "NUMBA_NUM_THREADS" in os.environ


@contextlib.contextmanager
def count_restored():
    """The calling thread's thread count as it was after the body, unless someone chose a
    count meanwhile (a callback's set_num_threads stays)."""
    before, chosen_before = numba.get_num_threads(), _chosen
    try:
        yield
    finally:
        if _chosen == chosen_before and numba.get_num_threads() != before:
            numba.set_num_threads(before)


def load_free():
    """Whether fit may set its own thread count from the machine's load: no count chosen, more
    than one thread, and the kernels' default work split, in which the count changes no
    result's bits."""
    return (not count_chosen() and not splits_by_threads()
            and numba.config.NUMBA_NUM_THREADS > 1)


def fit_threads(most, probe=None):
    """Set the calling thread's count to the cores that other processes left free lately
    (rounded; at least 1, at most `most`, the count fit started with), when the probe has a
    reading; returns the count in use. fit calls it before each epoch, while load_free()."""
    probe = _probe if probe is None else probe
    others = probe.others()
    if others is not None and probe.cpus:
        count = max(1, min(most, int(len(probe.cpus) - others + 0.5)))
        if count != numba.get_num_threads():
            numba.set_num_threads(count)
    return numba.get_num_threads()


@contextlib.contextmanager
def chosen_count(n):
    """set_num_threads(n) for the body only: the count, and whether one was chosen, as they
    were after (fastbp.sklearn's n_threads)."""
    global _chosen
    before, chosen_before = numba.get_num_threads(), _chosen
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
        _chosen = chosen_before
