"""Per-layer gradient norms and gradient checkpointing (memory_report, checkpoint_every)."""
import tracemalloc

import numpy as np
import pytest

import fastbp
import helpers
from fastbp import kernels

DEEP = [12, 16, 16, 16, 16, 16, 16, 16, 5]          # 8 layers
MIXED_SIZES = [7, 9, 8, 6, 5]
MIXED = ["gelu", "leaky_relu", "tanh"]
# gelu, whose pre-activation the network keeps too, in kept and in recomputed layers
DEEP_GELU = ["gelu", "leaky_relu", "gelu", "gelu", "tanh", "relu", "gelu"]


def _data(rng, n, sizes, loss):
    X = rng.normal(size=(n, sizes[0]))
    y = rng.integers(0, sizes[-1], size=n) if loss == "softmax_cross_entropy" \
        else rng.normal(size=(n, sizes[-1]))
    return X, y


def _layer_norms(model):
    return np.array([np.sqrt(np.sum(w.astype(np.float64) ** 2) + np.sum(b.astype(np.float64) ** 2))
                     for w, b in zip(model.weight_grads, model.bias_grads)])


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1, clip_norm=0.5), id="sgd"),
    pytest.param(lambda m: fastbp.Adam(m, clip_norm=0.5), id="adam"),
    pytest.param(lambda m: fastbp.RMSprop(m, momentum=0.5, clip_norm=0.5), id="rmsprop"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_norms_after_loss_and_grad_and_after_a_step(dtype, make_optimizer, rng):
    """Every kind of update's step (kernels.update.guarded_step) leaves the per-layer norms
    of the gradient it used."""
    model = fastbp.MLP([6, 9, 7, 3], activation="tanh", dtype=dtype, seed=0)
    opt = make_optimizer(model)
    X, y = _data(rng, 20, model.sizes, model.loss)
    model.loss_and_grad(X, y)
    expected = _layer_norms(model)
    assert model.grad_norms() == pytest.approx(expected, rel=1e-6)
    norm = opt.step()                            # the clipping pass fills the per-layer sums
    assert model.grad_norms() == pytest.approx(expected, rel=1e-6)
    assert norm == pytest.approx(np.sqrt(np.sum(expected ** 2)), rel=1e-6)
    opt.train_step(X, y)                         # fused path: norms of the new gradients
    assert model.grad_norms() == pytest.approx(_layer_norms(model), rel=1e-6)


def test_grad_norms_follow_new_gradients(rng):
    model = fastbp.MLP([4, 5, 2], activation="relu", dtype=np.float64, seed=1)
    opt = fastbp.SGD(model, lr=0.1)
    X, y = _data(rng, 10, model.sizes, model.loss)
    opt.train_step(X, y)
    model.grad_norms()
    model.loss_and_grad(2 * X, y)                # new gradients, no step: norms must follow
    assert model.grad_norms() == pytest.approx(_layer_norms(model), rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 20])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_checkpointed_gradients_are_bitwise_the_plain_ones(k, loss, rng):
    X, y = _data(rng, 37, DEEP, loss)
    out = "identity" if loss == "softmax_cross_entropy" else "tanh"
    plain = fastbp.MLP(DEEP, activation=["relu", "tanh", "sigmoid", "relu", "tanh", "relu",
                                         "identity"], output_activation=out, loss=loss,
                       dtype=np.float64, seed=3)
    ckpt = fastbp.MLP(DEEP, activation=["relu", "tanh", "sigmoid", "relu", "tanh", "relu",
                                        "identity"], output_activation=out, loss=loss,
                      dtype=np.float64, seed=3, checkpoint_every=k)
    assert plain.loss_and_grad(X, y) == ckpt.loss_and_grad(X, y)
    assert np.array_equal(plain.grads, ckpt.grads)
    # training steps, including smaller batches that use views of the buffers
    for opt_plain, opt_ckpt in [(fastbp.SGD(plain, lr=0.05, clip_norm=1.0),
                                 fastbp.SGD(ckpt, lr=0.05, clip_norm=1.0))]:
        for n in (37, 5, 20):
            assert opt_plain.train_step(X[:n], y[:n]) == opt_ckpt.train_step(X[:n], y[:n])
    assert np.array_equal(plain.params, ckpt.params)
    assert np.array_equal(plain.forward(X), ckpt.forward(X))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("sizes, hidden", [(MIXED_SIZES, MIXED), (DEEP, DEEP_GELU)],
                         ids=["mixed", "deep"])
