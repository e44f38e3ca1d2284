"""Activations, each defined once in ``ACTIVATIONS``; everything else is derived from that table.

An entry gives the activation's name, its value a = f(z) and its gradient dL/dz = grad(dL/da, z,
a) as scalar ``@njit`` functions, whether that gradient reads the input z (then the network
keeps z beside a), the initialisation rule of layers that use it, and the matching PyTorch
function. The activation's code, used by every kernel, is its index in the table; the module
constants (``RELU``, ``GELU``, ...) are those codes. Each tile loop below is written once and
specialised per activation by ``per_activation``, with the branch on the code outside the loop
(so it vectorises).

Adding an activation: one ``Activation`` entry (and its tests and docs). ``MLP``'s accepted
names, the network's memory plan, the tests' NumPy reference and the PyTorch comparison follow.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import _units
from ._checks import arguments, require
from ._config import INLINED, PARALLEL, SERIAL
from ._tiling import n_tiles, span

Activation = namedtuple("Activation", ["name", "value", "grad", "uses_input", "init", "torch"])
Activation.__doc__ = """One activation. value(z) -> a; grad(dout, z, a) -> dout * da/dz;
uses_input: grad reads z (else only a); init: "he" (normal, std sqrt(2 / fan_in)) or "glorot"
(uniform, limit sqrt(6 / (fan_in + fan_out))); torch: (name in torch.nn.functional, keyword
arguments), or None for the identity."""


def as_type_of(like, value):
    """value converted to the float type of like (compiled code only): keeps float32 loops in
    float32 when a formula has constants."""
    raise NotImplementedError("compiled code only")


@overload(as_type_of, inline="always")
def _as_type_of_impl(like, value):
    to = np.dtype(str(like)).type
    return lambda like, value: to(value)


@njit(**INLINED)
def _identity(z):
    return z


@njit(**INLINED)
def _identity_grad(dout, z, a):
    return dout


@njit(**INLINED)
def _relu(z):
    return as_type_of(z, 0) if z < 0 else z  # NaN passes through, as it must


@njit(**INLINED)
def _relu_grad(dout, z, a):
    return dout if a > 0 else as_type_of(dout, 0)  # a select: it vectorises


@njit(**INLINED)
def _sigmoid(z):
    # Two branches so that exp never sees a large positive argument: no overflow, no warning.
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


@njit(**INLINED)
def _sigmoid_grad(dout, z, a):
    return dout * (a * (1 - a))


@njit(**INLINED)
def _tanh(z):
    return math.tanh(z)


@njit(**INLINED)
def _tanh_grad(dout, z, a):
    return dout * (1 - a * a)


LEAKY_SLOPE = 0.01  # PyTorch's default negative_slope


@njit(**INLINED)
def _leaky_relu(z):
    return z if z > 0 else z * as_type_of(z, LEAKY_SLOPE)


@njit(**INLINED)
def _leaky_relu_grad(dout, z, a):
    return dout if a > 0 else dout * as_type_of(dout, LEAKY_SLOPE)


@njit(**INLINED)
def _gelu(z):
    """z * Phi(z), Phi the standard normal CDF (the exact form, as torch.nn.GELU())."""
    return z * (as_type_of(z, 0.5) * (1 + math.erf(z * as_type_of(z, 0.7071067811865476))))


@njit(**INLINED)
def _gelu_grad(dout, z, a):
    cdf = as_type_of(z, 0.5) * (1 + math.erf(z * as_type_of(z, 0.7071067811865476)))
    pdf = as_type_of(z, 0.3989422804014327) * math.exp(-(z * z) * as_type_of(z, 0.5))
    return dout * (cdf + z * pdf)


ACTIVATIONS = (
    Activation("identity", _identity, _identity_grad, False, "glorot", None),
    Activation("relu", _relu, _relu_grad, False, "he", ("relu", {})),
    Activation("sigmoid", _sigmoid, _sigmoid_grad, False, "glorot", ("sigmoid", {})),
    Activation("tanh", _tanh, _tanh_grad, False, "glorot", ("tanh", {})),
    Activation("leaky_relu", _leaky_relu, _leaky_relu_grad, False, "he",
               ("leaky_relu", {"negative_slope": LEAKY_SLOPE})),
    Activation("gelu", _gelu, _gelu_grad, True, "he", ("gelu", {})),
)
#: Activation name -> code.
CODES = {a.name: code for code, a in enumerate(ACTIVATIONS)}
globals().update({name.upper(): code for name, code in CODES.items()})  # RELU = 1, ...

_USES_INPUT = tuple(a.uses_input for a in ACTIVATIONS)
N_ACTIVATIONS = len(ACTIVATIONS)


@njit(**INLINED)
def is_activation(code):
    """Whether code is one of CODES' (a kernel refuses any other: see _checks)."""
    return 0 <= code < N_ACTIVATIONS


