"""Whole networks: finite differences, the naive NumPy reference, float32 against float64, the
one-neuron example, parameter layout, initialisation, inference and fastbp.gradcheck itself."""
import math
import warnings

import numpy as np
import pytest

import fastbp
import naive
from fastbp.model import LOSSES
from helpers import (assert_loss_and_grads_match_reference, layer_errors, make_targets,
                     max_threads, off_kink_batch, reference_for)

ACTIVATIONS = ["relu", "sigmoid", "tanh", "identity"]
# (loss, output activation): softmax-CE, binary CE, MSE with identity, sigmoid and tanh
# outputs, Huber with identity and tanh outputs
HEADS = [("softmax_cross_entropy", "identity"), ("binary_cross_entropy", "identity"),
         ("mse", "identity"), ("mse", "sigmoid"), ("mse", "tanh"), ("huber", "identity"),
         ("huber", "tanh")]
HIDDEN = [6, 7, 5]


def network_cases():
    cases = []
    for depth in (1, 2, 3, 4):
        for act in (ACTIVATIONS if depth > 1 else ["identity"]):   # depth 1: no hidden layer
            for loss, out_act in HEADS:
                cases.append(pytest.param(depth, act, loss, out_act,
                                          id=f"depth{depth}-{act}-{loss}-{out_act}"))
    return cases


def build(depth, act, loss, out_act, dtype=np.float64, seed=0, n_in=5, n_out=3, l2=0.0):
    sizes = [n_in] + HIDDEN[:depth - 1] + [n_out]
    return fastbp.MLP(sizes, activation=act, output_activation=out_act, loss=loss, dtype=dtype,
                      seed=seed, l2=l2)


def test_every_loss_has_a_head_here():
    assert {loss for loss, _ in HEADS} == set(fastbp.model.LOSSES)


# With an L2 penalty: each head, through two hidden layers (and one without any)
L2_CASES = [pytest.param(depth, "tanh", loss, out_act, l2, id=f"depth{depth}-{loss}-{out_act}-l2={l2}")
            for loss, out_act in HEADS for depth, l2 in ((3, 0.7), (1, 3.0))]


# ---------------------------------------------------------------------------------------------
# Finite differences (independent of fastbp.gradcheck) and the naive reference


@pytest.mark.parametrize("depth, act, loss, out_act", network_cases())
def test_network_gradient_matches_finite_differences(depth, act, loss, out_act, rng):
    """Backprop against fourth-order central differences of model.loss_value, float64, every
    parameter: max relative error < 1e-7 (absolute below 1e-7)."""
    model = build(depth, act, loss, out_act, seed=depth)
    X, y = off_kink_batch(model, 12, rng)
    model.loss_and_grad(X, y)
    analytic = model.grads.copy()
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
    assert naive.max_relative_error(analytic, numeric, 1e-7) < 1e-7
    assert np.abs(analytic).max() > 1e-3     # not vacuous


@pytest.mark.parametrize("depth, act, loss, out_act", network_cases())
def test_loss_and_every_gradient_match_reference(depth, act, loss, out_act, rng):
    model = build(depth, act, loss, out_act, seed=100 + depth)
    assert_loss_and_grads_match_reference(model, rng)


