"""The registry of losses (kernels.LOSS_KINDS): every entry complete, its kernels declared as
units, a reference for it in the tests, and what derives from it (the network's loss stage,
the units a run compiles, the model's rules, fit's scoring) following it, with no silent
fallback for an entry that misses a rule."""
import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from fastbp.kernels import _units, losses, network
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
    names = network.units_for(kind.name)
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
    scorer = _Scorer(model, X, y)
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
    n = fastbp.model.INFERENCE_CHUNK + 300
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
