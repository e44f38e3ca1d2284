"""Layer and batch normalisation, dropout and residual connections (MLP(norm=, residual=,
dropout=)): against PyTorch in float64, against finite differences, against an independent
NumPy copy of the dropout masks' hash, and everywhere a model goes (checkpointing, save and load,
resume, fit's paths, bad input)."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import kernels, layout
from fastbp.monitor import GradientHealthWarning, GradientMonitor

# -- an independent reference of the dropout masks: SplitMix64 in Python integers --------------

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(h):
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _uniform(seed, step, layer, row, j):
    h = _mix((seed + _GOLDEN) & _M64)
    for part in (step, layer, row, j):
        h = _mix((h + int(part) * _GOLDEN) & _M64)
    return (h >> 11) * 2.0 ** -53


def reference_mask(p, seed, step, layer, rows, width):
    return np.array([[0.0 if _uniform(seed, step, layer, r, j) < p else 1.0 / (1.0 - p)
                      for j in range(width)] for r in rows])


def test_dropout_mask_is_the_documented_hash():
    """Every element: kept iff the hash's uniform number is >= p, then 1 / (1 - p); row keys
    from row_ids plus the base, or positions."""
    mask = np.empty((7, 9))
    ids = np.array([5, 0, 11, 3, 2, 40, 7], dtype=np.int64)
    kernels.dropout_mask(mask, 0.3, 42, 5, 2, ids, 100)
    np.testing.assert_array_equal(mask, reference_mask(0.3, 42, 5, 2, ids + 100, 9))
    kernels.dropout_mask(mask, 0.6, 1, 0, 0, ids[:0])
    np.testing.assert_array_equal(mask, reference_mask(0.6, 1, 0, 0, range(7), 9))
    assert 0.2 < (mask == 0).mean() < 0.9   # (and not all kept or all dropped)


def test_dropout_masks_do_not_depend_on_the_thread_count():
    code = ("import numpy as np, sys; from fastbp import kernels; m = np.empty((300, 200), "
            "np.float32); kernels.dropout_mask(m, 0.5, 7, 3, 1, np.arange(300) * 3); "
            "sys.stdout.write(m.tobytes().hex()[:20000] + str(m.sum()))")
    outputs = set()
    for threads in ("1", "3"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert len(outputs) == 1


_NORM_KERNELS = """
import hashlib, numpy as np, sys
from fastbp import kernels
rng = np.random.default_rng(0)
b, n = 512, 512   # big enough to be split between threads
z, dout = rng.standard_normal((2, b, n), dtype=np.float32)
gamma, beta = 1 + rng.standard_normal((2, n), dtype=np.float32) / 4
out, xhat, dinp = np.empty((3, b, n), np.float32)
rstd, dgamma, dbeta = np.empty(b, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
kernels.layer_norm_forward(out, xhat, rstd, z, gamma, beta)
kernels.layer_norm_backward(dinp, dgamma, dbeta, dout, xhat, rstd, gamma)
arrays = [out, xhat, rstd, dinp, dgamma, dbeta]
mean, col_rstd = np.empty(n, np.float32), np.empty(n, np.float32)
running_mean, running_var = np.zeros(n), np.ones(n)
kernels.batch_norm_forward(out, xhat, mean, col_rstd, running_mean, running_var, z, gamma, beta,
                           True)
kernels.batch_norm_backward(dinp, dgamma, dbeta, dout, xhat, col_rstd, gamma)
arrays += [out, xhat, mean, col_rstd, running_mean, running_var, dinp, dgamma, dbeta]
sys.stdout.write(hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest())
"""


def test_normalisation_kernels_do_not_depend_on_the_thread_count():
    """One thread runs each pass whole (layer norm's backward then sums the scale and shift
    gradients in its row pass); several split rows or columns: the same bits."""
    outputs = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        outputs.add(subprocess.run([sys.executable, "-c", _NORM_KERNELS], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert len(outputs) == 1


# -- PyTorch float64 ---------------------------------------------------------------------------

CONFIGS = {
    "layer": dict(norm="layer"),
    "batch": dict(norm="batch"),
    "dropout": dict(dropout=0.3),
    "residual": dict(residual=True),
    "layer-residual-dropout": dict(norm="layer", residual=True, dropout=[0.2, 0.5, 0.0]),
    "mixed": dict(norm=["batch", None, "layer"], residual=True, dropout=[0.0, 0.4, 0.1]),
    "batch-residual": dict(norm="batch", residual=True),
}
SIZES = [5, 6, 6, 6, 3]


def _model(config, checkpoint_every=1, loss="softmax_cross_entropy", activation=None):
    return fastbp.MLP(SIZES, activation=activation or ["tanh", "gelu", "relu"], loss=loss,
                      dtype=np.float64, seed=3, checkpoint_every=checkpoint_every,
                      **CONFIGS[config])


def torch_pass(torch, model, x, y, running, train, rows, product=None):
    """PyTorch's loss, gradient, new running statistics and output for fastbp's model, built
    from nn.functional with the same parameters (in float64) and fastbp's masks (from the
    reference). product(h, weight): each layer's product (None: h @ weight)."""
    F = torch.nn.functional
    params = torch.tensor(model.params.astype(np.float64), requires_grad=True)
    engine = model.engine
    offsets = layout.param_offsets(model.sizes, engine.kinds)
    run_offsets, _ = kernels.running_layout(model.sizes, engine.kinds)
    running = running.copy()
    h = torch.tensor(x)
    for layer, (n_in, n_out) in enumerate(zip(model.sizes[:-1], model.sizes[1:])):
        block = params[offsets[layer]:offsets[layer + 1]]
        weight = block[:n_in * n_out].reshape(n_in, n_out)
        z = (h @ weight if product is None else product(h, weight)) \
            + block[n_in * n_out:(n_in + 1) * n_out]
        gamma, beta = block[(n_in + 1) * n_out:(n_in + 2) * n_out], block[(n_in + 2) * n_out:]
        norm = layout.LAYER_KINDS[engine.kinds[layer]].norm
        if norm == "layer":
            z = F.layer_norm(z, (n_out,), gamma, beta, 1e-5)
        elif norm == "batch":
            at = run_offsets[layer]
            mean, var = (torch.tensor(running[at:at + n_out]),
                         torch.tensor(running[at + n_out:at + 2 * n_out]))
            z = F.batch_norm(z, mean, var, gamma, beta, training=train, momentum=0.1, eps=1e-5)
            running[at:at + n_out], running[at + n_out:at + 2 * n_out] = mean, var
        function = kernels.ACTIVATIONS[engine.codes[layer]].torch
        a = z if function is None else getattr(F, function[0])(z, **function[1])
        p = engine.dropout[layer]
        if p > 0 and train:
            a = a * torch.tensor(reference_mask(p, int(engine.counter[0]), model.training_passes,
                                                layer, rows, n_out))
        h = h + a if engine.residual[layer] else a
    if model.loss == "softmax_cross_entropy":
        loss = F.cross_entropy(h, torch.tensor(y))
    else:
        loss = 0.5 * ((h - torch.tensor(y)) ** 2).sum(axis=1).mean()
    loss.backward()
    return loss.item(), params.grad.numpy(), running, h.detach().numpy()


