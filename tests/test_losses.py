"""The registry of losses (kernels.LOSS_KINDS): every entry complete, its kernels declared as
units, a reference for it in the tests, and what derives from it (the network's loss stage,
the units a run compiles, the model's rules, fit's scoring) following it, with no silent
fallback for an entry that misses a rule."""
import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from fastbp.kernels import _units, losses, plan
from fastbp.training import _Scorer
from helpers import make_targets

KINDS = list(kernels.LOSS_KINDS.values())
NAMES = list(kernels.LOSS_KINDS)


def test_the_registry_is_what_the_model_takes():
    assert fastbp.model.LOSSES == tuple(NAMES)
    assert kernels.LOSS_CODES == {kind.name: kind.code for kind in KINDS}
    assert len({kind.code for kind in KINDS}) == len(KINDS)   # codes are distinct
    assert all(kind.code >= 0 for kind in KINDS)              # -1: a Net without a loss
    for targets, name in losses.DEFAULT_LOSS.items():
        assert kernels.LOSS_KINDS[name].targets == targets


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_every_loss_has_its_units_and_references(kind):
    """Its two kernels are registered units (with the target type its targets say), a run of
    this loss compiles them (and the output activation's backward unless the loss is fused),
    the naive reference knows it, and its PyTorch reference names a torch function."""
    losses.check_kind(kind)
    forward_backward, loss = kind.units
    assert _units._SPEC[forward_backward].kernel is kind.forward_backward
    assert _units._SPEC[loss].kernel is kind.loss
    target = _units._SPEC[loss].argtypes(_units.DTYPES[1])[2]
    assert target.ndim == (1 if kind.targets == "labels" else 2)
    plain, _ = plan.make_net([4, 3, 2], [1, 0], 4, loss=kind.name)   # (no block layer)
    names = plan.units_for(kind.name, None, plain)
    assert forward_backward in names and loss in names
    assert ("activation_backward" in names) == (kind.fused is None)
    for other in KINDS:   # no other loss's units
        if other is not kind:
            assert not set(other.units) & set(names)
    assert kind.name in naive.LOSSES
    torch_name, kwargs, scale = kind.torch
    assert isinstance(torch_name, str) and isinstance(kwargs, dict) and scale > 0
    torch = pytest.importorskip("torch")
    assert callable(getattr(torch.nn.functional, torch_name))


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_each_loss_kernel_matches_the_naive_reference(kind, rng):
    """forward_backward and loss of the entry, called directly, against the reference's
    per-row losses and gradient (float64)."""
    out = rng.normal(scale=2.0, size=(13, 4))
    target = make_targets(kind.name, 13, 4, rng)
    ref_losses, ref_grad = naive.LOSSES[kind.name](out, target)
    grad, row_losses = np.empty_like(out), np.empty(13)
    mean = kind.forward_backward(grad, row_losses, out, target)
    np.testing.assert_allclose(row_losses, ref_losses, rtol=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-13, atol=1e-16)
    assert mean == pytest.approx(ref_losses.mean(), rel=1e-13)
    again = np.empty(13)
    assert kind.loss(again, out, target) == pytest.approx(mean, rel=1e-14)
    np.testing.assert_allclose(again, row_losses, rtol=1e-14)


@pytest.mark.parametrize("change, message", [
    (dict(targets="ranks"), "targets 'ranks'"),
    (dict(predict="nearest"), "predict 'nearest'"),
    (dict(predict="argmax"), "argmax"),
    (dict(threshold=None), "no threshold"),
    (dict(accuracy=("labels",)), "accuracy"),
    (dict(targets="labels", predict="argmax", accuracy=("labels",)), "target_range"),
    (dict(torch=None), "PyTorch"),
    (dict(loss=lambda losses, out, target: 0.0), "not an @njit kernel"),
])
def test_an_entry_missing_a_rule_is_refused(change, message):
    """check_kind, run on every entry when the module loads, refuses an entry that misses a
    rule one of its fields needs, or names a rule that does not exist."""
    bce = kernels.LOSS_KINDS["binary_cross_entropy"]
    with pytest.raises(ValueError, match=message):
        losses.check_kind(bce._replace(**change))


