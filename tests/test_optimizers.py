"""fastbp's optimizers (SGD, Adam, AdamW, RMSprop), learning-rate schedules, gradient
accumulation and checkpoints with optimizer state.

- PyTorch float64 parity: every option of torch.optim.SGD / Adam / AdamW / RMSprop, with and
  without clip_grad_norm_, through train_step, step() and fit (skipped without torch);
- a plain NumPy reference of each update rule, written from the formulas of fastbp.optim's
  docstrings, fed hand-made gradients (no torch needed);
- float32 against float64, bitwise reproducibility, fit(accumulate=k), resuming from
  save(optimizer=) / load_checkpoint and tampered checkpoints, memory_report, argument checks,
  refused (NaN / Inf / overflowing) steps, and the schedules against their formulas and
  scikit-learn's adaptive rule.
"""
import json
import math
import re

import numpy as np
import pytest

import fastbp
from fastbp import kernels, schedules
from helpers import blobs as blobs_of, max_threads

try:
    import torch
except ImportError:  # the torch tests are skipped, the others run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

SIZES = [5, 7, 6, 3]
ACTS = ["tanh", "relu"]


def model_of(dtype=np.float64, seed=3, sizes=SIZES, activation=ACTS, **kwargs):
    return fastbp.MLP(list(sizes), activation=activation, dtype=dtype, seed=seed, **kwargs)


def batches(rng, n_steps, rows=16, sizes=SIZES):
    """n_steps random minibatches (X float64, integer labels)."""
    return [(rng.normal(size=(rows, sizes[0])), rng.integers(0, sizes[-1], size=rows))
            for _ in range(n_steps)]


def blobs(n=96, n_features=5, n_classes=3, seed=0):
    """Well-conditioned blobs, closer together than helpers.blobs' default."""
    return blobs_of(n, n_features, n_classes, seed, spread=2.0)


def rel_error(actual, expected, floor=1e-3):
    """max |a - b| / max(|b|, floor), elementwise: relative, except for values below floor."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float((np.abs(a - b) / np.maximum(np.abs(b), floor)).max())


def rowwise_error(actual, expected):
    """Per row of a state array (n_buffers, P): max |a - b| / max |b|; the largest of them."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    worst = 0.0
    for row_a, row_b in zip(a, b):
        scale = max(float(np.abs(row_b).max()), 1e-300)
        worst = max(worst, float(np.abs(row_a - row_b).max()) / scale)
    return worst


def short(value):
    """A short repr for test ids (10**400 rather than its 401 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 20:
        return f"10**{len(str(abs(value))) - 1}"
    return repr(value)


def names_argument(message, name):
    """Whether an error message names the argument (as a word of its own)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) is not None


# -------------------------------------------------------------------------------------------
# PyTorch float64 parity
# -------------------------------------------------------------------------------------------

TORCH_ACTIVATIONS = {"tanh": lambda z: torch.tanh(z), "relu": lambda z: torch.relu(z),
                     "identity": lambda z: z}


class TorchNet:
    """The model as torch.nn.Linear layers (weight = W.T), float64, with the same values."""

    def __init__(self, model):
        self.acts = list(model.activations) + [model.output_activation]
        self.layers = []
        for w, b in zip(model.weights, model.biases):
            layer = torch.nn.Linear(w.shape[0], w.shape[1], dtype=torch.float64)
            with torch.no_grad():
                layer.weight.copy_(torch.tensor(np.asarray(w, dtype=np.float64).T))
                layer.bias.copy_(torch.tensor(np.asarray(b, dtype=np.float64)))
            self.layers.append(layer)
        # fastbp's layout order: W0, b0, W1, b1, ...
        self.params = [p for layer in self.layers for p in (layer.weight, layer.bias)]

    def loss(self, X, y):
        h = torch.tensor(np.asarray(X, dtype=np.float64))
        for layer, act in zip(self.layers, self.acts):
            h = TORCH_ACTIVATIONS[act](layer(h))
        return torch.nn.functional.cross_entropy(h, torch.tensor(np.asarray(y),
                                                                 dtype=torch.long))

    def flat(self, tensors=None):
        """Tensors in fastbp's flat layout (weights transposed back to (n_in, n_out))."""
        tensors = self.params if tensors is None else tensors
        parts = []
        for t in tensors:
            a = t.detach().numpy()
            parts.append((a.T if a.ndim == 2 else a).ravel())
        return np.concatenate(parts)


TORCH_STATE_ROWS = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"],
                    "adamw": ["exp_avg", "exp_avg_sq"], "rmsprop": ["square_avg"]}


class TorchTwin:
    """torch's training loop for one fastbp optimizer: zero_grad, cross_entropy, backward,
    clip_grad_norm_ (when clipping), step."""

    def __init__(self, model, cls, kwargs, clip_norm):
        self.net = TorchNet(model)
        torch_cls = {fastbp.SGD: torch.optim.SGD, fastbp.Adam: torch.optim.Adam,
                     fastbp.AdamW: torch.optim.AdamW, fastbp.RMSprop: torch.optim.RMSprop}[cls]
        extra = {} if cls is fastbp.SGD else {"foreach": False}
        self.opt = torch_cls(self.net.params, **kwargs, **extra)
        self.clip_norm = clip_norm
        self.name = cls.name
        self.amsgrad = kwargs.get("amsgrad", False)
        self.momentum = kwargs.get("momentum", 0)
        self.centered = kwargs.get("centered", False)

    def step(self, X, y):
        self.opt.zero_grad()
        loss = self.net.loss(X, y)
        loss.backward()
        if self.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.net.params, self.clip_norm)
        else:
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in self.net.params))
        self.opt.step()
        return loss.item(), norm.item()

    def params(self):
        return self.net.flat()

    def state(self):
        """torch's per-parameter buffers as fastbp's (n_buffers, P) state."""
        names = list(TORCH_STATE_ROWS[self.name])
        if self.name == "sgd" and self.opt.param_groups[0]["momentum"] == 0:
            names = []
        if self.amsgrad:
            names.append("max_exp_avg_sq")
        if self.name == "rmsprop":  # fastbp's order: then momentum_buffer, then grad_avg
            names += ["momentum_buffer"] * bool(self.momentum) + ["grad_avg"] * self.centered
        rows = [self.net.flat([self.opt.state[p][name] for p in self.net.params])
                for name in names]
        return np.array(rows) if rows else np.zeros((0, len(self.params())))


