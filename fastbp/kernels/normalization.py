"""Layer and batch normalisation: forward and backward kernels.

Both normalise z (B, N) to xhat = (z - mean) * rstd, rstd = 1 / sqrt(var + eps) with the biased
variance, then out = gamma * xhat + beta with a learned scale gamma (N,) and shift beta (N,).
Layer normalisation takes the mean and variance of each row over its N features (PyTorch's
``nn.LayerNorm(N)``); batch normalisation those of each feature over the B rows of the batch
when training, and running estimates of them when inferring (``nn.BatchNorm1d(N)``: the
running variance is updated with the unbiased batch variance, by momentum).

Sums accumulate in the dtype (float64 for float64 models), as PyTorch's CPU kernels do for
float32; column sums go straight into the arrays they are written to. Rows are split between
threads for layer normalisation, features (columns) for batch normalisation and for the scale
and shift gradients of both: each sum is one thread's, in a fixed order, so results do not
depend on the thread count.
"""
import math

from numba import njit, prange, types
from numba.extending import overload

from ._checks import arguments, require
from ._config import INLINED, PARALLEL, SERIAL
from .activations import as_type_of
from ._tiling import n_tiles, span

#: nn.LayerNorm's and nn.BatchNorm1d's defaults.
NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1


@njit(**SERIAL)
def _layer_norm_rows(out, xhat, rstd, inp, gamma, beta, eps, r0, r1):
    n = inp.shape[1]
    for i in range(r0, r1):
        z, x, o = inp[i], xhat[i], out[i]
        # Sums in the dtype (as PyTorch's CPU kernel): float64 ones, converting each float32
        # value, ran 2x slower.
        total = as_type_of(z[0], 0.0)
        for j in range(n):
            total += z[j]
        mean = as_type_of(z[0], total / n)
        var = as_type_of(z[0], 0.0)
        for j in range(n):
            d = z[j] - mean
            var += d * d
        r = as_type_of(z[0], 1.0 / math.sqrt(var / n + eps))
        _normalise(x, z, mean, r)
        for j in range(n):
            o[j] = gamma[j] * x[j] + beta[j]
        rstd[i] = r


@njit(**INLINED)
def _normalise(x, z, mean, r):
    """x = (z - mean) * r, for a row (mean and r scalars) or a row's columns (arrays)."""
    # In place, as one array: LLVM's overlap check of two arrays that are one sends the loop
    # to its scalar version (here 1.5x slower).
    if x.ctypes.data == z.ctypes.data:
        for j in range(x.shape[0]):
            x[j] = (x[j] - _at(mean, j)) * _at(r, j)
    else:
        for j in range(x.shape[0]):
            x[j] = (z[j] - _at(mean, j)) * _at(r, j)


def _at(value, j):
    """value[j] for an array, value for a scalar."""
    raise NotImplementedError("compiled code only")


@overload(_at, inline="always")
def _at_impl(value, j):
    if isinstance(value, types.Array):
        return lambda value, j: value[j]
    return lambda value, j: value


