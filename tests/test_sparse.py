"""SciPy sparse X: fit, inference, losses and training steps give bitwise the results of the
dense X (each batch, and each inference chunk, densified into a buffer, never the whole set);
the compiled CSR gather; bad sparse input refused naming X; SciPy stays optional."""
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import kernels
from helpers import make_targets, subprocess_env

sp = pytest.importorskip("scipy.sparse")

FORMATS = ["csr", "csc", "coo"]


def sparse_data(n_rows=120, n_cols=20, density=0.25, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_cols))
    X[rng.random(X.shape) > density] = 0
    X[3] = 0   # an empty row
    return X.astype(dtype)


def as_format(X, fmt):
    return {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix,
            "csr_array": sp.csr_array}[fmt](X)


class PerStep:
    def on_step_end(self, *args):
        pass


def trained(X, y, loss="softmax_cross_entropy", dtype=np.float64, **options):
    model = fastbp.MLP([X.shape[1], 16, 3], activation="tanh", loss=loss, dtype=dtype, seed=0,
                       l2=0.01)
    opt = fastbp.Adam(model, lr=0.01)
    history = fastbp.fit(model, X, y, opt, epochs=2, batch_size=16, seed=1, **options)
    return model, history


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [
    {}, {"callbacks": [PerStep()]}, {"accumulate": 3},
    {"accumulate": 2, "callbacks": [PerStep()]}, {"validation_fraction": 0.25}],
    ids=["chunks", "per-step", "accumulate", "accumulate-per-step", "validation"])
def test_fit_on_sparse_x_is_bitwise_the_dense_fit(fmt, dtype, options, rng):
    X = sparse_data()
    y = rng.integers(0, 3, size=X.shape[0])
    dense, dense_history = trained(X, y, dtype=dtype, **options)
    sparse, sparse_history = trained(as_format(X, fmt), y, dtype=dtype, **options)
    assert np.array_equal(sparse.params, dense.params)
    assert np.array_equal(sparse.grads, dense.grads)
    for key in dense_history:
        assert sparse_history[key] == dense_history[key] or key in ("samples_per_s",
                                                                    "seconds"), key
    Xs = as_format(X, fmt)
    assert np.array_equal(sparse.predict_proba(Xs), dense.predict_proba(X))
    assert np.array_equal(sparse.predict(Xs), dense.predict(X))
    assert np.array_equal(sparse.forward(Xs), dense.forward(X))


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_sparse_fit_with_sample_weights_and_float_targets(loss, rng):
    X = sparse_data(seed=2)
    y = make_targets(loss, X.shape[0], 3, rng)
    w = rng.random(X.shape[0])
    w[:16] = 0
    for options in ({}, {"callbacks": [PerStep()]}, {"accumulate": 2}):
        dense, _ = trained(X, y, loss=loss, sample_weight=w, **options)
        sparse, _ = trained(sp.csr_matrix(X), y, loss=loss, sample_weight=w, **options)
        assert np.array_equal(sparse.params, dense.params)


@pytest.mark.parametrize("index_type", [np.int32, np.int64])
def test_both_index_types_and_validation_data(index_type, rng):
    X = sparse_data(seed=3)
    y = rng.integers(0, 3, size=X.shape[0])
    Xs = sp.csr_matrix(X)
    Xs.indices = Xs.indices.astype(index_type)
    Xs.indptr = Xs.indptr.astype(index_type)
    X_val = sparse_data(30, seed=4)
    y_val = rng.integers(0, 3, size=30)
    dense, dense_history = trained(X, y, validation_data=(X_val, y_val))
    sparse, sparse_history = trained(Xs, y, validation_data=(sp.csc_matrix(X_val), y_val))
    assert np.array_equal(sparse.params, dense.params)
    assert sparse_history["val_loss"] == dense_history["val_loss"]