OPTIMIZER_CASES = [
    pytest.param(fastbp.SGD, dict(lr=0.1), id="sgd-plain"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
                 id="sgd-momentum-dampening-wd"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                 id="sgd-nesterov-wd"),
    pytest.param(fastbp.SGD, dict(lr=0.1, weight_decay=0.05), id="sgd-wd"),
    pytest.param(fastbp.Adam, dict(), id="adam-default"),
    pytest.param(fastbp.Adam, dict(lr=0.01, amsgrad=True), id="adam-amsgrad"),
    pytest.param(fastbp.Adam, dict(lr=0.01, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
                 id="adam-wd-betas-eps"),
    pytest.param(fastbp.Adam, dict(lr=0.01, weight_decay=0.05, amsgrad=True),
                 id="adam-wd-amsgrad"),
    pytest.param(fastbp.AdamW, dict(), id="adamw-default"),
    pytest.param(fastbp.AdamW, dict(lr=0.01, amsgrad=True), id="adamw-amsgrad"),
    pytest.param(fastbp.AdamW, dict(lr=0.01, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
                 id="adamw-wd-betas-eps"),
    pytest.param(fastbp.AdamW, dict(lr=0.01, weight_decay=0.05, amsgrad=True),
                 id="adamw-wd-amsgrad"),
    pytest.param(fastbp.RMSprop, dict(), id="rmsprop-default"),
    pytest.param(fastbp.RMSprop, dict(lr=0.005, momentum=0.9), id="rmsprop-momentum"),
    pytest.param(fastbp.RMSprop, dict(centered=True), id="rmsprop-centered"),
    pytest.param(fastbp.RMSprop, dict(lr=0.003, weight_decay=0.05), id="rmsprop-wd"),
    # alpha below 0.5: torch's lerp of the centered average takes its other form
    pytest.param(fastbp.RMSprop, dict(lr=0.003, alpha=0.3, centered=True),
                 id="rmsprop-centered-low-alpha"),
    pytest.param(fastbp.RMSprop, dict(lr=0.001, alpha=0.9, eps=1e-6, weight_decay=0.05,
                                      momentum=0.8, centered=True), id="rmsprop-all"),
]
# Gradient norms of this net on these batches are about 0.3 to 1.5: 0.5 clips most steps.
CLIP_CASES = [pytest.param(None, id="noclip"), pytest.param(0.5, id="clip")]


def assert_matches_torch(model, opt, twin, tol=1e-10):
    params_err = rel_error(model.params, twin.params())
    assert params_err < tol, params_err
    expected_state = twin.state()
    assert opt.state.shape == expected_state.shape
    if expected_state.size:
        state_err = rowwise_error(opt.state, expected_state)
        assert state_err < tol, state_err


@needs_torch
@pytest.mark.parametrize("clip_norm", CLIP_CASES)
@pytest.mark.parametrize("cls, kwargs", OPTIMIZER_CASES)
def test_train_step_matches_torch_float64(cls, kwargs, clip_norm, rng):
    """50 fused steps (opt.train_step) on random minibatches against torch's loop."""
    model = model_of()
    model.biases[0][...] = rng.normal(scale=0.1, size=SIZES[1])
    twin = TorchTwin(model, cls, kwargs, clip_norm)
    opt = cls(model, **kwargs, clip_norm=clip_norm)
    start = model.params.copy()
    clipped = 0
    for X, y in batches(rng, 50):
        loss = opt.train_step(X, y)
        torch_loss, torch_norm = twin.step(X, y)
        assert loss == pytest.approx(torch_loss, rel=1e-10)
        clipped += clip_norm is not None and torch_norm > clip_norm
    assert opt.steps == 50
    assert not np.allclose(model.params, start)  # it trained
    if clip_norm is not None:
        assert clipped >= 5, clipped  # the clipping was active
    assert_matches_torch(model, opt, twin)


@needs_torch
@pytest.mark.parametrize("cls, kwargs", [
    pytest.param(fastbp.Adam, dict(lr=0.01, weight_decay=0.05, amsgrad=True), id="adam"),
    pytest.param(fastbp.AdamW, dict(lr=0.01, betas=(0.8, 0.99)), id="adamw"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                 id="sgd-nesterov-wd"),
    pytest.param(fastbp.RMSprop, dict(lr=0.005, weight_decay=0.05, momentum=0.8,
                                      centered=True), id="rmsprop"),
])
@pytest.mark.parametrize("clip_norm", CLIP_CASES)
def test_loss_and_grad_then_step_matches_torch_float64(cls, kwargs, clip_norm, rng):
    """The two-stage Python path: model.loss_and_grad, then opt.step() (which returns the
    gradient norm before clipping and leaves model.grads as computed)."""
    model = model_of()
    twin = TorchTwin(model, cls, kwargs, clip_norm)
    opt = cls(model, **kwargs, clip_norm=clip_norm)
    for X, y in batches(rng, 50):
        loss = model.loss_and_grad(X, y)
        grads = model.grads.copy()
        norm = opt.step()
        assert np.array_equal(model.grads, grads)
        torch_loss, torch_norm = twin.step(X, y)
        assert loss == pytest.approx(torch_loss, rel=1e-10)
        assert norm == pytest.approx(torch_norm, rel=1e-10)
    assert opt.steps == 50
    assert_matches_torch(model, opt, twin)


@needs_torch
@pytest.mark.parametrize("cls, kwargs, clip_norm", [
    pytest.param(fastbp.Adam, dict(lr=0.01, weight_decay=0.05, amsgrad=True), 0.5,
                 id="adam-amsgrad-wd-clip"),
    pytest.param(fastbp.AdamW, dict(lr=0.01), None, id="adamw"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                 0.5, id="sgd-nesterov-wd-clip"),
    pytest.param(fastbp.SGD, dict(lr=0.1), 0.5, id="sgd-plain-clip"),
    pytest.param(fastbp.RMSprop, dict(lr=0.005, momentum=0.8, centered=True), 0.5,
                 id="rmsprop-momentum-centered-clip"),
])
def test_fit_matches_torch_float64(cls, kwargs, clip_norm, rng):
    """fit's compiled chunks (40 steps an epoch: a chunk of 32 and one of 8; a last batch of 5
    rows) against torch's loop over the same batches in the same order."""
    n, batch_size, epochs = 395, 10, 2
    X = rng.normal(size=(n, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=n)
    model = model_of()
    twin = TorchTwin(model, cls, kwargs, clip_norm)
    opt = cls(model, **kwargs, clip_norm=clip_norm)
    history = fastbp.fit(model, X, y, opt, epochs=epochs, batch_size=batch_size,
                         shuffle=False)
    expected_losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            loss, _ = twin.step(X[rows], y[rows])
            total += loss * len(X[rows])
        expected_losses.append(total / n)
    assert opt.steps == epochs * 40
    np.testing.assert_allclose(history["loss"], expected_losses, rtol=1e-10)
    assert_matches_torch(model, opt, twin)


# -------------------------------------------------------------------------------------------
# A plain NumPy reference of each update rule (no torch)
# -------------------------------------------------------------------------------------------


def clip_scale(grads, clip_norm):
    """PyTorch's clip_grad_norm_ rule: (the factor the gradients are multiplied by, norm)."""
    norm = math.sqrt(float(np.sum(np.asarray(grads, dtype=np.float64) ** 2)))
    if clip_norm is None:
        return 1.0, norm
    return min(1.0, clip_norm / (norm + 1e-6)), norm


class ReferenceSGD:
    """fastbp.SGD's docstring: clip; d = g + weight_decay * p; with momentum,
    b = momentum * b + (1 - dampening) * d (b = d on the first step) and the step is
    d + momentum * b (nesterov) or b; p -= lr * step."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, clip_norm=None):
        self.params = np.array(params, dtype=np.float64)
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay, self.clip_norm = nesterov, weight_decay, clip_norm
        self.buf = None
        self.steps = 0

    def step(self, grads):
        scale, norm = clip_scale(grads, self.clip_norm)
        d = scale * np.asarray(grads, dtype=np.float64) + self.weight_decay * self.params
        if self.momentum:
            if self.buf is None:
                self.buf = d.copy()
            else:
                self.buf = self.momentum * self.buf + (1.0 - self.dampening) * d
            d = d + self.momentum * self.buf if self.nesterov else self.buf
        self.params = self.params - self.lr * d
        self.steps += 1
        return norm

    def state(self, n_params):
        if not self.momentum:
            return np.zeros((0, n_params))
        return self.buf[None, :]


class ReferenceAdam:
    """fastbp.Adam's and AdamW's docstrings (Kingma & Ba's Adam with PyTorch's bias
    corrections): clip; AdamW: p *= 1 - lr * weight_decay, Adam: d = g + weight_decay * p;
    m = beta1 m + (1 - beta1) d; v = beta2 v + (1 - beta2) d^2; vmax = max(vmax, v) with
    amsgrad; p -= lr / (1 - beta1^t) * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, clip_norm=None, decoupled=False):
        self.params = np.array(params, dtype=np.float64)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.amsgrad, self.clip_norm = weight_decay, amsgrad, clip_norm
        self.decoupled = decoupled
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        self.vmax = np.zeros_like(self.params)
        self.steps = 0

    def step(self, grads):
        scale, norm = clip_scale(grads, self.clip_norm)
        d = scale * np.asarray(grads, dtype=np.float64)
        if self.decoupled:
            self.params = self.params * (1.0 - self.lr * self.weight_decay)
        else:
            d = d + self.weight_decay * self.params
        self.steps += 1
        t = self.steps
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * d
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * d * d
        self.vmax = np.maximum(self.vmax, self.v)
        v = self.vmax if self.amsgrad else self.v
        denom = np.sqrt(v) / math.sqrt(1.0 - self.beta2 ** t) + self.eps
        self.params = self.params - self.lr / (1.0 - self.beta1 ** t) * self.m / denom
        return norm

    def state(self, n_params):
        rows = [self.m, self.v] + ([self.vmax] if self.amsgrad else [])
        return np.array(rows)


class ReferenceRMSprop:
    """fastbp.RMSprop's docstring: clip; d = g + weight_decay * p; s = alpha s + (1 - alpha) d^2;
    centered: a = a + (1 - alpha) (d - a), denom = sqrt(s - a^2) + eps, else sqrt(s) + eps;
    with momentum b = momentum b + d / denom, p -= lr b; else p -= lr d / denom."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, clip_norm=None):
        self.params = np.array(params, dtype=np.float64)
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.centered, self.clip_norm = momentum, centered, clip_norm
        self.s = np.zeros_like(self.params)
        self.a = np.zeros_like(self.params)
        self.b = np.zeros_like(self.params)

    def step(self, grads):
        scale, norm = clip_scale(grads, self.clip_norm)
        d = scale * np.asarray(grads, dtype=np.float64) + self.weight_decay * self.params
        self.s = self.alpha * self.s + (1.0 - self.alpha) * d * d
        if self.centered:
            self.a = self.a + (1.0 - self.alpha) * (d - self.a)
            denom = np.sqrt(self.s - self.a * self.a) + self.eps
        else:
            denom = np.sqrt(self.s) + self.eps
        if self.momentum:
            self.b = self.momentum * self.b + d / denom
            self.params = self.params - self.lr * self.b
        else:
            self.params = self.params - self.lr * d / denom
        return norm

    def state(self, n_params):
        return np.array([self.s] + [self.b] * bool(self.momentum) + [self.a] * self.centered)


def reference_for(cls, params, kwargs):
    if cls is fastbp.SGD:
        return ReferenceSGD(params, **kwargs)
    if cls is fastbp.RMSprop:
        return ReferenceRMSprop(params, **kwargs)
    if cls is fastbp.AdamW:
        # AdamW's default weight decay is 1e-2 (its docstring and torch.optim.AdamW's)
        return ReferenceAdam(params, **{"weight_decay": 1e-2, **kwargs}, decoupled=True)
    return ReferenceAdam(params, **kwargs)


REFERENCE_CASES = [
    pytest.param(fastbp.SGD, dict(lr=0.1), id="sgd-plain"),
    pytest.param(fastbp.SGD, dict(lr=0.1, clip_norm=3.0), id="sgd-plain-clip"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01,
                                  clip_norm=3.0), id="sgd-momentum-dampening-wd-clip"),
    pytest.param(fastbp.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                 id="sgd-nesterov-wd"),
    pytest.param(fastbp.SGD, dict(lr=0.1, weight_decay=0.05, clip_norm=3.0), id="sgd-wd-clip"),
    pytest.param(fastbp.Adam, dict(), id="adam-default"),
    pytest.param(fastbp.Adam, dict(lr=0.01, amsgrad=True, clip_norm=3.0), id="adam-amsgrad-clip"),
    pytest.param(fastbp.Adam, dict(lr=0.01, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
                 id="adam-wd-betas-eps"),
    pytest.param(fastbp.AdamW, dict(), id="adamw-default"),
    pytest.param(fastbp.AdamW, dict(lr=0.01, weight_decay=0.05, amsgrad=True, clip_norm=3.0),
                 id="adamw-wd-amsgrad-clip"),
    pytest.param(fastbp.RMSprop, dict(), id="rmsprop-default"),
    pytest.param(fastbp.RMSprop, dict(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.05,
                                      momentum=0.8, centered=True, clip_norm=3.0),
                 id="rmsprop-all-clip"),
    pytest.param(fastbp.RMSprop, dict(momentum=0.5, clip_norm=3.0), id="rmsprop-momentum-clip"),
]
# Large: 21477 parameters in three layers, seven chunks of the norm's NORM_CHUNK (each layer's
# last ragged) and six of the update's UPDATE_CHUNK (the last ragged), which one thread runs in
# its parallel loops, and two threads share out.
REFERENCE_SIZES = [pytest.param(SIZES, 0, id="small"),
                   pytest.param([100, 150, 40, 7], 1, id="chunks"),
                   pytest.param([100, 150, 40, 7], 2, id="chunks-2-threads",
                                marks=pytest.mark.skipif(max_threads() < 2,
                                                         reason="needs 2 Numba threads"))]


@pytest.mark.parametrize("sizes, threads", REFERENCE_SIZES)
@pytest.mark.parametrize("cls, kwargs", REFERENCE_CASES)
def test_step_matches_numpy_reference(cls, kwargs, sizes, threads, rng):
    """Hand-made gradients in model.grads, opt.step(): params, state, steps and the returned
    norm against the NumPy reference, float64, to 1e-12 over 20 steps."""
    if threads:
        fastbp.set_num_threads(threads)
    model = model_of(sizes=sizes)
    model.params[...] = rng.normal(size=model.n_params)
    ref = reference_for(cls, model.params, kwargs)
    opt = cls(model, **kwargs)
    clipped = 0
    for step in range(20):
        model.grads[...] = rng.normal(scale=0.5 if model.n_params > 1000 else 0.3,
                                      size=model.n_params)
        norm = opt.step()
        ref_norm = ref.step(model.grads)
        clipped += kwargs.get("clip_norm") is not None and ref_norm > kwargs["clip_norm"]
        assert norm == pytest.approx(ref_norm, rel=1e-12)
        assert opt.steps == step + 1
    if "clip_norm" in kwargs:
        assert clipped >= 5, clipped
    assert rel_error(model.params, ref.params) < 1e-12
    expected_state = ref.state(model.n_params)
    assert opt.state.shape == expected_state.shape
    if expected_state.size:
        assert rowwise_error(opt.state, expected_state) < 1e-12


def test_centered_rmsprop_stays_finite_where_rounding_makes_the_variance_negative(rng):
    """A constant gradient and a small alpha: square_avg - grad_avg**2 (0 but for rounding)
    comes out below 0 for some parameters within a few steps, where torch.optim.RMSprop's root
    gives NaN parameters; fastbp's takes 0 and keeps them finite."""
    model = model_of()
    opt = fastbp.RMSprop(model, lr=1e-3, alpha=0.01, centered=True)
    grads = rng.normal(size=model.n_params)
    negative = 0
    for _ in range(30):
        model.grads[...] = grads
        opt.step()
        square_avg, grad_avg = opt.state
        negative += int(np.sum(square_avg - grad_avg * grad_avg < 0))
    assert negative > 0   # the case arose
    assert np.all(np.isfinite(model.params)) and opt.steps == 30


def test_a_new_lr_applies_from_the_next_step(rng):
    model = model_of()
    opt = fastbp.SGD(model, lr=0.1)
    model.grads[...] = rng.normal(size=model.n_params)
    before = model.params.copy()
    opt.lr = 0.5
    assert opt.lr == 0.5 and opt.base_lr == 0.1
    opt.step()
    assert rel_error(model.params, before - 0.5 * model.grads) < 1e-15


# -------------------------------------------------------------------------------------------
# float32 against float64
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01), id="adam"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(lambda m: fastbp.RMSprop(m, lr=0.005, momentum=0.5, centered=True),
                 id="rmsprop-momentum-centered"),
])
def test_float32_training_follows_float64(make_optimizer, rng):
    """The same tanh net from the same (float32-representable) parameters on the same blobs:
    50 steps in float32 stay within 1e-4 of float64, relative to the parameters' scale."""
    X, y = blobs(50 * 16, seed=1)
    X = X.astype(np.float32)
    m64 = model_of(np.float64, activation="tanh")
    m64.params[...] = m64.params.astype(np.float32)
    m32 = model_of(np.float32, activation="tanh")
    m32.params[...] = m64.params
    start = m64.params.copy()
    o64, o32 = make_optimizer(m64), make_optimizer(m32)
    for step in range(50):
        rows = slice(16 * step, 16 * (step + 1))
        o64.train_step(X[rows], y[rows])
        o32.train_step(X[rows], y[rows])
    scale = np.abs(m64.params).max()
    moved = np.abs(m64.params - start).max() / scale
    error = np.abs(m32.params.astype(np.float64) - m64.params).max() / scale
    assert moved > 1e-2  # it trained
    assert error < 1e-4, error
    assert o32.state.dtype == np.float32 and o64.state.dtype == np.float64


