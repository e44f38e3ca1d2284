"""Sample weights (scikit-learn's definition): the objective sum_i w_i loss_i / sum_i w_i plus
(l2 / (2 sum_i w_i)) sum ||W||^2, in loss_and_grad, loss_value, train_step, gradcheck and fit.
Against repeated and removed rows, finite differences and the naive reference (PyTorch: see
test_torch.py); fit's compiled chunks against its per-step path; the steps whose rows all
weigh 0; bad weights. (The unweighted results are unchanged by the feature: checked bitwise
when it was written; the allocation probes: test_design.py.)"""
import math

import numpy as np
import pytest

import fastbp
import naive
from helpers import layer_errors, make_targets, off_kink_batch, reference_for

LOSSES = fastbp.model.LOSSES


def make_model(loss, dtype=np.float64, l2=0.3, seed=0, sizes=(5, 8, 3)):
    """A sigmoid output for the losses whose gradient goes through the output activation's."""
    fused = fastbp.kernels.LOSS_KINDS[loss].fused is not None
    return fastbp.MLP(list(sizes), activation="tanh", loss=loss, dtype=dtype, seed=seed, l2=l2,
                      output_activation="identity" if fused else "sigmoid")


def batch(loss, n, rng, n_in=5, n_out=3):
    return rng.normal(size=(n, n_in)), make_targets(loss, n, n_out, rng)


@pytest.mark.parametrize("loss", LOSSES)
def test_integer_weights_equal_repeated_rows(loss, rng):
    """A weight of k is the row k times (0: not at all): loss, every gradient, loss_value and
    a training step, to 1e-12 in float64, with the L2 penalty over the repeated batch's rows."""
    X, y = batch(loss, 12, rng)
    w = rng.integers(0, 4, size=12)
    w[0] = 3
    repeated = np.repeat(np.arange(12), w)
    model = make_model(loss)
    loss_w = model.loss_and_grad(X, y, sample_weight=w)
    grads_w = model.grads.copy()
    loss_r = model.loss_and_grad(X[repeated], y[repeated])
    assert loss_w == pytest.approx(loss_r, rel=1e-12, abs=0)
    assert max(layer_errors(model, grads_w).values()) < 1e-12
    assert model.loss_value(X, y, sample_weight=w) == pytest.approx(loss_r, rel=1e-12, abs=0)

    a, b = make_model(loss), make_model(loss)
    opt_a, opt_b = fastbp.Adam(a, lr=0.01), fastbp.Adam(b, lr=0.01)
    for _ in range(3):
        assert opt_a.train_step(X, y, sample_weight=w) == pytest.approx(
            opt_b.train_step(X[repeated], y[repeated]), rel=1e-12, abs=0)
    assert naive.normwise_error(a.params, b.params) < 1e-12


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_weights_equal_removed_rows(loss, rng):
    X, y = batch(loss, 15, rng)
    w = rng.random(15) + 0.5
    w[[0, 4, 5, 14]] = 0
    kept = w > 0
    model = make_model(loss)
    loss_w = model.loss_and_grad(X, y, sample_weight=w)
    grads_w = model.grads.copy()
    loss_k = model.loss_and_grad(X[kept], y[kept], sample_weight=w[kept])
    assert loss_w == pytest.approx(loss_k, rel=1e-13, abs=0)
    assert max(layer_errors(model, grads_w).values()) < 1e-13


def test_a_zero_weight_row_whose_loss_overflows_adds_no_nan():
    """A row of weight 0 counts as absent, even when its loss is Inf (float32 MSE of a huge
    target): the weighted loss and the gradients stay those of the other rows."""
    model = make_model("mse", dtype=np.float32, l2=0.0)
    X = np.ones((3, 5), dtype=np.float32)
    y = np.zeros((3, 3), dtype=np.float32)
    y[1] = 3e38   # (pred - y)^2 overflows float32
    w = np.array([1.0, 0.0, 2.0])
    loss = model.loss_and_grad(X, y, sample_weight=w)
    grads = model.grads.copy()
    assert math.isfinite(loss) and np.isfinite(grads).all()
    assert loss == pytest.approx(model.loss_and_grad(X[[0, 2]], y[[0, 2]], w[[0, 2]]),
                                 rel=1e-6)
    assert np.allclose(grads, model.grads, rtol=1e-5, atol=1e-7)


