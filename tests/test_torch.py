"""The same computation in fastbp and in PyTorch float64 autograd (micrograd/tinygrad style):
loss and every gradient tensor, by name, within 1e-10, for every loss, with and without the L2
penalty, with and without sample weights; SGD with clipping against
torch.nn.utils.clip_grad_norm_ and a manual update. Skipped when torch is not installed."""
import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from helpers import make_targets

torch = pytest.importorskip("torch")


def torch_net(model):
    """Leaf tensors (float64, requires_grad) holding model's parameters, named W0, b0, ..."""
    tensors = {}
    for l, (w, b) in enumerate(zip(model.weights, model.biases)):
        tensors[f"W{l}"] = torch.tensor(w.astype(np.float64), requires_grad=True)
        tensors[f"b{l}"] = torch.tensor(b.astype(np.float64), requires_grad=True)
    return tensors


def torch_activation(name, z):
    """The activation as the table's torch field names it: a torch.nn.functional function and
    its keyword arguments (leaky_relu's negative_slope), or None for the identity."""
    mapping = kernels.ACTIVATIONS[kernels.CODES[name]].torch
    if mapping is None:
        return z
    function, kwargs = mapping
    return getattr(torch.nn.functional, function)(z, **kwargs)


def torch_row_losses(model, h, y):
    """Each row's loss, by the loss's PyTorch reference in kernels.LOSS_KINDS: scale times
    the sum over the row's outputs of torch.nn.functional's loss, reduction "none"."""
    kind = kernels.LOSS_KINDS[model.loss]
    name, kwargs, scale = kind.torch
    if kind.targets == "labels":
        target = torch.tensor(np.asarray(y), dtype=torch.long)
    else:
        target = torch.tensor(np.asarray(y, dtype=np.float64).reshape(h.shape))
    rows = getattr(torch.nn.functional, name)(h, target, reduction="none", **kwargs)
    if rows.ndim == 2:
        rows = rows.sum(dim=1)
    return scale * rows


def torch_loss(model, tensors, X, y):
    h = torch_output(model, tensors, X)
    n_rows = h.shape[0]
    # scikit-learn's alpha: l2 / (2 B) times the squared norms of the weights (not the biases)
    penalty = model.l2 / (2 * n_rows) * sum((tensors[f"W{l}"] ** 2).sum()
                                            for l in range(len(model.sizes) - 1))
    return torch_row_losses(model, h, y).mean() + penalty


def torch_output(model, tensors, X):
    h = torch.tensor(np.asarray(X, dtype=np.float64))
    names = model.activations + [model.output_activation]
    for l, name in enumerate(names):
        h = torch_activation(name, h @ tensors[f"W{l}"] + tensors[f"b{l}"])
    return h


def torch_weighted_loss(model, tensors, X, y, w):
    """scikit-learn's weighted objective from PyTorch's per-row losses (reduction="none"):
    sum_i w_i loss_i / sum_i w_i + l2 / (2 sum_i w_i) sum ||W||^2."""
    h = torch_output(model, tensors, X)
    w = torch.tensor(np.asarray(w, dtype=np.float64))
    rows = torch_row_losses(model, h, y)
    penalty = model.l2 / (2 * w.sum()) * sum((tensors[f"W{l}"] ** 2).sum()
                                             for l in range(len(model.sizes) - 1))
    return (w * rows).sum() / w.sum() + penalty


def fastbp_grads(model):
    grads = {}
    for l, (w, b) in enumerate(zip(model.weight_grads, model.bias_grads)):
        grads[f"W{l}"], grads[f"b{l}"] = w, b
    return grads