# -------------------------------------------------------------------------------------------
# Bitwise reproducibility
# -------------------------------------------------------------------------------------------


def test_fit_with_adam_is_bitwise_reproducible():
    """Two identical runs (shuffled with a fixed seed) give the same bits. 50826 parameters on
    2 threads: the update runs its parallel loop (13 chunks of _config.UPDATE_CHUNK)."""
    fastbp.set_num_threads(min(2, max_threads()))
    sizes = [64, 256, 128, 10]
    X, y = blobs(512, n_features=64, n_classes=10, seed=4)

    def run():
        model = fastbp.MLP(sizes, activation=["relu", "tanh"], dtype=np.float64, seed=5)
        opt = fastbp.Adam(model, lr=0.003, amsgrad=True, weight_decay=0.01, clip_norm=1.0)
        history = fastbp.fit(model, X, y, opt, epochs=2, batch_size=64, seed=9)
        return model, opt, history

    (ma, oa, ha), (mb, ob, hb) = run(), run()
    assert oa.steps == ob.steps == 16
    assert ma.params.tobytes() == mb.params.tobytes()
    assert oa.state.tobytes() == ob.state.tobytes()
    assert ha["loss"] == hb["loss"]


# -------------------------------------------------------------------------------------------
# Gradient accumulation
# -------------------------------------------------------------------------------------------

ACCUMULATE_OPTIMIZERS = [
    pytest.param(lambda m: fastbp.SGD(m, lr=0.2), id="sgd"),
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01, clip_norm=0.5), id="adam-clip"),
]
# (n, batch_size, k): 110 = 4 * 24 + 14, the last group two batches of 8 and 6;
# 101 = 6 * 16 + 5, the last group a single batch of 5.
ACCUMULATE_SHAPES = [pytest.param(110, 8, 3, id="n110-b8-k3"),
                     pytest.param(101, 8, 2, id="n101-b8-k2")]