@pytest.mark.parametrize("loss, out", [("softmax_cross_entropy", "identity"), ("mse", "gelu")])
def test_checkpointed_gradients_with_gelu_are_bitwise_the_plain_ones(k, sizes, hidden, loss,
                                                                     out, rng):
    """gelu layers keep their pre-activation beside their output; with checkpointing both are
    recomputed in the segments, and the gradients must not change by a bit."""
    X, y = _data(rng, 29, sizes, loss)
    plain, ckpt = (fastbp.MLP(sizes, activation=hidden, output_activation=out, loss=loss,
                              dtype=np.float64, seed=4, checkpoint_every=every)
                   for every in (1, k))
    for model in (plain, ckpt):
        model.params[...] = np.random.default_rng(0).normal(scale=0.5, size=model.n_params)
    assert plain.loss_and_grad(X, y) == ckpt.loss_and_grad(X, y)
    assert np.array_equal(plain.grads, ckpt.grads)
    assert np.abs(plain.grads).max() > 1e-3
    opt_plain, opt_ckpt = (fastbp.SGD(m, lr=0.05, clip_norm=1.0) for m in (plain, ckpt))
    for n in (29, 4, 17):           # smaller batches use views of the buffers
        assert opt_plain.train_step(X[:n], y[:n]) == opt_ckpt.train_step(X[:n], y[:n])
        assert np.array_equal(plain.grads, ckpt.grads)
    assert np.array_equal(plain.params, ckpt.params)
    assert np.array_equal(plain.forward(X), ckpt.forward(X))


def test_checkpointing_recomputes_split_products_bitwise(rng):
    """The 1024-input first layer splits its product over the inputs at a batch of 8 (see
    kernels.splits_input); its recomputed output must be bitwise the first one."""
    sizes = [1024, 64, 64, 64, 3]
    X, y = _data(rng, 8, sizes, "softmax_cross_entropy")
    plain, ckpt = (fastbp.MLP(sizes, dtype=np.float32, seed=2, checkpoint_every=k)
                   for k in (1, 2))
    for _ in range(2):
        assert plain.loss_and_grad(X, y) == ckpt.loss_and_grad(X, y)
        assert np.array_equal(plain.grads, ckpt.grads)
        for model in (plain, ckpt):
            fastbp.SGD(model, lr=0.1).step()


def test_checkpointed_fit_matches_plain_fit(rng):
    X, y = _data(rng, 64, DEEP, "softmax_cross_entropy")
    models = [fastbp.MLP(DEEP, dtype=np.float32, seed=0, checkpoint_every=k) for k in (1, 3)]
    for model in models:
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.05, clip_norm=1.0), epochs=2,
                   batch_size=16, seed=0)
    assert np.array_equal(models[0].params, models[1].params)


def _keeps_input(name):
    return kernels.ACTIVATIONS[kernels.CODES[name]].uses_input


def _formula_bytes(sizes, batch, k, itemsize, activations=None):
    """Activation bytes: kept outputs (every k-th layer and the last), the widest run of layers
    between two kept ones, two delta halves of the widest layer, and float64 per-sample losses.
    A layer whose activation's gradient reads its input (gelu) counts twice, kept or in a run:
    its pre-activation lies beside its output. activations: one name per layer (None: relu)."""
    widths = sizes[1:]
    n = len(widths)
    names = activations or ["relu"] * n
    blocks = [w * (2 if _keeps_input(name) else 1) for w, name in zip(widths, names)]
    kept = [b for layer, b in enumerate(blocks) if (layer + 1) % k == 0 or layer == n - 1]
    runs, run = [0], 0
    for layer, b in enumerate(blocks):
        run = 0 if (layer + 1) % k == 0 or layer == n - 1 else run + b
        runs.append(run)
    return batch * (sum(kept) + max(runs) + 2 * max(widths)) * itemsize + 8 * batch


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memory_report_matches_the_formula(k, dtype, rng):
    sizes = [10, 64, 64, 32, 64, 64, 48, 64, 3]
    model = fastbp.MLP(sizes, dtype=dtype, seed=0, checkpoint_every=k)
    X, y = _data(rng, 50, sizes, model.loss)
    model.loss_and_grad(X, y)
    report = model.memory_report()
    itemsize = np.dtype(dtype).itemsize
    assert report["capacity"] == 50
    assert report["activations"] == _formula_bytes(sizes, 50, k, itemsize)
    assert report["params"] == report["grads"] == model.n_params * itemsize
    assert report["total"] == sum(v for key, v in report.items()
                                  if key not in ("total", "capacity"))