CASES = [
    pytest.param([6, 9, 4], "relu", "softmax_cross_entropy", "identity", id="relu-ce"),
    pytest.param([6, 9, 7, 4], "tanh", "softmax_cross_entropy", "identity", id="tanh2-ce"),
    pytest.param([6, 8, 8, 8, 5], "sigmoid", "softmax_cross_entropy", "identity", id="sigm3-ce"),
    pytest.param([6, 5, 5, 5, 5, 2], ["relu", "tanh", "sigmoid", "identity"],
                 "softmax_cross_entropy", "identity", id="mixed4-ce"),
    pytest.param([6, 3], "relu", "mse", "identity", id="linear-mse"),
    pytest.param([6, 9, 7, 3], "relu", "mse", "identity", id="relu2-mse"),
    pytest.param([6, 9, 3], "tanh", "mse", "sigmoid", id="tanh-mse-sigmoid"),
    pytest.param([6, 8, 8, 1], "sigmoid", "mse", "tanh", id="sigm2-mse-tanh"),
    pytest.param([6, 9, 7, 4], "leaky_relu", "softmax_cross_entropy", "identity",
                 id="leaky2-ce"),
    pytest.param([6, 9, 7, 4], "gelu", "softmax_cross_entropy", "identity", id="gelu2-ce"),
    pytest.param([7, 9, 8, 6, 5], ["gelu", "leaky_relu", "tanh"], "softmax_cross_entropy",
                 "identity", id="gelu-leaky-tanh-ce"),
    pytest.param([7, 9, 8, 6, 5], ["gelu", "leaky_relu", "tanh"], "mse", "gelu",
                 id="gelu-leaky-tanh-mse-gelu"),
    pytest.param([6, 8, 3], "tanh", "mse", "leaky_relu", id="tanh-mse-leaky"),
    pytest.param([6, 9, 7, 4], "tanh", "binary_cross_entropy", "identity", id="tanh2-bce"),
    pytest.param([6, 9, 1], "relu", "binary_cross_entropy", "identity", id="relu-bce1"),
    pytest.param([7, 9, 8, 5], ["gelu", "sigmoid"], "binary_cross_entropy", "identity",
                 id="gelu-sigm-bce"),
    pytest.param([6, 9, 7, 3], "relu", "huber", "identity", id="relu2-huber"),
    pytest.param([6, 9, 3], "tanh", "huber", "sigmoid", id="tanh-huber-sigmoid"),
    pytest.param([7, 9, 8, 6, 5], ["gelu", "leaky_relu", "tanh"], "huber", "gelu",
                 id="gelu-leaky-tanh-huber-gelu"),
]
# Each loss with the L2 penalty (scikit-learn's alpha)
L2_CASES = [pytest.param(sizes, act, loss, out_act, l2, id=f"{loss}-l2={l2}")
            for sizes, act, loss, out_act in (([6, 9, 7, 4], "tanh", "softmax_cross_entropy",
                                               "identity"),
                                              ([6, 9, 3], "tanh", "mse", "sigmoid"),
                                              ([6, 9, 7, 4], "relu", "binary_cross_entropy",
                                               "identity"),
                                              ([6, 9, 3], "tanh", "huber", "tanh"))
            for l2 in (1e-4, 0.8)]


def torch_loss_and_errors(model, X, y):
    """PyTorch float64's loss on the model's parameters, and the normwise error of each of
    fastbp's gradient tensors (model.grads, as loss_and_grad left them) against PyTorch's."""
    tensors = torch_net(model)
    expected = torch_loss(model, tensors, X, y)
    expected.backward()
    ours = fastbp_grads(model)
    errors = {name: naive.normwise_error(ours[name], t.grad.numpy())
              for name, t in tensors.items()}
    return expected.item(), errors


def test_every_loss_is_compared_with_torch():
    assert {case.values[2] for case in CASES} == set(fastbp.model.LOSSES)


@pytest.mark.parametrize("sizes, act, loss, out_act, l2",
                         [pytest.param(*case.values, 0.0, id=case.id) for case in CASES]
                         + L2_CASES)
def test_loss_and_gradients_match_torch_float64(sizes, act, loss, out_act, l2, rng):
    model = fastbp.MLP(sizes, activation=act, output_activation=out_act, loss=loss,
                       dtype=np.float64, seed=21, l2=l2)
    model.biases[0][...] = rng.normal(size=sizes[1])       # nonzero biases
    X = rng.normal(size=(23, sizes[0]))
    y = make_targets(loss, 23, sizes[-1], rng)
    model.grads[...] = np.nan
    got = model.loss_and_grad(X, y)
    expected, errors = torch_loss_and_errors(model, X, y)
    assert got == pytest.approx(expected, rel=1e-10)
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("sizes, act, loss, out_act, l2",
                         [pytest.param(*CASES[i].values, 0.0, id=CASES[i].id)
                          for i in (0, 5, 6, 11, 13, 14, 16, 17, 18)] + L2_CASES)
