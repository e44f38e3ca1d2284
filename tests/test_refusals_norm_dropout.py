"""The normalisation and dropout kernels refuse what they cannot survive, from Python and from
@njit code (see refusals.py), leaving their outputs (and running statistics) as they were."""
import numpy as np

from fastbp import kernels
from refusals import run_refusals

SETUP = """
f32 = np.float32
x = np.linspace(-1, 1, 12).reshape(4, 3); out = np.zeros_like(x); xhat = np.zeros_like(x)
rows = np.zeros(4); cols = np.zeros(3); gamma = np.ones(3); beta = np.zeros(3)
mean = np.zeros(3); rstd = np.ones(3); run_mean = np.zeros(3); run_var = np.ones(3)
dx = np.zeros_like(x); dgamma = np.zeros(3); dbeta = np.zeros(3); g = np.ones_like(x)
mask = np.zeros_like(x); ids = np.arange(4)
"""

CASES = [
    # label, kernel, arguments, exception, text
    ("layer out", "layer_norm_forward", "out[:3], xhat, rows, x, gamma, beta", "ValueError",
     "layer_norm_forward: out and xhat must be (B, N) as inp"),
    ("layer xhat", "layer_norm_forward", "out, xhat[:, :2], rows, x, gamma, beta",
     "ValueError", "layer_norm_forward: out and xhat must be (B, N) as inp"),
    ("layer rstd", "layer_norm_forward", "out, xhat, rows[:3], x, gamma, beta", "ValueError",
     "layer_norm_forward: rstd must have B elements"),
    ("layer gamma", "layer_norm_forward", "out, xhat, rows, x, gamma[:2], beta", "ValueError",
     "layer_norm_forward: gamma and beta must have N elements"),
    ("layer no columns", "layer_norm_forward",
     "out[:, :0], xhat[:, :0], rows, x[:, :0], gamma[:0], beta[:0]", "ValueError",
     "layer_norm_forward: inp must have at least one column"),
    ("layer eps", "layer_norm_forward", "out, xhat, rows, x, gamma, beta, 0.0", "ValueError",
     "layer_norm_forward: eps must be > 0"),
    ("layer eps NaN", "layer_norm_forward", "out, xhat, rows, x, gamma, beta, np.nan",
     "ValueError", "layer_norm_forward: eps must be > 0"),
    ("layer dtypes", "layer_norm_forward", "out, xhat, rows, x, gamma.astype(f32), beta",
     "TypeError", "layer_norm_forward: gamma is float32 but out is float64"),
    ("layer backward dinp", "layer_norm_backward", "dx[1:], dgamma, dbeta, g, xhat, rows, gamma",
     "ValueError", "layer_norm_backward: dinp and xhat must be (B, N) as dout"),
    ("layer backward rstd", "layer_norm_backward", "dx, dgamma, dbeta, g, xhat, cols, gamma",
     "ValueError", "layer_norm_backward: rstd must have B elements"),
    ("layer backward dgamma", "layer_norm_backward",
     "dx, dgamma[:0], dbeta, g, xhat, rows, gamma", "ValueError",
     "layer_norm_backward: gamma, dgamma and dbeta must have N elements"),
    ("layer backward no columns", "layer_norm_backward",
     "dx[:, :0], dgamma[:0], dbeta[:0], g[:, :0], xhat[:, :0], rows, gamma[:0]", "ValueError",
     "layer_norm_backward: dout must have at least one column"),
    ("batch out", "batch_norm_forward",
     "out[:, :2], xhat, mean, rstd, run_mean, run_var, x, gamma, beta, True", "ValueError",
     "batch_norm_forward: out and xhat must be (B, N) as inp"),
    ("batch mean", "batch_norm_forward",
     "out, xhat, rows, rstd, run_mean, run_var, x, gamma, beta, True", "ValueError",
     "batch_norm_forward: mean, rstd, gamma and beta must have N elements"),
    ("batch running", "batch_norm_forward",
     "out, xhat, mean, rstd, run_mean[:2], run_var, x, gamma, beta, True", "ValueError",
     "batch_norm_forward: running_mean and running_var must have N elements"),
    ("batch no rows", "batch_norm_forward",
     "out[:0], xhat[:0], mean, rstd, run_mean, run_var, x[:0], gamma, beta, True",
     "ValueError", "batch_norm_forward: inp must have at least one row"),
    ("batch eps", "batch_norm_forward",
     "out, xhat, mean, rstd, run_mean, run_var, x, gamma, beta, True, -1.0", "ValueError",
     "batch_norm_forward: eps must be > 0"),
    ("batch momentum", "batch_norm_forward",
     "out, xhat, mean, rstd, run_mean, run_var, x, gamma, beta, True, 1e-5, 1.5",
     "ValueError", "batch_norm_forward: momentum must be in [0, 1]"),
    ("batch float32 running", "batch_norm_forward",
     "out, xhat, mean, rstd, run_mean.astype(f32), run_var, x, gamma, beta, True",
     "TypeError", "batch_norm_forward: running_mean must be a 1-D float64 array"),
    ("batch flag", "batch_norm_forward",
     "out, xhat, mean, rstd, run_mean, run_var, x, gamma, beta, 0.5", "TypeError",
     "batch_norm_forward: update_running must be a bool"),
    ("inference out", "batch_norm_inference", "out[1:], x, gamma, beta, run_mean, run_var",
     "ValueError", "batch_norm_inference: out must be (B, N) as inp"),
    ("inference running", "batch_norm_inference",
     "out, x, gamma, beta, run_mean, run_var[:1]", "ValueError",
     "batch_norm_inference: gamma, beta, running_mean and running_var must have N elements"),
    ("inference eps", "batch_norm_inference", "out, x, gamma, beta, run_mean, run_var, 0",
     "ValueError", "batch_norm_inference: eps must be > 0"),
    ("batch backward xhat", "batch_norm_backward",
     "dx, dgamma, dbeta, g, xhat[:2], rstd, gamma", "ValueError",
     "batch_norm_backward: dinp and xhat must be (B, N) as dout"),
    ("batch backward rstd", "batch_norm_backward", "dx, dgamma, dbeta, g, xhat, rows, gamma",
     "ValueError", "batch_norm_backward: rstd, gamma, dgamma and dbeta must have N elements"),
    ("mask p", "dropout_mask", "mask, 1.0, 1, 2, 3, ids", "ValueError",
     "dropout_mask: p must be in [0, 1)"),
    ("mask negative p", "dropout_mask", "mask, -0.1, 1, 2, 3, ids", "ValueError",
     "dropout_mask: p must be in [0, 1)"),
    ("mask row_ids", "dropout_mask", "mask, 0.5, 1, 2, 3, ids[:3]", "ValueError",
     "dropout_mask: row_ids must have B elements"),
    ("mask int32 row_ids", "dropout_mask", "mask, 0.5, 1, 2, 3, ids.astype(np.int32)",
     "TypeError", "dropout_mask: row_ids must be a 1-D int64 array"),
    ("mask float seed", "dropout_mask", "mask, 0.5, 1.5, 2, 3, ids", "TypeError",
     "dropout_mask: seed must be an integer"),
    ("masked out", "dropout_forward_masked", "out[:, 1:], mask, x, 0.5, 1, 2, 3, ids",
     "ValueError", "dropout_forward_masked: out and inp must be (B, N) as mask"),
    ("masked inp", "dropout_forward_masked", "out, mask, x[:2], 0.5, 1, 2, 3, ids",
     "ValueError", "dropout_forward_masked: out and inp must be (B, N) as mask"),
    ("masked p", "dropout_forward_masked", "out, mask, x, np.nan, 1, 2, 3, ids", "ValueError",
     "dropout_forward_masked: p must be in [0, 1)"),
    ("masked row_ids", "dropout_forward_masked", "out, mask, x, 0.5, 1, 2, 3, ids[:1], 7",
     "ValueError", "dropout_forward_masked: row_ids must have B elements"),
    ("forward mask", "dropout_forward", "out, x, mask[:3]", "ValueError",
     "dropout_forward: out and mask must be (B, N) as inp"),
    ("forward dtypes", "dropout_forward", "out, x, mask.astype(f32)", "TypeError",
     "dropout_forward: mask is float32 but out is float64"),
    ("backward dinp", "dropout_backward", "dx[:, :1], g, mask", "ValueError",
     "dropout_backward: dinp and mask must be (B, N) as dout"),
]


def test_norm_and_dropout_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


def test_norm_and_dropout_kernels_take_any_layout(rng):
    """Reversed rows and Fortran order are refused nowhere, and give the values of the same
    call on contiguous copies."""
    z = rng.normal(size=(5, 4))
    view = np.asfortranarray(z)[::-1]
    dense = np.ascontiguousarray(view)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    results = []
    for inp in (view, dense):
        out, xhat, rstd = np.empty((4, 5)).T, np.empty_like(inp), np.empty(10)[::2]
        kernels.layer_norm_forward(out, xhat, rstd, inp, gamma, beta)
        mask = np.empty_like(inp)
        kernels.dropout_forward_masked(out, mask, out.copy(), 0.5, 1, 2, 3, np.arange(10)[::2])
        results.append((out, xhat, rstd, mask))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-14)
