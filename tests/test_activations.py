"""Every activation of fastbp.kernels.ACTIVATIONS through the public MLP: accepted names, the
NumPy reference's coverage of the table, and whole networks mixing the activations (leaky_relu,
gelu among them) against finite differences, the reference, and float64 in float32. (The
kernels alone: test_kernels; PyTorch: test_torch; checkpointing and memory: test_checkpointing.)"""
import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from helpers import (assert_loss_and_grads_match_reference, layer_errors, make_targets,
                     off_kink_batch, reference_for)

NAMES = [a.name for a in kernels.ACTIVATIONS]
MIXED_SIZES = [7, 9, 8, 6, 5]
MIXED = ["gelu", "leaky_relu", "tanh"]
# (loss, output activation)
MIXED_HEADS = [pytest.param("softmax_cross_entropy", "identity", id="ce"),
               pytest.param("mse", "gelu", id="mse-gelu")]


def mixed_model(loss, out_act, dtype=np.float64, seed=5):
    return fastbp.MLP(MIXED_SIZES, activation=MIXED, output_activation=out_act, loss=loss,
                      dtype=dtype, seed=seed)


# ---------------------------------------------------------------------------------------------
# Names


def test_reference_covers_every_table_activation():
    """naive has its own formulas, by name: one for each entry of the table, no more."""
    assert set(naive.ACTIVATIONS) == set(NAMES)
    assert set(naive.KINKED) <= set(NAMES)
    assert {"leaky_relu", "gelu"} <= set(NAMES)


def test_model_accepts_every_table_activation():
    assert list(fastbp.model.ACTIVATIONS) == NAMES
    for name in NAMES:
        model = fastbp.MLP([3, 4, 4, 2], activation=name, output_activation=name, loss="mse",
                           seed=0)
        assert model.activations == [name, name] and model.output_activation == name
    model = fastbp.MLP(MIXED_SIZES, activation=MIXED)
    assert model.activations == MIXED


@pytest.mark.parametrize("kwargs, argument", [
    (dict(activation="swish"), "activation"),
    (dict(activation="GELU"), "activation"),
    (dict(activation="leaky-relu"), "activation"),
    (dict(activation=["gelu", "swish", "tanh"]), "activation"),
    (dict(output_activation="gelu_tanh", loss="mse"), "output_activation"),
])
def test_unknown_activation_lists_every_accepted_name(kwargs, argument):
    kwargs = {"sizes": MIXED_SIZES, **kwargs}
    with pytest.raises(ValueError, match=f"^{argument}: unknown activation") as caught:
        fastbp.MLP(**kwargs)
    message = str(caught.value)
    listed = message.split("expected one of", 1)[1].replace(",", " ").split()
    assert listed == NAMES, message
    assert "leaky_relu" in listed and "gelu" in listed


def test_reference_rejects_unknown_activation():
    with pytest.raises(ValueError, match="swish"):
        naive.activation("swish", np.zeros(2))
    with pytest.raises(ValueError, match="swish"):
        naive.activation_derivative("swish", np.zeros(2))


# ---------------------------------------------------------------------------------------------
# The reference's formulas


@pytest.mark.parametrize("name", NAMES)
def test_reference_derivative_matches_finite_differences(name, rng):
    """So that agreeing with naive means something for every activation."""
    z = rng.normal(scale=2.0, size=40)
    if name in naive.KINKED:
        z = np.where(np.abs(z) < 0.05, np.sign(z) * 0.05 + z, z)
    numeric = np.empty_like(z)
    for i, v in enumerate(z):
        point = np.array([v])
        numeric[i] = naive.numeric_gradient(lambda: naive.activation(name, point)[0], point,
                                            1e-3)[0]
    assert naive.max_relative_error(naive.activation_derivative(name, z), numeric, 1e-9) < 1e-8


def test_reference_leaky_relu_and_gelu_by_hand():
    z = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    assert naive.activation("leaky_relu", z).tolist() == [-0.03, -0.01, 0.0, 1.0, 3.0]
    assert naive.activation_derivative("leaky_relu", z).tolist() == [0.01, 0.01, 0.01, 1, 1]
    # Phi(-3), Phi(-1), 1/2, Phi(1), Phi(3)
    phi = np.array([0.0013498980316300946, 0.15865525393145707, 0.5, 0.8413447460685429,
                    0.9986501019683699])
    np.testing.assert_allclose(naive.activation("gelu", z), z * phi, rtol=4e-15)
    np.testing.assert_allclose(naive.activation_derivative("gelu", z),
                               phi + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Whole networks


@pytest.mark.parametrize("loss, out_act", MIXED_HEADS)
def test_mixed_network_gradient_matches_finite_differences(loss, out_act, rng):
    """float64, every parameter: max relative error < 1e-7 (absolute below 1e-7)."""
    model = mixed_model(loss, out_act)
    model.params[...] = rng.normal(scale=0.6, size=model.n_params)      # nonzero biases too
    X, y = off_kink_batch(model, 12, rng)
    model.grads[...] = np.nan
    model.loss_and_grad(X, y)
    analytic = model.grads.copy()
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
    assert naive.max_relative_error(analytic, numeric, 1e-7) < 1e-7
    assert np.abs(analytic).max() > 1e-3     # not vacuous


@pytest.mark.parametrize("loss, out_act", MIXED_HEADS)
def test_mixed_network_matches_reference(loss, out_act, rng):
    model = mixed_model(loss, out_act, seed=6)
    X = assert_loss_and_grads_match_reference(model, rng)
    np.testing.assert_allclose(model.forward(X), reference_for(model).output(model.params, X),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss, out_act", MIXED_HEADS)
def test_mixed_network_float32_gradients_match_float64(loss, out_act, rng):
    """float32 gradients within 1e-4 of float64 fastbp on the same (float32) parameters and
    inputs, per tensor as max|g32 - g64| / max|g64| (see test_model's float32 test)."""
    m32 = mixed_model(loss, out_act, dtype=np.float32, seed=8)
    m64 = mixed_model(loss, out_act, dtype=np.float64, seed=8)
    m64.params[...] = m32.params
    X = rng.normal(size=(64, MIXED_SIZES[0])).astype(np.float32)
    y = make_targets(loss, 64, MIXED_SIZES[-1], rng)
    if loss == "mse":
        y = y.astype(np.float32)
    loss32 = m32.loss_and_grad(X, y)
    loss64 = m64.loss_and_grad(X.astype(np.float64), y)
    assert m32.grads.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    errors = layer_errors(m32, m64.grads)
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_each_activation_network_gradient_matches_finite_differences(name, loss, rng):
    """Each activation alone, in both hidden layers (and as the output activation with MSE)."""
    out_act = name if loss == "mse" else "identity"
    model = fastbp.MLP([5, 6, 4, 3], activation=name, output_activation=out_act, loss=loss,
                       dtype=np.float64, seed=2)
    model.params[...] = rng.normal(scale=0.7, size=model.n_params)
    X, y = off_kink_batch(model, 10, rng)
    model.loss_and_grad(X, y)
    analytic = model.grads.copy()
    numeric = naive.numeric_gradient(lambda: model.loss_value(X, y), model.params, 1e-3)
    assert naive.max_relative_error(analytic, numeric, 1e-7) < 1e-7
    _, ref_grads = reference_for(model).loss_and_grad(model.params, X, y)
    assert max(layer_errors(model, ref_grads).values()) < 1e-10