class StepCounter:
    """A callback with on_step_end: fit then returns to Python after every step."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, epoch, step, loss, grad_norm, model):
        self.steps += 1


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("n, batch_size, k", ACCUMULATE_SHAPES)
@pytest.mark.parametrize("make_optimizer", ACCUMULATE_OPTIMIZERS)
def test_accumulation_equals_a_k_times_larger_batch(make_optimizer, n, batch_size, k, l2):
    """Also with the L2 penalty, whose B is then the rows of the whole update (not of each
    batch): the penalty must be added once, over all of them."""
    X, y = blobs(n, seed=2)
    a, b = model_of(l2=l2), model_of(l2=l2)
    opt_a, opt_b = make_optimizer(a), make_optimizer(b)
    ha = fastbp.fit(a, X, y, opt_a, epochs=3, batch_size=batch_size, accumulate=k,
                    shuffle=False)
    hb = fastbp.fit(b, X, y, opt_b, epochs=3, batch_size=k * batch_size, shuffle=False)
    assert opt_a.steps == opt_b.steps == 3 * -(-n // (k * batch_size))
    assert not np.array_equal(a.params, model_of().params)
    if l2:  # the penalty changed the run
        plain = model_of()
        fastbp.fit(plain, X, y, make_optimizer(plain), epochs=3, batch_size=k * batch_size,
                   shuffle=False)
        assert rel_error(plain.params, b.params) > 1e-6
    assert rel_error(a.params, b.params) < 1e-12
    if opt_b.state.size:
        assert rowwise_error(opt_a.state, opt_b.state) < 1e-12
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(ha[key], hb[key], rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("n, batch_size, k", ACCUMULATE_SHAPES)
@pytest.mark.parametrize("make_optimizer", ACCUMULATE_OPTIMIZERS)
def test_accumulation_slow_path_is_bitwise_the_fast_path(make_optimizer, n, batch_size, k, l2):
    """A callback with on_step_end (one step per call, then opt.step()) against the compiled
    chunks: the same bits, and one callback per update."""
    X, y = blobs(n, seed=2)
    a, b = model_of(l2=l2), model_of(l2=l2)
    opt_a, opt_b = make_optimizer(a), make_optimizer(b)
    counter = StepCounter()
    ha = fastbp.fit(a, X, y, opt_a, epochs=3, batch_size=batch_size, accumulate=k, seed=6,
                    callbacks=[counter])
    hb = fastbp.fit(b, X, y, opt_b, epochs=3, batch_size=batch_size, accumulate=k, seed=6)
    n_updates = 3 * -(-n // (k * batch_size))
    assert counter.steps == opt_a.steps == opt_b.steps == n_updates
    assert a.params.tobytes() == b.params.tobytes()
    assert opt_a.state.tobytes() == opt_b.state.tobytes()
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)


@pytest.mark.parametrize("accumulate, error", [(0, ValueError), (-1, ValueError),
                                               (1.5, TypeError), ("2", TypeError),
                                               (True, TypeError)])
def test_bad_accumulate_is_refused(accumulate, error):
    X, y = blobs(40)
    model = model_of()
    opt = fastbp.Adam(model)
    before = model.params.copy()
    with pytest.raises(error, match="accumulate"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=8, accumulate=accumulate)
    assert np.array_equal(model.params, before) and opt.steps == 0


# -------------------------------------------------------------------------------------------
# Resuming from a checkpoint
# -------------------------------------------------------------------------------------------

RESUME_CASES = [
    pytest.param(lambda m: fastbp.SGD(m, lr=0.05, momentum=0.9, clip_norm=0.5), None,
                 id="sgd-momentum"),
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01, amsgrad=True, weight_decay=0.01), None,
                 id="adam-amsgrad"),
    pytest.param(lambda m: fastbp.AdamW(m, lr=0.01, lr_schedule=schedules.Cosine(
        8, warmup=1, min_lr=1e-4)), [1.0] * 10, id="adamw-cosine"),
    # Before the save: a division (third epoch), then a bad epoch still counting (fifth).
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1, momentum=0.9, nesterov=True,
                                      lr_schedule=schedules.Adaptive(factor=2.0, patience=1,
                                                                     tol=0.0)),
                 [1.0, 1.1, 1.2, 0.9, 1.3, 1.4, 1.5, 0.8, 0.85, 0.95],
                 id="sgd-nesterov-adaptive"),
    pytest.param(lambda m: fastbp.RMSprop(m, lr=0.005, alpha=0.9, momentum=0.8, centered=True,
                                          weight_decay=0.01, clip_norm=0.5,
                                          lr_schedule=schedules.Step(2, gamma=0.5)),
                 [1.0] * 10, id="rmsprop-momentum-centered-step"),
]


def train_with_epochs(opt, data, epoch_losses, first_step):
    """train_step over data; after every second step (counting from first_step), end an
    "epoch" of 32 samples with the next of epoch_losses (when there is a schedule)."""
    for i, (X, y) in enumerate(data):
        opt.train_step(X, y)
        done = first_step + i + 1
        if epoch_losses is not None and done % 2 == 0:
            opt.end_epoch(32, epoch_losses[done // 2 - 1])


@pytest.mark.parametrize("make_optimizer, epoch_losses", RESUME_CASES)
def test_resume_from_checkpoint_is_bitwise_the_uninterrupted_run(make_optimizer,
                                                                  epoch_losses, rng, tmp_path):
    """10 steps, save(optimizer=), load_checkpoint, then 10 more steps on the original and on
    the loaded pair: the same bits, and the same schedule afterwards."""
    data = batches(rng, 20)
    model = model_of()
    opt = make_optimizer(model)
    train_with_epochs(opt, data[:10], epoch_losses, 0)
    path = tmp_path / "checkpoint.npz"
    fastbp.save(model, path, optimizer=opt)
    saved_params = model.params.copy()
    model2, opt2 = fastbp.load_checkpoint(path)

    assert type(opt2) is type(opt) and opt2.model is model2
    assert opt2.config() == opt.config()
    assert (opt2.steps, opt2.lr, opt2.base_lr, opt2.epochs_done, opt2.samples_seen) == (
        opt.steps, opt.lr, opt.base_lr, opt.epochs_done, opt.samples_seen)
    if epoch_losses is not None:
        assert opt2.lr_schedule.config() == opt.lr_schedule.config()
        assert opt.lr != opt.base_lr  # the schedule had moved before the save
    assert model2.params.tobytes() == model.params.tobytes()
    assert opt2.state.tobytes() == opt.state.tobytes()
    lrs = []
    for o in (opt, opt2):
        lrs.append([])
        for i in range(10):
            train_with_epochs(o, data[10 + i:11 + i], epoch_losses, 10 + i)
            lrs[-1].append(o.lr)
    assert lrs[0] == lrs[1]
    if epoch_losses is not None:
        assert len(set(lrs[0])) > 1  # the schedule moved after the resume
    assert opt2.steps == opt.steps == 20
    assert model2.params.tobytes() == model.params.tobytes()
    assert opt2.state.tobytes() == opt.state.tobytes()

    plain = fastbp.load(path)
    assert isinstance(plain, fastbp.MLP)
    assert plain.params.tobytes() == saved_params.tobytes()


def test_load_returns_the_model_alone_and_load_checkpoint_needs_an_optimizer(rng, tmp_path):
    model = model_of()
    opt = fastbp.Adam(model, lr=0.01)
    for X, y in batches(rng, 3):
        opt.train_step(X, y)
    with_opt = fastbp.save(model, tmp_path / "with.npz", optimizer=opt)
    without = fastbp.save(model, tmp_path / "without.npz")
    loaded = fastbp.load(with_opt)
    assert isinstance(loaded, fastbp.MLP)
    assert loaded.params.tobytes() == model.params.tobytes()
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load_checkpoint(without)


def _set_record(arrays, **changes):
    record = json.loads(str(arrays["optimizer"]))
    record.update(changes)
    arrays["optimizer"] = np.array(json.dumps(record))


def _set_config(arrays, **changes):
    record = json.loads(str(arrays["optimizer"]))
    record["config"].update(changes)
    arrays["optimizer"] = np.array(json.dumps(record))


def _set_state(arrays, fn):
    arrays["optimizer_state"] = fn(arrays["optimizer_state"])


def _with_value(value):
    def change(state):
        state = state.copy()
        state[1, 7] = value
        return state
    return change


TAMPERINGS = [
    pytest.param(lambda a: _set_state(a, lambda s: s[:, :-1]), id="state-short"),
    pytest.param(lambda a: _set_state(a, lambda s: s[:1]), id="state-one-row"),
    pytest.param(lambda a: _set_state(a, lambda s: np.concatenate([s, s[:1]])),
                 id="state-extra-row"),
    pytest.param(lambda a: _set_state(a, lambda s: s.ravel()), id="state-1d"),
    pytest.param(lambda a: _set_state(a, lambda s: s.astype(np.float32)), id="state-float32"),
    pytest.param(lambda a: _set_state(a, _with_value(np.nan)), id="state-nan"),
    pytest.param(lambda a: _set_state(a, _with_value(np.inf)), id="state-inf"),
    pytest.param(lambda a: a.pop("optimizer_state"), id="state-missing"),
    pytest.param(lambda a: _set_record(a, name="adagrad"), id="name-unknown"),
    pytest.param(lambda a: _set_record(a, name="sgd"), id="name-other-kind"),
    pytest.param(lambda a: _set_record(a, name="rmsprop"), id="name-rmsprop"),
    pytest.param(lambda a: _set_state(a, _with_value(-1e-3)),
                 id="state-negative-second-moment"),
    pytest.param(lambda a: _set_record(a, steps=-1), id="steps-negative"),
    pytest.param(lambda a: _set_record(a, steps=2.5), id="steps-float"),
    pytest.param(lambda a: _set_record(a, steps="7"), id="steps-text"),
    pytest.param(lambda a: _set_record(a, steps=True), id="steps-bool"),
    pytest.param(lambda a: _set_record(a, steps=None), id="steps-null"),
    pytest.param(lambda a: _set_record(a, steps=10 ** 400), id="steps-huge"),
    pytest.param(lambda a: _set_record(a, lr=-0.1), id="lr-negative"),
    pytest.param(lambda a: _set_record(a, epochs_done=-1), id="epochs-done-negative"),
    pytest.param(lambda a: _set_record(a, samples_seen=1.5), id="samples-seen-float"),
    pytest.param(lambda a: _set_config(a, betas=[1.0, 0.9]), id="config-betas"),
    pytest.param(lambda a: _set_config(a, eps=0), id="config-eps"),
    pytest.param(lambda a: _set_config(a, colour="red"), id="config-unknown-key"),
    pytest.param(lambda a: _set_record(a, schedule={"name": "sometimes", "config": {},
                                                    "state": {}}), id="schedule-unknown"),
    pytest.param(lambda a: _set_record(a, schedule={"name": "cosine",
                                                    "config": {"epochs": 0}, "state": {}}),
                 id="schedule-bad-config"),
    pytest.param(lambda a: a.update(optimizer=np.array("{not json")), id="record-not-json"),
    pytest.param(lambda a: a.update(optimizer=np.array("[1, 2]")), id="record-a-list"),
    pytest.param(lambda a: a.update(optimizer=np.arange(3)), id="record-not-text"),
]


@pytest.mark.parametrize("tamper", TAMPERINGS)
def test_tampered_checkpoint_is_refused(tamper, rng, tmp_path):
    model = model_of()
    opt = fastbp.Adam(model, lr=0.01, weight_decay=0.01)
    for X, y in batches(rng, 3):
        opt.train_step(X, y)
    good = fastbp.save(model, tmp_path / "good.npz", optimizer=opt)
    with np.load(good) as f:
        arrays = {key: f[key] for key in f.files}
    fastbp.load_checkpoint(good)  # the untampered file loads
    tamper(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load_checkpoint(bad)


@pytest.mark.parametrize("row, name, refused", [(0, "square_avg", True),
                                                 (1, "momentum_buffer", False),
                                                 (2, "grad_avg", False)])
def test_negative_state_is_refused_only_in_rows_that_cannot_be(row, name, refused, rng,
                                                                tmp_path):
    """The rows a kind of update names non-negative (kernels.KINDS): RMSprop's average of the
    squared gradients never goes below 0, its momentum buffer and average of the gradients
    may."""
    model = model_of()
    opt = fastbp.RMSprop(model, momentum=0.9, centered=True)
    for X, y in batches(rng, 3):
        opt.train_step(X, y)
    assert kernels.KINDS[opt.update_spec().kind].state(opt.update_spec().hyper)[row] == name
    good = fastbp.save(model, tmp_path / "good.npz", optimizer=opt)
    with np.load(good) as f:
        arrays = {key: f[key] for key in f.files}
    state = arrays["optimizer_state"].copy()
    state[row, 7] = -abs(state[row, 7]) - 1e-3
    arrays["optimizer_state"] = state
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    if refused:
        with pytest.raises(fastbp.ModelFileError, match=name):
            fastbp.load_checkpoint(bad)
    else:
        _, loaded = fastbp.load_checkpoint(bad)
        assert loaded.state.tobytes() == state.tobytes()


def _set_schedule(arrays, part, **changes):
    record = json.loads(str(arrays["optimizer"]))
    record["schedule"][part].update(changes)
    arrays["optimizer"] = np.array(json.dumps(record))


SCHEDULE_TAMPERINGS = [
    pytest.param(dict(bad_epochs=-1), "state", id="bad-epochs-negative"),
    pytest.param(dict(divisions=1.5), "state", id="divisions-float"),
    pytest.param(dict(divisions=10 ** 400), "state", id="divisions-huge"),
    pytest.param(dict(best=math.nan), "state", id="best-nan"),
    pytest.param(dict(best="low"), "state", id="best-text"),
    pytest.param(dict(factor=0.5), "config", id="factor-below-1"),
    pytest.param(dict(factor=10 ** 400), "config", id="factor-huge"),
    pytest.param(dict(patience=-2), "config", id="patience-negative"),
]


@pytest.mark.parametrize("changes, part", SCHEDULE_TAMPERINGS)
def test_tampered_schedule_in_a_checkpoint_is_refused(changes, part, rng, tmp_path):
    model = model_of()
    opt = fastbp.SGD(model, lr=0.1, lr_schedule=schedules.Adaptive(factor=2.0, patience=0))
    for loss in (1.0, 2.0, 3.0):
        opt.train_step(*batches(rng, 1)[0])
        opt.end_epoch(16, loss)
    good = fastbp.save(model, tmp_path / "good.npz", optimizer=opt)
    _, loaded = fastbp.load_checkpoint(good)
    assert loaded.lr_schedule.state() == opt.lr_schedule.state() == {
        "best": 1.0, "bad_epochs": 0, "divisions": 2}
    with np.load(good) as f:
        arrays = {key: f[key] for key in f.files}
    _set_schedule(arrays, part, **changes)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load_checkpoint(bad)


# -------------------------------------------------------------------------------------------
# The registry of update kinds
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fastbp.optim.OPTIMIZERS))
def test_each_optimizer_is_a_registered_kind_of_update(name):
    """Its Update's kind is an entry of kernels.KINDS, whose hyper-parameters and state rows
    its Update has; training with it readies that kind's unit and no other kind's; config()
    builds it again, with the same hyper-parameters."""
    cls = fastbp.optim.OPTIMIZERS[name]
    model = model_of()
    opt = cls(model, lr=0.01)
    spec = opt.update_spec()
    kind = kernels.KINDS[spec.kind]
    assert spec.hyper.shape == (len(kind.hyper),)
    assert opt.state.shape == (len(kind.state(spec.hyper)), model.n_params)
    step_units = {other.unit for other in kernels.KINDS.values()}
    units = kernels.plan.units_for(model.loss, spec.kind, model.engine.net)
    assert [unit for unit in units if unit in step_units] == [kind.unit]
    again = cls(model_of(), **opt.config())
    assert again.update_spec().hyper.tobytes() == spec.hyper.tobytes()
    assert set(opt.config()) == set(cls.arguments())


# -------------------------------------------------------------------------------------------
# memory_report
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_optimizer, rows", [
    pytest.param(lambda m: fastbp.Adam(m), 2, id="adam"),
    pytest.param(lambda m: fastbp.AdamW(m, amsgrad=True), 3, id="adamw-amsgrad"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1, momentum=0.9), 1, id="sgd-momentum"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1, weight_decay=0.1), 0, id="sgd-wd"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1), 0, id="sgd-plain"),
    pytest.param(lambda m: fastbp.RMSprop(m), 1, id="rmsprop"),
    pytest.param(lambda m: fastbp.RMSprop(m, momentum=0.9), 2, id="rmsprop-momentum"),
    pytest.param(lambda m: fastbp.RMSprop(m, centered=True), 2, id="rmsprop-centered"),
    pytest.param(lambda m: fastbp.RMSprop(m, momentum=0.9, centered=True), 3,
                 id="rmsprop-momentum-centered"),
])
def test_memory_report_counts_the_optimizer_state(make_optimizer, rows, dtype):
    model = model_of(dtype)
    itemsize = np.dtype(dtype).itemsize
    before = model.memory_report()
    opt = make_optimizer(model)
    assert model.memory_report() == before   # the model does not know its optimizers
    after = model.memory_report(opt)
    assert opt.state.shape == (rows, model.n_params)
    assert opt.state.dtype == dtype
    assert opt.state.nbytes == rows * model.n_params * itemsize
    hyper = opt.update_spec().hyper
    assert after["optimizer"] - before["optimizer"] == opt.state.nbytes + hyper.nbytes
    assert after["total"] - before["total"] == opt.state.nbytes + hyper.nbytes
    assert hyper.nbytes < 200  # a few float64 hyper-parameters, nothing per parameter
    with pytest.raises(ValueError, match="optimizers"):
        model_of(dtype).memory_report(opt)   # another model's


# -------------------------------------------------------------------------------------------
# Argument checks
# -------------------------------------------------------------------------------------------

ALL = (fastbp.SGD, fastbp.Adam, fastbp.AdamW, fastbp.RMSprop)
ADAMS = (fastbp.Adam, fastbp.AdamW)
WITH_EPS = (fastbp.Adam, fastbp.AdamW, fastbp.RMSprop)


def _bad(classes, kwargs, error, name):
    ids = "-".join(f"{k}={short(v)}" for k, v in kwargs.items())
    return [pytest.param(cls, kwargs, error, name, id=f"{cls.__name__}-{ids}")
            for cls in classes]


BAD_ARGUMENTS = [
    *_bad(ALL, dict(lr=0), ValueError, "lr"),
    *_bad(ALL, dict(lr=-0.1), ValueError, "lr"),
    *_bad(ALL, dict(lr=math.nan), ValueError, "lr"),
    *_bad(ALL, dict(lr=math.inf), ValueError, "lr"),
    *_bad(ALL, dict(lr="a"), TypeError, "lr"),
    *_bad(ALL, dict(lr=10 ** 400), ValueError, "lr"),
    *_bad(ALL, dict(lr=True), TypeError, "lr"),
    *_bad(ALL, dict(lr=None), TypeError, "lr"),
    *_bad(ALL, dict(weight_decay=-0.01), ValueError, "weight_decay"),
    *_bad(ALL, dict(weight_decay=math.nan), ValueError, "weight_decay"),
    *_bad(ALL, dict(clip_norm=0), ValueError, "clip_norm"),
    *_bad(ALL, dict(clip_norm=-1.0), ValueError, "clip_norm"),
    *_bad(ALL, dict(clip_norm="1"), TypeError, "clip_norm"),
    *_bad(ALL, dict(lr_schedule="cosine"), TypeError, "lr_schedule"),
    *_bad(ADAMS, dict(betas=(1.0, 0.9)), ValueError, "betas[0]"),
    *_bad(ADAMS, dict(betas=(-0.1, 0.9)), ValueError, "betas[0]"),
    *_bad(ADAMS, dict(betas=(0.9, -0.1)), ValueError, "betas[1]"),
    *_bad(ADAMS, dict(betas=(0.9, 1.0)), ValueError, "betas[1]"),
    *_bad(ADAMS, dict(betas=(0.9, math.nan)), ValueError, "betas[1]"),
    *_bad(ADAMS, dict(betas=("a", 0.9)), TypeError, "betas[0]"),
    *_bad(ADAMS, dict(betas=0.9), TypeError, "betas"),
    *_bad(ADAMS, dict(betas=(0.9,)), TypeError, "betas"),
    *_bad(ADAMS, dict(betas=(0.9, 0.99, 0.999)), TypeError, "betas"),
    *_bad(WITH_EPS, dict(eps=0), ValueError, "eps"),
    *_bad(WITH_EPS, dict(eps=-1e-8), ValueError, "eps"),
    *_bad(WITH_EPS, dict(eps=math.nan), ValueError, "eps"),
    *_bad(WITH_EPS, dict(eps=1e-320), ValueError, "eps"),
    *_bad(WITH_EPS, dict(eps="1e-8"), TypeError, "eps"),
    *_bad(ADAMS, dict(amsgrad="yes"), TypeError, "amsgrad"),
    *_bad(ADAMS, dict(amsgrad=1), TypeError, "amsgrad"),
    *_bad([fastbp.SGD], dict(momentum=-0.1), ValueError, "momentum"),
    *_bad([fastbp.SGD], dict(momentum=math.inf), ValueError, "momentum"),
    *_bad([fastbp.SGD], dict(momentum="0.9"), TypeError, "momentum"),
    *_bad([fastbp.SGD], dict(momentum=0.9, dampening=-0.1), ValueError, "dampening"),
    *_bad([fastbp.SGD], dict(momentum=0.9, dampening=1.5), ValueError, "dampening"),
    *_bad([fastbp.SGD], dict(nesterov=True), ValueError, "nesterov"),
    *_bad([fastbp.SGD], dict(momentum=0.9, dampening=0.1, nesterov=True), ValueError,
          "nesterov"),
    *_bad([fastbp.SGD], dict(momentum=0.9, nesterov="yes"), TypeError, "nesterov"),
    *_bad([fastbp.SGD], dict(momentum=0.9, nesterov=1), TypeError, "nesterov"),
    *_bad([fastbp.RMSprop], dict(alpha=-0.1), ValueError, "alpha"),
    *_bad([fastbp.RMSprop], dict(alpha=1.01), ValueError, "alpha"),
    *_bad([fastbp.RMSprop], dict(alpha=math.nan), ValueError, "alpha"),
    *_bad([fastbp.RMSprop], dict(alpha="0.9"), TypeError, "alpha"),
    *_bad([fastbp.RMSprop], dict(alpha=None), TypeError, "alpha"),
    *_bad([fastbp.RMSprop], dict(momentum=-0.1), ValueError, "momentum"),
    *_bad([fastbp.RMSprop], dict(momentum=1.5), ValueError, "momentum"),
    *_bad([fastbp.RMSprop], dict(momentum=math.inf), ValueError, "momentum"),
    *_bad([fastbp.RMSprop], dict(centered="yes"), TypeError, "centered"),
    *_bad([fastbp.RMSprop], dict(centered=1), TypeError, "centered"),
    *_bad([fastbp.RMSprop], dict(betas=(0.9, 0.99)), TypeError, "betas"),
]


@pytest.mark.parametrize("cls, kwargs, error, name", BAD_ARGUMENTS)
def test_bad_optimizer_arguments_are_refused_naming_them(cls, kwargs, error, name):
    model = model_of()
    kwargs = dict(kwargs)
    if cls is fastbp.SGD:
        kwargs.setdefault("lr", 0.1)
    before = model.memory_report()["optimizer"]
    params = model.params.copy()
    with pytest.raises(error) as info:
        cls(model, **kwargs)
    assert names_argument(str(info.value), name), str(info.value)
    assert model.memory_report()["optimizer"] == before
    assert model.params.tobytes() == params.tobytes()


@pytest.mark.parametrize("cls", ALL)
def test_model_must_be_an_mlp(cls):
    with pytest.raises(TypeError) as info:
        cls(object(), lr=0.1)
    assert names_argument(str(info.value), "model")


@pytest.mark.parametrize("value, error", [(-1, ValueError), (0, ValueError), ("a", TypeError),
                                          (math.nan, ValueError), (math.inf, ValueError),
                                          (None, TypeError)])
@pytest.mark.parametrize("cls", ALL)
def test_setting_a_bad_lr_raises_and_keeps_the_old_one(cls, value, error):
    opt = cls(model_of(), lr=0.03)
    with pytest.raises(error) as info:
        opt.lr = value
    assert names_argument(str(info.value), "lr")
    assert opt.lr == 0.03
    with pytest.raises((TypeError, ValueError)) as info:
        opt.clip_norm = -1.0
    assert names_argument(str(info.value), "clip_norm")
    assert opt.clip_norm is None


@pytest.mark.parametrize("cls, attributes", [
    (fastbp.SGD, dict(momentum=0.5, dampening=0.1, nesterov=True, weight_decay=0.1, steps=3)),
    (fastbp.Adam, dict(betas=(0.5, 0.5), eps=1e-3, amsgrad=True, weight_decay=0.1, steps=3)),
    (fastbp.AdamW, dict(betas=(0.5, 0.5), eps=1e-3, amsgrad=True, weight_decay=0.1)),
    (fastbp.RMSprop, dict(alpha=0.5, eps=1e-3, momentum=0.5, centered=True, weight_decay=0.1,
                          steps=3)),
])
def test_fixed_hyper_parameters_are_read_only(cls, attributes):
    opt = cls(model_of(), lr=0.1)
    for name, value in attributes.items():
        before = getattr(opt, name)
        with pytest.raises(AttributeError):
            setattr(opt, name, value)
        assert getattr(opt, name) == before, name


# -------------------------------------------------------------------------------------------
# Refused steps
# -------------------------------------------------------------------------------------------

DIVERGENCE_CASES = [
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01), np.float64, np.nan, id="adam-nan"),
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01, clip_norm=1.0), np.float64, np.inf,
                 id="adam-clip-inf"),
    pytest.param(lambda m: fastbp.AdamW(m, lr=0.01, amsgrad=True), np.float64, np.nan,
                 id="adamw-amsgrad-nan"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.05, momentum=0.9), np.float64, np.nan,
                 id="sgd-momentum-nan"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.05, momentum=0.9, nesterov=True,
                                      weight_decay=0.01), np.float32, -np.inf,
                 id="sgd-nesterov-f32-inf"),
    pytest.param(lambda m: fastbp.SGD(m, lr=0.1), np.float32, np.nan, id="sgd-plain-f32-nan"),
    # finite, but its square overflows float32: Adam refuses it
    pytest.param(lambda m: fastbp.Adam(m, lr=0.01), np.float32, 1e20, id="adam-f32-overflow"),
    pytest.param(lambda m: fastbp.RMSprop(m, momentum=0.9, centered=True), np.float64, np.nan,
                 id="rmsprop-momentum-centered-nan"),
    pytest.param(lambda m: fastbp.RMSprop(m, clip_norm=1.0), np.float32, np.inf,
                 id="rmsprop-clip-f32-inf"),
    pytest.param(lambda m: fastbp.RMSprop(m, momentum=0.5), np.float32, 1e20,
                 id="rmsprop-f32-overflow"),
]


@pytest.mark.parametrize("make_optimizer, dtype, bad", DIVERGENCE_CASES)
def test_a_refused_step_changes_nothing(make_optimizer, dtype, bad, rng):
    """A NaN / Inf (or overflowing) gradient: step() raises FloatingPointError and leaves the
    params, the state and the step count as they were; the next good step is the one a twin
    that never saw the bad gradient takes."""
    model, twin = model_of(dtype), model_of(dtype)
    opt, twin_opt = make_optimizer(model), make_optimizer(twin)
    for X, y in batches(rng, 3):
        opt.train_step(X, y)
        twin_opt.train_step(X, y)
    params, state, steps = model.params.copy(), opt.state.copy(), opt.steps
    assert np.any(state != 0) or state.size == 0
    model.grads[...] = rng.normal(size=model.n_params)
    model.grads[0] = bad
    with pytest.raises(FloatingPointError):
        opt.step()
    assert model.params.tobytes() == params.tobytes()
    assert opt.state.tobytes() == state.tobytes()
    assert opt.steps == steps
    X, y = batches(rng, 1)[0]
    opt.train_step(X, y)
    twin_opt.train_step(X, y)
    assert model.params.tobytes() == twin.params.tobytes()
    assert opt.state.tobytes() == twin_opt.state.tobytes()


# -------------------------------------------------------------------------------------------
# Schedules
# -------------------------------------------------------------------------------------------


def test_constant_and_step_rates():
    for epoch in range(12):
        assert schedules.Constant().rate(0.3, epoch, 100 * epoch) == 0.3
        assert schedules.Step(3, gamma=0.5).rate(0.3, epoch, 0) == pytest.approx(
            0.3 * 0.5 ** (epoch // 3), rel=1e-15)
    assert schedules.Step(1).rate(1.0, 2, 0) == pytest.approx(0.01)  # gamma defaults to 0.1


def test_cosine_rates_with_warmup():
    base, low = 0.1, 0.01
    schedule = schedules.Cosine(10, warmup=2, min_lr=low)
    expected = [base / 3, 2 * base / 3]  # linear warm-up: base * (e + 1) / (warmup + 1)
    for epoch in range(2, 11):  # a half cosine over the 8 epochs from 2 to 10
        expected.append(low + (base - low) * (1 + math.cos(math.pi * (epoch - 2) / 8)) / 2)
    expected += [low, low]  # then min_lr
    got = [schedule.rate(base, epoch, 0) for epoch in range(13)]
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert got[2] == pytest.approx(base) and got[6] == pytest.approx((base + low) / 2)


def test_inverse_scaling_rates():
    schedule = schedules.InvScaling(power_t=0.25)
    for samples in (0, 1, 99, 12345):
        assert schedule.rate(0.2, 3, samples) == pytest.approx(0.2 / (samples + 1) ** 0.25,
                                                               rel=1e-15)
    assert schedules.InvScaling().rate(1.0, 1, 99) == pytest.approx(0.1)  # power_t 0.5


def sklearn_adaptive_rates(base, losses, factor=5.0, patience=10, tol=1e-4, min_lr=1e-6):
    """scikit-learn's MLP rule: after each epoch _update_no_improvement_count (a loss above
    best_loss_ - tol counts, else the count restarts; best_loss_ is the lowest loss), then in
    _fit_stochastic, when the count exceeds n_iter_no_change, SGDOptimizer.trigger_stopping
    divides learning_rate by 5 and the count restarts. Here with factor for 5, and a floor of
    min(min_lr, base) where scikit-learn stops. The rate after each epoch."""
    lr, best, count, rates = base, math.inf, 0, []
    for loss in losses:
        if math.isnan(loss) or loss > best - tol:  # NaN: a bad epoch (fastbp's rule)
            count += 1
        else:
            count = 0
        if loss < best:
            best = loss
        if count > patience:
            lr /= factor
            count = 0
        rates.append(max(lr, min(min_lr, base)))
    return rates


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(factor=2.0, patience=2, tol=0.05),
    dict(factor=10.0, patience=0, tol=0.0, min_lr=1e-4),
])
def test_adaptive_follows_scikit_learns_rule(kwargs):
    losses = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.8, 0.85, 0.86, 0.87, 0.7999, 0.79, 0.9, 0.95,
              1.0, 1.1, 0.5, 0.6, 0.7, 0.8, math.nan, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6,
              1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4]
    schedule = schedules.Adaptive(**kwargs)
    base = 0.1
    assert schedule.rate(base, 0, 0) == base
    got = []
    for epoch, loss in enumerate(losses):
        schedule.observe(loss)
        got.append(schedule.rate(base, epoch + 1, 0))
    expected = sklearn_adaptive_rates(base, losses, **kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert len(set(expected)) >= 2  # the rate was divided


def test_adaptive_stays_at_min_lr():
    """"not below min_lr", and "stays at min_lr" however many bad epochs follow (here 600,
    each one a division: 5 ** 600 is beyond float64)."""
    schedule = schedules.Adaptive(factor=10.0, patience=0, tol=0.0, min_lr=1e-3)
    schedule.observe(1.0)
    rates = []
    for _ in range(4):
        schedule.observe(2.0)
        rates.append(schedule.rate(0.1, 0, 0))
    np.testing.assert_allclose(rates, [1e-2, 1e-3, 1e-3, 1e-3], rtol=1e-12)
    schedule = schedules.Adaptive(patience=0)  # factor 5, min_lr 1e-6
    schedule.observe(1.0)
    for epoch in range(600):
        schedule.observe(2.0)
        rate = schedule.rate(0.1, epoch + 2, 0)
    assert rate == 1e-6


@pytest.mark.parametrize("make_schedule, expected", [
    pytest.param(lambda: schedules.Step(2, gamma=0.5),
                 lambda base, n: [base * 0.5 ** (e // 2) for e in range(5)], id="step"),
    pytest.param(lambda: schedules.Cosine(6, warmup=1, min_lr=0.001),
                 lambda base, n: [base / 2] + [
                     0.001 + (base - 0.001) * (1 + math.cos(math.pi * (e - 1) / 5)) / 2
                     for e in range(1, 5)], id="cosine"),
    pytest.param(lambda: schedules.InvScaling(0.5),
                 lambda base, n: [base / math.sqrt(e * n + 1) for e in range(5)],
                 id="invscaling"),
    pytest.param(lambda: schedules.Constant(), lambda base, n: [base] * 5, id="constant"),
])
def test_fit_records_the_scheduled_lr_per_epoch_and_uses_it(make_schedule, expected):
    """history["lr"] follows the schedule (epoch 0 at the base rate's schedule value); and the
    run equals five one-epoch fits of an optimizer without schedule whose lr is set by hand."""
    X, y = blobs(60, seed=3)
    model, twin = model_of(), model_of()
    opt = fastbp.SGD(model, lr=0.2, momentum=0.5, lr_schedule=make_schedule())
    history = fastbp.fit(model, X, y, opt, epochs=5, batch_size=16, shuffle=False)
    rates = expected(0.2, 60)
    np.testing.assert_allclose(history["lr"], rates, rtol=1e-13)
    assert opt.epochs_done == 5 and opt.samples_seen == 5 * 60
    twin_opt = fastbp.SGD(twin, lr=0.2, momentum=0.5)
    for rate in rates:
        twin_opt.lr = rate
        fastbp.fit(twin, X, y, twin_opt, epochs=1, batch_size=16, shuffle=False)
    assert model.params.tobytes() == twin.params.tobytes()


def test_fit_with_adaptive_watches_the_validation_loss():
    X, y = blobs(90, seed=3)
    X_val, y_val = blobs(30, seed=4)
    y_val = (y_val + 1) % 3  # wrong labels: the validation loss gets worse as training goes
    model = model_of()
    opt = fastbp.SGD(model, lr=0.2, lr_schedule=schedules.Adaptive(factor=2.0, patience=1,
                                                                   tol=0.0))
    history = fastbp.fit(model, X, y, opt, epochs=8, batch_size=16, seed=0,
                         validation_data=(X_val, y_val))
    expected = [0.2] + sklearn_adaptive_rates(0.2, history["val_loss"], factor=2.0,
                                              patience=1, tol=0.0)[:-1]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-12)
    assert history["lr"][-1] < 0.2  # it was divided


def test_fit_with_cosine_runs_to_the_planned_end(tmp_path):
    """Cosine(epochs) with the default min_lr = 0 over exactly `epochs` epochs: the rate after
    the last epoch is min_lr = 0 ("later epochs stay at min_lr"), which must not break fit, and
    a checkpoint taken there loads with that rate."""
    X, y = blobs(60, seed=3)
    model = model_of()
    opt = fastbp.Adam(model, lr=0.01, lr_schedule=schedules.Cosine(4))
    history = fastbp.fit(model, X, y, opt, epochs=4, batch_size=16)
    expected = [0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-13)
    assert opt.lr == 0.0 and opt.epochs_done == 4
    path = fastbp.save(model, tmp_path / "end.npz", optimizer=opt)
    _, loaded = fastbp.load_checkpoint(path)
    assert loaded.lr == 0.0 and loaded.base_lr == 0.01 and loaded.epochs_done == 4


def test_fit_resumed_with_initial_epoch_is_the_uninterrupted_run(tmp_path):
    """fit 2 epochs, save(optimizer=), load_checkpoint, fit 2 more with initial_epoch=2 (same
    seed, shuffled): the same bits, history and schedule as one fit of 4 epochs."""
    X, y = blobs(70, seed=5)

    def make(model):
        return fastbp.Adam(model, lr=0.01, amsgrad=True,
                           lr_schedule=schedules.Cosine(4, warmup=1, min_lr=1e-4))

    whole = model_of()
    whole_opt = make(whole)
    h_whole = fastbp.fit(whole, X, y, whole_opt, epochs=4, batch_size=16, seed=3)
    first = model_of()
    first_opt = make(first)
    h_first = fastbp.fit(first, X, y, first_opt, epochs=2, batch_size=16, seed=3)
    path = fastbp.save(first, tmp_path / "half.npz", optimizer=first_opt)
    resumed, resumed_opt = fastbp.load_checkpoint(path)
    h_rest = fastbp.fit(resumed, X, y, resumed_opt, epochs=2, batch_size=16, seed=3,
                        initial_epoch=2)
    assert resumed.params.tobytes() == whole.params.tobytes()
    assert resumed_opt.state.tobytes() == whole_opt.state.tobytes()
    assert resumed_opt.steps == whole_opt.steps == 4 * 5
    assert h_first["lr"] + h_rest["lr"] == h_whole["lr"]
    assert h_first["loss"] + h_rest["loss"] == h_whole["loss"]


BAD_SCHEDULES = [
    ("Step", dict(step_size=0), ValueError, "step_size"),
    ("Step", dict(step_size=1.5), TypeError, "step_size"),
    ("Step", dict(step_size=2, gamma=0), ValueError, "gamma"),
    ("Step", dict(step_size=2, gamma=1.5), ValueError, "gamma"),
    ("Step", dict(step_size=2, gamma=math.nan), ValueError, "gamma"),
    ("Step", dict(step_size=2, gamma=10 ** 400), ValueError, "gamma"),
    ("Cosine", dict(epochs=0), ValueError, "epochs"),
    ("Cosine", dict(epochs=5.0), TypeError, "epochs"),
    ("Cosine", dict(epochs=5, warmup=5), ValueError, "warmup"),
    ("Cosine", dict(epochs=5, warmup=-1), ValueError, "warmup"),
    ("Cosine", dict(epochs=5, min_lr=-0.1), ValueError, "min_lr"),
    ("Cosine", dict(epochs=5, min_lr=math.inf), ValueError, "min_lr"),
    ("InvScaling", dict(power_t=-0.5), ValueError, "power_t"),
    ("InvScaling", dict(power_t="0.5"), TypeError, "power_t"),
    ("InvScaling", dict(power_t=10 ** 400), ValueError, "power_t"),
    ("Adaptive", dict(factor=1.0), ValueError, "factor"),
    ("Adaptive", dict(factor=0.5), ValueError, "factor"),
    ("Adaptive", dict(factor=10 ** 400), ValueError, "factor"),
    ("Adaptive", dict(patience=-1), ValueError, "patience"),
    ("Adaptive", dict(patience=1.5), TypeError, "patience"),
    ("Adaptive", dict(tol=-1e-4), ValueError, "tol"),
    ("Adaptive", dict(min_lr=-1.0), ValueError, "min_lr"),
    ("Adaptive", dict(min_lr=True), TypeError, "min_lr"),
]


@pytest.mark.parametrize("schedule, kwargs, error, name", [
    pytest.param(*case, id=f"{case[0]}-" + "-".join(f"{k}={short(v)}" for k, v in case[1].items()))
    for case in BAD_SCHEDULES])
def test_bad_schedule_arguments_are_refused_naming_them(schedule, kwargs, error, name):
    with pytest.raises(error) as info:
        getattr(schedules, schedule)(**kwargs)
    assert names_argument(str(info.value), name), str(info.value)


def test_a_custom_schedule_works_but_cannot_be_saved(tmp_path):
    class Halving:
        name = "step"  # a name of fastbp's own must not pass for it

        def rate(self, base_lr, epoch, samples):
            return base_lr / 2 ** epoch

    model = model_of()
    opt = fastbp.SGD(model, lr=0.1, lr_schedule=Halving())
    opt.end_epoch(10, 1.0)
    assert opt.lr == 0.05
    with pytest.raises(TypeError, match="lr_schedule"):
        fastbp.save(model, tmp_path / "run.npz", optimizer=opt)
    assert not (tmp_path / "run.npz").exists()


@pytest.mark.parametrize("state, hyper_size", [
    ((2, 5), None),                 # too few columns for the model
    ((1, None), None),              # too few rows for Adam's moments
    ("float32", None),              # another dtype than the model's
    ((2, None), 4),                 # too short a hyper array
])
@pytest.mark.parametrize("how", ["apply_update", "train_step", "fit"])
def test_an_update_that_does_not_fit_the_model_is_refused(state, hyper_size, how, rng):
    """Compiled updates index hyper and state without bounds checks: the Python layer checks
    them first, whatever the optimizer that built them."""
    model = model_of()
    good = fastbp.Adam(model).update_spec()
    if state == "float32":
        state = good.state.astype(np.float32)
    else:
        rows, cols = state
        state = np.zeros((rows, model.n_params if cols is None else cols), model.dtype)
    hyper = good.hyper if hyper_size is None else good.hyper[:hyper_size].copy()
    spec = kernels.Update(kernels.ADAM_KIND, hyper, state)

    class Custom:
        def __init__(self):
            self.model = model

        def step(self):
            raise AssertionError("not called")

        def update_spec(self):
            return spec

    X, y = batches(rng, 1)[0]
    before = model.params.copy()
    with pytest.raises(TypeError, match="update: (state|hyper)"):
        if how == "apply_update":
            model.loss_and_grad(X, y)
            fastbp.optim.apply_update(model, spec)
        elif how == "train_step":
            fastbp.optim.train_step(model, spec, *model.engine.check_batch(X, y))
        else:
            fastbp.fit(model, X, y, Custom(), epochs=1, batch_size=4)
    assert np.array_equal(model.params, before)


def test_the_optimizers_model_cannot_be_swapped():
    opt = fastbp.Adam(model_of())
    with pytest.raises(AttributeError):
        opt.model = model_of(sizes=[5, 40, 30, 3])


def test_fit_resumed_within_an_epoch_is_the_uninterrupted_run(tmp_path):
    """initial_step: a run stopped 5 steps into its second epoch, saved and resumed, ends as
    the run that never stopped (parameters, state, steps and schedule position)."""
    X, y = blobs(n=90)

    def adam(model):
        return fastbp.Adam(model, lr=0.01, lr_schedule=schedules.InvScaling(0.3))
    whole = model_of()
    opt = adam(whole)
    fastbp.fit(whole, X, y, opt, epochs=3, batch_size=8, seed=4)

    class StopAfter:
        def __init__(self):
            self.steps = 0

        def on_step_end(self, epoch, step, loss, norm, model):
            self.steps += 1
            return self.steps == 12 + 5   # 12 steps an epoch

    part = model_of()
    part_opt = adam(part)
    history = fastbp.fit(part, X, y, part_opt, epochs=3, batch_size=8, seed=4,
                         callbacks=[StopAfter()])
    assert history.stop_reason == "callback" and part_opt.epochs_done == 1
    fastbp.save(part, tmp_path / "part.npz", optimizer=part_opt)
    model, loaded = fastbp.load_checkpoint(tmp_path / "part.npz")
    fastbp.fit(model, X, y, loaded, epochs=2, batch_size=8, seed=4, initial_epoch=1,
               initial_step=5)
    assert np.array_equal(model.params, whole.params)
    assert np.array_equal(loaded.state, opt.state) and loaded.steps == opt.steps
    assert loaded.samples_seen == opt.samples_seen and loaded.lr == opt.lr


def test_initial_epoch_and_step_are_checked():
    X, y = blobs(n=40)
    model = model_of()
    opt = fastbp.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match="initial_epoch"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=8, initial_epoch=1)
    with pytest.raises(ValueError, match="initial_step"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=8, initial_step=5)


def test_an_accumulation_longer_than_the_epoch_is_one_step_per_epoch():
    X, y = blobs(n=40)
    a, b = model_of(), model_of()
    fastbp.fit(a, X, y, fastbp.SGD(a, lr=0.1), epochs=2, batch_size=8, accumulate=2 ** 62,
               shuffle=False)
    fastbp.fit(b, X, y, fastbp.SGD(b, lr=0.1), epochs=2, batch_size=8, accumulate=5,
               shuffle=False)
    assert np.array_equal(a.params, b.params)
