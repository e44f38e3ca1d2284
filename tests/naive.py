"""A deliberately plain NumPy float64 reference for MLPs: forward, losses, backward and clipped
SGD, written from the formulas and not from fastbp's code.

Conventions (the public contract of fastbp): layer l maps a (B, n_in) batch to (B, n_out) by
``a @ W + b`` with W of shape (n_in, n_out); the flat parameter vector holds, layer by layer, W in
row-major order and then b. Losses are means over the batch: softmax cross-entropy with integer
labels, MSE ``1/2 * sum_j (yhat_j - y_j)^2`` per sample, binary cross-entropy on logits
``sum_j -t_j log p_j - (1 - t_j) log(1 - p_j)``, p = sigmoid(logit), per sample, or Huber
``sum_j h(yhat_j - y_j)`` per sample, h(d) = d^2 / 2 for |d| <= 1, |d| - 1/2 beyond. An L2 penalty
``l2 / (2 B) * sum ||W||^2`` (weights only) may be added to the batch's mean loss. With sample
weights w (scikit-learn's definition) the mean is ``sum_i w_i loss_i / sum_i w_i`` and B in the
penalty is ``sum_i w_i``.

Everything is computed in float64, whatever the dtype of the inputs, one sample at a time where
that keeps the formulas obvious. Speed is not a goal.
"""
import math

import numpy as np

# -- parameter layout ---------------------------------------------------------------------------