@pytest.mark.parametrize("depth, act, loss, out_act, l2", L2_CASES)
def test_l2_penalty_gradient_matches_finite_differences_and_reference(depth, act, loss, out_act,
                                                                      l2, rng):
    """The objective with the L2 penalty (loss_value) against its backprop gradient, and both
    against the naive reference; the penalty changes every weight gradient (l2 / B) W, and no
    bias gradient."""
    model = build(depth, act, loss, out_act, seed=depth, l2=l2)
    X, y = off_kink_batch(model, 12, rng)
    model.loss_and_grad(X, y)
    analytic = model.grads.copy()
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
    assert naive.max_relative_error(analytic, numeric, 1e-7) < 1e-7
    assert_loss_and_grads_match_reference(model, rng, n_rows=12)

    plain = build(depth, act, loss, out_act, seed=depth)
    plain.params[...] = model.params
    X, y = off_kink_batch(model, 12, rng)
    penalised_loss, plain_loss = model.loss_and_grad(X, y), plain.loss_and_grad(X, y)
    squares = sum(float((w.astype(np.float64) ** 2).sum()) for w in model.weights)
    assert penalised_loss - plain_loss == pytest.approx(l2 / (2 * 12) * squares, rel=1e-12)
    for layer in range(len(model.weights)):
        np.testing.assert_allclose(model.weight_grads[layer] - plain.weight_grads[layer],
                                   l2 / 12 * model.weights[layer], rtol=1e-12, atol=1e-15)
        assert np.array_equal(model.bias_grads[layer], plain.bias_grads[layer])


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_gradients_match_reference_when_the_first_layer_splits_its_inputs(checkpoint_every, rng):
    """A 1024-input layer with a batch of 8 splits its forward product over the inputs
    (kernels.splits_input), in the first pass and, with checkpointing, when recomputed."""
    model = fastbp.MLP([1024, 64, 64, 3], dtype=np.float64, seed=3,
                       checkpoint_every=checkpoint_every)
    assert fastbp.kernels.splits_input(8, 1024, 64, fastbp.kernels.tile_budget(), 8 * 64)
    X, y = rng.normal(size=(8, 1024)), rng.integers(0, 3, size=8)
    loss_value = model.loss_and_grad(X, y)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params, X, y)
    assert loss_value == pytest.approx(ref_loss, rel=1e-12)
    errors = layer_errors(model, ref_grads)
    assert max(errors.values()) < 1e-12, errors
    assert model.loss_value(X, y) == pytest.approx(loss_value, rel=1e-14)  # split the same way


@pytest.mark.parametrize("act, loss, out_act, l2", [
    ("relu", "softmax_cross_entropy", "identity", 0.0),
    ("sigmoid", "mse", "sigmoid", 0.0),
    ("tanh", "mse", "identity", 0.0),
    ("tanh", "binary_cross_entropy", "identity", 0.0),
    ("relu", "binary_cross_entropy", "identity", 2.0),
    ("sigmoid", "mse", "tanh", 0.5)])
def test_reference_itself_matches_finite_differences(act, loss, out_act, l2, rng):
    """The naive reference is checked too, so that agreement with it means something."""
    model = build(3, act, loss, out_act, seed=7, l2=l2)
    ref = reference_for(model)
    X, y = off_kink_batch(model, 8, rng)
    params = model.params.astype(np.float64)
    _, analytic = ref.loss_and_grad(params, X, y)
    numeric = naive.numeric_gradient(lambda: ref.loss_value(params, X, y), params, 1e-3)
    assert naive.max_relative_error(analytic, numeric, 1e-7) < 1e-7


def test_mixed_hidden_activations(rng):
    model = fastbp.MLP([4, 6, 5, 6, 3], activation=["tanh", "relu", "sigmoid"],
                       loss="softmax_cross_entropy", dtype=np.float64, seed=3)
    assert model.activations == ["tanh", "relu", "sigmoid"]
    X, y = off_kink_batch(model, 10, rng)
    loss_value = model.loss_and_grad(X, y)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params, X, y)
    assert loss_value == pytest.approx(ref_loss, rel=1e-12)
    assert max(layer_errors(model, ref_grads).values()) < 1e-10
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
    assert naive.max_relative_error(model.grads, numeric, 1e-7) < 1e-7


def test_mse_single_output_accepts_1d_targets(rng):
    model = fastbp.MLP([3, 4, 1], activation="tanh", loss="mse", dtype=np.float64, seed=1)
    X = rng.normal(size=(9, 3))
    y = rng.normal(size=9)
    loss_1d = model.loss_and_grad(X, y)
    grads_1d = model.grads.copy()
    assert model.loss_and_grad(X, y[:, None]) == loss_1d
    assert np.array_equal(model.grads, grads_1d)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params, X, y[:, None])
    assert loss_1d == pytest.approx(ref_loss, rel=1e-12)
    assert naive.normwise_error(grads_1d, ref_grads) < 1e-12


# ---------------------------------------------------------------------------------------------
# float32


