"""SGD and fit: learning XOR, what fit computes, reproducibility, divergence, real data."""
import gzip

import numpy as np
import pytest

import fastbp
import naive
from helpers import DIGITS

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def test_xor_tanh_softmax_reaches_full_accuracy():
    model = fastbp.MLP([2, 4, 2], activation="tanh", dtype=np.float64, seed=0)
    assert (model.predict(XOR_X) == XOR_Y).mean() < 1
    opt = fastbp.SGD(model, lr=0.5)
    history = fastbp.fit(model, XOR_X, XOR_Y, optimizer=opt, epochs=2000, batch_size=4, seed=0)
    assert np.array_equal(model.predict(XOR_X), XOR_Y)
    assert history["loss"][-1] < 0.05 < history["loss"][0]


def test_xor_sigmoid_mse_reaches_full_accuracy():
    model = fastbp.MLP([2, 4, 1], activation="sigmoid", output_activation="sigmoid", loss="mse",
                       dtype=np.float32, seed=0)
    opt = fastbp.SGD(model, lr=2.0)
    fastbp.fit(model, XOR_X, XOR_Y.astype(np.float32), optimizer=opt, epochs=2000, batch_size=4,
               seed=0)
    out = model.predict(XOR_X)[:, 0]
    assert np.array_equal(out > 0.5, XOR_Y == 1)


def test_fit_without_shuffle_is_the_loop_of_train_steps(rng):
    """fit(shuffle=False) = train_step over consecutive batches (the last one smaller), and its
    history holds the sample-weighted mean loss and the mean gradient norm of each epoch."""
    X = rng.normal(size=(23, 5))
    y = rng.integers(0, 3, size=23)
    a = fastbp.MLP([5, 7, 3], activation="tanh", dtype=np.float64, seed=4)
    b = fastbp.MLP([5, 7, 3], activation="tanh", dtype=np.float64, seed=4)
    opt_a = fastbp.SGD(a, lr=0.1, clip_norm=0.5)
    opt_b = fastbp.SGD(b, lr=0.1, clip_norm=0.5)
    history = fastbp.fit(a, X, y, optimizer=opt_a, epochs=3, batch_size=10, shuffle=False)
    for epoch in range(3):
        losses, norms, sizes = [], [], []
        for start in range(0, 23, 10):
            xb, yb = X[start:start + 10], y[start:start + 10]
            losses.append(b.loss_and_grad(xb, yb))
            norms.append(opt_b.step())
            sizes.append(len(xb))
        assert history["loss"][epoch] == pytest.approx(np.dot(losses, sizes) / 23, rel=1e-14)
        assert history["grad_norm"][epoch] == pytest.approx(np.mean(norms), rel=1e-14)
    assert np.array_equal(a.params, b.params)
    for key in ("loss", "grad_norm"):
        assert len(history[key]) == 3


def test_fit_is_reproducible_from_its_seed(rng):
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 2, size=50)
    results = []
    for seed in (1, 1, 2):
        model = fastbp.MLP([4, 6, 2], activation="relu", dtype=np.float64, seed=0)
        opt = fastbp.SGD(model, lr=0.1)
        fastbp.fit(model, X, y, optimizer=opt, epochs=2, batch_size=8, seed=seed)
        results.append(model.params.copy())
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_fit_batch_larger_than_data(rng):
    X = rng.normal(size=(5, 3))
    y = rng.normal(size=(5, 2))
    model = fastbp.MLP([3, 4, 2], activation="tanh", loss="mse", dtype=np.float64, seed=0)
    start = model.params.copy()
    history = fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, 0.1), epochs=1,
                         batch_size=100, shuffle=False)
    loss, grads = naive.Net([3, 4, 2], "tanh", loss="mse").loss_and_grad(start, X, y)
    assert history["loss"][0] == pytest.approx(loss, rel=1e-12)
    assert naive.normwise_error(model.params, start - 0.1 * grads) < 1e-12


