"""Design requirements: no allocation in a warm training step, one thread pool at a time, and
bitwise reproducible results, the same at any thread count."""
import gc
import json
import os
import pathlib
import re
import subprocess
import sys
import tracemalloc

import numba
import numpy as np
import pytest

import fastbp
from fastbp import _threads, kernels
from helpers import (REPRODUCIBILITY_SIZES, digest, max_threads, reproducibility_rows,
                     reproducibility_run, subprocess_env)

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# No allocation once warm


def test_compiled_training_step_makes_no_nrt_allocations():
    """Numba's NRT statistics in a child interpreter: a user @njit loop that runs
    kernels.mlp_train_step 1 or 50 times makes the same number of allocations (the one MemInfo
    per array argument that enters compiled code), and frees them all. A control loop that does
    allocate shows that the statistics see allocations. Also with sample weights: the step,
    and fit's compiled epoch loop (one step of weight 0 skipped), with and without
    accumulation."""
    result = subprocess.run([sys.executable, str(HERE / "nrt_probe.py"), "1", "50"],
                            env=subprocess_env(NUMBA_NRT_STATS="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    control = report.pop("control")
    report.pop("threads")
    assert control["50"]["alloc"] - control["1"]["alloc"] == 49
    assert len(report) == 13
    for case, by_n in report.items():
        assert by_n["50"]["alloc"] == by_n["1"]["alloc"], (case, by_n)
        assert by_n["50"]["mi_alloc"] == by_n["1"]["mi_alloc"], (case, by_n)
        for n, c in by_n.items():
            assert c["alloc"] == c["free"] and c["mi_alloc"] == c["mi_free"], (case, n, c)


def traced_steps(model, opt, X, y, n_steps, w=None):
    """(growth, peak) in bytes of traced Python memory over n_steps of each training path
    (with sample weights w, when given)."""
    for _ in range(10):       # warm: buffers grown, dispatch caches filled
        opt.train_step(X, y, w)
        model.loss_and_grad(X, y, w)
        opt.step()
    tracemalloc.start()
    try:
        # Warm-up under tracing, so that caches filled once are not counted as growth.
        for _ in range(100):
            opt.train_step(X, y, w)
            model.loss_and_grad(X, y, w)
            opt.step()
        gc.collect()  # only memory that stays counts as growth
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(n_steps):
            opt.train_step(X, y, w)
        for _ in range(n_steps):
            model.loss_and_grad(X, y, w)
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop", "bce-l2",
                                       "weighted"])
def test_training_steps_do_not_allocate_in_python(dtype, optimizer):
    """tracemalloc (which sees NumPy's allocations) over 200 fused steps and 200 loss_and_grad
    + step pairs: no growth, and a peak of a few hundred bytes (Python floats, call frames)
    that does not depend on the batch size, so no batch-sized array is made. (One thread: the
    Python side is the same at any thread count, and a busy machine slows parallel steps.)
    "bce-l2": a binary cross-entropy model with an L2 penalty, trained by SGD; "weighted":
    that with sample weights (float64, so taken as they are)."""
    fastbp.set_num_threads(1)
    rng = np.random.default_rng(0)
    peaks = {}
    for n_rows in (16, 8192):
        bce = optimizer in ("bce-l2", "weighted")
        model = fastbp.MLP([16, 32, 4], activation="relu", dtype=dtype, seed=0,
                           loss="binary_cross_entropy" if bce else "softmax_cross_entropy",
                           l2=0.1 if bce else 0.0)
        opt = {"sgd": lambda: fastbp.SGD(model, lr=1e-3, clip_norm=1.0),
               "momentum": lambda: fastbp.SGD(model, lr=1e-3, momentum=0.9, weight_decay=0.1),
               "adam": lambda: fastbp.Adam(model, amsgrad=True, clip_norm=1.0),
               "rmsprop": lambda: fastbp.RMSprop(model, momentum=0.9, centered=True,
                                                 clip_norm=1.0),
               "bce-l2": lambda: fastbp.SGD(model, lr=1e-3, clip_norm=1.0),
               "weighted": lambda: fastbp.SGD(model, lr=1e-3, clip_norm=1.0)}[optimizer]()
        X = rng.normal(size=(n_rows, 16)).astype(dtype)
        y = ((rng.random((n_rows, 4)) < 0.5).astype(dtype) if bce
             else rng.integers(0, 4, size=n_rows))
        w = rng.random(n_rows) + 0.5 if optimizer == "weighted" else None
        growth, peak = traced_steps(model, opt, X, y, 200, w)
        assert growth < 2048, f"{growth} bytes more after 400 steps (batch {n_rows})"
        assert peak < 8192, f"peak of {peak} bytes during the steps (batch {n_rows})"
        peaks[n_rows] = peak
    # Any array with even one byte per row would add 8192 bytes to the big batch's peak; the
    # peaks themselves move by a few KB with Python's and Numba's dispatch caches.
    assert peaks[8192] <= peaks[16] + 4096