def test_unit_weights_and_none_are_the_unweighted_objective(rng):
    X, y = batch("softmax_cross_entropy", 20, rng)
    model = make_model("softmax_cross_entropy")
    plain = model.loss_and_grad(X, y)
    grads = model.grads.copy()
    assert model.loss_and_grad(X, y, sample_weight=None) == plain
    assert np.array_equal(model.grads, grads)
    assert model.loss_and_grad(X, y, sample_weight=np.ones(20)) == pytest.approx(plain,
                                                                                 rel=1e-15)
    assert naive.normwise_error(model.grads, grads) < 1e-15
    # weights scaled by a constant give the same mean loss; the L2 penalty, over their sum,
    # is 7.5 times smaller (scikit-learn's definition)
    penalty = naive.l2_penalty(naive.unflatten(model.params, model.sizes)[0], model.l2, 20)[0]
    assert model.loss_and_grad(X, y, sample_weight=np.full(20, 7.5)) == pytest.approx(
        plain - penalty + penalty / 7.5, rel=1e-14)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("l2", [0.0, 0.8])
def test_weighted_loss_and_gradients_match_the_naive_reference(loss, l2, rng):
    model = make_model(loss, l2=l2, sizes=(5, 9, 7, 3))
    model.params[...] = rng.normal(scale=0.7, size=model.n_params)
    X, y = batch(loss, 23, rng)
    w = rng.random(23) * 3
    w[3] = 0
    model.grads[...] = np.nan
    got = model.loss_and_grad(X, y, sample_weight=w)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params, X, y, w)
    assert got == pytest.approx(ref_loss, rel=1e-10)
    errors = layer_errors(model, ref_grads)
    assert max(errors.values()) < 1e-10, errors
    assert model.loss_value(X, y, w) == pytest.approx(ref_loss, rel=1e-10)
    assert reference_for(model).loss_value(model.params, X, y, w) == pytest.approx(ref_loss,
                                                                                  rel=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_weighted_gradients_match_finite_differences(loss, rng):
    """gradcheck with sample weights, and, independently, the reference's central differences
    of its weighted objective against fastbp's gradient."""
    model = fastbp.MLP([4, 6, 3], activation="relu", loss=loss, dtype=np.float64, seed=3,
                       l2=0.5)
    X, y = off_kink_batch(model, 9, rng)
    w = rng.random(9) * 2
    w[2] = 0
    assert fastbp.gradcheck(model, X, y, sample_weight=w) < 1e-7
    model.loss_and_grad(X, y, sample_weight=w)
    ref = reference_for(model)
    params = model.params.astype(np.float64)
    numeric = naive.numeric_gradient(lambda: ref.loss_value(params, X, y, w), params, 1e-3)
    assert naive.max_relative_error(model.grads, numeric, 1e-7) < 1e-7
    # and they are not those of the unweighted objective
    assert fastbp.gradcheck(model, X, y) < 1e-7
    model.loss_and_grad(X, y)
    assert naive.max_relative_error(model.grads, numeric, 1e-7) > 1e-3


def test_loss_value_of_many_chunks_is_the_weighted_mean(rng, monkeypatch):
    """loss_value runs in chunks of INFERENCE_CHUNK rows, each weighted by its own weight
    (a chunk that weighs 0 skipped)."""
    monkeypatch.setattr(fastbp.engine, "INFERENCE_CHUNK", 8)
    X, y = batch("mse", 30, rng)
    w = rng.random(30)
    w[8:16] = 0
    model = make_model("mse")
    expected = reference_for(model).loss_value(model.params, X, y, w)
    assert model.loss_value(X, y, sample_weight=w) == pytest.approx(expected, rel=1e-12)


def test_weights_of_another_dtype_are_converted(rng):
    X, y = batch("softmax_cross_entropy", 10, rng)
    model = make_model("softmax_cross_entropy")
    w = rng.integers(0, 5, size=10).astype(np.int16)
    w[0] = 1
    expected = model.loss_and_grad(X, y, sample_weight=w.astype(np.float64))
    read_only = w.astype(np.float64)
    read_only.flags.writeable = False
    for same in (w, w.astype(np.float32), list(w), read_only, np.repeat(w, 2)[::2]):
        assert model.loss_and_grad(X, y, sample_weight=same) == expected


# -- fit ---------------------------------------------------------------------------------------


class StepRecorder:
    """A step callback (so fit runs one compiled call per step)."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, epoch, step, loss, grad_norm, model):
        self.steps.append((loss, grad_norm))


def _fit(loss, X, y, w, callbacks=(), optimizer="adam", **options):
    model = make_model(loss, seed=4, l2=0.2)
    opt = (fastbp.Adam(model, lr=0.01) if optimizer == "adam"
           else fastbp.SGD(model, lr=0.05, momentum=0.9))
    history = fastbp.fit(model, X, y, opt, epochs=3, batch_size=8, seed=1, sample_weight=w,
                         callbacks=callbacks, **options)
    return model, opt, history


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("accumulate", [1, 3])
def test_fit_with_weights_chunked_equals_per_step(loss, accumulate, rng):
    """The compiled chunks and the per-step path (a step callback) give bitwise the same
    parameters and gradients, with some batches (and some updates) that weigh 0, and the
    same history."""
    X, y = batch(loss, 70, rng)
    w = rng.random(70) * 2
    w[rng.random(70) < 0.3] = 0
    w[:24] = 0    # no shuffle: the first 3 batches weigh 0
    results = []
    for callbacks in ((), (StepRecorder(),)):
        model, opt, history = _fit(loss, X, y, w, callbacks, shuffle=False,
                                   accumulate=accumulate)
        results.append((model.params.copy(), model.grads.copy(), history, opt.steps))
    (p0, g0, h0, s0), (p1, g1, h1, s1) = results
    assert np.array_equal(p0, p1) and np.array_equal(g0, g1)
    steps_per_epoch = -(-70 // (8 * accumulate))
    skipped = 3 if accumulate == 1 else 1   # the first 24 rows: 3 batches, or 1 update
    assert s0 == s1 == 3 * (steps_per_epoch - skipped)
    for key in ("loss", "grad_norm"):
        assert h0[key] == pytest.approx(h1[key], rel=1e-12)
    for a, b in zip(h0["layer_grad_norms"], h1["layer_grad_norms"]):
        assert a == pytest.approx(b, rel=1e-12)
    assert all(math.isfinite(v) for v in h0["grad_norm"] + h0["loss"])


def test_fit_with_weights_shuffled_and_a_gradient_hook(rng):
    """Shuffled batches through the chunks, the per-step path and the gradient hook's path:
    the same parameters."""
    X, y = batch("softmax_cross_entropy", 50, rng)
    w = rng.random(50)
    w[::3] = 0
    runs = [_fit("softmax_cross_entropy", X, y, w)[0].params,
            _fit("softmax_cross_entropy", X, y, w, (StepRecorder(),))[0].params,
            _fit("softmax_cross_entropy", X, y, w, grad_hook=lambda m: None)[0].params]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_a_step_that_weighs_zero_is_skipped(optimizer, rng):
    """A batch whose rows all weigh 0 changes nothing: training is bitwise that without its
    rows (no update, the optimizer's state and step count untouched); step callbacks see loss
    0.0 and no norm; the history's loss counts it as 0 over its rows."""
    X, y = batch("mse", 40, rng)
    w = rng.random(40) + 0.1
    w[16:24] = 0    # the third batch of 8, without shuffling
    recorder = StepRecorder()
    model, opt, history = _fit("mse", X, y, w, (recorder,), optimizer=optimizer,
                               shuffle=False)
    chunked, _, chunked_history = _fit("mse", X, y, w, optimizer=optimizer, shuffle=False)
    kept = w > 0
    without, opt_without, history_without = _fit("mse", X[kept], y[kept], w[kept],
                                                 optimizer=optimizer, shuffle=False)
    assert np.array_equal(model.params, without.params)
    assert np.array_equal(chunked.params, without.params)
    assert np.array_equal(opt.state, opt_without.state) and opt.steps == opt_without.steps
    assert recorder.steps[2] == (0.0, None) and recorder.steps[7] == (0.0, None)
    assert all(norm is not None for _, norm in recorder.steps[:2] + recorder.steps[3:7])
    for h in (history, chunked_history):
        assert h["loss"] == pytest.approx([v * 32 / 40 for v in history_without["loss"]],
                                          rel=1e-12)
        assert h["grad_norm"] == pytest.approx(history_without["grad_norm"], rel=1e-12)


def test_fit_with_weights_and_accumulate_is_the_one_batch_objective(rng):
    """accumulate=k: each update is the weighted objective of all its rows (to rounding), as
    one batch of them would have it: SGD over the whole set in one update against the
    reference."""
    X, y = batch("binary_cross_entropy", 37, rng)
    w = rng.random(37) * 3
    w[:9] = 0
    model = make_model("binary_cross_entropy", l2=1.3)
    start = model.params.copy()
    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=8,
                         accumulate=5, shuffle=False, sample_weight=w)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(start, X, y, w)
    assert history["loss"][0] == pytest.approx(ref_loss, rel=1e-12)
    assert naive.normwise_error(model.params, start - 0.1 * ref_grads) < 1e-13


def test_validation_fraction_keeps_the_training_rows_weights(rng):
    """With validation_fraction, the training rows keep their weights (the held-out rows'
    are dropped): one full-batch SGD step is the reference's weighted step on those rows."""
    from fastbp.data import split_indices
    X, y = batch("softmax_cross_entropy", 40, rng)
    w = rng.random(40) * 2
    model = make_model("softmax_cross_entropy", l2=0.0)
    start = model.params.copy()
    fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=40, seed=3,
               shuffle=False, validation_fraction=0.25, sample_weight=w)
    keep, _ = split_indices(40, 0.25, fastbp.training._split_rng(3), y)
    _, ref_grads = reference_for(model).loss_and_grad(start, X[keep], y[keep], w[keep])
    assert naive.normwise_error(model.params, start - 0.1 * ref_grads) < 1e-13


