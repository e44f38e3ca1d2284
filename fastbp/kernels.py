"""Compiled forward and backward kernels for multilayer perceptrons.

Every kernel is a Numba ``@njit`` function that writes into outputs given by the caller (outputs
first, read-only inputs next, scalars last) and allocates nothing, so it can be called from
Python or from a user's own ``@njit`` code. Each works in float32 and in float64; the arrays of
one call must share one dtype. 2-D arrays must have unit stride along their last axis (rows may be
strided); 1-D arrays must be contiguous. They run fastest on arrays that start on a cache line
(``aligned_zeros`` makes them).

Shapes: B = batch rows, C = input features, OC = output features (classes for the losses).

Activation codes (module constants, usable inside ``@njit`` code): ``IDENTITY``, ``RELU``,
``SIGMOID``, ``TANH``. Backward kernels take the activation's *output*, not its input, since
every derivative here is a function of the output: relu' = [a > 0], sigmoid' = a(1 - a),
tanh' = 1 - a^2.

Parallelism: matrix products are split into a grid of output tiles, one per thread, each tile
one call of single-threaded BLAS followed by its fused epilogue (bias and activation, or the
activation's derivative); row-wise passes are ``prange`` over row tiles. A forward product with
far more inputs than batch rows is split over its inputs instead, when given a scratch buffer
for the second half's partial sums (``dense_forward``). Work too small to repay waking a thread
runs serially, outside any parallel region. Weight gradients are split over their own elements,
so every element of dW is one thread's whole sum over the batch. No element is written by two
threads, and the split depends only on the shapes, the thread count and the scratch given, so
results are bitwise reproducible at a fixed thread count.

Precision: matrix products and the sums over the batch in dW and db accumulate in the working
dtype, as BLAS does. In float32 that is fine for batches up to a few thousand rows; beyond that,
or for very long reductions, use float64. Losses and the softmax denominator accumulate in
float64; the softmax's float32 exp is a polynomial (it vectorises), within 1 ulp of the
correctly rounded value; gradient norms sum squares in the working dtype over blocks of 512, and
the blocks in float64.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ._native import float64_from_bits, gemm, matrix_view, num_threads, rows_view

__all__ = [
    "IDENTITY", "RELU", "SIGMOID", "TANH",
    "dense_forward", "dense_backward",
    "activation_forward", "activation_backward",
    "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "softmax_forward", "softmax_cross_entropy_forward_backward", "mse_forward_backward",
    "softmax_cross_entropy_loss", "mse_loss",
    "layer_sums_of_squares", "sgd_update", "clip_sgd_update", "norm_partials_size",
    "Net", "Workspace", "make_net", "make_workspace", "plan_activations", "aligned_zeros",
    "mlp_forward", "mlp_loss", "mlp_loss_and_grad", "mlp_train_step", "mlp_train_epoch",
    "take_rows",
    "all_finite", "labels_in_range", "gemm",
]

IDENTITY, RELU, SIGMOID, TANH = 0, 1, 2, 3

# The one place that sets floating-point flags. reassoc lets reductions vectorise (the order is
# fixed at compile time, so results stay deterministic). Left out: nnan and ninf, so that NaN and
# Inf still propagate and the checks for them keep working; arcp and contract, with which the
# code Numba compiles in-process and the code it reloads from its cache differed in the last bit
# (so a fresh process and a cached one would not agree bitwise).
_FASTMATH = {"nsz", "reassoc"}
_SERIAL = dict(cache=True, nogil=True, fastmath=_FASTMATH)
_PARALLEL = dict(_SERIAL, parallel=True)
_INLINED = dict(_SERIAL, inline="always")

# Multiply-adds a tile must hold before it is worth waking another thread for it: entering a
# parallel region costs about 2 us on 2 threads and 8 us on 16 (measured), ~6 us of GEMM work.
MIN_TILE_WORK = 1 << 18
# Elements per chunk of the parallel norm. Fixed (not per thread) so that the norm, and the
# clipping that uses it, do not depend on the thread count.
NORM_CHUNK = 1 << 14


@njit(**_INLINED)
def _n_tiles(n_rows, work_per_row):
    """Row tiles for a row-wise pass: one per thread, but none so small that waking a thread
    costs more than it saves. 1 means: run serially, without entering a parallel region."""
    by_work = (n_rows * work_per_row) // MIN_TILE_WORK
    return max(1, min(num_threads(), n_rows, by_work))


@njit(**_INLINED)
def _span(tile, n_tiles, n):
    """[start, stop) of a tile, as int64 whatever tile's type (a prange index is unsigned, and
    each argument type would compile the callers' tile functions again)."""
    tile = np.int64(tile)
    return tile * n // n_tiles, (tile + 1) * n // n_tiles


