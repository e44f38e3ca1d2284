"""Each kernel of fastbp.kernels on its own: backward kernels against finite differences of their
forward kernels (float64, max relative error < 1e-7), forward kernels against the naive NumPy
reference, the optimizer kernels, numerics at extreme inputs, and a user's own @njit function
built from the kernels."""
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from numba import njit

import fastbp
import naive
from fastbp import kernels
from helpers import ROOT, max_threads

CODES = dict(kernels.CODES)     # every activation of kernels.ACTIVATIONS, by name
#: Activations whose gradient reads the pre-activation z (activation_backward needs inp).
USES_INPUT = [a.name for a in kernels.ACTIVATIONS if a.uses_input]
NAMED = {"relu": (kernels.relu_forward, kernels.relu_backward),
         "sigmoid": (kernels.sigmoid_forward, kernels.sigmoid_backward),
         "tanh": (kernels.tanh_forward, kernels.tanh_backward)}
EPS = 1e-3       # finite-difference step (fourth-order differences: truncation ~ EPS**4)
MARGIN = 0.05    # how far every input of a kinked activation (naive.KINKED) stays from the
                 # kink, well beyond 2 * EPS * |x|
TOL = 1e-7       # max relative error, backward kernel against finite differences
FLOOR = 1e-7     # below this size, gradients are compared absolutely


# Absolute error an activation's formula makes beyond a few roundings, by name: gelu's
# 0.5 * (1 + erf(z / sqrt(2))) (PyTorch's form too) cancels for z < 0, so its value, and its
# gradient's Phi(z) term, err by about eps * |z| and eps where they are tiny (the reference
# uses erfc, which does not cancel).
CANCELS = {"gelu": lambda z: 4 * np.finfo(np.float64).eps * (1 + np.abs(z))}


def assert_matches_reference(got, want, name, z, rtol, scale=1.0):
    """|got - want| <= rtol |want| + (the cancellation allowance of CANCELS at z) * |scale|."""
    allowance = CANCELS[name](z) * np.abs(scale) if name in CANCELS else 1e-300
    excess = np.abs(got - want) - (rtol * np.abs(want) + allowance)
    assert (excess <= 0).all(), f"{name}: off by up to {excess.max():.3g} beyond the tolerance"


def off_kink(rng, shape, margin=MARGIN):
    z = rng.normal(size=shape)
    return np.where(np.abs(z) < margin, np.sign(z + 1e-300) * (margin + np.abs(z)), z)


# ---------------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize("name", list(CODES))
def test_activation_forward_matches_reference(name, rng):
    z = rng.normal(scale=3.0, size=(7, 5))
    out = np.empty_like(z)
    kernels.activation_forward(out, z, CODES[name])
    assert_matches_reference(out, naive.activation(name, z), name, z, rtol=1e-15)
    if name in NAMED:
        out2 = np.full_like(z, np.nan)
        NAMED[name][0](out2, z)
        assert np.array_equal(out, out2)
    # out may be inp
    inplace = z.copy()
    kernels.activation_forward(inplace, inplace, CODES[name])
    assert np.array_equal(inplace, out)


@pytest.mark.parametrize("name", list(CODES))
def test_activation_backward_gradcheck(name, rng):
    z = off_kink(rng, (6, 5))
    G = rng.normal(size=z.shape)       # f(z) = sum(G * act(z)), so df/dout = G
    out = np.empty_like(z)

    def f():
        kernels.activation_forward(out, z, CODES[name])
        return float((G * out).sum())

    f()
    dz = np.full_like(z, np.nan)
    kernels.activation_backward(dz, G, out, CODES[name], z)
    numeric = naive.numeric_gradient(f, z, EPS)
    assert naive.max_relative_error(dz, numeric, FLOOR) < TOL
    assert_matches_reference(dz, G * naive.activation_derivative(name, z), name, z, rtol=1e-14,
                             scale=G)
    f()
    if name not in USES_INPUT:
        # the output alone is enough (the network keeps no z for these)
        dz_out = np.full_like(z, np.nan)
        kernels.activation_backward(dz_out, G, out, CODES[name])
        assert np.array_equal(dz_out, dz)
    if name in NAMED:
        dz2 = np.full_like(z, np.nan)
        NAMED[name][1](dz2, G, out)
        assert np.array_equal(dz, dz2)
    # dinp may be dout
    inplace = G.copy()
    kernels.activation_backward(inplace, inplace, out, CODES[name], z)
    assert np.array_equal(inplace, dz)


def test_every_table_activation_is_tested():
    """The codes are the table's indices, a module constant each, and the tests here cover
    them all (CODES is the table's)."""
    assert list(CODES) == [a.name for a in kernels.ACTIVATIONS]
    assert list(CODES.values()) == list(range(len(kernels.ACTIVATIONS)))
    for name, code in CODES.items():
        assert getattr(kernels, name.upper()) == code
    assert {"leaky_relu", "gelu"} <= set(CODES)
    assert "gelu" in USES_INPUT


@pytest.mark.parametrize("name", USES_INPUT)
def test_activation_backward_without_input_raises(name, rng):
    """gelu's gradient needs z: without inp, activation_backward refuses rather than guess."""
    z = rng.normal(size=(4, 3))
    out = np.empty_like(z)
    kernels.activation_forward(out, z, CODES[name])
    dz = np.zeros_like(z)
    with pytest.raises(ValueError, match="needs inp"):
        kernels.activation_backward(dz, np.ones_like(z), out, CODES[name])
    with pytest.raises(ValueError, match="needs inp"):
        kernels.activation_backward(dz, np.ones_like(z), out, CODES[name], None)


@pytest.mark.parametrize("name", list(CODES))
def test_activation_float32_matches_float64(name, rng):
    """float32 values and gradients within 1e-4 of float64 on the same (float32) inputs, per
    array as max|x32 - x64| / max|x64| (see test_model's float32 test for why normwise)."""
    z32 = (rng.normal(scale=3.0, size=(40, 9))).astype(np.float32)
    G32 = rng.normal(size=z32.shape).astype(np.float32)
    results = {}
    for dtype in (np.float32, np.float64):
        z, G = z32.astype(dtype), G32.astype(dtype)
        out, dz = np.empty_like(z), np.empty_like(z)
        kernels.activation_forward(out, z, CODES[name])
        kernels.activation_backward(dz, G, out, CODES[name], z)
        assert out.dtype == dz.dtype == dtype
        results[dtype] = out, dz
    for got, want in zip(results[np.float32], results[np.float64]):
        assert naive.normwise_error(got, want) < 1e-4
        assert np.isfinite(got).all()