# ---------------------------------------------------------------------------------------------
# Divergence


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_that_diverges_raises_and_keeps_finite_params(dtype, rng):
    model = fastbp.MLP([4, 8, 3], activation="tanh", loss="mse", dtype=dtype, seed=0)
    opt = fastbp.SGD(model, lr=1e3)
    X = rng.normal(size=(16, 4))
    y = 10 * rng.normal(size=(16, 3))
    with pytest.raises(FloatingPointError):
        for _ in range(200):
            before = model.params.copy()
            opt.train_step(X, y)
    assert np.isfinite(model.params).all()
    assert np.array_equal(model.params, before), "the failing step must not be applied"


def test_step_raises_on_nonfinite_gradients(rng):
    model = fastbp.MLP([4, 5, 3], activation="tanh", dtype=np.float64, seed=0)
    model.loss_and_grad(rng.normal(size=(6, 4)), rng.integers(0, 3, size=6))
    model.grads[3] = np.inf
    before = model.params.copy()
    with pytest.raises(FloatingPointError):
        fastbp.SGD(model, 0.1).step()
    assert np.array_equal(model.params, before)


def test_fit_raises_divergence_error_naming_epoch_and_step(rng):
    model = fastbp.MLP([4, 8, 3], activation="relu", loss="mse", dtype=np.float64, seed=0)
    X = rng.normal(size=(40, 4))
    y = 10 * rng.normal(size=(40, 3))
    with pytest.raises(fastbp.DivergenceError) as info:
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, lr=1e3), epochs=50, batch_size=8,
                   seed=0)
    assert isinstance(info.value, FloatingPointError)
    message = str(info.value)
    assert "epoch" in message and "step" in message
    assert np.isfinite(model.params).all()


@pytest.mark.parametrize("dtype, activation, lr", [
    (np.float64, "identity", 1e308),   # lr * grad overflows float64 in the update itself
    (np.float32, "identity", 1e39),    # a valid Python float that overflows float32
    (np.float32, "tanh", 1e39),
])
def test_update_that_overflows_never_leaves_nonfinite_params(dtype, activation, lr, rng):
    """Whatever the learning rate, the parameters stay finite: either the step is applied and
    they are finite, or FloatingPointError is raised and the step is not applied (the promise
    of SGD.train_step and DivergenceError)."""
    model = fastbp.MLP([4, 8, 3], activation=activation, loss="mse", dtype=dtype, seed=0)
    opt = fastbp.SGD(model, lr=lr)
    X = rng.normal(size=(16, 4))
    y = 10 * rng.normal(size=(16, 3))
    for step in range(1, 6):
        try:
            opt.train_step(X, y)
            raised = False
        except FloatingPointError:
            raised = True
        n_bad = int((~np.isfinite(model.params)).sum())
        assert n_bad == 0, (f"{n_bad} non-finite parameters after step {step} "
                            f"({'raised' if raised else 'reported success'})")
        if raised:
            break


def test_fit_with_overflowing_update_keeps_last_finite_params(rng):
    model = fastbp.MLP([4, 8, 3], activation="identity", loss="mse", dtype=np.float64, seed=0)
    X = rng.normal(size=(16, 4))
    y = 10 * rng.normal(size=(16, 3))
    with pytest.raises(fastbp.DivergenceError):
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, lr=1e308), epochs=3, batch_size=8)
    n_bad = int((~np.isfinite(model.params)).sum())
    assert n_bad == 0, f"{n_bad} non-finite parameters after DivergenceError"


# ---------------------------------------------------------------------------------------------
# Real data


@pytest.mark.skipif(not DIGITS.exists(), reason=f"{DIGITS} not present")
def test_digits_test_accuracy():
    with gzip.open(DIGITS, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    X = (data[:, :64] / 16.0).astype(np.float32)
    y = data[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1400], order[1400:]
    model = fastbp.MLP([64, 64, 10], activation="relu", dtype=np.float32, seed=0)
    opt = fastbp.SGD(model, lr=0.1, clip_norm=5.0)
    history = fastbp.fit(model, X[train], y[train], optimizer=opt, epochs=15, batch_size=32,
                         seed=0)
    assert history["loss"][-1] < history["loss"][0]
    accuracy = (model.predict(X[test]) == y[test]).mean()
    assert accuracy > 0.9