@njit(**INLINED)
def uses_input(activation):
    """Whether the gradient of this activation code reads its input z (then keep z)."""
    return _USES_INPUT[activation]


def per_activation(loop):
    """An inlined function f(activation, args) that runs loop(value, grad, uses_input, args)
    with the functions of the table entry whose code is activation (the identity's for a code
    outside the table, which the public kernels refuse before they get here): a chain of ifs
    over the codes, built from ACTIVATIONS. So each loop is written once, the branch on the
    code stays outside it, and the activation's functions are called directly (and inlined)
    inside it."""
    chain = _link(None, ACTIVATIONS[IDENTITY], loop, None)  # the identity, and any other code
    for code in reversed(range(len(ACTIVATIONS))):
        if code != IDENTITY:
            chain = _link(code, ACTIVATIONS[code], loop, chain)
    return chain


def _link(code, activation_entry, loop, rest):
    """The chain's link for one code; with rest (and code) None, the end of the chain, which
    runs for any code (a code outside the table is the identity: never read out of a table)."""
    value, grad, keep = activation_entry.value, activation_entry.grad, activation_entry.uses_input
    if rest is None:
        @njit(**INLINED)
        def last(activation, args):
            loop(value, grad, keep, args)
        return last

    @njit(**INLINED)
    def link(activation, args):
        if activation == code:
            loop(value, grad, keep, args)
        else:
            rest(activation, args)
    return link


@njit(**INLINED)
def activation_input(z, out, activation):
    """What a gradient kernel reads as the activation's input: z, or out (which only the
    activations that do not use their input accept) when z is None."""
    if z is None:
        if uses_input(activation):
            raise ValueError("this activation's gradient needs inp, its input z (inp_pre in "
                             "dense_backward)")
        return out
    return z


# Tile kernels work on x[r0:r1, c0:c1]. They walk each row as a slice indexed from 0 (indexing
# x[i, j] with j from a runtime c0 makes Numba handle negative j on every access, which LLVM
# cannot vectorise), and when output and input are one buffer they read and write through one
# array (two arguments that alias fail LLVM's overlap check, and the scalar fallback runs).


@njit(**INLINED)
def _bias_value_loop(value, grad, keep_pre, args):
    z, pre, b, r0, r1, c0, c1 = args
    if keep_pre and pre.shape[0] > 0:
        for i in range(r0, r1):
            row, keep = z[i, c0:c1], pre[i, c0:c1]
            for j in range(row.shape[0]):
                v = row[j] + b[j]
                keep[j] = v
                row[j] = value(v)
    else:
        for i in range(r0, r1):
            row = z[i, c0:c1]
            for j in range(row.shape[0]):
                row[j] = value(row[j] + b[j])


_bias_value = per_activation(_bias_value_loop)


@njit(**INLINED)
def _grad_loop(value, grad, keep_pre, args):
    d, pre, out, r0, r1, c0, c1 = args
    for i in range(r0, r1):
        g, z, a = d[i, c0:c1], pre[i, c0:c1], out[i, c0:c1]
        for j in range(g.shape[0]):
            g[j] = grad(g[j], z[j], a[j])


_grad = per_activation(_grad_loop)


# The dense layer's epilogues on C-contiguous arrays (all that the network passes) run as units,
# one per activation: a run compiles the loops of the activations it uses, and each once.

def _specialised(loop, entry):
    value, grad, keep = entry.value, entry.grad, entry.uses_input

    @njit(**INLINED)
    def run(args):
        loop(value, grad, keep, args)
    return run


_BIAS_UNITS = [f"bias_activation_{a.name}" for a in ACTIVATIONS]
_GRAD_UNITS = [f"activation_grad_{a.name}" for a in ACTIVATIONS]
_M, _V = _units.MATRIX, _units.VECTOR
_BOUNDS = (types.int64,) * 4
for _name, _entry in zip(_BIAS_UNITS, ACTIVATIONS):
    _units.register(_name, _specialised(_bias_value_loop, _entry),
                    lambda dt: (_M[dt], _M[dt], _V[dt]) + _BOUNDS, packed=True)
for _name, _entry in zip(_GRAD_UNITS, ACTIVATIONS):
    _units.register(_name, _specialised(_grad_loop, _entry),
                    lambda dt: (_M[dt], _M[dt], _M[dt]) + _BOUNDS, packed=True)
