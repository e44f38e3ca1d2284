"""The hidden layer with extras: a dense product, then optional normalisation (layer or batch),
the activation, optional dropout and an optional residual connection::

    z = h @ W + b;  zn = norm(z) (or z);  a = act(zn);  d = dropout(a) (or a);
    h' = h + d (residual) or d

A layer without any of these runs the plain dense step instead (network.py); this one runs as
two units (block_forward, block_backward), so a network without such layers compiles none of
it.

Besides its output h' (and zn, when the activation's gradient reads its input), a block layer
keeps in its area of the activation buffer (``aux_layout``, in this order, each capacity rows
of its width): xhat (the normalised z) with a norm, a (the activation's output) when dropout or
the residual make it differ from h', the dropout mask (0 or 1 / (1 - p)) with dropout, and its
normalisation's statistics (layer norm: each row's rstd; batch norm: each feature's batch mean
and rstd). Batch norm's running mean and variance (float64) live in the Net's ``running``,
updated by training passes only (see INFER, TRAIN, REPLAY).

The backward pass takes dL/dh' and gives the previous layer dL/d(its pre-activation) through
its activation, as the dense step does; the buffers it consumes (the mask, or a) hold the
intermediate gradients, so it needs no scratch.
"""
from numba import njit, prange, types

from . import _units, activations, dense, dropout, normalization
from ._checks import arguments, guard, layout_errors, require, requirements, type_errors
from ._config import PARALLEL, SERIAL
from .bfloat16 import FLOAT32, PRECISIONS
from ._native import matrix_view
from ._tiling import n_tiles, span

# What a forward pass is for: inference (running statistics, no dropout); training (batch
# statistics, folded into the running ones; dropout); a replay of a training pass (the same,
# running statistics untouched: a checkpointed segment recomputed, or the gradient checker).
INFER, TRAIN, REPLAY = 0, 1, 2
# Codes of the normalisations, as fastbp.layout's kinds: DENSE (none), LAYER_NORM, BATCH_NORM.
_LAYER_NORM, _BATCH_NORM = 1, 2


def aux_layout(norm, n_out, p, residual, capacity):
    """(xhat, a, mask, stats, length): where a block layer's saved values start after its
    output and kept pre-activation (-1: not kept), and their total length. norm: 0 (none), 1
    (layer), 2 (batch); p: the dropout probability; residual: 0 or 1. Plain arithmetic: the
    planner calls it from Python and the kernels from compiled code."""
    area = capacity * n_out
    xhat = a = mask = stats = -1
    length = 0
    if norm != 0:
        xhat = length
        length += area
    if p > 0 or residual != 0:
        a = length
        length += area
    if p > 0:
        mask = length
        length += area
    if norm != 0:   # layer norm: each row's rstd; batch norm: each feature's mean and rstd
        stats = length
        length += capacity if norm == _LAYER_NORM else 2 * n_out
    return xhat, a, mask, stats, length


#: aux_layout, compiled: for the kernels' views and for the checks of a layer's areas.
compiled_aux_layout = njit(**SERIAL)(aux_layout)


@njit(**SERIAL)
def _add_rows(out, a, b, r0, r1):
    for i in range(r0, r1):
        o, x, y = out[i], a[i], b[i]
        for j in range(o.shape[0]):
            o[j] = x[j] + y[j]