@pytest.mark.parametrize("sizes, act, loss, out_act", [
    ([10, 32, 4], "relu", "softmax_cross_entropy", "identity"),
    ([10, 24, 16, 4], "tanh", "softmax_cross_entropy", "identity"),
    ([10, 24, 16, 3], "sigmoid", "mse", "sigmoid"),
    ([10, 20, 20, 20, 2], "relu", "mse", "identity"),
    ([10, 24, 16, 5], "tanh", "binary_cross_entropy", "identity"),
])
def test_float32_gradients_match_float64_reference(sizes, act, loss, out_act, rng):
    """float32 gradients within 1e-4 of the float64 reference, measured per tensor as
    max|g32 - g64| / max|g64|.

    Why normwise: an element that is a sum of terms of both signs can cancel to nearly zero, and
    then float32's unavoidable absolute rounding (about 6e-8 of the terms' size) is a large
    fraction of it, however correct the code. Relative to the tensor's largest entry the error
    stays near float32's precision, and that is what decides the direction of an update. The
    reference runs on the very same float32 parameters and inputs, widened exactly to float64,
    so only the arithmetic differs."""
    model = fastbp.MLP(sizes, activation=act, output_activation=out_act, loss=loss,
                       dtype=np.float32, seed=11)
    X = rng.normal(size=(64, sizes[0])).astype(np.float32)
    y = make_targets(loss, 64, sizes[-1], rng)
    if loss != "softmax_cross_entropy":
        y = y.astype(np.float32)
    loss32 = model.loss_and_grad(X, y)
    assert model.grads.dtype == np.float32
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params.astype(np.float64),
                                                             X.astype(np.float64), y)
    assert loss32 == pytest.approx(ref_loss, rel=1e-5)
    errors = layer_errors(model, ref_grads)
    assert max(errors.values()) < 1e-4, errors


# ---------------------------------------------------------------------------------------------
# The one-neuron example


def test_one_neuron_example():
    """x=1, w1=0.5, w2=-0.3, y=1, sigmoid on both layers, zero biases, L = 1/2 (yhat - y)^2."""
    model = fastbp.MLP([1, 1, 1], activation="sigmoid", output_activation="sigmoid", loss="mse",
                       dtype=np.float64, seed=0)
    x, w1, w2, target = 1.0, 0.5, -0.3, 1.0
    model.params[...] = 0.0
    model.weights[0][0, 0] = w1
    model.weights[1][0, 0] = w2
    assert list(model.params) == [w1, 0.0, w2, 0.0]      # layout: W0, b0, W1, b1

    def sigmoid(z):
        return 1.0 / (1.0 + math.exp(-z))

    h = sigmoid(w1 * x)
    yhat = sigmoid(w2 * h)
    loss = 0.5 * (yhat - target) ** 2
    dz2 = (yhat - target) * yhat * (1 - yhat)
    dw2 = dz2 * h
    dz1 = dz2 * w2 * h * (1 - h)
    dw1 = dz1 * x

    got_loss = model.loss_and_grad(np.array([[x]]), np.array([target]))
    assert got_loss == pytest.approx(loss, rel=1e-14)
    assert model.weight_grads[1][0, 0] == pytest.approx(dw2, rel=1e-13)
    assert model.weight_grads[0][0, 0] == pytest.approx(dw1, rel=1e-13)
    assert model.bias_grads[1][0] == pytest.approx(dz2, rel=1e-13)
    assert model.bias_grads[0][0] == pytest.approx(dz1, rel=1e-13)
    assert model.predict(np.array([[x]]))[0, 0] == pytest.approx(yhat, rel=1e-15)
    # loose sanity check of the commonly quoted values
    assert dw2 == pytest.approx(-0.0843, abs=5e-4)
    assert dw1 == pytest.approx(0.00955, abs=5e-5)


# ---------------------------------------------------------------------------------------------
# Layout, initialisation, inference