_bias_unit = _units.caller_by_code(_BIAS_UNITS)
_grad_unit = _units.caller_by_code(_GRAD_UNITS)


def epilogue_units(codes):
    """Names of the epilogue units for these activation codes."""
    return [_BIAS_UNITS[c] for c in codes] + [_GRAD_UNITS[c] for c in codes]


def _all_c(*arrays):
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


def bias_activation_tile(z, pre, bias, activation, r0, r1, c0, c1):
    """z[r0:r1, c0:c1] := act(z + bias[c0:c1]), in place. When pre has rows and the
    activation's gradient needs its input, pre[r0:r1, c0:c1] := z + bias as well."""
    raise NotImplementedError("compiled code only")


@overload(bias_activation_tile, jit_options=SERIAL)
def _bias_activation_tile_impl(z, pre, bias, activation, r0, r1, c0, c1):
    if _all_c(z, pre, bias):
        def by_unit(z, pre, bias, activation, r0, r1, c0, c1):
            _bias_unit(activation, (z, pre, bias[c0:c1], r0, r1, c0, c1))
        return by_unit

    def inline(z, pre, bias, activation, r0, r1, c0, c1):
        _bias_value(activation, (z, pre, bias[c0:c1], r0, r1, c0, c1))
    return inline


def activation_grad_tile(d, pre, out, activation, r0, r1, c0, c1):
    """d[r0:r1, c0:c1] := dL/dz from d = dL/da, in place, where out = act(pre). pre is read
    only by activations whose gradient needs their input (pass out for the others)."""
    raise NotImplementedError("compiled code only")


@overload(activation_grad_tile, jit_options=SERIAL)
def _activation_grad_tile_impl(d, pre, out, activation, r0, r1, c0, c1):
    if _all_c(d, pre, out):
        def by_unit(d, pre, out, activation, r0, r1, c0, c1):
            _grad_unit(activation, (d, pre, out, r0, r1, c0, c1))
        return by_unit

    def inline(d, pre, out, activation, r0, r1, c0, c1):
        _grad(activation, (d, pre, out, r0, r1, c0, c1))
    return inline


@njit(**INLINED)
def _value_loop(value, grad, keep_pre, args):
    out, inp, r0, r1 = args
    if out.ctypes.data == inp.ctypes.data:
        for i in range(r0, r1):
            o = out[i]
            for j in range(o.shape[0]):
                o[j] = value(o[j])
    else:
        for i in range(r0, r1):
            o, x = out[i], inp[i]
            for j in range(o.shape[0]):
                o[j] = value(x[j])


_value = per_activation(_value_loop)


@njit(**INLINED)
def _grad_apart_loop(value, grad, keep_pre, args):
    dinp, dout, out, inp, r0, r1 = args
    for i in range(r0, r1):
        g, d, z, a = dinp[i], dout[i], inp[i], out[i]
        for j in range(g.shape[0]):
            g[j] = grad(d[j], z[j], a[j])


_grad_apart = per_activation(_grad_apart_loop)


@njit(**SERIAL)
def _activation_rows(out, inp, activation, r0, r1):
    """out[r0:r1] := act(inp[r0:r1]); out may be inp."""
    _value(activation, (out, inp, r0, r1))


@njit(**SERIAL)
def _activation_backward_rows(dinp, dout, out, inp, activation, r0, r1):
    """dinp[r0:r1] := dL/dz from dout = dL/da; dinp may be dout."""
    if dinp.ctypes.data == dout.ctypes.data:
        c0, c1 = span(0, 1, out.shape[1])
        _grad(activation, (dinp, inp, out, r0, r1, c0, c1))
    else:
        _grad_apart(activation, (dinp, dout, out, inp, r0, r1))