def test_leaky_relu_and_gelu_values():
    """A few values worked out by hand: slope 0.01 below 0; gelu(z) = z * Phi(z), exact."""
    z = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    out = np.empty_like(z)
    kernels.activation_forward(out, z, kernels.LEAKY_RELU)
    assert out.tolist() == [[-0.02, -0.005, 0.0, 0.5, 2.0]]
    kernels.activation_backward(out, np.ones_like(z), out.copy(), kernels.LEAKY_RELU, z)
    assert out.tolist() == [[0.01, 0.01, 0.01, 1.0, 1.0]]      # PyTorch's choice at 0
    kernels.activation_forward(out, z, kernels.GELU)
    phi = [0.02275013194817922, 0.3085375387259869, 0.5, 0.6914624612740131,
           0.9772498680518208]
    np.testing.assert_allclose(out[0], z[0] * phi, rtol=1e-14, atol=0)
    assert out[0, 2] == 0.0


# ---------------------------------------------------------------------------------------------
# Dense layer


def dense_case(rng, act, inp_act, n_rows=5, n_in=4, n_out=3):
    """Raw input z0 (kept off the kink of naive.KINKED before and after the layer), weight,
    bias, G."""
    W = rng.normal(size=(n_in, n_out))
    b = rng.normal(size=n_out)
    z0 = off_kink(rng, (60 * n_rows, n_in))
    pre = naive.activation(inp_act, z0) @ W + b
    keep = np.abs(pre).min(axis=1) > MARGIN if act in naive.KINKED else np.ones(len(z0), bool)
    z0 = np.ascontiguousarray(z0[keep][:n_rows])
    assert z0.shape[0] == n_rows
    return z0, W, b, rng.normal(size=(n_rows, n_out))


@pytest.mark.parametrize("inp_act", list(CODES))
@pytest.mark.parametrize("act", list(CODES))
def test_dense_backward_gradcheck(act, inp_act, rng):
    """f = sum(G * dense_forward(act_prev(z0), W, b, act)); dense_backward gives df/dW, df/db
    and, through inp_activation = act_prev, df/dz0. Activations whose gradient reads z get it:
    dense_forward keeps it in pre, dense_backward reads it as inp_pre."""
    z0, W, b, G = dense_case(rng, act, inp_act)
    n_rows, n_in = z0.shape
    n_out = W.shape[1]
    inp = np.empty_like(z0)
    out = np.empty((n_rows, n_out))
    pre = np.full_like(out, np.nan)

    def f():
        kernels.activation_forward(inp, z0, CODES[inp_act])
        kernels.dense_forward(out, inp, W, b, CODES[act], None, pre)
        return float((G * out).sum())

    f()
    z = naive.activation(inp_act, z0) @ W + b
    np.testing.assert_allclose(out, naive.activation(act, z), rtol=1e-13, atol=1e-15)
    if act in USES_INPUT:
        np.testing.assert_allclose(pre, z, rtol=1e-13, atol=1e-15)
    else:
        assert np.isnan(pre).all(), "pre is written only for activations that need it"
    dpre = np.empty_like(out)
    kernels.activation_backward(dpre, G, out, CODES[act], pre if act in USES_INPUT else None)
    dinp = np.full_like(z0, np.nan)
    dW = np.full_like(W, np.nan)
    db = np.full_like(b, np.nan)
    kernels.dense_backward(dinp, dW, db, dpre, inp, W, CODES[inp_act], z0)
    if inp_act not in USES_INPUT:
        # without inp_pre (the output is enough): bitwise the same
        dinp2 = np.full_like(z0, np.nan)
        kernels.dense_backward(dinp2, np.empty_like(W), np.empty_like(b), dpre, inp, W,
                               CODES[inp_act])
        assert np.array_equal(dinp2, dinp)

    for analytic, wrt in ((dW, W), (db, b), (dinp, z0)):
        numeric = naive.numeric_gradient(f, wrt, EPS)
        assert naive.max_relative_error(analytic, numeric, FLOOR) < TOL


def test_dense_backward_skips_dinp_with_zero_rows(rng):
    z0, W, b, G = dense_case(rng, "tanh", "identity")
    dW, db = np.empty_like(W), np.empty_like(b)
    kernels.dense_backward(np.empty((0, z0.shape[1])), dW, db, G, z0, W, kernels.IDENTITY)
    np.testing.assert_allclose(dW, z0.T @ G, rtol=1e-13)
    np.testing.assert_allclose(db, G.sum(axis=0), rtol=1e-13)


