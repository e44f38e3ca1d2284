"""Gradient norms, clipping and parameter updates over the flat buffers.

Gradient norms are summed per layer over fixed-size chunks (never per thread), so they, and the
clipping that uses them, are the same whatever the thread count.

The update stage: an optimizer describes its update to compiled code as an ``Update`` (kind,
hyper-parameters, state); the network's training step computes the gradients, then applies the
update of that kind (``network.apply_update``).

The kinds of update are a registry, ``KINDS`` (code -> ``UpdateKind``): each entry names its
step kernel, its hyper-parameters (float64, at their positions in ``Update.hyper``; the first
four, ``COMMON_HYPER``, every kind has, and ``STEPS`` counts the updates applied), the rows of
its state for given hyper-parameters, and which of those rows never go negative. Everything
else derives from it: the network's units and dispatch, the Python layer's checks, the checks
of a loaded checkpoint, the command's options. Each step kernel is ``guarded_step`` (the norm,
the clipping and the refusals every kind shares) around the kind's own pass over the
parameters and its overflow bound. The kinds:

- ``SGD_KIND`` (``sgd_step``): momentum, dampening, nesterov. State: the momentum buffer (1
  row), none without momentum.
- ``ADAM_KIND`` (``adam_step``): beta1, beta2, eps, amsgrad, decoupled (AdamW's weight decay).
  State: first and second moments, and with amsgrad the running maximum of the second.
- ``RMSPROP_KIND`` (``rmsprop_step``): alpha, eps, momentum, centered. State: the average of
  the squared gradients, then with momentum its buffer, then when centered the average of the
  gradients.

The arithmetic is PyTorch's (torch.optim.SGD, Adam, AdamW, RMSprop, and clip_grad_norm_),
operation for operation, so that float64 runs agree with it to rounding.
"""
import math
import numbers
from collections import namedtuple

import numpy as np
from numba import njit, prange, types

from . import _units
from ._checks import arguments, require
from ._config import ELEMENTWISE, INLINED, NORM_CHUNK, PARALLEL, SERIAL, UPDATE_CHUNK
from ._native import num_threads

Update = namedtuple("Update", ["kind", "hyper", "state"])
Update.__doc__ = """An optimizer's update, as compiled code takes it: kind (int, a code of
KINDS), hyper (float64 array of its hyper-parameters), state (2-D array (n_buffers, P) of the
parameters' dtype: its per-parameter buffers, in the parameters' layout; 0 rows when it keeps
none)."""

# The hyper-parameters every kind has, first in Update.hyper; each kind's own follow.
COMMON_HYPER = ("lr", "clip_norm", "steps", "weight_decay")
LR, CLIP_NORM, STEPS, WEIGHT_DECAY = map(COMMON_HYPER.index, COMMON_HYPER)
SGD_HYPER = COMMON_HYPER + ("momentum", "dampening", "nesterov")
MOMENTUM, DAMPENING, NESTEROV = map(SGD_HYPER.index, SGD_HYPER[4:])
ADAM_HYPER = COMMON_HYPER + ("beta1", "beta2", "eps", "amsgrad", "decoupled")
BETA1, BETA2, EPS, AMSGRAD, DECOUPLED = map(ADAM_HYPER.index, ADAM_HYPER[4:])
RMSPROP_HYPER = COMMON_HYPER + ("alpha", "eps", "momentum", "centered")
RMS_ALPHA, RMS_EPS, RMS_MOMENTUM, RMS_CENTERED = map(RMSPROP_HYPER.index, RMSPROP_HYPER[4:])