def test_params_layout_and_views():
    sizes = [4, 5, 3]
    model = fastbp.MLP(sizes, activation="tanh", dtype=np.float64, seed=0)
    assert model.params.ndim == 1 and model.params.flags.c_contiguous
    assert model.params.size == naive.n_params(sizes) == model.grads.size
    assert model.grads.dtype == model.params.dtype == np.float64
    offset = 0
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        for views, flat in ((model.weights, model.params), (model.weight_grads, model.grads)):
            assert views[l].shape == (n_in, n_out)
            assert np.shares_memory(views[l], flat)
        assert model.biases[l].shape == model.bias_grads[l].shape == (n_out,)
        assert np.array_equal(model.weights[l].ravel(),
                              model.params[offset:offset + n_in * n_out])
        offset += n_in * n_out
        assert np.array_equal(model.biases[l], model.params[offset:offset + n_out])
        offset += n_out
    assert offset == model.params.size


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_a_copy_is_a_whole_independent_model(how, rng):
    """A copied model's views point into its own buffers (copying the views one by one would
    leave them pointing at copies of the old ones), and training it leaves the original as is."""
    import copy
    import pickle
    model = fastbp.MLP([4, 6, 3], activation="tanh", dtype=np.float64, seed=0, checkpoint_every=2,
                       l2=0.25)
    X, y = rng.normal(size=(9, 4)), np.arange(9) % 3
    model.loss_and_grad(X, y)
    before = model.params.copy()
    twin = {"deepcopy": copy.deepcopy, "copy": copy.copy,
            "pickle": lambda m: pickle.loads(pickle.dumps(m))}[how](model)
    assert repr(twin) == repr(model) and twin.l2 == 0.25
    assert np.array_equal(twin.params, model.params) and np.array_equal(twin.grads, model.grads)
    assert not np.shares_memory(twin.params, model.params)
    for views, flat in ((twin.weights, twin.params), (twin.biases, twin.params),
                        (twin.weight_grads, twin.grads), (twin.bias_grads, twin.grads)):
        assert all(np.shares_memory(v, flat) for v in views)
    assert twin.loss_and_grad(X, y) == model.loss_and_grad(X, y)
    assert np.array_equal(twin.grads, model.grads)
    assert np.array_equal(twin.grad_norms(), model.grad_norms())
    fastbp.SGD(twin, lr=0.5).train_step(X, y)
    assert not np.array_equal(twin.params, before)
    assert np.array_equal(twin.weights[0].ravel(), twin.params[:4 * 6])
    assert np.array_equal(model.params, before)


def test_writing_params_changes_the_model(rng):
    model = fastbp.MLP([4, 5, 3], activation="tanh", dtype=np.float64, seed=0)
    X = rng.normal(size=(6, 4))
    new = rng.normal(size=model.n_params)
    model.params[...] = new
    ref = reference_for(model)
    np.testing.assert_allclose(model.forward(X), ref.output(new, X), rtol=1e-13)
    model.biases[1][...] += 1.0
    np.testing.assert_allclose(model.forward(X), ref.output(new, X) + 1.0, rtol=1e-13)


def test_initialisation():
    sizes = [300, 400, 200, 10]
    a = fastbp.MLP(sizes, activation=["relu", "tanh"], dtype=np.float64, seed=5)
    b = fastbp.MLP(sizes, activation=["relu", "tanh"], dtype=np.float64, seed=5)
    c = fastbp.MLP(sizes, activation=["relu", "tanh"], dtype=np.float64, seed=6)
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    for bias in a.biases:
        assert not bias.any()
    # He for the ReLU layer: variance 2 / fan_in
    w = a.weights[0]
    assert w.var() == pytest.approx(2.0 / 300, rel=0.03) and abs(w.mean()) < 0.01
    # Glorot for the tanh layer and the identity output: variance 2 / (fan_in + fan_out)
    for w in a.weights[1:]:
        fan_in, fan_out = w.shape
        assert w.var() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.1)
    f32 = fastbp.MLP(sizes, activation=["relu", "tanh"], dtype=np.float32, seed=5)
    assert f32.params.dtype == np.float32 and f32.grads.dtype == np.float32


def test_forward_predict_and_predict_proba(rng):
    clf = fastbp.MLP([4, 6, 3], activation="relu", dtype=np.float64, seed=2)
    X = rng.normal(size=(15, 4))
    logits = clf.forward(X)
    ref_logits = reference_for(clf).output(clf.params, X)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-13)
    probs = clf.predict_proba(X)
    np.testing.assert_allclose(probs, naive.softmax(ref_logits), rtol=1e-13)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-14)
    assert np.array_equal(clf.predict(X), ref_logits.argmax(axis=1))
    assert np.array_equal(clf.forward(X), logits), "predict_proba must not change forward"

    reg = fastbp.MLP([4, 6, 2], activation="tanh", output_activation="sigmoid", loss="mse",
                     dtype=np.float64, seed=2)
    out = reg.predict(X)
    np.testing.assert_allclose(out, reference_for(reg).output(reg.params, X), rtol=1e-13)
    with pytest.raises(ValueError, match="softmax_cross_entropy"):
        reg.predict_proba(X)