@pytest.mark.parametrize("checkpoint_every", [1, 2])
@pytest.mark.parametrize("config", CONFIGS)
def test_loss_gradients_and_running_statistics_equal_pytorch(config, checkpoint_every):
    torch = pytest.importorskip("torch")
    model = _model(config, checkpoint_every)
    rng = np.random.default_rng(1)
    model.params = model.params + rng.normal(0, 0.2, model.n_params)   # scales, shifts not 1, 0
    for step in range(3):   # several training passes: the running statistics accumulate
        x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
        before = model.engine.running.copy()
        loss = model.loss_and_grad(x, y)
        expected, grads, running, _ = torch_pass(torch, model, x, y, before, True, range(9))
        assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(model.grads, grads, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.engine.running, running, rtol=1e-12, atol=1e-14)
    _, _, _, out = torch_pass(torch, model, x, y, model.engine.running, False, range(9))
    np.testing.assert_allclose(model.forward(x), out, rtol=1e-10, atol=1e-12)


def test_mse_and_a_relu_stack_equal_pytorch_too():
    torch = pytest.importorskip("torch")
    model = _model("mixed", 3, loss="mse", activation="relu")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
    loss = model.loss_and_grad(x, y)
    expected, grads, _, _ = torch_pass(torch, model, x, y, kernels.new_running(
        model.sizes, model.engine.kinds), True, range(6))
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(model.grads, grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_match_finite_differences(config):
    # (No ReLU: a normalised pre-activation sits near its kink, where differences mislead.)
    model = _model(config, activation=["tanh", "gelu", "sigmoid"])
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    before = (model.engine.running.copy(), model.training_passes)
    # A bias before batch norm has a zero gradient (the mean is taken out): compare near-zero
    # gradients absolutely, below 1e-5.
    assert fastbp.gradcheck(model, x, y, floor=1e-5) < 1e-7
    assert (model.engine.running.tolist(), model.training_passes) == (before[0].tolist(),
                                                                     before[1])


@pytest.mark.parametrize("config", CONFIGS)
def test_checkpointing_gives_the_same_bits(config):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 5)).astype(np.float64), rng.integers(0, 3, 8)
    results = []
    for k in (1, 2, 3):
        model = _model(config, k)
        losses = [model.loss_and_grad(x, y) for _ in range(2)]
        results.append((losses, model.grads.tobytes(), model.engine.running.tobytes()))
    assert results[0] == results[1] == results[2]