def test_the_model_and_fit_raise_on_a_missing_rule_rather_than_fall_back(monkeypatch, rng):
    """An entry changed after the check (monkeypatched here): predict, predict_proba and
    fit's scoring raise; none of them takes another loss's rule."""
    X = rng.normal(size=(8, 3))
    model = fastbp.MLP([3, 4, 1], loss="mse", dtype=np.float64, seed=0)
    y = (rng.random((8, 1)) < 0.5).astype(float)
    mse = kernels.LOSS_KINDS["mse"]
    monkeypatch.setitem(kernels.LOSS_KINDS, "mse", mse._replace(predict="nearest"))
    with pytest.raises(ValueError, match="no predict rule 'nearest'"):
        model.predict(X)
    monkeypatch.setitem(kernels.LOSS_KINDS, "mse", mse._replace(threshold=None))
    scorer = _Scorer(model, X, y, fastbp.distributed.Alone())
    assert scorer.kind == "binary"
    with pytest.raises(ValueError, match="no threshold"):
        scorer.score()
    with pytest.raises(ValueError, match="predict_proba: needs loss="):
        model.predict_proba(X)


@pytest.mark.parametrize("kind", KINDS, ids=NAMES)
def test_model_rules_follow_the_registry(kind, rng):
    """predict, predict_proba and the output activation's check, for each entry."""
    n_out = 3
    model = fastbp.MLP([4, 5, n_out], activation="tanh", loss=kind.name, dtype=np.float64,
                       seed=1)
    X = rng.normal(size=(10, 4))
    out = model.forward(X)
    np.testing.assert_array_equal(model.predict(X), kind.predictions(out))
    if kind.proba is None:
        with pytest.raises(ValueError, match="predict_proba: needs loss="):
            model.predict_proba(X)
    else:
        expected = out.copy()
        kind.proba(expected, expected)
        np.testing.assert_array_equal(model.predict_proba(X), expected)
    if kind.fused is None:
        fastbp.MLP([4, 5, n_out], loss=kind.name, output_activation="tanh")
    else:
        with pytest.raises(ValueError, match=f"the {kind.fused} is part of the loss"):
            fastbp.MLP([4, 5, n_out], loss=kind.name, output_activation="tanh")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_losses_is_forward_and_the_compiled_loss(name, dtype, rng):
    """The outputs bitwise forward's; the rows' losses those of the compiled loss (their mean
    loss_value's without the penalty), also over several inference chunks and for sparse X."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    model = fastbp.MLP([5, 7, 3], activation="tanh", loss=name, dtype=dtype, seed=2, l2=0.7)
    n = fastbp.engine.INFERENCE_CHUNK + 300
    X = rng.normal(size=(n, 5))
    X[X < 0.3] = 0.0
    y = make_targets(name, n, 3, rng)
    out, row_losses = model.forward_and_losses(X, y)
    assert out.dtype == dtype and row_losses.dtype == np.float64
    assert np.array_equal(out, model.forward(X))
    model.l2 = 0.0
    # The same rows' losses (no product here is split), summed in another order.
    assert row_losses.mean() == pytest.approx(model.loss_value(X, y), rel=1e-12)
    ref_losses, _ = naive.LOSSES[name](out.astype(np.float64), y)
    np.testing.assert_allclose(row_losses, ref_losses, rtol=1e-5 if dtype == np.float32
                               else 1e-12, atol=1e-12)
    sparse_out, sparse_losses = model.forward_and_losses(scipy_sparse.csr_matrix(X), y)
    assert np.array_equal(sparse_out, out) and np.array_equal(sparse_losses, row_losses)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_val_loss_is_the_models_compiled_loss(name, dtype, rng):
    """fit's val_loss is the model's own loss on the validation rows (loss_value without the
    L2 penalty, to rounding), and val_accuracy follows the registry's rules."""
    model = fastbp.MLP([5, 8, 3], activation="tanh", loss=name, dtype=dtype, seed=3, l2=0.2)
    opt = fastbp.SGD(model, lr=0.05)
    X = rng.normal(size=(90, 5))
    labels = rng.integers(0, 3, 90)
    kind = kernels.LOSS_KINDS[name]
    y = labels if kind.targets == "labels" else np.eye(3)[labels]
    history = fastbp.fit(model, X[:60], y[:60], opt, epochs=2, batch_size=16, seed=0,
                         validation_data=(X[60:], y[60:]))
    model.l2 = 0.0
    assert history["val_loss"][-1] == pytest.approx(model.loss_value(X[60:], y[60:]),
                                                    rel=1e-12)
    predicted = model.forward(X[60:]).argmax(axis=1)
    assert history["val_accuracy"][-1] == np.mean(predicted == labels[60:])


