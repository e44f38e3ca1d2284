"""The activation kernels refuse what they cannot survive, from Python and from @njit code (see
refusals.py), leaving their outputs as they were; any layout is taken (they index element by
element)."""
import numpy as np

from fastbp import kernels
from refusals import run_refusals

SETUP = """
f32 = np.float32
x = np.linspace(-1, 1, 12).reshape(4, 3); out = np.zeros_like(x); dx = np.zeros_like(x)
g = np.ones_like(x)
"""

_NAMED = [("relu", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh")]

CASES = [
    # label, kernel, arguments, exception, text
    ("out shape", "activation_forward", "out[:2], x, 1", "ValueError",
     "activation_forward: out must be (B, N) as inp"),
    ("code", "activation_forward", "out, x, 99", "ValueError",
     "activation_forward: activation must be one of kernels.CODES"),
    ("negative code", "activation_forward", "out, x, -1", "ValueError",
     "activation must be one of kernels.CODES"),
    ("dtypes", "activation_forward", "out, x.astype(f32), 1", "TypeError",
     "activation_forward: inp is float32 but out is float64"),
    ("1-D", "activation_forward", "out[0], x[0], 1", "TypeError",
     "activation_forward: out must be a 2-D float32 or float64 array"),
    ("code as float", "activation_forward", "out, x, 1.0", "TypeError",
     "activation_forward: activation must be an integer"),
    ("backward dout", "activation_backward", "dx, g[:, :2], x, 1", "ValueError",
     "activation_backward: dout must be (B, N) as out"),
    ("backward dinp", "activation_backward", "dx[:3], g, x, 1", "ValueError",
     "activation_backward: dinp must be (B, N) as out"),
    ("backward inp", "activation_backward", "dx, g, x, 5, x[:2]", "ValueError",
     "activation_backward: inp must be (B, N) as out"),
    ("backward code", "activation_backward", "dx, g, x, 6", "ValueError",
     "activation_backward: activation must be one of kernels.CODES"),
    ("backward gelu without inp", "activation_backward", "dx, g, x, 5", "ValueError",
     "activation_backward: this activation's gradient needs inp"),
    ("backward integer inp", "activation_backward", "dx, g, x, 5, x.astype(np.int64)",
     "TypeError", "activation_backward: inp must be a 2-D float32 or float64 array or None"),
] + [case for name, _ in _NAMED for case in [
    (f"{name} out", f"{name}_forward", "out[:, :1], x", "ValueError",
     f"{name}_forward: out must be (B, N) as inp"),
    (f"{name} dtypes", f"{name}_forward", "out, x.astype(f32)", "TypeError",
     f"{name}_forward: inp is float32 but out is float64"),
    (f"{name} backward", f"{name}_backward", "dx, g[1:], x", "ValueError",
     f"{name}_backward: dinp and dout must be (B, N) as out"),
    (f"{name} backward dinp", f"{name}_backward", "dx[1:], g, x", "ValueError",
     f"{name}_backward: dinp and dout must be (B, N) as out"),
]]


def test_activation_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


def test_activation_kernels_take_any_layout():
    """Fortran order, reversed rows and strided columns are refused nowhere, and give the
    values of the same call on contiguous copies."""
    z = np.linspace(-2, 2, 24).reshape(4, 6)
    for view in (np.asfortranarray(z), z[::-1], z[:, ::2]):
        out = np.empty((view.shape[1], view.shape[0])).T   # Fortran-ordered
        kernels.activation_forward(out, view, kernels.GELU)
        dinp = np.empty_like(out)
        kernels.activation_backward(dinp, view[::-1], out, kernels.GELU, view)
        dense, expected = np.ascontiguousarray(view), np.empty(view.shape)
        kernels.activation_forward(expected, dense, kernels.GELU)
        np.testing.assert_array_equal(out, expected)
        kernels.activation_backward(expected, np.ascontiguousarray(view[::-1]), expected.copy(),
                                    kernels.GELU, dense)
        np.testing.assert_array_equal(dinp, expected)