@njit(**PARALLEL)
def activation_forward(out, inp, activation):
    """out (B, N) = act(inp (B, N)) for an activation code; out may be inp. Refused: out of
    another shape, a code not in CODES."""
    _forward_arguments(out, inp, activation)
    require(out.shape == inp.shape, "activation_forward: out must be (B, N) as inp")
    require(is_activation(activation),
            "activation_forward: activation must be one of kernels.CODES' codes")
    n_rows = inp.shape[0]
    tiles = n_tiles(n_rows, 8 * inp.shape[1])
    if tiles == 1:
        _activation_rows(out, inp, activation, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _activation_rows(out, inp, activation, r0, r1)


@njit(**PARALLEL)
def activation_backward(dinp, dout, out, activation, inp=None):
    """dinp (B, N) = dout (B, N) * act'(z), where out (B, N) = act(z); dinp may be dout.
    inp: z (B, N), needed by activations whose gradient reads their input (gelu; see
    uses_input), ignored by the others. Refused: arrays of another shape than out, a code not
    in CODES, no inp where it is needed."""
    _backward_arguments(dinp, dout, out, activation, inp)
    require(dout.shape == out.shape, "activation_backward: dout must be (B, N) as out")
    require(dinp.shape == out.shape, "activation_backward: dinp must be (B, N) as out")
    require(inp is None or inp.shape == out.shape,
            "activation_backward: inp must be (B, N) as out")
    require(is_activation(activation),
            "activation_backward: activation must be one of kernels.CODES' codes")
    require(inp is not None or not uses_input(activation),
            "activation_backward: this activation's gradient needs inp, its input z")
    z = activation_input(inp, out, activation)
    n_rows = out.shape[0]
    tiles = n_tiles(n_rows, 2 * out.shape[1])
    if tiles == 1:
        r0, r1 = span(0, 1, n_rows)
        _activation_backward_rows(dinp, dout, out, z, activation, r0, r1)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _activation_backward_rows(dinp, dout, out, z, activation, r0, r1)


# Element by element, through Numba's indexing: any strides will do.
_forward_arguments = arguments("activation_forward", any_layout=True, out="matrix",
                               inp="matrix", activation="code")
_backward_arguments = arguments("activation_backward", any_layout=True, dinp="matrix",
                                dout="matrix", out="matrix", activation="code", inp="matrix?")
activation_backward_unit = _units.unit(
    "activation_backward", activation_backward,
    lambda dt: (_M[dt], _M[dt], _M[dt], types.int64, _M[dt]))


# The named activations' kernels check their arguments under their own names.
def _named_arguments(name):
    return (arguments(f"{name}_forward", any_layout=True, out="matrix", inp="matrix"),
            arguments(f"{name}_backward", any_layout=True, dinp="matrix", dout="matrix",
                      out="matrix"))


_relu_forward_arguments, _relu_backward_arguments = _named_arguments("relu")
_sigmoid_forward_arguments, _sigmoid_backward_arguments = _named_arguments("sigmoid")
_tanh_forward_arguments, _tanh_backward_arguments = _named_arguments("tanh")


@njit(**SERIAL)
def relu_forward(out, inp):
    """out (B, N) = max(inp, 0); NaN stays NaN."""
    _relu_forward_arguments(out, inp)
    require(out.shape == inp.shape, "relu_forward: out must be (B, N) as inp")
    activation_forward(out, inp, RELU)  # noqa: F821 (defined from the table)


@njit(**SERIAL)
def relu_backward(dinp, dout, out):
    """dinp (B, N) = dout where out > 0, else 0; out is relu_forward's output."""
    _relu_backward_arguments(dinp, dout, out)
    require(dinp.shape == out.shape and dout.shape == out.shape,
            "relu_backward: dinp and dout must be (B, N) as out")
    activation_backward(dinp, dout, out, RELU)  # noqa: F821


@njit(**SERIAL)
def sigmoid_forward(out, inp):
    """out (B, N) = 1 / (1 + exp(-inp)), without overflow for any finite input."""
    _sigmoid_forward_arguments(out, inp)
    require(out.shape == inp.shape, "sigmoid_forward: out must be (B, N) as inp")
    activation_forward(out, inp, SIGMOID)  # noqa: F821


@njit(**SERIAL)
def sigmoid_backward(dinp, dout, out):
    """dinp (B, N) = dout * out * (1 - out); out is sigmoid_forward's output."""
    _sigmoid_backward_arguments(dinp, dout, out)
    require(dinp.shape == out.shape and dout.shape == out.shape,
            "sigmoid_backward: dinp and dout must be (B, N) as out")
    activation_backward(dinp, dout, out, SIGMOID)  # noqa: F821


@njit(**SERIAL)
def tanh_forward(out, inp):
    """out (B, N) = tanh(inp)."""
    _tanh_forward_arguments(out, inp)
    require(out.shape == inp.shape, "tanh_forward: out must be (B, N) as inp")
    activation_forward(out, inp, TANH)  # noqa: F821


@njit(**SERIAL)
def tanh_backward(dinp, dout, out):
    """dinp (B, N) = dout * (1 - out^2); out is tanh_forward's output."""
    _tanh_backward_arguments(dinp, dout, out)
    require(dinp.shape == out.shape and dout.shape == out.shape,
            "tanh_backward: dinp and dout must be (B, N) as out")
    activation_backward(dinp, dout, out, TANH)  # noqa: F821