@njit(**_SERIAL)
def _grid(n_rows, n_cols, depth, n_threads):
    """(row tiles, column tiles) for a matrix product with an (n_rows, n_cols) output and
    depth-long dot products. Uses n_threads tiles (fewer if the product is small) and,
    among the splits into that many, the one that makes BLAS read and pack the least: each
    column tile re-reads the left operand (n_rows x depth) and each row tile the right one
    (depth x n_cols)."""
    n = max(1, min(n_threads, (n_rows * n_cols * depth) // MIN_TILE_WORK))
    best_rows, best_cols = 1, 1
    best_tiles, best_cost = 0, 0
    for rows in range(1, min(n, n_rows) + 1):
        cols = min(n // rows, n_cols)
        cost = cols * n_rows + rows * n_cols
        if rows * cols > best_tiles or (rows * cols == best_tiles and cost < best_cost):
            best_rows, best_cols, best_tiles, best_cost = rows, cols, rows * cols, cost
    return best_rows, best_cols


# ---------------------------------------------------------------------------------------------
# Activations (serial row kernels, used inside the parallel ones)


@njit(**_SERIAL)
def _sigmoid(v):
    # Two branches so that exp never sees a large positive argument: no overflow, no warning.
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)
    return e / (1 + e)


# Tile kernels work on out[r0:r1, c0:c1]. Three things make their loops vectorise, each worth
# 3-10x (measured on 32 x 128 and 256 x 1024 tiles): they branch on the activation once per tile,
# outside the loops; they walk each row as a slice (z[i, c0:c1]) indexed from 0 (indexing z[i, j]
# with j from a runtime c0 makes Numba handle negative j on every access, which LLVM cannot
# vectorise); and when output and input are one buffer they read and write through one array
# (two arguments that alias fail LLVM's overlap check, and the scalar fallback runs).


@njit(**_SERIAL)
def _bias_activation_tile(z, bias, activation, r0, r1, c0, c1):
    """z[r0:r1, c0:c1] := act(z + bias[c0:c1]), in place."""
    zero = z.dtype.type(0)
    b = bias[c0:c1]
    if activation == RELU:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                v = row[j] + b[j]
                row[j] = zero if v < 0 else v  # NaN passes through, as it must
    elif activation == SIGMOID:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] = _sigmoid(row[j] + b[j])
    elif activation == TANH:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] = math.tanh(row[j] + b[j])
    else:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] += b[j]


@njit(**_SERIAL)
def _activation_tile(out, inp, activation, r0, r1, c0, c1):
    """out[r0:r1, c0:c1] := act(inp[r0:r1, c0:c1]); out may be inp."""
    if out.ctypes.data == inp.ctypes.data:
        _activation_inplace_tile(out, activation, r0, r1, c0, c1)
        return
    zero = out.dtype.type(0)
    if activation == RELU:
        for i in range(r0, r1):
            o, x = out[i, c0:c1], inp[i, c0:c1]
            for j in range(x.shape[0]):
                v = x[j]
                o[j] = zero if v < 0 else v
    elif activation == SIGMOID:
        for i in range(r0, r1):
            o, x = out[i, c0:c1], inp[i, c0:c1]
            for j in range(x.shape[0]):
                o[j] = _sigmoid(x[j])
    elif activation == TANH:
        for i in range(r0, r1):
            o, x = out[i, c0:c1], inp[i, c0:c1]
            for j in range(x.shape[0]):
                o[j] = math.tanh(x[j])
    else:
        for i in range(r0, r1):
            o, x = out[i, c0:c1], inp[i, c0:c1]
            for j in range(x.shape[0]):
                o[j] = x[j]


@njit(**_SERIAL)
def _activation_inplace_tile(z, activation, r0, r1, c0, c1):
    """z[r0:r1, c0:c1] := act(z), in place."""
    zero = z.dtype.type(0)
    if activation == RELU:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                v = row[j]
                row[j] = zero if v < 0 else v
    elif activation == SIGMOID:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] = _sigmoid(row[j])
    elif activation == TANH:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] = math.tanh(row[j])


