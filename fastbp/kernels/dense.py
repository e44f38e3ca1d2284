"""The dense layer: out = act(inp @ weight + bias), forward and backward.

Matrix products are split into a grid of output tiles that the threads share out, each tile
one call of single-threaded BLAS followed by its fused epilogue (bias and activation, or the
activation's gradient) while the tile is still in cache. A forward product with far more inputs
than batch rows is split over its inputs instead, when given a scratch buffer for the second
half's partial sums. Every cut follows the shapes and tile_budget() (_tiling): by default not
the thread count, so the results are bitwise the same at any thread count. Work too small to
repay waking a thread runs serially, outside any parallel region.

In bfloat16 precision (bfloat16.py) the same tiles multiply bfloat16 copies of the operands:
dense_forward_bf16 rounds inp and weight, dense_backward_bf16 rounds inp and dpre and reuses the
forward's rounded weight; bias, activations and db read the float32 values.
"""
import numpy as np
from numba import njit, prange, types

from . import _units
from ._checks import arguments, require, requirements
from ._config import INLINED, INPUT_SPLIT_RATIO, MIN_TILE_WORK, PARALLEL, SERIAL
from ._native import bfloat16_product_ready, blas_gemm, matrix_view, num_threads
from .bfloat16 import (BFLOAT16, BFLOAT16_EMULATED, FLOAT32, prepare_bfloat16_product,
                       register_bfloat16_emulation, round_to_bfloat16)
from ._tiling import grid, input_grad_grid, interleaved, span, tile_budget
from .activations import (activation_grad_tile, activation_input, bias_activation_tile,
                          is_activation)


@njit(**SERIAL)
def _dense_forward_tile(out, pre, inp, weight, bias, activation, r0, r1, c0, c1):
    """out[r0:r1, c0:c1] of dense_forward (inp and weight: the product's operands)."""
    blas_gemm(out[r0:r1, c0:c1], inp[r0:r1], weight[:, c0:c1], 1.0, 0.0, False, False)
    bias_activation_tile(out, pre, bias, activation, r0, r1, c0, c1)


@njit(**SERIAL)
def splits_input(n_rows, n_in, n_out, max_tiles, scratch_size):
    """Whether dense_forward splits its product over the input features, in two halves, for a
    tile budget of max_tiles (tile_budget(); at least 2) and a scratch buffer of scratch_size
    elements. Worth it when weight is much larger than the output (n_in > INPUT_SPLIT_RATIO *
    n_rows): each tile then reads half of weight's rows and half of inp's columns, not a slice
    of weight's every row and all of inp, and one pass adds the two partial outputs (README)."""
    return (scratch_size >= n_rows * n_out and max_tiles >= 2
            and n_in > INPUT_SPLIT_RATIO * n_rows
            and n_rows * n_in * n_out >= 2 * MIN_TILE_WORK)