def test_batch_entry_points_take_sparse_x(rng):
    """loss_and_grad, loss_value (chunked), train_step, gradcheck: the dense results, bitwise."""
    X = sparse_data(40, seed=5)
    y = rng.integers(0, 3, size=40)
    w = rng.random(40)
    results = []
    for data in (X, sp.csr_matrix(X)):
        model = fastbp.MLP([20, 8, 3], activation="tanh", dtype=np.float64, seed=0, l2=0.1)
        opt = fastbp.SGD(model, lr=0.1)
        out = [model.loss_and_grad(data, y), model.grads.copy(),
               model.loss_and_grad(data, y, sample_weight=w), model.loss_value(data, y),
               model.loss_value(data, y, sample_weight=w), opt.train_step(data, y),
               opt.train_step(data, y, sample_weight=w), model.params.copy(),
               fastbp.gradcheck(model, data, y, max_params=40)]
        results.append(out)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_inference_in_chunks(rng, monkeypatch):
    """Inference densifies INFERENCE_CHUNK rows at a time: the dense results, bitwise."""
    monkeypatch.setattr(fastbp.engine, "INFERENCE_CHUNK", 7)
    X = sparse_data(50, seed=6)
    y = rng.integers(0, 3, size=50)
    model = fastbp.MLP([20, 8, 3], activation="relu", dtype=np.float32, seed=0)
    Xs = sp.csr_matrix(X)
    assert np.array_equal(model.forward(Xs), model.forward(X))
    assert np.array_equal(model.predict(Xs), model.predict(X))
    assert model.loss_value(Xs, y) == model.loss_value(X, y)
    assert model.memory_report()["capacity"] == 7


def test_duplicates_unsorted_indices_and_other_dtypes():
    """Duplicate entries are summed and unsorted indices read as SciPy's toarray reads them;
    integer and boolean values are converted to the model's dtype."""
    data = np.array([1.0, 2.0, 3.0, -4.0, 0.5])
    indices = np.array([2, 0, 2, 1, 0], dtype=np.int32)   # row 0: column 2 twice
    indptr = np.array([0, 3, 3, 5], dtype=np.int32)
    Xs = sp.csr_matrix((data, indices, indptr), shape=(3, 4))
    assert not Xs.has_canonical_format
    model = fastbp.MLP([4, 5, 2], activation="identity", dtype=np.float64, seed=0)
    assert np.array_equal(model.forward(Xs), model.forward(Xs.toarray()))
    for values in (np.array([[0, 3, 0, 1], [2, 0, 0, 0]], dtype=np.int16),
                   np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)):
        assert np.array_equal(model.forward(sp.csr_matrix(values)), model.forward(values))


def test_take_csr_rows_kernel(rng):
    X = sparse_data(30, 9, seed=7, dtype=np.float32)
    Xs = sp.csr_matrix(X)
    index = rng.integers(0, 30, size=64)
    out = np.full((64, 9), np.nan, dtype=np.float32)
    kernels.take_csr_rows(out, Xs.data, Xs.indices, Xs.indptr, index)
    assert np.array_equal(out, X[index])
    assert kernels.csr_is_valid(Xs.indices, Xs.indptr, 9, Xs.nnz)
    assert not kernels.csr_is_valid(Xs.indices, Xs.indptr, 8, Xs.nnz)   # a column beyond
    assert not kernels.csr_is_valid(Xs.indices, Xs.indptr, 9, Xs.nnz - 1)
    bad = Xs.indptr.copy()
    bad[5], bad[6] = bad[6], bad[5] - 1
    assert not kernels.csr_is_valid(Xs.indices, bad, 9, Xs.nnz)


# -- never densified whole -------------------------------------------------------------------