def n_params(sizes):
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def unflatten(flat, sizes):
    """Flat vector -> lists of float64 weight (n_in, n_out) and bias (n_out,) copies."""
    flat = np.asarray(flat, dtype=np.float64)
    weights, biases, k = [], [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(flat[k:k + n_in * n_out].reshape(n_in, n_out).copy())
        k += n_in * n_out
        biases.append(flat[k:k + n_out].copy())
        k += n_out
    assert k == flat.size, "flat vector does not match sizes"
    return weights, biases


def flatten(weights, biases):
    parts = []
    for w, b in zip(weights, biases):
        parts.append(np.asarray(w, dtype=np.float64).ravel())
        parts.append(np.asarray(b, dtype=np.float64).ravel())
    return np.concatenate(parts)


# -- activations ----------------------------------------------------------------------------------
# Written from the textbook formulas, by name, not from fastbp.kernels.ACTIVATIONS (a test checks
# that every activation of that table has an entry here).

LEAKY_SLOPE = 0.01                      # PyTorch's default negative_slope
SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def sigmoid_scalar(z):
    # Written per branch so that exp never overflows.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def normal_cdf(z):
    """Phi(z) of the standard normal distribution, elementwise, float64."""
    return np.vectorize(lambda v: 0.5 * math.erfc(-v * SQRT_HALF), otypes=[np.float64])(z)


def normal_pdf(z):
    return INV_SQRT_2PI * np.exp(-0.5 * z * z)


# name -> (value(z), derivative(z)), both of float64 arrays, the derivative at the pre-activation
ACTIVATIONS = {
    "identity": (lambda z: z.copy(), np.ones_like),
    "relu": (lambda z: np.where(z > 0, z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "sigmoid": (np.vectorize(sigmoid_scalar, otypes=[np.float64]),
                lambda z: activation("sigmoid", z) * (1.0 - activation("sigmoid", z))),
    # libm's tanh, elementwise (NumPy's own can differ in the last bit)
    "tanh": (np.vectorize(math.tanh, otypes=[np.float64]),
             lambda z: 1.0 - activation("tanh", z) ** 2),
    "leaky_relu": (lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
                   lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE)),
    # exact GELU, z * Phi(z) (torch.nn.GELU() with approximate="none")
    "gelu": (lambda z: z * normal_cdf(z), lambda z: normal_cdf(z) + z * normal_pdf(z)),
}
#: Activations with a kink at 0, where finite differences are meaningless.
KINKED = ("relu", "leaky_relu")


def _entry(name):
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"naive: no reference for activation {name!r}") from None


def activation(name, z):
    """Elementwise activation of z, as a new float64 array."""
    z = np.asarray(z, dtype=np.float64)
    return np.asarray(_entry(name)[0](z), dtype=np.float64).reshape(z.shape)


def activation_derivative(name, z):
    """d act / d z at the pre-activation z (computed from z, not from the output)."""
    z = np.asarray(z, dtype=np.float64)
    return np.asarray(_entry(name)[1](z), dtype=np.float64).reshape(z.shape)


# -- losses ------------------------------------------------------------------------------------

def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    for i in range(logits.shape[0]):
        row = logits[i] - logits[i].max()
        e = np.exp(row)
        out[i] = e / e.sum()
    return out


def softmax_cross_entropy(logits, labels):
    """Per-sample losses (B,) and d(mean loss)/d logits (B, C), stable for any finite logits."""
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    losses = np.empty(n)
    grad = np.empty_like(logits)
    for i in range(n):
        top = logits[i].max()
        shifted = logits[i] - top
        log_total = math.log(np.exp(shifted).sum())
        losses[i] = log_total - shifted[labels[i]]
        p = np.exp(shifted - log_total)
        p[labels[i]] -= 1.0
        grad[i] = p / n
    return losses, grad


def mse(pred, target):
    """Per-sample 1/2 sum_j (pred - target)^2 (B,) and d(mean loss)/d pred (B, C)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(pred.shape)
    diff = pred - target
    return 0.5 * (diff * diff).sum(axis=1), diff / pred.shape[0]


def binary_cross_entropy(logits, target):
    """Per-sample sum_j of -t log p - (1 - t) log(1 - p), p = sigmoid(logit) (B,), and d(mean
    loss)/d logits = (p - t) / B (B, C). log p and log(1 - p) are written as -log(1 + e^-z) and
    -log(1 + e^z), by sign, so that no logarithm of 0 is taken."""
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(logits.shape)
    n, c = logits.shape
    losses = np.zeros(n)
    grad = np.empty_like(logits)
    for i in range(n):
        for j in range(c):
            z, t = float(logits[i, j]), float(target[i, j])
            log_p = -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))
            log_q = -z - math.log1p(math.exp(-z)) if z >= 0 else -math.log1p(math.exp(z))
            losses[i] += -t * log_p - (1.0 - t) * log_q
            grad[i, j] = (sigmoid_scalar(z) - t) / n
    return losses, grad


def huber(pred, target, delta=1.0):
    """Per-sample sum_j h(pred - target) (B,), h(d) = d^2 / 2 for |d| <= delta and delta
    (|d| - delta / 2) beyond, and d(mean loss)/d pred = clip(pred - target, -delta, delta) / B
    (B, C)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(pred.shape)
    n, c = pred.shape
    losses = np.zeros(n)
    grad = np.empty_like(pred)
    for i in range(n):
        for j in range(c):
            d = float(pred[i, j] - target[i, j])
            if abs(d) <= delta:
                losses[i] += 0.5 * d * d
                grad[i, j] = d / n
            else:
                losses[i] += delta * (abs(d) - 0.5 * delta)
                grad[i, j] = math.copysign(delta, d) / n
    return losses, grad


def _labels_cross_entropy(logits, labels):
    return softmax_cross_entropy(logits, np.asarray(labels))


#: Each loss by its name in fastbp: (output, target) -> (per-sample losses, d(mean loss)/d
#: output).
LOSSES = {"softmax_cross_entropy": _labels_cross_entropy, "mse": mse,
          "binary_cross_entropy": binary_cross_entropy, "huber": huber}


def l2_penalty(weights, l2, n_rows):
    """(l2 / (2 B)) * sum ||W||^2 and the gradients (l2 / B) * W, weights only."""
    value = l2 / (2.0 * n_rows) * sum(float((w * w).sum()) for w in weights)
    return value, [l2 / n_rows * w for w in weights]


# -- the network ---------------------------------------------------------------------------------

class Net:
    """Reference MLP. activations: one name per hidden layer; output_activation for the last."""

    def __init__(self, sizes, activations, output_activation="identity",
                 loss="softmax_cross_entropy", l2=0.0):
        self.sizes = list(sizes)
        if isinstance(activations, str):
            activations = [activations] * (len(sizes) - 2)
        self.acts = list(activations) + [output_activation]
        assert len(self.acts) == len(sizes) - 1
        self.loss = loss
        self.l2 = l2

    def forward(self, params, X):
        """Pre-activations zs and activations hs (hs[0] = X) of every layer, float64."""
        weights, biases = unflatten(params, self.sizes)
        h = np.asarray(X, dtype=np.float64)
        zs, hs = [], [h]
        for w, b, name in zip(weights, biases, self.acts):
            z = h @ w + b
            h = activation(name, z)
            zs.append(z)
            hs.append(h)
        return zs, hs

    def output(self, params, X):
        return self.forward(params, X)[1][-1]

    def loss_and_output_grad(self, output, y):
        if self.loss not in LOSSES:
            raise ValueError(f"the reference has no loss {self.loss!r}")
        return LOSSES[self.loss](output, y)

    def loss_value(self, params, X, y, sample_weight=None):
        """The objective: the (weighted) mean loss, plus the L2 penalty."""
        losses, _ = self.loss_and_output_grad(self.output(params, X), y)
        weights, _ = unflatten(params, self.sizes)
        sw, total = _sample_weights(sample_weight, losses.shape[0])
        return float((sw * losses).sum() / total) + l2_penalty(weights, self.l2, total)[0]

    def loss_and_grad(self, params, X, y, sample_weight=None):
        """(Weighted) mean loss and the flat float64 gradient (same layout as params), by the
        chain rule."""
        weights, _ = unflatten(params, self.sizes)
        zs, hs = self.forward(params, X)
        losses, d_out = self.loss_and_output_grad(hs[-1], y)
        sw, total = _sample_weights(sample_weight, losses.shape[0])
        if sample_weight is not None:
            # d_out is the mean's gradient, each row / B: the weighted mean's has w_i / total
            d_out = d_out * losses.shape[0] * (sw / total)[:, None]
        # delta = dL/dz of the current layer
        delta = d_out * activation_derivative(self.acts[-1], zs[-1])
        d_weights = [None] * len(weights)
        d_biases = [None] * len(weights)
        for layer in range(len(weights) - 1, -1, -1):
            d_weights[layer] = hs[layer].T @ delta
            d_biases[layer] = delta.sum(axis=0)
            if layer > 0:
                delta = (delta @ weights[layer].T) * activation_derivative(self.acts[layer - 1],
                                                                           zs[layer - 1])
        penalty, d_penalty = l2_penalty(weights, self.l2, total)
        d_weights = [d + p for d, p in zip(d_weights, d_penalty)]
        return float((sw * losses).sum() / total) + penalty, flatten(d_weights, d_biases)

    def min_abs_relu_preactivation(self, params, X):
        """Per sample: the smallest |z| over the units whose activation has a kink at 0 (ReLU,
        leaky ReLU: KINKED), inf if there are none."""
        zs, _ = self.forward(params, X)
        smallest = np.full(np.asarray(X).shape[0], np.inf)
        for z, name in zip(zs, self.acts):
            if name in KINKED:
                smallest = np.minimum(smallest, np.abs(z).min(axis=1))
        return smallest


def _sample_weights(sample_weight, n_rows):
    """(weights (B,) float64, their sum): ones and B without sample weights."""
    if sample_weight is None:
        return np.ones(n_rows), float(n_rows)
    sw = np.asarray(sample_weight, dtype=np.float64)
    return sw, float(sw.sum())


def clipped_sgd(params, grads, lr, clip_norm=None):
    """New params after one SGD step with global-norm clipping (the rule of PyTorch's
    clip_grad_norm_: scale = clip / (norm + 1e-6) when that is below 1), and the norm."""
    grads = np.asarray(grads, dtype=np.float64)
    norm = math.sqrt(sum(float(g) * float(g) for g in grads))
    scale = 1.0
    if clip_norm is not None:
        scale = min(1.0, clip_norm / (norm + 1e-6))
    return np.asarray(params, dtype=np.float64) - lr * scale * grads, norm


# -- finite differences -------------------------------------------------------------------------

def numeric_gradient(f, x, eps):
    """Fourth-order central differences of the scalar function f() with respect to every
    element of the array x, which f reads (x is perturbed in place and restored exactly)."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    grad = np.zeros(flat.size)
    for i in range(flat.size):
        original = flat[i]
        values = []
        for step in (2 * eps, eps, -eps, -2 * eps):
            flat[i] = original + step
            values.append(float(f()))
        flat[i] = original
        # Differences first: equal values give exactly 0, and nearly equal ones subtract exactly.
        grad[i] = (8 * (values[1] - values[2]) - (values[0] - values[3])) / (12 * eps)
    return grad.reshape(x.shape)


def max_relative_error(analytic, numeric, floor):
    """max |a - n| / max(|a|, |n|, floor): relative, except for values below floor."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    return float((np.abs(a - n) / scale).max())


def normwise_error(actual, expected):
    """max |actual - expected| / max |expected|: the error relative to the array's scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    diff = np.abs(actual - expected).max()
    if scale == 0:
        return float(diff)
    return float(diff / scale)