@njit(**_SERIAL)
def _activation_grad_tile(d, out, activation, r0, r1, c0, c1):
    """d[r0:r1, c0:c1] *= act'(.), expressed through the activation's output out, in place
    (see the note above: through separate input and output arguments that are one buffer, this
    ran 7x slower)."""
    zero = d.dtype.type(0)
    if activation == RELU:
        for i in range(r0, r1):
            g, a = d[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                v = g[j]  # loaded unconditionally, so that the select vectorises
                g[j] = v if a[j] > 0 else zero
    elif activation == SIGMOID:
        for i in range(r0, r1):
            g, a = d[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                g[j] *= a[j] * (1 - a[j])
    elif activation == TANH:
        for i in range(r0, r1):
            g, a = d[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                g[j] *= 1 - a[j] * a[j]


@njit(**_SERIAL)
def _activation_backward_tile(dinp, dout, out, activation, r0, r1, c0, c1):
    """dinp[r0:r1, c0:c1] := dout * act'(.); dinp may be dout."""
    if dinp.ctypes.data == dout.ctypes.data:
        _activation_grad_tile(dinp, out, activation, r0, r1, c0, c1)
        return
    zero = dinp.dtype.type(0)
    if activation == RELU:
        for i in range(r0, r1):
            g, d, a = dinp[i, c0:c1], dout[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                v = d[j]
                g[j] = v if a[j] > 0 else zero
    elif activation == SIGMOID:
        for i in range(r0, r1):
            g, d, a = dinp[i, c0:c1], dout[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                g[j] = d[j] * (a[j] * (1 - a[j]))
    elif activation == TANH:
        for i in range(r0, r1):
            g, d, a = dinp[i, c0:c1], dout[i, c0:c1], out[i, c0:c1]
            for j in range(g.shape[0]):
                g[j] = d[j] * (1 - a[j] * a[j])
    else:
        for i in range(r0, r1):
            g, d = dinp[i, c0:c1], dout[i, c0:c1]
            for j in range(g.shape[0]):
                g[j] = d[j]


@njit(**_PARALLEL)
def activation_forward(out, inp, activation):
    """out (B, N) = act(inp (B, N)) for an activation code; out may be inp."""
    n_rows = inp.shape[0]
    n_tiles = _n_tiles(n_rows, 8 * inp.shape[1])
    if n_tiles == 1:
        r0, r1 = _span(0, 1, n_rows)
        _activation_tile(out, inp, activation, r0, r1, 0, inp.shape[1])
        return
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        _activation_tile(out, inp, activation, r0, r1, 0, inp.shape[1])


@njit(**_PARALLEL)
def activation_backward(dinp, dout, out, activation):
    """dinp (B, N) = dout (B, N) * act'(z), where out (B, N) = act(z); dinp may be dout."""
    n_rows = out.shape[0]
    n_tiles = _n_tiles(n_rows, 2 * out.shape[1])
    if n_tiles == 1:
        r0, r1 = _span(0, 1, n_rows)
        _activation_backward_tile(dinp, dout, out, activation, r0, r1, 0, out.shape[1])
        return
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        _activation_backward_tile(dinp, dout, out, activation, r0, r1, 0, out.shape[1])


@njit(**_SERIAL)
def relu_forward(out, inp):
    """out (B, N) = max(inp, 0); NaN stays NaN."""
    activation_forward(out, inp, RELU)


@njit(**_SERIAL)
def relu_backward(dinp, dout, out):
    """dinp (B, N) = dout where out > 0, else 0; out is relu_forward's output."""
    activation_backward(dinp, dout, out, RELU)


@njit(**_SERIAL)
def sigmoid_forward(out, inp):
    """out (B, N) = 1 / (1 + exp(-inp)), without overflow for any finite input."""
    activation_forward(out, inp, SIGMOID)


@njit(**_SERIAL)
def sigmoid_backward(dinp, dout, out):
    """dinp (B, N) = dout * out * (1 - out); out is sigmoid_forward's output."""
    activation_backward(dinp, dout, out, SIGMOID)


@njit(**_SERIAL)
def tanh_forward(out, inp):
    """out (B, N) = tanh(inp)."""
    activation_forward(out, inp, TANH)


@njit(**_SERIAL)
def tanh_backward(dinp, dout, out):
    """dinp (B, N) = dout * (1 - out^2); out is tanh_forward's output."""
    activation_backward(dinp, dout, out, TANH)


# ---------------------------------------------------------------------------------------------
# Dense layer


@njit(**_SERIAL)
def _dense_forward_tile(out, inp, weight, bias, activation, r0, r1, c0, c1):
    """out[r0:r1, c0:c1] of dense_forward."""
    gemm(out[r0:r1, c0:c1], inp[r0:r1], weight[:, c0:c1], 1.0, 0.0, False, False)
    _bias_activation_tile(out, bias, activation, r0, r1, c0, c1)


@njit(**_SERIAL)
def _splits_input(n_rows, n_in, n_out, n_threads, scratch_size):
    """Whether dense_forward also splits its product over the input features, in two halves.
    Worth it when weight is much larger than the output (n_in > 2 * threads * n_rows): each
    thread then reads half of weight's rows and half of inp's columns, not a slice of weight's
    every row and all of inp, and one pass adds the two partial outputs. On 784-256-128-10
    b128, 2 threads, steps ran 7% faster; on 784-1024-1024-10 b256, which fails the test, it
    was 5% slower (measured)."""
    return (scratch_size >= n_rows * n_out and n_threads >= 2
            and n_in > 2 * n_threads * n_rows and n_rows * n_in * n_out >= 2 * MIN_TILE_WORK)


@njit(**_PARALLEL)
def _dense_forward_split_input(out, partial, inp, weight, bias, activation):
    """dense_forward as two half products over the input features (each split over output
    columns between half the threads), into out and partial (B, OC); then out += partial,
    bias and activation, over row tiles."""
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    n_threads = num_threads()
    n_cols = max(1, min(n_threads // 2, n_out))
    for t in prange(2 * n_cols):
        k0, k1 = _span(t // n_cols, 2, n_in)
        c0, c1 = _span(t % n_cols, n_cols, n_out)
        dst = out if t < n_cols else partial
        gemm(dst[:, c0:c1], inp[:, k0:k1], weight[k0:k1, c0:c1], 1.0, 0.0, False, False)
    n_tiles = min(n_threads, n_rows)
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        for i in range(r0, r1):
            row, part = out[i], partial[i]
            for j in range(row.shape[0]):
                row[j] += part[j]
        c0, c1 = _span(0, 1, n_out)
        _bias_activation_tile(out, bias, activation, r0, r1, c0, c1)


@njit(**_PARALLEL)
def dense_forward(out, inp, weight, bias, activation, scratch=None):
    """out (B, OC) = act(inp (B, C) @ weight (C, OC) + bias (OC,)).

    The output is split into a grid of tiles, one per thread; bias and activation are applied
    to each tile right after its matrix product, while it is still in cache.
    scratch: optional 1-D C-contiguous buffer of the dtype, overlapping no other argument (its
    contents are overwritten). When it holds B * OC elements, on 2 or more threads, a product of
    at least 2 * MIN_TILE_WORK multiply-adds with far more inputs than batch rows (C > 2 *
    threads * B) is split over the inputs instead: two half products, the second into scratch,
    then one pass adds them and applies bias and activation. Results then differ in the last
    bits from a call without scratch.
    """
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    n_threads = num_threads()
    if scratch is not None:
        if _splits_input(n_rows, n_in, n_out, n_threads, scratch.shape[0]):
            _dense_forward_split_input(out, matrix_view(scratch, 0, n_rows, n_out), inp, weight,
                                       bias, activation)
            return
    grid_rows, grid_cols = _grid(n_rows, n_out, n_in, n_threads)
    n_tiles = grid_rows * grid_cols
    if n_tiles == 1:
        r0, r1 = _span(0, 1, n_rows)
        c0, c1 = _span(0, 1, n_out)
        _dense_forward_tile(out, inp, weight, bias, activation, r0, r1, c0, c1)
        return
    for t in prange(n_tiles):
        r0, r1 = _span(t // grid_cols, grid_rows, n_rows)
        c0, c1 = _span(t % grid_cols, grid_cols, n_out)
        _dense_forward_tile(out, inp, weight, bias, activation, r0, r1, c0, c1)


@njit(**_SERIAL)
def _weight_grad_tile(dweight, dbias, dpre, inp, r0, r1, c0, c1):
    """dweight[r0:r1, c0:c1]; the tiles of the first row (r0 == 0) also do dbias[c0:c1]."""
    gemm(dweight[r0:r1, c0:c1], inp[:, r0:r1], dpre[:, c0:c1], 1.0, 0.0, True, False)
    if r0 == 0:
        b = dbias[c0:c1]
        for j in range(b.shape[0]):  # not b[:] = 0, which compiles a shape check and its message
            b[j] = 0
        for i in range(dpre.shape[0]):  # row by row: memory is read in order
            row = dpre[i, c0:c1]
            for j in range(row.shape[0]):
                b[j] += row[j]


@njit(**_SERIAL)
def _input_grad_tile(dinp, dpre, weight, inp, inp_activation, r0, r1, c0, c1):
    """dinp[r0:r1, c0:c1]."""
    gemm(dinp[r0:r1, c0:c1], dpre[r0:r1], weight[c0:c1], 1.0, 0.0, False, True)
    _activation_grad_tile(dinp, inp, inp_activation, r0, r1, c0, c1)


@njit(**_PARALLEL)
def dense_backward(dinp, dweight, dbias, dpre, inp, weight, inp_activation):
    """Backward of dense_forward, given dpre (B, OC) = dL/d(inp @ weight + bias).

    dweight (C, OC) = inp^T @ dpre and dbias (OC,) = column sums of dpre (both overwritten).
    dinp (B, C) = (dpre @ weight^T) * act'(.), where inp = act(previous pre-activation) for the
    activation code inp_activation: that is the previous layer's dpre. Pass IDENTITY to get the
    plain dL/d(inp). Pass a dinp with zero rows to skip it (first layer).
    Reads inp (B, C) and weight (C, OC).

    dW, db and dinp tiles run in one parallel region. dW is split over its own elements, so each
    is one thread's whole sum over the batch: no races and no partial buffers.
    """
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    # With both products to do, each gets half the threads: on 2 cores, the two whole products
    # side by side ran 5-8% faster than each split in halves (fewer, larger BLAS calls).
    w_threads = num_threads() if dinp.shape[0] == 0 else max(1, num_threads() // 2)
    w_rows, w_cols = _grid(n_in, n_out, n_rows, w_threads)
    n_weight_tiles = w_rows * w_cols
    i_rows, i_cols = 1, 1
    if dinp.shape[0] > 0:
        i_rows, i_cols = _grid(n_rows, n_in, n_out, max(1, num_threads() - w_threads))
    n_input_tiles = i_rows * i_cols if dinp.shape[0] > 0 else 0
    n_tasks = n_weight_tiles + n_input_tiles
    if num_threads() == 1 or n_tasks == 1 or (
            n_tasks == 2 and n_rows * n_in * n_out < MIN_TILE_WORK):
        k0, k1 = _span(0, 1, n_in)
        c0, c1 = _span(0, 1, n_out)
        _weight_grad_tile(dweight, dbias, dpre, inp, k0, k1, c0, c1)
        if n_input_tiles:
            r0, r1 = _span(0, 1, n_rows)
            _input_grad_tile(dinp, dpre, weight, inp, inp_activation, r0, r1, k0, k1)
        return
    for t in prange(n_weight_tiles + n_input_tiles):
        if t < n_weight_tiles:
            r0, r1 = _span(t // w_cols, w_rows, n_in)
            c0, c1 = _span(t % w_cols, w_cols, n_out)
            _weight_grad_tile(dweight, dbias, dpre, inp, r0, r1, c0, c1)
        else:
            u = t - n_weight_tiles
            r0, r1 = _span(u // i_cols, i_rows, n_rows)
            c0, c1 = _span(u % i_cols, i_cols, n_in)
            _input_grad_tile(dinp, dpre, weight, inp, inp_activation, r0, r1, c0, c1)


# ---------------------------------------------------------------------------------------------
# Losses. Each returns the mean loss over the batch, summed in float64 in row order.


# Row helpers take the 2-D array and a row number: on rows as short as these (10 logits),
# indexing x[i, j] from 0 was 1.3-1.7x faster than slicing out the row x[i] first (measured).


@njit(**_SERIAL)
def _row_max(x, i):
    top = x[i, 0]
    for j in range(1, x.shape[1]):
        if x[i, j] > top:
            top = x[i, j]
    return top


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@njit(**_INLINED)
def _exp_float32(x):
    """exp(x) for float32, in code LLVM can inline and vectorise (libm's expf is an opaque
    call). In float64: x = k ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^8
    (relative error below 3e-10, far under float32's half ulp), 2^k from its bit pattern; then
    rounded to float32. NaN passes through; it saturates to 0 below -120 and to inf above 100,
    where float32 has nothing left either way."""
    v = np.float64(x)
    v = v if not (v < -120.0) else -120.0  # written so that NaN is kept
    v = v if not (v > 100.0) else 100.0
    k = math.floor(v * _LOG2E + 0.5)
    k = k if k == k else 0.0  # NaN: any exponent will do, r carries the NaN
    r = v - k * _LN2
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (
        1 / 120 + r * (1 / 720 + r * (1 / 5040 + r * (1 / 40320))))))))
    return np.float32(p * float64_from_bits((np.int64(k) + 1023) << 52))


@njit(**_SERIAL)
def _exp_rows(x, r0, r1):
    """x[r0:r1] := exp(x[r0:r1]), in place; as one flat loop when those rows are contiguous."""
    if x.strides[1] == x.itemsize and x.strides[0] == x.shape[1] * x.itemsize:
        _exp_inplace(rows_view(x, r0, r1))
        return
    for i in range(r0, r1):
        _exp_inplace(x[i])


@njit(**_SERIAL)
def _exp_inplace(x):
    """x (N,) := exp(x)."""
    if x.itemsize == 4:
        for k in range(x.shape[0]):
            x[k] = _exp_float32(x[k])
    else:
        for k in range(x.shape[0]):
            x[k] = math.exp(x[k])


@njit(**_SERIAL)
def _shift_rows(out, x, r0, r1):
    """out[i] := x[i] - max(x[i]) for rows r0..r1-1; out may be x."""
    for i in range(r0, r1):
        top = _row_max(x, i)
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] - top


@njit(**_INLINED)
def _normalise_row(x, i, scale):
    """x[i] *= scale / sum(x[i]); returns the sum (float64)."""
    total = 0.0
    for j in range(x.shape[1]):
        total += x[i, j]
    inv = scale / total
    for j in range(x.shape[1]):
        x[i, j] *= inv
    return total


@njit(**_INLINED)
def _softmax_ce_rows(dlogits, losses, logits, labels, scale, r0, r1):
    """Rows r0..r1-1 of the fused softmax cross-entropy (scale = 1/B). In passes over the whole
    span, not row by row, so that the exponentials run as one vectorised loop: 1.1 us instead of
    2.8 us for the whole kernel on 32 x 10 logits (measured)."""
    for i in range(r0, r1):
        # Before dlogits, which may be logits, is written; in float64, as the log is added.
        # exp(x - max) <= 1: no overflow.
        losses[i] = np.float64(_row_max(logits, i)) - logits[i, labels[i]]
    _shift_rows(dlogits, logits, r0, r1)
    _exp_rows(dlogits, r0, r1)
    for i in range(r0, r1):
        losses[i] += math.log(_normalise_row(dlogits, i, scale))
        dlogits[i, labels[i]] -= scale


@njit(**_PARALLEL)
def softmax_cross_entropy_forward_backward(dlogits, losses, logits, labels):
    """Fused softmax + cross-entropy, forward and backward in one pass over the logits.

    losses (B,) = logsumexp(logits_i) - logits_i[labels_i]; dlogits (B, OC) = (softmax(logits)
    - onehot(labels)) / B, the gradient of the mean loss. logits (B, OC); labels (B,) integers in
    [0, OC), not checked here (see labels_in_range). dlogits may be logits. Returns the mean loss.
    """
    n_rows = logits.shape[0]
    scale = 1.0 / n_rows
    n_tiles = _n_tiles(n_rows, 8 * logits.shape[1])
    if n_tiles == 1:
        _softmax_ce_rows(dlogits, losses, logits, labels, scale, 0, n_rows)
        return _mean(losses)
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        _softmax_ce_rows(dlogits, losses, logits, labels, scale, r0, r1)
    return _mean(losses)


@njit(**_SERIAL)
def softmax_cross_entropy_loss(losses, logits, labels):
    """losses (B,) as in softmax_cross_entropy_forward_backward, no gradient; returns the mean.
    (The same operations, but the sum of exponentials may be added in another order: the two
    can differ by about 1e-16 of the largest term.)"""
    for i in range(logits.shape[0]):
        top = _row_max(logits, i)
        total = 0.0
        if logits.itemsize == 4:
            for j in range(logits.shape[1]):
                total += _exp_float32(logits[i, j] - top)
        else:
            for j in range(logits.shape[1]):
                total += math.exp(logits[i, j] - top)
        losses[i] = (np.float64(top) - logits[i, labels[i]]) + math.log(total)
    return _mean(losses)


@njit(**_SERIAL)
def softmax_forward(probs, logits):
    """probs (B, OC) = softmax of each row of logits (B, OC); probs may be logits."""
    n_rows = logits.shape[0]
    _shift_rows(probs, logits, 0, n_rows)
    _exp_rows(probs, 0, n_rows)
    for i in range(n_rows):
        _normalise_row(probs, i, 1.0)


@njit(**_PARALLEL)
def mse_forward_backward(dpred, losses, pred, target):
    """losses (B,) = 1/2 sum_j (pred - target)^2; dpred (B, OC) = (pred - target) / B.

    pred, target (B, OC); dpred may be pred. Returns the mean loss.
    """
    n_rows = pred.shape[0]
    scale = 1.0 / n_rows
    n_tiles = _n_tiles(n_rows, 4 * pred.shape[1])
    if n_tiles == 1:
        _mse_rows(dpred, losses, pred, target, scale)
        return _mean(losses)
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        _mse_rows(dpred[r0:r1], losses[r0:r1], pred[r0:r1], target[r0:r1], scale)
    return _mean(losses)


@njit(**_SERIAL)
def _mse_rows(dpred, losses, pred, target, scale):
    for i in range(pred.shape[0]):
        total = 0.0
        for j in range(pred.shape[1]):
            diff = pred[i, j] - target[i, j]
            total += diff * diff
            dpred[i, j] = diff * scale
        losses[i] = 0.5 * total


@njit(**_SERIAL)
def mse_loss(losses, pred, target):
    """losses (B,) as in mse_forward_backward, no gradient; returns the mean."""
    for i in range(pred.shape[0]):
        total = 0.0
        for j in range(pred.shape[1]):
            diff = pred[i, j] - target[i, j]
            total += diff * diff
        losses[i] = 0.5 * total
    return _mean(losses)


@njit(**_SERIAL)
def _mean(x):
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i]
    return total / x.shape[0]


# ---------------------------------------------------------------------------------------------
# Optimizer. Gradient norms are summed per layer over fixed-size chunks (never per thread), so
# they, and the clipping that uses them, are the same whatever the thread count.


@njit(**_SERIAL)
def _layer_chunks(param_offsets, layer):
    return max(1, (param_offsets[layer + 1] - param_offsets[layer] + NORM_CHUNK - 1)
               // NORM_CHUNK)


@njit(**_SERIAL)
def norm_partials_size(param_offsets):
    """Length of the float64 scratch array that layer_sums_of_squares needs."""
    total = 0
    for layer in range(param_offsets.shape[0] - 1):
        total += _layer_chunks(param_offsets, layer)
    return total


@njit(**_SERIAL)
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


@njit(**_SERIAL)
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


@njit(**_PARALLEL)
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


@njit(**_SERIAL)
def _axpy(y, alpha, x):
    """y -= alpha * x (1-D, same length)."""
    for i in range(y.shape[0]):
        y[i] -= alpha * x[i]


@njit(**_PARALLEL)
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


@njit(**_INLINED)
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


@njit(**_SERIAL)
def _largest(x):
    """Largest finite value of x's dtype."""
    if x.itemsize == 4:
        return 3.4028234663852886e38
    return 1.7976931348623157e308


# ---------------------------------------------------------------------------------------------
# Whole network.
#
# Net describes the network (make_net builds it): sizes (L+1,), activations (L,) codes,
# param_offsets (L+1,) where layer l's W (C, OC) row-major then b (OC,) start in the flat
# parameter vector, capacity (rows the buffers hold), checkpoint_every (k) and act_offsets (L,),
# where each layer's output starts in the flat activation buffer.
#
# Activations: with k = 1 every layer's output is kept. With k > 1 only every k-th layer's
# output (and the last one's) is kept; the others share a "segment" area at the end of the
# buffer, written during the forward pass and recomputed from the segment's kept input during
# the backward pass. Memory: capacity * (kept widths + the widest segment) instead of
# capacity * (all widths); time: one more forward pass over the layers not kept, less the last
# segment, which is still in place when the backward pass starts.
#
# Workspace holds the buffers a step writes: acts, deltas (two halves of capacity * max width,
# used in turn during the backward pass), per-sample losses (capacity,) float64, layer_sq (L,)
# float64 (per-layer squared gradient norms of the last step) and partials (norm scratch).

Net = namedtuple("Net", ["sizes", "activations", "param_offsets", "capacity",
                         "checkpoint_every", "act_offsets"])
Workspace = namedtuple("Workspace", ["acts", "deltas", "losses", "layer_sq", "partials"])


@njit(**_SERIAL)
def _is_kept(layer, n_layers, checkpoint_every):
    return (layer + 1) % checkpoint_every == 0 or layer == n_layers - 1


@njit(**_SERIAL)
def plan_activations(act_offsets, sizes, capacity, checkpoint_every):
    """Fill act_offsets (L,) with where each layer's output starts in the flat activation
    buffer; returns the buffer's length. See the Net comment for the layout."""
    n_layers = sizes.shape[0] - 1
    kept = 0
    for layer in range(n_layers):
        if _is_kept(layer, n_layers, checkpoint_every):
            act_offsets[layer] = kept
            kept += capacity * sizes[layer + 1]
    widest_segment = 0
    segment = 0
    for layer in range(n_layers):
        if _is_kept(layer, n_layers, checkpoint_every):
            segment = 0
        else:
            act_offsets[layer] = kept + segment
            segment += capacity * sizes[layer + 1]
            widest_segment = max(widest_segment, segment)
    return kept + widest_segment


def make_net(sizes, activations, capacity, checkpoint_every=1):
    """Build a Net (plain Python; call it outside compiled code). Returns (net, acts_size)."""
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    activations = np.ascontiguousarray(activations, dtype=np.int64)
    param_offsets = np.zeros(sizes.shape[0], dtype=np.int64)
    param_offsets[1:] = np.cumsum((sizes[:-1] + 1) * sizes[1:])
    act_offsets = np.zeros(activations.shape[0], dtype=np.int64)
    acts_size = plan_activations(act_offsets, sizes, capacity, checkpoint_every)
    return Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets), \
        acts_size


CACHE_LINE = 64


def aligned_zeros(shape, dtype):
    """A C-contiguous array of zeros whose data starts on a cache-line boundary (plain Python).

    NumPy's large arrays start 16 bytes past one, so every row of a weight matrix and many
    vector loads straddle two lines; on aligned buffers a 784-256-128-10 step ran 8% faster
    (2 threads) and a 64-128-10 step 7% faster (measured). The model's parameters, gradients and
    workspace are allocated with it; use it for buffers you pass to the kernels yourself.
    """
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(n_bytes + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n_bytes].view(dtype).reshape(shape)


def make_workspace(net, acts_size, dtype):
    """Allocate the Workspace a Net needs (plain Python)."""
    n_layers = net.activations.shape[0]
    return Workspace(aligned_zeros(acts_size, dtype),
                     aligned_zeros(2 * net.capacity * int(net.sizes[1:].max()), dtype),
                     np.empty(net.capacity, dtype=np.float64),
                     np.zeros(n_layers, dtype=np.float64),
                     np.empty(norm_partials_size(net.param_offsets), dtype=np.float64))


@njit(**_INLINED)
def _layer_params(params, net, layer):
    start = net.param_offsets[layer]
    n_in, n_out = net.sizes[layer], net.sizes[layer + 1]
    weight = matrix_view(params, start, n_in, n_out)
    bias = params[start + n_in * n_out:start + (n_in + 1) * n_out]
    return weight, bias


@njit(**_INLINED)
def _layer_output(acts, net, n_rows, layer):
    return matrix_view(acts, net.act_offsets[layer], n_rows, net.sizes[layer + 1])


@njit(**_INLINED)
def _delta_half(deltas, half):
    """Half 0 or 1 of the delta buffer, as a flat view."""
    size = deltas.shape[0] // 2
    return deltas[half * size:(half + 1) * size]


@njit(**_INLINED)
def _delta(deltas, n_rows, width, half):
    return matrix_view(_delta_half(deltas, half), 0, n_rows, width)


@njit(**_INLINED)
def _forward_layers(acts, params, x, net, first, stop, scratch):
    """Layers first..stop-1, reading layer first-1's output (x when first == 0). scratch: as
    dense_forward's (an empty one for none: one compiled version serves both)."""
    n_rows = x.shape[0]
    for layer in range(first, stop):
        inp = x if layer == 0 else _layer_output(acts, net, n_rows, layer - 1)
        weight, bias = _layer_params(params, net, layer)
        dense_forward(_layer_output(acts, net, n_rows, layer), inp, weight, bias,
                      net.activations[layer], scratch)


@njit(**_INLINED)
def _forward(acts, params, x, net, scratch):
    """mlp_forward with a scratch for dense_forward (see _forward_layers)."""
    n_layers = net.activations.shape[0]
    _forward_layers(acts, params, x, net, 0, n_layers, scratch)
    return _layer_output(acts, net, x.shape[0], n_layers - 1)


@njit(**_INLINED)
def mlp_forward(acts, params, x, net):
    """Forward pass of a whole MLP; returns the output view (B, sizes[-1]) into acts.
    x (B, sizes[0]) with B <= net.capacity; acts: the Workspace's activation buffer."""
    return _forward(acts, params, x, net, acts[:0])


def _loss_and_output_grad(dout, losses, output, target, output_activation):
    """Mean loss, and dL/d(last pre-activation) into dout. The target's type picks the loss:
    integer labels (B,) for softmax cross-entropy, values (B, OC) for MSE (whose gradient then
    goes through the output activation; softmax-CE's output activation is the identity)."""
    raise NotImplementedError("compiled code only")


@overload(_loss_and_output_grad, jit_options=_SERIAL)
def _loss_and_output_grad_impl(dout, losses, output, target, output_activation):
    if target.ndim == 1:
        def softmax_ce(dout, losses, output, target, output_activation):
            return softmax_cross_entropy_forward_backward(dout, losses, output, target)
        return softmax_ce

    def mse(dout, losses, output, target, output_activation):
        loss = mse_forward_backward(dout, losses, output, target)
        if output_activation != IDENTITY:
            activation_backward(dout, dout, output, output_activation)
        return loss
    return mse


def _batch_loss(losses, output, target):
    """Mean loss without gradient; the target's type picks the loss (as above)."""
    raise NotImplementedError("compiled code only")


@overload(_batch_loss, jit_options=_SERIAL)
def _batch_loss_impl(losses, output, target):
    if target.ndim == 1:
        return lambda losses, output, target: softmax_cross_entropy_loss(losses, output, target)
    return lambda losses, output, target: mse_loss(losses, output, target)


@njit(**_INLINED)
def mlp_loss(work, params, x, target, net):
    """Mean loss of the batch (forward only). target: integer labels (B,) for softmax
    cross-entropy, values (B, OC) for MSE; the per-sample losses go to work.losses. Its forward
    pass splits products as mlp_loss_and_grad's does, so the two losses agree to rounding."""
    output = _forward(work.acts, params, x, net, work.deltas)
    return _batch_loss(work.losses[:x.shape[0]], output, target)


@njit(**_INLINED)
def mlp_loss_and_grad(grads, work, params, x, target, net):
    """Forward and backward of a whole MLP; overwrites grads (same layout as params) and
    returns the mean loss. With net.checkpoint_every = k > 1, each segment of k layers but the
    last is recomputed from its kept input just before its backward pass."""
    acts, deltas = work.acts, work.deltas
    n_rows = x.shape[0]
    n_layers = net.activations.shape[0]
    k = net.checkpoint_every
    # deltas are free until the loss gradient is written: the forward pass's scratch.
    output = _forward(acts, params, x, net, deltas)
    dpre = _delta(deltas, n_rows, net.sizes[n_layers], 0)
    loss = _loss_and_output_grad(dpre, work.losses[:n_rows], output, target,
                                 net.activations[n_layers - 1])
    half = 0
    for layer in range(n_layers - 1, -1, -1):
        segment_start = layer - layer % k
        if k > 1 and layer % k == k - 1 and layer < n_layers - 1:
            # Entering a new segment from its top: recompute the outputs it did not keep.
            # The scratch is the half of deltas that dpre is not in: free until dinp is
            # written. (Big enough for the same input splits as the first pass, so the
            # recomputed outputs are bitwise the first ones.)
            _forward_layers(acts, params, x, net, segment_start, layer,
                            _delta_half(deltas, 1 - half))
        weight, _ = _layer_params(params, net, layer)
        dweight, dbias = _layer_params(grads, net, layer)
        if layer == 0:
            dense_backward(_delta(deltas, 0, net.sizes[0], 1 - half), dweight, dbias, dpre, x,
                           weight, np.int64(IDENTITY))  # not a literal: one compile serves
        else:
            inp = _layer_output(acts, net, n_rows, layer - 1)
            dinp = _delta(deltas, n_rows, net.sizes[layer], 1 - half)
            dense_backward(dinp, dweight, dbias, dpre, inp, weight, net.activations[layer - 1])
            dpre = dinp
            half = 1 - half
    return loss


@njit(**_INLINED)
def mlp_train_step(params, grads, work, x, target, net, lr, clip_norm):
    """mlp_loss_and_grad then clip_sgd_update, in one call. Returns (loss, gradient norm,
    applied); the per-layer squared norms are left in work.layer_sq. When the loss is NaN or Inf
    the update is not tried; see clip_sgd_update for when it is refused."""
    loss = mlp_loss_and_grad(grads, work, params, x, target, net)
    if not math.isfinite(loss):
        return loss, math.nan, False
    norm, applied = clip_sgd_update(params, work.layer_sq, work.partials, grads,
                                    net.param_offsets, lr, clip_norm)
    return loss, norm, applied


def _take_targets(out, y, index):
    """out[i] = y[index[i]] for labels (B,) or target rows (B, OC)."""
    raise NotImplementedError("compiled code only")


@overload(_take_targets, jit_options=_SERIAL)
def _take_targets_impl(out, y, index):
    if y.ndim == 1:
        def take_labels(out, y, index):
            for i in range(index.shape[0]):
                out[i] = y[index[i]]
        return take_labels
    return lambda out, y, index: take_rows(out, y, index)


@njit(**_INLINED)
def mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                    step_layer_sq, x, target, order, batch_size, net, lr, clip_norm):
    """One epoch of mini-batch SGD in one call, so that small networks pay no per-step call.

    Batches are consecutive slices of ``order`` (row numbers into x and target, not checked),
    gathered into x_batch (>= batch_size, C) and y_batch, then trained on with mlp_train_step.
    Step k's loss, gradient norm and per-layer squared norms go to step_losses[k],
    step_norms[k] and step_layer_sq[k] (float64 arrays with at least
    ceil(len(order) / batch_size) rows). Returns the number of steps applied: when a step is
    not applied (NaN or Inf loss or norm, or an update that would overflow) the epoch stops
    there, its values recorded at that index.
    """
    n_samples = order.shape[0]
    step = 0
    for start in range(0, n_samples, batch_size):
        stop = min(start + batch_size, n_samples)
        index = order[start:stop]
        xb = x_batch[:stop - start]
        yb = y_batch[:stop - start]
        take_rows(xb, x, index)
        _take_targets(yb, target, index)
        loss, norm, applied = mlp_train_step(params, grads, work, xb, yb, net, lr, clip_norm)
        step_losses[step] = loss
        step_norms[step] = norm
        for layer in range(work.layer_sq.shape[0]):  # a loop: no shape check to compile
            step_layer_sq[step, layer] = work.layer_sq[layer]
        if not applied:
            return step
        step += 1
    return step


# Entry points for fastbp's Python layer. They take a Workspace's and a Net's fields as plain
# arguments (Python passes *work, *net) and rebuild the tuples in compiled code, where that is
# free: Numba types tuple arguments in Python, which costs about 3 us a call and leaves garbage.


@njit(**_SERIAL)
def _from_python_forward(acts, params, x, sizes, activations, param_offsets, capacity,
                         checkpoint_every, act_offsets):
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets)
    return mlp_forward(acts, params, x, net)


@njit(**_SERIAL)
def _from_python_loss(acts, deltas, losses, layer_sq, partials, params, x, target,
                      sizes, activations, param_offsets, capacity, checkpoint_every,
                      act_offsets):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets)
    return mlp_loss(work, params, x, target, net)


@njit(**_SERIAL)
def _from_python_loss_and_grad(grads, acts, deltas, losses, layer_sq, partials,
                               params, x, target, sizes, activations, param_offsets, capacity,
                               checkpoint_every, act_offsets):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets)
    return mlp_loss_and_grad(grads, work, params, x, target, net)


@njit(**_SERIAL)
def _from_python_train_step(params, grads, acts, deltas, losses, layer_sq, partials,
                            x, target, sizes, activations, param_offsets, capacity,
                            checkpoint_every, act_offsets, lr, clip_norm):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets)
    return mlp_train_step(params, grads, work, x, target, net, lr, clip_norm)


@njit(**_SERIAL)
def _from_python_train_epoch(params, grads, acts, deltas, losses, layer_sq, partials,
                             x_batch, y_batch, step_losses, step_norms, step_layer_sq, x, target,
                             order, batch_size, sizes, activations, param_offsets, capacity,
                             checkpoint_every, act_offsets, lr, clip_norm):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets)
    return mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                           step_layer_sq, x, target, order, batch_size, net, lr, clip_norm)


