"""Gradient norms, clipping and parameter updates over the flat buffers.

Gradient norms are summed per layer over fixed-size chunks (never per thread), so they, and the
clipping that uses them, are the same whatever the thread count.

The update stage: an optimizer describes its update to compiled code as an ``Update`` (kind,
hyper-parameters, state); the network's training step computes the gradients, then applies the
update of that kind (``network.apply_update``). Kinds and their hyper-parameters (float64, at
the indices named below; ``STEPS`` counts the updates applied and is advanced by the kernels):

- ``SGD_KIND`` (``sgd_step``): lr, clip_norm, steps, weight_decay, momentum, dampening,
  nesterov. State: the momentum buffer (1 row), none without momentum.
- ``ADAM_KIND`` (``adam_step``): lr, clip_norm, steps, weight_decay, beta1, beta2, eps, amsgrad,
  decoupled (AdamW's weight decay). State: first and second moments, and with amsgrad the
  running maximum of the second (2 or 3 rows).

The arithmetic is PyTorch's (torch.optim.SGD, Adam, AdamW, and clip_grad_norm_), operation for
operation, so that float64 runs agree with it to rounding.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ._config import ELEMENTWISE, INLINED, NORM_CHUNK, PARALLEL, SERIAL
from ._native import num_threads

Update = namedtuple("Update", ["kind", "hyper", "state"])
Update.__doc__ = """An optimizer's update, as compiled code takes it: kind (int), hyper (float64
array of its hyper-parameters), state (2-D array (n_buffers, P) of the parameters' dtype: its
per-parameter buffers, in the parameters' layout; 0 rows when it keeps none)."""

SGD_KIND = 0
ADAM_KIND = 1
#: The update kinds network.apply_update knows.
UPDATE_KINDS = (SGD_KIND, ADAM_KIND)

# Where each hyper-parameter sits in Update.hyper.
LR, CLIP_NORM, STEPS, WEIGHT_DECAY = 0, 1, 2, 3
MOMENTUM, DAMPENING, NESTEROV = 4, 5, 6                 # SGD_KIND
BETA1, BETA2, EPS, AMSGRAD, DECOUPLED = 4, 5, 6, 7, 8   # ADAM_KIND


#: Length of Update.hyper for each kind.
HYPER_SIZE = {SGD_KIND: 7, ADAM_KIND: 9}


def state_rows(kind, hyper):
    """Rows of Update.state an update of this kind and these hyper-parameters uses (plain
    Python: what the specs allocate, and what the Python layer checks before handing an
    Update to compiled code)."""
    if kind == SGD_KIND:
        return 1 if hyper[MOMENTUM] != 0 else 0
    return 3 if hyper[AMSGRAD] != 0 else 2


def _spec(kind, values, dtype, n_params):
    """An Update of this kind with these hyper-parameters ({index: value}) and zeroed state."""
    hyper = np.zeros(HYPER_SIZE[kind], dtype=np.float64)
    for index, value in values.items():
        hyper[index] = value
    return Update(kind, hyper, np.zeros((state_rows(kind, hyper), n_params), dtype=dtype))


def sgd_spec(lr, clip_norm, dtype, momentum=0.0, dampening=0.0, nesterov=False,
             weight_decay=0.0, n_params=0):
    """The Update of SGD (clip_norm = inf: no clipping); with momentum, its buffer for n_params
    parameters, zeroed (the first step fills it)."""
    return _spec(SGD_KIND, {LR: lr, CLIP_NORM: clip_norm, WEIGHT_DECAY: weight_decay,
                            MOMENTUM: momentum, DAMPENING: dampening,
                            NESTEROV: float(nesterov)}, dtype, n_params)


def adam_spec(lr, clip_norm, dtype, n_params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              amsgrad=False, decoupled=False):
    """The Update of Adam (decoupled: AdamW), with zeroed moments for n_params parameters."""
    return _spec(ADAM_KIND, {LR: lr, CLIP_NORM: clip_norm, WEIGHT_DECAY: weight_decay,
                             BETA1: betas[0], BETA2: betas[1], EPS: eps,
                             AMSGRAD: float(amsgrad), DECOUPLED: float(decoupled)},
                 dtype, n_params)


@njit(**INLINED)
def _layer_chunks(param_offsets, layer):
    return max(1, (param_offsets[layer + 1] - param_offsets[layer] + NORM_CHUNK - 1)
               // NORM_CHUNK)


@njit(**SERIAL)
def norm_partials_size(param_offsets):
    """Length of the float64 scratch array that layer_sums_of_squares needs."""
    total = 0
    for layer in range(param_offsets.shape[0] - 1):
        total += _layer_chunks(param_offsets, layer)
    return total


@njit(**SERIAL)
def _chunk(param_offsets, chunk):
    """(start, stop, layer) of a chunk: chunks never straddle two layers."""
    first = 0
    for layer in range(param_offsets.shape[0] - 1):
        n = _layer_chunks(param_offsets, layer)
        if chunk < first + n:
            start = param_offsets[layer] + (chunk - first) * NORM_CHUNK
            return start, min(start + NORM_CHUNK, param_offsets[layer + 1]), layer
        first += n
    return 0, 0, -1


@njit(**SERIAL)
def _sum_of_squares(x):
    """Sum of x**2 in float64. Squares are summed in x's dtype over blocks of 512 (many
    vector lanes of a few terms each: a relative error near 1e-7 in float32), the blocks in
    float64. Adding every square straight into a float64 total was 2.7x slower (measured)."""
    total = 0.0
    for b0 in range(0, x.shape[0], 512):
        block = x[b0:b0 + 512]
        partial = x.dtype.type(0)
        for i in range(block.shape[0]):
            partial += block[i] * block[i]
        total += partial
    return total


@njit(**PARALLEL)
def layer_sums_of_squares(layer_sq, partials, grads, param_offsets):
    """Sum of squares of each layer's block of a flat gradient, in one pass; returns the total.

    layer_sq (L,) float64: per layer; partials: float64 scratch of
    norm_partials_size(param_offsets); grads (P,); param_offsets (L+1,) int64: layer l owns
    grads[param_offsets[l]:param_offsets[l+1]] (pass [0, P] for one block).
    """
    n_chunks = norm_partials_size(param_offsets)
    if n_chunks < 2 * num_threads():
        for c in range(n_chunks):
            start, stop, _ = _chunk(param_offsets, c)
            partials[c] = _sum_of_squares(grads[start:stop])
    else:
        for c in prange(n_chunks):
            start, stop, _ = _chunk(param_offsets, c)
            partials[c] = _sum_of_squares(grads[start:stop])
    # A loop, not layer_sq[:] = 0: in a parallel=True function that array expression becomes a
    # parallel region of its own (1.7 us a call, measured).
    for layer in range(layer_sq.shape[0]):
        layer_sq[layer] = 0.0
    total = 0.0
    for c in range(n_chunks):
        _, _, layer = _chunk(param_offsets, c)
        layer_sq[layer] += partials[c]
        total += partials[c]
    return total


@njit(**SERIAL)
def _axpy(y, alpha, x):
    """y -= alpha * x (1-D, same length)."""
    for i in range(y.shape[0]):
        y[i] -= alpha * x[i]


@njit(**PARALLEL)
def sgd_update(params, grads, step):
    """params (P,) -= step * grads (P,), in place."""
    step_ = params.dtype.type(step)
    n_chunks = (params.shape[0] + NORM_CHUNK - 1) // NORM_CHUNK
    if n_chunks < 2 * num_threads():
        _axpy(params, step_, grads)
        return
    for c in prange(n_chunks):
        chunk = slice(c * NORM_CHUNK, (c + 1) * NORM_CHUNK)
        _axpy(params[chunk], step_, grads[chunk])


@njit(**SERIAL)
def add_scaled(total, x, weight):
    """total (P,) += weight * x (P,), in place (gradient accumulation). One thread: a pass over
    memory that a parallel loop would barely speed up, and cheap to compile into a caller."""
    _axpy(total, total.dtype.type(-weight), x)


@njit(**SERIAL)
def _clip_scale(norm, clip_norm):
    """The factor clip_grad_norm_ multiplies the gradients by."""
    coef = clip_norm / (norm + 1e-6)
    return coef if coef < 1.0 else 1.0


@njit(**SERIAL)
def _sgd_chunk(p, g, buf, scale, lr, weight_decay, momentum, one_minus_dampening, nesterov,
               first):
    """torch.optim.SGD's update of one chunk, on the clipped gradient g * scale. buf: the
    momentum buffer (unused without momentum)."""
    for i in range(p.shape[0]):
        d = g[i] * scale
        if weight_decay != 0:
            d = d + weight_decay * p[i]
        if momentum != 0:
            b = d if first else buf[i] * momentum + one_minus_dampening * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] = p[i] - lr * d


@njit(**PARALLEL)
def _sgd_pass(params, grads, buf, scale, hyper, first):
    t = params.dtype.type
    args = (t(scale), t(hyper[LR]), t(hyper[WEIGHT_DECAY]), t(hyper[MOMENTUM]),
            t(1.0 - hyper[DAMPENING]), hyper[NESTEROV] != 0, first)
    n_chunks = (params.shape[0] + NORM_CHUNK - 1) // NORM_CHUNK
    if n_chunks < 2 * num_threads():
        _sgd_chunk(params, grads, buf, *args)
        return
    for c in prange(n_chunks):
        chunk = slice(c * NORM_CHUNK, (c + 1) * NORM_CHUNK)
        _sgd_chunk(params[chunk], grads[chunk], buf[chunk], *args)   # buf may be empty


@njit(**SERIAL)
def sgd_step(params, layer_sq, partials, grads, param_offsets, hyper, state):
    """One torch.optim.SGD step (momentum, dampening, Nesterov, weight decay as L2) on the
    gradient clipped as by clip_grad_norm_ (hyper and state: an sgd_spec Update's). Returns
    (gradient norm before clipping, applied); advances hyper[STEPS] when applied.

    The norm is sqrt of the total of layer_sums_of_squares (which also fills layer_sq, the
    per-layer sums of squares, in the same pass). When norm > clip_norm the step uses
    grads * clip_norm / (norm + 1e-6); grads are not changed (clip_norm = inf: no clipping).
    The step is not applied (nothing changes) when the norm is NaN or Inf, or when the step
    could overflow the dtype: lr, or lr times the clipped norm (the largest change the gradient
    can make to a parameter), above half the dtype's largest finite value.
    """
    norm = math.sqrt(layer_sums_of_squares(layer_sq, partials, grads, param_offsets))
    scale = _clip_scale(norm, hyper[CLIP_NORM])
    limit = 0.5 * _largest(params)
    applied = (math.isfinite(norm) and hyper[LR] < limit
               and hyper[LR] * scale * norm < limit)
    if applied:
        buf = state[0] if state.shape[0] > 0 else params[:0]
        _sgd_pass(params, grads, buf, scale, hyper, hyper[STEPS] == 0)
        hyper[STEPS] += 1
    return norm, applied


@njit(**ELEMENTWISE)
def _adam_chunk(p, g, m, v, vmax, scale, weight_decay, decay, one_minus_beta1, beta2,
                one_minus_beta2, eps, step_size, bc2_sqrt, amsgrad):
    """torch.optim.Adam's update of one chunk, on g * scale; AdamW's with decay = 1 - lr * its
    weight decay and weight_decay = 0 (Adam: decay = 1). Written without branches on them
    (multiplying by 1 and adding 0 * p change nothing), so that the loop vectorises."""
    for i in range(p.shape[0]):
        pi = p[i]
        d = g[i] * scale + weight_decay * pi
        mi = m[i] + one_minus_beta1 * (d - m[i])     # torch's lerp, for weights below 0.5
        vi = v[i] * beta2 + one_minus_beta2 * d * d
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = vi if vi > vmax[i] else vmax[i]
            vmax[i] = vi
        p[i] = pi * decay + step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@njit(**PARALLEL)
def _adam_pass(params, grads, state, scale, hyper):
    t = params.dtype.type
    steps = hyper[STEPS] + 1
    lr, beta1, beta2 = hyper[LR], hyper[BETA1], hyper[BETA2]
    decay = 1.0 - lr * hyper[WEIGHT_DECAY] if hyper[DECOUPLED] != 0 else 1.0
    weight_decay = 0.0 if hyper[DECOUPLED] != 0 else hyper[WEIGHT_DECAY]
    amsgrad = hyper[AMSGRAD] != 0
    args = (t(scale), t(weight_decay), t(decay), t(1.0 - beta1), t(beta2), t(1.0 - beta2),
            t(hyper[EPS]), t(-lr / (1.0 - beta1 ** steps)), t(math.sqrt(1.0 - beta2 ** steps)),
            amsgrad)
    vmax = state[2] if amsgrad else state[1]
    n_chunks = (params.shape[0] + NORM_CHUNK - 1) // NORM_CHUNK
    if n_chunks < 2 * num_threads():
        _adam_chunk(params, grads, state[0], state[1], vmax, *args)
        return
    for c in prange(n_chunks):
        chunk = slice(c * NORM_CHUNK, (c + 1) * NORM_CHUNK)
        _adam_chunk(params[chunk], grads[chunk], state[0][chunk], state[1][chunk], vmax[chunk],
                    *args)


@njit(**SERIAL)
def adam_step(params, layer_sq, partials, grads, param_offsets, hyper, state):
    """One torch.optim.Adam step (hyper[DECOUPLED]: AdamW; hyper[AMSGRAD]: AMSGrad) on the
    gradient clipped as by clip_grad_norm_ (hyper and state: an adam_spec Update's). Returns
    (gradient norm before clipping, applied); advances hyper[STEPS] when applied. Refused
    (nothing changed) when the norm is NaN or Inf, or when the clipped gradient's square, or
    the largest change its step could make, would overflow the dtype."""
    norm = math.sqrt(layer_sums_of_squares(layer_sq, partials, grads, param_offsets))
    scale = _clip_scale(norm, hyper[CLIP_NORM])
    largest = _largest(params)
    biggest = scale * norm   # no gradient entry is larger
    steps = hyper[STEPS] + 1
    step_size = hyper[LR] / (1.0 - hyper[BETA1] ** steps)
    applied = (math.isfinite(norm) and biggest < math.sqrt(0.25 * largest)
               and step_size * (biggest + hyper[EPS]) / hyper[EPS] < 0.5 * largest)
    if applied:
        _adam_pass(params, grads, state, scale, hyper)
        hyper[STEPS] = steps
    return norm, applied


@njit(**INLINED)
def _largest(x):
    """Largest finite value of x's dtype."""
    if x.itemsize == 4:
        return 3.4028234663852886e38
    return 1.7976931348623157e308