def test_weighted_loss_and_gradients_match_torch_float64(sizes, act, loss, out_act, l2, rng):
    """Sample weights (some 0, one large): loss and every gradient tensor within 1e-10 of
    PyTorch float64 on the per-row losses, weighted."""
    model = fastbp.MLP(sizes, activation=act, output_activation=out_act, loss=loss,
                       dtype=np.float64, seed=21, l2=l2)
    model.biases[0][...] = rng.normal(size=sizes[1])
    X = rng.normal(size=(23, sizes[0]))
    y = make_targets(loss, 23, sizes[-1], rng)
    w = rng.random(23) * 2
    w[[1, 7]] = 0
    w[4] = 30.0
    model.grads[...] = np.nan
    got = model.loss_and_grad(X, y, sample_weight=w)
    tensors = torch_net(model)
    expected = torch_weighted_loss(model, tensors, X, y, w)
    expected.backward()
    ours = fastbp_grads(model)
    errors = {name: naive.normwise_error(ours[name], t.grad.numpy())
              for name, t in tensors.items()}
    assert got == pytest.approx(expected.item(), rel=1e-10)
    assert max(errors.values()) < 1e-10, errors
    assert model.loss_value(X, y, sample_weight=w) == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("sizes, act, loss, out_act",
                         CASES[:3] + CASES[5:7] + CASES[10:12] + CASES[13:14] + CASES[17:19])
def test_float32_gradients_match_torch_float64(sizes, act, loss, out_act, rng):
    """float32 model against torch float64 on the same (float32) parameters and inputs;
    per-tensor normwise error (see test_model's float32 test for why normwise)."""
    model = fastbp.MLP(sizes, activation=act, output_activation=out_act, loss=loss,
                       dtype=np.float32, seed=21)
    X = rng.normal(size=(32, sizes[0])).astype(np.float32)
    y = make_targets(loss, 32, sizes[-1], rng)
    got = model.loss_and_grad(X, y)
    expected, errors = torch_loss_and_errors(model, X, y)
    assert got == pytest.approx(expected, rel=1e-5)
    assert max(errors.values()) < 1e-4, errors


def test_every_loss_reference_is_torchs_loss_module():
    """The registry's torch field of each loss, against the torch.nn module of that loss with
    reduction="sum", divided by the batch's rows (scaled as fastbp's mean loss is)."""
    modules = {"softmax_cross_entropy": (torch.nn.CrossEntropyLoss(reduction="sum"), 1.0),
               "mse": (torch.nn.MSELoss(reduction="sum"), 0.5),
               "binary_cross_entropy": (torch.nn.BCEWithLogitsLoss(reduction="sum"), 1.0),
               "huber": (torch.nn.HuberLoss(reduction="sum", delta=1.0), 1.0)}
    assert set(modules) == set(kernels.LOSS_KINDS)
    rng = np.random.default_rng(3)
    for name, (module, scale) in modules.items():
        model = fastbp.MLP([2, 4], loss=name, dtype=np.float64)
        h = torch.tensor(rng.normal(scale=3.0, size=(9, 4)))
        y = make_targets(name, 9, 4, rng)
        target = (torch.tensor(y) if kernels.LOSS_KINDS[name].targets == "labels"
                  else torch.tensor(np.asarray(y, dtype=np.float64)))
        expected = scale * module(h, target) / 9
        assert torch_row_losses(model, h, y).mean().item() == pytest.approx(expected.item(),
                                                                            rel=1e-14), name


def test_every_table_activation_maps_to_torch():
    """The table's torch field of each activation, against torch.nn's module of that name (with
    its defaults: leaky_relu slope 0.01, exact gelu), over both signs and 0."""
    z = torch.linspace(-6, 6, 241, dtype=torch.float64)
    modules = {"identity": torch.nn.Identity(), "relu": torch.nn.ReLU(),
               "sigmoid": torch.nn.Sigmoid(), "tanh": torch.nn.Tanh(),
               "leaky_relu": torch.nn.LeakyReLU(), "gelu": torch.nn.GELU()}
    for name in kernels.CODES:
        assert torch.equal(torch_activation(name, z), modules[name](z)), name