# -- training and inference --------------------------------------------------------------------


def test_inference_is_deterministic_and_leaves_the_training_state_alone():
    model = _model("mixed")
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
    model.loss_and_grad(x, y)
    state = (model.engine.running.copy(), model.training_passes)
    first = model.predict_proba(x)
    assert model.loss_value(x, y) == model.loss_value(x, y)
    np.testing.assert_array_equal(first, model.predict_proba(x))
    np.testing.assert_array_equal(model.forward(x[:3]), model.forward(x)[:3])  # no batch stats
    assert (model.engine.running.tolist(), model.training_passes) == (state[0].tolist(),
                                                                     state[1])


def test_each_training_pass_draws_new_masks_and_layer_norm_alone_trains_as_it_infers():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
    model = _model("dropout")
    first, second = model.loss_and_grad(x, y), model.loss_and_grad(x, y)
    assert first != second and model.training_passes == 2
    plain = _model("layer")
    assert plain.loss_and_grad(x, y) == pytest.approx(plain.loss_value(x, y), rel=1e-14)


def test_views_layout_and_initial_values():
    model = _model("mixed")
    assert model.norm == ["batch", None, "layer"] and model.residual
    assert model.dropout == [0.0, 0.4, 0.1]
    assert [w is None for w in model.norm_weights] == [False, True, False, True]
    np.testing.assert_array_equal(model.norm_weights[0], 1.0)
    np.testing.assert_array_equal(model.norm_biases[2], 0.0)
    assert model.running_means[0].tolist() == [0.0] * 6
    assert model.running_vars[0].tolist() == [1.0] * 6 and model.running_means[2] is None
    model.norm_weights[2][...] = 2.0   # a view into params
    start = layout.param_offsets(model.sizes, model.engine.kinds)[2] + 7 * 6
    np.testing.assert_array_equal(model.params[start:start + 6], 2.0)
    # The residual layers are the hidden ones of equal widths; the output layer never is one.
    assert model.engine.residual == (False, True, True, False)
    report = model.memory_report()
    assert report["buffers"] == model.engine.running.nbytes + 3 * 8


def test_l2_covers_the_weights_not_the_scales_and_shifts():
    torch = pytest.importorskip("torch")
    del torch
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    model = _model("layer")
    plain_loss = model.loss_and_grad(x, y)
    plain = model.grads.copy()
    model.l2 = 0.5
    assert model.loss_and_grad(x, y) > plain_loss
    for layer in range(3):
        np.testing.assert_array_equal(model.norm_weight_grads[layer],
                                      plain[_slice(model, layer, 2)])
        assert not np.array_equal(model.weight_grads[layer].ravel(),
                                  plain[_slice(model, layer, 0)])