@njit(**PARALLEL)
def add_forward(out, a, b):
    """out (B, N) = a + b (the residual connection); out may be a or b. Other shapes raise
    ValueError before anything is written."""
    _add_arguments(out, a, b)
    require(a.shape == out.shape and b.shape == out.shape,
            "add_forward: a and b must have out's shape (B, N)")
    n_rows = out.shape[0]
    tiles = n_tiles(n_rows, 2 * out.shape[1])
    if tiles == 1:
        _add_rows(out, a, b, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _add_rows(out, a, b, r0, r1)


_add_arguments = arguments("add_forward", out="matrix", a="matrix", b="matrix")


@njit(**SERIAL)
def _views(acts, running, params, n_rows, n_in, n_out, param_offset, act_offset, pre_offset,
           aux_offset, running_offset, norm, p, residual, capacity):
    """The layer's views: (out, pre, xhat, a, mask, weight, bias, gamma, beta, each row's rstd,
    each feature's mean and rstd, running mean, running var); those it does not have are
    empty (a: out, when it is the layer's output)."""
    xhat_at, a_at, mask_at, stats_at, _ = compiled_aux_layout(norm, n_out, p, residual, capacity)
    out = matrix_view(acts, act_offset, n_rows, n_out)
    empty = matrix_view(acts, 0, 0, n_out)
    pre = empty if pre_offset < 0 else matrix_view(acts, pre_offset, n_rows, n_out)
    xhat = empty if xhat_at < 0 else matrix_view(acts, aux_offset + xhat_at, n_rows, n_out)
    a = out if a_at < 0 else matrix_view(acts, aux_offset + a_at, n_rows, n_out)
    mask = empty if mask_at < 0 else matrix_view(acts, aux_offset + mask_at, n_rows, n_out)
    weight = matrix_view(params, param_offset, n_in, n_out)
    at = param_offset + n_in * n_out
    bias = params[at:at + n_out]
    gamma = params[at + n_out:at + 2 * n_out]
    beta = params[at + 2 * n_out:at + 3 * n_out]
    s = aux_offset + max(stats_at, 0)
    r = max(running_offset, 0)
    return (out, pre, xhat, a, mask, weight, bias, gamma, beta, acts[s:s + n_rows],
            acts[s:s + n_out], acts[s + n_out:s + 2 * n_out], running[r:r + n_out],
            running[r + n_out:r + 2 * n_out])


@njit(**SERIAL)
def block_forward(acts, running, params, inp, scratch, row_ids, n_in, n_out, activation,
                  param_offset, act_offset, pre_offset, aux_offset, running_offset, capacity,
                  norm, p, residual, seed, step, row_base, layer, mode, bits, rows_at,
                  precision):
    """A block layer's forward pass for inp (B, n_in), in mode INFER, TRAIN or REPLAY; see the
    module docstring for what goes where. scratch: as dense_forward's (1-D; empty for none).
    row_ids (B,) int64: the rows' keys for the dropout mask, plus row_base (empty: their
    positions); seed and step: the rest of the masks' key (dropout.dropout_mask). bits,
    rows_at, precision: the product's precision and its bfloat16 buffer, the layer's weight at
    param_offset (dense.dense_forward_layer). Its arrays must be C-contiguous (row_ids aside)
    and bits uint16 (TypeError otherwise); the layer must fit them (B <= capacity, its areas
    inside acts, params, running and bits; ValueError, nothing written, otherwise)."""
    _forward_arguments(acts, running, params, inp, scratch, row_ids, n_in, n_out, activation,
                       param_offset, act_offset, pre_offset, aux_offset, running_offset,
                       capacity, norm, p, residual, seed, step, row_base, layer, mode, bits,
                       rows_at, precision)
    _check_forward(acts, running, params, inp, row_ids, n_in, n_out, activation, param_offset,
                   act_offset, pre_offset, aux_offset, running_offset, capacity, norm, p,
                   residual, mode, bits, rows_at, precision)
    _block_forward(acts, running, params, inp, scratch, row_ids, n_in, n_out, activation,
                   param_offset, act_offset, pre_offset, aux_offset, running_offset, capacity,
                   norm, p, residual, seed, step, row_base, layer, mode, bits, rows_at,
                   precision)


@njit(**SERIAL)
def _block_forward(acts, running, params, inp, scratch, row_ids, n_in, n_out, activation,
                   param_offset, act_offset, pre_offset, aux_offset, running_offset, capacity,
                   norm, p, residual, seed, step, row_base, layer, mode, bits, rows_at,
                   precision):
    """block_forward on checked arguments (its unit's kernel: the network checks first)."""
    n_rows = inp.shape[0]
    (out, pre, xhat, a, mask, weight, bias, gamma, beta, row_rstd, col_mean, col_rstd,
     run_mean, run_var) = _views(acts, running, params, n_rows, n_in, n_out, param_offset,
                                 act_offset, pre_offset, aux_offset, running_offset, norm, p,
                                 residual, capacity)
    drops = p > 0 and mode != INFER
    if not drops and residual == 0:
        a = out   # inference without a residual: the activation's output is the layer's
    if norm == 0:
        dense.dense_forward_layer(a, pre, inp, weight, bias, activation, scratch, bits,
                                  param_offset, rows_at, precision)
    else:
        dense.dense_forward_layer(xhat, pre[:0], inp, weight, bias, activations.IDENTITY,
                                  scratch, bits, param_offset, rows_at, precision)
        zn = pre if pre.shape[0] > 0 else a
        if norm == _LAYER_NORM:
            normalization.layer_norm_forward(zn, xhat, row_rstd, xhat, gamma, beta)
        elif mode == INFER:
            normalization.batch_norm_inference(zn, xhat, gamma, beta, run_mean, run_var)
        else:
            normalization.batch_norm_forward(zn, xhat, col_mean, col_rstd, run_mean, run_var,
                                             xhat, gamma, beta, mode == TRAIN)
        activations.activation_forward(a, zn, activation)
    if drops:
        dropout.dropout_forward_masked(out, mask, a, p, seed, step, layer, row_ids, row_base)
        if residual != 0:
            add_forward(out, out, inp)
    elif residual != 0:
        add_forward(out, a, inp)


@njit(**SERIAL)
def block_backward(dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params,
                   n_in, n_out, activation, param_offset, act_offset, pre_offset, aux_offset,
                   running_offset, capacity, norm, p, residual, bits, rows_at, precision):
    """A block layer's backward pass after a training forward pass, given dout (B, n_out) =
    dL/d(its output): its parameters' gradients into grads, and dinp (B, n_in) = dL/d(inp_pre)
    for inp = act(inp_pre), act the code inp_activation (dinp without rows: skipped). dout is
    overwritten. bits, rows_at, precision: as block_forward's (the weight's bfloat16 copy as
    block_forward left it). Checked as block_forward's; inp and inp_pre must be (B, n_in), and
    grads of params' length."""
    _backward_arguments(dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params,
                        n_in, n_out, activation, param_offset, act_offset, pre_offset,
                        aux_offset, running_offset, capacity, norm, p, residual, bits, rows_at,
                        precision)
    _check_backward(dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params,
                    n_in, n_out, activation, param_offset, act_offset, pre_offset, aux_offset,
                    running_offset, capacity, norm, p, residual, bits, rows_at, precision)
    _block_backward(dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params,
                    n_in, n_out, activation, param_offset, act_offset, pre_offset, aux_offset,
                    running_offset, capacity, norm, p, residual, bits, rows_at, precision)


@njit(**SERIAL)
def _block_backward(dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params,
                    n_in, n_out, activation, param_offset, act_offset, pre_offset, aux_offset,
                    running_offset, capacity, norm, p, residual, bits, rows_at, precision):
    """block_backward on checked arguments (its unit's kernel)."""
    n_rows = dout.shape[0]
    (out, pre, xhat, a, mask, weight, bias, gamma, beta, row_rstd, col_mean, col_rstd,
     run_mean, run_var) = _views(acts, running, params, n_rows, n_in, n_out, param_offset,
                                 act_offset, pre_offset, aux_offset, running_offset, norm, p,
                                 residual, capacity)
    (_, _, _, _, _, dweight, dbias, dgamma, dbeta, _, _, _, _, _) = _views(
        acts, running, grads, n_rows, n_in, n_out, param_offset, act_offset, pre_offset,
        aux_offset, running_offset, norm, p, residual, capacity)
    # g: dL/da, then dL/dzn, then dL/dz, in place. With a residual, dout must outlive it (it
    # also flows to inp), so g lives in a buffer this pass consumes: the mask, or a itself.
    g = dout
    if p > 0:
        if residual != 0:
            g = mask
        dropout.dropout_backward(g, dout, mask)
    elif residual != 0:
        g = a
    activations.activation_backward_unit(g, g if p > 0 else dout, a, activation,
                                         pre if pre.shape[0] > 0 else a)
    if norm == _LAYER_NORM:
        normalization.layer_norm_backward(g, dgamma, dbeta, g, xhat, row_rstd, gamma)
    elif norm == _BATCH_NORM:
        normalization.batch_norm_backward(g, dgamma, dbeta, g, xhat, col_rstd, gamma)
    if residual == 0 or dinp.shape[0] == 0:
        dense.dense_backward_layer(dinp, dweight, dbias, g, inp, weight, inp_activation,
                                   inp_pre, bits, param_offset, rows_at, precision)
        return
    dense.dense_backward_layer(dinp, dweight, dbias, g, inp, weight, activations.IDENTITY,
                               inp_pre, bits, param_offset, rows_at, precision)
    add_forward(dinp, dinp, dout)
    if inp_activation != activations.IDENTITY:
        activations.activation_backward_unit(dinp, dinp, inp, inp_activation, inp_pre)


_M, _V = _units.MATRIX, _units.VECTOR
_I, _F = types.int64, types.float64
block_forward_unit = _units.unit(
    "block_forward", _block_forward,
    lambda dt: (_V[dt], _units.FLOAT64S, _V[dt], _M[dt], _V[dt], _units.INDEX,
                _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _F, _I, _I, _I, _I, _I, _I,
                dense.BITS, _I, _I),
    cost=6)
block_backward_unit = _units.unit(
    "block_backward", _block_backward,
    lambda dt: (_M[dt], _V[dt], _M[dt], _M[dt], _M[dt], _I, _V[dt], _units.FLOAT64S,
                _V[dt], _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _F, _I, dense.BITS, _I, _I),
    cost=6)


# -- argument checks (_checks) -------------------------------------------------------------------


def _unit_arguments(kernel, **kinds):
    """The typing guard of a block kernel: kinds as _checks.arguments', and every array but
    row_ids C-contiguous and bits uint16, as the units it runs take them."""
    def errors(argtypes):
        found = type_errors(kernel, kinds, argtypes)
        if not found:
            found = layout_errors(kernel, argtypes, exempt=("row_ids",))
        if not found and argtypes["bits"].dtype != types.uint16:
            found.append(f"{kernel}: bits must be uint16 (bfloat16 bit patterns), not "
                         f"{argtypes['bits']}")
        return found
    return guard(kernel, list(kinds), errors)


# The layer's description, as both kernels take it.
_LAYER = dict(n_in="code", n_out="code", activation="code", param_offset="code",
              act_offset="code", pre_offset="code", aux_offset="code", running_offset="code",
              capacity="code", norm="code", p="number", residual="code")
_forward_arguments = _unit_arguments(
    "block_forward", acts="vector", running="float64s", params="vector", inp="matrix",
    scratch="vector", row_ids="index", **_LAYER, seed="code", step="code", row_base="code",
    layer="code", mode="code", bits="bits", rows_at="code", precision="code")
_backward_arguments = _unit_arguments(
    "block_backward", dinp="matrix", grads="vector", dout="matrix", inp="matrix",
    inp_pre="matrix", inp_activation="code", acts="vector", running="float64s",
    params="vector", **_LAYER, bits="bits", rows_at="code", precision="code")

# What the layer's description must fit (n_rows: the batch's rows): its parameters in params,
# its areas in acts (each capacity rows), its running statistics, its bfloat16 operands.
_LAYER_RULES = [
    ("n_in >= 1 and n_out >= 1", "n_in and n_out must be at least 1"),
    ("is_activation(activation)", "activation must be one of kernels.CODES' codes"),
    ("norm >= 0 and norm <= 2", "norm must be 0 (none), 1 (layer) or 2 (batch)"),
    ("p >= 0.0 and p < 1.0", "p must be in [0, 1)"),
    ("residual == 0 or n_in == n_out", "residual must be 0 unless n_in == n_out"),
    ("precision >= 0 and precision < N_PRECISIONS",
     "precision must be a code of kernels.PRECISIONS"),
    ("param_offset >= 0 and param_offset + (n_in + (1 if norm == 0 else 3)) * n_out"
     " <= params.shape[0]", "params must hold the layer's parameters from param_offset"),
    ("act_offset >= 0 and act_offset + capacity * n_out <= acts.shape[0]",
     "acts must hold the layer's output (capacity * n_out) from act_offset"),
    ("pre_offset < 0 or pre_offset + capacity * n_out <= acts.shape[0]",
     "acts must hold the layer's pre-activation from pre_offset (or pre_offset < 0: none)"),
    ("aux_offset >= 0 and aux_offset"
     " + compiled_aux_layout(norm, n_out, p, residual, capacity)[4] <= acts.shape[0]",
     "acts must hold the layer's saved values (aux_layout) from aux_offset"),
    ("norm != 2 or (running_offset >= 0 and running_offset + 2 * n_out <= running.shape[0])",
     "running must hold the layer's running mean and variance from running_offset"),
    ("precision == FLOAT32 or (param_offset + n_in * n_out <= bits.shape[0] and rows_at >= 0"
     " and rows_at + n_rows * (n_in + n_out) <= bits.shape[0])",
     "bits must hold the layer's rounded weight from param_offset and rounded rows from rows_at"),
]
_SCOPE = dict(is_activation=activations.is_activation, compiled_aux_layout=compiled_aux_layout,
              FLOAT32=FLOAT32, N_PRECISIONS=len(PRECISIONS))
_check_forward = requirements(
    "block_forward", "acts, running, params, inp, row_ids, n_in, n_out, activation, "
    "param_offset, act_offset, pre_offset, aux_offset, running_offset, capacity, norm, p, "
    "residual, mode, bits, rows_at, precision",
    [("inp.shape[1] == n_in", "inp must have n_in columns"),
     ("inp.shape[0] <= capacity", "inp must have at most capacity rows"),
     ("row_ids.shape[0] == 0 or row_ids.shape[0] == inp.shape[0]",
      "row_ids must be empty or have one key per row of inp"),
     ("mode == INFER or mode == TRAIN or mode == REPLAY", "mode must be INFER, TRAIN or REPLAY"),
     "n_rows = inp.shape[0]"] + _LAYER_RULES,
    dict(_SCOPE, INFER=INFER, TRAIN=TRAIN, REPLAY=REPLAY))
_check_backward = requirements(
    "block_backward", "dinp, grads, dout, inp, inp_pre, inp_activation, acts, running, params, "
    "n_in, n_out, activation, param_offset, act_offset, pre_offset, aux_offset, running_offset, "
    "capacity, norm, p, residual, bits, rows_at, precision",
    [("dout.shape[1] == n_out", "dout must have n_out columns"),
     ("dout.shape[0] <= capacity", "dout must have at most capacity rows"),
     ("inp.shape[0] == dout.shape[0] and inp.shape[1] == n_in",
      "inp must be (B, n_in), B dout's rows"),
     ("inp_pre.shape[0] == inp.shape[0] and inp_pre.shape[1] == inp.shape[1]",
      "inp_pre must be (B, n_in) as inp"),
     ("(dinp.shape[0] == dout.shape[0] or dinp.shape[0] == 0) and dinp.shape[1] == n_in",
      "dinp must be (B, n_in), or have no rows"),
     ("grads.shape[0] == params.shape[0]", "grads must have params' length"),
     ("is_activation(inp_activation)", "inp_activation must be one of kernels.CODES' codes"),
     "n_rows = dout.shape[0]"] + _LAYER_RULES,
    _SCOPE)