GELU_SIZES = [10, 64, 64, 32, 64, 64, 48, 64, 3]
GELU_CASES = {
    "all-gelu": (["gelu"] * 7, "identity", "softmax_cross_entropy"),
    "mixed": (["gelu", "relu", "relu", "gelu", "leaky_relu", "gelu", "tanh"], "identity",
              "softmax_cross_entropy"),
    "gelu-output": (["relu", "gelu", "relu", "relu", "gelu", "relu", "relu"], "gelu", "mse"),
}


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("case", list(GELU_CASES))
def test_memory_report_counts_gelu_pre_activations(case, k, rng):
    """One more capacity x width buffer per gelu layer: always for kept layers, and for the
    others inside the segment they are recomputed in (the widest segment counts)."""
    hidden, out, loss = GELU_CASES[case]
    model = fastbp.MLP(GELU_SIZES, activation=hidden, output_activation=out, loss=loss,
                       dtype=np.float32, seed=0, checkpoint_every=k)
    X, y = _data(rng, 50, GELU_SIZES, loss)
    model.loss_and_grad(X, y)
    report = model.memory_report()
    names = hidden + [out]
    assert report["activations"] == _formula_bytes(GELU_SIZES, 50, k, 4, names)
    if k == 1:          # every layer kept: exactly one extra buffer per gelu layer
        extra = sum(w for w, name in zip(GELU_SIZES[1:], names) if name == "gelu")
        assert report["activations"] == _formula_bytes(GELU_SIZES, 50, 1, 4) + 50 * 4 * extra
    assert report["total"] == sum(v for key, v in report.items()
                                  if key not in ("total", "capacity"))


def test_checkpointing_saves_activation_memory_on_a_deep_net(rng):
    sizes = [32] + [256] * 16 + [10]
    plain = fastbp.MLP(sizes, seed=0)
    ckpt = fastbp.MLP(sizes, seed=0, checkpoint_every=4)
    X, y = _data(rng, 128, sizes, plain.loss)
    plain.loss_and_grad(X, y)
    ckpt.loss_and_grad(X, y)
    # 16 hidden widths + output + 2 deltas against 4 kept + output + 3 in the widest segment
    # + 2 deltas: about half
    ratio = ckpt.memory_report()["activations"] / plain.memory_report()["activations"]
    assert ratio < 0.55


@pytest.mark.parametrize("k", [1, 4])
def test_memory_report_matches_tracemalloc(k, rng):
    """The buffers a larger batch makes the model allocate are what memory_report says."""
    sizes = [32] + [256] * 8 + [10]
    model = fastbp.MLP(sizes, seed=0, checkpoint_every=k)
    X, y = _data(rng, 512, sizes, model.loss)
    X = X.astype(np.float32)
    model.loss_and_grad(X[:1], y[:1])
    before = model.memory_report()["activations"]
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        model.loss_and_grad(X, y)                # grows the buffers to 512 rows
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = model.memory_report()["activations"] - before
    assert abs((end - start) - grown) <= 0.1 * grown


def test_bad_checkpoint_every():
    with pytest.raises(ValueError, match="checkpoint_every"):
        fastbp.MLP([3, 4, 2], checkpoint_every=0)
    with pytest.raises(TypeError, match="checkpoint_every"):
        fastbp.MLP([3, 4, 2], checkpoint_every=1.5)