# -- bad weights --------------------------------------------------------------------------------


BAD_WEIGHTS = [
    pytest.param(np.ones((8, 1)), ValueError, "1-D", id="2-D"),
    pytest.param(np.ones(7), ValueError, "8 weights", id="too-few"),
    pytest.param(np.ones(9), ValueError, "8 weights", id="too-many"),
    pytest.param(np.array(["a"] * 8), TypeError, "real numbers", id="strings"),
    pytest.param(np.ones(8, dtype=complex), TypeError, "real numbers", id="complex"),
    pytest.param(np.array([1.0] * 7 + [np.nan]), ValueError, "NaN or Inf", id="nan"),
    pytest.param(np.array([1.0] * 7 + [np.inf]), ValueError, "NaN or Inf", id="inf"),
    pytest.param(np.array([1.0] * 7 + [-0.5]), ValueError, ">= 0", id="negative"),
    pytest.param(np.zeros(8), ValueError, "every weight is 0", id="all-zero"),
    pytest.param(np.full(8, 1e308), ValueError, "sum", id="sum-overflows"),
    pytest.param([[1, 2], [3]], TypeError, "cannot be read", id="ragged"),
    pytest.param(3.0, ValueError, "1-D", id="scalar"),
]


@pytest.mark.parametrize("weights, error, message", BAD_WEIGHTS)
@pytest.mark.parametrize("call", ["loss_and_grad", "loss_value", "train_step", "fit",
                                  "gradcheck"])