@pytest.mark.parametrize("n_out", [1, 4])
def test_binary_cross_entropy_predict_and_predict_proba(n_out, rng):
    """predict: the 0/1 indicators (N, C) int64 of logits > 0; predict_proba: sigmoid(logits),
    each in (0, 1), not normalised over the outputs."""
    model = fastbp.MLP([4, 6, n_out], activation="tanh", loss="binary_cross_entropy",
                       dtype=np.float64, seed=2)
    model.params[...] = rng.normal(scale=2.0, size=model.n_params)
    X = rng.normal(size=(40, 4))
    logits = model.forward(X)
    np.testing.assert_allclose(logits, reference_for(model).output(model.params, X), rtol=1e-13)
    labels = model.predict(X)
    assert labels.dtype == np.int64 and labels.shape == (40, n_out)
    assert np.array_equal(labels, (logits > 0).astype(np.int64))
    assert 0 < labels.mean() < 1                      # not vacuous: both answers occur
    probs = model.predict_proba(X)
    assert probs.shape == (40, n_out)
    expected = naive.activation("sigmoid", logits)
    np.testing.assert_allclose(probs, expected, rtol=1e-14)
    assert np.array_equal(probs > 0.5, labels == 1)
    assert np.array_equal(model.forward(X), logits), "predict_proba must not change forward"


def test_inference_on_more_rows_than_one_chunk(rng):
    """forward and loss_value run large inputs in chunks; the result must not show it."""
    model = fastbp.MLP([3, 4, 2], activation="tanh", dtype=np.float64, seed=0)
    n = 4096 + 1000 + 7
    X = rng.normal(size=(n, 3))
    y = rng.integers(0, 2, size=n)
    ref = reference_for(model)
    np.testing.assert_allclose(model.forward(X), ref.output(model.params, X), rtol=1e-13)
    model.grads[...] = 7.0
    assert model.loss_value(X, y) == pytest.approx(ref.loss_value(model.params, X, y), rel=1e-12)
    assert (model.grads == 7.0).all(), "loss_value must not touch grads"