def _slice(model, layer, block):
    views = layout.layer_blocks(np.arange(model.n_params), model.sizes, model.engine.kinds)
    index = list(views[layer].values())[block].ravel()
    return slice(index[0], index[-1] + 1)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(norm="group"), ValueError, "norm: unknown normalisation 'group'"),
    (dict(norm=["layer"]), ValueError, "norm: expected 2 entries"),
    (dict(dropout=1.0), ValueError, "dropout: expected a probability in [0, 1)"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout=float("nan")), ValueError, "dropout"),
    (dict(dropout=True), TypeError, "dropout"),
    (dict(dropout=[0.1, 0.2, 0.3]), ValueError, "dropout: expected 2 entries"),
    (dict(residual="yes"), TypeError, "residual"),
])
def test_bad_arguments_name_themselves(kwargs, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        fastbp.MLP([4, 8, 8, 2], **kwargs)


def test_residual_needs_a_hidden_layer_of_equal_widths():
    with pytest.raises(ValueError, match="residual: no hidden layer"):
        fastbp.MLP([4, 8, 6, 2], residual=True)
    assert fastbp.MLP([4, 8, 8, 2], residual=True).engine.residual == (False, True, False)


def test_one_row_batches_are_refused_under_batch_norm_and_change_nothing():
    model = _model("batch")
    params, running = model.params.copy(), model.engine.running.copy()
    opt = fastbp.SGD(model, lr=0.1)
    x, y = np.ones((1, 5)), np.array([1])
    for call in (lambda: model.loss_and_grad(x, y), lambda: opt.train_step(x, y)):
        with pytest.raises(ValueError, match="X: batch normalisation needs at least 2 rows"):
            call()
    with pytest.raises(ValueError, match="batch_size: batch normalisation"):
        fastbp.fit(model, np.ones((9, 5)), np.zeros(9, dtype=np.int64), opt, epochs=1,
                   batch_size=4)
    assert model.params.tobytes() == params.tobytes()
    assert model.engine.running.tobytes() == running.tobytes() and model.training_passes == 0
    np.testing.assert_array_equal(model.predict(x), model.predict(x))   # inference is fine


def test_a_refused_step_leaves_the_running_statistics_and_the_counter():
    model = _model("batch")
    opt = fastbp.SGD(model, lr=0.1)
    x = np.ones((4, 5))
    x[0] = 1e308   # overflows the first product: a NaN loss
    before = model.engine.running.tobytes()
    with pytest.raises(FloatingPointError):
        opt.train_step(x, np.array([0, 1, 2, 0]))
    assert model.engine.running.tobytes() == before and model.training_passes == 0


# -- everywhere a model goes -------------------------------------------------------------------


def _data(n=120, seed=9):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def test_save_and_load_keep_everything(tmp_path):
    X, y = _data()
    model = _model("mixed")
    opt = fastbp.Adam(model, lr=1e-2)
    fastbp.fit(model, X, y, opt, epochs=2, batch_size=16, seed=0)
    path = fastbp.save(model, tmp_path / "m.npz", optimizer=opt)
    loaded, loaded_opt = fastbp.load_checkpoint(path)
    assert loaded.norm == model.norm and loaded.dropout == model.dropout and loaded.residual
    assert loaded.engine.running.tobytes() == model.engine.running.tobytes()
    assert loaded.training_passes == model.training_passes == 16
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # Training on goes on with the masks it would have drawn.
    assert loaded.loss_and_grad(X[:8], y[:8]) == model.loss_and_grad(X[:8], y[:8])
    np.testing.assert_array_equal(loaded.grads, model.grads)


def test_plain_models_still_save_as_version_3(tmp_path):
    path = fastbp.save(fastbp.MLP([4, 3, 2]), tmp_path / "plain.npz")
    assert int(np.load(path)["version"]) == 3
    path = fastbp.save(fastbp.MLP([4, 3, 2], dropout=0.1), tmp_path / "drop.npz")
    assert int(np.load(path)["version"]) == 4


@pytest.mark.parametrize("field, value, words", [
    ("norm", np.array(["layer", "group"]), "unknown normalisation 'group'"),
    ("running", np.array([np.nan] * 12), "'running' must be finite"),
    ("running", np.zeros(4), "'running' holds 4 values"),
    ("dropout", np.array([0.5, 1.5]), "dropout"),
    ("dropout_key", np.array([-1, 0]), "'dropout_key'"),
    ("residual", np.array(2), "'residual' must be 0 or 1"),
])
def test_tampered_files_are_refused(tmp_path, field, value, words):
    model = fastbp.MLP([4, 6, 6, 2], norm=["batch", "layer"], dropout=0.2, residual=True,
                       dtype=np.float64)
    path = fastbp.save(model, tmp_path / "m.npz")
    arrays = dict(np.load(path))
    arrays[field] = value
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(fastbp.io.ModelFileError, match=words):
        fastbp.load(tmp_path / "bad.npz")


def test_resume_continues_bitwise(tmp_path):
    X, y = _data()
    straight = _model("mixed")
    opt = fastbp.Adam(straight, lr=1e-2)
    fastbp.fit(straight, X, y, opt, epochs=4, batch_size=16, seed=0)
    first = _model("mixed")
    opt = fastbp.Adam(first, lr=1e-2)
    fastbp.fit(first, X, y, opt, epochs=2, batch_size=16, seed=0)
    resumed, opt = fastbp.load_checkpoint(fastbp.save(first, tmp_path / "c.npz", optimizer=opt))
    fastbp.fit(resumed, X, y, opt, epochs=2, batch_size=16, seed=0, initial_epoch=2)
    assert resumed.params.tobytes() == straight.params.tobytes()
    assert resumed.engine.running.tobytes() == straight.engine.running.tobytes()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fit_steps_in_python_equal_the_compiled_epoch(accumulate):
    """A gradient hook sends fit through Python step by step; the masks are keyed by the
    same global rows, so the result is the compiled epoch's, bit for bit."""
    X, y = _data()
    results = []
    for hook in (None, lambda model: True):
        model = _model("mixed")
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.05, momentum=0.9), epochs=2,
                   batch_size=10, seed=1, accumulate=accumulate, grad_hook=hook)
        results.append((model.params.tobytes(), model.engine.running.tobytes(),
                        model.training_passes))
    assert results[0] == results[1]