# ---------------------------------------------------------------------------------------------
# Data movement and input checks


@njit(**_PARALLEL)
def take_rows(out, x, index):
    """out (B, N) = x[index] for index (B,) of row numbers (not checked); x (M, N)."""
    n_rows = out.shape[0]
    # A copy is bound by memory, not arithmetic: a row element costs about as much time as 8
    # multiply-adds when the rows come from a large x (128 x 784 from 60,000 rows: 48 us on one
    # thread, 28 us on two, measured).
    n_tiles = _n_tiles(n_rows, 8 * out.shape[1])
    if n_tiles == 1:
        r0, r1 = _span(0, 1, n_rows)
        _take_rows_span(out, x, index, r0, r1)
        return
    for t in prange(n_tiles):
        r0, r1 = _span(t, n_tiles, n_rows)
        _take_rows_span(out, x, index, r0, r1)


@njit(**_SERIAL)
def _take_rows_span(out, x, index, r0, r1):
    for i in range(r0, r1):
        src = index[i]
        for j in range(out.shape[1]):
            out[i, j] = x[src, j]


@njit(**_SERIAL)
def all_finite(x):
    """True when no element of the 2-D array x is NaN or +-Inf."""
    total = 0.0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            total += x[i, j] * 0.0  # NaN and Inf turn the sum into NaN
    return total == 0.0


@njit(**_SERIAL)
def labels_in_range(labels, n_classes):
    """True when every label is in [0, n_classes)."""
    ok = True
    for i in range(labels.shape[0]):
        ok &= (labels[i] >= 0) & (labels[i] < n_classes)
    return ok