@njit(**PARALLEL)
def layer_norm_forward(out, xhat, rstd, inp, gamma, beta, eps=NORM_EPS):
    """Layer normalisation of each row of inp (B, N): xhat (B, N) and rstd (B,) (kept for the
    backward pass) and out (B, N) = gamma (N,) * xhat + beta (N,). xhat may be inp, and out
    may be xhat or inp (each row is read whole before it is written). Refused: other shapes,
    N = 0, eps <= 0."""
    _layer_norm_forward_arguments(out, xhat, rstd, inp, gamma, beta, eps)
    n_rows, n_cols = inp.shape
    require(n_cols > 0, "layer_norm_forward: inp must have at least one column (N > 0)")
    require(out.shape == inp.shape and xhat.shape == inp.shape,
            "layer_norm_forward: out and xhat must be (B, N) as inp")
    require(rstd.shape[0] == n_rows, "layer_norm_forward: rstd must have B elements")
    require(gamma.shape[0] == n_cols and beta.shape[0] == n_cols,
            "layer_norm_forward: gamma and beta must have N elements")
    require(eps > 0, "layer_norm_forward: eps must be > 0")
    tiles = n_tiles(n_rows, 4 * inp.shape[1])
    if tiles == 1:
        _layer_norm_rows(out, xhat, rstd, inp, gamma, beta, eps, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _layer_norm_rows(out, xhat, rstd, inp, gamma, beta, eps, r0, r1)


@njit(**INLINED)
def _column_tiles(n_rows, n_cols):
    """Column tiles for a pass that sums over the rows: one per thread, at least 16 columns
    each (a cache line of float32)."""
    return min(n_tiles(n_cols, 6 * n_rows), max(1, n_cols // 16))


@njit(**SERIAL)
def _scale_shift_grads(dgamma, dbeta, dout, xhat, c0, c1):
    """dgamma[c0:c1] = column sums of dout * xhat, dbeta[c0:c1] = those of dout."""
    # Slices and one sum per loop: with both sums in one loop over whole rows, the loop did not
    # vectorise (5x slower).
    g, b = dgamma[c0:c1], dbeta[c0:c1]
    g[:] = 0
    b[:] = 0
    for i in range(dout.shape[0]):   # row by row, in memory order
        d, x = dout[i, c0:c1], xhat[i, c0:c1]
        for j in range(g.shape[0]):
            g[j] += d[j] * x[j]
        for j in range(b.shape[0]):
            b[j] += d[j]


@njit(**PARALLEL)
def _scale_shift_backward(dgamma, dbeta, dout, xhat):
    n_cols = dout.shape[1]
    tiles = _column_tiles(dout.shape[0], n_cols)
    if tiles == 1:
        _scale_shift_grads(dgamma, dbeta, dout, xhat, 0, n_cols)
        return
    for t in prange(tiles):
        c0, c1 = span(t, tiles, n_cols)
        _scale_shift_grads(dgamma, dbeta, dout, xhat, c0, c1)


@njit(**SERIAL)
def _layer_norm_backward_rows(dinp, dgamma, dbeta, dout, xhat, rstd, gamma, r0, r1):
    """Rows r0..r1-1 of dinp; with dgamma and dbeta of N elements (else empty), also their
    column sums over those rows, in row order as _scale_shift_grads adds them (so one thread
    running every row gets its bits while reading each row once)."""
    n = dout.shape[1]
    sums = dgamma.shape[0] > 0
    if sums:
        dgamma[:] = 0
        dbeta[:] = 0
    for i in range(r0, r1):
        d, x, g = dout[i], xhat[i], dinp[i]
        mean_d = as_type_of(d[0], 0.0)   # (in the dtype, as _layer_norm_rows's sums)
        mean_dx = as_type_of(d[0], 0.0)
        for j in range(n):
            dx = d[j] * gamma[j]
            mean_d += dx
            mean_dx += dx * x[j]
        if sums:
            for j in range(n):
                dgamma[j] += d[j] * x[j]
            for j in range(n):
                dbeta[j] += d[j]
        mean_d = as_type_of(d[0], mean_d / n)
        mean_dx = as_type_of(d[0], mean_dx / n)
        r = rstd[i]
        if g.ctypes.data == d.ctypes.data:   # (one array, as in _normalise)
            for j in range(n):
                g[j] = r * (g[j] * gamma[j] - mean_d - x[j] * mean_dx)
        else:
            for j in range(n):
                g[j] = r * (d[j] * gamma[j] - mean_d - x[j] * mean_dx)


@njit(**PARALLEL)
def layer_norm_backward(dinp, dgamma, dbeta, dout, xhat, rstd, gamma):
    """Backward of layer_norm_forward, given dout (B, N) = dL/dout: dgamma (N,) and dbeta (N,)
    (overwritten) and dinp (B, N) = dL/dinp. dinp may be dout. Refused: other shapes, N = 0."""
    _layer_norm_backward_arguments(dinp, dgamma, dbeta, dout, xhat, rstd, gamma)
    n_rows, n_cols = dout.shape
    require(n_cols > 0, "layer_norm_backward: dout must have at least one column (N > 0)")
    require(dinp.shape == dout.shape and xhat.shape == dout.shape,
            "layer_norm_backward: dinp and xhat must be (B, N) as dout")
    require(rstd.shape[0] == n_rows, "layer_norm_backward: rstd must have B elements")
    require(gamma.shape[0] == n_cols and dgamma.shape[0] == n_cols and dbeta.shape[0] == n_cols,
            "layer_norm_backward: gamma, dgamma and dbeta must have N elements")
    tiles = n_tiles(n_rows, 4 * dout.shape[1])
    if tiles == 1:
        _layer_norm_backward_rows(dinp, dgamma, dbeta, dout, xhat, rstd, gamma, 0, n_rows)
        return
    _scale_shift_backward(dgamma, dbeta, dout, xhat)
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _layer_norm_backward_rows(dinp, dgamma[:0], dbeta[:0], dout, xhat, rstd, gamma, r0,
                                  r1)


@njit(**SERIAL)
def _batch_norm_columns(out, xhat, mean, rstd, running_mean, running_var, inp, gamma, beta,
                        update_running, eps, momentum, c0, c1):
    """Columns c0..c1-1 of batch_norm_forward (mean and rstd hold a column's sums until they
    are final)."""
    n_rows = inp.shape[0]
    m, v = mean[c0:c1], rstd[c0:c1]   # (slices: the loops vectorise, see _scale_shift_grads)
    m[:] = 0.0
    v[:] = 0.0
    for i in range(n_rows):
        z = inp[i, c0:c1]
        for j in range(m.shape[0]):
            m[j] += z[j]
    for j in range(m.shape[0]):
        m[j] /= n_rows
    for i in range(n_rows):
        z = inp[i, c0:c1]
        for j in range(m.shape[0]):
            d = z[j] - m[j]
            v[j] += d * d
    for j in range(c0, c1):
        var = rstd[j] / n_rows
        if update_running and n_rows > 1:
            running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean[j]
            running_var[j] = ((1.0 - momentum) * running_var[j]
                              + momentum * var * n_rows / (n_rows - 1.0))
        rstd[j] = 1.0 / math.sqrt(var + eps)
    r, g, b = rstd[c0:c1], gamma[c0:c1], beta[c0:c1]
    for i in range(n_rows):
        x, o = xhat[i, c0:c1], out[i, c0:c1]
        _normalise(x, inp[i, c0:c1], m, r)
        for j in range(m.shape[0]):
            o[j] = g[j] * x[j] + b[j]


@njit(**PARALLEL)
def batch_norm_forward(out, xhat, mean, rstd, running_mean, running_var, inp, gamma, beta,
                       update_running, eps=NORM_EPS, momentum=BATCH_NORM_MOMENTUM):
    """Batch normalisation of inp (B, N) with the batch's statistics (training): mean (N,) and
    rstd (N,) of each feature over the B rows, xhat (B, N) (both kept for the backward
    pass) and out (B, N) = gamma * xhat + beta. With update_running (and B > 1), the running
    estimates running_mean (N,) and running_var (N,) float64 move by momentum towards the
    batch's mean and unbiased variance (var * B / (B - 1)), as nn.BatchNorm1d does. xhat may
    be inp and out may be xhat or inp. Refused: other shapes, B = 0, eps <= 0, momentum
    outside [0, 1]."""
    _batch_norm_forward_arguments(out, xhat, mean, rstd, running_mean, running_var, inp, gamma,
                                  beta, update_running, eps, momentum)
    n_rows, n_cols = inp.shape
    require(n_rows > 0, "batch_norm_forward: inp must have at least one row (B > 0)")
    require(out.shape == inp.shape and xhat.shape == inp.shape,
            "batch_norm_forward: out and xhat must be (B, N) as inp")
    require(mean.shape[0] == n_cols and rstd.shape[0] == n_cols
            and gamma.shape[0] == n_cols and beta.shape[0] == n_cols,
            "batch_norm_forward: mean, rstd, gamma and beta must have N elements")
    require(running_mean.shape[0] == n_cols and running_var.shape[0] == n_cols,
            "batch_norm_forward: running_mean and running_var must have N elements")
    require(eps > 0, "batch_norm_forward: eps must be > 0")
    require(0 <= momentum <= 1, "batch_norm_forward: momentum must be in [0, 1]")
    tiles = _column_tiles(n_rows, n_cols)
    if tiles == 1:
        _batch_norm_columns(out, xhat, mean, rstd, running_mean, running_var, inp, gamma, beta,
                            update_running, eps, momentum, 0, n_cols)
        return
    for t in prange(tiles):
        c0, c1 = span(t, tiles, n_cols)
        _batch_norm_columns(out, xhat, mean, rstd, running_mean, running_var, inp, gamma, beta,
                            update_running, eps, momentum, c0, c1)


@njit(**SERIAL)
def _batch_norm_inference_rows(out, inp, gamma, beta, running_mean, running_var, eps, r0, r1):
    for i in range(r0, r1):
        z, o = inp[i], out[i]
        for j in range(z.shape[0]):
            o[j] = ((z[j] - running_mean[j]) / math.sqrt(running_var[j] + eps) * gamma[j]
                    + beta[j])


@njit(**PARALLEL)
def batch_norm_inference(out, inp, gamma, beta, running_mean, running_var, eps=NORM_EPS):
    """Batch normalisation of inp (B, N) with the running estimates (inference, nn.BatchNorm1d's
    eval()): out (B, N) = (inp - running_mean) / sqrt(running_var + eps) * gamma + beta. out
    may be inp. Refused: other shapes, eps <= 0."""
    _batch_norm_inference_arguments(out, inp, gamma, beta, running_mean, running_var, eps)
    n_rows, n_cols = inp.shape
    require(out.shape == inp.shape, "batch_norm_inference: out must be (B, N) as inp")
    require(gamma.shape[0] == n_cols and beta.shape[0] == n_cols
            and running_mean.shape[0] == n_cols and running_var.shape[0] == n_cols,
            "batch_norm_inference: gamma, beta, running_mean and running_var must have N "
            "elements")
    require(eps > 0, "batch_norm_inference: eps must be > 0")
    tiles = n_tiles(n_rows, 4 * inp.shape[1])
    if tiles == 1:
        _batch_norm_inference_rows(out, inp, gamma, beta, running_mean, running_var, eps, 0,
                                   n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _batch_norm_inference_rows(out, inp, gamma, beta, running_mean, running_var, eps, r0,
                                   r1)


@njit(**SERIAL)
def _batch_norm_backward_columns(dinp, dgamma, dbeta, dout, xhat, rstd, gamma, c0, c1):
    _scale_shift_grads(dgamma, dbeta, dout, xhat, c0, c1)
    n_rows = dout.shape[0]
    gm, r, dg, db = gamma[c0:c1], rstd[c0:c1], dgamma[c0:c1], dbeta[c0:c1]
    in_place = dinp.ctypes.data == dout.ctypes.data   # (one array, as in _normalise)
    for i in range(n_rows):
        d, x, g = dout[i, c0:c1], xhat[i, c0:c1], dinp[i, c0:c1]
        if in_place:
            for j in range(g.shape[0]):
                g[j] = gm[j] * r[j] / n_rows * (n_rows * g[j] - db[j] - x[j] * dg[j])
        else:
            for j in range(g.shape[0]):
                g[j] = gm[j] * r[j] / n_rows * (n_rows * d[j] - db[j] - x[j] * dg[j])


@njit(**PARALLEL)
def batch_norm_backward(dinp, dgamma, dbeta, dout, xhat, rstd, gamma):
    """Backward of batch_norm_forward, given dout (B, N) = dL/dout: dgamma (N,) and dbeta (N,)
    (overwritten) and dinp (B, N) = dL/dinp through the batch's statistics. dinp may be
    dout. Refused: other shapes."""
    _batch_norm_backward_arguments(dinp, dgamma, dbeta, dout, xhat, rstd, gamma)
    n_rows, n_cols = dout.shape
    require(dinp.shape == dout.shape and xhat.shape == dout.shape,
            "batch_norm_backward: dinp and xhat must be (B, N) as dout")
    require(rstd.shape[0] == n_cols and gamma.shape[0] == n_cols
            and dgamma.shape[0] == n_cols and dbeta.shape[0] == n_cols,
            "batch_norm_backward: rstd, gamma, dgamma and dbeta must have N elements")
    tiles = _column_tiles(n_rows, n_cols)
    if tiles == 1:
        _batch_norm_backward_columns(dinp, dgamma, dbeta, dout, xhat, rstd, gamma, 0, n_cols)
        return
    for t in prange(tiles):
        c0, c1 = span(t, tiles, n_cols)
        _batch_norm_backward_columns(dinp, dgamma, dbeta, dout, xhat, rstd, gamma, c0, c1)


# Their arguments' kinds (element by element, by Numba's indexing: any strides will do).
_layer_norm_forward_arguments = arguments(
    "layer_norm_forward", any_layout=True, out="matrix", xhat="matrix", rstd="vector",
    inp="matrix", gamma="vector", beta="vector", eps="number")
_layer_norm_backward_arguments = arguments(
    "layer_norm_backward", any_layout=True, dinp="matrix", dgamma="vector", dbeta="vector",
    dout="matrix", xhat="matrix", rstd="vector", gamma="vector")
_batch_norm_forward_arguments = arguments(
    "batch_norm_forward", any_layout=True, out="matrix", xhat="matrix", mean="vector",
    rstd="vector", running_mean="float64s", running_var="float64s", inp="matrix",
    gamma="vector", beta="vector", update_running="flag", eps="number", momentum="number")
_batch_norm_inference_arguments = arguments(
    "batch_norm_inference", any_layout=True, out="matrix", inp="matrix", gamma="vector",
    beta="vector", running_mean="float64s", running_var="float64s", eps="number")
_batch_norm_backward_arguments = arguments(
    "batch_norm_backward", any_layout=True, dinp="matrix", dgamma="vector", dbeta="vector",
    dout="matrix", xhat="matrix", rstd="vector", gamma="vector")