def traced_fit_peak(n_rows, sample_weight, per_step):
    """Peak traced Python memory (bytes above the start) of a 2-epoch fit of n_rows rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 16))
    y = rng.integers(0, 4, size=n_rows)

    class PerStep:
        def on_step_end(self, *args):
            pass
    model = fastbp.MLP([16, 32, 4], dtype=np.float64, seed=0, l2=0.1)
    opt = fastbp.SGD(model, lr=1e-3)
    options = dict(epochs=2, batch_size=64, seed=0, sample_weight=sample_weight,
                   callbacks=[PerStep()] if per_step else (), metrics_rows=64)
    fastbp.fit(model, X, y, opt, **options)   # warm
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        fastbp.fit(model, X, y, opt, **options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


@pytest.mark.parametrize("per_step", [False, True])
def test_a_weighted_fit_allocates_no_more_than_an_unweighted_one(per_step):
    """tracemalloc over fit (its compiled chunks, or one call per step): sample weights add
    only the batch-sized buffer they are gathered into, a few small per-chunk arrays, and one
    step's worth of rows in the per-step path, nothing of the data set's size (here 160 KB per
    float64 column of rows, with rows of weight 0, so some steps are skipped)."""
    fastbp.set_num_threads(1)
    n_rows = 20000
    w = np.random.default_rng(1).random(n_rows)
    w[:640] = 0
    plain = traced_fit_peak(n_rows, None, per_step)
    weighted = traced_fit_peak(n_rows, w, per_step)
    assert weighted - plain < 8192, (plain, weighted)


def test_buffers_grow_once_and_smaller_batches_reuse_them():
    rng = np.random.default_rng(0)
    model = fastbp.MLP([8, 16, 3], activation="tanh", dtype=np.float64, seed=0)
    opt = fastbp.SGD(model, lr=0.01)

    def activation_bytes():
        return model.memory_report()["activations"]

    def batch(n):
        return rng.normal(size=(n, 8)), rng.integers(0, 3, size=n)

    opt.train_step(*batch(32))
    acts, deltas, size32 = model.engine.work.acts, model.engine.work.deltas, activation_bytes()
    assert size32 > 0
    opt.train_step(*batch(32))
    model.loss_and_grad(*batch(20))
    opt.train_step(*batch(1))
    assert model.engine.work.acts is acts and model.engine.work.deltas is deltas
    assert activation_bytes() == size32

    opt.train_step(*batch(100))                # larger: grows once
    grown, size100 = model.engine.work.acts, activation_bytes()
    assert grown is not acts and size100 > size32
    for n in (100, 64, 7, 99):
        opt.train_step(*batch(n))
        model.loss_and_grad(*batch(n))
        assert model.engine.work.acts is grown and activation_bytes() == size100

    # a smaller batch after a larger one still gives exactly the fresh model's result
    X, y = batch(7)
    fresh = fastbp.MLP([8, 16, 3], activation="tanh", dtype=np.float64, seed=0)
    fresh.params[...] = model.params
    assert fresh.loss_and_grad(X, y) == model.loss_and_grad(X, y)
    assert np.array_equal(fresh.grads, model.grads)


@pytest.mark.parametrize("shape", [7, (0,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_aligned_zeros(shape, dtype):
    arrays = [kernels.aligned_zeros(shape, dtype) for _ in range(5)]
    for a in arrays:
        assert a.shape == np.zeros(shape).shape and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable and not a.any()
        assert a.size == 0 or a.ctypes.data % kernels.CACHE_LINE == 0  # empty: nothing to align
    arrays[0][...] = 1  # each has memory of its own
    assert not any(a.any() for a in arrays[1:])


def test_model_buffers_start_on_a_cache_line():
    """Parameters, gradients and the workspace are aligned (NumPy alone would start them 16
    bytes past a line), also after the workspace grows."""
    model = fastbp.MLP([50, 30, 7], dtype=np.float32, seed=0)
    X, y = np.ones((300, 50), np.float32), np.arange(300) % 7
    for n in (1, 300):
        model.loss_and_grad(X[:n], y[:n])
        for name, buffer in [("params", model.params), ("grads", model.grads),
                             ("acts", model.engine.work.acts),
                             ("deltas", model.engine.work.deltas)]:
            assert buffer.ctypes.data % kernels.CACHE_LINE == 0, (name, n)


# ---------------------------------------------------------------------------------------------
# One thread pool at a time


def test_kernel_blas_is_single_threaded_while_numba_pool_is_not():
    model = fastbp.MLP([16, 32, 4], activation="relu", dtype=np.float32, seed=0)
    X = np.random.default_rng(0).normal(size=(256, 16))
    y = np.arange(256) % 4
    fastbp.SGD(model, lr=0.01).train_step(X, y)
    assert _threads.kernel_blas_threads() == 1
    if max_threads() >= 2:
        fastbp.set_num_threads(2)
        assert fastbp.get_num_threads() == numba.get_num_threads() == 2
        fastbp.SGD(model, lr=0.01).train_step(X, y)
        assert _threads.kernel_blas_threads() == 1
    fastbp.set_num_threads(1)
    assert fastbp.get_num_threads() == numba.get_num_threads() == 1


def test_fit_pins_blas_that_a_user_raised():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model = fastbp.MLP([4, 8, 2], activation="tanh", dtype=np.float64, seed=0)
    X = np.random.default_rng(0).normal(size=(20, 4))
    y = np.arange(20) % 2
    with threadpoolctl.threadpool_limits(limits=4, user_api="blas"):
        raised = _threads.kernel_blas_threads()
        if raised < 2:
            pytest.skip(f"this BLAS cannot be given more than one thread ({raised})")
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, lr=0.1), epochs=1, batch_size=5)
        assert _threads.kernel_blas_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", None, True, 10 ** 6])
def test_set_num_threads_validates(bad):
    before = fastbp.get_num_threads()
    with pytest.raises((ValueError, TypeError)) as info:
        fastbp.set_num_threads(bad)
    assert re.search(r"(^|\W)n(\W|$)", str(info.value)), str(info.value)
    assert fastbp.get_num_threads() == before


def test_set_num_threads_rejects_more_than_the_pool():
    with pytest.raises(ValueError):
        fastbp.set_num_threads(max_threads() + 1)


def test_fresh_process_state():
    """In a new interpreter: from import on (before any model, as kernels called from a user's
    own @njit code need), the kernels' BLAS has one thread, and Numba's pool has every
    configured thread."""
    code = ("import json, numba, fastbp; from fastbp import _threads; "
            "print(json.dumps([_threads.kernel_blas_threads(), fastbp.get_num_threads(), "
            "numba.config.NUMBA_NUM_THREADS]))")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    blas, threads, configured = json.loads(result.stdout.strip().splitlines()[-1])
    assert blas == 1
    assert threads == configured


# ---------------------------------------------------------------------------------------------
# Reproducibility


needs_two_threads = pytest.mark.skipif(max_threads() < 2, reason="needs 2 Numba threads")


@needs_two_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_reproducible_at_a_fixed_thread_count(dtype):
    # every matrix product holds several tiles' worth of work, so the kernels split it
    n_rows = reproducibility_rows()
    for a, b in zip(REPRODUCIBILITY_SIZES[:-1], REPRODUCIBILITY_SIZES[1:]):
        assert n_rows * a * b >= 2 * kernels.MIN_TILE_WORK
    first = reproducibility_run(dtype, threads=2)
    for _ in range(2):
        again = reproducibility_run(dtype, threads=2)
        assert again[0] == first[0]
        assert np.array_equal(again[1], first[1]) and np.array_equal(again[2], first[2])


@needs_two_threads
def test_bitwise_reproducible_across_processes():
    code = ("import sys; sys.path.insert(0, {here!r}); import numpy as np; "
            "from helpers import reproducibility_run, digest; "
            "print(digest(*reproducibility_run(np.float64, threads=2)))").format(here=str(HERE))
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == digest(
        *reproducibility_run(np.float64, threads=2))


@needs_two_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_agree_bitwise(dtype):
    """The products' tiles follow their shapes, not the thread count (tests/test_thread_counts.py
    covers the rest)."""
    one, two = (reproducibility_run(dtype, threads=n) for n in (1, 2))
    assert one[0] == two[0]
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2])


def test_repeated_gradients_are_bitwise_identical():
    rng = np.random.default_rng(5)
    model = fastbp.MLP([32, 64, 10], activation="sigmoid", dtype=np.float32, seed=0)
    X = rng.normal(size=(1024, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=1024)
    loss = model.loss_and_grad(X, y)
    grads = model.grads.copy()
    for _ in range(5):
        assert model.loss_and_grad(X, y) == loss
        assert np.array_equal(model.grads, grads)


# ---------------------------------------------------------------------------------------------
# One place for compiler flags; no stale compiled code


KERNELS_DIR = pathlib.Path(kernels.__file__).resolve().parent
FLAG_SETS = {"SERIAL", "PARALLEL", "INLINED", "ELEMENTWISE", "STRICT"}


def _jit_calls(path):
    """(line, how) of every njit/cfunc call in a source file: how is the set of names passed
    as **kwargs, or a description of anything else."""
    import ast
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("njit", "cfunc"):
            spread = {kw.value.id for kw in node.keywords
                      if kw.arg is None and isinstance(kw.value, ast.Name)}
            plain = [kw.arg for kw in node.keywords if kw.arg is not None]
            found.append((node.lineno, node.func.id, spread, plain, len(node.args)))
        elif isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if getattr(dec, "id", None) == "njit":  # a bare @njit
                    found.append((dec.lineno, "njit", set(), [], 0))
    return found


def test_strict_code_sets_fastmath_off_itself():
    """Numba gives a function that does not set fastmath its caller's flags: STRICT must say
    False outright, or the float64 exp compiled inside a fast-math caller loses its exact range
    reduction (hundreds of ulps near 700)."""
    from fastbp.kernels import _config
    assert _config.STRICT.get("fastmath", None) is False


def test_every_kernel_takes_its_flags_from_config():
    """Every @njit in fastbp.kernels passes exactly one of _config's flag sets and nothing else
    (so fastmath, caching and parallelism are set in one place); every cfunc (the units', the
    emulated bfloat16 product) passes _config.C_FUNCTION, with an explicit C signature."""
    offenders = []
    for path in sorted(KERNELS_DIR.glob("*.py")):
        for line, kind, spread, plain, n_args in _jit_calls(path):
            ok = (kind == "njit" and len(spread) == 1 and spread <= FLAG_SETS and not plain
                  and n_args == 0) or (kind == "cfunc" and spread == {"C_FUNCTION"}
                                       and not plain)
            if not ok:
                offenders.append(f"{path.name}:{line}")
    assert not offenders, f"@njit with flags of its own: {offenders}"
    assert _jit_calls(KERNELS_DIR / "dense.py"), "the check found no @njit at all"


def test_flag_check_catches_a_kernel_with_its_own_flags(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from numba import njit\n@njit(cache=True, fastmath=True)\ndef f(x):\n"
                   "    return x\n@njit\ndef g(x):\n    return x\n")
    calls = sorted(_jit_calls(bad))
    assert [c[0] for c in calls] == [2, 5]
    assert calls[0][3] == ["cache", "fastmath"] and calls[1][2] == set()


def test_fastmath_is_set_only_in_config():
    for path in KERNELS_DIR.glob("*.py"):
        if path.name != "_config.py":
            assert "fastmath" not in path.read_text(), path.name


def _fake_cache(folder, names):
    for name in names:
        (folder / name).write_bytes(b"x")


def test_cache_guard_removes_code_compiled_from_other_sources(tmp_path):
    """guard_cache removes the package's cached code when the sources' hash differs from the
    stamp beside the cache, and only then; other modules' files stay."""
    from fastbp.kernels import _config
    ours = ["dense.dense_forward-71.py311.nbi", "dense.dense_forward-71.py311.1.nbc",
            "network.mlp_forward-200.py311.nbi", "_units.unit_take_rows_float32-96.py311.nbi"]
    theirs = ["mymodule.f-3.py311.nbi"]
    _fake_cache(tmp_path, ours + theirs)
    (tmp_path / "fastbp-kernels-sources.sha256").write_text("an older version")
    _config.guard_cache(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(theirs + ["fastbp-kernels-sources.sha256"])
    assert (tmp_path / "fastbp-kernels-sources.sha256").read_text() == _config.sources_hash()
    _fake_cache(tmp_path, ours)  # compiled from the current sources: kept
    _config.guard_cache(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= set(ours)


def test_cache_guard_runs_at_import(tmp_path):
    """Importing fastbp stamps the cache folder of the kernels with the sources' hash."""
    code = ("import pathlib, fastbp; from fastbp.kernels import _config, network; "
            "folder = pathlib.Path(network.mlp_forward._cache._cache_path); "
            "print((folder / 'fastbp-kernels-sources.sha256').read_text() == "
            "_config.sources_hash())")
    result = subprocess.run([sys.executable, "-c", code],
                            env=subprocess_env(NUMBA_CACHE_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


def test_compile_workers_fill_this_copys_cache(tmp_path):
    """A first run's compile workers import the same fastbp as the process that starts them,
    even from a folder holding another copy of it, so what they compile lands in the cache this
    process reads: it then loads their units from the cache instead of compiling them again."""
    decoy = tmp_path / "decoy"
    (decoy / "fastbp").mkdir(parents=True)
    (decoy / "fastbp" / "__init__.py").write_text("raise ImportError('the decoy fastbp')\n")
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, fastbp\n"
        "from fastbp.kernels import _units\n"
        "m = fastbp.MLP([6, 5, 3], seed=0)\n"
        "m.loss_and_grad(np.zeros((4, 6)), np.zeros(4, dtype=int))\n"
        "print(sum(1 for u in _units._compiled.values() if u.cache_hits),\n"
        "      sum(1 for u in _units._compiled.values() if not u.cache_hits))\n")
    result = subprocess.run([sys.executable, str(script)], cwd=decoy,
                            env=subprocess_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"),
                                               FASTBP_COMPILE_WORKERS="1"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from_workers, compiled_here = map(int, result.stdout.split()[-2:])
    assert from_workers >= 1 and compiled_here >= 1


NO_CACHE_SCRIPT = """
import warnings
import numpy as np
import numba.core.caching as caching

in_tree = getattr(caching, "InTreeCacheLocator", None) or caching._InTreeCacheLocator
impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl

class ReadOnly(in_tree):
    def ensure_cache_path(self):
        raise OSError("read-only file system")

impl._locator_classes = [ReadOnly]   # no folder Numba could cache in
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastbp
assert any("no writable folder" in str(w.message) for w in caught), caught
assert not fastbp.kernels._config.CACHE
rng = np.random.default_rng(0)
model = fastbp.MLP([6, 8, 3], seed=0)
X, y = rng.normal(size=(32, 6)), rng.integers(0, 3, 32)
history = fastbp.fit(model, X, y, fastbp.Adam(model), epochs=2, batch_size=8, seed=0)
print(history["loss"][-1] < history["loss"][0])
"""


def test_a_read_only_install_runs_compiling_in_memory(tmp_path):
    """No writable cache folder anywhere (a read-only install and home): import works with one
    warning, and training compiles in memory. (Simulated: every cache locator of Numba refuses
    to write, as on a read-only file system; cache=True would then fail at import.)"""
    result = subprocess.run([sys.executable, "-c", NO_CACHE_SCRIPT], capture_output=True,
                            text=True, timeout=600, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("True")


def test_an_installed_fastbp_caches_outside_site_packages(tmp_path):
    """Installed into a site-packages folder, fastbp's compiled code goes to the per-user cache
    folder, not into site-packages (where pip does not record it, and leftovers hid a later
    editable install); NUMBA_CACHE_DIR, when set, still decides."""
    import shutil
    site = tmp_path / "lib" / "site-packages"
    shutil.copytree(pathlib.Path(fastbp.__file__).parent, site / "fastbp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    script = ("import numpy as np, fastbp; assert 'site-packages' in fastbp.__file__; "
              "fastbp.MLP([3, 2], seed=0).forward(np.zeros((1, 3)))")
    env = dict(os.environ, PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "user-cache"))
    env.pop("NUMBA_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(site.rglob("*.nbi")), "compiled code written into site-packages"
    assert list((tmp_path / "user-cache" / "numba").rglob("kernels_*/*.nbi"))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            env=dict(env, NUMBA_CACHE_DIR=str(tmp_path / "chosen")),
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "chosen").rglob("*.nbi")) and not list(site.rglob("*.nbi"))