def test_early_stopping_restores_the_running_statistics_of_the_best_epoch():
    X, y = _data(200)
    model = fastbp.MLP([5, 16, 3], norm="batch", dtype=np.float64, seed=0)
    seen = []

    class Watch:
        def on_epoch_end(self, epoch, history, model):
            seen.append((model.params.copy(), model.engine.running.copy()))

    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.5), epochs=8, batch_size=20,
                         seed=0, validation_data=(X[:50], y[:50]), early_stopping=1,
                         callbacks=[Watch()])
    params, running = seen[history.best_epoch]
    np.testing.assert_array_equal(model.params, params)
    np.testing.assert_array_equal(model.engine.running, running)


def test_pickling_keeps_the_training_state():
    import pickle
    model = _model("mixed")
    X, y = _data(20)
    model.loss_and_grad(X, y)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.engine.running.tobytes() == model.engine.running.tobytes()
    assert copy.training_passes == 1 and copy.norm == model.norm
    assert copy.loss_and_grad(X, y) == model.loss_and_grad(X, y)


# -- the deep-net demonstration ----------------------------------------------------------------


def test_a_deep_sigmoid_net_trains_only_with_residuals_and_layer_norm():
    """24 hidden sigmoid layers on the shipped digits: plainly, the gradients of the first
    layers vanish (the monitor says so) and the net stays at chance; with residual connections
    and layer normalisation the same depth reaches 96% test accuracy or more."""
    data = fastbp.data.load("digits")
    accuracy, alerts = {}, {}
    for name, extras in (("plain", {}), ("residual+layer", dict(residual=True, norm="layer"))):
        model = fastbp.MLP([64] + [64] * 24 + [10], activation="sigmoid", seed=0, **extras)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fastbp.fit(model, data.X_train, data.y_train, fastbp.Adam(model, lr=1e-3),
                       epochs=30, batch_size=32, seed=0, callbacks=[GradientMonitor()])
        alerts[name] = [w for w in caught if issubclass(w.category, GradientHealthWarning)
                        and "vanishing" in str(w.message)]
        accuracy[name] = (model.predict(data.X_test) == data.y_test).mean()
    assert accuracy["plain"] < 0.2 and alerts["plain"]
    assert accuracy["residual+layer"] >= 0.96 and not alerts["residual+layer"]
