"""fastbp.set_blas: which BLAS build runs the kernels' float32 and float64 products.

"openblas-avx512" loads a second copy of the same OpenBLAS with its AVX-512 (SkylakeX) kernels;
"auto", the default, takes it where the CPU has AVX-512 and OpenBLAS would not use it, else
"openblas". Where the CPU lacks AVX-512 the tests of that build check only the refusal. Each
test starts on "openblas" and leaves the build it found.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastbp
import naive
from fastbp import _threads, kernels

AVX512 = "openblas-avx512"
SIZES = [12, 32, 16, 5]


def _can_run_avx512():
    before = fastbp.get_blas()
    try:
        fastbp.set_blas(AVX512)
    except kernels.BlasUnavailable:
        return False
    finally:
        fastbp.set_blas(before)
    return True


needs_avx512 = pytest.mark.skipif(not _can_run_avx512(), reason="no AVX-512 on this CPU")


@pytest.fixture(autouse=True)
def openblas_during():
    before = fastbp.get_blas()
    fastbp.set_blas("openblas")
    yield
    fastbp.set_blas(before)


def _default_build():
    return AVX512 if kernels._native.avx512_kernels_unused() else "openblas"


def _batch(dtype, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, SIZES[0])).astype(dtype), rng.integers(0, SIZES[-1], rows)


def _trained(dtype, steps=5, threads=None):
    """Parameters after `steps` Adam steps of a fixed model on a fixed batch, and its last
    gradient."""
    if threads is not None:
        fastbp.set_num_threads(threads)
    model = fastbp.MLP(SIZES, dtype=dtype, seed=0)
    opt = fastbp.Adam(model, lr=0.01)
    X, y = _batch(dtype)
    for _ in range(steps):
        opt.train_step(X, y)
    model.loss_and_grad(X, y)
    return model.params.copy(), model.grads.copy()


@pytest.mark.parametrize("bad", ["OpenBLAS", "mkl", "", None, 1])
def test_set_blas_refuses_other_names_and_keeps_the_build(bad):
    with pytest.raises(ValueError,
                       match=r"^blas: expected one of 'auto', 'openblas', 'openblas-avx512'"):
        fastbp.set_blas(bad)
    assert fastbp.get_blas() == "openblas"


def test_a_cpu_without_avx512_is_refused_naming_what_it_lacks():
    # In a process of its own: the build is loaded once per process.
    script = (
        "import fastbp\n"
        "from fastbp.kernels import _native\n"
        "_native.use_blas('openblas')\n"
        "_native._loaded.pop('openblas-avx512', None)   # as if never loaded by default\n"
        "_native._AVX512 = _native._AVX512 + ('avx512imaginary',)\n"
        "try:\n"
        "    fastbp.set_blas('openblas-avx512')\n"
        "except fastbp.kernels.BlasUnavailable as exc:\n"
        "    print(exc)\n"
        "print(fastbp.get_blas())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    said, in_use = out.stdout.strip().splitlines()
    assert "this CPU lacks" in said and "avx512imaginary" in said and "'openblas'" in said
    assert in_use == "openblas"


def test_the_default_build_is_avx512_where_openblas_would_leave_it_unused():
    out = subprocess.run([sys.executable, "-c", "import fastbp; print(fastbp.get_blas())"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _default_build()
    fastbp.set_blas("auto")
    assert fastbp.get_blas() == _default_build()


def test_the_default_is_openblas_when_the_avx512_copy_cannot_load(monkeypatch):
    native = kernels._native
    loaded = dict(native._loaded)

    def no_folder(coretype=None):
        raise OSError("cannot load from the temporary folder")
    monkeypatch.setattr(native, "_load_openblas", no_folder)
    monkeypatch.setattr(native, "avx512_kernels_unused", lambda: True)
    native._loaded.pop(AVX512, None)
    try:
        assert native.use_default_blas() == "openblas"
        assert fastbp.get_blas() == "openblas"
    finally:
        native._loaded.update(loaded)


@needs_avx512
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx512_build_computes_what_the_default_does_to_rounding(dtype):
    default = _trained(dtype)
    fastbp.set_blas(AVX512)
    assert fastbp.get_blas() == AVX512 and kernels._native.blas_in_use() == (AVX512, "SkylakeX")
    other = _trained(dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(default, other):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


@needs_avx512
def test_avx512_gradient_matches_the_float64_reference():
    fastbp.set_blas(AVX512)
    model = fastbp.MLP(SIZES, dtype=np.float64, seed=1)
    X, y = _batch(np.float64, seed=1)
    loss = model.loss_and_grad(X, y)
    net = naive.Net(SIZES, "relu")
    expected_loss, expected_grad = net.loss_and_grad(model.params, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-13)
    assert naive.normwise_error(model.grads, expected_grad) < 1e-13
    grads = model.grads.copy()
    # fastbp's own loss on this build, by central differences (params perturbed in place)
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-5)
    assert naive.normwise_error(grads, numeric) < 1e-7


@needs_avx512
def test_avx512_build_gives_the_same_bits_at_any_thread_count():
    fastbp.set_blas(AVX512)
    try:
        one = _trained(np.float32, threads=1)
        two = _trained(np.float32, threads=2)
    finally:
        fastbp.set_num_threads(1)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


@needs_avx512
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx512_unpacked_input_gradient_tiles(dtype):
    """letters' net at batch 64, where the AVX-512 build cuts the input gradient into small
    tiles (the default build does not): the gradient is the float64 reference's, and the bits
    are the same on 1 and 2 threads."""
    sizes = [16, 256, 128, 26]
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(64, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], 64)
    fastbp.set_blas(AVX512)
    assert kernels._native._unpacked_small_products.value == 1
    grads = []
    try:
        for threads in (1, 2):
            fastbp.set_num_threads(threads)
            model = fastbp.MLP(sizes, dtype=dtype, seed=2)
            loss = model.loss_and_grad(X, y)
            grads.append(model.grads.copy())
    finally:
        fastbp.set_num_threads(1)
    assert np.array_equal(grads[0], grads[1])
    expected_loss, expected = naive.Net(sizes, "relu").loss_and_grad(
        model.params.astype(np.float64), X.astype(np.float64), y)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert loss == pytest.approx(expected_loss, rel=tol)
    assert naive.normwise_error(grads[0], expected) < tol
    fastbp.set_blas("openblas")
    assert kernels._native._unpacked_small_products.value == int(
        kernels._native._core_name(kernels._native.openblas) in kernels._native._AVX512_CORES)


@needs_avx512
def test_switching_back_gives_the_default_bits_again():
    before = _trained(np.float32)
    fastbp.set_blas(AVX512)
    _trained(np.float32)
    fastbp.set_blas("openblas")
    after = _trained(np.float32)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


@needs_avx512
def test_the_avx512_copy_is_kept_at_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fastbp.set_blas(AVX512)
    assert _threads.kernel_blas_threads() == 1
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        model = fastbp.MLP(SIZES, seed=0)
        fastbp.SGD(model, lr=0.01).train_step(*_batch(np.float32))
        assert _threads.kernel_blas_threads() == 1


@needs_avx512
def test_fit_history_records_the_build_of_each_epoch():
    model = fastbp.MLP(SIZES, seed=0)
    X, y = _batch(np.float32, rows=60)
    opt = fastbp.SGD(model, lr=0.01)

    class SwitchAfterFirst:
        def on_epoch_end(self, epoch, history, model):
            if epoch == 0:
                fastbp.set_blas(AVX512)

    history = fastbp.fit(model, X, y, opt, epochs=3, batch_size=20,
                         callbacks=[SwitchAfterFirst()])
    assert history.blas == ["openblas", AVX512, AVX512]


def test_cli_records_the_build_in_json(tmp_path):
    blas = AVX512 if _can_run_avx512() else "openblas"
    out = subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "1",
                          "--layers", "16", "--blas", blas, "--json", "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["blas"] == blas and record["epoch_blas"] == [blas]
    out = subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "1",
                          "--layers", "16", "--json", "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["blas"] == _default_build()    # --blas auto, resolved