@njit(**PARALLEL)
def _dense_forward_split_input(out, partial, pre, inp, weight, bias, activation):
    """dense_forward as two half products over the input features (each cut into a grid of
    half the tile budget), into out and partial (B, OC); then out += partial, bias and
    activation, over row tiles."""
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    rows, cols = grid(n_rows, n_out, n_in // 2, max(1, tile_budget() // 2))
    per_half = rows * cols
    for t in prange(2 * per_half):
        k0, k1 = span(t // per_half, 2, n_in)
        r0, r1 = span(t % per_half // cols, rows, n_rows)
        c0, c1 = span(t % cols, cols, n_out)
        dst = out if t < per_half else partial
        blas_gemm(dst[r0:r1, c0:c1], inp[r0:r1, k0:k1], weight[k0:k1, c0:c1], 1.0, 0.0,
                  False, False)
    n_tiles = min(num_threads(), n_rows)
    for t in prange(n_tiles):
        r0, r1 = span(t, n_tiles, n_rows)
        for i in range(r0, r1):
            row, part = out[i], partial[i]
            for j in range(row.shape[0]):
                row[j] += part[j]
        c0, c1 = span(0, 1, n_out)
        bias_activation_tile(out, pre, bias, activation, r0, r1, c0, c1)


_M, _V = _units.MATRIX, _units.VECTOR
dense_forward_split_input_unit = _units.unit(
    "dense_forward_split_input", _dense_forward_split_input,
    lambda dt: (_M[dt], _M[dt], _M[dt], _M[dt], _M[dt], _V[dt], types.int64))


@njit(**SERIAL)
def dense_forward(out, inp, weight, bias, activation, scratch=None, pre=None):
    """out (B, OC) = act(inp (B, C) @ weight (C, OC) + bias (OC,)).

    The output is split into a grid of tiles (by its shape and tile_budget(): by default the
    same at any thread count), which the threads share out; bias and activation are applied to
    each tile right after its matrix product, while it is still in cache.
    scratch: optional 1-D C-contiguous buffer of the dtype, overlapping no other argument (its
    contents are overwritten). When it holds B * OC elements, a product of at least 2 *
    MIN_TILE_WORK multiply-adds with far more inputs than batch rows (C > INPUT_SPLIT_RATIO *
    B, and a tile budget of 2 or more) is split over the inputs instead (splits_input): two
    half products, the second into scratch, then one pass adds them and applies bias and
    activation. Results then differ in the last bits from a call without scratch.
    pre: optional (B, OC) array that receives the pre-activation inp @ weight + bias, for
    activations whose gradient needs it (gelu); not written for the others.
    """
    _forward_arguments(out, inp, weight, bias, activation, scratch, pre)
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    _check_forward(out, inp, weight, bias, activation)
    require(pre is None or pre.shape == out.shape, "dense_forward: pre must be (B, OC) as out")
    keep = out[:0] if pre is None else pre
    if scratch is not None:
        if splits_input(n_rows, n_in, n_out, tile_budget(), scratch.shape[0]):
            _dense_forward_split_input(out, matrix_view(scratch, 0, n_rows, n_out), keep, inp,
                                       weight, bias, activation)
            return
    _dense_forward_grid(out, keep, inp, weight, bias, activation)


_forward_arguments = arguments("dense_forward", out="matrix", inp="matrix",
                               weight="matrix", bias="vector", activation="code",
                               scratch="vector?", pre="matrix?")


# The shapes dense_forward and dense_forward_bf16 read and write, and the activation: one rule
# set, a check of each (its messages name it).
_FORWARD_RULES = [
    ("weight.shape[0] == inp.shape[1]", "weight must have as many rows as inp has columns (C)"),
    ("out.shape[0] == inp.shape[0] and out.shape[1] == weight.shape[1]",
     "out must be (B, OC): inp's rows by weight's columns"),
    ("bias.shape[0] == weight.shape[1]", "bias must have OC elements"),
    ("is_activation(activation)", "activation must be one of kernels.CODES' codes")]
_check_forward, _check_forward_bf16 = (
    requirements(kernel, "out, inp, weight, bias, activation", _FORWARD_RULES,
                 dict(is_activation=is_activation))
    for kernel in ("dense_forward", "dense_forward_bf16"))


@njit(**PARALLEL)
def _dense_forward_grid(out, pre, inp, weight, bias, activation):
    """dense_forward split into a grid of output tiles (never over the inputs)."""
    n_rows = inp.shape[0]
    n_out = weight.shape[1]
    grid_rows, grid_cols = grid(n_rows, n_out, inp.shape[1], tile_budget())
    n_tiles = grid_rows * grid_cols
    if n_tiles == 1:
        r0, r1 = span(0, 1, n_rows)
        c0, c1 = span(0, 1, n_out)
        _dense_forward_tile(out, pre, inp, weight, bias, activation, r0, r1, c0, c1)
        return
    for t in prange(n_tiles):
        r0, r1 = span(t // grid_cols, grid_rows, n_rows)
        c0, c1 = span(t % grid_cols, grid_cols, n_out)
        _dense_forward_tile(out, pre, inp, weight, bias, activation, r0, r1, c0, c1)


dense_forward_grid_unit = _units.unit(
    "dense_forward_grid", _dense_forward_grid,
    lambda dt: (_M[dt], _M[dt], _M[dt], _M[dt], _V[dt], types.int64))


@njit(**SERIAL)
def _weight_grad_tile(dweight, dbias, dpre, inp_op, dpre_op, r0, r1, c0, c1):
    """dweight[r0:r1, c0:c1] = inp_op^T dpre_op (the product's operands); the tiles of the
    first row (r0 == 0) also do dbias[c0:c1] from dpre."""
    blas_gemm(dweight[r0:r1, c0:c1], inp_op[:, r0:r1], dpre_op[:, c0:c1], 1.0, 0.0, True,
              False)
    if r0 == 0:
        b = dbias[c0:c1]
        for j in range(b.shape[0]):
            b[j] = 0
        for i in range(dpre.shape[0]):  # row by row: memory is read in order
            row = dpre[i, c0:c1]
            for j in range(row.shape[0]):
                b[j] += row[j]


@njit(**SERIAL)
def _input_grad_tile(dinp, dpre, weight, inp, inp_pre, inp_activation, r0, r1, c0, c1):
    """dinp[r0:r1, c0:c1] (dpre and weight: the product's operands)."""
    blas_gemm(dinp[r0:r1, c0:c1], dpre[r0:r1], weight[c0:c1], 1.0, 0.0, False, True)
    activation_grad_tile(dinp, inp_pre, inp, inp_activation, r0, r1, c0, c1)


@njit(**SERIAL)
def dense_backward(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre=None):
    """Backward of dense_forward, given dpre (B, OC) = dL/d(inp @ weight + bias).

    dweight (C, OC) = inp^T @ dpre and dbias (OC,) = column sums of dpre (both overwritten).
    dinp (B, C) = (dpre @ weight^T) * act'(.), where inp = act(inp_pre) for the activation code
    inp_activation: that is the previous layer's dpre. Pass IDENTITY to get the plain
    dL/d(inp). Pass a dinp with zero rows to skip it (first layer). inp_pre (B, C) is read only
    for activations whose gradient needs their input (gelu).
    Reads inp (B, C) and weight (C, OC).

    dW, db and dinp tiles run in one parallel region. dW is split over its own elements, so each
    is one thread's whole sum over the batch: no races and no partial buffers. The grids follow
    the shapes and tile_budget(), and on one thread the same tiles run in turn.
    """
    _backward_arguments(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre)
    _check_backward(dinp, dweight, dbias, dpre, inp, inp_activation, inp_pre)
    require(weight.shape[0] == inp.shape[1] and weight.shape[1] == dpre.shape[1],
            "dense_backward: weight must be (C, OC): inp's columns by dpre's")
    _dense_backward(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre)


@njit(**PARALLEL)
def _dense_backward(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre):
    """dense_backward on checked arguments: the network's unit (whose caller checks)."""
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    z = activation_input(inp_pre, inp, inp_activation)
    # With both products to do, each gets half the tile budget: fewer, larger BLAS calls than
    # splitting each product over all of it (docs/kernels-notes.md).
    budget = tile_budget()
    w_budget = budget if dinp.shape[0] == 0 else max(1, budget // 2)
    w_rows, w_cols = grid(n_in, n_out, n_rows, w_budget)
    # the input gradient may take the whole budget in tiles the BLAS multiplies unpacked
    i_rows, i_cols = input_grad_grid(n_rows, n_in, n_out, max(1, budget - w_budget), budget)
    n_weight_tiles = w_rows * w_cols
    n_tasks = n_weight_tiles + (i_rows * i_cols if dinp.shape[0] > 0 else 0)
    # Two one-tile products run side by side once each holds half a tile's worth of work:
    # their sum, not each alone, is what the parallel region must repay.
    if num_threads() == 1 or n_tasks == 1 or (
            n_tasks == 2 and n_rows * n_in * n_out < MIN_TILE_WORK // 2):
        for t in range(n_tasks):
            _backward_task(dinp, dweight, dbias, dpre, inp, weight, z, inp_activation, t,
                           n_tasks, n_weight_tiles, w_rows, w_cols, i_rows, i_cols)
        return
    for t in prange(n_tasks):
        _backward_task(dinp, dweight, dbias, dpre, inp, weight, z, inp_activation, t,
                       n_tasks, n_weight_tiles, w_rows, w_cols, i_rows, i_cols)


_backward_arguments = arguments("dense_backward", dinp="matrix",
                                dweight="matrix", dbias="vector", dpre="matrix", inp="matrix",
                                weight="matrix", inp_activation="code", inp_pre="matrix?")


# The shapes dense_backward and dense_backward_bf16 read and write (but the weight's), and the
# activation: one rule set, a check of each.
_BACKWARD_RULES = [
    "n_rows, n_in = inp.shape",
    "n_out = dpre.shape[1]",
    ("dpre.shape[0] == n_rows", "dpre must have as many rows as inp (B)"),
    ("dweight.shape[0] == n_in and dweight.shape[1] == n_out",
     "dweight must be (C, OC): inp's columns by dpre's"),
    ("dbias.shape[0] == n_out", "dbias must have OC elements"),
    ("dinp.shape[0] == 0 or (dinp.shape[0] == n_rows and dinp.shape[1] == n_in)",
     "dinp must be (B, C) as inp, or have no rows"),
    ("inp_pre is None or inp_pre.shape == inp.shape", "inp_pre must be (B, C) as inp"),
    ("is_activation(inp_activation)", "inp_activation must be one of kernels.CODES' codes")]
_check_backward, _check_backward_bf16 = (
    requirements(kernel, "dinp, dweight, dbias, dpre, inp, inp_activation, inp_pre",
                 _BACKWARD_RULES, dict(is_activation=is_activation))
    for kernel in ("dense_backward", "dense_backward_bf16"))


@njit(**INLINED)
def _backward_task(dinp, dweight, dbias, dpre, inp, weight, z, inp_activation, t, n_tasks,
                   n_weight_tiles, w_rows, w_cols, i_rows, i_cols):
    """Task t of dense_backward's n_tasks: a tile of dW's (and db's) w_rows x w_cols grid or of
    dinp's i_rows x i_cols grid, the two interleaved: they run at different rates, and a
    thread given a block of one kind only left the other waiting."""
    n_rows, n_in = inp.shape
    is_weight_tile, tile = interleaved(t, n_tasks, n_weight_tiles)
    if is_weight_tile:
        r0, r1 = span(tile // w_cols, w_rows, n_in)
        c0, c1 = span(tile % w_cols, w_cols, weight.shape[1])
        _weight_grad_tile(dweight, dbias, dpre, inp, dpre, r0, r1, c0, c1)
    else:
        r0, r1 = span(tile // i_cols, i_rows, n_rows)
        c0, c1 = span(tile % i_cols, i_cols, n_in)
        _input_grad_tile(dinp, dpre, weight, inp, z, inp_activation, r0, r1, c0, c1)


dense_backward_unit = _units.unit(
    "dense_backward", _dense_backward,
    lambda dt: (_M[dt], _M[dt], _V[dt], _M[dt], _M[dt], _M[dt], types.int64, _M[dt]))


@njit(**INLINED)
def dense_forward_by_units(out, pre, inp, weight, bias, activation, scratch):
    """dense_forward through the units (how the network's layers run it): split over the
    inputs when splits_input says so for scratch (1-D, an empty one for none); pre (B, OC) or
    a view without rows."""
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    if splits_input(n_rows, n_in, n_out, tile_budget(), scratch.shape[0]):
        dense_forward_split_input_unit(out, matrix_view(scratch, 0, n_rows, n_out), pre, inp,
                                       weight, bias, activation)
    else:
        dense_forward_grid_unit(out, pre, inp, weight, bias, activation)


# -- bfloat16 operands (bfloat16.py) -----------------------------------------------------------


@njit(**SERIAL)
def dense_forward_bf16(out, pre, inp, weight, bias, activation, inp_bits, weight_bits):
    """dense_forward (without the input split) with bfloat16 operands: inp (B, C) and weight
    (C, OC) rounded into inp_bits (>= B * C) and weight_bits (C * OC), 1-D bit-pattern buffers
    (uint16: MKL's product; int16: emulated), overwritten; weight_bits then holds what
    dense_backward_bf16 reads. pre: as dense_forward's, or a view without rows. All float32.
    Call require_bfloat16() (uint16) or register_bfloat16_emulation() (int16) once before the
    first call in a process (fastbp's models do). Refuses what dense_forward refuses, and bit
    buffers too short."""
    _forward_bf16_arguments(out, pre, inp, weight, bias, activation, inp_bits, weight_bits)
    _check_forward_bf16(out, inp, weight, bias, activation)
    n_rows, n_in = inp.shape
    n_out = weight.shape[1]
    require(pre.shape[0] == 0 or pre.shape == out.shape,
            "dense_forward_bf16: pre must be (B, OC) as out, or have no rows")
    require(inp_bits.shape[0] >= n_rows * n_in,
            "dense_forward_bf16: inp_bits must hold B * C bit patterns")
    require(weight_bits.shape[0] >= n_in * n_out,
            "dense_forward_bf16: weight_bits must hold C * OC bit patterns")
    require(bfloat16_product_ready(weight_bits),
            "dense_forward_bf16: no bfloat16 product was registered when this code was "
            "compiled: call kernels.require_bfloat16() (uint16 bits) or kernels."
            "register_bfloat16_emulation() (int16 bits) first, in a new process")
    inp_op = matrix_view(inp_bits, 0, n_rows, n_in)
    weight_op = matrix_view(weight_bits, 0, n_in, n_out)
    round_to_bfloat16(inp_op, inp)
    round_to_bfloat16(weight_op, weight)
    _dense_forward_grid(out, pre, inp_op, weight_op, bias, activation)


@njit(**SERIAL)
def dense_backward_bf16(dinp, dweight, dbias, dpre, inp, weight_bits, inp_activation, inp_pre,
                        rows_bits):
    """dense_backward with bfloat16 operands: weight_bits (C * OC) as dense_forward_bf16 left
    it; inp and dpre rounded into rows_bits (>= B * (C + OC), overwritten). dbias and the
    activation's gradient read the float32 dpre, inp and inp_pre. Refuses what dense_backward
    refuses, and bit buffers too short."""
    _backward_bf16_arguments(dinp, dweight, dbias, dpre, inp, weight_bits, inp_activation,
                             inp_pre, rows_bits)
    _check_backward_bf16(dinp, dweight, dbias, dpre, inp, inp_activation, inp_pre)
    n_rows, n_in = inp.shape
    n_out = dpre.shape[1]
    require(weight_bits.shape[0] >= n_in * n_out,
            "dense_backward_bf16: weight_bits must hold C * OC bit patterns")
    require(rows_bits.shape[0] >= n_rows * (n_in + n_out),
            "dense_backward_bf16: rows_bits must hold B * (C + OC) bit patterns")
    require(bfloat16_product_ready(weight_bits),
            "dense_backward_bf16: no bfloat16 product was registered when this code was "
            "compiled: call kernels.require_bfloat16() (uint16 bits) or kernels."
            "register_bfloat16_emulation() (int16 bits) first, in a new process")
    z = activation_input(inp_pre, inp, inp_activation)   # (it may refuse: before any write)
    inp_op = matrix_view(rows_bits, 0, n_rows, n_in)
    dpre_op = matrix_view(rows_bits, n_rows * n_in, n_rows, n_out)
    round_to_bfloat16(inp_op, inp)
    round_to_bfloat16(dpre_op, dpre)
    weight_op = matrix_view(weight_bits, 0, n_in, n_out)
    # dW, then dinp, each over every thread: MKL's bfloat16 products ran slower side by side
    # (dense_backward's split) than one after the other (README, bfloat16 products).
    _weight_grad(dweight, dbias, dpre, inp_op, dpre_op)
    if dinp.shape[0] > 0:
        _input_grad(dinp, dpre_op, weight_op, inp, z, inp_activation)


_forward_bf16_arguments = arguments(
    "dense_forward_bf16", out="float32_matrix", pre="matrix", inp="matrix", weight="matrix",
    bias="vector", activation="code", inp_bits="bits", weight_bits="bits")
_backward_bf16_arguments = arguments(
    "dense_backward_bf16", dinp="float32_matrix", dweight="matrix", dbias="vector",
    dpre="matrix", inp="matrix", weight_bits="bits", inp_activation="code", inp_pre="matrix?",
    rows_bits="bits")


@njit(**PARALLEL)
def _weight_grad(dweight, dbias, dpre, inp_op, dpre_op):
    """dweight and dbias of dense_backward alone, split into a grid of tiles over every
    thread (inp_op, dpre_op: the product's operands; dbias from dpre)."""
    n_in, n_out = dweight.shape
    rows, cols = grid(n_in, n_out, dpre.shape[0], tile_budget())
    if rows * cols == 1:
        r0, r1 = span(0, 1, n_in)
        c0, c1 = span(0, 1, n_out)
        _weight_grad_tile(dweight, dbias, dpre, inp_op, dpre_op, r0, r1, c0, c1)
        return
    for t in prange(rows * cols):
        r0, r1 = span(t // cols, rows, n_in)
        c0, c1 = span(t % cols, cols, n_out)
        _weight_grad_tile(dweight, dbias, dpre, inp_op, dpre_op, r0, r1, c0, c1)


@njit(**PARALLEL)
def _input_grad(dinp, dpre, weight, inp, z, inp_activation):
    """dinp of dense_backward alone, split into a grid of tiles over every thread (dpre and
    weight: the product's operands)."""
    n_rows, n_in = dinp.shape
    rows, cols = grid(n_rows, n_in, dpre.shape[1], tile_budget())
    if rows * cols == 1:
        r0, r1 = span(0, 1, n_rows)
        c0, c1 = span(0, 1, n_in)
        _input_grad_tile(dinp, dpre, weight, inp, z, inp_activation, r0, r1, c0, c1)
        return
    for t in prange(rows * cols):
        r0, r1 = span(t // cols, rows, n_rows)
        c0, c1 = span(t % cols, cols, n_in)
        _input_grad_tile(dinp, dpre, weight, inp, z, inp_activation, r0, r1, c0, c1)


@njit(**SERIAL)
def _dense_forward_bf16_emulated(out, pre, inp, weight, bias, activation, inp_bits,
                                 weight_bits):
    dense_forward_bf16(out, pre, inp, weight, bias, activation, inp_bits.view(np.int16),
                       weight_bits.view(np.int16))


@njit(**SERIAL)
def _dense_backward_bf16_emulated(dinp, dweight, dbias, dpre, inp, weight_bits, inp_activation,
                                  inp_pre, rows_bits):
    dense_backward_bf16(dinp, dweight, dbias, dpre, inp, weight_bits.view(np.int16),
                        inp_activation, inp_pre, rows_bits.view(np.int16))


#: A bfloat16 bit-pattern buffer, as units take it.
BITS = types.Array(types.uint16, 1, "C")


def _forward_bf16_types(dt):
    return (_M[dt], _M[dt], _M[dt], _M[dt], _V[dt], types.int64, BITS, BITS)


def _backward_bf16_types(dt):
    return (_M[dt], _M[dt], _V[dt], _M[dt], _M[dt], BITS, types.int64, _M[dt], BITS)


dense_forward_bf16_unit = _units.unit(
    "dense_forward_bf16", dense_forward_bf16, _forward_bf16_types, cost=1.9,
    prepare=prepare_bfloat16_product)
dense_backward_bf16_unit = _units.unit(
    "dense_backward_bf16", dense_backward_bf16, _backward_bf16_types, cost=3.8,
    prepare=prepare_bfloat16_product)
dense_forward_bf16_emulated_unit = _units.unit(
    "dense_forward_bf16_emulated", _dense_forward_bf16_emulated, _forward_bf16_types,
    prepare=register_bfloat16_emulation)
dense_backward_bf16_emulated_unit = _units.unit(
    "dense_backward_bf16_emulated", _dense_backward_bf16_emulated, _backward_bf16_types,
    prepare=register_bfloat16_emulation)
#: The units of a precision's products, by its code.
PRECISION_UNITS = {FLOAT32: ["dense_forward_grid", "dense_backward"],
                   BFLOAT16: ["dense_forward_bf16", "dense_backward_bf16"],
                   BFLOAT16_EMULATED: ["dense_forward_bf16_emulated",
                                       "dense_backward_bf16_emulated"]}


@njit(**INLINED)
def _operand_bits(bits, weight_at, rows_at, weight):
    """(the layer's rounded weight, the rounded rows' area) in a bit-pattern buffer: the weight
    (C * OC) from weight_at, the rows from rows_at on."""
    return bits[weight_at:weight_at + weight.shape[0] * weight.shape[1]], bits[rows_at:]


@njit(**INLINED)
def dense_forward_layer(out, pre, inp, weight, bias, activation, scratch, bits, weight_at,
                        rows_at, precision):
    """A layer's dense_forward in its precision (bfloat16.py's codes): by the units, with
    scratch as dense_forward_by_units's; or with bfloat16 operands (dense_forward_bf16) in the
    bit-pattern buffer bits: the rounded weight (C * OC) from weight_at, the rounded rows
    (>= B * C) from rows_at. precision None (a float32 Net's): the units alone. Where precision
    is an argument of the compiled function this is inlined into, Numba drops the branches
    that None does not take, so nothing of bfloat16 is compiled for a float32 Net."""
    if precision is None:
        dense_forward_by_units(out, pre, inp, weight, bias, activation, scratch)
        return
    weight_bits, rows_bits = _operand_bits(bits, weight_at, rows_at, weight)
    if precision == FLOAT32:
        dense_forward_by_units(out, pre, inp, weight, bias, activation, scratch)
    elif precision == BFLOAT16:
        dense_forward_bf16_unit(out, pre, inp, weight, bias, activation, rows_bits, weight_bits)
    else:
        dense_forward_bf16_emulated_unit(out, pre, inp, weight, bias, activation, rows_bits,
                                         weight_bits)


@njit(**INLINED)
def dense_backward_layer(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre,
                         bits, weight_at, rows_at, precision):
    """A layer's dense_backward in its precision: by its unit, or with bfloat16 operands
    (dense_backward_bf16: the rounded weight in bits from weight_at as the forward pass left
    it, the rows' area from rows_at, >= B * (C + OC)); precision None: the unit alone, as
    dense_forward_layer (and pruned alike)."""
    if precision is None:
        dense_backward_unit(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre)
        return
    weight_bits, rows_bits = _operand_bits(bits, weight_at, rows_at, weight)
    if precision == FLOAT32:
        dense_backward_unit(dinp, dweight, dbias, dpre, inp, weight, inp_activation, inp_pre)
    elif precision == BFLOAT16:
        dense_backward_bf16_unit(dinp, dweight, dbias, dpre, inp, weight_bits, inp_activation,
                                 inp_pre, rows_bits)
    else:
        dense_backward_bf16_emulated_unit(dinp, dweight, dbias, dpre, inp, weight_bits,
                                          inp_activation, inp_pre, rows_bits)