def test_a_large_sparse_x_is_never_densified_whole():
    """tracemalloc over fit (compiled chunks and the per-step path) and predict on a sparse X
    whose dense form would take 64 MB: the peak stays a small fraction of that (the batch
    buffer, the inference chunks of INFERENCE_CHUNK rows, the shuffled row order)."""
    fastbp.set_num_threads(1)
    n_rows, n_cols = 40000, 400
    rng = np.random.default_rng(0)
    nnz_per_row = 4
    indices = rng.integers(0, n_cols, size=n_rows * nnz_per_row).astype(np.int32)
    indptr = np.arange(0, n_rows * nnz_per_row + 1, nnz_per_row, dtype=np.int32)
    Xs = sp.csr_matrix((rng.normal(size=indices.size).astype(np.float32), indices, indptr),
                       shape=(n_rows, n_cols))
    y = rng.integers(0, 2, size=n_rows)
    dense_bytes = n_rows * n_cols * 4
    for options in ({}, {"callbacks": [PerStep()]}):
        model = fastbp.MLP([n_cols, 8, 2], dtype=np.float32, seed=0)
        opt = fastbp.SGD(model, lr=0.1)
        fit_options = dict(epochs=1, batch_size=256, seed=0, metrics_rows=100)
        fit_options.update(options)
        small = sp.csr_matrix(Xs[:600])
        fastbp.fit(model, small, y[:600], opt, **fit_options)   # compiled, buffers grown
        model.predict(small)
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            fastbp.fit(model, Xs, y, opt, validation_fraction=0.1, **fit_options)
            model.predict(Xs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - start < dense_bytes / 5, (peak - start, dense_bytes)


# -- refusals ---------------------------------------------------------------------------------


def _malformed(what):
    X = sp.csr_matrix(sparse_data(8, 4, density=0.6))
    if what == "column-out-of-range":
        X.indices[1] = 4
    elif what == "negative-column":
        X.indices[0] = -1
    elif what == "decreasing-indptr":
        X.indptr[2] = X.indptr[-1]
        assert np.any(np.diff(X.indptr) < 0)
    elif what == "indptr-beyond-data":
        X.indptr[-1] += 5
    return X


def _with(values, value):
    values = values.copy()
    values.data[1] = value
    return values


BAD = [
    pytest.param(lambda: _with(sp.csr_matrix(sparse_data(8, 4, density=0.6)), np.nan),
                 ValueError, "NaN or Inf", id="nan"),
    pytest.param(lambda: _with(sp.csc_matrix(sparse_data(8, 4, density=0.6)), -np.inf),
                 ValueError, "NaN or Inf", id="inf-csc"),
    pytest.param(lambda: sp.csr_matrix(np.full((8, 4), 1e300)), ValueError,
                 "overflow float32.*float64 would hold them", id="beyond-float32"),
    pytest.param(lambda: sp.csr_matrix(sparse_data(8, 5)), ValueError, "expected 4 features",
                 id="wrong-width"),
    pytest.param(lambda: sp.csr_matrix((0, 4)), ValueError, "empty", id="no-rows"),
    pytest.param(lambda: sp.csr_matrix(np.ones((8, 4), dtype=complex)), TypeError,
                 "real numbers", id="complex"),
    pytest.param(lambda: _malformed("column-out-of-range"), ValueError, "well-formed",
                 id="column-out-of-range"),
    pytest.param(lambda: _malformed("negative-column"), ValueError, "well-formed",
                 id="negative-column"),
    pytest.param(lambda: _malformed("decreasing-indptr"), ValueError, "well-formed",
                 id="decreasing-indptr"),
    pytest.param(lambda: _malformed("indptr-beyond-data"), ValueError, "well-formed",
                 id="indptr-beyond-data"),
]


@pytest.mark.parametrize("make, error, message", BAD)
@pytest.mark.parametrize("call", ["fit", "predict", "loss_and_grad", "train_step",
                                  "validation_data"])
def test_bad_sparse_x_is_refused_naming_x(make, error, message, call, rng):
    X = make()
    y = rng.integers(0, 3, size=X.shape[0])
    model = fastbp.MLP([4, 6, 3], activation="tanh", dtype=np.float32, seed=0)
    opt = fastbp.SGD(model, lr=0.1)
    before = model.params.copy(), model.grads.copy()
    good = sp.csr_matrix(sparse_data(8, 4))
    calls = {"fit": lambda: fastbp.fit(model, X, y, opt, epochs=1, batch_size=4),
             "predict": lambda: model.predict(X),
             "loss_and_grad": lambda: model.loss_and_grad(X, y),
             "train_step": lambda: opt.train_step(X, y),
             "validation_data": lambda: fastbp.fit(model, good, np.arange(8) % 3, opt,
                                                   epochs=1, batch_size=4,
                                                   validation_data=(X, y))}
    name = "validation_data X" if call == "validation_data" else "X"
    with pytest.raises(error, match=f"^{name}: .*{message}"):
        calls[call]()
    assert np.array_equal(model.params, before[0]) and np.array_equal(model.grads, before[1])


def test_importing_fastbp_does_not_import_scipy_sparse():
    """SciPy is optional: fastbp looks for scipy.sparse only among the modules already loaded
    (a sparse X cannot exist without it)."""
    code = ("import sys, numpy as np, fastbp; "
            "m = fastbp.MLP([3, 2], dtype=np.float64, seed=0); m.predict(np.ones((2, 3))); "
            "print('scipy.sparse' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