@njit(**INLINED)
def _layer_chunks(param_offsets, layer):
    return max(1, (param_offsets[layer + 1] - param_offsets[layer] + NORM_CHUNK - 1)
               // NORM_CHUNK)


@njit(**SERIAL)
def norm_partials_size(param_offsets):
    """Length of the float64 scratch array that layer_sums_of_squares needs for param_offsets
    ((L+1,) int64, as it takes them)."""
    _partials_arguments(param_offsets)
    total = 0
    for layer in range(param_offsets.shape[0] - 1):
        total += _layer_chunks(param_offsets, layer)
    return total


_partials_arguments = arguments("norm_partials_size", any_layout=True,
                                  param_offsets="index")


@njit(**SERIAL)
def chunk_bounds(param_offsets, chunk):
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
def sum_of_squares(x):
    """Sum of x**2 in float64. Squares are summed in x's dtype over blocks of 512 (many
    vector lanes of a few terms each: a relative error near 1e-7 in float32), the blocks in
    float64, which is faster than adding every square straight into a float64 total
    (docs/kernels-notes.md)."""
    total = 0.0
    for b0 in range(0, x.shape[0], 512):
        block = x[b0:b0 + 512]
        partial = x.dtype.type(0)
        for i in range(block.shape[0]):
            partial += block[i] * block[i]
        total += partial
    return total


@njit(**SERIAL)
def layer_sums_of_squares(layer_sq, partials, grads, param_offsets):
    """Sum of squares of each layer's block of a flat gradient, in one pass; returns the total.

    layer_sq (L,) float64: per layer; partials: float64 scratch of
    norm_partials_size(param_offsets); grads (P,); param_offsets (L+1,) int64: layer l owns
    grads[param_offsets[l]:param_offsets[l+1]], rising from 0 to P (pass [0, P] for one block).
    """
    _check_layer_sums_of_squares(layer_sq, partials, grads, param_offsets)
    return _layer_sums_of_squares(layer_sq, partials, grads, param_offsets)


@njit(**PARALLEL)
def _layer_sums_of_squares(layer_sq, partials, grads, param_offsets):
    """layer_sums_of_squares on checked arguments."""
    n_chunks = norm_partials_size(param_offsets)
    if n_chunks < num_threads():
        for c in range(n_chunks):
            start, stop, _ = chunk_bounds(param_offsets, c)
            partials[c] = sum_of_squares(grads[start:stop])
    else:
        for c in prange(n_chunks):
            start, stop, _ = chunk_bounds(param_offsets, c)
            partials[c] = sum_of_squares(grads[start:stop])
    # A loop, not layer_sq[:] = 0: in a parallel=True function that array expression becomes a
    # parallel region of its own, entered on every call.
    for layer in range(layer_sq.shape[0]):
        layer_sq[layer] = 0.0
    total = 0.0
    for c in range(n_chunks):
        _, _, layer = chunk_bounds(param_offsets, c)
        layer_sq[layer] += partials[c]
        total += partials[c]
    return total


@njit(**SERIAL)
def axpy(y, alpha, x):
    """y -= alpha * x (1-D, same length)."""
    for i in range(y.shape[0]):
        y[i] -= alpha * x[i]


@njit(**PARALLEL)
def sgd_update(params, grads, step):
    """params (P,) -= step * grads (P,), in place."""
    _sgd_update_arguments(params, grads, step)
    require(grads.shape[0] == params.shape[0], "sgd_update: grads must have params' length (P)")
    step_ = params.dtype.type(step)
    n_chunks = (params.shape[0] + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    if n_chunks < 2 * num_threads():
        axpy(params, step_, grads)
        return
    for c in prange(n_chunks):
        chunk = slice(c * UPDATE_CHUNK, (c + 1) * UPDATE_CHUNK)
        axpy(params[chunk], step_, grads[chunk])


_sgd_update_arguments = arguments("sgd_update", any_layout=True, params="vector",
                                  grads="vector", step="number")


@njit(**SERIAL)
def add_scaled(total, x, weight):
    """total (P,) += weight * x (P,), in place (gradient accumulation). One thread: a pass over
    memory that a parallel loop would barely speed up, and cheap to compile into a caller."""
    _add_scaled_arguments(total, x, weight)
    require(x.shape[0] == total.shape[0], "add_scaled: x must have total's length (P)")
    axpy(total, total.dtype.type(-weight), x)


_add_scaled_arguments = arguments("add_scaled", any_layout=True, total="vector",
                                  x="vector", weight="number")


@njit(**SERIAL)
def _clip_scale(norm, clip_norm):
    """The factor clip_grad_norm_ multiplies the gradients by."""
    coef = clip_norm / (norm + 1e-6)
    return coef if coef < 1.0 else 1.0


@njit(**INLINED)
def guarded_step(kind_pass, kind_fits, params, layer_sq, partials, grads, param_offsets, hyper,
                 state):
    """The step every update kind shares, around its own two functions: kind_pass(params,
    grads, state, scale, hyper), its update of params (P,) and state from the gradient
    grads (P,) times scale, and kind_fits(params, norm, scale, hyper), whether that update
    stays within the dtype. Returns (gradient norm before clipping, applied); advances
    hyper[STEPS] when applied.

    The norm is sqrt of the total of layer_sums_of_squares (which also fills layer_sq (L,),
    the per-layer sums of squares, in the same pass; partials: its scratch). When norm >
    hyper[CLIP_NORM] the update uses grads * clip_norm / (norm + 1e-6), as clip_grad_norm_;
    grads are not changed (clip_norm = inf: no clipping). The update is not applied (nothing
    changes) when the norm is NaN or Inf, or when kind_fits says it could overflow.

    Inlined into each kind's step (the kind's functions are compile-time constants there), so
    each step kernel is one function of its own, its unit compiled only when used. The step
    checks its arguments first (_step_checks).
    """
    norm = math.sqrt(_layer_sums_of_squares(layer_sq, partials, grads, param_offsets))
    scale = _clip_scale(norm, hyper[CLIP_NORM])
    applied = math.isfinite(norm) and kind_fits(params, norm, scale, hyper)
    if applied:
        kind_pass(params, grads, state, scale, hyper)
        hyper[STEPS] += 1
    return norm, applied


@njit(**INLINED)
def _divided_step_fits(params, biggest, step_size, eps):
    """The overflow bound of an update that divides the gradient by the root of an average of
    its squares plus eps: the square of the largest gradient entry (biggest), and step_size
    times the largest quotient, (biggest + eps) / eps, both below a quarter and a half of the
    dtype's largest finite value."""
    largest = _largest(params)
    return (biggest < math.sqrt(0.25 * largest)
            and step_size * (biggest + eps) / eps < 0.5 * largest)


# -- SGD ---------------------------------------------------------------------------------------


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
def _sgd_pass(params, grads, state, scale, hyper):
    buf = state[0] if state.shape[0] > 0 else params[:0]   # no buffer without momentum
    t = params.dtype.type
    args = (t(scale), t(hyper[LR]), t(hyper[WEIGHT_DECAY]), t(hyper[MOMENTUM]),
            t(1.0 - hyper[DAMPENING]), hyper[NESTEROV] != 0, hyper[STEPS] == 0)
    n_chunks = (params.shape[0] + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    if n_chunks < 2 * num_threads():
        _sgd_chunk(params, grads, buf, *args)
        return
    for c in prange(n_chunks):
        chunk = slice(c * UPDATE_CHUNK, (c + 1) * UPDATE_CHUNK)
        _sgd_chunk(params[chunk], grads[chunk], buf[chunk], *args)   # buf may be empty


@njit(**SERIAL)
def _sgd_fits(params, norm, scale, hyper):
    """lr, and lr times the clipped norm (the largest change the gradient can make to a
    parameter), below half the dtype's largest finite value."""
    limit = 0.5 * _largest(params)
    return hyper[LR] < limit and hyper[LR] * scale * norm < limit


@njit(**SERIAL)
def sgd_step(params, layer_sq, partials, grads, param_offsets, hyper, state):
    """One torch.optim.SGD step (momentum, dampening, Nesterov, weight decay as L2) on the
    gradient clipped as by clip_grad_norm_ (hyper (7,) and state (0 or 1, P): an SGD_KIND
    Update's; params, grads (P,); layer_sq (L,) and partials: see guarded_step). Returns
    (gradient norm before clipping, applied); advances hyper[STEPS] when applied. Refused
    (nothing changed) when the norm is NaN or Inf, or when lr, or lr times the clipped norm,
    is above half the dtype's largest finite value. Raises ValueError, nothing changed, for
    grads, layer_sq, partials or param_offsets (rising from 0 to P) that do not fit params,
    hyper of another kind's length, or a state without the rows (of P) hyper's options use."""
    _check_sgd_step(params, layer_sq, partials, grads, param_offsets, hyper, state)
    return guarded_step(_sgd_pass, _sgd_fits, params, layer_sq, partials, grads,
                        param_offsets, hyper, state)


# -- Adam, AdamW -------------------------------------------------------------------------------


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
    n_chunks = (params.shape[0] + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    if n_chunks < 2 * num_threads():
        _adam_chunk(params, grads, state[0], state[1], vmax, *args)
        return
    for c in prange(n_chunks):
        chunk = slice(c * UPDATE_CHUNK, (c + 1) * UPDATE_CHUNK)
        _adam_chunk(params[chunk], grads[chunk], state[0][chunk], state[1][chunk], vmax[chunk],
                    *args)


@njit(**SERIAL)
def _adam_fits(params, norm, scale, hyper):
    """_divided_step_fits, with this step's bias-corrected rate (the clipped norm: no gradient
    entry is larger)."""
    step_size = hyper[LR] / (1.0 - hyper[BETA1] ** (hyper[STEPS] + 1))
    return _divided_step_fits(params, scale * norm, step_size, hyper[EPS])


@njit(**SERIAL)
def adam_step(params, layer_sq, partials, grads, param_offsets, hyper, state):
    """One torch.optim.Adam step (hyper[DECOUPLED]: AdamW; hyper[AMSGRAD]: AMSGrad) on the
    gradient clipped as by clip_grad_norm_ (hyper (9,) and state (2 or 3, P): an ADAM_KIND
    Update's; the other arguments as sgd_step's). Returns (gradient norm before clipping,
    applied); advances hyper[STEPS] when applied. Refused (nothing changed) when the norm is
    NaN or Inf, or when the clipped gradient's square, or the largest change its step could
    make, would overflow the dtype. Arguments that do not fit raise ValueError, as sgd_step's."""
    _check_adam_step(params, layer_sq, partials, grads, param_offsets, hyper, state)
    return guarded_step(_adam_pass, _adam_fits, params, layer_sq, partials, grads,
                        param_offsets, hyper, state)


# -- RMSprop -----------------------------------------------------------------------------------


@njit(**ELEMENTWISE)
def _rmsprop_chunk(p, g, square_avg, buf, grad_avg, scale, weight_decay, alpha, weight,
                   one_minus_weight, small_weight, eps, lr, momentum, has_momentum, centered):
    """torch.optim.RMSprop's update of one chunk, on g * scale. weight = 1 - alpha: the lerp
    weight of the gradients' average (torch's lerp takes one of two forms by its size). buf:
    the momentum buffer (unused without momentum); grad_avg: the gradients' average (unused
    unless centered). Adds weight_decay * p without a branch, as _adam_chunk."""
    for i in range(p.shape[0]):
        pi = p[i]
        d = g[i] * scale + weight_decay * pi
        s = square_avg[i] * alpha + weight * d * d
        square_avg[i] = s
        if centered:
            diff = d - grad_avg[i]
            a = grad_avg[i] + weight * diff if small_weight else d - diff * one_minus_weight
            grad_avg[i] = a
            s = s - a * a
            if s < 0:   # s >= a * a but for rounding (where torch's root gives NaN)
                s = s - s
        avg = math.sqrt(s) + eps
        if has_momentum:
            b = buf[i] * momentum + d / avg
            buf[i] = b
            p[i] = pi - lr * b
        else:
            p[i] = pi - lr * (d / avg)


@njit(**PARALLEL)
def _rmsprop_pass(params, grads, state, scale, hyper):
    t = params.dtype.type
    alpha, momentum = hyper[RMS_ALPHA], hyper[RMS_MOMENTUM]
    weight = 1.0 - alpha
    has_momentum = momentum != 0
    centered = hyper[RMS_CENTERED] != 0
    # The rows of its state, in order (KINDS' entry); a row the update does not use stands in
    # for an absent one.
    buf = state[1] if has_momentum else state[0]
    grad_avg = state[2 if has_momentum else 1] if centered else state[0]
    args = (t(scale), t(hyper[WEIGHT_DECAY]), t(alpha), t(weight), t(1.0 - weight),
            weight < 0.5, t(hyper[RMS_EPS]), t(hyper[LR]), t(momentum), has_momentum, centered)
    n_chunks = (params.shape[0] + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    if n_chunks < 2 * num_threads():
        _rmsprop_chunk(params, grads, state[0], buf, grad_avg, *args)
        return
    for c in prange(n_chunks):
        chunk = slice(c * UPDATE_CHUNK, (c + 1) * UPDATE_CHUNK)
        _rmsprop_chunk(params[chunk], grads[chunk], state[0][chunk], buf[chunk],
                       grad_avg[chunk], *args)


@njit(**SERIAL)
def _rmsprop_fits(params, norm, scale, hyper):
    """_divided_step_fits at rate lr (the clipped norm: no gradient entry is larger)."""
    return _divided_step_fits(params, scale * norm, hyper[LR], hyper[RMS_EPS])


@njit(**SERIAL)
def rmsprop_step(params, layer_sq, partials, grads, param_offsets, hyper, state):
    """One torch.optim.RMSprop step (weight decay as L2, momentum, centered) on the gradient
    clipped as by clip_grad_norm_ (hyper (8,) and state (1 to 3, P): an RMSPROP_KIND Update's;
    the other arguments as sgd_step's). Returns (gradient norm before clipping, applied);
    advances hyper[STEPS] when applied. Refused (nothing changed) when the norm is NaN or
    Inf, or when the clipped gradient's square, or the largest change its step could make,
    would overflow the dtype. Centered, the variance estimate square_avg - grad_avg**2 cannot
    be negative but its rounding can (after steps of near-constant gradients): there torch's
    root gives NaN, this kernel's 0. Arguments that do not fit raise ValueError, as
    sgd_step's."""
    _check_rmsprop_step(params, layer_sq, partials, grads, param_offsets, hyper, state)
    return guarded_step(_rmsprop_pass, _rmsprop_fits, params, layer_sq, partials, grads,
                        param_offsets, hyper, state)


@njit(**INLINED)
def _largest(x):
    """Largest finite value of x's dtype."""
    if x.itemsize == 4:
        return 3.4028234663852886e38
    return 1.7976931348623157e308


# -- the registry ------------------------------------------------------------------------------


class UpdateKind(namedtuple("UpdateKind", ["code", "name", "step", "hyper", "rows",
                                           "non_negative", "bound_by"])):
    """An entry of KINDS. code: its Update.kind; name: its name (the optimizers', and its
    unit's, name + "_step"); step: its kernel, step(params, layer_sq, partials, grads,
    param_offsets, hyper, state) -> (norm, applied); hyper: the names of its hyper-parameters,
    in the order of Update.hyper; rows: its state rows, in order, each (name, the
    hyper-parameter that must be nonzero for an update to use the row, or None: always used);
    non_negative: the names of state rows that never go below 0 (checked in a loaded
    checkpoint); bound_by: the hyper-parameters its overflow bound reads besides the norm
    (named when a step is refused)."""
    __slots__ = ()

    @property
    def unit(self):
        """The name of its unit (see _units): its step kernel's."""
        return self.step.py_func.__name__

    def state(self, hyper):
        """The names of the state rows an update with these hyper-parameters uses, in order."""
        # (A list, not a generator: this runs every step, where a generator raised the steps'
        # peak of traced Python memory past tests/test_design.py's bound.)
        return tuple([name for name, option in self.rows
                      if option is None or hyper[self.hyper.index(option)] != 0])


SGD_KIND, ADAM_KIND, RMSPROP_KIND = 0, 1, 2
#: The registry of update kinds, by code (Update.kind).
KINDS = {kind.code: kind for kind in (
    UpdateKind(SGD_KIND, "sgd", sgd_step, SGD_HYPER, (("momentum_buffer", "momentum"),), (),
               ("lr",)),
    UpdateKind(ADAM_KIND, "adam", adam_step, ADAM_HYPER,
               (("exp_avg", None), ("exp_avg_sq", None), ("max_exp_avg_sq", "amsgrad")),
               ("exp_avg_sq", "max_exp_avg_sq"), ("lr", "eps")),
    # _rmsprop_pass reads its rows in this order.
    UpdateKind(RMSPROP_KIND, "rmsprop", rmsprop_step, RMSPROP_HYPER,
               (("square_avg", None), ("momentum_buffer", "momentum"),
                ("grad_avg", "centered")),
               ("square_avg",), ("lr", "eps")),
)}
#: The update kinds network.apply_update knows.
UPDATE_KINDS = tuple(KINDS)
#: Each kind's step as a unit (see _units; named UpdateKind.unit), by code: the callers
#: network.apply_update dispatches to.
STEP_UNITS = {code: _units.unit(
    kind.unit, kind.step,
    lambda dt: (_units.VECTOR[dt], _units.FLOAT64S, _units.FLOAT64S, _units.VECTOR[dt],
                _units.INT64S, _units.FLOAT64S, _units.MATRIX[dt]),
    types.Tuple((types.float64, types.boolean))) for code, kind in KINDS.items()}


# -- argument checks, written from the registry ------------------------------------------------
# What every step refuses, before it writes anything: grads, layer_sq, partials or param_offsets
# that do not fit params (the norm's pass would read or write outside them), a hyper array of
# another kind's length (its values would be read as this kind's), and a state without the rows
# its hyper-parameters use, each of params' length. Each kind's sizes come from its entry.

_NORM_CHECKS = """    n_layers = param_offsets.shape[0] - 1
    if n_layers < 0 or param_offsets[0] != 0 or param_offsets[n_layers] != {p}.shape[0]:
        raise ValueError("{kernel}: param_offsets must run from 0 to {p}' length (P)")
    for layer in range(n_layers):
        if param_offsets[layer + 1] < param_offsets[layer]:
            raise ValueError("{kernel}: param_offsets must never decrease")
    if layer_sq.shape[0] < n_layers:
        raise ValueError("{kernel}: layer_sq must have an element per layer "
                         "(len(param_offsets) - 1)")
    if partials.shape[0] < norm_partials_size(param_offsets):
        raise ValueError("{kernel}: partials must have norm_partials_size(param_offsets) "
                         "elements")
"""
_ARGUMENT_KINDS = dict(params="vector", layer_sq="float64s", partials="float64s",
                       grads="vector", param_offsets="index", kind="code", hyper="float64s",
                       state="matrix")


def _compiled_check(kernel, names, body):
    """An inlined function check_<kernel>(*names) that runs the typing guard of its arguments
    (their kinds in _ARGUMENT_KINDS), then body (lines of Python, its raises' messages
    constant, as compiled code needs them)."""
    params = ", ".join(names)
    guard = arguments(kernel, any_layout=True,
                      **{name: _ARGUMENT_KINDS[name] for name in names})
    source = f"def check_{kernel}({params}):\n    guard({params})\n{body}"
    # (__name__: the module Numba records for the code's globals, in its cache.)
    scope = {"guard": guard, "norm_partials_size": norm_partials_size, "__name__": __name__}
    exec(compile(source, __file__, "exec"), scope)
    return njit(**INLINED)(scope[f"check_{kernel}"])


def _rows_needed(kind):
    """The compiled expression of the number of state rows a kind's update uses (hyper: its
    hyper-parameters, of the kind's length), and its description."""
    always = sum(option is None for _, option in kind.rows)
    options = [option for _, option in kind.rows if option is not None]
    count = " + ".join([str(always)] + [f"int(hyper[{kind.hyper.index(option)}] != 0)"
                                         for option in options])
    described = ", ".join(name if option is None else f"{name} if {option} != 0"
                          for name, option in kind.rows)
    return count, described


def _kind_checks(kernel, kind, indent):
    """The lines that check hyper and state for an update of this kind."""
    count, described = _rows_needed(kind)
    hyper_message = (f"{kernel}: hyper must hold the {len(kind.hyper)} values of an Update of "
                     f"kind {kind.name} ({', '.join(kind.hyper)})")
    state_message = (f"{kernel}: state must have a row of params' length (P) for each buffer "
                     f"an update of kind {kind.name} with these hyper-parameters keeps "
                     f"({described})")
    lines = [f"if hyper.shape[0] != {len(kind.hyper)}:",
             f"    raise ValueError({hyper_message!r})",
             f"rows = {count}",
             "if state.shape[0] < rows or (rows > 0 and state.shape[1] != params.shape[0]):",
             f"    raise ValueError({state_message!r})"]
    return "".join(indent + line + "\n" for line in lines)


def _step_checks(kinds, kernel):
    """The checks of a step's arguments (params, layer_sq, partials, grads, param_offsets,
    [kind,] hyper, state) for an update of one of these kinds (several: kind is an argument,
    and one no entry has is refused)."""
    names = ["params", "layer_sq", "partials", "grads", "param_offsets", "hyper", "state"]
    body = (f"    if grads.shape[0] != params.shape[0]:\n"
            f"        raise ValueError(\"{kernel}: grads must have params' length (P)\")\n"
            + _NORM_CHECKS.format(kernel=kernel, p="params"))
    if len(kinds) == 1:
        return _compiled_check(kernel, names, body + _kind_checks(kernel, kinds[0], "    "))
    for i, kind in enumerate(kinds):
        body += f"    {'elif' if i else 'if'} kind == {kind.code}:\n"
        body += _kind_checks(kernel, kind, "        ")
    body += ("    else:\n"
             f"        raise ValueError(\"{kernel}: kind must be a code of kernels.KINDS\")\n")
    return _compiled_check(kernel, names[:5] + ["kind"] + names[5:], body)


# The step kernels' own (they call them by these names, bound when they compile).
_check_sgd_step, _check_adam_step, _check_rmsprop_step = (
    _step_checks([KINDS[code]], KINDS[code].unit) for code in (SGD_KIND, ADAM_KIND, RMSPROP_KIND))
#: The checks of network.apply_update's arguments: check_update(params, layer_sq, partials,
#: grads, param_offsets, update.kind, update.hyper, update.state) raises ValueError (a kind
#: KINDS lacks, or arguments its step would refuse) before the step's unit is called: an
#: exception raised inside a unit could not reach the caller.
check_update = _step_checks(list(KINDS.values()), "apply_update")
_check_layer_sums_of_squares = _compiled_check(
    "layer_sums_of_squares", ["layer_sq", "partials", "grads", "param_offsets"],
    _NORM_CHECKS.format(kernel="layer_sums_of_squares", p="grads"))


def state_rows(kind, hyper):
    """Rows of Update.state an update of this kind and these hyper-parameters uses (plain
    Python: what the specs allocate, and what the Python layer checks before handing an
    Update to compiled code)."""
    return len(KINDS[kind].state(hyper))


def update_spec(kind, dtype, n_params, **hyper):
    """An Update of this kind (a code of KINDS) with these hyper-parameters, by name (those
    left out, and steps: 0), and a zeroed state for n_params parameters of this dtype (float32
    or float64; the first step fills it). Raises TypeError or ValueError naming the argument
    that cannot make one: a kind KINDS lacks, another dtype, a name the kind lacks, a value
    that is not a real number, is NaN or infinite (but clip_norm, inf for no clipping), a
    negative lr or steps, a clip_norm not above 0; n_params not a count, or 0 where the kind
    keeps state for these hyper-parameters."""
    if isinstance(kind, bool) or not isinstance(kind, numbers.Integral) or kind not in KINDS:
        raise ValueError(f"kind: {kind!r:.50} is not a code of kernels.KINDS ("
                         + ", ".join(f"{code}: {k.name}" for code, k in KINDS.items()) + ")")
    entry = KINDS[kind]
    dtype = _float_dtype(dtype)
    values = np.zeros(len(entry.hyper), dtype=np.float64)
    for name, value in hyper.items():
        if name not in entry.hyper:
            raise TypeError(f"{name}: not a hyper-parameter of update kind "
                            f"{entry.name!r} ({', '.join(entry.hyper)})")
        values[entry.hyper.index(name)] = _hyper_value(name, value)
    rows = entry.state(values)
    if isinstance(n_params, bool) or not isinstance(n_params, numbers.Integral):
        raise TypeError(f"n_params: must be an integer, not {type(n_params).__name__}")
    if n_params < 0 or (rows and n_params == 0):
        needs = (f"{entry.name} with these hyper-parameters keeps {', '.join(rows)} for every "
                 "parameter: it must be their number (model.n_params)" if rows else
                 "must be at least 0")
        raise ValueError(f"n_params: {needs}, not {n_params}")
    return Update(kind, values, np.zeros((len(rows), n_params), dtype=dtype))


def _hyper_value(name, value):
    """A hyper-parameter's value as a float, checked (see update_spec)."""
    if not isinstance(value, (numbers.Real, np.bool_)):   # (bools: the options' flags, 1 or 0)
        raise TypeError(f"{name}: must be a real number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (name == "clip_norm" and value > 0)):
        raise ValueError(f"{name}: must be finite"
                         + (" (inf: no clipping)" if name == "clip_norm" else "")
                         + f", not {value}")
    if (name in ("lr", "steps") and value < 0) or (name == "clip_norm" and value <= 0):
        raise ValueError(f"{name}: must be {'above' if name == 'clip_norm' else 'at least'} 0, "
                         f"not {value:g}")
    return value


def _float_dtype(dtype):
    """dtype as np.float32 or np.float64, or TypeError."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if checked not in (np.float32, np.float64):
        raise TypeError(f"dtype: must be float32 or float64, not {dtype!r:.50}")
    return checked


def sgd_spec(lr, clip_norm, dtype, momentum=0.0, dampening=0.0, nesterov=False,
             weight_decay=0.0, n_params=0):
    """The Update of SGD (clip_norm = inf: no clipping); with momentum, its buffer for n_params
    parameters (then required), zeroed (the first step fills it). Checked as update_spec."""
    return update_spec(SGD_KIND, dtype, n_params, lr=lr, clip_norm=clip_norm,
                       weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                       nesterov=nesterov)


def adam_spec(lr, clip_norm, dtype, n_params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              amsgrad=False, decoupled=False):
    """The Update of Adam (decoupled: AdamW), with zeroed moments for n_params parameters.
    Checked as update_spec; betas must be a pair."""
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas: must be a pair (beta1, beta2), not {betas!r:.100}") from None
    return update_spec(ADAM_KIND, dtype, n_params, lr=lr, clip_norm=clip_norm,
                       weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps,
                       amsgrad=amsgrad, decoupled=decoupled)