# ---------------------------------------------------------------------------------------------
# Huber


def huber_batch(rng, n_rows=40, n_out=5, dtype=np.float64, margin=0.01):
    """(pred, target) whose differences fall on both sides of delta (about half beyond it),
    none within margin of +-delta, where the second derivative jumps."""
    pred = rng.normal(scale=1.5, size=(n_rows, n_out))
    target = rng.normal(size=(n_rows, n_out))
    diff = pred - target
    near = np.abs(np.abs(diff) - losses.HUBER_DELTA) < margin
    target[near] -= 3 * margin * np.sign(diff[near])
    return pred.astype(dtype), target.astype(dtype)


def test_huber_gradient_matches_finite_differences(rng):
    pred, target = huber_batch(rng)
    assert 0.2 < np.mean(np.abs(pred - target) > 1) < 0.8   # both pieces are exercised
    grad, row_losses = np.empty_like(pred), np.empty(40)
    kernels.huber_forward_backward(grad, row_losses, pred, target)
    # Exact for each quadratic or linear piece (the margin keeps every step within one):
    # what differs is the rounding of the loss, about 1e-16, over 12 eps.
    numeric = naive.numeric_gradient(
        lambda: kernels.huber_loss(np.empty(40), pred, target), pred, 1e-3)
    assert naive.max_relative_error(grad, numeric, 1e-6) < 1e-7
    ref_losses, ref_grad = naive.huber(pred, target)
    np.testing.assert_allclose(row_losses, ref_losses, rtol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-15)


