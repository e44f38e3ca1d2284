"""The update kernels refuse what they cannot survive, from Python and from @njit code (see
refusals.py), leaving every array as it was; the spec builders refuse, in plain Python, what
cannot make an Update."""
import math

import numpy as np
import pytest
from refusals import run_refusals

from fastbp import kernels
from fastbp.kernels import update

SETUP = """
f64 = np.float64
P = 50
offsets = np.array([0, 20, 50])
params = np.ones(P); grads = np.full(P, 0.1)
layer_sq = np.zeros(2); partials = np.zeros(k.norm_partials_size(offsets))
sgd = k.sgd_spec(0.1, np.inf, f64, momentum=0.9, n_params=P)
adam = k.adam_spec(0.1, np.inf, f64, P, amsgrad=True)
half = np.array([0, 10, 25])
"""
STEP = "params, layer_sq, partials, grads, offsets"

CASES = [
    # label, kernel, arguments, exception, text
    # A spec of another kind (issue 32: sgd_step applied adam_spec's hyper-parameters).
    ("sgd given adam's hyper", "sgd_step", f"{STEP}, adam.hyper, sgd.state", "ValueError",
     "sgd_step: hyper must hold the 7 values"),
    ("adam given sgd's hyper", "adam_step", f"{STEP}, sgd.hyper, adam.state", "ValueError",
     "adam_step: hyper must hold the 9 values"),
    # A state without the rows its options use, or of another length than params.
    ("momentum without its buffer", "sgd_step", f"{STEP}, sgd.hyper, sgd.state[:0]",
     "ValueError", "sgd_step: state must have a row of params' length"),
    ("a buffer for no parameters", "sgd_step", f"{STEP}, sgd.hyper, np.zeros((1, 0))",
     "ValueError", "(momentum_buffer if momentum != 0)"),
    ("amsgrad without its maximum", "adam_step", f"{STEP}, adam.hyper, adam.state[:2]",
     "ValueError", "max_exp_avg_sq if amsgrad != 0"),
    ("params half the state's length", "adam_step",
     "params[:25], layer_sq, partials, grads[:25], half, adam.hyper, adam.state", "ValueError",
     "adam_step: state must have a row of params' length"),
    # The buffers of the norm.
    ("grads shorter", "sgd_step", "params, layer_sq, partials, grads[:40], offsets, sgd.hyper, "
     "sgd.state", "ValueError", "sgd_step: grads must have params' length"),
    ("offsets past P", "sgd_step", "params, layer_sq, partials, grads, np.array([0, 20, 60]), "
     "sgd.hyper, sgd.state", "ValueError", "param_offsets must run from 0 to params' length"),
    ("offsets short of P", "adam_step", "params, layer_sq, partials, grads, "
     "np.array([0, 20, 49]), adam.hyper, adam.state", "ValueError",
     "param_offsets must run from 0"),
    ("offsets not from 0", "sgd_step", "params, layer_sq, partials, grads, "
     "np.array([5, 20, 50]), sgd.hyper, sgd.state", "ValueError",
     "param_offsets must run from 0"),
    ("offsets falling", "sgd_step", "params, np.zeros(3), np.zeros(9), grads, "
     "np.array([0, 30, 20, 50]), sgd.hyper, sgd.state", "ValueError",
     "param_offsets must never decrease"),
    ("no offsets", "sgd_step", "params, layer_sq, partials, grads, offsets[:0], sgd.hyper, "
     "sgd.state", "ValueError", "param_offsets must run from 0"),
    ("layer_sq short", "adam_step", "params, layer_sq[:1], partials, grads, offsets, "
     "adam.hyper, adam.state", "ValueError", "adam_step: layer_sq must have an element per layer"),
    ("partials short", "sgd_step", "params, layer_sq, partials[:1], grads, offsets, sgd.hyper, "
     "sgd.state", "ValueError", "sgd_step: partials must have norm_partials_size"),
    # Types.
    ("state of another dtype", "sgd_step", f"{STEP}, sgd.hyper, sgd.state.astype(np.float32)",
     "TypeError", "state is float32 but params is float64"),
    ("int32 offsets", "adam_step", "params, layer_sq, partials, grads, offsets.astype(np.int32), "
     "adam.hyper, adam.state", "TypeError", "param_offsets must be a 1-D int64 array"),
    ("float32 hyper", "sgd_step", f"{STEP}, sgd.hyper.astype(np.float32), sgd.state",
     "TypeError", "hyper must be a 1-D float64 array"),
    ("1-D state", "sgd_step", f"{STEP}, sgd.hyper, sgd.state[0]", "TypeError",
     "state must be a 2-D float32 or float64 array"),
    # The norm alone.
    ("norm: offsets past grads", "layer_sums_of_squares",
     "layer_sq, partials, grads[:30], offsets", "ValueError",
     "layer_sums_of_squares: param_offsets must run from 0 to grads' length"),
    ("norm: partials short", "layer_sums_of_squares", "layer_sq, partials[:1], grads, offsets",
     "ValueError", "layer_sums_of_squares: partials must have"),
    ("norm: layer_sq short", "layer_sums_of_squares", "layer_sq[:1], partials, grads, offsets",
     "ValueError", "layer_sums_of_squares: layer_sq must have an element per layer"),
    ("norm: float32 layer_sq", "layer_sums_of_squares",
     "layer_sq.astype(np.float32), partials, grads, offsets", "TypeError",
     "layer_sq must be a 1-D float64 array"),
    ("partials size: float offsets", "norm_partials_size", "offsets.astype(np.float64)",
     "TypeError", "norm_partials_size: param_offsets must be a 1-D int64 array"),
    # Plain updates.
    ("sgd_update: grads shorter", "sgd_update", "params, grads[:10], 0.1", "ValueError",
     "sgd_update: grads must have params' length"),
    ("sgd_update: dtypes", "sgd_update", "params, grads.astype(np.float32), 0.1", "TypeError",
     "grads is float32 but params is float64"),
    ("add_scaled: x shorter", "add_scaled", "params, grads[:10], 0.5", "ValueError",
     "add_scaled: x must have total's length"),
    ("add_scaled: weight an array", "add_scaled", "params, grads, grads", "TypeError",
     "add_scaled: weight must be a number"),
]