def test_bad_weights_are_refused_and_change_nothing(weights, error, message, call, rng):
    X, y = batch("softmax_cross_entropy", 8, rng)
    model = make_model("softmax_cross_entropy")
    opt = fastbp.Adam(model)
    model.loss_and_grad(X, y)
    before = (model.params.copy(), model.grads.copy(), opt.state.copy(), opt.steps)
    calls = {"loss_and_grad": lambda: model.loss_and_grad(X, y, sample_weight=weights),
             "loss_value": lambda: model.loss_value(X, y, sample_weight=weights),
             "train_step": lambda: opt.train_step(X, y, sample_weight=weights),
             "fit": lambda: fastbp.fit(model, X, y, opt, epochs=1, batch_size=4,
                                       sample_weight=weights),
             "gradcheck": lambda: fastbp.gradcheck(model, X, y, sample_weight=weights)}
    with pytest.raises(error, match=f"sample_weight: .*{message}"):
        calls[call]()
    assert np.array_equal(model.params, before[0]) and np.array_equal(model.grads, before[1])
    assert np.array_equal(opt.state, before[2]) and opt.steps == before[3]


def test_fit_refuses_training_rows_that_all_weigh_zero(rng):
    """validation_fraction may leave only rows of weight 0 for training: refused."""
    from fastbp.data import split_indices
    X, y = batch("mse", 10, rng)
    w = np.zeros(10)
    w[0] = 1.0
    model = make_model("mse")
    before = model.params.copy()
    # a seed whose split holds out row 0, the one row of weight > 0
    seed = next(seed for seed in range(1000) if 0 not in
                split_indices(10, 0.5, fastbp.training._split_rng(seed), None)[0])
    with pytest.raises(ValueError, match="sample_weight: .*weigh 0"):
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=4, seed=seed,
                   validation_fraction=0.5, sample_weight=w)
    assert np.array_equal(model.params, before)


def test_the_compiled_step_refuses_a_batch_that_weighs_zero(rng):
    """Below the checks (the compiled training step, as a user's @njit code calls it), a batch
    whose weights sum to 0 has the loss 0/0 = NaN, and the step is refused: no NaN reaches the
    parameters."""
    X, y = batch("softmax_cross_entropy", 6, rng)
    model = make_model("softmax_cross_entropy")
    opt = fastbp.SGD(model, lr=0.1)
    before = model.params.copy()
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        fastbp.optim.train_step(model, opt.update_spec(), X, y, np.zeros(6))
    assert np.array_equal(model.params, before) and opt.steps == 0