# ---------------------------------------------------------------------------------------------
# Extreme values through whole networks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_sigmoid_network_is_finite_and_silent(dtype, rng):
    """Pre-activations of order 1e4 in every layer: no overflow, no warning, outputs in [0, 1],
    and the same values as the reference."""
    model = fastbp.MLP([3, 4, 2], activation="sigmoid", output_activation="sigmoid", loss="mse",
                       dtype=dtype, seed=0)
    model.params[...] = rng.choice([-1.0, 1.0], size=model.n_params) * 4e3
    X = rng.choice([-1.0, 1.0], size=(8, 3))
    y = rng.uniform(size=(8, 2))
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.forward(X)
        loss = model.loss_and_grad(X, y)
    assert ((out >= 0) & (out <= 1)).all()
    assert np.isfinite(loss) and np.isfinite(model.grads).all()
    ref = reference_for(model)
    expected = ref.output(model.params.astype(np.float64), X)
    assert np.abs(out - expected).max() < (1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_with_huge_logits(dtype, rng):
    model = fastbp.MLP([3, 4], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    model.params[...] = rng.choice([-1.0, 1.0], size=model.n_params) * 3e3
    X = rng.choice([-1.0, 1.0], size=(10, 3))
    y = rng.integers(0, 4, size=10)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = model.loss_and_grad(X, y)
        probs = model.predict_proba(X)
    logits = model.forward(X)
    assert np.abs(logits).max() > 5e3
    assert np.isfinite(loss) and np.isfinite(model.grads).all() and np.isfinite(probs).all()
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params.astype(np.float64),
                                                             X, y)
    assert loss == pytest.approx(ref_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert max(layer_errors(model, ref_grads).values()) < (1e-5 if dtype == np.float32
                                                           else 1e-12)


# ---------------------------------------------------------------------------------------------
# fastbp.gradcheck


@pytest.mark.parametrize("act, loss, out_act, l2", [
    ("tanh", "softmax_cross_entropy", "identity", 0.0),
    ("sigmoid", "mse", "tanh", 0.0),
    ("identity", "mse", "sigmoid", 0.0),
    ("tanh", "binary_cross_entropy", "identity", 0.0),
    ("sigmoid", "binary_cross_entropy", "identity", 1.5),
    ("tanh", "softmax_cross_entropy", "identity", 0.3)])
def test_gradcheck_smooth_networks(act, loss, out_act, l2, rng):
    model = build(3, act, loss, out_act, seed=4, l2=l2)
    X = rng.normal(size=(10, 5))
    y = make_targets(loss, 10, 3, rng)
    model.loss_and_grad(X[:3], y[:3])       # grads hold something else beforehand
    params, grads = model.params.copy(), model.grads.copy()
    assert fastbp.gradcheck(model, X, y) < 1e-7
    assert np.array_equal(model.params, params) and np.array_equal(model.grads, grads)


def test_gradcheck_dead_relu_units_give_no_error(rng):
    """A ReLU unit that is off for every sample has exactly zero gradients into it, and moving
    its weights does not change the loss at all. gradcheck must report that as agreement (it
    is), not as rounding noise divided by its floor."""
    model = fastbp.MLP([5, 6, 7, 3], activation="relu", loss="mse", dtype=np.float64, seed=3)
    model.biases[0][0] = -100.0      # unit 0 of the first hidden layer never fires
    reports = []
    for _ in range(5):
        X, y = off_kink_batch(model, 12, rng)
        model.loss_and_grad(X, y)
        assert not model.weight_grads[0][:, 0].any()
        # the independent check agrees that these gradients are right
        numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
        assert naive.max_relative_error(model.grads, numeric, 1e-7) < 1e-8
        reports.append(fastbp.gradcheck(model, X, y))
    assert max(reports) < 1e-7, f"gradcheck reports {reports} on correct gradients"


def test_gradcheck_detects_a_wrong_gradient(rng):
    model = build(2, "tanh", "softmax_cross_entropy", "identity", seed=1)
    X = rng.normal(size=(8, 5))
    y = rng.integers(0, 3, size=8)
    honest = model.loss_and_grad

    def corrupted(X, y):
        loss = honest(X, y)
        model.grads[4] *= 1.001
        return loss

    model.loss_and_grad = corrupted
    worst = fastbp.gradcheck(model, X, y)
    assert 5e-4 < worst < 2e-3


def test_gradcheck_samples_large_models(rng):
    model = fastbp.MLP([20, 30, 4], activation="sigmoid", dtype=np.float64, seed=0)
    X = rng.normal(size=(6, 20))
    y = rng.integers(0, 4, size=6)
    calls = []
    honest = model.loss_value

    def counting(X, y):
        calls.append(1)
        return honest(X, y)

    model.loss_value = counting
    assert fastbp.gradcheck(model, X, y, max_params=50, seed=1) < 1e-7
    assert len(calls) == 4 * 50


@pytest.mark.parametrize("l2", [0.0, 0.8])
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_value_in_float32_matches_float64(loss, l2, rng):
    """loss_value (forward only) in float32, against the same model in float64."""
    m64 = fastbp.MLP([5, 7, 3], loss=loss, dtype=np.float64, seed=0, l2=l2)
    m32 = fastbp.MLP([5, 7, 3], loss=loss, dtype=np.float32, seed=0, l2=l2)
    m32.params[:] = m64.params
    X = rng.normal(size=(9, 5))
    y = make_targets(loss, 9, 3, rng)
    assert abs(m32.loss_value(X, y) - m64.loss_value(X, y)) < 1e-5 * max(1, m64.loss_value(X, y))


@pytest.mark.parametrize("loss", LOSSES)
def test_predictions_that_overflow_are_refused_not_given_class_0(loss):
    model = fastbp.MLP([2, 8, 3], loss=loss, seed=0)
    X = np.array([[0.5, -1.0], [3e38, -3e38], [1.0, 2.0]], dtype=np.float32)
    assert not np.isfinite(model.forward(X)[1]).all()
    gives_proba = fastbp.kernels.LOSS_KINDS[loss].proba is not None
    for predict in ([model.predict] + ([model.predict_proba] if gives_proba else [])):
        with pytest.raises(ValueError, match=r"X: the outputs of 1 row\(s\) \(the first: row 1\) "
                                             "overflow"):
            predict(X)
    assert model.predict(X[[0, 2]]).shape[0] == 2


def test_l2_can_be_changed_between_steps(rng):
    """Setting l2 gives the objective and gradient of a model built with it, also from 0
    (the penalty's kernel is then readied); a bad value is refused, the model unchanged."""
    X = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, 12)
    model = fastbp.MLP([5, 7, 3], dtype=np.float64, seed=2)
    built = fastbp.MLP([5, 7, 3], dtype=np.float64, seed=2, l2=0.3)
    model.loss_and_grad(X, y)   # readied without a penalty
    model.l2 = 0.3
    assert model.loss_and_grad(X, y) == built.loss_and_grad(X, y)
    np.testing.assert_array_equal(model.grads, built.grads)
    for bad, error in ((-1.0, ValueError), ("0.1", TypeError), (math.inf, ValueError)):
        with pytest.raises(error, match="l2"):
            model.l2 = bad
        assert model.l2 == 0.3 and model.loss_value(X, y) == built.loss_value(X, y)