def test_dense_kernels_accept_row_strided_views(rng):
    """The documented layout: rows may be strided (views into wider matrices), unit stride
    along the last axis."""
    n_rows, n_in, n_out = 6, 5, 4
    wide_inp = rng.normal(size=(n_rows, n_in + 3))
    wide_w = rng.normal(size=(n_in, n_out + 2))
    inp, W = wide_inp[:, 1:1 + n_in], wide_w[:, :n_out]
    b = rng.normal(size=n_out)
    out_wide = np.zeros((n_rows, n_out + 5))
    out = out_wide[:, 2:2 + n_out]
    kernels.dense_forward(out, inp, W, b, kernels.TANH)
    np.testing.assert_allclose(out, np.tanh(inp @ W + b), rtol=1e-13)
    assert not out_wide[:, :2].any() and not out_wide[:, 2 + n_out:].any()

    dpre = rng.normal(size=(n_rows, n_out))
    dinp_wide = np.zeros((n_rows, n_in + 4))
    dinp = dinp_wide[:, 4:]
    dW_wide = np.zeros((n_in, n_out + 1))
    dW = dW_wide[:, :n_out]
    db = np.empty(n_out)
    kernels.dense_backward(dinp, dW, db, dpre, inp, W, kernels.IDENTITY)
    np.testing.assert_allclose(dW, inp.T @ dpre, rtol=1e-13)
    np.testing.assert_allclose(db, dpre.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(dinp, dpre @ W.T, rtol=1e-13)
    assert not dinp_wide[:, :4].any() and not dW_wide[:, n_out:].any()


def test_dense_forward_splits_many_inputs(rng):
    """Given scratch, a layer with far more inputs than rows takes two half products over the
    inputs (the second half's left in scratch) and adds them, at any thread count; a scratch
    too small for that is left alone."""
    n_rows, n_in, n_out = 8, 1024, 64
    assert kernels.splits_input(n_rows, n_in, n_out, kernels.tile_budget(), n_rows * n_out)
    inp, W, b = (rng.normal(size=(n_rows, n_in)), rng.normal(size=(n_in, n_out)),
                 rng.normal(size=n_out))
    want = np.maximum(inp @ W + b, 0)
    out = np.empty((n_rows, n_out))
    scratch = np.zeros(n_rows * n_out + 3)
    kernels.dense_forward(out, inp, W, b, kernels.RELU, scratch)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-11)
    half = n_in // 2
    np.testing.assert_allclose(scratch[:-3].reshape(n_rows, n_out), inp[:, half:] @ W[half:],
                               rtol=1e-12, atol=1e-11)
    small = np.zeros(n_rows * n_out - 1)
    out[...] = np.nan
    kernels.dense_forward(out, inp, W, b, kernels.RELU, small)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-11)
    assert not small.any()


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 7, 16, 24, 33])
def test_interleaved_tasks_cover_each_tile_once_in_proportion(n_tasks):
    """dense_backward's tasks: every tile of both kinds exactly once, in order within a kind,
    and each half of the tasks (a thread's block on 2 threads) holding its share of each."""
    from fastbp.kernels._tiling import interleaved
    for n_first in range(n_tasks + 1):
        kinds = [interleaved(t, n_tasks, n_first) for t in range(n_tasks)]
        assert [i for first, i in kinds if first] == list(range(n_first))
        assert [i for first, i in kinds if not first] == list(range(n_tasks - n_first))
        half = sum(first for first, _ in kinds[:n_tasks // 2])
        assert abs(half - n_first * (n_tasks // 2) / n_tasks) <= 1


def test_input_gradient_grid_follows_the_blas():
    """With OpenBLAS's AVX-512 kernels the input gradient is cut into tiles they multiply
    unpacked (at most UNPACKED_ROWS rows and UNPACKED_TILE_OUTPUTS outputs, power-of-two
    counts, at most the budget); with other kernels, dot products too short for them, or a
    product that needs more tiles than the budget, the shape rule's grid."""
    from fastbp.kernels import _config, _native
    from fastbp.kernels._tiling import grid, input_grad_grid
    saved = _native._unpacked_small_products.value
    try:
        _native._unpacked_small_products.value = 0
        assert input_grad_grid(64, 256, 128, 8, 16) == grid(64, 256, 128, 8)
        _native._unpacked_small_products.value = 1
        assert input_grad_grid(64, 256, 128, 8, 16) == (2, 8)      # 32 x 32 tiles
        assert input_grad_grid(100, 128, 128, 8, 16) == (4, 4)     # 25 x 32
        for n_rows, n_in in [(64, 256), (100, 128), (32, 100), (7, 300)]:
            rows, cols = input_grad_grid(n_rows, n_in, 64, 8, 16)
            assert rows * cols <= 16 and rows & (rows - 1) == 0 and cols & (cols - 1) == 0
            assert -(-n_rows // rows) <= _config.UNPACKED_ROWS
            assert -(-n_rows // rows) * -(-n_in // cols) <= _config.UNPACKED_TILE_OUTPUTS
        assert input_grad_grid(64, 128, 16, 8, 16) == grid(64, 128, 16, 8)     # depth < 32
        assert input_grad_grid(512, 512, 256, 8, 16) == grid(512, 512, 256, 8)  # > 16 tiles
        assert input_grad_grid(64, 256, 128, 8, 8) == grid(64, 256, 128, 8)    # budget 8
    finally:
        _native._unpacked_small_products.value = saved


# ---------------------------------------------------------------------------------------------
# Losses


def test_softmax_cross_entropy_gradcheck(rng):
    logits = rng.normal(scale=2.0, size=(6, 4))
    labels = rng.integers(0, 4, size=6)
    dlogits = np.empty_like(logits)
    losses = np.empty(6)

    def f():
        return kernels.softmax_cross_entropy_forward_backward(dlogits, losses, logits, labels)

    mean = f()
    ref_losses, ref_grad = naive.softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-13)
    assert mean == pytest.approx(ref_losses.mean(), rel=1e-14)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-13, atol=1e-17)
    analytic = dlogits.copy()
    numeric = naive.numeric_gradient(f, logits, EPS)
    assert naive.max_relative_error(analytic, numeric, FLOOR) < TOL
    # dlogits may be logits
    inplace = logits.copy()
    mean2 = kernels.softmax_cross_entropy_forward_backward(inplace, losses, inplace, labels)
    assert mean2 == pytest.approx(mean, rel=1e-14)
    np.testing.assert_allclose(inplace, analytic, rtol=1e-14, atol=1e-18)
    # the loss-only kernel agrees
    losses2 = np.empty(6)
    assert kernels.softmax_cross_entropy_loss(losses2, logits, labels) == pytest.approx(mean,
                                                                                      rel=1e-14)
    np.testing.assert_allclose(losses2, losses, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_forward(dtype, rng):
    logits = rng.normal(scale=3.0, size=(5, 4)).astype(dtype)
    probs = np.empty_like(logits)
    kernels.softmax_forward(probs, logits)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(probs, naive.softmax(logits), rtol=tol)
    kernels.softmax_forward(logits, logits)
    assert np.array_equal(logits, probs)


def test_float32_exp_is_within_one_ulp():
    """The softmax's float32 exp (a polynomial, so that its loops vectorise) against float64 exp
    rounded to float32, over the whole float32 range, and at the edges."""
    x = np.concatenate([np.linspace(-110, 95, 400_001), -np.geomspace(1e-30, 110, 20_001),
                        np.geomspace(1e-30, 95, 20_001)]).astype(np.float32)
    got = x.copy()
    kernels.losses._exp_inplace(got)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    finite = np.isfinite(want) & (want > 0)
    ulps = np.abs(got[finite].astype(np.float64) - want[finite]) / np.spacing(want[finite])
    assert ulps.max() <= 1 and np.mean(got == want) > 0.99
    assert np.array_equal(got[~finite], want[~finite])  # overflow to inf, underflow to 0
    edges = np.array([np.nan, -np.inf, np.inf, -1e30, 1e30, 0.0, -0.0], dtype=np.float32)
    kernels.losses._exp_inplace(edges)
    assert np.isnan(edges[0]) and list(edges[1:]) == [0.0, np.inf, 0.0, np.inf, 1.0, 1.0]


def test_float64_exp_is_within_one_ulp():
    """The softmax's float64 exp (a polynomial, as float32's) against NumPy's exp over the
    whole range, the subnormal results included, and at the edges."""
    x = np.concatenate([np.linspace(-746, 710, 400_001), -np.geomspace(1e-300, 746, 20_001),
                        np.geomspace(1e-300, 710, 20_001), np.linspace(-1, 1, 100_001)])
    got = x.copy()
    kernels.losses._exp_inplace(got)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    finite = np.isfinite(want) & (want > 0)
    ulps = np.abs(got[finite] - want[finite]) / np.spacing(want[finite])
    assert ulps.max() <= 1 and np.mean(got == want) > 0.8
    assert np.array_equal(got[~finite], want[~finite])  # overflow to inf, underflow to 0
    assert (got[finite] < 2.2250738585072014e-308).sum() > 1000   # subnormals were tried
    edges = np.array([np.nan, -np.inf, np.inf, -1e300, 1e300, 0.0, -0.0, 5e-324])
    kernels.losses._exp_inplace(edges)
    assert np.isnan(edges[0]) and list(edges[1:]) == [0.0, np.inf, 0.0, np.inf, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_kernels_on_row_strided_views(dtype, rng):
    """Rows of logits a wider matrix holds take the row-by-row path, not the flat one; both agree
    with the reference."""
    wide = rng.normal(scale=3.0, size=(33, 14)).astype(dtype)
    logits, labels = wide[:, 2:12], rng.integers(0, 10, size=33)
    dense = np.ascontiguousarray(logits)
    d_wide = np.zeros_like(wide)
    losses, dense_losses = np.empty(33), np.empty(33)
    dense_grad = np.empty_like(dense)
    mean = kernels.softmax_cross_entropy_forward_backward(d_wide[:, 2:12], losses, logits, labels)
    dense_mean = kernels.softmax_cross_entropy_forward_backward(dense_grad, dense_losses, dense,
                                                                labels)
    ref_losses, ref_grad = naive.softmax_cross_entropy(dense.astype(np.float64), labels)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for got, got_losses in ((d_wide[:, 2:12], losses), (dense_grad, dense_losses)):
        np.testing.assert_allclose(got, ref_grad, rtol=tol, atol=tol / 33)
        np.testing.assert_allclose(got_losses, ref_losses, rtol=tol)
    assert mean == pytest.approx(dense_mean, rel=tol)
    assert not d_wide[:, :2].any() and not d_wide[:, 12:].any()
    probs_wide = np.zeros_like(wide)
    kernels.softmax_forward(probs_wide[:, 2:12], logits)
    np.testing.assert_allclose(probs_wide[:, 2:12], naive.softmax(dense), rtol=tol)
    assert not probs_wide[:, :2].any() and not probs_wide[:, 12:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_kernels_on_reversed_columns(dtype, rng):
    """A view with negative column stride (outside the documented layout) must still be
    computed in place, never through the flat fast path, and nothing past it written."""
    logits, labels = rng.normal(size=(6, 4)).astype(dtype), rng.integers(0, 4, size=6)
    buf = np.full(6 * 4 + 8, 123.0, dtype)
    probs = buf[:24].reshape(6, 4)[:, ::-1]
    kernels.softmax_forward(probs, logits)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(probs, naive.softmax(logits), rtol=tol)
    buf[:24] = 0
    losses = np.empty(6)
    kernels.softmax_cross_entropy_forward_backward(probs, losses, logits, labels)
    ref_losses, ref_grad = naive.softmax_cross_entropy(logits.astype(np.float64), labels)
    np.testing.assert_allclose(probs, ref_grad, rtol=tol, atol=tol / 6)
    assert (buf[24:] == 123.0).all()


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_float32_cross_entropy_losses_are_float64_accurate_and_agree(scale, rng):
    """In float32 the fused kernel and the loss-only kernel agree to float64 rounding and are as
    accurate as float64 arithmetic on the float32 logits allows."""
    logits = (rng.normal(size=(50, 10)) * scale).astype(np.float32)
    labels = rng.integers(0, 10, size=50)
    fused, alone = np.empty(50), np.empty(50)
    mean = kernels.softmax_cross_entropy_forward_backward(np.empty_like(logits), fused, logits,
                                                          labels)
    assert kernels.softmax_cross_entropy_loss(alone, logits, labels) == pytest.approx(mean,
                                                                                   rel=1e-14)
    np.testing.assert_allclose(fused, alone, rtol=1e-12, atol=1e-14)
    ref, _ = naive.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert np.max(np.abs(fused - ref)) < 1e-6 * max(1.0, np.abs(ref).max() * 1e-2)


def test_mse_gradcheck(rng):
    pred = rng.normal(size=(6, 3))
    target = rng.normal(size=(6, 3))
    dpred = np.empty_like(pred)
    losses = np.empty(6)

    def f():
        return kernels.mse_forward_backward(dpred, losses, pred, target)

    mean = f()
    ref_losses, ref_grad = naive.mse(pred, target)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-14)
    assert mean == pytest.approx(ref_losses.mean(), rel=1e-14)
    np.testing.assert_allclose(dpred, ref_grad, rtol=1e-14)
    analytic = dpred.copy()
    numeric = naive.numeric_gradient(f, pred, EPS)
    assert naive.max_relative_error(analytic, numeric, FLOOR) < TOL
    inplace = pred.copy()
    assert kernels.mse_forward_backward(inplace, losses, inplace, target) == pytest.approx(
        mean, rel=1e-14)
    np.testing.assert_allclose(inplace, analytic, rtol=1e-14)
    losses2 = np.empty(6)
    assert kernels.mse_loss(losses2, pred, target) == pytest.approx(mean, rel=1e-14)


def bce_targets(rng, shape):
    """0/1 indicators, with about a quarter of them replaced by probabilities in (0, 1)."""
    target = (rng.random(shape) < 0.5).astype(np.float64)
    soft = rng.random(shape) < 0.25
    target[soft] = rng.random(int(soft.sum()))
    return target


def test_binary_cross_entropy_gradcheck(rng):
    logits = rng.normal(scale=2.0, size=(6, 3))
    target = bce_targets(rng, (6, 3))
    dlogits = np.empty_like(logits)
    losses = np.empty(6)

    def f():
        return kernels.binary_cross_entropy_forward_backward(dlogits, losses, logits, target)

    mean = f()
    ref_losses, ref_grad = naive.binary_cross_entropy(logits, target)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-14)
    assert mean == pytest.approx(ref_losses.mean(), rel=1e-14)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-13, atol=1e-17)
    analytic = dlogits.copy()
    numeric = naive.numeric_gradient(f, logits, EPS)
    assert naive.max_relative_error(analytic, numeric, FLOOR) < TOL
    # dlogits may be logits
    inplace = logits.copy()
    assert kernels.binary_cross_entropy_forward_backward(inplace, losses, inplace, target) \
        == mean
    assert np.array_equal(inplace, analytic)
    # the loss-only kernel agrees, bitwise
    losses2 = np.empty(6)
    assert kernels.binary_cross_entropy_loss(losses2, logits, target) == mean
    assert np.array_equal(losses2, losses)


def test_binary_cross_entropy_is_scikit_learns_binary_log_loss(rng):
    """The mean equals scikit-learn's binary_log_loss of the sigmoid probabilities (summed over
    the outputs, divided by the rows), written out: -sum(t log p + (1 - t) log(1 - p)) / B."""
    logits = rng.normal(scale=3.0, size=(40, 5))
    target = (rng.random((40, 5)) < 0.4).astype(np.float64)
    mean = kernels.binary_cross_entropy_loss(np.empty(40), logits, target)
    prob = 1.0 / (1.0 + np.exp(-logits))
    formula = -(target * np.log(prob) + (1 - target) * np.log(1 - prob)).sum() / 40
    assert mean == pytest.approx(formula, rel=1e-12)
    base = pytest.importorskip("sklearn.neural_network._base")
    assert mean == pytest.approx(base.binary_log_loss(target, prob), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_is_stable_for_huge_logits(dtype):
    """Logits of +-1e4 (and the largest finite ones): no overflow, no warning; the losses are
    |z| where the target disagrees and 0 where it agrees, the gradient exactly (p - t) / B."""
    big = np.finfo(dtype).max
    logits = np.array([[1e4, -1e4, 1e4, -1e4], [big, -big, 0.0, 30.0]], dtype=dtype)
    target = np.array([[0, 1, 1, 0], [0, 1, 1, 1]], dtype=dtype)
    dlogits, losses = np.empty_like(logits), np.empty(2)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = kernels.binary_cross_entropy_forward_backward(dlogits, losses, logits, target)
    assert losses[0] == 2e4
    assert losses[1] == pytest.approx(2 * float(big) + math.log(2), rel=1e-15)
    assert mean == pytest.approx(losses.mean(), rel=1e-15)
    assert np.array_equal(dlogits[:, :3], np.array([[0.5, -0.5, 0.0], [0.5, -0.5, -0.25]],
                                                   dtype=dtype))
    assert dlogits[0, 3] == 0.0
    # sigmoid(30) - 1, rounded in float64 near 1: about 1e-3 relative
    assert dlogits[1, 3] == pytest.approx(-math.exp(-30) / (1 + math.exp(-30)) / 2, rel=1e-2)
    nan = logits.copy()
    nan[0, 1] = np.nan
    assert math.isnan(kernels.binary_cross_entropy_forward_backward(dlogits, losses, nan, target))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_row_tiles_and_float32(dtype, rng):
    """Enough rows to split over row tiles on 2+ threads: the same bits as on one thread; float32
    within float32 rounding of the float64 reference (each element is computed in float64)."""
    n_rows = 4 * kernels.MIN_TILE_WORK // (16 * 8)
    logits = rng.normal(scale=3.0, size=(n_rows, 8)).astype(dtype)
    target = bce_targets(rng, (n_rows, 8)).astype(dtype)
    results = []
    for threads in sorted({1, min(2, max_threads())}):
        fastbp.set_num_threads(threads)
        dlogits, losses = np.empty_like(logits), np.empty(n_rows)
        mean = kernels.binary_cross_entropy_forward_backward(dlogits, losses, logits, target)
        results.append((mean, dlogits, losses))
    for mean, dlogits, losses in results[1:]:
        assert mean == results[0][0]
        assert np.array_equal(dlogits, results[0][1]) and np.array_equal(losses, results[0][2])
    mean, dlogits, losses = results[0]
    ref_losses, ref_grad = naive.binary_cross_entropy(logits, target)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    tol = 2.0 ** -24 if dtype == np.float32 else 1e-14
    assert naive.normwise_error(dlogits, ref_grad) < 2 * tol


def _layer_sizes_offsets(sizes):
    offsets = np.asarray(fastbp.layout.param_offsets(sizes), dtype=np.int64)
    return np.asarray(sizes, dtype=np.int64), offsets


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l2_penalty_kernels(dtype, rng):
    """l2 / (2B) sum ||W||^2 over the weights only, and (l2 / B) W added to the weights'
    gradients, biases' left alone; the loss-only kernel gives the same bits; with enough
    chunks to run in parallel (a chunk that holds weights and biases too), the same bits on 1
    and 2 threads."""
    sizes, offsets = _layer_sizes_offsets([200, 300, 40])
    lengths = fastbp.layout.weight_lengths(sizes)
    assert kernels.norm_partials_size(offsets) >= 4       # parallel on 2 threads
    params = rng.normal(size=offsets[-1]).astype(dtype)
    grads0 = rng.normal(size=offsets[-1]).astype(dtype)
    partials = np.empty(kernels.norm_partials_size(offsets))
    l2, n_rows = 0.37, 23
    weights, _ = naive.unflatten(params, list(sizes))
    expected, d_expected = naive.l2_penalty(weights, l2, n_rows)
    d_expected = naive.flatten(d_expected, [np.zeros(n) for n in sizes[1:]])
    results = []
    for threads in sorted({1, min(2, max_threads())}):
        fastbp.set_num_threads(threads)
        grads = grads0.copy()
        value = kernels.l2_penalty_forward_backward(grads, partials, params, offsets, lengths,
                                                    l2, n_rows)
        results.append((value, grads))
        assert kernels.l2_penalty_loss(partials, params, offsets, lengths, l2, n_rows) == value
    for value, grads in results[1:]:
        assert value == results[0][0] and np.array_equal(grads, results[0][1])
    value, grads = results[0]
    rel = 2.0 ** -23 if dtype == np.float32 else 1e-13
    assert value == pytest.approx(expected, rel=rel)
    added = grads.astype(np.float64) - grads0
    is_bias = d_expected == 0
    assert np.array_equal(grads[is_bias], grads0[is_bias])
    np.testing.assert_allclose(added[~is_bias], d_expected[~is_bias],
                               rtol=1e-5 if dtype == np.float32 else 1e-9, atol=rel)


def test_l2_penalty_gradcheck(rng):
    sizes, offsets = _layer_sizes_offsets([3, 4, 2])
    params = rng.normal(size=offsets[-1])
    partials = np.empty(kernels.norm_partials_size(offsets))
    grads = np.zeros_like(params)
    lengths = fastbp.layout.weight_lengths(sizes)
    kernels.l2_penalty_forward_backward(grads, partials, params, offsets, lengths, 1.3, 7)
    numeric = naive.numeric_gradient(
        lambda: kernels.l2_penalty_loss(partials, params, offsets, lengths, 1.3, 7), params, EPS)
    assert naive.max_relative_error(grads, numeric, FLOOR) < TOL
    assert np.abs(grads).max() > 0.1


# ---------------------------------------------------------------------------------------------
# Norm, clipping and SGD


def _offsets(*sizes):
    return np.cumsum([0, *sizes]).astype(np.int64)


@pytest.mark.parametrize("sizes", [(0,), (1,), (7,), (kernels.NORM_CHUNK,),
                                   (3 * kernels.NORM_CHUNK + 5,), (5, kernels.NORM_CHUNK + 1, 2)])
def test_norm_partials_size(sizes):
    expected = sum(max(1, math.ceil(n / kernels.NORM_CHUNK)) for n in sizes)
    assert kernels.norm_partials_size(_offsets(*sizes)) == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_sums_of_squares(dtype, rng):
    # several chunks, ragged last chunks, and a layer smaller than a chunk
    sizes = (3 * kernels.NORM_CHUNK + 17, 5, kernels.NORM_CHUNK + 1)
    offsets = _offsets(*sizes)
    x = rng.normal(size=offsets[-1]).astype(dtype)
    partials = np.empty(kernels.norm_partials_size(offsets))
    layer_sq = np.full(len(sizes), np.nan)
    expected = [math.fsum(float(v) * float(v) for v in x[a:b])
                for a, b in zip(offsets[:-1], offsets[1:])]
    # The sums accumulate in float64; in float32 each square may be rounded once to float32
    # (relative error <= 2**-24 per term, so <= 2**-24 for a sum of these positive terms).
    rel = 2.0 ** -24 if dtype == np.float32 else 1e-12
    total = kernels.layer_sums_of_squares(layer_sq, partials, x, offsets)
    assert total == pytest.approx(math.fsum(expected), rel=rel)
    assert layer_sq == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update(dtype, rng):
    n = kernels.NORM_CHUNK + 9
    params = rng.normal(size=n).astype(dtype)
    grads = rng.normal(size=n).astype(dtype)
    step = float(dtype(0.3))
    exact = params.astype(np.float64) - step * grads.astype(np.float64)
    bound = 2 * np.finfo(dtype).eps * (np.abs(params) + step * np.abs(grads))
    kernels.sgd_update(params, grads, 0.3)
    assert (np.abs(params - exact) <= bound).all()      # rounding only (fused or not)


@pytest.mark.parametrize("clip_factor", [None, 0.25, 4.0])
def test_sgd_step_matches_reference(clip_factor, rng):
    n = 2 * kernels.NORM_CHUNK + 3
    params = rng.normal(size=n)
    grads = rng.normal(size=n)
    grads_before = grads.copy()
    true_norm = math.sqrt(math.fsum(g * g for g in grads))
    clip = math.inf if clip_factor is None else clip_factor * true_norm
    expected, ref_norm = naive.clipped_sgd(params, grads, 0.05,
                                           None if clip_factor is None else clip)
    offsets = _offsets(n // 3, n - n // 3)
    partials = np.empty(kernels.norm_partials_size(offsets))
    spec = kernels.sgd_spec(0.05, clip, np.float64)
    norm, applied = kernels.sgd_step(params, np.empty(2), partials, grads, offsets, spec.hyper,
                                     spec.state)
    assert applied and spec.hyper[kernels.update.STEPS] == 1
    assert norm == pytest.approx(ref_norm, rel=1e-13)
    assert naive.normwise_error(params, expected) < 1e-14
    assert np.array_equal(grads, grads_before), "clipping must not change the gradients"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_sgd_step_leaves_params_on_nonfinite_norm(bad, rng):
    params = rng.normal(size=50)
    before = params.copy()
    grads = rng.normal(size=50)
    grads[17] = bad
    spec = kernels.sgd_spec(0.1, 1.0, np.float64)
    norm, applied = kernels.sgd_step(params, np.empty(1), np.empty(1), grads, _offsets(50),
                                     spec.hyper, spec.state)
    assert not math.isfinite(norm) and not applied
    assert spec.hyper[kernels.update.STEPS] == 0
    assert np.array_equal(params, before)


# Hyper-parameters with every option of every kind of update on (so every state row is used),
# by name; a kind takes those its entry of kernels.KINDS names.
EVERY_OPTION = dict(lr=0.01, clip_norm=0.5, weight_decay=0.01, momentum=0.5, dampening=0.0,
                    nesterov=1.0, beta1=0.9, beta2=0.99, eps=1e-6, amsgrad=1.0, decoupled=0.0,
                    alpha=0.9, centered=1.0)


def _update_of(code, n):
    names = kernels.KINDS[code].hyper
    return kernels.update_spec(code, np.float64, n,
                               **{k: v for k, v in EVERY_OPTION.items() if k in names})


@pytest.mark.parametrize("code", sorted(kernels.KINDS),
                         ids=[kernels.KINDS[c].name for c in sorted(kernels.KINDS)])
def test_apply_update_runs_each_kinds_own_step(code, rng):
    """apply_update's dispatch, written from the registry, calls each kind's unit: three steps
    through it (kernels.entry.update) give the bits of three calls of the kind's step kernel;
    and a NaN gradient is refused by each, nothing changed."""
    n = 2 * kernels.NORM_CHUNK + 3
    offsets = _offsets(n // 3, n - n // 3)
    start = rng.normal(size=n)
    grads = rng.normal(size=n)
    kind = kernels.KINDS[code]
    fastbp.kernels._units.ensure([kind.unit], np.float64)
    results = []
    for through_dispatch in (True, False):
        params, spec = start.copy(), _update_of(code, n)
        layer_sq, partials = np.empty(2), np.empty(kernels.norm_partials_size(offsets))
        assert spec.state.shape[0] >= 1 or kind.name == "sgd"
        for _ in range(3):
            if through_dispatch:
                norm, applied = kernels.entry.update(params, grads, layer_sq, partials, offsets,
                                                     *spec)
            else:
                norm, applied = kind.step(params, layer_sq, partials, grads, offsets,
                                          spec.hyper, spec.state)
            assert applied
        results.append((params, spec, norm))
    (p1, s1, n1), (p2, s2, n2) = results
    assert s1.hyper[kernels.update.STEPS] == 3 and n1 == n2
    assert p1.tobytes() == p2.tobytes() and s1.state.tobytes() == s2.state.tobytes()
    assert not np.array_equal(p1, start)

    bad = grads.copy()
    bad[n // 2] = np.nan
    before = (p1.copy(), s1.state.copy(), s1.hyper.copy())
    norm, applied = kernels.entry.update(p1, bad, np.empty(2), np.empty(partials.shape),
                                         offsets, *s1)
    assert math.isnan(norm) and not applied
    assert p1.tobytes() == before[0].tobytes() and s1.state.tobytes() == before[1].tobytes()
    assert s1.hyper.tobytes() == before[2].tobytes()


def test_apply_update_of_an_unknown_kind_changes_nothing(rng):
    """A kind no entry of the registry has: apply_update refuses it (update.check_update)
    before anything changes; its unchecked body, which fastbp's Python layer runs on Updates
    it made itself, applies nothing."""
    params, grads = rng.normal(size=40), rng.normal(size=40)
    spec = _update_of(kernels.SGD_KIND, 40)
    before = params.copy()
    unknown = max(kernels.KINDS) + 1
    layer_sq, partials = np.empty(1), np.empty(kernels.norm_partials_size(_offsets(40)))
    with pytest.raises(ValueError, match="apply_update: kind must be a code of kernels.KINDS"):
        kernels.apply_update(params, layer_sq, partials, grads, _offsets(40),
                             kernels.Update(unknown, spec.hyper, spec.state))
    norm, applied = kernels.entry.update(params, grads, layer_sq, partials, _offsets(40),
                                         unknown, spec.hyper, spec.state)
    assert math.isnan(norm) and not applied
    assert params.tobytes() == before.tobytes() and spec.hyper[kernels.update.STEPS] == 0


def test_update_spec_refuses_a_name_its_kind_lacks():
    with pytest.raises(TypeError, match="betas"):
        kernels.update_spec(kernels.SGD_KIND, np.float64, 3, betas=0.9)


# ---------------------------------------------------------------------------------------------
# Data movement and checks


def test_take_rows(rng):
    x = rng.normal(size=(20, 6))
    index = rng.integers(0, 20, size=13)
    out = np.empty((13, 6))
    kernels.take_rows(out, x, index)
    assert np.array_equal(out, x[index])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite(bad, rng):
    x = rng.normal(size=(4, 5))
    assert kernels.all_finite(x)
    x[2, 3] = bad
    assert not kernels.all_finite(x)
    assert kernels.all_finite(np.full((3, 2), np.finfo(np.float64).max))


def test_labels_in_range():
    assert kernels.labels_in_range(np.array([0, 1, 2, 2]), 3)
    assert not kernels.labels_in_range(np.array([0, 3, 1]), 3)
    assert not kernels.labels_in_range(np.array([0, -1, 1]), 3)


# ---------------------------------------------------------------------------------------------
# Whole network, called directly with the documented buffers


@pytest.mark.parametrize("hidden", [["tanh", "relu", "sigmoid"], ["gelu", "leaky_relu", "gelu"]])
@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_mlp_kernels_with_documented_buffers(checkpoint_every, hidden, rng):
    sizes = [5, 7, 6, 4, 3]
    codes = [CODES[name] for name in hidden] + [kernels.IDENTITY]
    ref = naive.Net(sizes, hidden)
    params = rng.normal(scale=0.5, size=naive.n_params(sizes))
    capacity, n_rows = 16, 11       # a batch smaller than the buffers
    x = rng.normal(size=(n_rows, 5))
    labels = rng.integers(0, 3, size=n_rows)
    net, acts_size = kernels.make_net(sizes, codes, capacity, checkpoint_every)
    work = kernels.make_workspace(net, acts_size, np.float64)
    grads = np.full_like(params, np.nan)

    out = kernels.mlp_forward(work.acts, params, x, net)
    assert naive.normwise_error(out, ref.output(params, x)) < 1e-13
    loss = kernels.mlp_loss_and_grad(grads, work, params, x, labels, net)
    ref_loss, ref_grads = ref.loss_and_grad(params, x, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    assert naive.normwise_error(grads, ref_grads) < 1e-12
    assert kernels.mlp_loss(work, params, x, labels, net) == pytest.approx(loss, rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_kernels_by_the_nets_loss_and_l2(dtype, rng):
    """make_net's loss picks between the float-target losses (a Net made without one, as
    before it had one, keeps MSE, bit for bit, and softmax-CE for labels); l2 > 0 adds the
    penalty to mlp_loss_and_grad and mlp_loss, as the reference defines it."""
    sizes, hidden = [5, 7, 6, 4], ["tanh", "gelu"]
    codes = [CODES[name] for name in hidden] + [kernels.IDENTITY]
    params = rng.normal(scale=0.5, size=naive.n_params(sizes)).astype(dtype)
    x = rng.normal(size=(11, 5)).astype(dtype)
    targets = {"mse": rng.normal(size=(11, 4)).astype(dtype),
               "binary_cross_entropy": bce_targets(rng, (11, 4)).astype(dtype),
               "softmax_cross_entropy": rng.integers(0, 4, size=11)}

    def run(loss, target, l2=0.0, given=True):
        net, acts_size = (kernels.make_net(sizes, codes, 16, 2, loss, l2) if given
                          else kernels.make_net(sizes, codes, 16, 2))
        work = kernels.make_workspace(net, acts_size, dtype)
        grads = np.full_like(params, np.nan)
        value = kernels.mlp_loss_and_grad(grads, work, params, x, target, net)
        return value, grads, kernels.mlp_loss(work, params, x, target, net)

    for loss in ("mse", "softmax_cross_entropy"):
        old, new = run(None, targets[loss], given=False), run(loss, targets[loss])
        assert old[0] == new[0] and old[2] == new[2] and np.array_equal(old[1], new[1])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for loss, target in targets.items():
        for l2 in (0.0, 0.9):
            value, grads, forward_only = run(loss, target, l2)
            ref = naive.Net(sizes, hidden, loss=loss, l2=l2)
            ref_loss, ref_grads = ref.loss_and_grad(params.astype(np.float64),
                                                    x.astype(np.float64), target)
            assert value == pytest.approx(ref_loss, rel=tol), (loss, l2)
            assert naive.normwise_error(grads, ref_grads) < 10 * tol, (loss, l2)
            assert forward_only == pytest.approx(value, rel=tol), (loss, l2)


# ---------------------------------------------------------------------------------------------
# Numerics at extreme inputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype, rng):
    logits = (rng.choice([-1e4, 1e4], size=(6, 4)) + rng.normal(size=(6, 4))).astype(dtype)
    logits[0] = dtype(1e4)                  # ties at the top
    logits[1] = [1e4, -1e4, -1e4, 1e4]
    labels = np.array([0, 1, 2, 3, 0, 1])
    dlogits = np.empty_like(logits)
    losses = np.empty(6)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = kernels.softmax_cross_entropy_forward_backward(dlogits, losses, logits, labels)
    assert np.isfinite(mean) and np.isfinite(losses).all() and np.isfinite(dlogits).all()
    ref_losses, ref_grad = naive.softmax_cross_entropy(logits.astype(np.float64), labels)
    assert naive.normwise_error(losses, ref_losses) < 1e-7
    atol = 1e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-5, atol=atol)
    # each row of softmax - onehot sums to 0
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=10 * atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_do_not_overflow_or_warn(dtype):
    z = np.array([[-1e4, -800.0, -89.0, -30.0, 0.0, 30.0, 89.0, 800.0, 1e4]], dtype=dtype)
    sig = np.empty_like(z)
    th = np.empty_like(z)
    dsig = np.empty_like(z)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.sigmoid_forward(sig, z)
        kernels.tanh_forward(th, z)
        kernels.sigmoid_backward(dsig, np.ones_like(z), sig)
    for out in (sig, th, dsig):
        assert np.isfinite(out).all()
    assert ((sig >= 0) & (sig <= 1)).all()
    assert sig[0, 0] == 0 and sig[0, -1] == 1 and sig[0, 4] == 0.5
    assert ((th >= -1) & (th <= 1)).all()
    expected = np.array([naive.sigmoid_scalar(float(v)) for v in z[0]])
    if dtype == np.float32:   # float32 results below ~1e-38 are subnormal: compare absolutely
        np.testing.assert_allclose(sig[0], expected, rtol=1e-6, atol=1e-37)
    else:
        np.testing.assert_allclose(sig[0], expected, rtol=1e-15, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# A user's own @njit training loop built from the kernels


@njit
def user_training_loop(W1, b1, W2, b2, x, labels, lr, n_steps, h, dh, logits, dlogits, losses,
                       dW1, db1, dW2, db2, no_rows):
    """Two-layer ReLU classifier trained by plain SGD, written only with fastbp's kernels."""
    loss = 0.0
    for _ in range(n_steps):
        kernels.dense_forward(h, x, W1, b1, kernels.IDENTITY)
        kernels.relu_forward(h, h)
        kernels.dense_forward(logits, h, W2, b2, kernels.IDENTITY)
        loss = kernels.softmax_cross_entropy_forward_backward(dlogits, losses, logits, labels)
        kernels.dense_backward(dh, dW2, db2, dlogits, h, W2, kernels.RELU)
        kernels.dense_backward(no_rows, dW1, db1, dh, x, W1, kernels.IDENTITY)
        kernels.sgd_update(W1.reshape(W1.size), dW1.reshape(dW1.size), lr)
        kernels.sgd_update(b1, db1, lr)
        kernels.sgd_update(W2.reshape(W2.size), dW2.reshape(dW2.size), lr)
        kernels.sgd_update(b2, db2, lr)
    return loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_njit_function_calling_kernels(dtype, rng):
    sizes = [6, 8, 3]
    n_rows, n_steps, lr = 20, 5, 0.1
    start = rng.normal(scale=0.5, size=naive.n_params(sizes))
    x = rng.normal(size=(n_rows, sizes[0]))
    labels = rng.integers(0, 3, size=n_rows)

    (W1, W2), (b1, b2) = naive.unflatten(start.astype(dtype), sizes)
    W1, W2, b1, b2 = (a.astype(dtype) for a in (W1, W2, b1, b2))
    xd = x.astype(dtype)

    def buf(*shape):
        return np.empty(shape, dtype=dtype)

    loss = user_training_loop(W1, b1, W2, b2, xd, labels, lr, n_steps,
                              buf(n_rows, 8), buf(n_rows, 8), buf(n_rows, 3), buf(n_rows, 3),
                              np.empty(n_rows), buf(6, 8), buf(8), buf(8, 3), buf(3),
                              buf(0, 6))

    # reference: the same steps in float64 from the same (rounded) starting point and data
    ref = naive.Net(sizes, ["relu"])
    params = start.astype(dtype).astype(np.float64)
    xr = xd.astype(np.float64)
    for _ in range(n_steps):
        ref_loss, g = ref.loss_and_grad(params, xr, labels)
        params = params - lr * g
    got = naive.flatten([W1, W2], [b1, b2])
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert loss == pytest.approx(ref_loss, rel=tol)
    assert naive.normwise_error(got, params) < tol
    assert naive.normwise_error(got - start.astype(dtype), params - start.astype(dtype)) < tol


def test_dense_backward_with_gelu_input_needs_its_pre_activation(rng):
    """Without inp_pre, a GELU input's gradient cannot be formed: ValueError, as
    activation_backward raises."""
    inp = rng.normal(size=(4, 3))
    weight, dpre = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    with pytest.raises(ValueError, match="inp_pre"):
        kernels.dense_backward(np.empty((4, 3)), np.empty((3, 2)), np.empty(2), dpre, inp,
                               weight, kernels.GELU)


@pytest.mark.parametrize("code", [len(kernels.ACTIVATIONS), len(kernels.ACTIVATIONS) + 1, -1,
                                  1000])
def test_dense_kernels_refuse_an_unknown_activation_code(code, rng):
    """A code outside the table is refused before anything is written (it used to run as the
    identity, which hid a caller's mistake)."""
    inp, weight, bias = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    out = np.full((4, 2), 7.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.dense_forward(out, inp, weight, bias, code)
    assert (out == 7.0).all()
    dinp, dpre = np.full((4, 3), 7.0), rng.normal(size=(4, 2))
    with pytest.raises(ValueError, match="inp_activation must be one of"):
        kernels.dense_backward(dinp, np.empty((3, 2)), np.empty(2), dpre, inp, weight, code, inp)
    assert (dinp == 7.0).all()


@pytest.mark.parametrize("layer", [None, "workqueue"])
def test_the_own_training_loop_example_trains(tmp_path, layer):
    """examples/own_training_loop.py: a training loop in one's own cached @njit code over the
    kernels, and an ensemble, one member per thread with its own Workspace; its first member
    starts from the same weights as the loop, so it ends the same."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if layer is not None:   # workqueue cannot nest parallel loops: fastbp runs the inner ones
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "own_training_loop.py")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    loop = re.search(r"own loop: loss [\d.]+ -> ([\d.]+), test accuracy ([\d.]+)%",
                     result.stdout)
    assert loop and float(loop[1]) < 0.1 and float(loop[2]) > 95, result.stdout
    ensemble = re.search(r"ensemble of 4: test accuracy ([\d.]+)%", result.stdout)
    assert ensemble and ensemble[1] == loop[2], result.stdout