def test_huber_is_mse_within_delta_and_linear_beyond(rng):
    """Near the target Huber is MSE, bit for bit; beyond delta each output pulls with
    delta / B, whatever its distance."""
    pred = rng.uniform(-0.4, 0.4, size=(9, 3))
    target = rng.uniform(-0.4, 0.4, size=(9, 3))
    g_huber, l_huber = np.empty_like(pred), np.empty(9)
    g_mse, l_mse = np.empty_like(pred), np.empty(9)
    assert kernels.huber_forward_backward(g_huber, l_huber, pred, target) == \
        kernels.mse_forward_backward(g_mse, l_mse, pred, target)
    assert np.array_equal(g_huber, g_mse)
    far = target + np.where(rng.random((9, 3)) < 0.5, -1.0, 1.0) * rng.uniform(2, 1e6, (9, 3))
    kernels.huber_forward_backward(g_huber, l_huber, far, target)
    np.testing.assert_array_equal(np.abs(g_huber), 1 / 9)
    np.testing.assert_allclose(l_huber, (np.abs(far - target) - 0.5).sum(axis=1), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huber_row_tiles_in_place_and_float32(dtype, rng):
    """Enough rows for several row tiles (in parallel): the reference's values; dpred may be
    pred, with bitwise the same results; float32 within its rounding of float64."""
    pred, target = huber_batch(rng, n_rows=5000, n_out=10, dtype=dtype)
    grad, row_losses = np.empty_like(pred), np.empty(5000)
    mean = kernels.huber_forward_backward(grad, row_losses, pred, target)
    ref_losses, ref_grad = naive.huber(pred, target)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(row_losses, ref_losses, rtol=tol)
    assert naive.normwise_error(grad, ref_grad) < tol
    assert mean == pytest.approx(ref_losses.mean(), rel=tol)
    inplace, again = pred.copy(), np.empty(5000)
    assert kernels.huber_forward_backward(inplace, again, inplace, target) == mean
    assert np.array_equal(inplace, grad) and np.array_equal(again, row_losses)
    assert kernels.huber_loss(again, pred, target) == mean   # the loss alone: bitwise too
    assert np.array_equal(again, row_losses)


def test_huber_propagates_nan_and_takes_inf(rng):
    pred, target = huber_batch(rng, n_rows=4, n_out=3)
    pred[1, 2], pred[2, 0] = np.nan, np.inf
    grad, row_losses = np.empty_like(pred), np.empty(4)
    assert np.isnan(kernels.huber_forward_backward(grad, row_losses, pred, target))
    assert np.isnan(row_losses[1]) and np.isnan(grad[1, 2])
    assert row_losses[2] == np.inf and grad[2, 0] == 1 / 4
    assert np.isfinite(row_losses[[0, 3]]).all() and np.isfinite(np.delete(grad, [5, 6])).all()


@pytest.mark.parametrize("out_act, l2, weighted", [
    ("identity", 0.0, False), ("tanh", 0.0, False), ("gelu", 0.6, False),
    ("sigmoid", 0.0, True), ("tanh", 0.8, True)])
def test_huber_network_matches_torch_huber_loss(out_act, l2, weighted, rng):
    """A whole network with loss="huber" against torch.nn.HuberLoss(reduction="sum",
    delta=1.0)(out, y) / B in float64 (sum_i w_i HuberLoss(reduction="none")(out_i, y_i).sum()
    / sum_i w_i with sample weights), plus the L2 penalty: loss, every gradient tensor and
    loss_value within 1e-10."""
    torch = pytest.importorskip("torch")
    model = fastbp.MLP([6, 9, 7, 3], activation=["tanh", "relu"], output_activation=out_act,
                       loss="huber", dtype=np.float64, seed=5, l2=l2)
    model.params[...] = rng.normal(scale=0.8, size=model.n_params)
    X = rng.normal(size=(23, 6))
    y = rng.normal(scale=1.5, size=(23, 3))
    w = rng.uniform(0, 3, 23) if weighted else None
    if weighted:
        w[[2, 9]] = 0.0
    got = model.loss_and_grad(X, y, sample_weight=w)
    tensors = {}
    h = torch.tensor(X)
    names = model.activations + [model.output_activation]
    for l, (weight, bias) in enumerate(zip(model.weights, model.biases)):
        tensors[f"W{l}"] = torch.tensor(weight, requires_grad=True)
        tensors[f"b{l}"] = torch.tensor(bias, requires_grad=True)
        z = h @ tensors[f"W{l}"] + tensors[f"b{l}"]
        h = z if names[l] == "identity" else getattr(torch.nn.functional, names[l])(z)
    target = torch.tensor(y)
    assert 0.1 < float(((h - target).abs() > 1).double().mean()) < 0.9   # both pieces
    squares = sum((tensors[f"W{l}"] ** 2).sum() for l in range(3))
    if weighted:
        tw = torch.tensor(w)
        rows = torch.nn.HuberLoss(reduction="none", delta=1.0)(h, target).sum(dim=1)
        expected = (tw * rows).sum() / tw.sum() + l2 / (2 * tw.sum()) * squares
    else:
        expected = (torch.nn.HuberLoss(reduction="sum", delta=1.0)(h, target) / 23
                    + l2 / (2 * 23) * squares)
    expected.backward()
    assert got == pytest.approx(expected.item(), rel=1e-10)
    for l in range(3):
        assert naive.normwise_error(model.weight_grads[l], tensors[f"W{l}"].grad) < 1e-10
        assert naive.normwise_error(model.bias_grads[l], tensors[f"b{l}"].grad) < 1e-10
    assert model.loss_value(X, y, sample_weight=w) == pytest.approx(expected.item(), rel=1e-10)


def test_huber_fit_predicts_values_and_shrugs_off_outliers(rng):
    """fit with loss="huber" on a linear target with a few huge outliers: predict gives the
    output values (N, 1), not classes; predict_proba is refused; the fitted line stays near
    the clean one, where MSE's is dragged away by the outliers."""
    X = rng.uniform(-1, 1, size=(200, 2))
    y = X @ np.array([1.5, -0.5]) + 0.3 + 0.01 * rng.normal(size=200)
    y[:6] += 50.0
    fitted = {}
    for loss in ("huber", "mse"):
        model = fastbp.MLP([2, 1], loss=loss, dtype=np.float64, seed=0)
        opt = fastbp.Adam(model, lr=0.05)
        history = fastbp.fit(model, X, y, opt, epochs=60, batch_size=20, seed=1,
                             validation_data=(X[6:], y[6:]))
        assert "val_accuracy" not in history and len(history["val_loss"]) == 60
        fitted[loss] = model
    huber = fitted["huber"]
    predicted = huber.predict(X)
    assert predicted.shape == (200, 1) and predicted.dtype == np.float64
    assert np.array_equal(predicted, huber.forward(X))
    with pytest.raises(ValueError, match="predict_proba: needs loss="):
        huber.predict_proba(X)
    clean_error = {loss: np.abs(m.predict(X[6:])[:, 0] - y[6:]).mean()
                   for loss, m in fitted.items()}
    assert clean_error["huber"] < 0.1 < clean_error["mse"]