def torch_sgd_step(model, X, y, lr, clip_norm, tensors):
    for t in tensors.values():
        t.grad = None
    loss = torch_loss(model, tensors, X, y)
    loss.backward()
    params = list(tensors.values())
    if clip_norm is None:
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
    return loss.item(), norm.item()


def flat_torch(tensors):
    return np.concatenate([t.detach().numpy().ravel() for t in tensors.values()])


@pytest.mark.parametrize("clip", [None, "active", "inactive"])
def test_sgd_step_with_clipping_matches_torch(clip, rng):
    sizes = [6, 9, 7, 4]
    model = fastbp.MLP(sizes, activation="tanh", dtype=np.float64, seed=3)
    X = rng.normal(size=(20, 6))
    y = rng.integers(0, 4, size=20)
    model.loss_and_grad(X, y)
    norm0 = np.sqrt((model.grads ** 2).sum())
    clip_norm = {None: None, "active": 0.3 * norm0, "inactive": 3.0 * norm0}[clip]
    tensors = torch_net(model)
    opt = fastbp.SGD(model, lr=0.2, clip_norm=clip_norm)
    grads_before = model.grads.copy()

    norm = opt.step()
    assert np.array_equal(model.grads, grads_before), "step must not change the gradients"
    _, torch_norm = torch_sgd_step(model, X, y, 0.2, clip_norm, tensors)
    assert norm == pytest.approx(torch_norm, rel=1e-12)
    assert naive.normwise_error(model.params, flat_torch(tensors)) < 1e-12


def test_training_trajectory_matches_torch(rng):
    """Ten clipped SGD steps (fused train_step), clipping active in some of them."""
    sizes = [5, 8, 6, 3]
    model = fastbp.MLP(sizes, activation=["relu", "sigmoid"], dtype=np.float64, seed=9)
    tensors = torch_net(model)
    opt = fastbp.SGD(model, lr=0.5, clip_norm=0.4)
    clipped = 0
    for step in range(10):
        X = rng.normal(size=(16, 5))
        y = rng.integers(0, 3, size=16)
        loss = opt.train_step(X, y)
        torch_loss_value, torch_norm = torch_sgd_step(model, X, y, 0.5, 0.4, tensors)
        clipped += torch_norm > 0.4
        assert loss == pytest.approx(torch_loss_value, rel=1e-10)
        assert naive.normwise_error(model.params, flat_torch(tensors)) < 1e-10
    assert 0 < clipped < 10


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "softmax_cross_entropy"])
def test_training_trajectory_with_l2_matches_torch(loss, rng):
    """Ten SGD steps (fused train_step) of the penalised objective; batches of changing size,
    so that the penalty's 1 / B changes too."""
    sizes = [5, 8, 6, 3]
    model = fastbp.MLP(sizes, activation=["tanh", "sigmoid"], loss=loss, dtype=np.float64,
                       seed=9, l2=0.5)
    tensors = torch_net(model)
    opt = fastbp.SGD(model, lr=0.5)
    for step in range(10):
        n = 5 + 3 * step
        X = rng.normal(size=(n, 5))
        y = make_targets(loss, n, 3, rng)
        loss_value = opt.train_step(X, y)
        torch_loss_value, _ = torch_sgd_step(model, X, y, 0.5, None, tensors)
        assert loss_value == pytest.approx(torch_loss_value, rel=1e-10)
        assert naive.normwise_error(model.params, flat_torch(tensors)) < 1e-10


def test_train_step_equals_loss_and_grad_then_step(rng):
    """The fused step is the same computation as its two halves, bit for bit."""
    a = fastbp.MLP([5, 8, 3], activation="tanh", dtype=np.float64, seed=1)
    b = fastbp.MLP([5, 8, 3], activation="tanh", dtype=np.float64, seed=1)
    opt_a, opt_b = fastbp.SGD(a, 0.3, clip_norm=0.5), fastbp.SGD(b, 0.3, clip_norm=0.5)
    for _ in range(4):
        X = rng.normal(size=(12, 5))
        y = rng.integers(0, 3, size=12)
        loss_a = opt_a.train_step(X, y)
        loss_b = b.loss_and_grad(X, y)
        opt_b.step()
        assert loss_a == loss_b
        assert np.array_equal(a.params, b.params) and np.array_equal(a.grads, b.grads)