def test_update_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


def _every_option(code, n):
    """An Update of this kind with every option on (every state row used)."""
    names = kernels.KINDS[code].hyper
    return kernels.update_spec(code, np.float64, n, lr=0.1, clip_norm=math.inf,
                               **{name: 1.0 for name in ("amsgrad", "centered", "momentum")
                                  if name in names})


@pytest.mark.parametrize("code", sorted(kernels.KINDS))
def test_each_kinds_step_refuses_another_kinds_update(code):
    """Every kind's step kernel (rmsprop_step too, which fastbp.kernels does not export)
    refuses hyper of every other kind's length, and a state without its last row, leaving
    every array as it was."""
    n = 30
    params, grads = np.ones(n), np.ones(n)
    buffers = (params, np.zeros(1), np.zeros(1), grads, np.array([0, n]))
    kind = kernels.KINDS[code]
    spec = _every_option(code, n)
    before = [a.copy() for a in (*buffers, spec.hyper, spec.state)]
    for other in kernels.KINDS.values():
        if len(other.hyper) != len(kind.hyper):
            with pytest.raises(ValueError, match=f"{kind.unit}: hyper must hold the "
                                                 f"{len(kind.hyper)} values"):
                kind.step(*buffers, np.zeros(len(other.hyper)), spec.state)
    with pytest.raises(ValueError, match=f"{kind.unit}: state must have a row"):
        kind.step(*buffers, spec.hyper, spec.state[:-1])
    after = (*buffers, spec.hyper, spec.state)
    assert all(np.array_equal(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize("code", sorted(kernels.KINDS))
def test_update_checks_follow_the_registry(code):
    """apply_update's checks (update.check_update), written from KINDS: each kind's hyper
    length and state rows, a kind no entry has refused."""
    n = 30
    params, grads = np.ones(n), np.ones(n)
    offsets = np.array([0, n])
    kind = kernels.KINDS[code]
    names = kind.hyper
    spec = _every_option(code, n)
    buffers = (params, np.zeros(1), np.zeros(1), grads, offsets)
    update.check_update(*buffers, code, spec.hyper, spec.state)   # fits: no exception
    assert spec.state.shape[0] == len(kind.rows)
    with pytest.raises(ValueError, match=f"apply_update: hyper must hold the {len(names)} "):
        update.check_update(*buffers, code, np.zeros(len(names) + 1), spec.state)
    with pytest.raises(ValueError, match="apply_update: state must have a row"):
        update.check_update(*buffers, code, spec.hyper, spec.state[:-1])
    with pytest.raises(ValueError, match="apply_update: kind must be a code of kernels.KINDS"):
        update.check_update(*buffers, max(kernels.KINDS) + 1, spec.hyper, spec.state)


def test_rmsprop_reads_its_rows_where_kinds_entry_puts_them(rng):
    """A state with a row more than the update uses (the Python layer lets one through) leaves
    the extra row alone: centered without momentum, the gradients' average is row 1."""
    n = 40
    spec = kernels.update_spec(update.RMSPROP_KIND, np.float64, n, lr=0.01, clip_norm=math.inf,
                               alpha=0.9, eps=1e-8, centered=1.0)
    wide = kernels.Update(spec.kind, spec.hyper.copy(), np.zeros((3, n)))
    params, grads = rng.normal(size=n), rng.normal(size=n)
    offsets = np.array([0, n])
    p1, p2 = params.copy(), params.copy()
    kernels.update.rmsprop_step(p1, np.zeros(1), np.zeros(1), grads, offsets, *spec[1:])
    kernels.update.rmsprop_step(p2, np.zeros(1), np.zeros(1), grads, offsets, *wide[1:])
    assert p1.tobytes() == p2.tobytes()
    assert wide.state[:2].tobytes() == spec.state.tobytes() and not wide.state[2].any()


# -- the spec builders (plain Python) ----------------------------------------------------------


@pytest.mark.parametrize("build, error, text", [
    # Issue 32: momentum without n_params made a buffer for no parameters (a segfault later).
    (lambda: kernels.sgd_spec(0.1, math.inf, np.float32, momentum=0.9), ValueError,
     "n_params: sgd with these hyper-parameters keeps momentum_buffer"),
    (lambda: kernels.adam_spec(0.1, 1.0, np.float64, 0), ValueError,
     "n_params: adam with these hyper-parameters keeps exp_avg, exp_avg_sq"),
    (lambda: kernels.adam_spec(0.1, 1.0, np.float64, 5.0), TypeError, "n_params: must be an int"),
    (lambda: kernels.sgd_spec(0.1, 1.0, np.float64, n_params=-1), ValueError,
     "n_params: must be at least 0"),
    (lambda: kernels.adam_spec(0.1, 1.0, np.float64, 5, betas=0.9), TypeError,
     "betas: must be a pair"),
    (lambda: kernels.sgd_spec(math.nan, 1.0, np.float64), ValueError, "lr: must be finite"),
    (lambda: kernels.sgd_spec(-0.1, 1.0, np.float64), ValueError, "lr: must be at least 0"),
    (lambda: kernels.sgd_spec("0.1", 1.0, np.float64), TypeError,
     "lr: must be a real number, not str"),
    (lambda: kernels.sgd_spec(0.1, 0.0, np.float64), ValueError, "clip_norm: must be above 0"),
    (lambda: kernels.sgd_spec(0.1, math.nan, np.float64), ValueError,
     "clip_norm: must be finite (inf: no clipping)"),
    (lambda: kernels.adam_spec(0.1, 1.0, np.float64, 5, eps=math.inf), ValueError,
     "eps: must be finite"),
    (lambda: kernels.sgd_spec(0.1, 1.0, np.int32), TypeError,
     "dtype: must be float32 or float64"),
    (lambda: kernels.sgd_spec(0.1, 1.0, "no such dtype"), TypeError,
     "dtype: must be float32 or float64"),
    (lambda: kernels.update_spec(max(kernels.KINDS) + 1, np.float64, 3), ValueError,
     "kind: 3 is not a code of kernels.KINDS (0: sgd, 1: adam, 2: rmsprop)"),
    (lambda: kernels.update_spec(kernels.SGD_KIND, np.float64, 3, steps=-1), ValueError,
     "steps: must be at least 0"),
])
def test_spec_builders_refuse_what_cannot_make_an_update(build, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_spec_builders_still_build_what_they_did():
    """clip_norm inf, flags given as bools (NumPy's too), no n_params where no state is kept."""
    spec = kernels.sgd_spec(0.1, math.inf, np.float32, nesterov=False)
    assert spec.state.shape == (0, 0) and spec.state.dtype == np.float32
    adam = kernels.adam_spec(0.1, 2.0, np.float64, 7, betas=[0.8, 0.9], amsgrad=np.bool_(True))
    assert adam.state.shape == (3, 7)
    assert list(adam.hyper) == [0.1, 2.0, 0, 0, 0.8, 0.9, 1e-8, 1.0, 0.0]
