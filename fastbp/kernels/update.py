"""Gradient norms, clipping and parameter updates over the flat buffers.

Gradient norms are summed per layer over fixed-size chunks (never per thread), so they, and the
clipping that uses them, are the same whatever the thread count.

The update stage: an optimizer describes its update to compiled code as an ``Update`` (kind,
hyper-parameters, state); the network's training step computes the gradients, then applies the
update of that kind (``network.apply_update``). Kinds: ``SGD_KIND`` (hyper = [lr, clip_norm],
no state).
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange

from ._config import INLINED, NORM_CHUNK, PARALLEL, SERIAL
from ._native import num_threads

Update = namedtuple("Update", ["kind", "hyper", "state"])
Update.__doc__ = """An optimizer's update, as compiled code takes it: kind (int), hyper (float64
array of its hyper-parameters), state (2-D array (n_buffers, P) of the parameters' dtype: its
per-parameter buffers, in the parameters' layout; 0 rows when it keeps none)."""

SGD_KIND = 0
#: The update kinds network.apply_update knows.
UPDATE_KINDS = (SGD_KIND,)


def sgd_spec(lr, clip_norm, dtype):
    """The Update of plain SGD with global-norm clipping (clip_norm = inf: none)."""
    return Update(SGD_KIND, np.array([lr, clip_norm], dtype=np.float64),
                  np.zeros((0, 0), dtype=dtype))


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
def clip_sgd_update(params, layer_sq, partials, grads, param_offsets, lr, clip_norm):
    """One SGD step with global-norm clipping. Returns (gradient norm before clipping, applied).

    The norm is sqrt of the total of layer_sums_of_squares (which also fills layer_sq, the
    per-layer sums of squares, in the same pass). When norm > clip_norm the step uses
    grads * clip_norm / (norm + 1e-6) (the rule of PyTorch's clip_grad_norm_); grads are not
    changed. Pass clip_norm = inf for no clipping.

    The step is not applied (params untouched, applied False) when the norm is NaN or Inf, or
    when the step itself could overflow the dtype: step size or step size times norm (the
    largest change any parameter can see) above half the dtype's largest finite value.
    """
    norm = math.sqrt(layer_sums_of_squares(layer_sq, partials, grads, param_offsets))
    if not math.isfinite(norm):
        return norm, False
    scale = 1.0
    coef = clip_norm / (norm + 1e-6)
    if coef < 1.0:
        scale = coef
    step = lr * scale
    limit = 0.5 * _largest(params)
    if not (step < limit and step * norm < limit):
        return norm, False
    sgd_update(params, grads, step)
    return norm, True


@njit(**INLINED)
def _largest(x):
    """Largest finite value of x's dtype."""
    if x.itemsize == 4:
        return 3.4028234663852886e38
    return 1.7976931348623157e308

